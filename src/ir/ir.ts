/**
 * The initx IR: plain data that describes a program independently of the
 * machine it runs on. {@link ProgramBuilder} writes it; `compile()` turns it
 * into position-independent machine code for x86_64 or aarch64.
 *
 * Every value the machine sees is 64 bits wide; a variable or a memory
 * operand of a narrower width is truncated when stored and extended (with
 * zeros, or with its sign for signed operations) when loaded.
 *
 * @module
 */

/** Width of a value in bits. */
export type Width = 8 | 16 | 32 | 64;

/**
 * A typed variable local to one method. Variables hold `width` bits.
 *
 * @example
 * ```ts
 * import type { Var } from "./ir.ts";
 * const counter: Var = { kind: "var", name: "counter", width: 64 };
 * ```
 */
export interface Var {
  /** Discriminant. */
  kind: "var";
  /** Name, unique within its method. */
  name: string;
  /** Width in bits. */
  width: Width;
}

/**
 * An integer constant. Without a width it takes the width of the operation
 * that uses it.
 *
 * @example
 * ```ts
 * import type { Const } from "./ir.ts";
 * const minusOne: Const = { kind: "const", value: -1n, width: 32 };
 * ```
 */
export interface Const {
  /** Discriminant. */
  kind: "const";
  /** Value; it must fit the width as a signed or an unsigned number. */
  value: bigint;
  /** Width in bits; absent means "the width of its context". */
  width?: Width;
}

/**
 * The address (64 bits) of a constant data item of the program.
 *
 * @example
 * ```ts
 * import type { DataRef } from "./ir.ts";
 * const greeting: DataRef = { kind: "data", name: "greeting" };
 * ```
 */
export interface DataRef {
  /** Discriminant. */
  kind: "data";
  /** Name of the data item. */
  name: string;
}

/**
 * The address (64 bits) of a stack buffer of the current method.
 *
 * @example
 * ```ts
 * import type { BufferRef } from "./ir.ts";
 * const scratch: BufferRef = { kind: "buffer", name: "scratch" };
 * ```
 */
export interface BufferRef {
  /** Discriminant. */
  kind: "buffer";
  /** Name of the buffer, declared in the method's `buffers`. */
  name: string;
}

/**
 * The address (64 bits) of a zero-initialised global buffer of the program.
 *
 * @example
 * ```ts
 * import type { GlobalRef } from "./ir.ts";
 * const state: GlobalRef = { kind: "global", name: "state" };
 * ```
 */
export interface GlobalRef {
  /** Discriminant. */
  kind: "global";
  /** Name of the global, declared in the program's `globals`. */
  name: string;
}

/**
 * The address (64 bits) of a method's code, for indirect calls.
 *
 * @example
 * ```ts
 * import type { MethodRef } from "./ir.ts";
 * const handler: MethodRef = { kind: "method", name: "handler" };
 * ```
 */
export interface MethodRef {
  /** Discriminant. */
  kind: "method";
  /** Name of the method. */
  name: string;
}

/**
 * A memory operand: `width` bits at the address held in `base` plus `disp`.
 *
 * @example
 * ```ts
 * import type { Mem } from "./ir.ts";
 * const secondWord: Mem = {
 *   kind: "mem",
 *   base: { kind: "var", name: "p", width: 64 },
 *   disp: 4,
 *   width: 32,
 * };
 * ```
 */
export interface Mem {
  /** Discriminant. */
  kind: "mem";
  /** Variable holding the base address; it must be 64 bits wide. */
  base: Var;
  /** Signed byte displacement added to the base (32-bit range). */
  disp: number;
  /** Access width in bits. */
  width: Width;
}

/**
 * Anything a statement can read.
 *
 * @example
 * ```ts
 * import type { Operand } from "./ir.ts";
 * const seven: Operand = { kind: "const", value: 7n };
 * ```
 */
export type Operand =
  | Var
  | Const
  | DataRef
  | BufferRef
  | GlobalRef
  | MethodRef
  | Mem;

/**
 * Anything a statement can write.
 *
 * @example
 * ```ts
 * import type { Place } from "./ir.ts";
 * const x: Place = { kind: "var", name: "x", width: 64 };
 * ```
 */
export type Place = Var | Mem;

/**
 * Two-operand arithmetic and bitwise operations. `udiv`/`urem` are unsigned,
 * `sdiv`/`srem` signed (rounding toward zero), `shr` is logical and `sar`
 * arithmetic. Shift counts are taken modulo 64. Division by zero gives a
 * quotient of 0 and a remainder equal to the dividend on every architecture.
 *
 * @example
 * ```ts
 * import type { BinaryOp } from "./ir.ts";
 * const op: BinaryOp = "sdiv";
 * ```
 */
export type BinaryOp =
  | "add"
  | "sub"
  | "mul"
  | "udiv"
  | "sdiv"
  | "urem"
  | "srem"
  | "shl"
  | "shr"
  | "sar"
  | "and"
  | "or"
  | "xor";

/**
 * Comparison operators: `lt`/`le`/`gt`/`ge` are signed, the `u` variants
 * unsigned.
 *
 * @example
 * ```ts
 * import type { CompareOp } from "./ir.ts";
 * const op: CompareOp = "ltu";
 * ```
 */
export type CompareOp =
  | "eq"
  | "ne"
  | "lt"
  | "le"
  | "gt"
  | "ge"
  | "ltu"
  | "leu"
  | "gtu"
  | "geu";

