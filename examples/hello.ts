/**
 * A program that prints hello and exits 0, written with initx's IR builder.
 *
 * Run `deno run -A examples/hello.ts hello.elf [x86_64|aarch64]` to write it
 * as a static Linux executable.
 *
 * @example
 * ```ts
 * import { program } from "./hello.ts";
 * import { compileElf } from "../src/ir/mod.ts";
 * const elf = compileElf(program, { arch: "x86_64" });
 * console.assert(elf.length > 0);
 * ```
 *
 * @module
 */

import { compileElf, type Program, ProgramBuilder } from "../src/ir/mod.ts";

function hello(): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    m.printf("hello from %s\n", [p.string("initx")]);
    m.return(0);
  });
  return p.build();
}

/**
 * The hello program.
 *
 * @example
 * ```ts
 * import { program } from "./hello.ts";
 * console.assert(program.entry === "main");
 * ```
 */
export const program: Program = hello();

if (import.meta.main) {
  const [path = "hello.elf", arch = "x86_64"] = Deno.args;
  if (arch !== "x86_64" && arch !== "aarch64") {
    throw new Error(`Cannot compile for "${arch}": use x86_64 or aarch64`);
  }
  await Deno.writeFile(path, compileElf(program, { arch }), { mode: 0o755 });
}
