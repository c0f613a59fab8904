// The arm64 register ids against the numbers KVM documents: the core
// register table of Documentation/virt/kvm/api.rst ("ARM64 core/FP-SIMD
// registers"), the uapi header's ARM64_SYS_REG() encoding and its timer ids.
// No KVM needed: these run on any host.
import { deepEqual, equal, throws } from "node:assert/strict";
import {
  ARM64_CORE_REG_IDS,
  ARM64_SYS_REG_IDS,
  arm64RegWrites,
  coreRegId,
  PSTATE_EL1H_MASKED,
  readArm64Regs,
  sysRegId,
} from "./regs_arm64.ts";

Deno.test("core register ids are api.rst's: X0, X1, X30, SP_EL1, PC, PSTATE", () => {
  equal(ARM64_CORE_REG_IDS.x0, 0x6030_0000_0010_0000n);
  equal(ARM64_CORE_REG_IDS.x1, 0x6030_0000_0010_0002n);
  equal(ARM64_CORE_REG_IDS.x30, 0x6030_0000_0010_003cn);
  // Arm64Regs.sp is SP_EL1 (api.rst: 0x...0044 SP_EL1, sp_el1).
  equal(ARM64_CORE_REG_IDS.sp, 0x6030_0000_0010_0044n);
  equal(ARM64_CORE_REG_IDS.pc, 0x6030_0000_0010_0040n);
  equal(ARM64_CORE_REG_IDS.pstate, 0x6030_0000_0010_0042n);
  equal(Object.keys(ARM64_CORE_REG_IDS).length, 34);
});

Deno.test("SP_EL0, ELR_EL1 and SPSR_EL1 are KVM core registers", () => {
  // api.rst: 0x...003e SP (regs.sp), 0x...0046 ELR_EL1, 0x...0048 SPSR_EL1.
  equal(ARM64_SYS_REG_IDS.sp_el0, 0x6030_0000_0010_003en);
  equal(ARM64_SYS_REG_IDS.elr_el1, 0x6030_0000_0010_0046n);
  equal(ARM64_SYS_REG_IDS.spsr_el1, 0x6030_0000_0010_0048n);
});

Deno.test("system register ids follow ARM64_SYS_REG(op0, op1, CRn, CRm, op2)", () => {
  equal(ARM64_SYS_REG_IDS.mpidr_el1, 0x6030_0000_0013_c005n);
  equal(ARM64_SYS_REG_IDS.sctlr_el1, 0x6030_0000_0013_c080n);
  equal(ARM64_SYS_REG_IDS.tcr_el1, 0x6030_0000_0013_c102n);
  equal(ARM64_SYS_REG_IDS.mair_el1, 0x6030_0000_0013_c510n);
  equal(ARM64_SYS_REG_IDS.vbar_el1, 0x6030_0000_0013_c600n);
  equal(ARM64_SYS_REG_IDS.tpidr_el1, 0x6030_0000_0013_c684n);
  // KVM_REG_ARM_TIMER_CTL = ARM64_SYS_REG(3, 3, 14, 3, 1), and
  // KVM_REG_ARM_TIMER_CVAL = ARM64_SYS_REG(3, 3, 14, 0, 2) (swapped with
  // the counter's encoding, as the header warns).
  equal(ARM64_SYS_REG_IDS.cntv_ctl_el0, 0x6030_0000_0013_df19n);
  equal(ARM64_SYS_REG_IDS.cntv_cval_el0, 0x6030_0000_0013_df02n);
  equal(new Set(Object.values(ARM64_SYS_REG_IDS)).size, 16, "ids distinct");
});

Deno.test("coreRegId() and sysRegId() refuse what no register is", () => {
  throws(() => coreRegId(4), /offset 4 is not that of a 64-bit member/);
  throws(
    () => sysRegId({ op0: 4, op1: 0, crn: 0, crm: 0, op2: 0 }),
    /op0 4 does not fit in 2 bits/,
  );
  throws(
    () => sysRegId({ op0: 3, op1: 0, crn: 16, crm: 0, op2: 0 }),
    /crn 16 does not fit in 4 bits/,
  );
});

Deno.test("arm64RegWrites() sets system registers first and PSTATE by default", () => {
  const writes = arm64RegWrites({
    regs: { x0: 0x4400_0000n, pc: 0x4020_0000n },
    sysRegs: { tpidr_el1: 7n, sp_el0: 9n },
  });
  deepEqual(writes.map((w) => [w.name, w.value]), [
    ["tpidr_el1", 7n],
    ["sp_el0", 9n],
    ["pstate", PSTATE_EL1H_MASKED],
    ["x0", 0x4400_0000n],
    ["pc", 0x4020_0000n],
  ]);
  equal(writes[4]!.id, ARM64_CORE_REG_IDS.pc);
  const own = arm64RegWrites({ regs: { pstate: 0x5n } });
  deepEqual(own.map((w) => [w.name, w.value]), [["pstate", 0x5n]]);
  throws(
    () => arm64RegWrites({ sysRegs: { bogus_el1: 1n } as never }),
    /Cannot set arm64 system register "bogus_el1": unknown/,
  );
});

Deno.test("readArm64Regs() asks for every core register by its id", () => {
  const asked: bigint[] = [];
  const regs = readArm64Regs((id) => {
    asked.push(id);
    return id & 0xffffn;
  });
  equal(asked.length, 34);
  equal(regs.pc, 0x40n);
  equal(regs.x3, 6n);
  equal(regs.sp, 0x44n);
});
