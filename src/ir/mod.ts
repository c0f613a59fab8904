/**
 * initx's IR and compiler: describe a program with {@link ProgramBuilder},
 * then {@link compile} it to position-independent x86_64 or aarch64 code
 * (for a loader that applies relocations and calls the entry), or
 * {@link compileElf} it to a static Linux executable.
 *
 * ```ts
 * import { compileElf, ProgramBuilder } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   m.printf("hello from %s\n", [p.string("initx")]);
 *   m.return(0);
 * });
 * const elf = compileElf(p.build(), { arch: "x86_64" });
 * ```
 *
 * @module
 */

import { generate } from "./_codegen.ts";
import { writeElf } from "./elf.ts";
import type { Program } from "./ir.ts";
import type { Arch } from "./syscalls.ts";

export {
  type ByteString,
  type IntoOptions,
  MethodBuilder,
  ProgramBuilder,
  type Value,
} from "./builder.ts";
export type {
  BinaryOp,
  BufferRef,
  CompareOp,
  Condition,
  Const,
  DataItem,
  DataRef,
  GlobalRef,
  Mem,
  Method,
  MethodRef,
  Operand,
  Place,
  PrintfArg,
  Program,
  Statement,
  Var,
  Width,
} from "./ir.ts";
export { CompileError } from "./ir.ts";
export { type Arch, syscallNumber } from "./syscalls.ts";
export { type ElfImage, type ElfOptions, writeElf } from "./elf.ts";

/**
 * Options of {@link compile} and {@link compileElf}.
 *
 * @example
 * ```ts
 * import type { CompileOptions } from "./mod.ts";
 * const options: CompileOptions = { arch: "aarch64" };
 * ```
 */
export interface CompileOptions {
  /** Target architecture. */
  arch: Arch;
}

/**
 * A compiled program: position-independent code (constant data included),
 * the offsets of 64-bit code-relative addresses a loader must rebase (add
 * the load address to), the zeroed bytes the program needs right after the
 * code, and the offset of the entry method. The entry method follows the C
 * calling convention of the architecture: up to six integer arguments, one
 * integer result.
 *
 * @example
 * ```ts
 * import { compile, ProgramBuilder } from "./mod.ts";
 * import type { CompiledProgram } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => m.return(42));
 * const compiled: CompiledProgram = compile(p.build(), { arch: "aarch64" });
 * console.assert(compiled.code.length % 4 === 0);
 * ```
 */
export interface CompiledProgram {
  /** Machine code and constant data. */
  code: Uint8Array;
  /** Offsets in `code` of 64-bit code-relative addresses. */
  relocations: number[];
  /** Zeroed bytes needed right after `code` (globals). */
  bssSize: number;
  /** Offset of the entry method in `code`. */
  entryOffset: number;
}

/**
 * Compile a program to position-independent machine code.
 *
 * @example
 * ```ts
 * import { compile, ProgramBuilder } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   const [a, b] = m.params("a", "b");
 *   m.return(m.add(a, b));
 * });
 * const { code, entryOffset } = compile(p.build(), { arch: "x86_64" });
 * console.assert(code.length > 0 && entryOffset === 0);
 * ```
 *
 * @param program The program.
 * @param options The target architecture.
 * @returns The code, relocations, bss size and entry offset.
 * @throws {CompileError} When the program is invalid; the message names the
 * method and the fragment.
 */
export function compile(
  program: Program,
  options: CompileOptions,
): CompiledProgram {
  const { code, relocations, bssSize, entryOffset } = generate(program, {
    arch: options.arch,
  });
  return { code, relocations, bssSize, entryOffset };
}

/**
 * Compile a program to a static Linux ELF executable. Its entry method gets
 * `argc`, `argv` and `envp` as its first parameters (when it declares them)
 * and its result becomes the exit status. It runs as a normal process or as
 * PID 1.
 *
 * @example
 * ```ts
 * import { compileElf, ProgramBuilder } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   const [argc] = m.params("argc");
 *   m.return(argc);
 * });
 * const elf = compileElf(p.build(), { arch: "aarch64" });
 * console.assert(elf[18] === 183); // EM_AARCH64
 * ```
 *
 * @param program The program.
 * @param options The target architecture.
 * @returns The executable's bytes.
 * @throws {CompileError} When the program is invalid.
 */
export function compileElf(
  program: Program,
  options: CompileOptions,
): Uint8Array {
  const generated = generate(program, { arch: options.arch, start: true });
  return writeElf({ ...generated, entryOffset: generated.startOffset ?? 0 }, {
    arch: options.arch,
  });
}
