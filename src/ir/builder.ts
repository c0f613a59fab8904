/**
 * A builder that writes initx IR in a few readable lines.
 *
 * ```ts
 * import { ProgramBuilder } from "./builder.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   m.printf("hello %s\n", [p.string("world")]);
 *   m.return(0);
 * });
 * const program = p.build();
 * ```
 *
 * @module
 */

import type {
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

/**
 * A constant byte string of the program: its address and its length (not
 * counting a terminating NUL).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "./builder.ts";
 * const p = new ProgramBuilder();
 * const s = p.string("hi\n");
 * console.assert(s.len.value === 3n);
 * ```
 */
export interface ByteString {
  /** Discriminant. */
  kind: "bytes";
  /** Address of the first byte. */
  ptr: DataRef;
  /** Length in bytes, as a 64-bit constant. */
  len: Const;
}

/**
 * What builder methods accept where the IR wants an operand: an operand, a
 * JavaScript integer (a constant taking its context's width), or a byte
 * string (its address).
 *
 * @example
 * ```ts
 * import type { Value } from "./builder.ts";
 * const values: Value[] = [1, 2n, { kind: "const", value: 3n, width: 8 }];
 * ```
 */
export type Value = Operand | number | bigint | ByteString;

/**
 * Options of value-producing builder methods.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "./builder.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const i = m.var("i", { init: 0 });
 *   m.add(i, 1, { into: i });
 * });
 * ```
 */
export interface IntoOptions<P extends Place = Place> {
  /** Where to store the result; by default a fresh variable. */
  into?: P;
}

function toOperand(value: Value): Operand {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(
        `Cannot use ${value} as a constant: it is not a safe integer`,
      );
    }
    return { kind: "const", value: BigInt(value) };
  }
  if (typeof value === "bigint") return { kind: "const", value };
  if (value.kind === "bytes") return value.ptr;
  return value;
}

function widthOf(operand: Operand): Width | undefined {
  switch (operand.kind) {
    case "var":
    case "mem":
      return operand.width;
    case "const":
      return operand.width;
    default:
      return 64;
  }
}

/**
 * Builds one method's body; made by {@link ProgramBuilder.method}.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "./builder.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   const i = m.var("i", { init: 0 });
 *   m.while(m.lt(i, 3), () => {
 *     m.printf("%d\n", [i]);
 *     m.add(i, 1, { into: i });
 *   });
 *   m.return(0);
 * });
 * ```
 */
export class MethodBuilder {
  #method: Method;
  #statements: Statement[];
  #temps = 0;
  #labels = 0;
  #program: ProgramBuilder;

  /**
   * Start a method; use {@link ProgramBuilder.method} instead.
   *
   * @param program The program the method belongs to.
   * @param name The method's name.
   */
  constructor(program: ProgramBuilder, name: string) {
    this.#program = program;
    this.#method = { name, params: [], buffers: [], body: [] };
    this.#statements = this.#method.body;
  }

  /** The method built so far. */
  get method(): Method {
    return this.#method;
  }

  /**
   * Declare parameters, in order, all 64 bits wide unless given as
   * `{ name, width }`.
   *
   * @param names The parameters.
   * @returns One variable per parameter.
   */
  params<const N extends readonly (string | { name: string; width: Width })[]>(
    ...names: N
  ): { [K in keyof N]: Var } {
    const vars = names.map((n) => {
      const spec = typeof n === "string" ? { name: n, width: 64 as Width } : n;
      const v = this.#declare(spec.name, spec.width);
      this.#method.params.push(v);
      return v;
    });
    return vars as { [K in keyof N]: Var };
  }

  /**
   * Declare a variable, optionally with an initial value.
   *
   * @param name The variable's name.
   * @param options Width (default 64) and initial value.
   * @returns The variable.
   */
  var(name: string, options: { width?: Width; init?: Value } = {}): Var {
    const v = this.#declare(name, options.width ?? 64);
    if (options.init !== undefined) this.set(v, options.init);
    return v;
  }

