/**
 * The architecture-neutral code generator: checks a program, expands
 * `printf`, lays out each method's frame (every variable in an 8-byte slot,
 * then the stack buffers) and drives a {@link Backend}. Internal to
 * `src/ir/`.
 *
 * @module
 */

import type { Label } from "./_assembler.ts";
import {
  A,
  arg,
  B,
  type Backend,
  MAX_ARGS,
  RET,
  sysArg,
  TARGET,
  type VReg,
} from "./_backend.ts";
import { PRINT_SIGNED, PRINT_UNSIGNED, runtime, STRLEN } from "./_runtime.ts";
import { Amd64Backend } from "./amd64/backend.ts";
import { Arm64Backend } from "./arm64/backend.ts";
import {
  type BinaryOp,
  type CompareOp,
  CompileError,
  type Condition,
  type DataItem,
  type Method,
  type Operand,
  type Place,
  type Program,
  type Statement,
  type Var,
  type Width,
} from "./ir.ts";
import { type Arch, isKnownSyscall, syscallNumber } from "./syscalls.ts";

/** Output of {@link generate}. */
export interface Generated {
  /** Position-independent code, constant data included. */
  code: Uint8Array;
  /** Offsets of 64-bit code-relative addresses a loader must rebase. */
  relocations: number[];
  /** Zeroed bytes the program needs right after `code`. */
  bssSize: number;
  /** Offset of the entry method. */
  entryOffset: number;
  /** Offset of the process start code, when asked for. */
  startOffset?: number;
}

const WIDTHS: readonly number[] = [8, 16, 32, 64];
const SIGNED_OPS: ReadonlySet<BinaryOp> = new Set(["sdiv", "srem", "sar"]);
const SIGNED_COMPARES: ReadonlySet<CompareOp> = new Set([
  "lt",
  "le",
  "gt",
  "ge",
]);
const NEGATED: Record<CompareOp, CompareOp> = {
  eq: "ne",
  ne: "eq",
  lt: "ge",
  ge: "lt",
  le: "gt",
  gt: "le",
  ltu: "geu",
  geu: "ltu",
  leu: "gtu",
  gtu: "leu",
};
/** Bytes per variable slot. */
const SLOT_SIZE = 8;
/** Alignment of stack buffers, globals and the frame. */
const ALIGN = 16;

type Simple = Exclude<Statement, { kind: "if" } | { kind: "printf" }>;

/** A statement after `printf` expansion, with the fragment path of its source. */
type Lowered =
  | { kind: "simple"; path: string; stmt: Simple }
  | {
    kind: "if";
    path: string;
    cond: Condition;
    then: Lowered[];
    else: Lowered[];
  };

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function makeBackend(arch: Arch): Backend {
  switch (arch) {
    case "x86_64":
      return new Amd64Backend();
    case "aarch64":
      return new Arm64Backend();
    default:
      throw new CompileError(
        `Cannot compile program: architecture "${arch as string}" is not supported`,
      );
  }
}

/** Width an operand carries, `undefined` for an untyped constant. */
function widthOf(operand: Operand): number | undefined {
  switch (operand.kind) {
    case "var":
    case "mem":
    case "const":
      return operand.width;
    default:
      return 64;
  }
}

/** Compile a program for `arch`. */
export function generate(
  program: Program,
  options: { arch: Arch; start?: boolean },
): Generated {
  return new ProgramCompiler(program, options.arch).compile(
    options.start ?? false,
  );
}

class ProgramCompiler {
  #program: Program;
  #backend: Backend;
  #methods = new Map<string, { method: Method; label: Label }>();
  #data = new Map<string, { item: DataItem; label: Label }>();
  #globals = new Map<string, { size: number; label: Label }>();
  #strings = new Map<string, string>();

  constructor(program: Program, arch: Arch) {
    this.#program = program;
    this.#backend = makeBackend(arch);
  }

