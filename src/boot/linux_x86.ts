/**
 * Loading a Linux bzImage for the x86_64 64-bit boot protocol, as pure data.
 *
 * Primer (Documentation/arch/x86/boot.rst): a bzImage starts with real-mode
 * setup code, `setup_sects + 1` sectors of 512 bytes, whose setup header
 * sits at file offset 0x1f1. The rest is the protected-mode kernel. A 64-bit
 * boot loader copies the protected-mode part to its load address, builds a
 * zero page (`struct boot_params`, Documentation/arch/x86/zero-page.rst)
 * holding a copy of the setup header plus e820 map, command line pointer and
 * initrd location, and enters the kernel at load address + 0x200 in long mode
 * with RSI pointing at the zero page, paging on with an identity map, and
 * `__BOOT_CS` (0x10) / `__BOOT_DS` (0x18) flat segments.
 *
 * {@link buildX86Boot} returns what to copy into guest RAM and the state of
 * vCPU 0; it never touches a VM.
 *
 * @module
 */

import type { AcpiTables } from "./acpi.ts";
import {
  BOOT_STACK_POINTER,
  CMDLINE_ADDR,
  CMDLINE_MAX_BYTES,
  EBDA_START,
  GDT_ADDR,
  guestRamRegions,
  type GuestWrite,
  HIGH_MEMORY_START,
  PAGE_SIZE,
  PD_ADDR,
  PD_COUNT,
  PDPT_ADDR,
  PML4_ADDR,
  ZERO_PAGE_ADDR,
} from "./layout.ts";

// ---------------------------------------------------------------------------
// Setup header and zero page offsets (boot.rst "The real-mode kernel header",
// zero-page.rst). Offsets are from the start of the file / zero page, which
// coincide for the header fields.

/** setup_sects (u8): size of the setup code in 512-byte sectors, minus one. */
const HDR_SETUP_SECTS = 0x1f1;
/** boot_flag (u16): must be 0xAA55. */
const HDR_BOOT_FLAG = 0x1fe;
/** jump (u16): its second byte is the header length past 0x202. */
const HDR_JUMP = 0x200;
/** header (u32): the magic "HdrS". */
const HDR_MAGIC = 0x202;
/** version (u16): boot protocol version, major << 8 | minor. */
const HDR_VERSION = 0x206;
/** type_of_loader (u8). */
const HDR_TYPE_OF_LOADER = 0x210;
/** loadflags (u8). */
const HDR_LOADFLAGS = 0x211;
/** ramdisk_image (u32): initrd load address. */
const HDR_RAMDISK_IMAGE = 0x218;
/** ramdisk_size (u32). */
const HDR_RAMDISK_SIZE = 0x21c;
/** heap_end_ptr (u16): end of setup heap, relative to the real-mode code. */
const HDR_HEAP_END_PTR = 0x224;
/** cmd_line_ptr (u32): command line address. */
const HDR_CMD_LINE_PTR = 0x228;
/** initrd_addr_max (u32): highest address the initrd may occupy. */
const HDR_INITRD_ADDR_MAX = 0x22c;
/** kernel_alignment (u32). */
const HDR_KERNEL_ALIGNMENT = 0x230;
/** relocatable_kernel (u8). */
const HDR_RELOCATABLE_KERNEL = 0x234;
/** xloadflags (u16, protocol 2.12+). */
const HDR_XLOADFLAGS = 0x236;
/** cmdline_size (u32): maximum command line length without the NUL. */
const HDR_CMDLINE_SIZE = 0x238;
/** pref_address (u64): preferred load address. */
const HDR_PREF_ADDRESS = 0x258;
/** init_size (u32): memory the kernel needs from its load address. */
const HDR_INIT_SIZE = 0x260;