  #declare(name: string, width: Width): Var {
    return { kind: "var", name, width };
  }

  #temp(width: Width): Var {
    return this.#declare(`$t${this.#temps++}`, width);
  }

  /**
   * A constant of an explicit width.
   *
   * @param value The value (signed or unsigned).
   * @param width Its width.
   * @returns The constant.
   */
  const(value: number | bigint, width: Width): Const {
    return { kind: "const", value: BigInt(value), width };
  }

  /**
   * A memory operand at `base + disp`.
   *
   * @param base A 64-bit variable holding an address.
   * @param options Displacement (default 0) and width (default 64).
   * @returns The operand.
   */
  mem(base: Var, options: { disp?: number; width?: Width } = {}): Mem {
    return {
      kind: "mem",
      base,
      disp: options.disp ?? 0,
      width: options.width ?? 64,
    };
  }

  /**
   * A stack buffer of this method, alive until it returns.
   *
   * @param size Size in bytes.
   * @param options An optional name.
   * @returns The buffer's address.
   */
  buffer(size: number, options: { name?: string } = {}): BufferRef {
    const name = options.name ?? `$b${this.#method.buffers.length}`;
    this.#method.buffers.push({ name, size });
    return { kind: "buffer", name };
  }

  /**
   * The address of a method, for {@link MethodBuilder.call}.
   *
   * @param name The method's name.
   * @returns The code pointer.
   */
  addressOf(name: string): MethodRef {
    return { kind: "method", name };
  }

  /**
   * `dst = src`.
   *
   * @param dst A variable or memory operand.
   * @param src The value.
   */
  set(dst: Place, src: Value): void {
    this.#statements.push({ kind: "assign", dst, src: toOperand(src) });
  }

  /**
   * Convert a value to another width, truncating or extending.
   *
   * @param src The value.
   * @param options Target width, sign extension, destination.
   * @returns The destination.
   */
  convert<P extends Place = Var>(
    src: Value,
    options: { width: Width; signed?: boolean; into?: P },
  ): P {
    const dst = options.into ?? this.#temp(options.width) as P;
    this.#statements.push({
      kind: "convert",
      dst,
      src: toOperand(src),
      signed: options.signed ?? false,
    });
    return dst;
  }

  #binary<P extends Place>(
    op: BinaryOp,
    a: Value,
    b: Value,
    options: IntoOptions<P>,
  ): P {
    const ao = toOperand(a);
    const bo = toOperand(b);
    const dst = options.into ??
      this.#temp(widthOf(ao) ?? widthOf(bo) ?? 64) as P;
    this.#statements.push({ kind: "binary", op, dst, a: ao, b: bo });
    return dst;
  }

  /** `a + b`. @returns The destination. */
  add<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("add", a, b, options);
  }
  /** `a - b`. @returns The destination. */
  sub<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("sub", a, b, options);
  }
  /** `a * b`. @returns The destination. */
  mul<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("mul", a, b, options);
  }
  /** Unsigned `a / b`. @returns The destination. */
  udiv<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("udiv", a, b, options);
  }
  /** Signed `a / b`, rounding toward zero. @returns The destination. */
  sdiv<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("sdiv", a, b, options);
  }
  /** Unsigned `a % b`. @returns The destination. */
  urem<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("urem", a, b, options);
  }
  /** Signed `a % b` (sign of `a`). @returns The destination. */
  srem<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("srem", a, b, options);
  }
  /** `a << b`. @returns The destination. */
  shl<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("shl", a, b, options);
  }
  /** Logical `a >> b`. @returns The destination. */
  shr<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("shr", a, b, options);
  }
  /** Arithmetic `a >> b`. @returns The destination. */
  sar<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("sar", a, b, options);
  }
  /** `a & b`. @returns The destination. */
  and<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("and", a, b, options);
  }
  /** `a | b`. @returns The destination. */
  or<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("or", a, b, options);
  }
  /** `a ^ b`. @returns The destination. */
  xor<P extends Place = Var>(
    a: Value,
    b: Value,
    options: IntoOptions<P> = {},
  ): P {
    return this.#binary("xor", a, b, options);
  }

  #compare(op: CompareOp, a: Value, b: Value): Condition {
    return { kind: "compare", op, a: toOperand(a), b: toOperand(b) };
  }

  /** `a == b`. @returns The condition. */
  eq(a: Value, b: Value): Condition {
    return this.#compare("eq", a, b);
  }
  /** `a != b`. @returns The condition. */
  ne(a: Value, b: Value): Condition {
    return this.#compare("ne", a, b);
  }
  /** Signed `a < b`. @returns The condition. */
  lt(a: Value, b: Value): Condition {
    return this.#compare("lt", a, b);
  }
  /** Signed `a <= b`. @returns The condition. */
  le(a: Value, b: Value): Condition {
    return this.#compare("le", a, b);
  }
  /** Signed `a > b`. @returns The condition. */
  gt(a: Value, b: Value): Condition {
    return this.#compare("gt", a, b);
  }
  /** Signed `a >= b`. @returns The condition. */
  ge(a: Value, b: Value): Condition {
    return this.#compare("ge", a, b);
  }
  /** Unsigned `a < b`. @returns The condition. */
  ltu(a: Value, b: Value): Condition {
    return this.#compare("ltu", a, b);
  }
  /** Unsigned `a <= b`. @returns The condition. */
  leu(a: Value, b: Value): Condition {
    return this.#compare("leu", a, b);
  }
  /** Unsigned `a > b`. @returns The condition. */
  gtu(a: Value, b: Value): Condition {
    return this.#compare("gtu", a, b);
  }
  /** Unsigned `a >= b`. @returns The condition. */
  geu(a: Value, b: Value): Condition {
    return this.#compare("geu", a, b);
  }
  /** `v == 0`. @returns The condition. */
  isZero(v: Value): Condition {
    return this.#compare("eq", v, 0);
  }
  /** `v < 0` (signed). @returns The condition. */
  isNegative(v: Value): Condition {
    return this.#compare("lt", v, 0);
  }
  /** The negation of a condition. @returns The condition. */
  not(cond: Condition): Condition {
    return { kind: "not", cond };
  }

  #block(body: () => void): Statement[] {
    const saved = this.#statements;
    const block: Statement[] = [];
    this.#statements = block;
    try {
      body();
    } finally {
      this.#statements = saved;
    }
    return block;
  }

  /**
   * Run `then` when `cond` holds, else `otherwise`.
   *
   * @param cond The condition.
   * @param then Builds the statements run when it holds.
   * @param otherwise Builds the statements run when it does not.
   */
  if(cond: Condition, then: () => void, otherwise?: () => void): void {
    const thenBlock = this.#block(then);
    const elseBlock = otherwise ? this.#block(otherwise) : [];
    this.#statements.push({
      kind: "if",
      cond,
      then: thenBlock,
      else: elseBlock,
    });
  }

  /**
   * Run `body` while `cond` holds (a loop made of labels and gotos).
   *
   * @param cond The condition, checked before each round.
   * @param body Builds the loop's body.
   */
  while(cond: Condition, body: () => void): void {
    const n = this.#labels++;
    const top = `$while${n}`;
    const end = `$wend${n}`;
    this.label(top);
    this.if(this.not(cond), () => this.goto(end));
    body();
    this.goto(top);
    this.label(end);
  }

  /**
   * Declare a label here.
   *
   * @param name The label, unique within the method.
   */
  label(name: string): void {
    this.#statements.push({ kind: "label", name });
  }

  /**
   * Jump to a label of this method.
   *
   * @param name The label.
   */
  goto(name: string): void {
    this.#statements.push({ kind: "goto", label: name });
  }

  /**
   * A Linux system call by name; the number is chosen per architecture.
   *
   * @param name The call, e.g. `"write"`.
   * @param args Up to six arguments.
   * @param options Where to store the result.
   * @returns The result (a negative errno on failure).
   */
  syscall<P extends Place = Var>(
    name: string,
    args: Value[] = [],
    options: IntoOptions<P> = {},
  ): P {
    const dst = options.into ?? this.#temp(64) as P;
    this.#statements.push({
      kind: "syscall",
      name,
      args: args.map(toOperand),
      result: dst,
    });
    return dst;
  }

  /**
   * Call a method by name, or the code at an address.
   *
   * @param target A method name or a code pointer.
   * @param args Up to six arguments.
   * @param options Where to store the result.
   * @returns The result.
   */
  call<P extends Place = Var>(
    target: string | Value,
    args: Value[] = [],
    options: IntoOptions<P> = {},
  ): P {
    const dst = options.into ?? this.#temp(64) as P;
    this.#statements.push({
      kind: "call",
      target: typeof target === "string" ? target : toOperand(target),
      args: args.map(toOperand),
      result: dst,
    });
    return dst;
  }

  /**
   * Return from the method.
   *
   * @param value The result (0 when absent).
   */
  return(value?: Value): void {
    this.#statements.push({
      kind: "return",
      value: value === undefined ? undefined : toOperand(value),
    });
  }

  /**
   * Format and write to a file descriptor: `%d` (signed), `%u`, `%x`, `%c`,
   * `%s` (a byte string, `{ ptr, len }`, or a pointer to a NUL-terminated
   * string) and `%%`.
   *
   * @param format The format.
   * @param args One argument per directive.
   * @param options The file descriptor (default 1).
   */
  printf(
    format: string,
    args: (Value | { ptr: Value; len: Value })[] = [],
    options: { fd?: Value } = {},
  ): void {
    const printfArgs: PrintfArg[] = args.map((a) => {
      if (typeof a === "object" && "ptr" in a) {
        return { ptr: toOperand(a.ptr), len: toOperand(a.len) };
      }
      return toOperand(a);
    });
    this.#statements.push({
      kind: "printf",
      fd: toOperand(options.fd ?? 1),
      format,
      args: printfArgs,
    });
  }

  /** The program this method belongs to. */
  get program(): ProgramBuilder {
    return this.#program;
  }
}

