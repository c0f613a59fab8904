/**
 * x86_64 instruction encoder: the few instruction forms initx's backend
 * emits, each a function returning its bytes. Opcodes follow the Intel 64
 * and IA-32 Architectures Software Developer's Manual, Volume 2 (instruction
 * set reference); the section of each opcode is named beside it.
 *
 * All register-to-register arithmetic is 64-bit (REX.W).
 *
 * @module
 */

/** General-purpose register numbers (SDM Vol. 2, 2.2.1, Table 2-4). */
export const RAX = 0;
/** RCX. */
export const RCX = 1;
/** RDX. */
export const RDX = 2;
/** RBX. */
export const RBX = 3;
/** RSP. */
export const RSP = 4;
/** RBP. */
export const RBP = 5;
/** RSI. */
export const RSI = 6;
/** RDI. */
export const RDI = 7;
/** R8. */
export const R8 = 8;
/** R9. */
export const R9 = 9;
/** R10. */
export const R10 = 10;
/** R11. */
export const R11 = 11;

/** A register number 0..15. */
export type Reg = number;

/** Access width in bits. */
export type Width = 8 | 16 | 32 | 64;

/**
 * A memory operand: `[base + index * scale + disp]`, or `[rip + disp]`
 * when `base` is `"rip"` (disp is then relative to the next instruction).
 */
export interface MemOperand {
  /** Base register, or `"rip"`. */
  base: Reg | "rip";
  /** Optional index register (not RSP). */
  index?: Reg;
  /** Scale of the index. */
  scale?: 1 | 2 | 4 | 8;
  /** Signed 32-bit displacement. */
  disp: number;
}

/** REX prefix base value (SDM Vol. 2, 2.2.1). */
const REX = 0x40;
/** REX.W: 64-bit operand size. */
const REX_W = 0x08;
/** Operand-size override prefix, selects 16-bit operands (SDM 2.1.1). */
const OPERAND_SIZE_PREFIX = 0x66;
/** Two-byte opcode escape. */
const ESCAPE_0F = 0x0f;

/** MOV r/m64, r64 (89 /r) and MOV r/m8, r8 (88 /r): "MOV—Move". */
const MOV_RM_R = 0x89;
const MOV_RM8_R8 = 0x88;
/** MOV r64, r/m64 (8B /r). */
const MOV_R_RM = 0x8b;
/** MOV r32, imm32 (B8+rd id); with REX.W, MOV r64, imm64 (B8+rd io). */
const MOV_R_IMM = 0xb8;
/** MOV r/m64, imm32 sign-extended (REX.W C7 /0 id). */
const MOV_RM_IMM32 = 0xc7;
/** MOVZX r32, r/m8 (0F B6 /r), r/m16 (0F B7 /r): "MOVZX—Move with Zero-Extend". */
const MOVZX_8 = 0xb6;
const MOVZX_16 = 0xb7;
/** MOVSX r64, r/m8 (REX.W 0F BE /r), r/m16 (REX.W 0F BF /r): "MOVSX/MOVSXD". */
const MOVSX_8 = 0xbe;
const MOVSX_16 = 0xbf;
/** MOVSXD r64, r/m32 (REX.W 63 /r). */
const MOVSXD = 0x63;
/** LEA r64, m (REX.W 8D /r): "LEA—Load Effective Address". */
const LEA = 0x8d;
/** ALU r/m64, r64 opcodes: ADD 01, OR 09, AND 21, SUB 29, XOR 31, CMP 39. */
const ALU_OPCODES = {
  add: 0x01,
  or: 0x09,
  and: 0x21,
  sub: 0x29,
  xor: 0x31,
  cmp: 0x39,
} as const;
/** Group-1 r/m64, imm32 (81 /digit id) and imm8 (83 /digit ib). */
const GROUP1_IMM32 = 0x81;
const GROUP1_IMM8 = 0x83;
/** Group-1 /digit values: ADD /0, OR /1, AND /4, SUB /5, XOR /6, CMP /7. */
const GROUP1_DIGIT = { add: 0, or: 1, and: 4, sub: 5, xor: 6, cmp: 7 } as const;
/** TEST r/m64, r64 (85 /r). */
const TEST_RM_R = 0x85;
/** IMUL r64, r/m64 (REX.W 0F AF /r). */
const IMUL_R_RM = 0xaf;
/** Group-3 (F7): NEG /3, DIV /6, IDIV /7. */
const GROUP3 = 0xf7;
const GROUP3_NEG = 3;
const GROUP3_DIV = 6;
const GROUP3_IDIV = 7;
/** CQO (REX.W 99): sign-extend RAX into RDX:RAX. */
const CQO = 0x99;
/** Group-2 r/m64, CL (D3): SHL /4, SHR /5, SAR /7. */
const GROUP2_CL = 0xd3;
const SHIFT_DIGIT = { shl: 4, shr: 5, sar: 7 } as const;
/** PUSH r64 (50+rd), POP r64 (58+rd). */
const PUSH_R = 0x50;
const POP_R = 0x58;
/** JMP rel32 (E9 cd), CALL rel32 (E8 cd), Jcc rel32 (0F 80+cc cd). */
const JMP_REL32 = 0xe9;
const CALL_REL32 = 0xe8;
const JCC_REL32 = 0x80;
/** Group-5 (FF): CALL r/m64 /2. */
const GROUP5 = 0xff;
const GROUP5_CALL = 2;
/** RET (C3), LEAVE (C9), SYSCALL (0F 05), INT3 (CC). */
const RET = 0xc3;
const LEAVE = 0xc9;
const SYSCALL = 0x05;