/** boot_params.acpi_rsdp_addr (u64, protocol 2.14+). */
export const ZP_ACPI_RSDP_ADDR = 0x070;
/** boot_params.ext_ramdisk_image (u32): high half of ramdisk_image. */
export const ZP_EXT_RAMDISK_IMAGE = 0x0c0;
/** boot_params.ext_ramdisk_size (u32). */
export const ZP_EXT_RAMDISK_SIZE = 0x0c4;
/** boot_params.ext_cmd_line_ptr (u32). */
export const ZP_EXT_CMD_LINE_PTR = 0x0c8;
/** boot_params.e820_entries (u8). */
export const ZP_E820_ENTRIES = 0x1e8;
/** boot_params.e820_table: up to 128 entries of { addr u64, size u64, type u32 }. */
export const ZP_E820_TABLE = 0x2d0;
/** Size of one e820 entry. */
const E820_ENTRY_BYTES = 20;
/** Capacity of boot_params.e820_table. */
const E820_MAX_ENTRIES = 128;
/** Size of the zero page. */
const ZERO_PAGE_BYTES = 4096;

/** boot_flag value. */
const BOOT_FLAG = 0xaa55;
/** "HdrS" read as a little-endian u32. */
const HDRS_MAGIC = 0x53726448;
/** Oldest protocol accepted: 2.12 introduced xloadflags / XLF_KERNEL_64. */
export const MIN_BOOT_PROTOCOL = 0x020c;
/** Protocol that added boot_params.acpi_rsdp_addr. */
const ACPI_RSDP_PROTOCOL = 0x020e;

/** loadflags bit: protected-mode code is loaded at 0x100000. */
const LOADED_HIGH = 1 << 0;
/** loadflags bit: heap_end_ptr is valid. */
const CAN_USE_HEAP = 1 << 7;
/** xloadflags bit: the kernel has the 64-bit entry point at +0x200. */
export const XLF_KERNEL_64 = 1 << 0;
/** xloadflags bit: kernel, boot_params, cmdline and initrd may be above 4 GiB. */
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;
/** type_of_loader value for a loader without an assigned ID. */
const LOADER_TYPE_UNDEFINED = 0xff;
/** heap_end_ptr value boot.rst suggests for a modern loader (0xe000 - 0x200). */
const HEAP_END_PTR = 0xde00;
/** Offset of the 64-bit entry point from the protected-mode load address. */
const ENTRY_64_OFFSET = 0x200n;

/** e820 type: usable RAM. */
export const E820_RAM = 1;
/** e820 type: reserved, not for the OS. */
export const E820_RESERVED = 2;

/** Page table entry bits (Intel SDM vol. 3 §4.5). */
const PTE_PRESENT = 1n << 0n;
const PTE_WRITABLE = 1n << 1n;
const PTE_PAGE_SIZE = 1n << 7n;
/** Size mapped by one page-directory entry with PS set. */
const LARGE_PAGE_SIZE = 2n * 1024n * 1024n;

/** Control register bits (Intel SDM vol. 3 §2.5). */
const CR0_PE = 1n << 0n;
const CR0_ET = 1n << 4n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;
/** RFLAGS bit 1 is reserved and always set. */
const RFLAGS_RESERVED = 2n;

/** GDT selector of the flat 64-bit code segment (`__BOOT_CS`). */
export const BOOT_CS_SELECTOR = 0x10;
/** GDT selector of the flat data segment (`__BOOT_DS`). */
export const BOOT_DS_SELECTOR = 0x18;
/** GDT selector of the 64-bit TSS (16-byte system descriptor). */
export const BOOT_TSS_SELECTOR = 0x20;

// ---------------------------------------------------------------------------
// Setup header parsing.

/** The setup header fields initx uses, as read from a bzImage. */
export interface X86SetupHeader {
  /** Boot protocol version, e.g. 0x020f for 2.15. */
  version: number;
  /** Setup sectors (0 in the file means 4). */
  setupSects: number;
  /** File offset of the protected-mode kernel: `(setupSects + 1) * 512`. */
  kernelOffset: number;
  /** loadflags byte. */
  loadflags: number;
  /** xloadflags bits (XLF_*). */
  xloadflags: number;
  /** Whether the kernel may be loaded at any `kernelAlignment` multiple. */
  relocatable: boolean;
  /** Alignment required of a relocated kernel. */
  kernelAlignment: bigint;
  /** Preferred load address. */
  prefAddress: bigint;
  /** Bytes the kernel needs from the address it runs (decompresses) at. */
  initSize: bigint;
  /** Highest address the initrd may end at (inclusive). */
  initrdAddrMax: bigint;
  /** Longest command line the kernel takes, without the NUL. */
  cmdlineSize: number;
  /** Bytes of the setup header, from 0x1f1 (copied into the zero page). */
  headerBytes: number;
}