/**
 * Builds a {@link Program}: methods, constant data and globals.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "./builder.ts";
 * const p = new ProgramBuilder();
 * const hello = p.string("hello\n");
 * p.method("main", (m) => {
 *   m.syscall("write", [1, hello.ptr, hello.len]);
 *   m.return(0);
 * });
 * const program = p.build();
 * console.assert(program.entry === "main");
 * ```
 */
export class ProgramBuilder {
  #entry: string;
  #methods: Method[] = [];
  #data: DataItem[] = [];
  #globals: { name: string; size: number }[] = [];

  /**
   * Start a program.
   *
   * @param options The entry method's name (default `"main"`).
   */
  constructor(options: { entry?: string } = {}) {
    this.#entry = options.entry ?? "main";
  }

  /**
   * Add a method.
   *
   * @param name The method's name.
   * @param body Builds the method; declare parameters with `m.params()`.
   * @returns The method's address, for indirect calls.
   */
  method(name: string, body: (m: MethodBuilder) => void): MethodRef {
    const builder = new MethodBuilder(this, name);
    body(builder);
    this.#methods.push(builder.method);
    return { kind: "method", name };
  }

  /**
   * Add a constant UTF-8 string.
   *
   * @param text The text.
   * @param options NUL-terminate it (not counted in `len`), and a name.
   * @returns Its address and length.
   */
  string(
    text: string,
    options: { nulTerminated?: boolean; name?: string } = {},
  ): ByteString {
    return this.bytes(new TextEncoder().encode(text), options);
  }

