/**
 * Behaviour tests: IR programs compiled to static ELF files and run as
 * processes, natively and under QEMU user mode, on both architectures, with
 * the same expected stdout and exit code.
 */

import { expectRun } from "./_run_test_util.ts";
import {
  type BinaryOp,
  type CompareOp,
  compile,
  ProgramBuilder,
  type Width,
} from "./mod.ts";
import { equal, ok } from "node:assert/strict";

const WIDTHS: Width[] = [8, 16, 32, 64];
const BINARY_OPS: BinaryOp[] = [
  "add",
  "sub",
  "mul",
  "udiv",
  "sdiv",
  "urem",
  "srem",
  "shl",
  "shr",
  "sar",
  "and",
  "or",
  "xor",
];
const COMPARE_OPS: CompareOp[] = [
  "eq",
  "ne",
  "lt",
  "le",
  "gt",
  "ge",
  "ltu",
  "leu",
  "gtu",
  "geu",
];

/** Operand pairs that reach signs, overflow, division by zero and big shift counts. */
function pairs(width: Width): [bigint, bigint][] {
  const w = BigInt(width);
  const min = -(1n << (w - 1n));
  const umax = (1n << w) - 1n;
  return [
    [100n, 7n],
    [-100n, 7n],
    [min, -1n],
    [umax, 3n],
    [5n, 0n],
    [-1n, 3n],
    [0x55n, 0x7fn],
    [3n, w + 1n],
    [min, 1n],
  ];
}

/** What the IR must compute: operands extended to 64 bits (by sign for signed ops), result truncated. */
function evaluate(op: BinaryOp, width: Width, a: bigint, b: bigint): bigint {
  const signed = op === "sdiv" || op === "srem" || op === "sar";
  const ext = (v: bigint) =>
    signed ? BigInt.asIntN(width, v) : BigInt.asUintN(width, v);
  const x = ext(a);
  const y = ext(b);
  const count = BigInt.asUintN(6, y);
  const results: Record<BinaryOp, () => bigint> = {
    add: () => x + y,
    sub: () => x - y,
    mul: () => x * y,
    udiv: () => y === 0n ? 0n : x / y,
    sdiv: () => y === 0n ? 0n : x / y,
    urem: () => y === 0n ? x : x % y,
    srem: () => y === 0n ? x : x % y,
    shl: () => BigInt.asUintN(64, x << count),
    shr: () => BigInt.asUintN(64, x) >> count,
    sar: () => BigInt.asIntN(64, x) >> count,
    and: () => x & y,
    or: () => x | y,
    xor: () => x ^ y,
  };
  return BigInt.asUintN(width, results[op]());
}

function compare(op: CompareOp, width: Width, a: bigint, b: bigint): boolean {
  const s = (v: bigint) => BigInt.asIntN(width, v);
  const u = (v: bigint) => BigInt.asUintN(width, v);
  switch (op) {
    case "eq":
      return u(a) === u(b);
    case "ne":
      return u(a) !== u(b);
    case "lt":
      return s(a) < s(b);
    case "le":
      return s(a) <= s(b);
    case "gt":
      return s(a) > s(b);
    case "ge":
      return s(a) >= s(b);
    case "ltu":
      return u(a) < u(b);
    case "leu":
      return u(a) <= u(b);
    case "gtu":
      return u(a) > u(b);
    case "geu":
      return u(a) >= u(b);
  }
}

Deno.test("compileElf() programs print hello and exit with the entry's result", async () => {
  const p = new ProgramBuilder();
  const hello = p.string("hello\n");
  p.method("main", (m) => {
    m.syscall("write", [1, hello.ptr, hello.len]);
    m.return(300); // exit status keeps the low 8 bits
  });
  await expectRun(p.build(), { stdout: "hello\n", code: 44 });
});