function fail(detail: string): never {
  throw new Error(`Cannot load kernel: ${detail}`);
}

/**
 * Parses and validates the setup header of a bzImage for 64-bit boot.
 * Throws `Cannot load kernel: ...` for a truncated or foreign file, a protocol
 * older than 2.12, or a kernel without a 64-bit entry point.
 *
 * @example
 * ```ts ignore
 * import { parseX86SetupHeader } from "./linux_x86.ts";
 * const kernel = await Deno.readFile("/boot/vmlinuz");
 * const hdr = parseX86SetupHeader(kernel);
 * console.log(hdr.version.toString(16)); // "20f"
 * ```
 */
export function parseX86SetupHeader(kernel: Uint8Array): X86SetupHeader {
  if (kernel.length < HDR_VERSION + 2) {
    fail(
      `file of ${kernel.length} bytes is too short for a bzImage setup header`,
    );
  }
  const view = new DataView(kernel.buffer, kernel.byteOffset, kernel.length);
  if (view.getUint32(HDR_MAGIC, true) !== HDRS_MAGIC) {
    fail(`not a bzImage (missing "HdrS" magic at 0x202)`);
  }
  if (view.getUint16(HDR_BOOT_FLAG, true) !== BOOT_FLAG) {
    fail(`not a bzImage (boot_flag at 0x1fe is not 0xaa55)`);
  }
  const version = view.getUint16(HDR_VERSION, true);
  if (version < MIN_BOOT_PROTOCOL) {
    fail(
      `boot protocol ${
        protocolText(version)
      } is older than 2.12 (no 64-bit entry)`,
    );
  }
  const headerEnd = 0x202 + view.getUint8(HDR_JUMP + 1);
  if (kernel.length < HDR_INIT_SIZE + 4 || headerEnd < HDR_INIT_SIZE + 4) {
    fail(
      `setup header is truncated (file of ${kernel.length} bytes, header ends at 0x${
        headerEnd.toString(16)
      })`,
    );
  }
  const xloadflags = view.getUint16(HDR_XLOADFLAGS, true);
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    fail(
      `kernel has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)`,
    );
  }
  const loadflags = view.getUint8(HDR_LOADFLAGS);
  if ((loadflags & LOADED_HIGH) === 0) {
    fail(`zImage kernels are not supported (LOADED_HIGH clear in loadflags)`);
  }
  const rawSects = view.getUint8(HDR_SETUP_SECTS);
  const setupSects = rawSects === 0 ? 4 : rawSects;
  const kernelOffset = (setupSects + 1) * 512;
  if (kernelOffset >= kernel.length) {
    fail(
      `file of ${kernel.length} bytes ends before the protected-mode kernel at 0x${
        kernelOffset.toString(16)
      }`,
    );
  }
  const kernelAlignment = BigInt(view.getUint32(HDR_KERNEL_ALIGNMENT, true));
  const relocatable = view.getUint8(HDR_RELOCATABLE_KERNEL) !== 0;
  if (
    relocatable &&
    (kernelAlignment === 0n ||
      (kernelAlignment & (kernelAlignment - 1n)) !== 0n)
  ) {
    fail(
      `kernel_alignment 0x${
        kernelAlignment.toString(16)
      } is not a power of two`,
    );
  }
  return {
    version,
    setupSects,
    kernelOffset,
    loadflags,
    xloadflags,
    relocatable,
    kernelAlignment,
    prefAddress: view.getBigUint64(HDR_PREF_ADDRESS, true),
    initSize: BigInt(view.getUint32(HDR_INIT_SIZE, true)),
    initrdAddrMax: BigInt(view.getUint32(HDR_INITRD_ADDR_MAX, true)),
    cmdlineSize: view.getUint32(HDR_CMDLINE_SIZE, true),
    headerBytes: Math.min(headerEnd, kernel.length) - HDR_SETUP_SECTS,
  };
}

