/**
 * Test helpers: a bzImage that passes the boot checks, and a hypervisor
 * without KVM whose only guest activity is text on the serial port, so that
 * the host side of a boot runs in the unit tier. Internal to `src/initx/`
 * tests.
 *
 * @module
 */

import type {
  HvVm,
  Hypervisor,
  VcpuInit,
  VcpuOutcome,
  VcpuRegs,
} from "../hv/hv.ts";
import { GuestMemory, type MemoryRegion } from "../hv/memory.ts";

/** A bzImage header that parses, announcing `syssize` paragraphs of kernel. */
export function fakeBzImage(fileBytes: number, syssize: number): Uint8Array {
  const k = new Uint8Array(fileBytes);
  const v = new DataView(k.buffer);
  k[0x1f1] = 1; // setup_sects: the kernel starts at 1024
  v.setUint32(0x1f4, syssize, true);
  v.setUint16(0x1fe, 0xaa55, true);
  k[0x201] = 0x6a; // header length past 0x202
  v.setUint32(0x202, 0x53726448, true); // "HdrS"
  v.setUint16(0x206, 0x020f, true);
  k[0x211] = 1; // LOADED_HIGH
  v.setUint16(0x236, 1, true); // XLF_KERNEL_64
  v.setUint32(0x22c, 0x7fffffff, true); // initrd_addr_max
  v.setUint32(0x238, 2048, true); // cmdline_size
  return k;
}

/**
 * A hypervisor without KVM whose vCPU 0 runs `boot` (given its start and
 * the VM's RAM) and ends with what it returns; the other vCPUs just wait to
 * be stopped. `regs` are the registers outcomes report.
 */
export function fakeHypervisor(
  boot: (init: VcpuInit, memory: GuestMemory) => Promise<VcpuOutcome>,
  regs: VcpuRegs = { arch: "x86_64" } as VcpuRegs,
): Hypervisor {
  const regions: MemoryRegion[] = [];
  const vm: HvVm = {
    get memory() {
      return new GuestMemory(regions);
    },
    addMemory: (base, size) =>
      void regions.push({ base, bytes: new Uint8Array(Number(size)) }),
    startVcpu: (id, init) => {
      const stopped: VcpuOutcome = { kind: "stopped", atMs: 0, regs };
      const done = id !== 0
        ? new Promise<VcpuOutcome>(() => {})
        : (async () => {
          await Promise.resolve();
          return await boot(init, new GuestMemory(regions));
        })();
      return Promise.resolve({
        id,
        done,
        exitCount: () => 0,
        stop: () => id === 0 ? done : Promise.resolve(stopped),
      });
    },
    setIrqLine: () => {},
    close: () => Promise.resolve(),
  };
  return { createVm: () => vm, close: () => {} };
}

/**
 * A hypervisor without KVM: vCPU 0 writes `serial` to COM1, one `out` a
 * byte, then powers the guest off; the other vCPUs just wait to be stopped.
 */
export function serialOnlyHypervisor(serial: string): Hypervisor {
  const regs = { arch: "x86_64" } as VcpuRegs;
  return fakeHypervisor((init) => {
    for (const byte of new TextEncoder().encode(serial)) {
      init.handlers?.io?.({
        port: 0x3f8,
        size: 1,
        direction: "out",
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
}