  /**
   * Add constant bytes.
   *
   * @param bytes The bytes.
   * @param options NUL-terminate them (not counted in `len`), and a name.
   * @returns Their address and length.
   */
  bytes(
    bytes: Uint8Array,
    options: { nulTerminated?: boolean; name?: string } = {},
  ): ByteString {
    const name = options.name ?? `$d${this.#data.length}`;
    const stored = options.nulTerminated
      ? new Uint8Array([...bytes, 0])
      : bytes;
    this.#data.push({ name, bytes: stored });
    return {
      kind: "bytes",
      ptr: { kind: "data", name },
      len: { kind: "const", value: BigInt(bytes.length), width: 64 },
    };
  }

  /**
   * Add a constant table of 64-bit pointers to data (or zeros), e.g. `argv`.
   *
   * @param entries Byte strings, data addresses, or `null`.
   * @param options A name.
   * @returns The table's address.
   */
  pointers(
    entries: (ByteString | DataRef | null)[],
    options: { name?: string } = {},
  ): DataRef {
    const name = options.name ?? `$d${this.#data.length}`;
    this.#data.push({
      name,
      pointers: entries.map((e) =>
        e === null ? null : e.kind === "bytes" ? e.ptr.name : e.name
      ),
    });
    return { kind: "data", name };
  }

  /**
   * Add a zero-initialised global buffer.
   *
   * @param size Size in bytes.
   * @param options A name.
   * @returns Its address.
   */
  global(size: number, options: { name?: string } = {}): GlobalRef {
    const name = options.name ?? `$g${this.#globals.length}`;
    this.#globals.push({ name, size });
    return { kind: "global", name };
  }

  /**
   * The program built so far.
   *
   * @returns The IR.
   */
  build(): Program {
    return {
      entry: this.#entry,
      methods: [...this.#methods],
      data: [...this.#data],
      globals: [...this.#globals],
    };
  }
}