function protocolText(version: number): string {
  return `${version >> 8}.${(version & 0xff).toString().padStart(2, "0")}`;
}

// ---------------------------------------------------------------------------
// CPU state.

/** A segment register as KVM's `struct kvm_segment` describes it. */
export interface X86Segment {
  /** Linear base address. */
  base: bigint;
  /** Limit in bytes (already scaled by 4 KiB when `g` is set). */
  limit: number;
  /** Selector (GDT index * 8). */
  selector: number;
  /** Descriptor type field (4 bits), e.g. 0xb code execute/read accessed. */
  type: number;
  /** Present bit. */
  present: boolean;
  /** Descriptor privilege level. */
  dpl: number;
  /** Default operation size (32-bit) bit; must be clear for 64-bit code. */
  db: boolean;
  /** Code/data (true) or system (false) descriptor. */
  s: boolean;
  /** 64-bit code segment. */
  l: boolean;
  /** Granularity: limit counts 4 KiB units. */
  g: boolean;
  /** Available for software. */
  avl: boolean;
  /** KVM's "unusable" flag (a null or absent segment). */
  unusable: boolean;
}

/** A descriptor table register (GDTR/IDTR). */
export interface X86DescriptorTable {
  /** Linear base address. */
  base: bigint;
  /** Limit: size in bytes minus one. */
  limit: number;
}

/**
 * Initial state of the boot vCPU, shaped after `kvm_regs` / `kvm_sregs`.
 * Registers not listed are zero.
 */
export interface X86BootCpuState {
  /** General registers (`kvm_regs`). */
  regs: {
    rip: bigint;
    rsi: bigint;
    rsp: bigint;
    rbp: bigint;
    rflags: bigint;
  };
  /** System registers (`kvm_sregs`). */
  sregs: {
    cs: X86Segment;
    ds: X86Segment;
    es: X86Segment;
    fs: X86Segment;
    gs: X86Segment;
    ss: X86Segment;
    tr: X86Segment;
    ldt: X86Segment;
    gdt: X86DescriptorTable;
    idt: X86DescriptorTable;
    cr0: bigint;
    cr3: bigint;
    cr4: bigint;
    efer: bigint;
  };
}

const FLAT_LIMIT = 0xffff_ffff;

/** Flat 64-bit code segment `__BOOT_CS`: execute/read, accessed, L=1, D=0. */
const BOOT_CS: X86Segment = {
  base: 0n,
  limit: FLAT_LIMIT,
  selector: BOOT_CS_SELECTOR,
  type: 0xb,
  present: true,
  dpl: 0,
  db: false,
  s: true,
  l: true,
  g: true,
  avl: false,
  unusable: false,
};

/** Flat data segment `__BOOT_DS`: read/write, accessed, 32-bit, 4 KiB units. */
const BOOT_DS: X86Segment = {
  base: 0n,
  limit: FLAT_LIMIT,
  selector: BOOT_DS_SELECTOR,
  type: 0x3,
  present: true,
  dpl: 0,
  db: true,
  s: true,
  l: false,
  g: true,
  avl: false,
  unusable: false,
};

/**
 * 64-bit TSS: VT-x refuses to enter a guest whose TR is not a busy TSS, so
 * one is described although the kernel replaces it before using it.
 */
const BOOT_TSS: X86Segment = {
  base: 0n,
  limit: 0x67,
  selector: BOOT_TSS_SELECTOR,
  type: 0xb,
  present: true,
  dpl: 0,
  db: false,
  s: false,
  l: false,
  g: false,
  avl: false,
  unusable: false,
};

/** No LDT. */
const NO_LDT: X86Segment = {
  base: 0n,
  limit: 0,
  selector: 0,
  type: 0x2,
  present: false,
  dpl: 0,
  db: false,
  s: false,
  l: false,
  g: false,
  avl: false,
  unusable: true,
};

