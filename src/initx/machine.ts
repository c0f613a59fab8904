/**
 * What a Linux boot needs from its architecture, as data: RAM, the bytes to
 * load, the vCPUs' first registers, where the console UART and the virtio
 * windows sit and which interrupt each one raises. `machine_x86.ts` and
 * `machine_arm64.ts` make one; `linux_vm.ts` runs it without knowing which.
 *
 * @module
 */

import type { Arch } from "../ir/syscalls.ts";
import type { VcpuInit } from "../hv/hv.ts";

/** Where the console UART (a 16550A) answers: I/O ports or MMIO. */
export type UartBus =
  | { kind: "port"; base: number }
  | { kind: "mmio"; base: bigint };

/** A virtio-mmio window and the interrupt line its device raises. */
export interface MachineWindow {
  /** First byte of the register window. */
  base: bigint;
  /** Size of the window in bytes. */
  size: bigint;
  /** The line for `HvVm.setIrqLine`: a GSI (x86_64) or an SPI (arm64). */
  irq: number;
}

/** Everything to do to a fresh VM to boot the kernel. */
export interface MachinePlan {
  /** The guest architecture. */
  arch: Arch;
  /** Guest RAM regions to add. */
  ram: { base: bigint; size: bigint }[];
  /** Bytes to copy into guest RAM. */
  writes: { addr: bigint; bytes: Uint8Array }[];
  /** vCPU 0's registers (handlers are added by the caller). */
  bootVcpu: VcpuInit;
  /** The registers of vCPU `id` > 0: it waits for the kernel to start it. */
  secondaryVcpu(id: number): VcpuInit;
  /** The console UART and its interrupt line. */
  uart: { bus: UartBus; irq: number };
  /** virtio-mmio windows, from window 0. */
  windows: MachineWindow[];
  /** Whether the x86 platform ports (ACPI sleep, reset, POST) answer. */
  platformPorts: boolean;
}

/** What both architectures' plans are made from. */
export interface MachineOptions {
  /** The kernel file (bzImage on x86_64; Image, gzip'd or EFI zboot on arm64). */
  kernel: Uint8Array;
  /** An initramfs, if any. */
  initrd?: Uint8Array;
  /** Kernel command line. */
  cmdline: string;
  /** Number of vCPUs. */
  cpus: number;
  /** Guest RAM in bytes. */
  memoryBytes: bigint;
  /** How many virtio-mmio windows to describe. */
  windows: number;
}

/**
 * The architecture of guests on this host: KVM and Hypervisor.framework run
 * guests of the host's own.
 *
 * @example
 * ```ts
 * import { hostGuestArch } from "./machine.ts";
 * console.assert(["x86_64", "aarch64"].includes(hostGuestArch()));
 * ```
 */
export function hostGuestArch(): Arch {
  return Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
}