  get arch(): Arch {
    return this.#backend.arch;
  }

  compile(start: boolean): Generated {
    const program = this.#program;
    const asm = this.#backend.asm;
    const usesPrintf = program.methods.some((m) => containsPrintf(m.body));
    const extra = usesPrintf ? runtime() : undefined;
    const methods = [...program.methods, ...(extra?.methods ?? [])];
    for (const method of methods) {
      if (this.#methods.has(method.name)) {
        throw new CompileError(
          `Cannot compile program: method "${method.name}" is declared twice`,
        );
      }
      this.#methods.set(method.name, { method, label: asm.label() });
    }
    for (const item of [...program.data, ...(extra?.data ?? [])]) {
      if (this.#data.has(item.name)) {
        throw new CompileError(
          `Cannot compile program: data "${item.name}" is declared twice`,
        );
      }
      this.#data.set(item.name, { item, label: asm.label() });
    }
    for (const g of program.globals) {
      if (this.#globals.has(g.name)) {
        throw new CompileError(
          `Cannot compile program: global "${g.name}" is declared twice`,
        );
      }
      if (!Number.isSafeInteger(g.size) || g.size < 0) {
        throw new CompileError(
          `Cannot compile program: global "${g.name}" has invalid size ${g.size}`,
        );
      }
      this.#globals.set(g.name, { size: g.size, label: asm.label() });
    }
    const entry = this.#methods.get(program.entry);
    if (!entry) {
      throw new CompileError(
        `Cannot compile program: entry method "${program.entry}" is not declared`,
      );
    }
    if (start && entry.method.params.length > 3) {
      throw new CompileError(
        `Cannot compile program: entry method "${program.entry}" takes more than 3 parameters (argc, argv, envp)`,
      );
    }

    let startOffset: number | undefined;
    if (start) {
      startOffset = asm.offset;
      this.#backend.start(entry.label, syscallNumber("exit_group", this.arch)!);
    }
    for (const method of methods) {
      const lowered = this.#lowerMethod(method);
      new MethodCompiler(this, method, lowered).compile(
        this.#methods.get(method.name)!.label,
      );
    }
    // Strings made by printf expansion were registered while lowering.
    asm.align(8);
    for (const { item, label } of this.#data.values()) {
      asm.align(8);
      asm.bind(label);
      if ("bytes" in item) {
        asm.emit(item.bytes);
      } else {
        for (const target of item.pointers) {
          if (target === null) {
            asm.emit(new Uint8Array(8));
            continue;
          }
          const data = this.#data.get(target);
          if (!data) {
            throw new CompileError(
              `Cannot compile program: pointer table "${item.name}" refers to data "${target}", which is not declared`,
            );
          }
          asm.pointer(data.label);
        }
      }
    }
    asm.align(ALIGN);
    let bssSize = 0;
    for (const g of this.#globals.values()) {
      asm.bind(g.label, asm.offset + bssSize);
      bssSize += alignUp(g.size, ALIGN);
    }
    let out: { code: Uint8Array; relocations: number[] };
    try {
      out = this.#backend.finish();
    } catch (error) {
      if (error instanceof RangeError) {
        throw new CompileError(
          `Cannot compile program for ${this.arch}: ${error.message}`,
        );
      }
      throw error;
    }
    return {
      code: out.code,
      relocations: out.relocations,
      bssSize,
      entryOffset: asm.position(entry.label),
      ...(startOffset === undefined ? {} : { startOffset }),
    };
  }

  get backend(): Backend {
    return this.#backend;
  }

  method(name: string): { method: Method; label: Label } | undefined {
    return this.#methods.get(name);
  }

  dataLabel(name: string): Label | undefined {
    return this.#data.get(name)?.label;
  }

  globalLabel(name: string): Label | undefined {
    return this.#globals.get(name)?.label;
  }