/**
 * Encodes the 8-byte GDT descriptor of a segment (Intel SDM vol. 3 §3.4.5);
 * a 64-bit system segment's upper base bits go in the following 8 bytes,
 * which are zero for a base below 4 GiB.
 *
 * @example
 * ```ts
 * import { encodeGdtEntry } from "./linux_x86.ts";
 * encodeGdtEntry({
 *   base: 0n, limit: 0xffffffff, selector: 0x10, type: 0xb, present: true,
 *   dpl: 0, db: false, s: true, l: true, g: true, avl: false, unusable: false,
 * }); // 0x00af9b000000ffffn
 * ```
 */
export function encodeGdtEntry(seg: X86Segment): bigint {
  const limit = BigInt(seg.g ? Math.floor(seg.limit / 4096) : seg.limit) &
    0xfffffn;
  const base = seg.base & 0xffff_ffffn;
  const flag = (b: boolean) => (b ? 1n : 0n);
  return (limit & 0xffffn) |
    ((base & 0xffffffn) << 16n) |
    (BigInt(seg.type & 0xf) << 40n) |
    (flag(seg.s) << 44n) |
    (BigInt(seg.dpl & 3) << 45n) |
    (flag(seg.present) << 47n) |
    ((limit >> 16n) << 48n) |
    (flag(seg.avl) << 52n) |
    (flag(seg.l) << 53n) |
    (flag(seg.db) << 54n) |
    (flag(seg.g) << 55n) |
    ((base >> 24n) << 56n);
}

/** GDT: null, null, code 0x10, data 0x18, TSS 0x20 (two slots). */
function buildGdt(): Uint8Array {
  const entries = [
    0n,
    0n,
    encodeGdtEntry(BOOT_CS),
    encodeGdtEntry(BOOT_DS),
    encodeGdtEntry(BOOT_TSS),
    BOOT_TSS.base >> 32n,
  ];
  const out = new Uint8Array(entries.length * 8);
  const view = new DataView(out.buffer);
  entries.forEach((e, i) => view.setBigUint64(i * 8, e, true));
  return out;
}

/** Identity map of the first 4 GiB with 2 MiB pages: PML4, PDPT, 4 PDs. */
function buildPageTables(): GuestWrite[] {
  const pml4 = new Uint8Array(4096);
  new DataView(pml4.buffer).setBigUint64(
    0,
    PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE,
    true,
  );
  const pdpt = new Uint8Array(4096);
  const pds = new Uint8Array(4096 * PD_COUNT);
  const pdptView = new DataView(pdpt.buffer);
  const pdView = new DataView(pds.buffer);
  for (let d = 0; d < PD_COUNT; d++) {
    const pdAddr = PD_ADDR + BigInt(d) * 4096n;
    pdptView.setBigUint64(d * 8, pdAddr | PTE_PRESENT | PTE_WRITABLE, true);
    for (let e = 0; e < 512; e++) {
      const phys = BigInt(d * 512 + e) * LARGE_PAGE_SIZE;
      pdView.setBigUint64(
        (d * 512 + e) * 8,
        phys | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE,
        true,
      );
    }
  }
  return [
    { addr: PML4_ADDR, bytes: pml4 },
    { addr: PDPT_ADDR, bytes: pdpt },
    { addr: PD_ADDR, bytes: pds },
  ];
}

// ---------------------------------------------------------------------------
// The boot plan.

/** One e820 map entry. */
export interface E820Entry {
  /** First address. */
  addr: bigint;
  /** Size in bytes. */
  size: bigint;
  /** {@link E820_RAM} or {@link E820_RESERVED}. */
  type: number;
}

/**
 * The e820 map of a guest with `memoryBytes` of RAM: RAM below the EBDA,
 * reserved 640K–1M (EBDA, VGA hole, BIOS area with the ACPI tables), RAM
 * from 1 MiB, and any RAM that did not fit below 3 GiB from 4 GiB.
 *
 * @example
 * ```ts
 * import { e820Map } from "./linux_x86.ts";
 * e820Map(256n << 20n).length; // 3
 * ```
 */
