// The reference every boot test compares with: QEMU microvm, accelerated by
// this machine's KVM (inside the lab here), boots the default kernel with a
// busybox initramfs and reaches its init.
import { ok } from "node:assert/strict";
import { CpioWriter } from "../../src/boot/cpio.ts";
import { findStaticBusybox } from "../../src/initx/busybox_guest.ts";
import { ensureKernel } from "../../src/boot/kernel.ts";
import { hasTool, need, needKvm } from "../_gate.ts";
import { withTempDir } from "../_util.ts";

async function defaultKernel(): Promise<string> {
  return Deno.env.get("INITX_LAB_KERNEL") ?? (await ensureKernel()).image;
}

Deno.test("QEMU microvm with KVM boots the default kernel to a busybox init", async (t) => {
  const kvm = await needKvm(t);
  if (!kvm) return;
  kvm.close();
  if (
    !need(t, hasTool("qemu-system-x86_64"), "qemu-system-x86_64 is the peer")
  ) return;
  const busybox = findStaticBusybox();
  if (!need(t, busybox !== undefined, "busybox is not installed")) return;
  await withTempDir(async (dir) => {
    const cpio = new CpioWriter();
    cpio.file("bin/busybox", await Deno.readFile(busybox!), { mode: 0o755 });
    cpio.file(
      "init",
      new TextEncoder().encode(
        "#!/bin/busybox sh\n/bin/busybox echo INITX-PEER-MARKER\n/bin/busybox poweroff -f\n",
      ),
      { mode: 0o755 },
    );
    await Deno.writeFile(`${dir}/initrd`, cpio.bytes());
    const out = await new Deno.Command("qemu-system-x86_64", {
      args: [
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-smp",
        "1",
        "-M",
        "microvm",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        await defaultKernel(),
        "-initrd",
        `${dir}/initrd`,
        "-append",
        "console=ttyS0 reboot=k panic=-1 quiet",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(120_000),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    ok(
      text.includes("INITX-PEER-MARKER"),
      `no marker; QEMU said: ${text.slice(-2000)}${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  });
});
