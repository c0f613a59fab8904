/**
 * Guest physical memory map of an x86_64 initx VM.
 *
 * ```text
 * 0x0000_0000 ─ 0x0009_fbff  RAM (e820 usable): boot structures below
 *   0x0000_0500                GDT
 *   0x0000_7000                zero page (struct boot_params)
 *   0x0000_8ff0                initial stack pointer
 *   0x0000_9000 ─ 0x0000_efff  identity page tables (PML4, PDPT, 4 PDs)
 *   0x0002_0000                kernel command line
 * 0x0009_fc00 ─ 0x000f_ffff  reserved: EBDA, VGA hole, BIOS area
 *   0x000e_0000                ACPI tables, RSDP first (BIOS scan area)
 * 0x0010_0000 ─ RAM_LOW_END  RAM: kernel (1 MiB or pref_address), initrd on top
 * 0xc000_0000 ─ 0xffff_ffff  32-bit MMIO hole (never RAM)
 *   0xd000_0000                virtio-mmio windows, 4 KiB each
 *   0xfec0_0000                IOAPIC
 *   0xfee0_0000                local APIC
 * 0x1_0000_0000 ─            RAM above 4 GiB (whatever did not fit below 3 GiB)
 * ```
 *
 * Every address is a `bigint` (guest physical); sizes that fit easily are
 * `bigint` too so they combine without conversions.
 *
 * @module
 */

/** 1 KiB in bytes. */
export const KIB = 1024n;
/** 1 MiB in bytes. */
export const MIB = 1024n * KIB;
/** 1 GiB in bytes. */
export const GIB = 1024n * MIB;

/** Guest page size (x86 4 KiB pages); initrd and windows are aligned to it. */
export const PAGE_SIZE = 4096n;

/** GDT: null, null, code 0x10, data 0x18, 64-bit TSS 0x20 (16 bytes). */
export const GDT_ADDR = 0x500n;

/**
 * The zero page (`struct boot_params`, 4 KiB) handed to the kernel in RSI
 * (Documentation/arch/x86/zero-page.rst).
 */
export const ZERO_PAGE_ADDR = 0x7000n;

/**
 * Initial RSP of vCPU 0. The decompressor switches to its own stack at once;
 * this only has to be mapped RAM that holds nothing else.
 */
export const BOOT_STACK_POINTER = 0x8ff0n;

/** Top-level page table (PML4), loaded into CR3. */
export const PML4_ADDR = 0x9000n;
/** Page-directory-pointer table: entries 0..3 cover the first 4 GiB. */
export const PDPT_ADDR = 0xa000n;
/** First of four page directories (2 MiB pages), at consecutive pages. */
export const PD_ADDR = 0xb000n;
/** Number of page directories: one per GiB identity-mapped. */
export const PD_COUNT = 4;

/** Kernel command line, NUL-terminated (at most `cmdline_size` bytes). */
export const CMDLINE_ADDR = 0x20000n;
/** Room reserved for the command line at {@link CMDLINE_ADDR}. */
export const CMDLINE_MAX_BYTES = 0x10000;

/** End of conventional memory: where the EBDA and the 640K hole begin. */
export const EBDA_START = 0x9fc00n;

/**
 * Start of the ACPI area (RSDP first, then the other tables). It lies in
 * 0xE0000–0xFFFFF, where kernels without `acpi_rsdp_addr` scan for "RSD PTR "
 * (ACPI 6.x §5.2.5.1), and inside the e820-reserved 640K–1M region.
 */
export const ACPI_TABLES_ADDR = 0xe0000n;
/** Bytes available for ACPI tables at {@link ACPI_TABLES_ADDR}. */
export const ACPI_TABLES_MAX_BYTES = 0x20000n;

/** 1 MiB: start of high memory, default load address of the kernel. */
export const HIGH_MEMORY_START = 0x100000n;

/** End of the RAM that may sit below 4 GiB; above it is the MMIO hole. */
export const RAM_LOW_MAX_END = 3n * GIB;

/** First guest physical address above 4 GiB (second RAM region). */
export const RAM_HIGH_START = 4n * GIB;