Deno.test("compileElf() programs compute every operation at every width", async () => {
  const p = new ProgramBuilder();
  let expected = "";
  p.method("main", (m) => {
    for (const width of WIDTHS) {
      const a = m.var(`a${width}`, { width });
      const b = m.var(`b${width}`, { width });
      const r = m.var(`r${width}`, { width });
      for (const op of BINARY_OPS) {
        for (const [x, y] of pairs(width)) {
          m.set(a, x);
          m.set(b, y);
          m[op](a, b, { into: r });
          m.printf("%x\n", [r]);
          expected += evaluate(op, width, x, y).toString(16) + "\n";
        }
      }
    }
    m.return(0);
  });
  await expectRun(p.build(), { stdout: expected });
});

Deno.test("compileElf() programs compare signed and unsigned at every width", async () => {
  const p = new ProgramBuilder();
  let expected = "";
  p.method("main", (m) => {
    for (const width of WIDTHS) {
      const a = m.var(`a${width}`, { width });
      const b = m.var(`b${width}`, { width });
      for (
        const [x, y] of [...pairs(width), [7n, 7n], [-1n, -1n]] as [
          bigint,
          bigint,
        ][]
      ) {
        m.set(a, x);
        m.set(b, y);
        for (const op of COMPARE_OPS) {
          m.if(m[op](a, b), () => m.printf("1"), () => m.printf("0"));
          expected += compare(op, width, x, y) ? "1" : "0";
        }
        m.if(m.not(m.isNegative(a)), () => m.printf("+"), () => m.printf("-"));
        m.if(m.isZero(b), () => m.printf("z"));
        expected += (BigInt.asIntN(width, x) < 0n ? "-" : "+") +
          (BigInt.asUintN(width, y) === 0n ? "z" : "");
        m.printf("\n");
        expected += "\n";
      }
    }
  });
  await expectRun(p.build(), { stdout: expected });
});

Deno.test("compileElf() programs convert and print signed, unsigned, hex, chars and strings", async () => {
  const p = new ProgramBuilder();
  const name = p.string("initx", { nulTerminated: true });
  p.method("main", (m) => {
    const byte = m.var("byte", { width: 8, init: -2 });
    const word = m.convert(byte, { width: 64, signed: true });
    const zero = m.convert(byte, { width: 64 });
    const short = m.convert(m.const(0x12345, 32), { width: 16 });
    m.printf("%d %d %u %x\n", [byte, word, zero, short]);
    m.printf("%d %u %x\n", [m.const(-1, 64), m.const(-1, 64), m.const(-1, 64)]);
    m.printf("%d %d\n", [m.const(-0x8000_0000_0000_0000n, 64), 0]);
    m.printf("[%c%c] %s/%s/%s 100%%\n", [72, 105, name, name.ptr, {
      ptr: name.ptr,
      len: 3,
    }]);
    m.printf("to stderr\n", [], { fd: 2 });
  });
  await expectRun(p.build(), {
    stdout:
      "-2 -2 254 2345\n-1 18446744073709551615 ffffffffffffffff\n-9223372036854775808 0\n" +
      "[Hi] initx/initx/ini 100%\n",
  });
});

Deno.test("compileElf() programs load and store memory of every width", async () => {
  const p = new ProgramBuilder();
  const table = p.global(64);
  p.method("main", (m) => {
    const ptr = m.var("ptr", { init: m.buffer(16) });
    m.set(m.mem(ptr), 0x8877_6655_4433_2211n);
    m.printf("%x %x %x %x\n", [
      m.mem(ptr, { disp: 7, width: 8 }),
      m.mem(ptr, { disp: 6, width: 16 }),
      m.mem(ptr, { disp: 4, width: 32 }),
      m.mem(ptr),
    ]);
    m.printf("%d %d %d\n", [
      m.mem(ptr, { disp: 7, width: 8 }),
      m.mem(ptr, { disp: 6, width: 16 }),
      m.mem(ptr, { disp: 4, width: 32 }),
    ]);
    m.set(m.mem(ptr, { width: 8 }), 0xaa);
    m.set(m.mem(ptr, { disp: 2, width: 16 }), 0xbbcc);
    m.set(m.mem(ptr, { disp: 4, width: 32 }), 0xddee_ff00);
    m.printf("%x\n", [m.mem(ptr)]);
    // Displacements without a short form, forward and backward.
    const big = m.var("big", { init: m.buffer(8192) });
    const far = m.add(big, 5000);
    m.set(m.mem(far, { disp: -4992 }), 7);
    m.set(m.mem(far, { disp: 1000, width: 16 }), -3);
    m.printf("%d %d\n", [
      m.mem(big, { disp: 8 }),
      m.mem(big, { disp: 6000, width: 16 }),
    ]);
    // Globals are zeroed and writable.
    const g = m.var("g", { init: table });
    const i = m.var("i", { width: 32, init: 0 });
    m.while(m.lt(i, 10), () => {
      m.add(m.mem(g, { disp: 12, width: 32 }), i, {
        into: m.mem(g, { disp: 12, width: 32 }),
      });
      m.add(i, 1, { into: i });
    });
    m.printf("%d %d\n", [
      m.mem(g, { disp: 12, width: 32 }),
      m.mem(g, { disp: 56 }),
    ]);
  });
  await expectRun(p.build(), {
    stdout:
      "88 8877 88776655 8877665544332211\n-120 -30601 -2005440939\nddeeff00bbcc22aa\n7 -3\n45 0\n",
  });
});

