/**
 * AArch64 (A64) instruction encoder: the few instruction forms initx's
 * backend emits, each a function returning one 32-bit instruction word.
 * Encodings follow the Arm Architecture Reference Manual for A-profile
 * (ARM DDI 0487), chapter C6 "A64 Base Instruction Descriptions"; the
 * instruction's section name is given beside each base opcode.
 *
 * All data-processing forms are the 64-bit (sf = 1) variants.
 *
 * @module
 */

/** A general-purpose register number 0..30, or 31 (SP or XZR by context). */
export type Reg = number;

/** Register 31 read as the stack pointer. */
export const SP = 31;
/** Register 31 read as zero. */
export const XZR = 31;
/** Frame pointer (X29) and link register (X30) per the AAPCS64. */
export const FP = 29;
/** Link register. */
export const LR = 30;

/** Access width in bits. */
export type Width = 8 | 16 | 32 | 64;

/** MOVZ, 64-bit (C6.2 "MOVZ"). */
const MOVZ_X = 0xd2800000;
/** MOVK, 64-bit (C6.2 "MOVK"). */
const MOVK_X = 0xf2800000;
/** MOVN, 64-bit (C6.2 "MOVN"). */
const MOVN_X = 0x92800000;
/** ADD (immediate), 64-bit (C6.2 "ADD (immediate)"). */
const ADD_IMM_X = 0x91000000;
/** SUB (immediate), 64-bit (C6.2 "SUB (immediate)"). */
const SUB_IMM_X = 0xd1000000;
/** Shifted-register data processing, 64-bit (C6.2 "ADD/SUB/AND/ORR/EOR/SUBS (shifted register)"). */
const SHIFTED = {
  add: 0x8b000000,
  sub: 0xcb000000,
  and: 0x8a000000,
  orr: 0xaa000000,
  eor: 0xca000000,
  subs: 0xeb000000,
} as const;
/** MADD / MSUB, 64-bit (C6.2 "MADD", "MSUB"). */
const MADD_X = 0x9b000000;
const MSUB_X = 0x9b008000;
/** Two-source data processing, 64-bit (C6.2 "UDIV", "SDIV", "LSLV", "LSRV", "ASRV"). */
const TWO_SOURCE = {
  udiv: 0x9ac00800,
  sdiv: 0x9ac00c00,
  lslv: 0x9ac02000,
  lsrv: 0x9ac02400,
  asrv: 0x9ac02800,
} as const;
/**
 * Load/store register (unsigned immediate), by width (C6.2 "LDR/LDRB/LDRH/
 * STR/STRB/STRH (immediate)", "LDRSB/LDRSH/LDRSW (immediate)" to X).
 */
const LDR_UIMM = {
  8: 0x39400000,
  16: 0x79400000,
  32: 0xb9400000,
  64: 0xf9400000,
} as const;
const LDRS_UIMM = { 8: 0x39800000, 16: 0x79800000, 32: 0xb9800000 } as const;
const STR_UIMM = {
  8: 0x39000000,
  16: 0x79000000,
  32: 0xb9000000,
  64: 0xf9000000,
} as const;
/** Load/store register (unscaled immediate) (C6.2 "LDUR*", "STUR*"). */
const LDUR = {
  8: 0x38400000,
  16: 0x78400000,
  32: 0xb8400000,
  64: 0xf8400000,
} as const;
const LDURS = { 8: 0x38800000, 16: 0x78800000, 32: 0xb8800000 } as const;
const STUR = {
  8: 0x38000000,
  16: 0x78000000,
  32: 0xb8000000,
  64: 0xf8000000,
} as const;
/** STP pre-index and LDP post-index, 64-bit (C6.2 "STP", "LDP"). */
const STP_PRE_X = 0xa9800000;
const LDP_POST_X = 0xa8c00000;
/** B, BL (C6.2 "B", "BL"): imm26 word offset. */
const B = 0x14000000;
const BL = 0x94000000;
/** B.cond (C6.2 "B.cond"): imm19 word offset, condition in bits 0..3. */
const B_COND = 0x54000000;
/** BLR, RET (C6.2 "BLR", "RET"). */
const BLR = 0xd63f0000;
const RET_X30 = 0xd65f03c0;
/** SVC #0 (C6.2 "SVC"). */
const SVC_0 = 0xd4000001;
/** ADR (C6.2 "ADR"): PC-relative address, +-1 MiB. */
const ADR = 0x10000000;

