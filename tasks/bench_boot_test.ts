// Unit tests of bench:boot's arguments and where it runs the bench: nothing
// is booted.
import { deepEqual, equal, throws } from "node:assert/strict";
import { benchBootPlan } from "./bench_boot.ts";
import type { KvmHost } from "../src/hv/kvm/host.ts";

const HARDWARE: KvmHost = {
  kind: "hardware",
  canOpen: true,
  reason: "hardware virtualization (vmx/svm) with /dev/kvm",
};
const PVM: KvmHost = {
  kind: "pvm",
  canOpen: true,
  reason: "this host's /dev/kvm is kvm_pvm",
};
const NONE: KvmHost = { kind: "none", canOpen: false, reason: "no /dev/kvm" };

Deno.test("benchBootPlan() runs on the host's own hardware KVM by default", () => {
  deepEqual(benchBootPlan([], { arch: "x86_64", kvm: HARDWARE }), {
    where: "host",
    arch: "x86_64",
    reason: HARDWARE.reason,
  });
});

Deno.test("benchBootPlan() goes to the x86_64 lab with its usual limits on a kvm_pvm host", () => {
  deepEqual(benchBootPlan([], { arch: "x86_64", kvm: PVM }), {
    where: "lab",
    arch: "x86_64",
    reason: PVM.reason,
    timeoutSeconds: 600,
  });
});

Deno.test("benchBootPlan() runs --arch aarch64 on an x86_64 host in the arm64 lab, with generous limits", () => {
  for (const kvm of [HARDWARE, PVM, NONE]) {
    const plan = benchBootPlan(["--arch", "aarch64"], { arch: "x86_64", kvm });
    equal(plan.where, "lab");
    equal(plan.arch, "aarch64");
    equal(plan.reason, "aarch64 guests on an x86_64 host");
    if (plan.where === "lab") {
      equal(plan.timeoutSeconds, 2400);
      equal(plan.idleTimeoutSeconds, 1500);
    }
  }
  equal(
    benchBootPlan(["--arch=aarch64"], { arch: "x86_64", kvm: HARDWARE }).arch,
    "aarch64",
  );
});

Deno.test("benchBootPlan() runs on an arm64 host's own KVM, and in the lab without one", () => {
  // detectKvmHost() calls an arm64 /dev/kvm that opens "hardware".
  const plan = benchBootPlan([], { arch: "aarch64", kvm: HARDWARE });
  equal(plan.where, "host");
  equal(plan.arch, "aarch64");
  equal(benchBootPlan([], { arch: "aarch64", kvm: NONE }).where, "lab");
});

Deno.test("benchBootPlan() names an unknown architecture or option", () => {
  const host = { arch: "x86_64", kvm: HARDWARE };
  throws(
    () => benchBootPlan(["--arch", "arm64"], host),
    /Cannot run the KVM lab for "arm64": the lab is one of "x86_64", "aarch64"/,
  );
  throws(() => benchBootPlan(["--rounds", "3"], host), /--rounds/);
  throws(() => benchBootPlan(["aarch64"], host), /aarch64/);
});