  /** A data item holding `text`, shared by equal strings. */
  #string(text: string): Operand {
    let name = this.#strings.get(text);
    if (name === undefined) {
      name = `$printf${this.#strings.size}`;
      this.#strings.set(text, name);
      this.#data.set(name, {
        item: { name, bytes: new TextEncoder().encode(text) },
        label: this.#backend.asm.label(),
      });
    }
    return { kind: "data", name };
  }

  #lowerMethod(
    method: Method,
  ): { body: Lowered[]; buffers: { name: string; size: number }[] } {
    const buffers = [...method.buffers];
    let temps = 0;
    const temp = (width: Width = 64): Var => ({
      kind: "var",
      name: `$pf${temps++}`,
      width,
    });
    const lowerList = (statements: Statement[], prefix: string): Lowered[] => {
      const out: Lowered[] = [];
      statements.forEach((stmt, i) => {
        const path = prefix + i;
        if (stmt.kind === "if") {
          out.push({
            kind: "if",
            path,
            cond: stmt.cond,
            then: lowerList(stmt.then, `${path}.then.`),
            else: lowerList(stmt.else, `${path}.else.`),
          });
        } else if (stmt.kind === "printf") {
          for (
            const s of this.#expandPrintf(stmt, {
              method: method.name,
              path,
              temp,
              buffers,
            })
          ) {
            out.push({ kind: "simple", path, stmt: s });
          }
        } else {
          out.push({ kind: "simple", path, stmt });
        }
      });
      return out;
    };
    return { body: lowerList(method.body, ""), buffers };
  }

  /** Expand `printf` into writes and runtime calls. */
  #expandPrintf(
    stmt: Extract<Statement, { kind: "printf" }>,
    context: {
      method: string;
      path: string;
      temp: (w?: Width) => Var;
      buffers: { name: string; size: number }[];
    },
  ): Simple[] {
    const fail = (reason: string): never => {
      throw new CompileError(
        `Cannot compile method "${context.method}": fragment ${context.path} (printf): ${reason}`,
      );
    };
    const out: Simple[] = [];
    const fd = stmt.fd;
    const write = (ptr: Operand, len: Operand): void => {
      out.push({ kind: "syscall", name: "write", args: [fd, ptr, len] });
    };
    let literal = "";
    const flush = (): void => {
      if (literal === "") return;
      const bytes = new TextEncoder().encode(literal);
      write(this.#string(literal), {
        kind: "const",
        value: BigInt(bytes.length),
        width: 64,
      });
      literal = "";
    };
    let next = 0;
    const takeArg = (directive: string) => {
      const a = stmt.args[next++];
      if (a === undefined) fail(`directive "%${directive}" has no argument`);
      return a!;
    };
    const format = stmt.format;
    for (let i = 0; i < format.length; i++) {
      const ch = format[i]!;
      if (ch !== "%") {
        literal += ch;
        continue;
      }
      const directive = format[++i];
      if (directive === "%") {
        literal += "%";
        continue;
      }
      if (directive === undefined) fail(`format "${format}" ends with "%"`);
      flush();
      const a = takeArg(directive!);
      if (directive === "s") {
        if ("ptr" in a) {
          write(a.ptr, a.len);
        } else {
          const len = context.temp();
          out.push({ kind: "call", target: STRLEN, args: [a], result: len });
          write(a, len);
        }
        continue;
      }
      if ("ptr" in a) {
        fail(
          `directive "%${directive}" takes a value, not a pointer and a length`,
        );
      }
      const value = a as Operand;
      switch (directive) {
        case "d":
        case "u":
        case "x": {
          const wide = context.temp();
          out.push({
            kind: "convert",
            dst: wide,
            src: value,
            signed: directive === "d",
          });
          if (directive === "d") {
            out.push({ kind: "call", target: PRINT_SIGNED, args: [fd, wide] });
          } else {
            const base = BigInt(directive === "u" ? 10 : 16);
            out.push({
              kind: "call",
              target: PRINT_UNSIGNED,
              args: [fd, wide, { kind: "const", value: base }],
            });
          }
          break;
        }
        case "c": {
          const name = `$pfc${context.buffers.length}`;
          context.buffers.push({ name, size: 1 });
          const ptr = context.temp();
          out.push({ kind: "assign", dst: ptr, src: { kind: "buffer", name } });
          out.push({
            kind: "convert",
            dst: { kind: "mem", base: ptr, disp: 0, width: 8 },
            src: value,
            signed: false,
          });
          write(ptr, { kind: "const", value: 1n, width: 64 });
          break;
        }
        default:
          fail(
            `directive "%${directive}" is not supported (use %d %u %x %c %s %%)`,
          );
      }
    }
    flush();
    if (next !== stmt.args.length) {
      fail(
        `format "${format}" takes ${next} arguments, got ${stmt.args.length}`,
      );
    }
    return out;
  }
}