/** Condition codes (C1.2.4, Table C1-1). */
export const COND = {
  eq: 0x0,
  ne: 0x1,
  /** Unsigned >= (carry set). */
  hs: 0x2,
  /** Unsigned < (carry clear). */
  lo: 0x3,
  /** Unsigned >. */
  hi: 0x8,
  /** Unsigned <=. */
  ls: 0x9,
  ge: 0xa,
  lt: 0xb,
  gt: 0xc,
  le: 0xd,
} as const;

/** A condition code name. */
export type Cond = keyof typeof COND;

function checkReg(reg: Reg): void {
  if (!Number.isInteger(reg) || reg < 0 || reg > 31) {
    throw new RangeError(`Cannot encode register: ${reg}`);
  }
}

function rd(r: Reg): number {
  checkReg(r);
  return r;
}
function rn(r: Reg): number {
  checkReg(r);
  return r << 5;
}
function rm(r: Reg): number {
  checkReg(r);
  return r << 16;
}

function word(value: number): number {
  return value >>> 0;
}

/**
 * `movz xd, #imm16, lsl #shift`.
 *
 * @example
 * ```ts
 * import { movz } from "./encoder.ts";
 * console.assert(movz(0, 1, { shift: 0 }) === 0xd2800020);
 * ```
 */
export function movz(
  dst: Reg,
  imm16: number,
  options: { shift: 0 | 16 | 32 | 48 },
): number {
  return word(
    MOVZ_X | (options.shift / 16) << 21 | (imm16 & 0xffff) << 5 | rd(dst),
  );
}

/**
 * `movk xd, #imm16, lsl #shift`.
 *
 * @example
 * ```ts
 * import { movk } from "./encoder.ts";
 * console.assert(movk(0, 1, { shift: 16 }) === 0xf2a00020);
 * ```
 */
export function movk(
  dst: Reg,
  imm16: number,
  options: { shift: 0 | 16 | 32 | 48 },
): number {
  return word(
    MOVK_X | (options.shift / 16) << 21 | (imm16 & 0xffff) << 5 | rd(dst),
  );
}

/**
 * `movn xd, #imm16, lsl #shift`: xd = ~(imm16 << shift).
 *
 * @example
 * ```ts
 * import { movn } from "./encoder.ts";
 * console.assert(movn(0, 0, { shift: 0 }) === 0x92800000);
 * ```
 */
export function movn(
  dst: Reg,
  imm16: number,
  options: { shift: 0 | 16 | 32 | 48 },
): number {
  return word(
    MOVN_X | (options.shift / 16) << 21 | (imm16 & 0xffff) << 5 | rd(dst),
  );
}

/**
 * The shortest MOVZ/MOVN + MOVK sequence loading a 64-bit pattern.
 *
 * @example
 * ```ts
 * import { movImm } from "./encoder.ts";
 * console.assert(movImm(0, -1n).length === 1);
 * ```
 */
export function movImm(dst: Reg, value: bigint): number[] {
  const bits = BigInt.asUintN(64, value);
  if (bits <= 0xffffn) return [movz(dst, Number(bits), { shift: 0 })];
  const chunks = [0, 1, 2, 3].map((i) =>
    Number((bits >> BigInt(16 * i)) & 0xffffn)
  );
  const zeros = chunks.filter((c) => c === 0).length;
  const ones = chunks.filter((c) => c === 0xffff).length;
  const shifts = [0, 16, 32, 48] as const;
  const out: number[] = [];
  if (ones > zeros) {
    // Start from all ones and patch the chunks that differ.
    const first = chunks.findIndex((c) => c !== 0xffff);
    const at = first === -1 ? 0 : first;
    out.push(movn(dst, ~chunks[at]! & 0xffff, { shift: shifts[at]! }));
    for (let i = at + 1; i < 4; i++) {
      if (chunks[i] !== 0xffff) {
        out.push(movk(dst, chunks[i]!, { shift: shifts[i]! }));
      }
    }
    return out;
  }
  const first = chunks.findIndex((c) => c !== 0);
  const at = first === -1 ? 0 : first;
  out.push(movz(dst, chunks[at]!, { shift: shifts[at]! }));
  for (let i = at + 1; i < 4; i++) {
    if (chunks[i] !== 0) out.push(movk(dst, chunks[i]!, { shift: shifts[i]! }));
  }
  return out;
}

