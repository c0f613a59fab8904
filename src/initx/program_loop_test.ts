/**
 * The guest side alone: the program loop compiled to a static ELF and run
 * as a host process, talking to a fake host made of raw Unix sockets and
 * the protocol's encoders, so each edge of the protocol can be provoked.
 * `program_server_test.ts` runs it against the real host side.
 */

import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { need, needTool } from "../../tests/_gate.ts";
import {
  type Arch,
  compile,
  type CompiledProgram,
  compileElf,
  type MethodBuilder,
  type Operand,
  type Program,
  ProgramBuilder,
  type Statement,
} from "../ir/mod.ts";
import { Errno, exec } from "./fragments/mod.ts";
import {
  buildExecProgram,
  buildProgramLoop,
  buildProgramLoopElf,
  serveProgramsFragment,
  unixAddress,
  vsockAddress,
} from "./program_loop.ts";
import {
  decodeFrameHeader,
  decodeHello,
  decodeReply,
  decodeStreamHello,
  encodeRequest,
  encodeRequestHeader,
  FrameType,
  Limits,
  type Reply,
} from "./protocol.ts";

const HOST_ARCH: Arch = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
const QEMU_AARCH64 = "qemu-aarch64-static";
const CONTROL = 9998;
const STDIN = 9999;
const OUTPUT = 10001;
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

Deno.test("vsockAddress() lays out a struct sockaddr_vm", () => {
  const { family, bytes } = vsockAddress(10001, 3);
  equal(family, 40);
  deepEqual(
    [...bytes],
    [40, 0, 0, 0, 0x11, 0x27, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
  );
  equal(vsockAddress(9998).bytes[8], 2, "the host's CID by default");
  throws(() => vsockAddress(-1), RangeError);
  throws(() => vsockAddress(1, 2 ** 32), RangeError);
});

Deno.test("unixAddress() lays out a struct sockaddr_un", () => {
  const { family, bytes } = unixAddress("/a/b");
  equal(family, 1);
  deepEqual([...bytes], [1, 0, 0x2f, 0x61, 0x2f, 0x62, 0]);
  throws(() => unixAddress(""), RangeError);
  throws(() => unixAddress("x".repeat(108)), RangeError);
  throws(() => unixAddress("a\0b"), RangeError);
});

function syscallCalls(
  statements: Statement[],
): { name: string; args: Operand[] }[] {
  return statements.flatMap((s) =>
    s.kind === "syscall"
      ? [{ name: s.name, args: s.args }]
      : s.kind === "if"
      ? [...syscallCalls(s.then), ...syscallCalls(s.else)]
      : []
  );
}

Deno.test("buildProgramLoop() forks with clone, pipes with O_CLOEXEC, never writes to a socket with write()", () => {
  const program = buildProgramLoop({
    address: (port) => unixAddress(`/tmp/x/${port}`),
  });
  const calls = program.methods.flatMap((m) => syscallCalls(m.body));
  const names = new Set(calls.map((c) => c.name));
  for (
    const name of [
      "socket",
      "connect",
      "sendto",
      "mmap",
      "mprotect",
      "munmap",
      "pipe2",
      "clone",
      "dup3",
      "ppoll",
      "wait4",
      "uname",
      "nanosleep",
      "clock_settime",
    ]
  ) ok(names.has(name), name);
  ok(!names.has("fork") && !names.has("pipe") && !names.has("write"));
  const clone = calls.find((c) => c.name === "clone")!;
  deepEqual(clone.args[0], { kind: "const", value: 17n }, "SIGCHLD");
  for (const pipe of calls.filter((c) => c.name === "pipe2")) {
    deepEqual(pipe.args[1], { kind: "const", value: 0o2000000n });
  }
  for (const send of calls.filter((c) => c.name === "sendto")) {
    deepEqual(send.args[3], { kind: "const", value: 0x4000n }, "MSG_NOSIGNAL");
  }
  for (const arch of ["x86_64", "aarch64"] as const) {
    ok(compile(program, { arch }).code.length < 16 * 1024, arch);
  }
});

Deno.test("serveProgramsFragment() can appear twice in one program", () => {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const onError = { errno: m.var("errno"), goto: "fail" };
    serveProgramsFragment(m, { onError });
    serveProgramsFragment(m, {
      onError,
      ports: { control: 1, stdin: 2, output: 3 },
    });
    m.label("fail");
    m.return(1);
  });
  for (const arch of ["x86_64", "aarch64"] as const) {
    ok(compile(p.build(), { arch }).code.length > 0);
  }
});

