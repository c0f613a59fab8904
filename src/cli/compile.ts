/**
 * `initx compile prog.ts --arch x86_64|aarch64 -o out`: import a TypeScript
 * module, take its exported `program` (an IR {@link Program}), compile it to
 * a static Linux ELF executable and write it with mode 0755.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { basename, extname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import {
  type Arch,
  compileElf,
  CompileError,
  type Program,
} from "../ir/mod.ts";

const USAGE =
  `Usage: initx compile <module.ts> [--arch x86_64|aarch64] [-o <output>]

Compiles the IR program a module exports as \`program\` to a static Linux
executable. --arch defaults to the host's, -o to the module's name without
its extension.`;

const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];

function isProgram(value: unknown): value is Program {
  if (typeof value !== "object" || value === null) return false;
  const p = value as Partial<Program>;
  return typeof p.entry === "string" && Array.isArray(p.methods) &&
    Array.isArray(p.data) && Array.isArray(p.globals);
}

function hostArch(): Arch | undefined {
  return ARCHES.find((a) => a === Deno.build.arch);
}

/**
 * Run `initx compile` with its arguments (the words after `compile`).
 * Errors are printed to stderr.
 *
 * @example
 * ```ts ignore
 * import { compileCommand } from "./compile.ts";
 * const code = await compileCommand(["examples/hello.ts", "--arch", "x86_64", "-o", "hello"]);
 * ```
 *
 * @param args The command-line arguments.
 * @returns The exit code: 0 on success, 1 when compiling fails, 2 for a
 * usage error.
 */
export async function compileCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        arch: { type: "string" },
        output: { type: "string", short: "o" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    console.error(
      `Cannot parse arguments: ${(error as Error).message}\n\n${USAGE}`,
    );
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(
      `Cannot compile: expected one module, got ${positionals.length}\n\n${USAGE}`,
    );
    return 2;
  }
  const source = positionals[0]!;
  const arch = values.arch ?? hostArch();
  if (!ARCHES.includes(arch as Arch)) {
    console.error(
      `Cannot compile ${source}: architecture "${
        arch ?? Deno.build.arch
      }" is not supported (use x86_64 or aarch64)`,
    );
    return 2;
  }
  const output = values.output ?? basename(source, extname(source));

  const path = resolve(source);
  try {
    if (!(await Deno.stat(path)).isFile) {
      console.error(`Cannot compile ${source}: it is not a file`);
      return 1;
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      console.error(`Cannot compile ${source}: file not found`);
      return 1;
    }
    throw error;
  }
  let module: Record<string, unknown>;
  try {
    module = await import(pathToFileURL(path).href);
  } catch (error) {
    console.error(`Cannot import ${source}: ${(error as Error).message}`);
    return 1;
  }
  const program = module.program;
  if (program === undefined) {
    console.error(
      `Cannot compile ${source}: the module does not export "program"`,
    );
    return 1;
  }
  if (!isProgram(program)) {
    console.error(
      `Cannot compile ${source}: its export "program" is not an IR program (build one with ProgramBuilder)`,
    );
    return 1;
  }
  let elf: Uint8Array;
  try {
    elf = compileElf(program, { arch: arch as Arch });
  } catch (error) {
    if (error instanceof CompileError) {
      console.error(`Cannot compile ${source}: ${error.message}`);
      return 1;
    }
    throw error;
  }
  try {
    await Deno.writeFile(output, elf, { mode: 0o755 });
    await Deno.chmod(output, 0o755);
  } catch (error) {
    console.error(`Cannot write ${output}: ${(error as Error).message}`);
    return 1;
  }
  console.log(`Wrote ${output}: ${elf.length} bytes, ${arch}`);
  return 0;
}