export function e820Map(memoryBytes: bigint): E820Entry[] {
  const regions = guestRamRegions(memoryBytes);
  const low = regions[0]?.size ?? 0n;
  if (low <= HIGH_MEMORY_START) {
    fail(`guest memory of ${memoryBytes} bytes ends below 1 MiB`);
  }
  const map: E820Entry[] = [
    { addr: 0n, size: EBDA_START, type: E820_RAM },
    {
      addr: EBDA_START,
      size: HIGH_MEMORY_START - EBDA_START,
      type: E820_RESERVED,
    },
    {
      addr: HIGH_MEMORY_START,
      size: low - HIGH_MEMORY_START,
      type: E820_RAM,
    },
  ];
  for (const r of regions.slice(1)) {
    map.push({ addr: r.start, size: r.size, type: E820_RAM });
  }
  return map;
}

/** Options of {@link buildX86Boot}. */
export interface X86BootOptions {
  /** Guest RAM size in bytes (multiple of 4096, at least enough for the kernel). */
  memoryBytes: bigint | number;
  /** Kernel command line. */
  cmdline: string;
  /** Initramfs image, placed page-aligned as high as the kernel allows. */
  initrd?: Uint8Array;
  /** Number of vCPUs, 1..255 (checked here; the MADT lists them). */
  cpus: number;
  /**
   * ACPI tables from `buildAcpiTables()`: copied into RAM and their RSDP
   * recorded in `boot_params.acpi_rsdp_addr`.
   */
  acpiTables?: AcpiTables;
}

/** Everything to do to a fresh VM to boot the kernel. */
export interface X86BootPlan {
  /** Bytes to copy into guest RAM; the ranges do not overlap. */
  writes: GuestWrite[];
  /** Initial state of vCPU 0. The other vCPUs wait for INIT/SIPI. */
  cpu: X86BootCpuState;
  /** Guest physical address the protected-mode kernel is loaded at. */
  kernelAddr: bigint;
  /** End of the memory the kernel uses while decompressing and running. */
  kernelEnd: bigint;
  /** Where the initrd went, if any. */
  initrd?: { addr: bigint; size: bigint };
  /** The e820 map written into the zero page. */
  e820: E820Entry[];
  /** The parsed setup header. */
  header: X86SetupHeader;
}

function alignDown(value: bigint, align: bigint): bigint {
  return value - value % align;
}

function alignUp(value: bigint, align: bigint): bigint {
  return alignDown(value + align - 1n, align);
}

/**
 * Plans a 64-bit boot of a bzImage: kernel, zero page, command line, initrd,
 * ACPI tables, GDT and page tables as guest writes, plus vCPU 0's registers.
 * Pure: the same inputs give the same plan.
 *
 * @example
 * ```ts ignore
 * import { buildAcpiTables } from "./acpi.ts";
 * import { buildX86Boot } from "./linux_x86.ts";
 * const kernel = await Deno.readFile("/boot/vmlinuz");
 * const plan = buildX86Boot(kernel, {
 *   memoryBytes: 512n << 20n,
 *   cmdline: "console=ttyS0 reboot=k panic=-1",
 *   cpus: 1,
 *   acpiTables: buildAcpiTables({ cpus: 1 }),
 * });
 * // for (const w of plan.writes) memory.writeExact(w.addr, w.bytes);
 * // vcpu.setRegs(plan.cpu.regs); vcpu.setSregs(plan.cpu.sregs);
 * ```
 */