// ---- the loop as a process, against a fake host ----

interface FakeHost {
  arch: Arch;
  dir: string;
  child: Deno.ChildProcess;
  listen(port: number): Deno.UnixListener;
  /** Accept the control connection and check the hello. */
  acceptControl(listener: Deno.UnixListener): Promise<Deno.UnixConn>;
  compile(body: (m: MethodBuilder, p: ProgramBuilder) => void): CompiledProgram;
}

async function withLoop(
  body: (host: FakeHost) => Promise<void>,
  options: { arch?: Arch; connectTimeoutMs?: number } = {},
): Promise<{ code: number; stderr: string }> {
  const arch = options.arch ?? HOST_ARCH;
  const dir = await Deno.makeTempDir({ prefix: "initx-loop-" });
  const closers: { close(): void }[] = [];
  let child: Deno.ChildProcess | undefined;
  let result: { code: number; stderr: string } | undefined;
  try {
    const path = `${dir}/loop`;
    await Deno.writeFile(
      path,
      buildProgramLoopElf({
        arch,
        address: (port) => unixAddress(`${dir}/${port}`),
        connectTimeoutMs: options.connectTimeoutMs,
      }),
      { mode: 0o755 },
    );
    // Natively, a launcher closes the fds this process inherited, so the
    // loop starts with 0, 1 and 2 only.
    const launcher = `${dir}/launcher`;
    await Deno.writeFile(
      launcher,
      compileElf(closeFdsAndExec(path), { arch }),
      {
        mode: 0o755,
      },
    );
    const argv = arch === HOST_ARCH ? [launcher] : [QEMU_AARCH64, path];
    child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    await body({
      arch,
      dir,
      child,
      listen(port) {
        const listener = Deno.listen({
          transport: "unix",
          path: `${dir}/${port}`,
        });
        closers.push(listener);
        return listener;
      },
      async acceptControl(listener) {
        const conn = await listener.accept();
        closers.push(conn);
        const hello = decodeHello(await readExactly(conn, Limits.HELLO_SIZE));
        deepEqual(hello, { version: 1, arch });
        return conn;
      },
      compile(build) {
        const p = new ProgramBuilder();
        p.method("main", (m) => build(m, p));
        return compile(p.build(), { arch });
      },
    });
  } finally {
    for (const c of closers) {
      try {
        c.close();
      } catch {
        // Already closed.
      }
    }
    if (child !== undefined) {
      // The loop ends once its control connection is gone; kill a stuck one.
      const timer = setTimeout(() => {
        try {
          child!.kill("SIGKILL");
        } catch {
          // Already gone.
        }
      }, 10_000);
      const output = await child.output();
      clearTimeout(timer);
      result = { code: output.code, stderr: text(output.stderr) };
    }
    await Deno.remove(dir, { recursive: true });
  }
  return result!;
}

/** A program that closes fds 3..1023, then execs `path`. */
function closeFdsAndExec(path: string): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const fd = m.var("fd", { init: 3 });
    m.while(m.lt(fd, 1024), () => {
      m.syscall("close", [fd]);
      m.add(fd, 1, { into: fd });
    });
    const errno = m.var("errno");
    exec(m, { path, argv: [path], onError: { errno, goto: "fail" } });
    m.label("fail");
    m.return(126);
  });
  return p.build();
}

async function readExactly(
  conn: Deno.Conn,
  n: number,
): Promise<Uint8Array> {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await conn.read(bytes.subarray(at));
    if (got === null) {
      throw new Error(`end of stream after ${at} of ${n} bytes`);
    }
    at += got;
  }
  return bytes;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) {
    at += await conn.write(bytes.subarray(at));
  }
}

async function readReply(conn: Deno.Conn): Promise<Reply> {
  return decodeReply(await readExactly(conn, Limits.REPLY_SIZE));
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return all;
}

