/**
 * Boots the default kernel in a micro-VM and runs two compiled programs in
 * it: one writes `hello` to stdout and `oops` to stderr and exits 7, the
 * other copies its stdin to its stdout. It prints what came back.
 *
 * `deno task example:program` runs it on the host's KVM, or inside the KVM
 * lab on hosts whose KVM cannot boot Linux (`deno run -A
 * examples/program.ts` runs it directly).
 *
 * @example
 * ```ts
 * import { echoProgram, helloProgram } from "./program.ts";
 * console.assert(helloProgram().entry === "main");
 * console.assert(echoProgram().entry === "main");
 * ```
 *
 * @module
 */

import {
  ExitError,
  type Program,
  ProgramBuilder,
  VirtualMachine,
} from "../mod.ts";

/** Writes `hello` to stdout and `oops` to stderr, then exits 7. */
export function helloProgram(): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    m.printf("hello\n");
    m.printf("oops\n", [], { fd: 2 });
    m.return(7);
  });
  return p.build();
}

/** Copies stdin to stdout until end of file, then exits 0. */
export function echoProgram(): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const buf = m.buffer(65536);
    const n = m.var("n");
    m.label("loop");
    m.syscall("read", [0, buf, 65536], { into: n });
    m.if(m.le(n, 0), () => m.return(0));
    const done = m.var("done", { init: 0 });
    m.while(m.lt(done, n), () => {
      const at = m.add(buf, done);
      const w = m.syscall("write", [1, at, m.sub(n, done)]);
      m.if(m.le(w, 0), () => m.return(1));
      m.add(done, w, { into: done });
    });
    m.goto("loop");
  });
  return p.build();
}

if (import.meta.main) {
  const text = new TextDecoder();
  await using vm = await VirtualMachine.create({ memoryMiB: 256 });
  const inLab = Deno.env.get("INITX_IN_LAB") === "1";
  await vm.boot({ timeoutMs: inLab ? 120_000 : 10_000 });
  try {
    await vm.runWithCapture(helloProgram());
  } catch (e) {
    if (!(e instanceof ExitError)) throw e;
    console.log(
      `stdout: ${JSON.stringify(text.decode(e.stdout ?? new Uint8Array()))}`,
    );
    console.log(
      `stderr: ${JSON.stringify(text.decode(e.stderr ?? new Uint8Array()))}`,
    );
    console.log(`exit code: ${e.code}`);
  }
  const { stdout } = await vm.runWithCapture(
    echoProgram(),
    {},
    new TextEncoder().encode("echo through the guest\n"),
  );
  console.log(`echo: ${JSON.stringify(text.decode(stdout))}`);
}
