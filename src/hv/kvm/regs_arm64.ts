/**
 * The registers of an arm64 vCPU as KVM names them: the ids
 * `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG` take for every field of `hv.ts`'s
 * {@linkcode Arm64Regs} and {@linkcode Arm64SysRegs}, and the writes that
 * start a vCPU.
 *
 * An id is `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | group | index`
 * (Documentation/virt/kvm/api.rst, "KVM_SET_ONE_REG"):
 * - group `KVM_REG_ARM_CORE`: a member of arm64's `struct kvm_regs`, the
 *   index its byte offset / 4 (X0 is `0x6030_0000_0010_0000`, PC
 *   `0x6030_0000_0010_0040`);
 * - group `KVM_REG_ARM64_SYSREG`: a system register, the index its MRS/MSR
 *   encoding `op0:op1:CRn:CRm:op2` in bits 15:0 (MPIDR_EL1, encoded 3, 0, 0,
 *   0, 5, is `0x6030_0000_0013_c005`).
 *
 * Where the architecture's names and KVM's differ:
 * - `struct user_pt_regs.sp`, the first `struct kvm_regs` member's, is
 *   SP_EL0; `hv.ts`'s `Arm64Regs.sp` is SP_EL1, the `sp_el1` member. So
 *   `sp` maps to `sp_el1` and `sysRegs.sp_el0` to `regs.sp`.
 * - ELR_EL1 and SPSR_EL1 are core registers (`elr_el1`, `spsr[0]`).
 * - KVM's id for CNTV_CVAL_EL0 is `KVM_REG_ARM_TIMER_CVAL`, encoded
 *   3, 3, 14, 0, 2: the header's warning says its encoding and CNTVCT_EL0's
 *   were swapped by accident and are kept so (the architected CNTV_CVAL_EL0
 *   is 3, 3, 14, 3, 2, which KVM takes as the counter).
 *
 * System register encodings: Arm Architecture Reference Manual (ARM DDI
 * 0487), each register's "Accessing" section, as in Linux's
 * `arch/arm64/include/asm/sysreg.h`.
 *
 * @module
 */

import {
  arm64_kvm_regs,
  KVM_REG,
  KVM_REG_ARM64_SYSREG_SHIFT,
} from "../../../ffi/kvm.ts";
import type { Arm64Regs, Arm64SysRegs } from "../hv.ts";

/** A system register's MRS/MSR encoding. */
export interface SysRegEncoding {
  /** op0 (2 bits). */
  op0: number;
  /** op1 (3 bits). */
  op1: number;
  /** CRn (4 bits). */
  crn: number;
  /** CRm (4 bits). */
  crm: number;
  /** op2 (3 bits). */
  op2: number;
}

const SYSREG_FIELD_BITS: Readonly<Record<keyof SysRegEncoding, number>> = {
  op0: 2,
  op1: 3,
  crn: 4,
  crm: 4,
  op2: 3,
};

/**
 * The id of the 64-bit `struct kvm_regs` member at byte `offset`
 * (`KVM_REG_ARM_CORE`, index = offset / 4).
 *
 * @example
 * ```ts
 * import { coreRegId } from "./regs_arm64.ts";
 * console.log(coreRegId(256).toString(16)); // 6030000000100040 (PC)
 * ```
 */
export function coreRegId(offset: number): bigint {
  if (!Number.isInteger(offset) || offset < 0 || offset % 8 !== 0) {
    throw new Error(
      `Cannot make a core register id: offset ${offset} is not that of a 64-bit member`,
    );
  }
  return KVM_REG.ARM64 | KVM_REG.SIZE_U64 | KVM_REG.ARM_CORE |
    BigInt(offset / 4);
}

/**
 * The id of a 64-bit system register (`KVM_REG_ARM64_SYSREG`,
 * `ARM64_SYS_REG(op0, op1, crn, crm, op2)` of the uapi header).
 *
 * @example
 * ```ts
 * import { sysRegId } from "./regs_arm64.ts";
 * const mpidr = sysRegId({ op0: 3, op1: 0, crn: 0, crm: 0, op2: 5 });
 * console.log(mpidr.toString(16)); // 603000000013c005
 * ```
 */
export function sysRegId(encoding: SysRegEncoding): bigint {
  let index = 0n;
  for (const [field, bits] of Object.entries(SYSREG_FIELD_BITS)) {
    const value = encoding[field as keyof SysRegEncoding];
    if (!Number.isInteger(value) || value < 0 || value >= 1 << bits) {
      throw new Error(
        `Cannot make a system register id: ${field} ${value} does not fit in ${bits} bits`,
      );
    }
    index |= BigInt(value) <<
      KVM_REG_ARM64_SYSREG_SHIFT[field as keyof SysRegEncoding];
  }
  return KVM_REG.ARM64 | KVM_REG.SIZE_U64 | KVM_REG.ARM64_SYSREG | index;
}

const core = (field: keyof typeof arm64_kvm_regs.fields, extra = 0) =>
  coreRegId(arm64_kvm_regs.fields[field].offset + extra);
const sys = (op0: number, op1: number, crn: number, crm: number, op2: number) =>
  sysRegId({ op0, op1, crn, crm, op2 });