/**
 * `add xd, xn, #imm12` (optionally `lsl #12`); register 31 is SP here.
 *
 * @example
 * ```ts
 * import { addImm, FP, SP } from "./encoder.ts";
 * console.assert(addImm(FP, { rn: SP, imm12: 0 }) === 0x910003fd);
 * ```
 */
export function addImm(
  dst: Reg,
  operands: { rn: Reg; imm12: number; shift12?: boolean },
): number {
  checkImm12(operands.imm12);
  return word(
    ADD_IMM_X | (operands.shift12 ? 1 << 22 : 0) | operands.imm12 << 10 |
      rn(operands.rn) | rd(dst),
  );
}

/**
 * `sub xd, xn, #imm12` (optionally `lsl #12`); register 31 is SP here.
 *
 * @example
 * ```ts
 * import { subImm, SP } from "./encoder.ts";
 * console.assert(subImm(SP, { rn: SP, imm12: 16 }) === 0xd10043ff);
 * ```
 */
export function subImm(
  dst: Reg,
  operands: { rn: Reg; imm12: number; shift12?: boolean },
): number {
  checkImm12(operands.imm12);
  return word(
    SUB_IMM_X | (operands.shift12 ? 1 << 22 : 0) | operands.imm12 << 10 |
      rn(operands.rn) | rd(dst),
  );
}

function checkImm12(imm12: number): void {
  if (!Number.isInteger(imm12) || imm12 < 0 || imm12 > 0xfff) {
    throw new RangeError(
      `Cannot encode immediate: ${imm12} does not fit in 12 bits`,
    );
  }
}

/** Shifted-register operations. */
export type ShiftedOp = keyof typeof SHIFTED;

/**
 * `op xd, xn, xm, lsl #amount` for add/sub/and/orr/eor/subs.
 *
 * @example
 * ```ts
 * import { shifted } from "./encoder.ts";
 * console.assert(shifted("add", { rd: 0, rn: 1, rm: 2 }) === 0x8b020020);
 * ```
 */
export function shifted(
  op: ShiftedOp,
  operands: { rd: Reg; rn: Reg; rm: Reg; lsl?: number },
): number {
  const amount = operands.lsl ?? 0;
  if (amount < 0 || amount > 63) {
    throw new RangeError(`Cannot encode shift: ${amount}`);
  }
  return word(
    SHIFTED[op] | rm(operands.rm) | amount << 10 | rn(operands.rn) |
      rd(operands.rd),
  );
}

/**
 * `mov xd, xm` (ORR with XZR; not for SP).
 *
 * @example
 * ```ts
 * import { movReg } from "./encoder.ts";
 * console.assert(movReg(0, 1) === 0xaa0103e0);
 * ```
 */
export function movReg(dst: Reg, src: Reg): number {
  return shifted("orr", { rd: dst, rn: XZR, rm: src });
}

/**
 * `cmp xn, xm` (SUBS XZR, xn, xm).
 *
 * @example
 * ```ts
 * import { cmp } from "./encoder.ts";
 * console.assert(cmp(0, 1) === 0xeb01001f);
 * ```
 */
export function cmp(a: Reg, b: Reg): number {
  return shifted("subs", { rd: XZR, rn: a, rm: b });
}

/**
 * `mul xd, xn, xm` (MADD with XZR).
 *
 * @example
 * ```ts
 * import { mul } from "./encoder.ts";
 * console.assert(mul({ rd: 0, rn: 1, rm: 2 }) === 0x9b027c20);
 * ```
 */
export function mul(operands: { rd: Reg; rn: Reg; rm: Reg }): number {
  return word(
    MADD_X | rm(operands.rm) | XZR << 10 | rn(operands.rn) | rd(operands.rd),
  );
}

