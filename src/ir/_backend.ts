/**
 * The interface between the architecture-neutral code generator and a
 * backend. Internal to `src/ir/`.
 *
 * The generator keeps every variable in a stack slot and uses a handful of
 * virtual registers, which each backend maps to machine registers:
 *
 * - `A`, `B`: operands of arithmetic and comparisons (`A = A op B`);
 * - `RET`: return value of calls and system calls;
 * - `TARGET`: the code pointer of an indirect call;
 * - `arg(i)`: the i-th argument of a call (the C calling convention's
 *   integer argument registers, so compiled methods are callable from C);
 * - `sysArg(i)`: the i-th system call argument.
 *
 * Slot offsets count bytes up from the bottom of the method's frame.
 *
 * @module
 */

import type { Assembler, Label } from "./_assembler.ts";
import type { BinaryOp, CompareOp, Width } from "./ir.ts";
import type { Arch } from "./syscalls.ts";

/** A virtual register. */
export type VReg = number;
/** First operand and result of arithmetic. */
export const A: VReg = 0;
/** Second operand of arithmetic. */
export const B: VReg = 1;
/** Return value. */
export const RET: VReg = 2;
/** Indirect call target. */
export const TARGET: VReg = 3;
/** The i-th call argument register (0..5). */
export function arg(i: number): VReg {
  return 4 + i;
}
/** The i-th system call argument register (0..5). */
export function sysArg(i: number): VReg {
  return 10 + i;
}

/** Most arguments a call or system call can take. */
export const MAX_ARGS = 6;

/** What a backend provides to the code generator. */
export interface Backend {
  /** The architecture. */
  readonly arch: Arch;
  /** The code buffer. */
  readonly asm: Assembler;
  /** Method entry: set up a frame of `frameSize` bytes and spill `arg(i)` to `paramOffsets[i]`. */
  prologue(frameSize: number, paramOffsets: number[]): void;
  /** Leave the method; the value is in `RET`. */
  epilogue(): void;
  /** Load a 64-bit pattern. */
  loadImm(r: VReg, value: bigint): void;
  /** Load a slot, extending `width` bits to 64. */
  loadSlot(
    r: VReg,
    offset: number,
    options: { width: Width; signed: boolean },
  ): void;
  /** Store the low `width` bits to a slot. */
  storeSlot(offset: number, r: VReg, width: Width): void;
  /** Load `[slot(baseOffset)] + disp`, extending `width` bits to 64. */
  loadMem(
    r: VReg,
    baseOffset: number,
    options: { disp: number; width: Width; signed: boolean },
  ): void;
  /** Store the low `width` bits of `r` at `[slot(baseOffset)] + disp`. */
  storeMem(
    baseOffset: number,
    r: VReg,
    options: { disp: number; width: Width },
  ): void;
  /** Address of a frame offset. */
  addressOfSlot(r: VReg, offset: number): void;
  /** Address of a label (PC-relative). */
  addressOfLabel(r: VReg, label: Label): void;
  /** `dst = src`. */
  move(dst: VReg, src: VReg): void;
  /** `A = A op B` on 64-bit values. */
  binary(op: BinaryOp): void;
  /** Jump to `target` when `A op B`. */
  branchIf(op: CompareOp, target: Label): void;
  /** Jump. */
  jump(target: Label): void;
  /** Call a label. */
  call(target: Label): void;
  /** Call the address in `TARGET`. */
  callIndirect(): void;
  /** System call `number` with arguments in `sysArg(i)`; result in `RET`. */
  syscall(number: number): void;
  /**
   * The process entry of a static executable: pass argc, argv and envp to
   * `entry` and exit the process with its result.
   */
  start(entry: Label, exitGroup: number): void;
  /** Patch fixups and return the code. */
  finish(): { code: Uint8Array; relocations: number[] };
}