Deno.test("compileElf() programs loop and branch", async () => {
  const p = new ProgramBuilder();
  let fizz = "";
  for (let n = 1; n <= 15; n++) {
    fizz += n % 15 === 0
      ? "FizzBuzz\n"
      : n % 3 === 0
      ? "Fizz\n"
      : n % 5 === 0
      ? "Buzz\n"
      : `${n}\n`;
  }
  p.method("main", (m) => {
    const i = m.var("i", { init: 1 });
    const sum = m.var("sum", { init: 0 });
    m.while(m.le(i, 100), () => {
      m.add(sum, i, { into: sum });
      m.add(i, 1, { into: i });
    });
    m.printf("sum %d\n", [sum]);
    m.set(i, 1);
    m.label("next");
    m.if(m.isZero(m.urem(i, 15)), () => m.printf("FizzBuzz\n"), () => {
      m.if(m.isZero(m.urem(i, 3)), () => m.printf("Fizz\n"), () => {
        m.if(
          m.isZero(m.urem(i, 5)),
          () => m.printf("Buzz\n"),
          () => m.printf("%d\n", [i]),
        );
      });
    });
    m.add(i, 1, { into: i });
    m.if(m.le(i, 15), () => m.goto("next"));
    // Nested loops with a 16-bit counter.
    const row = m.var("row", { width: 16, init: 0 });
    const cells = m.var("cells", { init: 0 });
    m.while(m.ltu(row, 300), () => {
      const col = m.var("col", { width: 16, init: 0 });
      m.while(m.lt(col, row), () => {
        m.add(col, 1, { into: col });
        m.add(cells, 1, { into: cells });
      });
      m.add(row, 1, { into: row });
    });
    m.printf("cells %d\n", [cells]);
    m.return(3);
  });
  await expectRun(p.build(), {
    stdout: `sum 5050\n${fizz}cells 44850\n`,
    code: 3,
  });
});

