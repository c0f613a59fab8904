/**
 * The x86_64 machine: the boot plan of `boot/linux_x86.ts` with the ACPI
 * tables of `boot/acpi.ts`, a 16550 UART on COM1 and the platform ports.
 * vCPU 0 starts in long mode at the kernel's 64-bit entry; the others wait
 * in the in-kernel LAPIC for the INIT/SIPI the kernel sends them.
 *
 * @module
 */

import { buildAcpiTables } from "../boot/acpi.ts";
import {
  guestRamRegions,
  SERIAL_COM1_IRQ,
  SERIAL_COM1_PORT,
  virtioMmioWindow,
} from "../boot/layout.ts";
import {
  buildX86Boot,
  parseX86SetupHeader,
  type X86Segment,
} from "../boot/linux_x86.ts";
import { POST_CODE_PORT } from "../devices/platform.ts";
import type { Segment, X86Sregs } from "../hv/hv.ts";
import type { MachineOptions, MachinePlan } from "./machine.ts";

/**
 * The x86_64 kernel command line initx boots with: serial console, reboot
 * through the i8042 (no firmware), reboot at once on panic, and fewer things
 * probed at boot (no PCI, one UART, no PS/2 devices, no crypto self-tests,
 * no timer IRQ check).
 */
export const X86_CMDLINE: string =
  "console=ttyS0 reboot=k panic=-1 quiet pci=off no_timer_check " +
  "8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests";

/** x86 boot protocol: syssize (u32), protected-mode size in 16-byte units. */
const HDR_SYSSIZE = 0x1f4;

/**
 * Checks that `kernel` is a whole 64-bit bzImage: a valid setup header (see
 * `parseX86SetupHeader`) and as many protected-mode bytes as the header's
 * `syssize` announces, so that a truncated download fails here and not in
 * the guest's decompressor.
 *
 * @example
 * ```ts
 * import { checkKernelImage } from "./machine_x86.ts";
 * try {
 *   checkKernelImage(new Uint8Array(4096));
 * } catch (e) {
 *   console.assert((e as Error).message.startsWith("Cannot load kernel"));
 * }
 * ```
 */
export function checkKernelImage(kernel: Uint8Array): void {
  const header = parseX86SetupHeader(kernel);
  const view = new DataView(kernel.buffer, kernel.byteOffset, kernel.length);
  const expected = header.kernelOffset +
    view.getUint32(HDR_SYSSIZE, true) * 16;
  if (kernel.length < expected) {
    throw new Error(
      `Cannot load kernel: file of ${kernel.length} bytes is truncated (its header announces ${expected} bytes)`,
    );
  }
}

/**
 * Plans an x86_64 boot. Throws `Cannot load kernel: ...` for a kernel that
 * is not a whole 64-bit bzImage.
 *
 * @example
 * ```ts ignore
 * import { x86Machine, X86_CMDLINE } from "./machine_x86.ts";
 * const plan = x86Machine({
 *   kernel: await Deno.readFile("/boot/vmlinuz"),
 *   cmdline: X86_CMDLINE, cpus: 1, memoryBytes: 512n << 20n, windows: 0,
 * });
 * console.log(plan.ram);
 * ```
 */
export function x86Machine(options: MachineOptions): MachinePlan {
  checkKernelImage(options.kernel);
  const windows = Array.from(
    { length: options.windows },
    (_, i) => virtioMmioWindow(i),
  );
  const plan = buildX86Boot(options.kernel, {
    memoryBytes: options.memoryBytes,
    cmdline: options.cmdline,
    initrd: options.initrd,
    cpus: options.cpus,
    acpiTables: buildAcpiTables({ cpus: options.cpus, virtioMmio: windows }),
  });
  const sinkPorts = [POST_CODE_PORT];
  return {
    arch: "x86_64",
    ram: guestRamRegions(options.memoryBytes).map((r) => ({
      base: r.start,
      size: r.size,
    })),
    writes: plan.writes,
    bootVcpu: {
      regs: plan.cpu.regs,
      sregs: toHvSregs(plan.cpu.sregs),
      sinkPorts,
    },
    secondaryVcpu: () => ({ sinkPorts }),
    uart: {
      bus: { kind: "port", base: SERIAL_COM1_PORT },
      irq: SERIAL_COM1_IRQ,
    },
    windows: windows.map((w) => ({ base: w.base, size: w.size, irq: w.gsi })),
    platformPorts: true,
  };
}

function toHvSegment(s: X86Segment): Segment {
  const bit = (b: boolean) => (b ? 1 : 0);
  return {
    base: s.base,
    limit: s.limit,
    selector: s.selector,
    type: s.type,
    present: bit(s.present),
    dpl: s.dpl,
    db: bit(s.db),
    s: bit(s.s),
    l: bit(s.l),
    g: bit(s.g),
    avl: bit(s.avl),
    unusable: bit(s.unusable),
  };
}

function toHvSregs(
  s: ReturnType<typeof buildX86Boot>["cpu"]["sregs"],
): Partial<X86Sregs> {
  return {
    cs: toHvSegment(s.cs),
    ds: toHvSegment(s.ds),
    es: toHvSegment(s.es),
    fs: toHvSegment(s.fs),
    gs: toHvSegment(s.gs),
    ss: toHvSegment(s.ss),
    tr: toHvSegment(s.tr),
    ldt: toHvSegment(s.ldt),
    gdt: s.gdt,
    idt: s.idt,
    cr0: s.cr0,
    cr3: s.cr3,
    cr4: s.cr4,
    efer: s.efer,
  };
}
