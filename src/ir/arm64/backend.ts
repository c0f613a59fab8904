/**
 * AArch64 backend: maps the code generator's virtual registers to machine
 * registers and its operations to instructions from `encoder.ts`.
 *
 * Frame: `stp x29, x30, [sp, #-16]!; mov x29, sp; sub sp, sp, #frameSize`;
 * slot offsets count up from SP. Calls follow the AAPCS64 integer convention
 * (arguments in X0..X5, result in X0) and only caller-saved registers are
 * used (X9..X11 for arithmetic, X15..X17 as scratch), so compiled methods
 * can be called from C. System calls take X8 = number and X0..X5.
 *
 * @module
 */

import { Assembler, type Fixup, type Label } from "../_assembler.ts";
import { A, B, type Backend, TARGET, type VReg } from "../_backend.ts";
import type { BinaryOp, CompareOp, Width } from "../ir.ts";
import * as e from "./encoder.ts";

/** Registers behind the virtual registers (see `_backend.ts`). */
const REGISTERS: readonly e.Reg[] = [
  9, // A
  10, // B
  0, // RET
  16, // TARGET (IP0)
  0, // arg 0..5
  1,
  2,
  3,
  4,
  5,
  0, // sysArg 0..5
  1,
  2,
  3,
  4,
  5,
];

/** Holds the base address of memory operands (IP1). */
const BASE_SCRATCH = 17;
/** Holds a displacement too large for an immediate. */
const DISP_SCRATCH = 15;
/** Holds the quotient while computing a remainder. */
const QUOTIENT_SCRATCH = 11;
/** The system call number register. */
const SYSCALL_NUMBER = 8;
/** Largest frame offset `add`/`sub` with two 12-bit immediates can reach. */
const MAX_FRAME_OFFSET = 0xff_ffff;

const CONDITIONS: Record<CompareOp, e.Cond> = {
  eq: "eq",
  ne: "ne",
  lt: "lt",
  le: "le",
  gt: "gt",
  ge: "ge",
  ltu: "lo",
  leu: "ls",
  gtu: "hi",
  geu: "hs",
};

function reg(r: VReg): e.Reg {
  const machine = REGISTERS[r];
  if (machine === undefined) {
    throw new Error(`Cannot map virtual register ${r}`);
  }
  return machine;
}

/** The AArch64 backend. */
export class Arm64Backend implements Backend {
  /** The architecture. */
  readonly arch = "aarch64" as const;
  /** The code buffer. */
  readonly asm: Assembler = new Assembler();