/**
 * Condition codes, the low nibble of Jcc (SDM Vol. 2, Appendix B.1.4.7,
 * Table B-10).
 */
export const CC = {
  /** Below (unsigned <). */
  b: 0x2,
  /** Above or equal (unsigned >=). */
  ae: 0x3,
  /** Equal. */
  e: 0x4,
  /** Not equal. */
  ne: 0x5,
  /** Below or equal (unsigned <=). */
  be: 0x6,
  /** Above (unsigned >). */
  a: 0x7,
  /** Less (signed <). */
  l: 0xc,
  /** Greater or equal (signed >=). */
  ge: 0xd,
  /** Less or equal (signed <=). */
  le: 0xe,
  /** Greater (signed >). */
  g: 0xf,
} as const;

/** A condition code name. */
export type Cc = keyof typeof CC;

function rex(w: boolean, reg: Reg, index: Reg, base: Reg): number {
  return REX | (w ? REX_W : 0) | ((reg >> 3) & 1) << 2 |
    ((index >> 3) & 1) << 1 | ((base >> 3) & 1);
}

function modrm(mod: number, reg: Reg, rm: Reg): number {
  return (mod << 6) | ((reg & 7) << 3) | (rm & 7);
}

function le32(value: number): number[] {
  return [
    value & 0xff,
    (value >> 8) & 0xff,
    (value >> 16) & 0xff,
    (value >>> 24) & 0xff,
  ];
}

function fitsI8(value: number): boolean {
  return value >= -128 && value <= 127;
}

function checkI32(value: number): void {
  if (!Number.isInteger(value) || value < -0x8000_0000 || value > 0x7fff_ffff) {
    throw new RangeError(
      `Cannot encode displacement: ${value} does not fit in 32 bits`,
    );
  }
}

/** ModRM (+SIB, +displacement) bytes addressing `mem` with `reg` in ModRM.reg. */
function memBytes(reg: Reg, mem: MemOperand): number[] {
  checkI32(mem.disp);
  if (mem.base === "rip") return [modrm(0, reg, 5), ...le32(mem.disp)];
  const base = mem.base;
  const hasIndex = mem.index !== undefined;
  const needsSib = hasIndex || (base & 7) === RSP;
  let mod: number;
  let disp: number[];
  if (mem.disp === 0 && (base & 7) !== RBP) {
    mod = 0;
    disp = [];
  } else if (fitsI8(mem.disp)) {
    mod = 1;
    disp = [mem.disp & 0xff];
  } else {
    mod = 2;
    disp = le32(mem.disp);
  }
  if (!needsSib) return [modrm(mod, reg, base), ...disp];
  const scaleBits = { 1: 0, 2: 1, 4: 2, 8: 3 }[mem.scale ?? 1];
  const index = hasIndex ? mem.index! : RSP; // RSP as index means "none"
  return [
    modrm(mod, reg, 4),
    (scaleBits << 6) | ((index & 7) << 3) | (base & 7),
    ...disp,
  ];
}