/**
 * `msub xd, xn, xm, xa`: xd = xa - xn * xm (`ra` is xa).
 *
 * @example
 * ```ts
 * import { msub } from "./encoder.ts";
 * console.assert(msub({ rd: 0, rn: 1, rm: 2, ra: 3 }) === 0x9b028c20);
 * ```
 */
export function msub(operands: { rd: Reg; rn: Reg; rm: Reg; ra: Reg }): number {
  checkReg(operands.ra);
  return word(
    MSUB_X | rm(operands.rm) | operands.ra << 10 | rn(operands.rn) |
      rd(operands.rd),
  );
}

/** Two-source operations. */
export type TwoSourceOp = keyof typeof TWO_SOURCE;

/**
 * `op xd, xn, xm` for udiv/sdiv/lslv/lsrv/asrv.
 *
 * @example
 * ```ts
 * import { twoSource } from "./encoder.ts";
 * console.assert(twoSource("udiv", { rd: 0, rn: 1, rm: 2 }) === 0x9ac20820);
 * ```
 */
export function twoSource(
  op: TwoSourceOp,
  operands: { rd: Reg; rn: Reg; rm: Reg },
): number {
  return word(
    TWO_SOURCE[op] | rm(operands.rm) | rn(operands.rn) | rd(operands.rd),
  );
}

/** Whether `offset` can be the unsigned scaled immediate of a `width` access. */
export function fitsScaled(offset: number, width: Width): boolean {
  const size = width / 8;
  return Number.isInteger(offset) && offset >= 0 && offset % size === 0 &&
    offset / size <= 0xfff;
}

/** Whether `offset` fits the signed 9-bit unscaled immediate (LDUR/STUR). */
export function fitsUnscaled(offset: number): boolean {
  return Number.isInteger(offset) && offset >= -256 && offset <= 255;
}

/**
 * Load `width` bits from `[base, #offset]` into X`dst`, zero- or
 * sign-extended. Uses the scaled unsigned form when it fits, else LDUR.
 *
 * @example
 * ```ts
 * import { load, SP } from "./encoder.ts";
 * console.assert(load(0, SP, { offset: 8, width: 64 }) === 0xf94007e0);
 * ```
 */
export function load(
  dst: Reg,
  base: Reg,
  options: { offset: number; width: Width; signed?: boolean },
): number {
  const { offset, width, signed = false } = options;
  const sign = signed && width !== 64;
  if (fitsScaled(offset, width)) {
    const op = sign ? LDRS_UIMM[width as 8 | 16 | 32] : LDR_UIMM[width];
    return word(op | (offset / (width / 8)) << 10 | rn(base) | rd(dst));
  }
  if (fitsUnscaled(offset)) {
    const op = sign ? LDURS[width as 8 | 16 | 32] : LDUR[width];
    return word(op | (offset & 0x1ff) << 12 | rn(base) | rd(dst));
  }
  throw new RangeError(`Cannot encode load offset: ${offset}`);
}

/**
 * Store the low `width` bits of X`src` to `[base, #offset]`.
 *
 * @example
 * ```ts
 * import { store, SP } from "./encoder.ts";
 * console.assert(store(0, SP, { offset: 8, width: 64 }) === 0xf90007e0);
 * ```
 */
export function store(
  src: Reg,
  base: Reg,
  options: { offset: number; width: Width },
): number {
  const { offset, width } = options;
  if (fitsScaled(offset, width)) {
    return word(
      STR_UIMM[width] | (offset / (width / 8)) << 10 | rn(base) | rd(src),
    );
  }
  if (fitsUnscaled(offset)) {
    return word(STUR[width] | (offset & 0x1ff) << 12 | rn(base) | rd(src));
  }
  throw new RangeError(`Cannot encode store offset: ${offset}`);
}

/**
 * `stp x29, x30, [sp, #-16]!`-style pre-indexed pair store.
 *
 * @example
 * ```ts
 * import { stpPre, FP, LR, SP } from "./encoder.ts";
 * console.assert(stpPre({ rt: FP, rt2: LR, rn: SP, offset: -16 }) === 0xa9bf7bfd);
 * ```
 */