export function buildX86Boot(
  kernel: Uint8Array,
  options: X86BootOptions,
): X86BootPlan {
  if (
    !Number.isInteger(options.cpus) || options.cpus < 1 || options.cpus > 255
  ) {
    fail(`cpu count ${options.cpus} is outside 1..255`);
  }
  const header = parseX86SetupHeader(kernel);
  const memoryBytes = BigInt(options.memoryBytes);
  const e820 = e820Map(memoryBytes);
  const lowEnd = guestRamRegions(memoryBytes)[0]?.size ?? 0n;

  // Kernel: pref_address for a relocatable kernel when it is aligned (boot.rst
  // asks loaders to try it), else the classic 1 MiB. Either way the kernel
  // decompresses itself to at least pref_address (LOAD_PHYSICAL_ADDR) and
  // uses init_size bytes there, so that is the footprint to keep free.
  const pref = header.prefAddress;
  const kernelAddr = header.relocatable && pref >= HIGH_MEMORY_START &&
      pref % header.kernelAlignment === 0n
    ? pref
    : HIGH_MEMORY_START;
  const alignedLoad = header.relocatable
    ? alignUp(kernelAddr, header.kernelAlignment)
    : kernelAddr;
  const runAddr = alignedLoad > pref ? alignedLoad : pref;
  const loadEnd = kernelAddr + BigInt(kernel.length - header.kernelOffset);
  const runEnd = runAddr + header.initSize;
  const kernelEnd = loadEnd > runEnd ? loadEnd : runEnd;
  if (kernelEnd > lowEnd) {
    fail(
      `kernel needs guest RAM up to 0x${kernelEnd.toString(16)} (init_size 0x${
        header.initSize.toString(16)
      }) but RAM below 3 GiB ends at 0x${lowEnd.toString(16)}`,
    );
  }

  // Command line.
  const cmdline = new TextEncoder().encode(options.cmdline);
  const cmdlineMax = Math.min(header.cmdlineSize, CMDLINE_MAX_BYTES - 1);
  if (cmdline.includes(0)) fail(`command line contains a NUL byte`);
  if (cmdline.length > cmdlineMax) {
    fail(
      `command line of ${cmdline.length} bytes exceeds the kernel's limit of ${cmdlineMax}`,
    );
  }
  const cmdlineBytes = new Uint8Array(cmdline.length + 1);
  cmdlineBytes.set(cmdline);

  // Initrd: as high as possible, page-aligned, below initrd_addr_max.
  let initrd: { addr: bigint; size: bigint } | undefined;
  if (options.initrd !== undefined && options.initrd.length > 0) {
    const size = BigInt(options.initrd.length);
    const ceiling = header.initrdAddrMax + 1n < lowEnd
      ? header.initrdAddrMax + 1n
      : lowEnd;
    const addr = ceiling > size ? alignDown(ceiling - size, PAGE_SIZE) : 0n;
    if (addr < alignUp(kernelEnd, PAGE_SIZE)) {
      fail(
        `initrd of ${size} bytes does not fit between the kernel (ends 0x${
          kernelEnd.toString(16)
        }) and 0x${ceiling.toString(16)}`,
      );
    }
    initrd = { addr, size };
  }

  // Zero page: the file's setup header, then our fields.
  const zeroPage = new Uint8Array(ZERO_PAGE_BYTES);
  const zp = new DataView(zeroPage.buffer);
  zeroPage.set(
    kernel.subarray(HDR_SETUP_SECTS, HDR_SETUP_SECTS + header.headerBytes),
    HDR_SETUP_SECTS,
  );
  zp.setUint8(HDR_TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
  zp.setUint8(HDR_LOADFLAGS, header.loadflags | LOADED_HIGH | CAN_USE_HEAP);
  zp.setUint16(HDR_HEAP_END_PTR, HEAP_END_PTR, true);
  zp.setUint32(HDR_CMD_LINE_PTR, Number(CMDLINE_ADDR), true);
  zp.setUint32(ZP_EXT_CMD_LINE_PTR, 0, true);
  if (initrd !== undefined) {
    zp.setUint32(HDR_RAMDISK_IMAGE, Number(initrd.addr & 0xffff_ffffn), true);
    zp.setUint32(HDR_RAMDISK_SIZE, Number(initrd.size & 0xffff_ffffn), true);
    zp.setUint32(ZP_EXT_RAMDISK_IMAGE, Number(initrd.addr >> 32n), true);
    zp.setUint32(ZP_EXT_RAMDISK_SIZE, Number(initrd.size >> 32n), true);
  }
  if (e820.length > E820_MAX_ENTRIES) fail(`e820 map has too many entries`);
  zp.setUint8(ZP_E820_ENTRIES, e820.length);
  e820.forEach((entry, i) => {
    const at = ZP_E820_TABLE + i * E820_ENTRY_BYTES;
    zp.setBigUint64(at, entry.addr, true);
    zp.setBigUint64(at + 8, entry.size, true);
    zp.setUint32(at + 16, entry.type, true);
  });
  for (const blob of options.acpiTables?.blobs ?? []) {
    const end = blob.addr + BigInt(blob.bytes.length);
    const reserved = e820.some((e) =>
      e.type === E820_RESERVED && blob.addr >= e.addr && end <= e.addr + e.size
    );
    if (!reserved) {
      fail(
        `ACPI table at 0x${
          blob.addr.toString(16)
        } is not in e820-reserved memory (the kernel would reuse it as RAM)`,
      );
    }
  }
  if (options.acpiTables !== undefined) {
    if (header.version < ACPI_RSDP_PROTOCOL) {
      // Older kernels find the RSDP by scanning 0xE0000-0xFFFFF instead.
      const rsdp = options.acpiTables.rsdpAddr;
      if (rsdp < 0xe0000n || rsdp > 0xfffffn || rsdp % 16n !== 0n) {
        fail(
          `boot protocol ${
            protocolText(header.version)
          } has no acpi_rsdp_addr and the RSDP at 0x${
            rsdp.toString(16)
          } is outside the 0xE0000-0xFFFFF scan area`,
        );
      }
    } else {
      zp.setBigUint64(ZP_ACPI_RSDP_ADDR, options.acpiTables.rsdpAddr, true);
    }
  }

  const gdt = buildGdt();
  const writes: GuestWrite[] = [
    { addr: GDT_ADDR, bytes: gdt },
    { addr: ZERO_PAGE_ADDR, bytes: zeroPage },
    ...buildPageTables(),
    { addr: CMDLINE_ADDR, bytes: cmdlineBytes },
    ...(options.acpiTables?.blobs ?? []),
    { addr: kernelAddr, bytes: kernel.subarray(header.kernelOffset) },
  ];
  if (initrd !== undefined && options.initrd !== undefined) {
    writes.push({ addr: initrd.addr, bytes: options.initrd });
  }
  checkDisjoint(writes, memoryBytes);

  const cpu: X86BootCpuState = {
    regs: {
      rip: kernelAddr + ENTRY_64_OFFSET,
      rsi: ZERO_PAGE_ADDR,
      rsp: BOOT_STACK_POINTER,
      rbp: 0n,
      rflags: RFLAGS_RESERVED,
    },
    sregs: {
      cs: { ...BOOT_CS },
      ds: { ...BOOT_DS },
      es: { ...BOOT_DS },
      fs: { ...BOOT_DS },
      gs: { ...BOOT_DS },
      ss: { ...BOOT_DS },
      tr: { ...BOOT_TSS },
      ldt: { ...NO_LDT },
      gdt: { base: GDT_ADDR, limit: gdt.length - 1 },
      idt: { base: 0n, limit: 0 },
      cr0: CR0_PE | CR0_ET | CR0_PG,
      cr3: PML4_ADDR,
      cr4: CR4_PAE,
      efer: EFER_LME | EFER_LMA,
    },
  };
  return { writes, cpu, kernelAddr, kernelEnd, initrd, e820, header };
}

/** Every write must land in RAM and no two may overlap. */
function checkDisjoint(writes: readonly GuestWrite[], memoryBytes: bigint) {
  const regions = guestRamRegions(memoryBytes);
  const sorted = [...writes].sort((a, b) => (a.addr < b.addr ? -1 : 1));
  let prevEnd = 0n;
  for (const w of sorted) {
    const end = w.addr + BigInt(w.bytes.length);
    if (w.addr < prevEnd) {
      fail(`boot data overlaps at 0x${w.addr.toString(16)}`);
    }
    if (!regions.some((r) => w.addr >= r.start && end <= r.start + r.size)) {
      fail(
        `boot data at 0x${w.addr.toString(16)}..0x${
          end.toString(16)
        } is outside guest RAM`,
      );
    }
    prevEnd = end;
  }
}