function memRex(w: boolean, reg: Reg, mem: MemOperand): number {
  const base = mem.base === "rip" ? 0 : mem.base;
  return rex(w, reg, mem.index ?? 0, base);
}

/** Emit REX only when it carries information (or `force`, for SIL/DIL byte access). */
function optionalRex(value: number, force: boolean): number[] {
  return value !== REX || force ? [value] : [];
}

/**
 * `mov dst, src` (64-bit registers).
 *
 * @example
 * ```ts
 * import { movRegReg, RAX, RDI } from "./encoder.ts";
 * console.assert(movRegReg(RDI, RAX).length === 3);
 * ```
 */
export function movRegReg(dst: Reg, src: Reg): number[] {
  return [rex(true, src, 0, dst), MOV_RM_R, modrm(3, src, dst)];
}

/**
 * Load a 64-bit pattern into a register with the shortest form:
 * `mov r32, imm32` (zero-extends), `mov r/m64, imm32` (sign-extends) or
 * `movabs r64, imm64`.
 *
 * @example
 * ```ts
 * import { movImm, RAX } from "./encoder.ts";
 * console.assert(movImm(RAX, 1n).length === 5);
 * ```
 */
export function movImm(dst: Reg, value: bigint): number[] {
  const bits = BigInt.asUintN(64, value);
  if (bits <= 0xffff_ffffn) {
    return [
      ...optionalRex(rex(false, 0, 0, dst), false),
      MOV_R_IMM + (dst & 7),
      ...le32(Number(bits)),
    ];
  }
  const signed = BigInt.asIntN(64, value);
  if (signed >= -0x8000_0000n && signed < 0) {
    return [
      rex(true, 0, 0, dst),
      MOV_RM_IMM32,
      modrm(3, 0, dst),
      ...le32(Number(signed)),
    ];
  }
  const bytes: number[] = [];
  for (let i = 0n; i < 8n; i++) bytes.push(Number((bits >> (8n * i)) & 0xffn));
  return [rex(true, 0, 0, dst), MOV_R_IMM + (dst & 7), ...bytes];
}

/**
 * Load `width` bits from memory into a 64-bit register, zero- or
 * sign-extending.
 *
 * @example
 * ```ts
 * import { load, RAX, RBP } from "./encoder.ts";
 * console.assert(load(RAX, { base: RBP, disp: -8 }, { width: 64 }).length === 4);
 * ```
 */
export function load(
  dst: Reg,
  mem: MemOperand,
  options: { width: Width; signed?: boolean },
): number[] {
  const { width, signed = false } = options;
  const m = memBytes(dst, mem);
  if (width === 64) return [memRex(true, dst, mem), MOV_R_RM, ...m];
  if (width === 32) {
    if (signed) return [memRex(true, dst, mem), MOVSXD, ...m];
    return [...optionalRex(memRex(false, dst, mem), false), MOV_R_RM, ...m];
  }
  const op = width === 8
    ? (signed ? MOVSX_8 : MOVZX_8)
    : (signed ? MOVSX_16 : MOVZX_16);
  if (signed) return [memRex(true, dst, mem), ESCAPE_0F, op, ...m];
  return [...optionalRex(memRex(false, dst, mem), false), ESCAPE_0F, op, ...m];
}

/**
 * Store the low `width` bits of a register to memory.
 *
 * @example
 * ```ts
 * import { store, RAX, RBP } from "./encoder.ts";
 * console.assert(store({ base: RBP, disp: -8 }, RAX, { width: 32 }).length === 3);
 * ```
 */
export function store(
  mem: MemOperand,
  src: Reg,
  options: { width: Width },
): number[] {
  const { width } = options;
  const m = memBytes(src, mem);
  switch (width) {
    case 64:
      return [memRex(true, src, mem), MOV_RM_R, ...m];
    case 32:
      return [...optionalRex(memRex(false, src, mem), false), MOV_RM_R, ...m];
    case 16:
      return [
        OPERAND_SIZE_PREFIX,
        ...optionalRex(memRex(false, src, mem), false),
        MOV_RM_R,
        ...m,
      ];
    case 8:
      // Without REX, byte registers 4..7 would be AH/CH/DH/BH.
      return [
        ...optionalRex(memRex(false, src, mem), src >= 4),
        MOV_RM8_R8,
        ...m,
      ];
  }
}

