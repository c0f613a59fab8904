/**
 * x86_64 backend: maps the code generator's virtual registers to machine
 * registers and its operations to instructions from `encoder.ts`.
 *
 * Frame: `push rbp; mov rbp, rsp; sub rsp, frameSize`; slot offsets count up
 * from `rsp`, so a slot is `[rbp + offset - frameSize]`. Calls follow the
 * System V AMD64 integer convention (arguments in RDI, RSI, RDX, RCX, R8,
 * R9; result in RAX) and only caller-saved registers are used, so compiled
 * methods can be called from C. System calls take RAX = number and RDI, RSI,
 * RDX, R10, R8, R9 (Linux `entry_64.S`).
 *
 * @module
 */

import { Assembler, type Fixup, type Label } from "../_assembler.ts";
import { A, B, type Backend, RET, TARGET, type VReg } from "../_backend.ts";
import type { BinaryOp, CompareOp, Width } from "../ir.ts";
import * as x from "./encoder.ts";

/** Registers behind the virtual registers (see `_backend.ts`). */
const REGISTERS: readonly x.Reg[] = [
  x.RAX, // A
  x.RCX, // B
  x.RAX, // RET
  x.R11, // TARGET
  x.RDI, // arg 0..5
  x.RSI,
  x.RDX,
  x.RCX,
  x.R8,
  x.R9,
  x.RDI, // sysArg 0..5
  x.RSI,
  x.RDX,
  x.R10,
  x.R8,
  x.R9,
];

/** Holds the base address of memory operands. */
const BASE_SCRATCH = x.R11;

const JCC: Record<CompareOp, x.Cc> = {
  eq: "e",
  ne: "ne",
  lt: "l",
  le: "le",
  gt: "g",
  ge: "ge",
  ltu: "b",
  leu: "be",
  gtu: "a",
  geu: "ae",
};

function reg(r: VReg): x.Reg {
  const machine = REGISTERS[r];
  if (machine === undefined) {
    throw new Error(`Cannot map virtual register ${r}`);
  }
  return machine;
}

/** The x86_64 backend. */
export class Amd64Backend implements Backend {
  /** The architecture. */
  readonly arch = "x86_64" as const;
  /** The code buffer. */
  readonly asm: Assembler = new Assembler();
  #frameSize = 0;

  #slot(offset: number): x.MemOperand {
    return { base: x.RBP, disp: offset - this.#frameSize };
  }

