/**
 * The names of `hv.ts`'s arm64 registers and the framework's numbers for
 * them (`hv_reg_t`, `hv_sys_reg_t`), and the reset state initx gives a vCPU.
 *
 * @module
 */

import type { Arm64Regs, Arm64SysRegs } from "../hv.ts";
import { HV_REG, HV_SYS_REG } from "./ffi.ts";

/** Where each core register lives: an `hv_reg_t`, or a system register. */
export type CoreRegPlace =
  | { kind: "reg"; reg: number }
  | { kind: "sys"; reg: number };

/** Every {@linkcode Arm64Regs} field and its place in the framework. */
export const CORE_REGS: readonly (readonly [keyof Arm64Regs, CoreRegPlace])[] =
  [
    ...Array.from(
      { length: 31 },
      (_, i) =>
        [`x${i}` as keyof Arm64Regs, {
          kind: "reg",
          reg: HV_REG.X0 + i,
        }] as const,
    ),
    // HVF has no hv_reg_t for SP: SP_EL1 is a system register.
    ["sp", { kind: "sys", reg: HV_SYS_REG.SP_EL1 }],
    ["pc", { kind: "reg", reg: HV_REG.PC }],
    ["pstate", { kind: "reg", reg: HV_REG.CPSR }],
  ];

/** The `hv_sys_reg_t` of each {@linkcode Arm64SysRegs} field. */
export const SYS_REGS: Readonly<Record<keyof Arm64SysRegs, number>> = {
  mpidr_el1: HV_SYS_REG.MPIDR_EL1,
  sctlr_el1: HV_SYS_REG.SCTLR_EL1,
  cpacr_el1: HV_SYS_REG.CPACR_EL1,
  tcr_el1: HV_SYS_REG.TCR_EL1,
  ttbr0_el1: HV_SYS_REG.TTBR0_EL1,
  ttbr1_el1: HV_SYS_REG.TTBR1_EL1,
  mair_el1: HV_SYS_REG.MAIR_EL1,
  vbar_el1: HV_SYS_REG.VBAR_EL1,
  sp_el0: HV_SYS_REG.SP_EL0,
  elr_el1: HV_SYS_REG.ELR_EL1,
  spsr_el1: HV_SYS_REG.SPSR_EL1,
  esr_el1: HV_SYS_REG.ESR_EL1,
  far_el1: HV_SYS_REG.FAR_EL1,
  tpidr_el1: HV_SYS_REG.TPIDR_EL1,
  cntv_ctl_el0: HV_SYS_REG.CNTV_CTL_EL0,
  cntv_cval_el0: HV_SYS_REG.CNTV_CVAL_EL0,
};

/**
 * PSTATE of a vCPU at start and after PSCI CPU_ON: EL1h (M[3:0] = 0b0101)
 * with D, A, I and F masked (bits 9:6), what the Linux arm64 boot protocol
 * (Documentation/arch/arm64/booting.rst) and PSCI's CPU_ON ask for.
 */
export const PSTATE_EL1H_MASKED = 0x3c5n;

/** CNTV_CTL_EL0 bits (Arm ARM "CNTV_CTL_EL0"). */
export const CNTV_CTL = {
  /** The timer is enabled. */
  ENABLE: 1n,
  /** Its interrupt is masked. */
  IMASK: 2n,
  /** Its condition is met (read-only). */
  ISTATUS: 4n,
} as const;