  #emit(...words: number[]): void {
    for (const w of words) this.asm.emit32(w);
  }

  /** `dst = base ± offset` for offsets up to 24 bits (SP allowed). */
  #addOffset(
    dst: e.Reg,
    base: e.Reg,
    offset: number,
    options: { subtract?: boolean } = {},
  ): void {
    if (offset < 0 || offset > MAX_FRAME_OFFSET) {
      throw new RangeError(
        `Cannot encode frame offset: ${offset} is larger than ${MAX_FRAME_OFFSET}`,
      );
    }
    const op = options.subtract ? e.subImm : e.addImm;
    const low = offset & 0xfff;
    const high = offset >> 12;
    if (low !== 0 || high === 0) {
      this.#emit(op(dst, { rn: base, imm12: low }));
      base = dst;
    }
    if (high !== 0) {
      this.#emit(op(dst, { rn: base, imm12: high, shift12: true }));
    }
  }

  /** A load or store at `[base, #offset]`, through a scratch register when the offset has no immediate form. */
  #access(
    base: e.Reg,
    offset: number,
    width: Width,
    make: (base: e.Reg, offset: number) => number,
  ): void {
    if (e.fitsScaled(offset, width) || e.fitsUnscaled(offset)) {
      return this.#emit(make(base, offset));
    }
    if (base === e.SP) {
      this.#addOffset(BASE_SCRATCH, e.SP, offset);
    } else {
      // Register 31 would read as XZR here, hence the SP case above.
      this.#emit(...e.movImm(DISP_SCRATCH, BigInt(offset)));
      this.#emit(
        e.shifted("add", { rd: BASE_SCRATCH, rn: base, rm: DISP_SCRATCH }),
      );
    }
    this.#emit(make(BASE_SCRATCH, 0));
  }

  prologue(frameSize: number, paramOffsets: number[]): void {
    this.#emit(e.stpPre({ rt: e.FP, rt2: e.LR, rn: e.SP, offset: -16 }));
    this.#emit(e.addImm(e.FP, { rn: e.SP, imm12: 0 }));
    if (frameSize > 0) {
      this.#addOffset(e.SP, e.SP, frameSize, { subtract: true });
    }
    paramOffsets.forEach((offset, i) => this.storeSlot(offset, 4 + i, 64));
  }

  epilogue(): void {
    this.#emit(e.addImm(e.SP, { rn: e.FP, imm12: 0 }));
    this.#emit(e.ldpPost({ rt: e.FP, rt2: e.LR, rn: e.SP, offset: 16 }));
    this.#emit(e.ret());
  }

  loadImm(r: VReg, value: bigint): void {
    this.#emit(...e.movImm(reg(r), value));
  }

  loadSlot(
    r: VReg,
    offset: number,
    options: { width: Width; signed: boolean },
  ): void {
    this.#access(
      e.SP,
      offset,
      options.width,
      (base, at) => e.load(reg(r), base, { ...options, offset: at }),
    );
  }

  storeSlot(offset: number, r: VReg, width: Width): void {
    this.#access(
      e.SP,
      offset,
      width,
      (base, at) => e.store(reg(r), base, { offset: at, width }),
    );
  }

  loadMem(
    r: VReg,
    baseOffset: number,
    options: { disp: number; width: Width; signed: boolean },
  ): void {
    this.#access(
      e.SP,
      baseOffset,
      64,
      (base, at) => e.load(BASE_SCRATCH, base, { offset: at, width: 64 }),
    );
    this.#access(
      BASE_SCRATCH,
      options.disp,
      options.width,
      (base, at) =>
        e.load(reg(r), base, {
          offset: at,
          width: options.width,
          signed: options.signed,
        }),
    );
  }

  storeMem(
    baseOffset: number,
    r: VReg,
    options: { disp: number; width: Width },
  ): void {
    this.#access(
      e.SP,
      baseOffset,
      64,
      (base, at) => e.load(BASE_SCRATCH, base, { offset: at, width: 64 }),
    );
    this.#access(
      BASE_SCRATCH,
      options.disp,
      options.width,
      (base, at) => e.store(reg(r), base, { offset: at, width: options.width }),
    );
  }

  addressOfSlot(r: VReg, offset: number): void {
    this.#addOffset(reg(r), e.SP, offset);
  }

  addressOfLabel(r: VReg, label: Label): void {
    this.asm.fixup(label, "adr");
    this.#emit(e.adr(reg(r), 0));
  }

  move(dst: VReg, src: VReg): void {
    if (reg(dst) !== reg(src)) this.#emit(e.movReg(reg(dst), reg(src)));
  }

  binary(op: BinaryOp): void {
    const a = reg(A);
    const b = reg(B);
    switch (op) {
      case "add":
      case "sub":
      case "and":
        return this.#emit(e.shifted(op, { rd: a, rn: a, rm: b }));
      case "or":
        return this.#emit(e.shifted("orr", { rd: a, rn: a, rm: b }));
      case "xor":
        return this.#emit(e.shifted("eor", { rd: a, rn: a, rm: b }));
      case "mul":
        return this.#emit(e.mul({ rd: a, rn: a, rm: b }));
      case "udiv":
      case "sdiv":
        return this.#emit(e.twoSource(op, { rd: a, rn: a, rm: b }));
      case "urem":
      case "srem":
        // a - (a / b) * b; division by zero gives 0, so x % 0 = x.
        this.#emit(
          e.twoSource(op === "urem" ? "udiv" : "sdiv", {
            rd: QUOTIENT_SCRATCH,
            rn: a,
            rm: b,
          }),
        );
        return this.#emit(
          e.msub({ rd: a, rn: QUOTIENT_SCRATCH, rm: b, ra: a }),
        );
      case "shl":
        return this.#emit(e.twoSource("lslv", { rd: a, rn: a, rm: b }));
      case "shr":
        return this.#emit(e.twoSource("lsrv", { rd: a, rn: a, rm: b }));
      case "sar":
        return this.#emit(e.twoSource("asrv", { rd: a, rn: a, rm: b }));
    }
  }

  branchIf(op: CompareOp, target: Label): void {
    this.#emit(e.cmp(reg(A), reg(B)));
    this.asm.fixup(target, "imm19");
    this.#emit(e.bCond(CONDITIONS[op], 0));
  }

  jump(target: Label): void {
    this.asm.fixup(target, "imm26");
    this.#emit(e.b(0));
  }

  call(target: Label): void {
    this.asm.fixup(target, "imm26");
    this.#emit(e.bl(0));
  }

  callIndirect(): void {
    this.#emit(e.blr(reg(TARGET)));
  }

  syscall(number: number): void {
    this.#emit(...e.movImm(SYSCALL_NUMBER, BigInt(number)));
    this.#emit(e.svc());
  }

  start(entry: Label, exitGroup: number): void {
    // At process entry [sp] = argc, then argv[], NULL, envp[]; sp is
    // 16-byte aligned (Linux `create_elf_tables`).
    this.#emit(e.load(0, e.SP, { offset: 0, width: 64 }));
    this.#emit(e.addImm(1, { rn: e.SP, imm12: 8 }));
    this.#emit(e.shifted("add", { rd: 2, rn: 1, rm: 0, lsl: 3 }));
    this.#emit(e.addImm(2, { rn: 2, imm12: 8 }));
    this.call(entry);
    this.syscall(exitGroup); // the status is already in X0
  }

  finish(): { code: Uint8Array; relocations: number[] } {
    return this.asm.finish((fixup: Fixup, target: number) => {
      const offset = target - fixup.at;
      const old = this.asm.read32(fixup.at);
      switch (fixup.kind) {
        case "imm26":
          return this.asm.write32(
            fixup.at,
            (old & 0xfc00_0000) | (e.b(offset) & 0x03ff_ffff),
          );
        case "imm19":
          return this.asm.write32(
            fixup.at,
            (old & 0xff00_001f) | (e.bCond("eq", offset) & 0x00ff_ffe0),
          );
        case "adr":
          return this.asm.write32(
            fixup.at,
            (old & 0x9f00_001f) | (e.adr(0, offset) & 0x60ff_ffe0),
          );
        default:
          throw new Error(`Cannot patch fixup kind "${fixup.kind}"`);
      }
    });
  }
}