  /** Emit a rel32 field of the instruction just emitted (its last four bytes). */
  #rel32(bytes: number[], target: Label): void {
    this.asm.emit(bytes);
    this.asm.fixup(target, "rel32", this.asm.offset - 4);
  }

  prologue(frameSize: number, paramOffsets: number[]): void {
    this.#frameSize = frameSize;
    this.asm.emit(x.push(x.RBP));
    this.asm.emit(x.movRegReg(x.RBP, x.RSP));
    if (frameSize > 0) {
      this.asm.emit(x.aluImm("sub", { dst: x.RSP, imm: frameSize }));
    }
    paramOffsets.forEach((offset, i) => this.storeSlot(offset, 4 + i, 64));
  }

  epilogue(): void {
    this.asm.emit(x.leave());
    this.asm.emit(x.ret());
  }

  loadImm(r: VReg, value: bigint): void {
    this.asm.emit(x.movImm(reg(r), value));
  }

  loadSlot(
    r: VReg,
    offset: number,
    options: { width: Width; signed: boolean },
  ): void {
    this.asm.emit(x.load(reg(r), this.#slot(offset), options));
  }

  storeSlot(offset: number, r: VReg, width: Width): void {
    this.asm.emit(x.store(this.#slot(offset), reg(r), { width }));
  }

  loadMem(
    r: VReg,
    baseOffset: number,
    options: { disp: number; width: Width; signed: boolean },
  ): void {
    this.asm.emit(x.load(BASE_SCRATCH, this.#slot(baseOffset), { width: 64 }));
    this.asm.emit(
      x.load(reg(r), { base: BASE_SCRATCH, disp: options.disp }, options),
    );
  }

  storeMem(
    baseOffset: number,
    r: VReg,
    options: { disp: number; width: Width },
  ): void {
    this.asm.emit(x.load(BASE_SCRATCH, this.#slot(baseOffset), { width: 64 }));
    this.asm.emit(
      x.store({ base: BASE_SCRATCH, disp: options.disp }, reg(r), options),
    );
  }

  addressOfSlot(r: VReg, offset: number): void {
    this.asm.emit(x.lea(reg(r), this.#slot(offset)));
  }

  addressOfLabel(r: VReg, label: Label): void {
    this.#rel32(x.lea(reg(r), { base: "rip", disp: 0 }), label);
  }

  move(dst: VReg, src: VReg): void {
    if (reg(dst) !== reg(src)) this.asm.emit(x.movRegReg(reg(dst), reg(src)));
  }

  binary(op: BinaryOp): void {
    const a = reg(A);
    const b = reg(B);
    switch (op) {
      case "add":
      case "sub":
      case "and":
      case "or":
      case "xor":
        return this.asm.emit(x.alu(op, { dst: a, src: b }));
      case "mul":
        return this.asm.emit(x.imul(a, b));
      case "shl":
      case "shr":
      case "sar":
        return this.asm.emit(x.shiftCl(op, a)); // B is RCX: the count is CL
      case "udiv":
      case "sdiv":
      case "urem":
      case "srem":
        return this.#divide(op);
    }
  }

  /**
   * RAX = RAX / RCX or RAX % RCX, with the IR's rules where the hardware
   * would fault (#DE): x / 0 = 0, x % 0 = x, and MIN / -1 = MIN, MIN % -1 = 0
   * (what AArch64's UDIV/SDIV + MSUB give).
   */
  #divide(op: "udiv" | "sdiv" | "urem" | "srem"): void {
    const signed = op === "sdiv" || op === "srem";
    const remainder = op === "urem" || op === "srem";
    const zero = this.asm.label();
    const done = this.asm.label();
    this.asm.emit(x.test(x.RCX, x.RCX));
    this.#rel32(x.jcc("e", 0), zero);
    if (signed) {
      const normal = this.asm.label();
      this.asm.emit(x.aluImm("cmp", { dst: x.RCX, imm: -1 }));
      this.#rel32(x.jcc("ne", 0), normal);
      this.asm.emit(remainder ? x.xor32(x.RAX, x.RAX) : x.neg(x.RAX));
      this.#rel32(x.jmp(0), done);
      this.asm.bind(normal);
      this.asm.emit(x.cqo());
    } else {
      this.asm.emit(x.xor32(x.RDX, x.RDX));
    }
    this.asm.emit(x.div(x.RCX, { signed }));
    if (remainder) this.asm.emit(x.movRegReg(x.RAX, x.RDX));
    this.#rel32(x.jmp(0), done);
    this.asm.bind(zero);
    if (!remainder) this.asm.emit(x.xor32(x.RAX, x.RAX));
    this.asm.bind(done);
  }

  branchIf(op: CompareOp, target: Label): void {
    this.asm.emit(x.alu("cmp", { dst: reg(A), src: reg(B) }));
    this.#rel32(x.jcc(JCC[op], 0), target);
  }

  jump(target: Label): void {
    this.#rel32(x.jmp(0), target);
  }

  call(target: Label): void {
    this.#rel32(x.call(0), target);
  }

  callIndirect(): void {
    this.asm.emit(x.callReg(reg(TARGET)));
  }

  syscall(number: number): void {
    this.asm.emit(x.movImm(x.RAX, BigInt(number)));
    this.asm.emit(x.syscall());
  }

  start(entry: Label, exitGroup: number): void {
    // At process entry [rsp] = argc, then argv[], NULL, envp[] (System V
    // AMD64 ABI 3.4.1); rsp is 16-byte aligned.
    this.asm.emit(x.load(x.RDI, { base: x.RSP, disp: 0 }, { width: 64 }));
    this.asm.emit(x.lea(x.RSI, { base: x.RSP, disp: 8 }));
    this.asm.emit(
      x.lea(x.RDX, { base: x.RSI, index: x.RDI, scale: 8, disp: 8 }),
    );
    this.call(entry);
    this.asm.emit(x.movRegReg(x.RDI, reg(RET)));
    this.syscall(exitGroup);
  }

  finish(): { code: Uint8Array; relocations: number[] } {
    return this.asm.finish((fixup: Fixup, target: number) => {
      if (fixup.kind !== "rel32") {
        throw new Error(`Cannot patch fixup kind "${fixup.kind}"`);
      }
      this.asm.write32(fixup.at, target - (fixup.at + 4));
    });
  }
}
