// Unit tests of the arm64 boot bench's peer: its command line and machine
// options. Nothing is booted.
import { equal, ok } from "node:assert/strict";
import {
  ARM64_MILESTONES,
  ARM64_QEMU_MACHINE,
  arm64QemuCmdline,
} from "./_boot_arm64.ts";
import { defaultCmdline } from "../src/initx/linux_vm.ts";

Deno.test("arm64QemuCmdline() moves initx's console to virt's PL011 and keeps every other word", () => {
  const initx = defaultCmdline("aarch64");
  const peer = arm64QemuCmdline(initx);
  ok(initx.split(" ").includes("console=ttyS0"), initx);
  equal(peer, initx.replace("console=ttyS0", "console=ttyAMA0"));
  equal(
    arm64QemuCmdline("quiet console=ttyS0,115200n8 printk.time=1"),
    "quiet console=ttyAMA0,115200n8 printk.time=1",
  );
  // Other consoles and look-alikes stay.
  equal(
    arm64QemuCmdline("console=ttyS01 console=hvc0 xconsole=ttyS0"),
    "console=ttyS01 console=hvc0 xconsole=ttyS0",
  );
});

Deno.test("ARM64_QEMU_MACHINE: virt with a GICv3 and the options the bench names", () => {
  const [board, ...options] = ARM64_QEMU_MACHINE.split(",");
  equal(board, "virt");
  for (
    const o of ["gic-version=3", "its=off", "acpi=off", "dtb-randomness=off"]
  ) {
    ok(options.includes(o), `${o} in ${ARM64_QEMU_MACHINE}`);
  }
});

Deno.test("ARM64_MILESTONES: plain words for grep -E between single quotes", () => {
  for (const m of ARM64_MILESTONES) ok(!/['|()[\]*+?{}\\^$]/.test(m), m);
});