/** Output frames up to the end frame, as type and text. */
async function readFrames(conn: Deno.Conn): Promise<[number, string][]> {
  const frames: [number, string][] = [];
  for (;;) {
    const header = decodeFrameHeader(
      await readExactly(conn, Limits.FRAME_HEADER_SIZE),
    );
    if (header.type === FrameType.END) return frames;
    frames.push([header.type, text(await readExactly(conn, header.length))]);
  }
}

function returns(value: number) {
  return (m: MethodBuilder) => m.return(value);
}

Deno.test("the loop retries its connect until the host listens, and ends at end of file", async () => {
  const result = await withLoop(async (host) => {
    await new Promise((resolve) => setTimeout(resolve, 300));
    const control = await host.acceptControl(host.listen(CONTROL));
    await writeAll(control, encodeRequest(host.compile(returns(6)), { id: 1 }));
    deepEqual(await readReply(control), { id: 1, status: 6, guestError: 0 });
    control.close();
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("the loop gives up connecting after its timeout and reports the errno", async () => {
  const start = performance.now();
  const result = await withLoop(() => Promise.resolve(), {
    connectTimeoutMs: 300,
  });
  const elapsed = performance.now() - start;
  deepEqual(result, {
    code: 1,
    stderr:
      `initx: connect to the host on port 9998 failed: errno ${Errno.ENOENT}\n`,
  });
  ok(elapsed >= 300 && elapsed < 5000, `${elapsed} ms`);
});

Deno.test("the loop ends at a malformed request header", async () => {
  const program = compile(buildExecProgram("/bin/true", ["true"]), {
    arch: HOST_ARCH,
  });
  const valid = encodeRequest(program, { id: 1 });
  const view = (bytes: Uint8Array) => new DataView(bytes.buffer);
  const cases: [string, (header: Uint8Array) => void][] = [
    ["bad magic", (h) => view(h).setUint32(0, 0x12345678, true)],
    ["program id 0", (h) => view(h).setUint32(4, 0, true)],
    ["unknown output flags", (h) => view(h).setUint32(8, 8, true)],
    ["unknown stdin mode", (h) => view(h).setUint32(12, 2, true)],
    ["nanoseconds of 10^9", (h) => view(h).setUint32(24, 1e9, true)],
    ["empty code", (h) => view(h).setUint32(28, 0, true)],
    [
      "code over 64 MiB",
      (h) => view(h).setUint32(28, 64 * 1024 * 1024 + 1, true),
    ],
    ["too many relocations", (h) => view(h).setUint32(32, 1 << 20, true)],
    [
      "entry outside the code",
      (h) => view(h).setUint32(40, program.code.length, true),
    ],
  ];
  for (const [what, spoil] of cases) {
    const request = valid.slice();
    spoil(request);
    const result = await withLoop(async (host) => {
      const control = await host.acceptControl(host.listen(CONTROL));
      await writeAll(control, request);
      // The loop closes with bytes unread, so the kernel may reset the connection.
      const end = await control.read(new Uint8Array(1)).catch((e) => {
        ok(e instanceof Deno.errors.ConnectionReset, what);
        return null;
      });
      equal(end, null, what);
    });
    deepEqual(result, { code: 0, stderr: "" }, what);
  }
  // End of file in the middle of the code.
  const result = await withLoop(async (host) => {
    const control = await host.acceptControl(host.listen(CONTROL));
    await writeAll(control, valid.subarray(0, Limits.REQUEST_HEADER_SIZE + 1));
    control.closeWrite();
    equal(await control.read(new Uint8Array(1)), null);
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("the loop reports a relocation outside the code as EINVAL and goes on", async () => {
  const result = await withLoop(async (host) => {
    const control = await host.acceptControl(host.listen(CONTROL));
    const program = host.compile(returns(3));
    const header = encodeRequestHeader({
      id: 5,
      outputFlags: 0,
      stdinMode: 0,
      clockSeconds: 0,
      clockNanoseconds: 0,
      codeSize: program.code.length,
      relocationCount: 1,
      bssSize: 0,
      entryOffset: program.entryOffset,
    });
    const relocation = new Uint8Array(4);
    new DataView(relocation.buffer).setUint32(0, program.code.length - 7, true);
    await writeAll(control, header);
    await writeAll(control, program.code);
    await writeAll(control, relocation);
    deepEqual(await readReply(control), {
      id: 5,
      status: 0,
      guestError: Errno.EINVAL,
    });
    await writeAll(control, encodeRequest(program, { id: 6 }));
    deepEqual(await readReply(control), { id: 6, status: 3, guestError: 0 });
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("the loop gives a program /dev/null and no fd of its own when no streams are asked for", async () => {
  const result = await withLoop(async (host) => {
    const control = await host.acceptControl(host.listen(CONTROL));
    const program = host.compile((m, p) => {
      // 16 * read(0) + write(1) + 2 * write(2), then + 64 for each fd 3..63 open.
      const buf = m.var("buf", { init: m.buffer(8) });
      const x = p.string("x");
      const r = m.syscall("read", [0, buf, 1]);
      const w1 = m.syscall("write", [1, x.ptr, x.len]);
      const w2 = m.syscall("write", [2, x.ptr, x.len]);
      const sum = m.var("sum", { init: m.add(m.mul(r, 16), w1) });
      m.add(sum, m.mul(w2, 2), { into: sum });
      const fd = m.var("fd", { init: 3 });
      m.while(m.lt(fd, 64), () => {
        const flags = m.syscall("fcntl", [fd, 1, /* F_GETFD */ 0]);
        m.if(m.not(m.isNegative(flags)), () => m.add(sum, 64, { into: sum }));
        m.add(fd, 1, { into: fd });
      });
      m.return(sum);
    });
    await writeAll(control, encodeRequest(program, { id: 1 }));
    deepEqual(await readReply(control), { id: 1, status: 3, guestError: 0 });
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("the loop connects stdin and output streams and frames the output", async () => {
  const result = await withLoop(async (host) => {
    const controlListener = host.listen(CONTROL);
    const stdinListener = host.listen(STDIN);
    const outputListener = host.listen(OUTPUT);
    const control = await host.acceptControl(controlListener);
    const program = host.compile((m, p) => {
      // Echo stdin to stdout, say "err" on stderr, return the byte count.
      const buf = m.var("buf", { init: m.buffer(4096) });
      const total = m.var("total", { init: 0 });
      m.label("read");
      const n = m.syscall("read", [0, buf, 4096]);
      m.if(m.gt(n, 0), () => {
        m.syscall("write", [1, buf, n]);
        m.add(total, n, { into: total });
        m.goto("read");
      });
      const err = p.string("err");
      m.syscall("write", [2, err.ptr, err.len]);
      m.return(total);
    });
    await writeAll(
      control,
      encodeRequest(program, { id: 42, outputFlags: 3, stdinMode: 1 }),
    );
    const stdin = await stdinListener.accept();
    const output = await outputListener.accept();
    try {
      deepEqual(
        decodeStreamHello(await readExactly(stdin, Limits.STREAM_HELLO_SIZE)),
        { kind: "stdin", id: 42 },
      );
      deepEqual(
        decodeStreamHello(await readExactly(output, Limits.STREAM_HELLO_SIZE)),
        { kind: "output", id: 42 },
      );
      await writeAll(stdin, new TextEncoder().encode("input bytes"));
      await stdin.closeWrite();
      const frames = await readFrames(output);
      equal(
        frames.filter(([t]) => t === 1).map(([, s]) => s).join(""),
        "input bytes",
      );
      deepEqual(frames.filter(([t]) => t === 2), [[2, "err"]]);
      equal((await readAll(output)).length, 0, "closed after the end frame");
      deepEqual(await readReply(control), {
        id: 42,
        status: 11,
        guestError: 0,
      });
    } finally {
      stdin.close();
      output.close();
    }
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("the loop drains a program's output when the host drops the output stream", async () => {
  const result = await withLoop(async (host) => {
    const controlListener = host.listen(CONTROL);
    const outputListener = host.listen(OUTPUT);
    const control = await host.acceptControl(controlListener);
    const program = host.compile((m, p) => {
      const chunk = p.bytes(new Uint8Array(65536));
      const i = m.var("i", { init: 0 });
      m.while(m.ltu(i, 64), () => {
        m.syscall("write", [1, chunk.ptr, chunk.len]);
        m.add(i, 1, { into: i });
      });
      m.return(8);
    });
    await writeAll(control, encodeRequest(program, { id: 1, outputFlags: 1 }));
    const output = await outputListener.accept();
    await readExactly(output, Limits.STREAM_HELLO_SIZE + 10);
    output.close();
    deepEqual(await readReply(control), { id: 1, status: 8, guestError: 0 });
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("the aarch64 loop runs under qemu-aarch64-static", async (t) => {
  if (HOST_ARCH === "aarch64") return;
  if (!needTool(t, QEMU_AARCH64, "it runs the aarch64 program loop")) return;
  const result = await withLoop(async (host) => {
    const control = await host.acceptControl(host.listen(CONTROL));
    const program = host.compile((m, p) => {
      const table = m.var("t", { init: p.pointers([p.string("ok")]) });
      const counter = m.var("c", { init: p.global(8) });
      m.add(m.mem(counter), 40, { into: m.mem(counter) });
      const ptr = m.var("ptr", { init: m.mem(table) });
      const byte = m.convert(m.mem(ptr, { width: 8 }), { width: 64 });
      m.return(m.add(m.mem(counter), byte));
    });
    ok(program.relocations.length > 0);
    await writeAll(control, encodeRequest(program, { id: 1 }));
    // 40 + "o" (111), low 8 bits.
    deepEqual(await readReply(control), {
      id: 1,
      status: (40 + 111) & 0xff,
      guestError: 0,
    });
  }, { arch: "aarch64" });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("buildExecProgram() prints why a chdir fails", async () => {
  const result = await withLoop(async (host) => {
    const control = await host.acceptControl(host.listen(CONTROL));
    const outputListener = host.listen(OUTPUT);
    const program = compile(
      buildExecProgram("/bin/true", ["true"], { cwd: "/nonexistent/dir" }),
      { arch: host.arch },
    );
    await writeAll(control, encodeRequest(program, { id: 1, outputFlags: 2 }));
    const output = await outputListener.accept();
    const hello = await readExactly(output, Limits.STREAM_HELLO_SIZE);
    deepEqual(decodeStreamHello(hello), { kind: "output", id: 1 });
    const frames = await readFrames(output);
    output.close();
    ok(frames.every(([type]) => type === FrameType.STDERR));
    equal(
      frames.map(([, s]) => s).join(""),
      "initx: cannot chdir /nonexistent/dir: errno 2\n",
    );
    deepEqual(await readReply(control), { id: 1, status: 127, guestError: 0 });
  });
  deepEqual(result, { code: 0, stderr: "" });
});

Deno.test("buildExecProgram() with pidNamespace runs the command as PID 1 of its own namespace", async (t) => {
  if (!need(t, Deno.uid() === 0, "unshare(CLONE_NEWPID) needs root")) return;
  const result = await withLoop(async (host) => {
    const control = await host.acceptControl(host.listen(CONTROL));
    const outputListener = host.listen(OUTPUT);
    const program = compile(
      buildExecProgram("/bin/sh", [
        "sh",
        "-c",
        'echo "pid=$$"; ls /proc | grep -c "^[0-9]"; exit 3',
      ], { pidNamespace: true }),
      { arch: host.arch },
    );
    await writeAll(control, encodeRequest(program, { id: 1, outputFlags: 3 }));
    const output = await outputListener.accept();
    const hello = await readExactly(output, Limits.STREAM_HELLO_SIZE);
    deepEqual(decodeStreamHello(hello), { kind: "output", id: 1 });
    const frames = await readFrames(output);
    output.close();
    const stdout = frames.filter(([type]) => type === FrameType.STDOUT)
      .map(([, s]) => s).join("");
    // PID 1, and a /proc of its own: sh, ls and grep are all it sees.
    const [pid, count] = stdout.trim().split("\n");
    equal(pid, "pid=1", JSON.stringify(frames));
    ok(Number(count) >= 1 && Number(count) <= 3, stdout);
    deepEqual(await readReply(control), { id: 1, status: 3, guestError: 0 });
  });
  deepEqual(result, { code: 0, stderr: "" });
});
