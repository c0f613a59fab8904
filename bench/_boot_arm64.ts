/**
 * The arm64 side of the boot bench (`bench/boot_bench.ts` on an aarch64
 * host, such as the arm64 KVM lab): initx's arm64 machine (a device tree, a
 * GICv3, a 16550 at 0x0900_0000 as `ttyS0`) against QEMU's `virt` board
 * with KVM, booting the same kernel and initramfs.
 *
 * The two boards put different UARTs at the same address: virt's is a
 * PL011 (`ttyAMA0`). The peer's command line is initx's with that one word
 * changed, so that both print the marker on the console they have.
 *
 * @module
 */

/** The QEMU the arm64 peer runs. */
export const ARM64_QEMU = "qemu-system-aarch64";

/**
 * The peer's machine type: `virt` with the options (`qemu-system-aarch64 -M
 * virt,help` lists them) that leave out what initx's machine does not have
 * either and a guest booted with `-kernel` can do without:
 *
 * - `gic-version=3`: the GICv3 initx gives its guests too (KVM's in-kernel
 *   one, as `-accel kvm` needs);
 * - `its=off`: no GICv3 ITS, which the kernel would set up for MSIs that no
 *   device here sends (`-nodefaults` leaves the PCIe bus empty);
 * - `acpi=off`: QEMU builds no ACPI tables; the kernel, booted without
 *   firmware, reads the device tree anyway;
 * - `dtb-randomness=off`: no `kaslr-seed` (nor `rng-seed`) in QEMU's tree,
 *   so the kernel does not relocate itself to a random address; initx's
 *   tree gives no `kaslr-seed` either.
 *
 * What stays is virt's own and has no switch: the PL031 RTC, the PL061 GPIO
 * with its power key, fw_cfg, the (empty) PCIe host bridge, two flash banks
 * and the virtio-mmio windows (their driver is a module the initramfs does
 * not load).
 */
export const ARM64_QEMU_MACHINE =
  "virt,gic-version=3,its=off,acpi=off,dtb-randomness=off";

/** Printed with the bench's header: what the peer's options mean. */
export const ARM64_PEER_NOTES: readonly string[] = [
  "QEMU virt options: gic-version=3 (as initx), its=off (no ITS: nothing sends MSIs), acpi=off (no ACPI tables: the kernel reads the device tree), dtb-randomness=off (no kaslr-seed: no KASLR relocation, as with initx's tree)",
  "QEMU's console is virt's PL011 (ttyAMA0) where initx has its 16550 (ttyS0): the one word that differs between the command lines",
];

/**
 * Kernel log lines worth a timestamp in the arm64 breakdown (alternatives of
 * a `grep -E` pattern, so no regexp characters).
 */
export const ARM64_MILESTONES: readonly string[] = [
  "arch_timer: ",
  "GICv3: ",
  "clocksource: Switched",
  "smp: Brought up",
  "PCI host bridge",
  "unpack rootfs",
  "Freeing initrd memory",
  "Freeing unused kernel",
  "Run /init",
];

/**
 * A boot that takes longer than this has failed. The arm64 lab emulates
 * every instruction, the nested guest's too: a boot there takes minutes
 * where it takes a second on hardware.
 */
export const ARM64_BOOT_TIMEOUT_MS = 600_000;

/** The console initx's arm64 machine has, and the one of QEMU's virt. */
const INITX_CONSOLE = "ttyS0";
const VIRT_CONSOLE = "ttyAMA0";

/**
 * The peer's kernel command line: `cmdline` with its `console=ttyS0` (and
 * any options after it, e.g. `,115200`) on virt's PL011, `ttyAMA0`; every
 * other word as it is.
 *
 * @example
 * ```ts
 * import { arm64QemuCmdline } from "./_boot_arm64.ts";
 * console.assert(
 *   arm64QemuCmdline("console=ttyS0 panic=-1 quiet") ===
 *     "console=ttyAMA0 panic=-1 quiet",
 * );
 * ```
 */
export function arm64QemuCmdline(cmdline: string): string {
  const console = `console=${INITX_CONSOLE}`;
  return cmdline.split(" ").map((word) =>
    word === console || word.startsWith(`${console},`)
      ? `console=${VIRT_CONSOLE}${word.slice(console.length)}`
      : word
  ).join(" ");
}
