import { throws } from "node:assert/strict";
import { compile, ProgramBuilder } from "./mod.ts";
import type { Program, Width } from "./mod.ts";

function program(body: Parameters<ProgramBuilder["method"]>[1]): Program {
  const p = new ProgramBuilder();
  p.method("main", body);
  return p.build();
}

function rejects(
  p: Program,
  message: string,
  arch: "x86_64" | "aarch64" = "x86_64",
): void {
  throws(() => compile(p, { arch }), { name: "CompileError", message });
}

Deno.test("compile() rejects an undeclared label", () => {
  const p = program((m) => {
    m.printf("start\n");
    m.goto("done");
  });
  for (const arch of ["x86_64", "aarch64"] as const) {
    rejects(
      p,
      'Cannot compile method "main": fragment 1 (goto): label "done" is used but never declared',
      arch,
    );
  }
});

Deno.test("compile() names the fragment path inside if", () => {
  const p = program((m) => {
    const x = m.var("x", { init: 1 });
    m.if(m.eq(x, 1), () => m.printf("one\n"), () => {
      m.printf("other\n");
      m.goto("nowhere");
    });
  });
  rejects(
    p,
    'Cannot compile method "main": fragment 1.else.1 (goto): label "nowhere" is used but never declared',
  );
});

Deno.test("compile() rejects a label declared twice", () => {
  const p = program((m) => {
    m.label("again");
    m.label("again");
  });
  rejects(
    p,
    'Cannot compile method "main": fragment 1 (label): label "again" is declared twice',
  );
});

Deno.test("compile() rejects an unknown syscall", () => {
  const p = program((m) => {
    m.syscall("getpid");
    m.syscall("frobnicate", [1]);
  });
  for (const arch of ["x86_64", "aarch64"] as const) {
    rejects(
      p,
      'Cannot compile method "main": fragment 1 (syscall): syscall "frobnicate" is unknown',
      arch,
    );
  }
});

Deno.test("compile() rejects a syscall the architecture lacks", () => {
  const p = program((m) => m.syscall("open", [0, 0]));
  compile(p, { arch: "x86_64" });
  rejects(
    p,
    'Cannot compile method "main": fragment 0 (syscall): syscall "open" does not exist on aarch64',
    "aarch64",
  );
});

Deno.test("compile() rejects a width the backend cannot encode", () => {
  const wide = program((m) => {
    const p = m.var("p", { init: m.buffer(32) });
    m.set(m.mem(p, { width: 128 as Width }), 1);
  });
  for (const arch of ["x86_64", "aarch64"] as const) {
    rejects(
      wide,
      `Cannot compile method "main": fragment 1 (assign): width 128 cannot be encoded on ${arch}`,
      arch,
    );
  }
  const odd = program((m) => m.var("x", { width: 24 as Width, init: 0 }));
  rejects(
    odd,
    'Cannot compile method "main": fragment 0 (assign): width 24 of variable "x" cannot be encoded on x86_64',
  );
  const far = program((m) => {
    const p = m.var("p", { init: 0 });
    m.set(m.mem(p, { disp: 2 ** 31 }), 1);
  });
  rejects(
    far,
    'Cannot compile method "main": fragment 1 (assign): displacement 2147483648 cannot be encoded on x86_64',
  );
});

Deno.test("compile() rejects a width mismatch", () => {
  const p = program((m) => {
    const a = m.var("a", { init: 1 });
    const b = m.var("b", { width: 32, init: 2 });
    m.add(a, b, { into: a });
  });
  rejects(
    p,
    'Cannot compile method "main": fragment 2 (binary): width mismatch: right operand is 32 bits, expected 64',
  );
  const cmp = program((m) => {
    const a = m.var("a", { width: 8, init: 1 });
    m.if(m.eq(a, m.const(1, 16)), () => m.return(1));
  });
  rejects(
    cmp,
    'Cannot compile method "main": fragment 1 (if): width mismatch: comparing a 8-bit value with a 16-bit value',
  );
  const twice = program((m) => {
    m.var("a", { init: 1 });
    m.var("a", { width: 16, init: 1 });
  });
  rejects(
    twice,
    'Cannot compile method "main": fragment 1 (assign): width mismatch: variable "a" is used with widths 64 and 16',
  );
});

Deno.test("compile() rejects a constant too wide for its context", () => {
  const p = program((m) => m.var("x", { width: 8, init: 300 }));
  rejects(
    p,
    'Cannot compile method "main": fragment 0 (assign): constant 300 does not fit in 8 bits',
  );
});

Deno.test("compile() rejects calls to unknown methods and wrong argument counts", () => {
  const p = new ProgramBuilder();
  p.method("one", (m) => m.return(m.params("x")[0]));
  p.method("main", (m) => {
    m.call("one", [1, 2]);
  });
  rejects(
    p.build(),
    'Cannot compile method "main": fragment 0 (call): method "one" takes 1 arguments, got 2',
  );
  rejects(
    program((m) => m.call("missing")),
    'Cannot compile method "main": fragment 0 (call): method "missing" is called but never declared',
  );
});

Deno.test("compile() rejects bad printf formats", () => {
  rejects(
    program((m) => m.printf("%q\n", [1])),
    'Cannot compile method "main": fragment 0 (printf): directive "%q" is not supported (use %d %u %x %c %s %%)',
  );
  rejects(
    program((m) => m.printf("%d %d\n", [1])),
    'Cannot compile method "main": fragment 0 (printf): directive "%d" has no argument',
  );
  rejects(
    program((m) => m.printf("%d\n", [1, 2])),
    'Cannot compile method "main": fragment 0 (printf): format "%d\n" takes 1 arguments, got 2',
  );
});

Deno.test("compile() rejects a missing entry method and duplicate methods", () => {
  rejects(
    new ProgramBuilder({ entry: "start" }).build(),
    'Cannot compile program: entry method "start" is not declared',
  );
  const p = new ProgramBuilder();
  p.method("main", () => {});
  p.method("main", () => {});
  rejects(p.build(), 'Cannot compile program: method "main" is declared twice');
});

Deno.test("compile() rejects a pointer table naming undeclared data", () => {
  const p = new ProgramBuilder();
  p.pointers([{ kind: "data", name: "ghost" }]);
  p.method("main", () => {});
  rejects(
    p.build(),
    'Cannot compile program: pointer table "$d0" refers to data "ghost", which is not declared',
  );
});
