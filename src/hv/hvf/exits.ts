/**
 * What an arm64 guest's trap to the hypervisor means: the exception
 * syndrome (ESR_EL2) decoded, and the PSCI calls a guest makes with HVC.
 *
 * A primer. A guest access to an address with no RAM behind it traps as a
 * data abort from a lower exception level; when the syndrome is valid (ISV)
 * it names the access size, the general register that holds or receives
 * the value, and its direction, so the host can act as the device and step
 * the guest past the instruction (PC + 4; the trap leaves PC on it). An
 * `HVC` traps with PC already past it (its preferred return address is the
 * next instruction); an `SMC` trapped from EL1 leaves PC on it. Linux calls
 * PSCI, the Arm power-state interface, through `HVC #0` with the function
 * id in W0 and arguments in X1-X3, and reads the result in X0.
 *
 * Sources: Arm Architecture Reference Manual for A-profile (ARM DDI 0487),
 * "ESR_EL2" (EC, IL, ISS) and "ISS encoding for an exception from a Data
 * Abort" / "... from an HVC or SVC" / "... from a WF* instruction"; Arm Power
 * State Coordination Interface (DEN 0022) and Linux's
 * `include/uapi/linux/psci.h` for function ids and return codes.
 *
 * @module
 */

/** Exception classes, ESR_EL2.EC (bits 31:26), of the traps initx handles. */
export const EC = {
  /** WFI or WFE (trapped by the hypervisor). */
  WFX: 0x01,
  /** HVC from AArch64. */
  HVC64: 0x16,
  /** SMC from AArch64. */
  SMC64: 0x17,
  /** MSR, MRS or a system instruction from AArch64. */
  SYS64: 0x18,
  /** Instruction abort from a lower exception level. */
  IABT_LOWER: 0x20,
  /** Data abort from a lower exception level. */
  DABT_LOWER: 0x24,
} as const;

/** ESR_EL2 fields: EC and, for a data abort, the ISS bits it decodes. */
const ESR = {
  EC_SHIFT: 26n,
  EC_MASK: 0x3fn,
  /** Instruction syndrome valid: the fields below describe the access. */
  ISV: 1n << 24n,
  /** Syndrome access size: log2 of the bytes (bits 23:22). */
  SAS_SHIFT: 22n,
  /** Syndrome sign extend: a signed load. */
  SSE: 1n << 21n,
  /** Syndrome register transfer: the general register (bits 20:16). */
  SRT_SHIFT: 16n,
  /** Sixty-four bit register: the load writes X, not W. */
  SF: 1n << 15n,
  /** The fault was on a stage 1 translation table walk, not the access. */
  S1PTW: 1n << 7n,
  /** Write, not read. */
  WNR: 1n << 6n,
  /** WF* trapped instruction: bit 0 set for WFE (and WFET). */
  TI_WFE: 1n,
  /** HVC/SMC immediate (bits 15:0). */
  IMM16: 0xffffn,
} as const;

/** The register number that reads as zero and ignores writes (XZR). */
export const XZR = 31;

/** A guest trap, decoded from its ESR_EL2 syndrome. */
export type Arm64Trap =
  /** An access to an address with no RAM: act as the device, then PC + 4. */
  | {
    kind: "mmio";
    /** Whether the guest stores. */
    isWrite: boolean;
    /** Bytes accessed: 1, 2, 4 or 8. */
    size: 1 | 2 | 4 | 8;
    /** The general register holding or receiving the value (31: XZR). */
    reg: number;
    /** A signed load: sign-extend the value to the register width. */
    signExtend: boolean;
    /** The load writes the whole X register rather than W. */
    sixtyFourBit: boolean;
  }
  /** A data abort whose syndrome does not describe the access (no ISV). */
  | { kind: "abort-undecodable" }
  /** HVC (PC already past it) or SMC (PC on it), with the immediate. */
  | { kind: "hvc" | "smc"; imm: number }
  /** WFI (or WFIT) or WFE (or WFET): PC on it. */
  | { kind: "wfi" | "wfe" }
  /** A class initx does not handle. */
  | { kind: "other"; ec: number };

/**
 * Decodes an ESR_EL2 syndrome.
 *
 * @example
 * ```ts
 * import { decodeSyndrome } from "./exits.ts";
 * // A 4-byte store of W1 (ISV, SAS 2, SRT 1, WnR) as a data abort.
 * const esr = (0x24n << 26n) | (1n << 24n) | (2n << 22n) | (1n << 16n) | (1n << 6n);
 * console.log(decodeSyndrome(esr)); // { kind: "mmio", isWrite: true, size: 4, reg: 1, ... }
 * ```
 */