Deno.test("compileElf() programs call methods, recurse and call code pointers", async () => {
  const p = new ProgramBuilder();
  p.method("fib", (m) => {
    const [n] = m.params("n");
    m.if(m.lt(n, 2), () => m.return(n));
    const a = m.call("fib", [m.sub(n, 1)]);
    const b = m.call("fib", [m.sub(n, 2)]);
    m.return(m.add(a, b));
  });
  p.method("factorial", (m) => {
    const [n] = m.params("n");
    m.if(m.le(n, 1), () => m.return(1));
    m.return(m.mul(n, m.call("factorial", [m.sub(n, 1)])));
  });
  p.method("sum6", (m) => {
    const [a, b, c, d, e, f] = m.params("a", "b", "c", "d", "e", "f");
    m.return(
      m.add(
        m.add(m.add(a, m.mul(b, 10)), m.add(m.mul(c, 100), m.mul(d, 1000))),
        m.add(m.mul(e, 10000), m.mul(f, 100000)),
      ),
    );
  });
  p.method("narrow", (m) => {
    const [x, y] = m.params({ name: "x", width: 32 }, { name: "y", width: 8 });
    m.return(
      m.convert(m.sub(x, m.convert(y, { width: 32, signed: true })), {
        width: 64,
        signed: true,
      }),
    );
  });
  p.method("twice", (m) => {
    const [x] = m.params("x");
    m.return(m.mul(x, 2));
  });
  p.method("main", (m) => {
    m.printf("fib %d\n", [m.call("fib", [20])]);
    m.printf("factorial %d\n", [m.call("factorial", [20])]);
    m.printf("sum6 %d\n", [m.call("sum6", [1, 2, 3, 4, 5, 6])]);
    m.printf("narrow %d\n", [
      m.call("narrow", [m.const(5, 32), m.const(-7, 8)]),
    ]);
    const fn = m.var("fn", { init: m.addressOf("twice") });
    m.printf("indirect %d\n", [m.call(fn, [21])]);
    m.return(m.call("twice", [4]));
  });
  await expectRun(p.build(), {
    stdout:
      "fib 6765\nfactorial 2432902008176640000\nsum6 654321\nnarrow 12\nindirect 42\n",
    code: 8,
  });
});

Deno.test("compileElf() programs see argc, argv and envp", async () => {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const [argc, argv, envp] = m.params("argc", "argv", "envp");
    m.printf("%d %s %s\n", [
      argc,
      m.mem(argv, { disp: 8 }),
      m.mem(argv, { disp: 16 }),
    ]);
    m.if(m.isZero(m.mem(argv, { disp: 24 })), () => m.printf("argv ends\n"));
    m.if(m.ne(envp, 0), () => m.printf("envp set\n"));
    m.return(argc);
  });
  await expectRun(p.build(), {
    args: ["one", "two"],
    stdout: "3 one two\nargv ends\nenvp set\n",
    code: 3,
  });
});

Deno.test("compileElf() programs open and read a file", async () => {
  const AT_FDCWD = -100;
  const O_RDONLY = 0;
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const [, argv] = m.params("argc", "argv");
    const fd = m.syscall("openat", [
      AT_FDCWD,
      m.mem(argv, { disp: 8 }),
      O_RDONLY,
      0,
    ]);
    m.if(m.isNegative(fd), () => {
      m.printf("openat failed: %d\n", [fd]);
      m.return(1);
    });
    const buffer = m.buffer(64);
    const n = m.syscall("read", [fd, buffer, 64]);
    m.printf("read %d: %s", [n, { ptr: buffer, len: n }]);
    m.printf("close %d\n", [m.syscall("close", [fd])]);
    const missing = m.syscall("openat", [
      AT_FDCWD,
      p.string("missing", { nulTerminated: true }),
      O_RDONLY,
      0,
    ]);
    m.printf("missing %d\n", [missing]); // -ENOENT
  });
  await expectRun(p.build(), {
    args: ["input.txt"],
    setup: (dir) => Deno.writeTextFile(`${dir}/input.txt`, "file contents\n"),
    stdout: "read 14: file contents\nclose 0\nmissing -2\n",
  });
});

Deno.test("compileElf() programs map memory", async () => {
  const PROT_READ_WRITE = 3;
  const MAP_PRIVATE_ANONYMOUS = 0x22;
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const addr = m.syscall("mmap", [
      0,
      8192,
      PROT_READ_WRITE,
      MAP_PRIVATE_ANONYMOUS,
      -1,
      0,
    ]);
    m.if(m.isNegative(addr), () => m.return(1));
    m.printf("fresh %d\n", [m.mem(addr, { disp: 4096 })]);
    m.set(m.mem(addr, { disp: 4096 }), 42);
    m.printf("stored %d\n", [m.mem(addr, { disp: 4096 })]);
    m.printf("munmap %d\n", [m.syscall("munmap", [addr, 8192])]);
  });
  await expectRun(p.build(), { stdout: "fresh 0\nstored 42\nmunmap 0\n" });
});

