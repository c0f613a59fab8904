/**
 * The arm64 machine: the Image placed by booting.rst (`boot/arm64_image.ts`),
 * a device tree written by initx (`boot/arm64_fdt.ts`: memory, PSCI cpus, a
 * GICv3, the architected timer, a 16550A over MMIO, the virtio-mmio
 * windows, `chosen`), and vCPU 0 at the Image's entry with the tree's
 * address in x0, MMU off, EL1h with DAIF masked. The other vCPUs start
 * powered off; the kernel starts them with PSCI CPU_ON, which KVM serves.
 * Power-off and reboot are PSCI calls too (SYSTEM_OFF, SYSTEM_RESET).
 *
 * @module
 */

import {
  ARM64_LAYOUT,
  arm64VirtioMmioWindow,
  buildArm64Fdt,
} from "../boot/arm64_fdt.ts";
import {
  parseArm64ImageHeader,
  placeArm64Boot,
  unpackArm64Kernel,
} from "../boot/arm64_image.ts";
import type { MachineOptions, MachinePlan } from "./machine.ts";

/**
 * The arm64 kernel command line initx boots with: the UART as console,
 * reboot at once on panic, one UART, no crypto self-tests.
 */
export const ARM64_CMDLINE: string =
  "console=ttyS0 panic=-1 quiet 8250.nr_uarts=1 cryptomgr.notests";

/** PSTATE at entry: EL1h with D, A, I and F masked (booting.rst). */
const ENTRY_PSTATE = 0x3c5n;

/**
 * Plans an arm64 boot. Throws `Cannot load arm64 kernel: ...` for a file
 * that is not an arm64 Image (plain, gzip'd or an EFI zboot with gzip), and
 * `Cannot build arm64 device tree: ...` for a machine it cannot describe.
 *
 * @example
 * ```ts ignore
 * import { arm64Machine, ARM64_CMDLINE } from "./machine_arm64.ts";
 * const plan = await arm64Machine({
 *   kernel: await Deno.readFile("/boot/vmlinuz"),
 *   cmdline: ARM64_CMDLINE, cpus: 2, memoryBytes: 512n << 20n, windows: 2,
 * });
 * console.log(plan.bootVcpu.arm64?.regs?.pc);
 * ```
 */
export async function arm64Machine(
  options: MachineOptions,
): Promise<MachinePlan> {
  const layout = ARM64_LAYOUT;
  const image = await unpackArm64Kernel(options.kernel);
  const header = parseArm64ImageHeader(image);
  if (options.memoryBytes > layout.ramMaxBytes) {
    throw new RangeError(
      `Cannot boot Linux: ${options.memoryBytes} bytes of RAM exceed the arm64 layout's ${layout.ramMaxBytes}`,
    );
  }
  const place = placeArm64Boot(header, {
    ramBase: layout.ramBase,
    ramBytes: options.memoryBytes,
    initrdBytes: options.initrd?.length,
  });
  const windows = Array.from(
    { length: options.windows },
    (_, i) => arm64VirtioMmioWindow(i, layout),
  );
  const dtb = buildArm64Fdt({
    memoryBytes: options.memoryBytes,
    cpus: options.cpus,
    cmdline: options.cmdline,
    initrd: place.initrd,
    virtioMmio: windows,
    rngSeed: crypto.getRandomValues(new Uint8Array(32)),
    layout,
  });
  const writes = [
    { addr: place.kernelAddr, bytes: image },
    { addr: place.dtbAddr, bytes: dtb },
  ];
  if (options.initrd !== undefined && place.initrd !== undefined) {
    writes.push({ addr: place.initrd.addr, bytes: options.initrd });
  }
  return {
    arch: "aarch64",
    ram: [{ base: layout.ramBase, size: options.memoryBytes }],
    writes,
    bootVcpu: {
      arm64: {
        regs: {
          pc: place.kernelAddr,
          x0: place.dtbAddr,
          x1: 0n,
          x2: 0n,
          x3: 0n,
          pstate: ENTRY_PSTATE,
        },
      },
    },
    secondaryVcpu: () => ({ arm64: { poweredOff: true } }),
    uart: {
      bus: { kind: "mmio", base: layout.uart.base },
      irq: layout.uart.spi,
    },
    windows: windows.map((w) => ({ base: w.base, size: w.size, irq: w.spi })),
    platformPorts: false,
  };
}