/**
 * `lea dst, [mem]`.
 *
 * @example
 * ```ts
 * import { lea, RAX } from "./encoder.ts";
 * console.assert(lea(RAX, { base: "rip", disp: 0 }).length === 7);
 * ```
 */
export function lea(dst: Reg, mem: MemOperand): number[] {
  return [memRex(true, dst, mem), LEA, ...memBytes(dst, mem)];
}

/** Register-to-register ALU operations. */
export type AluOp = keyof typeof ALU_OPCODES;

/**
 * `op dst, src` for add/sub/and/or/xor/cmp, 64-bit.
 *
 * @example
 * ```ts
 * import { alu, RAX, RCX } from "./encoder.ts";
 * console.assert(alu("add", { dst: RAX, src: RCX }).length === 3);
 * ```
 */
export function alu(op: AluOp, operands: { dst: Reg; src: Reg }): number[] {
  const { dst, src } = operands;
  return [rex(true, src, 0, dst), ALU_OPCODES[op], modrm(3, src, dst)];
}

/**
 * `xor dst32, src32`: the idiom that clears a register.
 *
 * @example
 * ```ts
 * import { xor32, RDX } from "./encoder.ts";
 * console.assert(xor32(RDX, RDX).length === 2);
 * ```
 */
export function xor32(dst: Reg, src: Reg): number[] {
  return [
    ...optionalRex(rex(false, src, 0, dst), false),
    ALU_OPCODES.xor,
    modrm(3, src, dst),
  ];
}

/**
 * `op dst, imm` for add/sub/and/or/xor/cmp with a sign-extended immediate,
 * 64-bit; the 8-bit form when it fits.
 *
 * @example
 * ```ts
 * import { aluImm, RSP } from "./encoder.ts";
 * console.assert(aluImm("sub", { dst: RSP, imm: 16 }).length === 4);
 * ```
 */
export function aluImm(
  op: AluOp,
  operands: { dst: Reg; imm: number },
): number[] {
  const { dst, imm } = operands;
  checkI32(imm);
  const digit = GROUP1_DIGIT[op];
  if (fitsI8(imm)) {
    return [
      rex(true, 0, 0, dst),
      GROUP1_IMM8,
      modrm(3, digit, dst),
      imm & 0xff,
    ];
  }
  return [
    rex(true, 0, 0, dst),
    GROUP1_IMM32,
    modrm(3, digit, dst),
    ...le32(imm),
  ];
}

/**
 * `test a, b` (64-bit).
 *
 * @example
 * ```ts
 * import { test, RCX } from "./encoder.ts";
 * console.assert(test(RCX, RCX).length === 3);
 * ```
 */
export function test(a: Reg, b: Reg): number[] {
  return [rex(true, b, 0, a), TEST_RM_R, modrm(3, b, a)];
}

/**
 * `imul dst, src` (64-bit, low half of the product).
 *
 * @example
 * ```ts
 * import { imul, RAX, RCX } from "./encoder.ts";
 * console.assert(imul(RAX, RCX).length === 4);
 * ```
 */
export function imul(dst: Reg, src: Reg): number[] {
  return [rex(true, dst, 0, src), ESCAPE_0F, IMUL_R_RM, modrm(3, dst, src)];
}

/**
 * `div src` or `idiv src`: RDX:RAX divided by `src`, quotient in RAX,
 * remainder in RDX.
 *
 * @example
 * ```ts
 * import { div, RCX } from "./encoder.ts";
 * console.assert(div(RCX, { signed: true }).length === 3);
 * ```
 */
export function div(src: Reg, options: { signed: boolean }): number[] {
  return [
    rex(true, 0, 0, src),
    GROUP3,
    modrm(3, options.signed ? GROUP3_IDIV : GROUP3_DIV, src),
  ];
}