/** Start of the virtio-mmio windows (inside the 32-bit MMIO hole). */
export const VIRTIO_MMIO_BASE = 0xd000_0000n;
/** Size of one virtio-mmio window (registers + config space). */
export const VIRTIO_MMIO_SIZE = 0x1000n;
/** First IOAPIC pin used by virtio-mmio devices (ISA IRQs 0..15 stay legacy). */
export const VIRTIO_MMIO_FIRST_GSI = 16;
/** Number of virtio-mmio windows the layout has room for (KVM IOAPIC: 24 pins). */
export const VIRTIO_MMIO_MAX_DEVICES = 8;

/** IOAPIC register window (Intel 82093AA), GSI base 0. */
export const IOAPIC_ADDR = 0xfec0_0000n;
/** Local APIC register window of every vCPU. */
export const LAPIC_ADDR = 0xfee0_0000n;

/** I/O port of the first 16550 UART (COM1, ttyS0). */
export const SERIAL_COM1_PORT = 0x3f8;
/** ISA IRQ of COM1. */
export const SERIAL_COM1_IRQ = 4;

/**
 * I/O port of the ACPI hardware-reduced sleep control register (8 bits). The
 * guest writes `SLP_EN | SLP_TYP << 2` here to power off
 * (ACPI 6.x §4.8.3.7).
 */
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
/** I/O port of the ACPI sleep status register (8 bits, reads as 0). */
export const ACPI_SLEEP_STATUS_PORT = 0x601;
/** I/O port of the ACPI reset register: writing {@link ACPI_RESET_VALUE} reboots. */
export const ACPI_RESET_PORT = 0x602;
/** Value the guest writes to {@link ACPI_RESET_PORT} to reset the machine. */
export const ACPI_RESET_VALUE = 0x01;

/** Bytes to copy into guest RAM at a guest physical address. */
export interface GuestWrite {
  /** Guest physical address of the first byte. */
  addr: bigint;
  /** The bytes. */
  bytes: Uint8Array;
}

/** One range of guest RAM, as a KVM memory slot would back it. */
export interface GuestRamRegion {
  /** Guest physical address of the first byte. */
  start: bigint;
  /** Size in bytes. */
  size: bigint;
}

/**
 * Splits `memoryBytes` of RAM around the 32-bit MMIO hole: up to 3 GiB from
 * address 0, the rest from 4 GiB.
 *
 * @example
 * ```ts
 * import { guestRamRegions, GIB } from "./layout.ts";
 * guestRamRegions(4n * GIB);
 * // [{ start: 0n, size: 3 GiB }, { start: 4 GiB, size: 1 GiB }]
 * ```
 */
export function guestRamRegions(memoryBytes: bigint): GuestRamRegion[] {
  if (memoryBytes <= 0n || memoryBytes % PAGE_SIZE !== 0n) {
    throw new RangeError(
      `Cannot lay out guest memory: size ${memoryBytes} is not a positive multiple of 4096`,
    );
  }
  const low = memoryBytes < RAM_LOW_MAX_END ? memoryBytes : RAM_LOW_MAX_END;
  const regions: GuestRamRegion[] = [{ start: 0n, size: low }];
  if (memoryBytes > low) {
    regions.push({ start: RAM_HIGH_START, size: memoryBytes - low });
  }
  return regions;
}

/**
 * Guest physical base of virtio-mmio window `index`.
 *
 * @example
 * ```ts
 * import { virtioMmioWindow } from "./layout.ts";
 * virtioMmioWindow(1); // { base: 0xd0001000n, size: 0x1000n, gsi: 17 }
 * ```
 */
export function virtioMmioWindow(
  index: number,
): { base: bigint; size: bigint; gsi: number } {
  if (
    !Number.isInteger(index) || index < 0 || index >= VIRTIO_MMIO_MAX_DEVICES
  ) {
    throw new RangeError(
      `Cannot place virtio-mmio device: index ${index} is outside 0..${
        VIRTIO_MMIO_MAX_DEVICES - 1
      }`,
    );
  }
  return {
    base: VIRTIO_MMIO_BASE + BigInt(index) * VIRTIO_MMIO_SIZE,
    size: VIRTIO_MMIO_SIZE,
    gsi: VIRTIO_MMIO_FIRST_GSI + index,
  };
}
