import assert from "node:assert/strict";
import {
  decodeSyndrome,
  defaultMpidr,
  loadedValue,
  psciResult,
} from "./exits.ts";
import { HvfError, hvReturnName } from "./ffi.ts";
import { CtlState, Power, VcpuControl } from "./vcpu_protocol.ts";

/** ESR_EL2 with EC `ec`, IL set and ISS `iss`. */
function esr(ec: number, iss = 0n): bigint {
  return (BigInt(ec) << 26n) | (1n << 25n) | iss;
}

Deno.test("decodeSyndrome() reads a data abort's size, register, direction and extension", () => {
  // ldrsh x7, [...]: ISV, SAS 1 (2 bytes), SSE, SRT 7, SF, read.
  const load = esr(
    0x24,
    (1n << 24n) | (1n << 22n) | (1n << 21n) | (7n << 16n) | (1n << 15n),
  );
  assert.deepEqual(decodeSyndrome(load), {
    kind: "mmio",
    isWrite: false,
    size: 2,
    reg: 7,
    signExtend: true,
    sixtyFourBit: true,
  });
  // strb wzr, [...]: SAS 0, SRT 31, WnR.
  const store = esr(0x24, (1n << 24n) | (31n << 16n) | (1n << 6n));
  assert.deepEqual(decodeSyndrome(store), {
    kind: "mmio",
    isWrite: true,
    size: 1,
    reg: 31,
    signExtend: false,
    sixtyFourBit: false,
  });
  // str x0, [...]: SAS 3.
  const wide = esr(0x24, (1n << 24n) | (3n << 22n) | (1n << 6n));
  assert.equal(
    (decodeSyndrome(wide) as { size: number }).size,
    8,
  );
});

Deno.test("decodeSyndrome() refuses data aborts it cannot act on", () => {
  // No ISV (e.g. a load pair): the syndrome does not describe the access.
  assert.deepEqual(decodeSyndrome(esr(0x24, 2n << 22n)), {
    kind: "abort-undecodable",
  });
  // A fault on the stage 1 table walk, not on the access itself.
  assert.deepEqual(decodeSyndrome(esr(0x24, (1n << 24n) | (1n << 7n))), {
    kind: "abort-undecodable",
  });
});

Deno.test("decodeSyndrome() tells HVC, SMC, WFI, WFE and other classes apart", () => {
  assert.deepEqual(decodeSyndrome(esr(0x16, 0x1234n)), {
    kind: "hvc",
    imm: 0x1234,
  });
  assert.deepEqual(decodeSyndrome(esr(0x17)), { kind: "smc", imm: 0 });
  assert.deepEqual(decodeSyndrome(esr(0x01)), { kind: "wfi" });
  assert.deepEqual(decodeSyndrome(esr(0x01, 1n)), { kind: "wfe" });
  assert.deepEqual(decodeSyndrome(esr(0x18, 0x3f_ffffn)), {
    kind: "other",
    ec: 0x18,
  });
  assert.deepEqual(decodeSyndrome(esr(0x20)), { kind: "other", ec: 0x20 });
});

Deno.test("loadedValue() zero- or sign-extends and cuts to W registers", () => {
  const w = { signExtend: false, sixtyFourBit: false };
  assert.equal(loadedValue(0xff_ffn, { ...w, size: 1 }), 0xffn);
  assert.equal(
    loadedValue(0x8000n, { size: 2, signExtend: true, sixtyFourBit: true }),
    0xffff_ffff_ffff_8000n,
  );
  assert.equal(
    loadedValue(0x8000n, { size: 2, signExtend: true, sixtyFourBit: false }),
    0xffff_8000n,
  );
  assert.equal(
    loadedValue(0x1122_3344_5566_7788n, {
      size: 8,
      signExtend: false,
      sixtyFourBit: true,
    }),
    0x1122_3344_5566_7788n,
  );
});

Deno.test("defaultMpidr() spreads the index over Aff0..Aff2 as KVM does", () => {
  assert.equal(defaultMpidr(0), 0x8000_0000n);
  assert.equal(defaultMpidr(15), 0x8000_000fn);
  assert.equal(defaultMpidr(16), 0x8000_0100n);
  assert.equal(defaultMpidr(0x1234), 0x8001_2304n);
});

Deno.test("psciResult() is the 64-bit two's complement the guest reads", () => {
  assert.equal(psciResult(0), 0n);
  assert.equal(psciResult(-2), 0xffff_ffff_ffff_fffen);
});

Deno.test("hvReturnName() and HvfError name hv_return_t codes", () => {
  assert.equal(hvReturnName(0), "HV_SUCCESS");
  assert.equal(hvReturnName(0xfae9400f), "HV_UNSUPPORTED");
  assert.equal(hvReturnName(0xfae94077), "hv_return_t 0xfae94077");
  const e = new HvfError("run the vCPU", "hv_vcpu_run", 0xfae94004);
  assert.equal(
    e.message,
    "Cannot run the vCPU: hv_vcpu_run returned HV_ILLEGAL_GUEST_STATE (0xfae94004)",
  );
  assert.equal(e.fn, "hv_vcpu_run");
  assert.equal(e.codeName, "HV_ILLEGAL_GUEST_STATE");
});

Deno.test("VcpuControl kicks only a published handle of a run not done", () => {
  const owner = VcpuControl.create();
  const worker = new VcpuControl(owner.buffer);
  const kicked: bigint[] = [];
  owner.kick((h) => kicked.push(h));
  assert.equal(kicked.length, 0); // no handle yet
  worker.publishHandle(3n);
  owner.kick((h) => kicked.push(h));
  assert.deepEqual(kicked, [3n]);
  worker.finish();
  assert.equal(owner.state(), CtlState.Done);
  owner.kick((h) => kicked.push(h));
  assert.deepEqual(kicked, [3n]); // done: the handle may be reused
});

Deno.test("VcpuControl powers a vCPU on once, with its entry point", () => {
  const owner = VcpuControl.create();
  owner.setPower(Power.Off);
  const before = owner.wakeGeneration();
  assert.equal(owner.powerOn(0x4010_0000n, 7n), true);
  assert.equal(owner.power(), Power.On);
  assert.notEqual(owner.wakeGeneration(), before);
  assert.deepEqual(owner.entry(), { pc: 0x4010_0000n, context: 7n });
  assert.equal(owner.powerOn(0n, 0n), false);
  assert.deepEqual(owner.entry(), { pc: 0x4010_0000n, context: 7n });
});