/**
 * `neg dst` (64-bit).
 *
 * @example
 * ```ts
 * import { neg, RAX } from "./encoder.ts";
 * console.assert(neg(RAX).length === 3);
 * ```
 */
export function neg(dst: Reg): number[] {
  return [rex(true, 0, 0, dst), GROUP3, modrm(3, GROUP3_NEG, dst)];
}

/**
 * `cqo`: sign-extend RAX into RDX.
 *
 * @example
 * ```ts
 * import { cqo } from "./encoder.ts";
 * console.assert(cqo().length === 2);
 * ```
 */
export function cqo(): number[] {
  return [REX | REX_W, CQO];
}

/** Shift operations by CL. */
export type ShiftOp = keyof typeof SHIFT_DIGIT;

/**
 * `shl/shr/sar dst, cl` (64-bit).
 *
 * @example
 * ```ts
 * import { shiftCl, RAX } from "./encoder.ts";
 * console.assert(shiftCl("shl", RAX).length === 3);
 * ```
 */
export function shiftCl(op: ShiftOp, dst: Reg): number[] {
  return [rex(true, 0, 0, dst), GROUP2_CL, modrm(3, SHIFT_DIGIT[op], dst)];
}

/**
 * `push reg` (64-bit).
 *
 * @example
 * ```ts
 * import { push, RBP } from "./encoder.ts";
 * console.assert(push(RBP)[0] === 0x55);
 * ```
 */
export function push(reg: Reg): number[] {
  return [...optionalRex(rex(false, 0, 0, reg), false), PUSH_R + (reg & 7)];
}

/**
 * `pop reg` (64-bit).
 *
 * @example
 * ```ts
 * import { pop, RBP } from "./encoder.ts";
 * console.assert(pop(RBP)[0] === 0x5d);
 * ```
 */
export function pop(reg: Reg): number[] {
  return [...optionalRex(rex(false, 0, 0, reg), false), POP_R + (reg & 7)];
}

/**
 * `jmp rel32`; `rel` counts from the end of the instruction (5 bytes).
 *
 * @example
 * ```ts
 * import { jmp } from "./encoder.ts";
 * console.assert(jmp(0).length === 5);
 * ```
 */
export function jmp(rel: number): number[] {
  checkI32(rel);
  return [JMP_REL32, ...le32(rel)];
}

/**
 * `jcc rel32`; `rel` counts from the end of the instruction (6 bytes).
 *
 * @example
 * ```ts
 * import { jcc } from "./encoder.ts";
 * console.assert(jcc("e", 0).length === 6);
 * ```
 */
export function jcc(cc: Cc, rel: number): number[] {
  checkI32(rel);
  return [ESCAPE_0F, JCC_REL32 + CC[cc], ...le32(rel)];
}

/**
 * `call rel32`; `rel` counts from the end of the instruction (5 bytes).
 *
 * @example
 * ```ts
 * import { call } from "./encoder.ts";
 * console.assert(call(0).length === 5);
 * ```
 */
export function call(rel: number): number[] {
  checkI32(rel);
  return [CALL_REL32, ...le32(rel)];
}

/**
 * `call reg` (indirect).
 *
 * @example
 * ```ts
 * import { callReg, R11 } from "./encoder.ts";
 * console.assert(callReg(R11).length === 3);
 * ```
 */
export function callReg(reg: Reg): number[] {
  return [
    ...optionalRex(rex(false, 0, 0, reg), false),
    GROUP5,
    modrm(3, GROUP5_CALL, reg),
  ];
}

/**
 * `ret`.
 *
 * @example
 * ```ts
 * import { ret } from "./encoder.ts";
 * console.assert(ret()[0] === 0xc3);
 * ```
 */
export function ret(): number[] {
  return [RET];
}

/**
 * `leave`: `mov rsp, rbp; pop rbp`.
 *
 * @example
 * ```ts
 * import { leave } from "./encoder.ts";
 * console.assert(leave()[0] === 0xc9);
 * ```
 */
export function leave(): number[] {
  return [LEAVE];
}

/**
 * `syscall`.
 *
 * @example
 * ```ts
 * import { syscall } from "./encoder.ts";
 * console.assert(syscall().length === 2);
 * ```
 */
export function syscall(): number[] {
  return [ESCAPE_0F, SYSCALL];
}