Deno.test("compileElf() programs fork, exec and wait", async () => {
  const SIGCHLD = 17;
  const p = new ProgramBuilder();
  const sh = p.string("/bin/sh", { nulTerminated: true });
  const argv = p.pointers([
    sh,
    p.string("-c", { nulTerminated: true }),
    p.string("echo child says hi; exit 3", { nulTerminated: true }),
    null,
  ]);
  p.method("main", (m) => {
    const [, , envp] = m.params("argc", "argv", "envp");
    const pid = m.syscall("clone", [SIGCHLD, 0, 0, 0, 0]);
    m.if(m.isZero(pid), () => {
      m.syscall("execve", [sh, argv, envp]);
      m.syscall("exit_group", [127]);
    });
    const status = m.var("status", { init: m.buffer(8) });
    const waited = m.syscall("wait4", [pid, status, 0, 0]);
    m.if(m.eq(waited, pid), () => m.printf("waited for the child\n"));
    const code = m.and(m.shr(m.mem(status, { width: 32 }), 8), 0xff);
    m.printf("child exited %d\n", [code]);
    const self = m.syscall("getpid");
    m.if(m.gt(self, 0), () => m.printf("getpid ok\n"));
    m.if(m.ne(self, pid), () => m.printf("pids differ\n"));
  });
  await expectRun(p.build(), {
    stdout:
      "child says hi\nwaited for the child\nchild exited 3\ngetpid ok\npids differ\n",
  });
});

Deno.test("compileElf() programs exit from anywhere with exit_group", async () => {
  const p = new ProgramBuilder();
  p.method("leave", (m) => {
    m.printf("bye\n");
    m.syscall("exit_group", [42]);
  });
  p.method("main", (m) => {
    m.call("leave");
    m.printf("not reached\n");
  });
  await expectRun(p.build(), { stdout: "bye\n", code: 42 });
});

Deno.test("compile() compiles a program of a few hundred statements", () => {
  // Its speed is measured in bench/compile_bench.ts.
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const x = m.var("x", { init: 0 });
    for (let i = 0; i < 200; i++) {
      m.if(
        m.lt(x, i),
        () => m.add(x, i, { into: x }),
        () => m.xor(x, 3, { into: x }),
      );
    }
    m.printf("%d\n", [x]);
  });
  const program = p.build();
  for (const arch of ["x86_64", "aarch64"] as const) {
    ok(compile(program, { arch }).code.length > 0);
  }
});

Deno.test("compile() returns relocations for pointer tables and the bss size", () => {
  const p = new ProgramBuilder();
  const a = p.string("a");
  const table = p.pointers([a, null, a]);
  p.global(10);
  p.global(40);
  p.method("main", (m) => m.return(table));
  for (const arch of ["x86_64", "aarch64"] as const) {
    const { code, relocations, bssSize, entryOffset } = compile(p.build(), {
      arch,
    });
    equal(relocations.length, 2);
    equal(bssSize, 16 + 48);
    equal(entryOffset, 0);
    const view = new DataView(code.buffer);
    const target = Number(view.getBigUint64(relocations[0]!, true));
    equal(code[target], "a".charCodeAt(0));
    equal(view.getBigUint64(relocations[1]! - 8, true), 0n);
  }
});

Deno.test("compileElf() programs handle frames beyond short immediate offsets", async () => {
  const p = new ProgramBuilder();
  let expected = 0;
  p.method("main", (m) => {
    // 700 slots reach past 4095, the largest byte offset of an A64 load immediate; the
    // buffer past that, where the frame offset needs two ADD immediates.
    const big = m.buffer(70000);
    const vars = Array.from(
      { length: 700 },
      (_, i) =>
        m.var(`v${i}`, {
          width: ([8, 16, 32, 64] as const)[i % 4],
          init: i % 100,
        }),
    );
    const total = m.var("total", { init: 0 });
    for (const v of vars) {
      m.add(total, m.convert(v, { width: 64 }), { into: total });
    }
    vars.forEach((_, i) => expected += i % 100);
    const end = m.var("end", { init: m.add(big, 69992) });
    m.set(m.mem(end), 99);
    m.printf("%d %d\n", [total, m.mem(end)]);
  });
  await expectRun(p.build(), { stdout: `${expected} 99\n` });
});