function containsPrintf(statements: Statement[]): boolean {
  return statements.some((s) =>
    s.kind === "printf" ||
    (s.kind === "if" && (containsPrintf(s.then) || containsPrintf(s.else)))
  );
}

class MethodCompiler {
  #program: ProgramCompiler;
  #backend: Backend;
  #method: Method;
  #body: Lowered[];
  #slots = new Map<string, { offset: number; width: Width }>();
  #buffers = new Map<string, number>();
  #labels = new Map<string, Label>();
  #frameSize = 0;
  #path = "";
  #kind = "";

  constructor(
    program: ProgramCompiler,
    method: Method,
    lowered: { body: Lowered[]; buffers: { name: string; size: number }[] },
  ) {
    this.#program = program;
    this.#backend = program.backend;
    this.#method = method;
    this.#body = lowered.body;
    this.#layout(lowered.buffers);
  }

  #fail(reason: string): never {
    const where = this.#path === ""
      ? ""
      : `fragment ${this.#path} (${this.#kind}): `;
    throw new CompileError(
      `Cannot compile method "${this.#method.name}": ${where}${reason}`,
    );
  }

  #at(path: string, kind: string): void {
    this.#path = path;
    this.#kind = kind;
  }

  // ---- layout and checks that need the whole method ----

  #layout(buffers: { name: string; size: number }[]): void {
    const method = this.#method;
    if (method.params.length > MAX_ARGS) {
      this.#fail(
        `it takes ${method.params.length} parameters, at most ${MAX_ARGS}`,
      );
    }
    let offset = 0;
    const declare = (v: Var): void => {
      if (!WIDTHS.includes(v.width)) {
        this.#fail(
          `width ${v.width} of variable "${v.name}" cannot be encoded on ${this.#program.arch}`,
        );
      }
      const slot = this.#slots.get(v.name);
      if (slot === undefined) {
        this.#slots.set(v.name, { offset, width: v.width });
        offset += SLOT_SIZE;
      } else if (slot.width !== v.width) {
        this.#fail(
          `width mismatch: variable "${v.name}" is used with widths ${slot.width} and ${v.width}`,
        );
      }
    };
    for (const p of method.params) {
      if (this.#slots.has(p.name)) {
        this.#fail(`parameter "${p.name}" is declared twice`);
      }
      declare(p);
    }
    const declared = new Set<string>();
    const visitOperand = (o: Operand | undefined): void => {
      if (o === undefined) return;
      if (o.kind === "var") declare(o);
      else if (o.kind === "mem") declare(o.base);
    };
    const visitCondition = (c: Condition): void => {
      if (c.kind === "not") return visitCondition(c.cond);
      visitOperand(c.a);
      visitOperand(c.b);
    };
    const visit = (list: Lowered[]): void => {
      for (const l of list) {
        if (l.kind === "if") {
          this.#at(l.path, "if");
          visitCondition(l.cond);
          visit(l.then);
          visit(l.else);
          continue;
        }
        const s = l.stmt;
        this.#at(l.path, s.kind);
        switch (s.kind) {
          case "assign":
          case "convert":
            visitOperand(s.dst);
            visitOperand(s.src);
            break;
          case "binary":
            visitOperand(s.dst);
            visitOperand(s.a);
            visitOperand(s.b);
            break;
          case "syscall":
          case "call":
            s.args.forEach(visitOperand);
            visitOperand(s.result);
            if (s.kind === "call" && typeof s.target !== "string") {
              visitOperand(s.target);
            }
            break;
          case "return":
            visitOperand(s.value);
            break;
          case "label":
            if (declared.has(s.name)) {
              this.#fail(`label "${s.name}" is declared twice`);
            }
            declared.add(s.name);
            this.#labels.set(s.name, this.#backend.asm.label());
            break;
          case "goto":
            break;
        }
      }
    };
    visit(this.#body);
    // Gotos are checked after every label is known, so a jump forward works.
    const checkGotos = (list: Lowered[]): void => {
      for (const l of list) {
        if (l.kind === "if") {
          checkGotos(l.then);
          checkGotos(l.else);
        } else if (l.stmt.kind === "goto" && !declared.has(l.stmt.label)) {
          this.#at(l.path, "goto");
          this.#fail(`label "${l.stmt.label}" is used but never declared`);
        }
      }
    };
    checkGotos(this.#body);
    this.#at("", "");
    offset = alignUp(offset, ALIGN);
    for (const b of buffers) {
      if (this.#buffers.has(b.name)) {
        this.#fail(`buffer "${b.name}" is declared twice`);
      }
      if (!Number.isSafeInteger(b.size) || b.size <= 0) {
        this.#fail(`buffer "${b.name}" has invalid size ${b.size}`);
      }
      this.#buffers.set(b.name, offset);
      offset += alignUp(b.size, ALIGN);
    }
    this.#frameSize = alignUp(offset, ALIGN);
  }

  // ---- emission ----

  compile(label: Label): void {
    const backend = this.#backend;
    // x86_64 pads with INT3 (0xcc) so a stray jump traps; A64 code needs no padding.
    if (this.#program.arch === "x86_64") backend.asm.align(16, 0xcc);
    backend.asm.bind(label);
    this.#guard(() =>
      backend.prologue(
        this.#frameSize,
        this.#method.params.map((p) => this.#slots.get(p.name)!.offset),
      )
    );
    this.#list(this.#body);
    this.#at("", "");
    const last = this.#lastStatement(this.#body);
    if (last?.kind !== "return" && last?.kind !== "goto") {
      backend.loadImm(RET, 0n);
      backend.epilogue();
    }
  }

  #lastStatement(list: Lowered[]): Simple | undefined {
    const last = list.at(-1);
    return last?.kind === "simple" ? last.stmt : undefined;
  }

  /** Run emission code, turning an encoder's range error into a compile error at the current fragment. */
  #guard(emit: () => void): void {
    try {
      emit();
    } catch (error) {
      if (error instanceof RangeError) {
        this.#fail(`${error.message} on ${this.#program.arch}`);
      }
      throw error;
    }
  }

  #list(list: Lowered[]): void {
    for (const l of list) {
      if (l.kind === "if") {
        this.#at(l.path, "if");
        const otherwise = this.#backend.asm.label();
        const end = this.#backend.asm.label();
        this.#guard(() => this.#branchUnless(l.cond, otherwise));
        this.#list(l.then);
        if (l.else.length > 0) this.#backend.jump(end);
        this.#backend.asm.bind(otherwise);
        this.#list(l.else);
        this.#backend.asm.bind(end);
        continue;
      }
      this.#at(l.path, l.stmt.kind);
      const stmt = l.stmt;
      this.#guard(() => this.#statement(stmt));
    }
  }

  #statement(s: Simple): void {
    const backend = this.#backend;
    switch (s.kind) {
      case "assign": {
        const width = this.#placeWidth(s.dst);
        this.#expectWidth(s.src, width, "source");
        this.#load(A, s.src, { width, signed: false });
        this.#store(s.dst, A);
        return;
      }
      case "convert": {
        const width = widthOf(s.src) as Width | undefined ??
          this.#placeWidth(s.dst);
        this.#load(A, s.src, { width, signed: s.signed });
        this.#store(s.dst, A);
        return;
      }
      case "binary": {
        const width = this.#placeWidth(s.dst);
        this.#expectWidth(s.a, width, "left operand");
        this.#expectWidth(s.b, width, "right operand");
        const signed = SIGNED_OPS.has(s.op);
        this.#load(A, s.a, { width, signed });
        this.#load(B, s.b, { width, signed });
        backend.binary(s.op);
        this.#store(s.dst, A);
        return;
      }
      case "syscall": {
        const arch = this.#program.arch;
        const number = syscallNumber(s.name, arch);
        if (number === undefined) {
          this.#fail(
            isKnownSyscall(s.name)
              ? `syscall "${s.name}" does not exist on ${arch}`
              : `syscall "${s.name}" is unknown`,
          );
        }
        if (s.args.length > MAX_ARGS) {
          this.#fail(`syscall "${s.name}" takes at most ${MAX_ARGS} arguments`);
        }
        let args = s.args;
        // aarch64's clone takes (flags, stack, parent_tid, tls, child_tid); the
        // IR uses x86_64's order (..., child_tid, tls) everywhere.
        if (
          s.name === "clone" && this.#program.arch === "aarch64" &&
          args.length >= 5
        ) {
          args = [
            args[0]!,
            args[1]!,
            args[2]!,
            args[4]!,
            args[3]!,
            ...args.slice(5),
          ];
        }
        args.forEach((a, i) =>
          this.#load(sysArg(i), a, {
            width: (widthOf(a) ?? 64) as Width,
            signed: false,
          })
        );
        backend.syscall(number);
        if (s.result) this.#store(s.result, RET);
        return;
      }
      case "call": {
        if (s.args.length > MAX_ARGS) {
          this.#fail(`a call takes at most ${MAX_ARGS} arguments`);
        }
        if (typeof s.target === "string") {
          const callee = this.#program.method(s.target);
          if (!callee) {
            this.#fail(`method "${s.target}" is called but never declared`);
          }
          const params = callee.method.params;
          if (params.length !== s.args.length) {
            this.#fail(
              `method "${s.target}" takes ${params.length} arguments, got ${s.args.length}`,
            );
          }
          s.args.forEach((a, i) => {
            const width = params[i]!.width;
            this.#expectWidth(a, width, `argument ${i}`);
            this.#load(arg(i), a, { width, signed: false });
          });
          backend.call(callee.label);
        } else {
          s.args.forEach((a, i) =>
            this.#load(arg(i), a, {
              width: (widthOf(a) ?? 64) as Width,
              signed: false,
            })
          );
          this.#expectWidth(s.target, 64, "call target");
          this.#load(TARGET, s.target, { width: 64, signed: false });
          backend.callIndirect();
        }
        if (s.result) this.#store(s.result, RET);
        return;
      }
      case "return": {
        if (s.value === undefined) backend.loadImm(RET, 0n);
        else {this.#load(RET, s.value, {
            width: (widthOf(s.value) ?? 64) as Width,
            signed: false,
          });}
        backend.epilogue();
        return;
      }
      case "label":
        backend.asm.bind(this.#labels.get(s.name)!);
        return;
      case "goto":
        backend.jump(this.#labels.get(s.label)!);
        return;
    }
  }

  #branchUnless(cond: Condition, target: Label): void {
    let negate = true;
    let c = cond;
    while (c.kind === "not") {
      negate = !negate;
      c = c.cond;
    }
    const wa = widthOf(c.a);
    const wb = widthOf(c.b);
    if (wa !== undefined && wb !== undefined && wa !== wb) {
      this.#fail(
        `width mismatch: comparing a ${wa}-bit value with a ${wb}-bit value`,
      );
    }
    const width = (wa ?? wb ?? 64) as Width;
    const signed = SIGNED_COMPARES.has(c.op);
    this.#load(A, c.a, { width, signed });
    this.#load(B, c.b, { width, signed });
    this.#backend.branchIf(negate ? NEGATED[c.op] : c.op, target);
  }

  #placeWidth(place: Place): Width {
    this.#checkWidth(place.width);
    return place.width;
  }

  #checkWidth(width: number): void {
    if (!WIDTHS.includes(width)) {
      this.#fail(`width ${width} cannot be encoded on ${this.#program.arch}`);
    }
  }

  #expectWidth(operand: Operand, width: Width, what: string): void {
    const actual = widthOf(operand);
    if (actual !== undefined && actual !== width) {
      this.#fail(
        `width mismatch: ${what} is ${actual} bits, expected ${width}`,
      );
    }
  }

  #slot(v: Var): number {
    return this.#slots.get(v.name)!.offset;
  }

  #load(r: VReg, o: Operand, context: { width: Width; signed: boolean }): void {
    const backend = this.#backend;
    switch (o.kind) {
      case "var":
        return backend.loadSlot(r, this.#slot(o), {
          width: o.width,
          signed: context.signed,
        });
      case "const": {
        const width = o.width ?? context.width;
        this.#checkWidth(width);
        const w = BigInt(width);
        if (o.value < -(1n << (w - 1n)) || o.value >= (1n << w)) {
          this.#fail(`constant ${o.value} does not fit in ${width} bits`);
        }
        const value = context.signed
          ? BigInt.asIntN(width, o.value)
          : BigInt.asUintN(width, o.value);
        return backend.loadImm(r, value);
      }
      case "data": {
        const label = this.#program.dataLabel(o.name);
        if (label === undefined) {
          this.#fail(`data "${o.name}" is used but never declared`);
        }
        return backend.addressOfLabel(r, label);
      }
      case "global": {
        const label = this.#program.globalLabel(o.name);
        if (label === undefined) {
          this.#fail(`global "${o.name}" is used but never declared`);
        }
        return backend.addressOfLabel(r, label);
      }
      case "method": {
        const callee = this.#program.method(o.name);
        if (!callee) {
          this.#fail(`method "${o.name}" is used but never declared`);
        }
        return backend.addressOfLabel(r, callee.label);
      }
      case "buffer": {
        const offset = this.#buffers.get(o.name);
        if (offset === undefined) {
          this.#fail(`buffer "${o.name}" is used but never declared`);
        }
        return backend.addressOfSlot(r, offset);
      }
      case "mem":
        this.#checkMem(o);
        return backend.loadMem(r, this.#slot(o.base), {
          disp: o.disp,
          width: o.width,
          signed: context.signed,
        });
    }
  }

  #checkMem(m: Extract<Operand, { kind: "mem" }>): void {
    this.#checkWidth(m.width);
    if (m.base.width !== 64) {
      this.#fail(
        `memory base "${m.base.name}" is ${m.base.width} bits, expected 64`,
      );
    }
    if (
      !Number.isSafeInteger(m.disp) || m.disp < -0x8000_0000 ||
      m.disp > 0x7fff_ffff
    ) {
      this.#fail(
        `displacement ${m.disp} cannot be encoded on ${this.#program.arch}`,
      );
    }
  }

  #store(place: Place, r: VReg): void {
    if (place.kind === "var") {
      this.#checkWidth(place.width);
      return this.#backend.storeSlot(this.#slot(place), r, place.width);
    }
    this.#checkMem(place);
    this.#backend.storeMem(this.#slot(place.base), r, {
      disp: place.disp,
      width: place.width,
    });
  }
}