export function stpPre(
  operands: { rt: Reg; rt2: Reg; rn: Reg; offset: number },
): number {
  return word(
    STP_PRE_X | pairOffset(operands.offset) | rd(operands.rt2) << 10 |
      rn(operands.rn) | rd(operands.rt),
  );
}

/**
 * `ldp x29, x30, [sp], #16`-style post-indexed pair load.
 *
 * @example
 * ```ts
 * import { ldpPost, FP, LR, SP } from "./encoder.ts";
 * console.assert(ldpPost({ rt: FP, rt2: LR, rn: SP, offset: 16 }) === 0xa8c17bfd);
 * ```
 */
export function ldpPost(
  operands: { rt: Reg; rt2: Reg; rn: Reg; offset: number },
): number {
  return word(
    LDP_POST_X | pairOffset(operands.offset) | rd(operands.rt2) << 10 |
      rn(operands.rn) | rd(operands.rt),
  );
}

/** The imm7 field (bits 15..21) of a 64-bit pair access: a multiple of 8 in -512..504. */
function pairOffset(offset: number): number {
  if (
    !Number.isInteger(offset) || offset % 8 !== 0 || offset < -512 ||
    offset > 504
  ) {
    throw new RangeError(`Cannot encode pair offset: ${offset}`);
  }
  return ((offset / 8) & 0x7f) << 15;
}

function checkBranch(offset: number, bits: number): number {
  if (offset % 4 !== 0) {
    throw new RangeError(
      `Cannot encode branch: offset ${offset} is not a multiple of 4`,
    );
  }
  const words = offset / 4;
  const limit = 2 ** (bits - 1);
  if (words < -limit || words >= limit) {
    throw new RangeError(
      `Cannot encode branch: offset ${offset} is out of range`,
    );
  }
  return words & (2 ** bits - 1);
}

/**
 * `b label`; `offset` in bytes from this instruction.
 *
 * @example
 * ```ts
 * import { b } from "./encoder.ts";
 * console.assert(b(8) === 0x14000002);
 * ```
 */
export function b(offset: number): number {
  return word(B | checkBranch(offset, 26));
}

/**
 * `bl label`; `offset` in bytes from this instruction.
 *
 * @example
 * ```ts
 * import { bl } from "./encoder.ts";
 * console.assert(bl(8) === 0x94000002);
 * ```
 */
export function bl(offset: number): number {
  return word(BL | checkBranch(offset, 26));
}

/**
 * `b.cond label`; `offset` in bytes from this instruction.
 *
 * @example
 * ```ts
 * import { bCond } from "./encoder.ts";
 * console.assert(bCond("eq", 8) === 0x54000040);
 * ```
 */
export function bCond(cond: Cond, offset: number): number {
  return word(B_COND | checkBranch(offset, 19) << 5 | COND[cond]);
}

/**
 * `blr xn`.
 *
 * @example
 * ```ts
 * import { blr } from "./encoder.ts";
 * console.assert(blr(16) === 0xd63f0200);
 * ```
 */
export function blr(target: Reg): number {
  return word(BLR | rn(target));
}

/**
 * `ret` (to X30).
 *
 * @example
 * ```ts
 * import { ret } from "./encoder.ts";
 * console.assert(ret() === 0xd65f03c0);
 * ```
 */
export function ret(): number {
  return RET_X30;
}

/**
 * `svc #0`.
 *
 * @example
 * ```ts
 * import { svc } from "./encoder.ts";
 * console.assert(svc() === 0xd4000001);
 * ```
 */
export function svc(): number {
  return SVC_0;
}

/**
 * `adr xd, label`; `offset` in bytes from this instruction (+-1 MiB).
 *
 * @example
 * ```ts
 * import { adr } from "./encoder.ts";
 * console.assert(adr(0, 4) === 0x10000020);
 * ```
 */
export function adr(dst: Reg, offset: number): number {
  if (!Number.isInteger(offset) || offset < -(1 << 20) || offset >= 1 << 20) {
    throw new RangeError(`Cannot encode adr: offset ${offset} is out of range`);
  }
  const imm = offset & 0x1fffff;
  return word(ADR | (imm & 3) << 29 | (imm >> 2) << 5 | rd(dst));
}