/** The id of each {@linkcode Arm64Regs} field. */
export const ARM64_CORE_REG_IDS: Readonly<Record<keyof Arm64Regs, bigint>> = {
  ...Object.fromEntries(
    Array.from({ length: 31 }, (_, i) => [`x${i}`, core("regs.regs", 8 * i)]),
  ) as Record<`x${number}`, bigint>,
  // Arm64Regs.sp is SP_EL1; user_pt_regs.sp is SP_EL0 (sysRegs.sp_el0).
  sp: core("sp_el1"),
  pc: core("regs.pc"),
  pstate: core("regs.pstate"),
} as Record<keyof Arm64Regs, bigint>;

/** The id of each {@linkcode Arm64SysRegs} field. */
export const ARM64_SYS_REG_IDS: Readonly<Record<keyof Arm64SysRegs, bigint>> = {
  mpidr_el1: sys(3, 0, 0, 0, 5),
  sctlr_el1: sys(3, 0, 1, 0, 0),
  cpacr_el1: sys(3, 0, 1, 0, 2),
  tcr_el1: sys(3, 0, 2, 0, 2),
  ttbr0_el1: sys(3, 0, 2, 0, 0),
  ttbr1_el1: sys(3, 0, 2, 0, 1),
  mair_el1: sys(3, 0, 10, 2, 0),
  vbar_el1: sys(3, 0, 12, 0, 0),
  // Core registers in KVM: user_pt_regs.sp, elr_el1 and spsr[KVM_SPSR_EL1].
  sp_el0: core("regs.sp"),
  elr_el1: core("elr_el1"),
  spsr_el1: core("spsr"),
  esr_el1: sys(3, 0, 5, 2, 0),
  far_el1: sys(3, 0, 6, 0, 0),
  tpidr_el1: sys(3, 0, 13, 0, 4),
  // KVM_REG_ARM_TIMER_CTL and KVM_REG_ARM_TIMER_CVAL (see the module doc).
  cntv_ctl_el0: sys(3, 3, 14, 3, 1),
  cntv_cval_el0: sys(3, 3, 14, 0, 2),
};

/**
 * PSTATE of a vCPU unless told otherwise: EL1h (M[3:0] = 0b0101) with D, A,
 * I and F masked (bits 9:6), what the Linux arm64 boot protocol
 * (Documentation/arch/arm64/booting.rst) asks for, and KVM's own reset value.
 */
export const PSTATE_EL1H_MASKED = 0x3c5n;

/** One `KVM_SET_ONE_REG`: the register's name (for errors), id and value. */
export interface RegWrite {
  /** The `hv.ts` field name, e.g. `pc` or `sctlr_el1`. */
  name: string;
  /** The KVM register id. */
  id: bigint;
  /** The value. */
  value: bigint;
}

/**
 * The register writes that start a vCPU with `regs` and `sysRegs`: the
 * system registers given, then the core registers given, with PSTATE
 * {@linkcode PSTATE_EL1H_MASKED} unless `regs.pstate` says otherwise.
 * Registers not given keep KVM's reset values.
 *
 * @example
 * ```ts
 * import { arm64RegWrites } from "./regs_arm64.ts";
 * const writes = arm64RegWrites({ regs: { pc: 0x4008_0000n } });
 * console.log(writes.map((w) => w.name)); // [ "pc", "pstate" ]
 * ```
 */
export function arm64RegWrites(
  init: { regs?: Partial<Arm64Regs>; sysRegs?: Arm64SysRegs },
): RegWrite[] {
  const writes: RegWrite[] = [];
  for (const [name, value] of Object.entries(init.sysRegs ?? {})) {
    if (value === undefined) continue;
    const id = ARM64_SYS_REG_IDS[name as keyof Arm64SysRegs];
    if (id === undefined) {
      throw new Error(`Cannot set arm64 system register "${name}": unknown`);
    }
    writes.push({ name, id, value });
  }
  const regs = { pstate: PSTATE_EL1H_MASKED, ...init.regs };
  for (const [name, value] of Object.entries(regs)) {
    if (value === undefined) continue;
    const id = ARM64_CORE_REG_IDS[name as keyof Arm64Regs];
    if (id === undefined) {
      throw new Error(`Cannot set arm64 register "${name}": unknown`);
    }
    writes.push({ name, id, value });
  }
  return writes;
}

/**
 * Reads every {@linkcode Arm64Regs} field with `get` (a `KVM_GET_ONE_REG`
 * by id).
 *
 * @example
 * ```ts
 * import { ARM64_CORE_REG_IDS, readArm64Regs } from "./regs_arm64.ts";
 * const regs = readArm64Regs((id) => id === ARM64_CORE_REG_IDS.pc ? 0x1000n : 0n);
 * console.log(regs.pc); // 4096n
 * ```
 */
export function readArm64Regs(get: (id: bigint) => bigint): Arm64Regs {
  const out = {} as Arm64Regs;
  for (const [name, id] of Object.entries(ARM64_CORE_REG_IDS)) {
    out[name as keyof Arm64Regs] = get(id);
  }
  return out;
}