/**
 * A condition for `if`: a comparison of two operands of the same width, or
 * the negation of a condition.
 *
 * @example
 * ```ts
 * import type { Condition } from "./ir.ts";
 * const isZero: Condition = {
 *   kind: "compare",
 *   op: "eq",
 *   a: { kind: "var", name: "n", width: 64 },
 *   b: { kind: "const", value: 0n },
 * };
 * ```
 */
export type Condition =
  | { kind: "compare"; op: CompareOp; a: Operand; b: Operand }
  | { kind: "not"; cond: Condition };

/**
 * One argument of a `printf` statement: `%d`, `%u`, `%x` and `%c` take an
 * operand; `%s` takes a pointer and a length (`{ ptr, len }`) or a pointer to
 * a NUL-terminated string.
 *
 * @example
 * ```ts
 * import type { PrintfArg } from "./ir.ts";
 * const arg: PrintfArg = {
 *   ptr: { kind: "data", name: "name" },
 *   len: { kind: "const", value: 5n },
 * };
 * ```
 */
export type PrintfArg = Operand | { ptr: Operand; len: Operand };

/**
 * A statement of a method body.
 *
 * - `assign`: `dst = src` (same width).
 * - `convert`: `dst = src` across widths, truncating or extending (with the
 *   sign when `signed`).
 * - `binary`: `dst = a op b` (all the same width).
 * - `syscall`: a Linux system call by name; arguments are passed as 64-bit
 *   values, the result (a 64-bit value, negative errno on failure) is stored.
 * - `if`: run `then` when `cond` holds, else `else`.
 * - `label` / `goto`: a jump target within the method, and a jump to it.
 * - `call`: call a method by name, or the code at an operand's address, with
 *   up to six arguments; the 64-bit result is stored.
 * - `return`: leave the method with a value (0 when absent).
 * - `printf`: format `%d %u %x %s %c %%` to a file descriptor.
 *
 * @example
 * ```ts
 * import type { Statement } from "./ir.ts";
 * const s: Statement = {
 *   kind: "binary",
 *   op: "add",
 *   dst: { kind: "var", name: "i", width: 64 },
 *   a: { kind: "var", name: "i", width: 64 },
 *   b: { kind: "const", value: 1n },
 * };
 * ```
 */
export type Statement =
  | { kind: "assign"; dst: Place; src: Operand }
  | { kind: "convert"; dst: Place; src: Operand; signed: boolean }
  | { kind: "binary"; op: BinaryOp; dst: Place; a: Operand; b: Operand }
  | { kind: "syscall"; name: string; args: Operand[]; result?: Place }
  | { kind: "if"; cond: Condition; then: Statement[]; else: Statement[] }
  | { kind: "label"; name: string }
  | { kind: "goto"; label: string }
  | {
    kind: "call";
    target: string | Operand;
    args: Operand[];
    result?: Place;
  }
  | { kind: "return"; value?: Operand }
  | { kind: "printf"; fd: Operand; format: string; args: PrintfArg[] };

/**
 * A method: parameters, stack buffers, and a body. Variables are declared by
 * use; each name must keep one width.
 *
 * @example
 * ```ts
 * import type { Method } from "./ir.ts";
 * const main: Method = {
 *   name: "main",
 *   params: [],
 *   buffers: [],
 *   body: [{ kind: "return", value: { kind: "const", value: 0n } }],
 * };
 * ```
 */
export interface Method {
  /** Name, unique within the program. */
  name: string;
  /** Parameters (at most six), in order. */
  params: Var[];
  /** Stack buffers: a name and a size in bytes. */
  buffers: { name: string; size: number }[];
  /** Statements, run in order. */
  body: Statement[];
}

/**
 * Constant data: bytes, or a table of 64-bit pointers to other data items
 * (`null` for a zero entry), e.g. an `argv` array. Pointer tables produce
 * relocations.
 *
 * @example
 * ```ts
 * import type { DataItem } from "./ir.ts";
 * const items: DataItem[] = [
 *   { name: "sh", bytes: new TextEncoder().encode("/bin/sh\0") },
 *   { name: "argv", pointers: ["sh", null] },
 * ];
 * ```
 */
export type DataItem =
  | { name: string; bytes: Uint8Array }
  | { name: string; pointers: (string | null)[] };

/**
 * A whole program.
 *
 * @example
 * ```ts
 * import type { Program } from "./ir.ts";
 * const program: Program = {
 *   entry: "main",
 *   methods: [{
 *     name: "main",
 *     params: [],
 *     buffers: [],
 *     body: [{ kind: "return", value: { kind: "const", value: 3n } }],
 *   }],
 *   data: [],
 *   globals: [],
 * };
 * ```
 */
export interface Program {
  /**
   * Name of the entry method. Compiled as an ELF, it receives `argc`,
   * `argv` and `envp` as its first three parameters (when it declares them)
   * and its return value is the exit status.
   */
  entry: string;
  /** Methods. */
  methods: Method[];
  /** Constant data. */
  data: DataItem[];
  /** Zero-initialised global buffers (not stored in the code). */
  globals: { name: string; size: number }[];
}

/**
 * Raised when a program cannot be compiled. The message names the method and
 * the fragment (statement index, with `.then.N`/`.else.N` inside `if`).
 *
 * @example
 * ```ts
 * import { CompileError } from "./ir.ts";
 * const error = new CompileError('Cannot compile method "main": boom');
 * console.assert(error.name === "CompileError");
 * ```
 */
export class CompileError extends Error {
  /**
   * Make an error with the given message.
   *
   * @param message The full message.
   */
  constructor(message: string) {
    super(message);
    this.name = "CompileError";
  }
}
