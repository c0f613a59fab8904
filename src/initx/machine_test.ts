import assert from "node:assert/strict";
import { decompile } from "../boot/_dtc_test_util.ts";
import { ARM64_IMAGE_MAGIC } from "../boot/arm64_image.ts";
import type { Hypervisor, VcpuInit, VcpuRegs } from "../hv/hv.ts";
import { fakeBzImage, fakeHypervisor } from "./_serial_guest_test_util.ts";
import { bootLinux, defaultCmdline } from "./linux_vm.ts";
import { ARM64_CMDLINE, arm64Machine } from "./machine_arm64.ts";
import { X86_CMDLINE, x86Machine } from "./machine_x86.ts";

const MIB = 1024n * 1024n;

/** An arm64 Image header with `imageSize` and a body of `length` bytes. */
function fakeArm64Image(length = 64 * 1024, imageSize = 4n * MIB): Uint8Array {
  const image = new Uint8Array(length);
  for (let i = 64; i < length; i++) image[i] = (i * 13) & 0xff;
  const view = new DataView(image.buffer);
  view.setUint32(4, 0x14000000, true); // b .
  view.setBigUint64(8, 0n, true); // text_offset
  view.setBigUint64(16, imageSize, true);
  view.setBigUint64(24, 0b1010n, true); // LE, 4K pages, anywhere
  view.setUint32(56, ARM64_IMAGE_MAGIC, true);
  return image;
}

Deno.test("arm64Machine() places Image, device tree and initrd and starts vCPU 0 at the Image", async () => {
  const kernel = fakeArm64Image();
  const initrd = new Uint8Array(5000).fill(0x42);
  const plan = await arm64Machine({
    kernel,
    initrd,
    cmdline: "console=ttyS0 hello=1",
    cpus: 2,
    memoryBytes: 256n * MIB,
    windows: 3,
  });
  assert.equal(plan.arch, "aarch64");
  assert.deepEqual(plan.ram, [{ base: 0x4000_0000n, size: 256n * MIB }]);
  const regs = plan.bootVcpu.arm64?.regs;
  assert.equal(regs?.pc, 0x4000_0000n);
  assert.equal(regs?.pstate, 0x3c5n);
  const dtbAddr = regs?.x0;
  assert.equal(dtbAddr, 0x4000_0000n + 4n * MIB); // after image_size, 2 MiB aligned
  assert.deepEqual(plan.secondaryVcpu(1), { arm64: { poweredOff: true } });
  assert.equal(plan.bootVcpu.regs, undefined);
  assert.equal(plan.platformPorts, false);
  assert.deepEqual(plan.uart, {
    bus: { kind: "mmio", base: 0x0900_0000n },
    irq: 1,
  });
  assert.deepEqual(plan.windows.map((w) => [w.base, w.irq]), [
    [0x0a00_0000n, 16],
    [0x0a00_1000n, 17],
    [0x0a00_2000n, 18],
  ]);
  const byAddr = new Map(plan.writes.map((w) => [w.addr, w.bytes]));
  assert.equal(byAddr.get(0x4000_0000n), kernel);
  const initrdAddr = dtbAddr! + 2n * MIB;
  assert.equal(byAddr.get(initrdAddr), initrd);
  const dts = (await decompile(byAddr.get(dtbAddr!)!)).join("\n");
  assert.match(dts, /bootargs = "console=ttyS0 hello=1";/);
  assert.match(
    dts,
    new RegExp(
      `linux,initrd-start = <0x0 0x${initrdAddr.toString(16)}>;`,
    ),
  );
  assert.equal(dts.match(/compatible = "virtio,mmio";/g)?.length, 3);
  assert.equal(dts.match(/enable-method = "psci";/g)?.length, 2);
});

Deno.test("arm64Machine() refuses a bzImage with the arm64 loader's error", async () => {
  await assert.rejects(
    arm64Machine({
      kernel: fakeBzImage(8192, 0x100),
      cmdline: ARM64_CMDLINE,
      cpus: 1,
      memoryBytes: 64n * MIB,
      windows: 0,
    }),
    /Cannot load arm64 kernel/,
  );
});

Deno.test("x86Machine() gives vCPU 0 long-mode registers and GSIs for the windows", () => {
  const plan = x86Machine({
    kernel: fakeBzImage(5120, 0x100),
    cmdline: X86_CMDLINE,
    cpus: 2,
    memoryBytes: 64n * MIB,
    windows: 2,
  });
  assert.equal(plan.arch, "x86_64");
  assert.ok(plan.bootVcpu.regs?.rip !== undefined);
  assert.ok(plan.bootVcpu.sregs?.cr0 !== undefined);
  assert.equal(plan.bootVcpu.arm64, undefined);
  assert.deepEqual(plan.uart, { bus: { kind: "port", base: 0x3f8 }, irq: 4 });
  assert.deepEqual(plan.windows.map((w) => w.irq), [16, 17]);
  assert.equal(plan.platformPorts, true);
});

Deno.test("defaultCmdline() has no x86-only options on arm64", () => {
  assert.doesNotMatch(defaultCmdline("aarch64"), /i8042|reboot=k|pci=off/);
  assert.match(defaultCmdline("x86_64"), /i8042\.nokbd/);
});

/**
 * A hypervisor whose vCPU 0 checks what the boot put in RAM, prints `text`
 * through the MMIO UART and powers off with PSCI.
 */
function fakeArm64Hypervisor(text: string, seen: VcpuInit[]): Hypervisor {
  const regs = { arch: "aarch64" } as VcpuRegs;
  const hv = fakeHypervisor((init, memory) => {
    const dtb = new Uint8Array(4);
    memory.read(init.arm64!.regs!.x0!, dtb);
    const magic = new DataView(dtb.buffer).getUint32(0);
    const out = magic === 0xd00dfeed ? text : "no device tree at x0\n";
    for (const byte of new TextEncoder().encode(out)) {
      init.handlers?.mmio?.({
        addr: 0x0900_0000n,
        isWrite: true,
        data: Uint8Array.of(byte),
      });
    }
    return Promise.resolve({
      kind: "system-event",
      event: "shutdown",
      type: 1,
      regs,
    });
  }, regs);
  return {
    createVm: (options) => {
      const vm = hv.createVm(options);
      const start = vm.startVcpu.bind(vm);
      vm.startVcpu = (id, init) => {
        seen[id] = init;
        return start(id, init);
      };
      return vm;
    },
    close: () => hv.close(),
  };
}

Deno.test("bootLinux() on arm64 reaches the MMIO UART and ends on PSCI power-off", async () => {
  const seen: VcpuInit[] = [];
  const result = await bootLinux({
    arch: "aarch64",
    kernel: fakeArm64Image(),
    initrd: new Uint8Array(100),
    cpus: 2,
    memoryMiB: 64,
    hypervisor: fakeArm64Hypervisor("hello from arm64\n", seen),
  });
  assert.deepEqual(result.outcome, { kind: "power-off" });
  assert.equal(result.console, "hello from arm64\n");
  assert.equal(seen[1]?.arm64?.poweredOff, true);
  assert.equal(seen[0]?.arm64?.regs?.pc, 0x4000_0000n);
});