export function decodeSyndrome(esr: bigint): Arm64Trap {
  const ec = Number((esr >> ESR.EC_SHIFT) & ESR.EC_MASK);
  switch (ec) {
    case EC.DABT_LOWER:
      if ((esr & ESR.ISV) === 0n || (esr & ESR.S1PTW) !== 0n) {
        return { kind: "abort-undecodable" };
      }
      return {
        kind: "mmio",
        isWrite: (esr & ESR.WNR) !== 0n,
        size: (1 << Number((esr >> ESR.SAS_SHIFT) & 3n)) as 1 | 2 | 4 | 8,
        reg: Number((esr >> ESR.SRT_SHIFT) & 0x1fn),
        signExtend: (esr & ESR.SSE) !== 0n,
        sixtyFourBit: (esr & ESR.SF) !== 0n,
      };
    case EC.HVC64:
      return { kind: "hvc", imm: Number(esr & ESR.IMM16) };
    case EC.SMC64:
      return { kind: "smc", imm: Number(esr & ESR.IMM16) };
    case EC.WFX:
      return { kind: (esr & ESR.TI_WFE) !== 0n ? "wfe" : "wfi" };
    default:
      return { kind: "other", ec };
  }
}

/**
 * The register value a load of `size` bytes puts in its target, from the
 * bytes the device returned (`raw`, zero-extended): sign-extended if the
 * load is signed, cut to 32 bits if it writes a W register.
 *
 * @example
 * ```ts
 * import { loadedValue } from "./exits.ts";
 * console.log(loadedValue(0x80n, { size: 1, signExtend: true, sixtyFourBit: false }).toString(16)); // ffffff80
 * ```
 */
export function loadedValue(
  raw: bigint,
  access: { size: number; signExtend: boolean; sixtyFourBit: boolean },
): bigint {
  const bits = BigInt(access.size * 8);
  let value = BigInt.asUintN(Number(bits), raw);
  if (access.signExtend) {
    value = BigInt.asUintN(64, BigInt.asIntN(Number(bits), value));
  }
  return access.sixtyFourBit ? value : value & 0xffff_ffffn;
}

// ---------------------------------------------------------------------------
// PSCI 0.2 over HVC.

/** PSCI function ids (SMC32 and SMC64 calling conventions), psci.h. */
export const PSCI_FN = {
  VERSION: 0x8400_0000,
  CPU_SUSPEND: 0x8400_0001,
  CPU_OFF: 0x8400_0002,
  CPU_ON: 0x8400_0003,
  AFFINITY_INFO: 0x8400_0004,
  MIGRATE_INFO_TYPE: 0x8400_0006,
  SYSTEM_OFF: 0x8400_0008,
  SYSTEM_RESET: 0x8400_0009,
  CPU_SUSPEND_64: 0xc400_0001,
  CPU_ON_64: 0xc400_0003,
  AFFINITY_INFO_64: 0xc400_0004,
} as const;

/** PSCI return codes (psci.h `PSCI_RET_*`), as the guest reads them in X0. */
export const PSCI_RET = {
  SUCCESS: 0,
  NOT_SUPPORTED: -1,
  INVALID_PARAMS: -2,
  DENIED: -3,
  ALREADY_ON: -4,
  ON_PENDING: -5,
  INTERNAL_FAILURE: -6,
} as const;

/** The version initx's PSCI reports: 0.2 (major << 16 | minor). */
export const PSCI_VERSION_0_2 = 0x0000_0002;

/** AFFINITY_INFO answers (psci.h `PSCI_0_2_AFFINITY_LEVEL_*`). */
export const PSCI_AFFINITY = { ON: 0, OFF: 1, ON_PENDING: 2 } as const;

/**
 * MIGRATE_INFO_TYPE's answer: no Trusted OS needs migrating
 * (`PSCI_0_2_TOS_MP_OR_NOT_PRESENT`).
 */
export const PSCI_TOS_NOT_PRESENT = 2;

/**
 * MPIDR_EL1 affinity bits a PSCI call names a CPU by: Aff3 (39:32) and
 * Aff2..Aff0 (23:0).
 */
export const MPIDR_AFFINITY_MASK = 0xff_00ff_ffffn;

/**
 * The MPIDR_EL1 of vCPU `id` when the boot plan sets none: the index spread
 * over the affinity fields as KVM does (Aff0 = bits 0-3, Aff1 = bits 4-11,
 * Aff2 = bits 12-19), with bit 31 (RES1) set.
 *
 * @example
 * ```ts
 * import { defaultMpidr } from "./exits.ts";
 * console.log(defaultMpidr(17).toString(16)); // 80000101
 * ```
 */
export function defaultMpidr(id: number): bigint {
  const aff = (id & 0xf) | (((id >> 4) & 0xff) << 8) |
    (((id >> 12) & 0xff) << 16);
  return (1n << 31n) | BigInt(aff);
}

/** A guest's return code in X0: the 64-bit two's complement of `code`. */
export function psciResult(code: number): bigint {
  return BigInt.asUintN(64, BigInt(code));
}
