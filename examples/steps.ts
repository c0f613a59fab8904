/**
 * A program written as a list of init steps with the fragment helpers: it
 * makes a directory, writes a file into it, and runs `/bin/ls -l` there,
 * naming the failed step and its errno when one fails. It runs as a normal
 * process: `initx compile examples/steps.ts -o steps && ./steps`.
 *
 * @example
 * ```ts
 * import { program } from "./steps.ts";
 * import { compileElf } from "../src/ir/mod.ts";
 * console.assert(compileElf(program, { arch: "aarch64" }).length > 0);
 * ```
 *
 * @module
 */

import { type Program, ProgramBuilder } from "../src/ir/mod.ts";
import {
  Errno,
  forkExecWait,
  mkdir,
  writeBinaryFile,
} from "../src/initx/fragments/mod.ts";

function steps(): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const errno = m.var("errno");
    const step = m.var("step");
    const onError = { errno, goto: "fail", step };
    mkdir(m, { path: "initx-demo", ignore: [Errno.EEXIST], onError });
    writeBinaryFile(m, {
      path: "initx-demo/greeting.txt",
      bytes: new TextEncoder().encode("hello from initx\n"),
      onError,
    });
    const status = forkExecWait(m, {
      path: "/bin/ls",
      argv: ["ls", "-l"],
      cwd: "initx-demo",
      onError,
    });
    m.printf("ls exited with %d\n", [status]);
    m.return(status);
    m.label("fail");
    m.printf("%s failed: errno %d\n", [step, errno], { fd: 2 });
    m.return(1);
  });
  return p.build();
}

/**
 * The steps program.
 *
 * @example
 * ```ts
 * import { program } from "./steps.ts";
 * console.assert(program.entry === "main");
 * ```
 */
export const program: Program = steps();
