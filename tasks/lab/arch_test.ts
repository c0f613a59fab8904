// Unit tests of the lab machines' QEMU arguments: nothing is booted.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { LAB_MACHINES, labQemuArgs, parseLabArch } from "./arch.ts";

const files = { kernel: "/k/vmlinuz", initrd: "/k/initrd.cpio" };

/** The value after `flag` in `args`. */
function valueOf(args: string[], flag: string): string | undefined {
  const at = args.indexOf(flag);
  return at < 0 ? undefined : args[at + 1];
}

Deno.test("labQemuArgs() gives the x86_64 lab the microvm machine it always had", () => {
  deepEqual(labQemuArgs("x86_64", files), [
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-m",
    "4096",
    "-smp",
    "2",
    "-M",
    "microvm",
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    "/k/vmlinuz",
    "-initrd",
    "/k/initrd.cpio",
    "-append",
    "console=ttyS0 reboot=k panic=-1 tsc_early_khz=2300000 quiet loglevel=1",
  ]);
});

Deno.test("labQemuArgs() gives the aarch64 lab EL2, a GICv3 and the PL011 console", () => {
  const args = labQemuArgs("aarch64", files);
  equal(valueOf(args, "-M"), "virt,virtualization=on,gic-version=3");
  equal(valueOf(args, "-accel"), "tcg");
  ok(valueOf(args, "-cpu")?.startsWith("max"));
  equal(valueOf(args, "-m"), "3072");
  equal(valueOf(args, "-smp"), "2");
  equal(valueOf(args, "-serial"), "stdio");
  equal(valueOf(args, "-kernel"), "/k/vmlinuz");
  equal(valueOf(args, "-initrd"), "/k/initrd.cpio");
  ok(args.includes("-nodefaults") && args.includes("-no-reboot"));
  const append = valueOf(args, "-append") ?? "";
  ok(append.startsWith("console=ttyAMA0 "), append);
  // x86-only arguments stay on x86.
  ok(!append.includes("tsc_early_khz") && !append.includes("reboot=k"), append);
});

Deno.test("LAB_MACHINES: only x86_64 loads KVM as modules; each names its QEMU package", () => {
  deepEqual(LAB_MACHINES.aarch64.kvmModules, []);
  equal(LAB_MACHINES.x86_64.kvmModules.at(-1), "arch/x86/kvm/kvm-amd.ko");
  equal(
    LAB_MACHINES.x86_64.hostTools[LAB_MACHINES.x86_64.qemu],
    "qemu-system-x86",
  );
  equal(
    LAB_MACHINES.aarch64.hostTools[LAB_MACHINES.aarch64.qemu],
    "qemu-system-arm",
  );
});

Deno.test("parseLabArch() takes the two lab architectures and names them on anything else", () => {
  equal(parseLabArch("x86_64"), "x86_64");
  equal(parseLabArch("aarch64"), "aarch64");
  throws(
    () => parseLabArch("arm64"),
    /Cannot run the KVM lab for "arm64": the lab is one of "x86_64", "aarch64"/,
  );
});
