/**
 * ACPI tables for an x86_64 micro-VM, as bytes ready to copy into guest RAM.
 *
 * Primer: firmware hands the OS a Root System Description Pointer (RSDP),
 * which points at the XSDT, a list of 64-bit table addresses. initx emits:
 *
 * - FADT ("FACP"), hardware-reduced (ACPI 6.x §4.1): no PM1 blocks, no SCI,
 *   no PM timer; power-off is a write to the sleep control register and
 *   reboot a write to the reset register, both I/O ports from `layout.ts`.
 * - MADT ("APIC"): one local APIC per vCPU, one IOAPIC, LINT1 as NMI, and
 *   optionally the PC's ISA IRQ0 -> GSI 2 override.
 * - DSDT: AML describing COM1 (`PNP0501`), each virtio-mmio window as a
 *   device with `_HID "LNRO0005"`, and `\_S5_` so the guest knows the
 *   power-off SLP_TYP.
 *
 * The AML encoder below covers just what the DSDT needs (ACPI 6.x §20.2).
 * Spec section numbers are from ACPI 6.4.
 *
 * @module
 */

import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
  ACPI_TABLES_ADDR,
  ACPI_TABLES_MAX_BYTES,
  type GuestWrite,
  IOAPIC_ADDR,
  LAPIC_ADDR,
  SERIAL_COM1_IRQ,
  SERIAL_COM1_PORT,
} from "./layout.ts";

// ---------------------------------------------------------------------------
// Power-off contract with the platform device.

/**
 * SLP_TYP value of the S5 (soft off) state, as published in `\_S5_`.
 * The guest writes `(S5_SLP_TYP << 2) | SLEEP_CONTROL_SLP_EN` to the sleep
 * control register ({@link ACPI_SLEEP_CONTROL_PORT}) to power off.
 */
export const S5_SLP_TYP = 5;
/** SLP_EN bit of the sleep control register (ACPI 6.4 §4.8.3.7). */
export const SLEEP_CONTROL_SLP_EN = 0x20;
/** Mask of the SLP_TYP field (bits 2..4) of the sleep control register. */
export const SLEEP_CONTROL_SLP_TYP_MASK = 0x1c;

/**
 * Whether a byte written to the sleep control register requests power-off.
 *
 * @example
 * ```ts
 * import { isPowerOffWrite } from "./acpi.ts";
 * isPowerOffWrite(0x34); // true: SLP_EN | 5 << 2
 * ```
 */
export function isPowerOffWrite(value: number): boolean {
  return (value & SLEEP_CONTROL_SLP_EN) !== 0 &&
    (value & SLEEP_CONTROL_SLP_TYP_MASK) >> 2 === S5_SLP_TYP;
}

export {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
};

// ---------------------------------------------------------------------------
// Table-level constants.

/** OEM ID written in every table header and the RSDP (6 bytes). */
export const ACPI_OEM_ID = "INITX ";
/** OEM table ID written in every table header (8 bytes). */
export const ACPI_OEM_TABLE_ID = "INITXVM ";
/** Creator ID of every table header (4 bytes). */
const CREATOR_ID = "INTX";
/** Size of the common table header (ACPI 6.4 §5.2.6). */
const HEADER_BYTES = 36;
/** RSDP size for revision 2 (ACPI 6.4 §5.2.5.3). */
const RSDP_BYTES = 36;
/** Bytes of the RSDP covered by the first (ACPI 1.0) checksum. */
const RSDP_V1_BYTES = 20;
/** FADT size for revision 6 (ACPI 6.4 §5.2.9, Table 5.9). */
const FADT_BYTES = 276;
/** FADT major revision. */
const FADT_REVISION = 6;
/** FADT minor revision (ACPI 6.4 -> 4). */
const FADT_MINOR_REVISION = 4;
/** MADT revision for ACPI 6.4 (§5.2.12). */
const MADT_REVISION = 5;
/** DSDT revision 2: AML integers are 64-bit (§5.2.11.1). */
const DSDT_REVISION = 2;
/** XSDT revision (§5.2.8). */
const XSDT_REVISION = 1;

/** FADT flags bit: RESET_REG is supported (§5.2.9, Table 5.10). */
const FADT_FLAG_RESET_REG_SUP = 1 << 10;
/** FADT flags bit: hardware-reduced ACPI, no fixed hardware (Table 5.10). */
export const FADT_FLAG_HW_REDUCED_ACPI = 1 << 20;
/** IA-PC boot arch flag: no VGA hardware to probe (§5.2.9.3, Table 5.11). */
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;
/** IA-PC boot arch flag: do not enable MSI (no PCI here). */
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3;
/** IA-PC boot arch flag: no CMOS RTC at ports 0x70/0x71. */
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5;

/** Generic Address Structure address space: system I/O (§5.2.3.2). */
const GAS_SPACE_IO = 1;
/** GAS access size: byte access. */
const GAS_ACCESS_BYTE = 1;

/** MADT flag: the machine also has dual 8259 PICs (§5.2.12, Table 5.20). */
const MADT_FLAG_PCAT_COMPAT = 1;
/** MADT entry type: processor local APIC (§5.2.12.2). */
const MADT_TYPE_LOCAL_APIC = 0;
/** MADT entry type: I/O APIC (§5.2.12.3). */
const MADT_TYPE_IOAPIC = 1;
/** MADT entry type: interrupt source override (§5.2.12.5). */
const MADT_TYPE_INTERRUPT_OVERRIDE = 2;
/** MADT entry type: local APIC NMI (§5.2.12.7). */
const MADT_TYPE_LOCAL_APIC_NMI = 4;
/** Local APIC flag: the processor is usable. */
const MADT_LAPIC_ENABLED = 1;
/** MPS INTI flags: active high polarity (Table 5.26). */
const MPS_INTI_ACTIVE_HIGH = 0b01;
/** MPS INTI flags: edge triggered (Table 5.26, bits 2..3). */
const MPS_INTI_EDGE = 0b01 << 2;
/** ACPI processor UID meaning "all processors" in a local APIC NMI entry. */
const ALL_PROCESSORS_UID = 0xff;

// ---------------------------------------------------------------------------
// AML encoding (ACPI 6.4 §20.2).

/** ZeroOp, §20.2.3. */
const AML_ZERO_OP = 0x00;
/** OneOp, §20.2.3. */
const AML_ONE_OP = 0x01;
/** NameOp: `Name(NameString, DataRefObject)`, §20.2.5.1. */
const AML_NAME_OP = 0x08;
/** BytePrefix: one-byte integer follows, §20.2.3. */
const AML_BYTE_PREFIX = 0x0a;
/** WordPrefix: two-byte integer follows. */
const AML_WORD_PREFIX = 0x0b;
/** DWordPrefix: four-byte integer follows. */
const AML_DWORD_PREFIX = 0x0c;
/** StringPrefix: NUL-terminated ASCII follows. */
const AML_STRING_PREFIX = 0x0d;
/** QWordPrefix: eight-byte integer follows. */
const AML_QWORD_PREFIX = 0x0e;
/** ScopeOp: `Scope(NameString) { TermList }`, §20.2.5.1. */
const AML_SCOPE_OP = 0x10;
/** BufferOp: `Buffer(size) { bytes }`, §20.2.5.4. */
const AML_BUFFER_OP = 0x11;
/** PackageOp: `Package(count) { elements }`, §20.2.5.4. */
const AML_PACKAGE_OP = 0x12;
/** DualNamePrefix: two NameSegs follow, §20.2.2. */
const AML_DUAL_NAME_PREFIX = 0x2e;
/** MultiNamePrefix: a count byte and that many NameSegs follow. */
const AML_MULTI_NAME_PREFIX = 0x2f;
/** ExtOpPrefix: the next byte selects an extended opcode, §20.2.5.2. */
const AML_EXT_OP_PREFIX = 0x5b;
/** DeviceOp (after ExtOpPrefix): `Device(NameString) { TermList }`. */
const AML_DEVICE_OP = 0x82;
/** RootChar `\`, §20.2.2. */
const AML_ROOT_CHAR = 0x5c;

/** Large resource item: 32-bit fixed memory range (§6.4.3.4). */
const RES_MEMORY32_FIXED = 0x86;
/** Memory32Fixed body length. */
const RES_MEMORY32_FIXED_LEN = 9;
/** Memory32Fixed info bit: read/write. */
const RES_MEMORY_READ_WRITE = 1;
/** Large resource item: extended interrupt descriptor (§6.4.3.6). */
const RES_EXTENDED_INTERRUPT = 0x89;
/** Extended interrupt flag: resource consumer. */
const RES_IRQ_CONSUMER = 1 << 0;
/** Extended interrupt flag: edge triggered (clear: level). */
const RES_IRQ_EDGE = 1 << 1;
/** Small resource item: end tag, one byte of checksum follows (§6.4.2.9). */
const RES_END_TAG = 0x79;
/** Small resource: I/O port descriptor, 7 bytes of data (§6.4.2.5). */
const RES_IO_PORT = 0x47;
/** I/O descriptor flag: the device decodes 16 address bits. */
const RES_IO_DECODE16 = 1;

const encoder = new TextEncoder();

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Encodes an AML PkgLength for a body of `bodyBytes` bytes; the encoded value
 * counts the PkgLength bytes themselves (ACPI 6.4 §20.2.4).
 *
 * @example
 * ```ts
 * import { amlPkgLength } from "./acpi.ts";
 * amlPkgLength(10); // Uint8Array [11]
 * amlPkgLength(100); // Uint8Array [0x46, 0x06]: 102 in two bytes
 * ```
 */
export function amlPkgLength(bodyBytes: number): Uint8Array {
  for (let extra = 0; extra <= 3; extra++) {
    const total = bodyBytes + 1 + extra;
    const limit = extra === 0 ? 0x40 : 1 << (4 + 8 * extra);
    if (total >= limit) continue;
    if (extra === 0) return Uint8Array.of(total);
    const out = new Uint8Array(1 + extra);
    out[0] = (extra << 6) | (total & 0x0f);
    for (let i = 1; i <= extra; i++) {
      out[i] = (total >> (4 + 8 * (i - 1))) & 0xff;
    }
    return out;
  }
  throw new RangeError(
    `Cannot encode AML package: body of ${bodyBytes} bytes exceeds 2^28`,
  );
}

/**
 * Encodes an AML integer with the shortest form (ZeroOp, OneOp, Byte, Word,
 * DWord or QWord prefix).
 *
 * @example
 * ```ts
 * import { amlInteger } from "./acpi.ts";
 * amlInteger(5); // Uint8Array [0x0a, 0x05]
 * ```
 */
export function amlInteger(value: number | bigint): Uint8Array {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) {
    throw new RangeError(`Cannot encode AML integer: ${v} is not a u64`);
  }
  if (v === 0n) return Uint8Array.of(AML_ZERO_OP);
  if (v === 1n) return Uint8Array.of(AML_ONE_OP);
  const [prefix, width] = v <= 0xffn
    ? [AML_BYTE_PREFIX, 1]
    : v <= 0xffffn
    ? [AML_WORD_PREFIX, 2]
    : v <= 0xffff_ffffn
    ? [AML_DWORD_PREFIX, 4]
    : [AML_QWORD_PREFIX, 8];
  const out = new Uint8Array(1 + width);
  out[0] = prefix;
  for (let i = 0; i < width; i++) {
    out[1 + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  }
  return out;
}

/**
 * Encodes an AML NameString such as `_HID`, `\_SB_` or `\_SB_.VR00`.
 * Segments shorter than four characters are padded with `_`.
 *
 * @example
 * ```ts
 * import { amlNameString } from "./acpi.ts";
 * amlNameString("\\_S5"); // "\" "_S5_"
 * ```
 */
export function amlNameString(name: string): Uint8Array {
  const root = name.startsWith("\\");
  const segs = (root ? name.slice(1) : name).split(".").map((seg) => {
    if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) {
      throw new RangeError(
        `Cannot encode AML name "${name}": segment "${seg}" is not a NameSeg`,
      );
    }
    return seg.padEnd(4, "_");
  });
  const prefix: number[] = root ? [AML_ROOT_CHAR] : [];
  if (segs.length === 2) prefix.push(AML_DUAL_NAME_PREFIX);
  if (segs.length > 2) prefix.push(AML_MULTI_NAME_PREFIX, segs.length);
  return concat([Uint8Array.from(prefix), encoder.encode(segs.join(""))]);
}

/** `"text"` as an AML String. */
function amlString(text: string): Uint8Array {
  if (!/^[\x20-\x7e]*$/.test(text)) {
    throw new RangeError(
      `Cannot encode AML string "${text}": not printable ASCII`,
    );
  }
  return concat([
    Uint8Array.of(AML_STRING_PREFIX),
    encoder.encode(text),
    Uint8Array.of(0),
  ]);
}

/** `Name(name, value)`. */
function amlName(name: string, value: Uint8Array): Uint8Array {
  return concat([Uint8Array.of(AML_NAME_OP), amlNameString(name), value]);
}

/** An opcode followed by PkgLength and `body`. */
function amlPkg(op: readonly number[], body: Uint8Array): Uint8Array {
  return concat([Uint8Array.from(op), amlPkgLength(body.length), body]);
}

/** `Scope(name) { terms }`. */
function amlScope(name: string, terms: readonly Uint8Array[]): Uint8Array {
  return amlPkg([AML_SCOPE_OP], concat([amlNameString(name), ...terms]));
}

/** `Device(name) { terms }`. */
function amlDevice(name: string, terms: readonly Uint8Array[]): Uint8Array {
  return amlPkg(
    [AML_EXT_OP_PREFIX, AML_DEVICE_OP],
    concat([amlNameString(name), ...terms]),
  );
}

/** `Package(n) { elements }` with integer elements. */
function amlPackage(elements: readonly number[]): Uint8Array {
  if (elements.length > 255) {
    throw new RangeError(`Cannot encode AML package: ${elements.length} > 255`);
  }
  return amlPkg(
    [AML_PACKAGE_OP],
    concat([Uint8Array.of(elements.length), ...elements.map(amlInteger)]),
  );
}

/** `Buffer(n) { bytes }`. */
function amlBuffer(bytes: Uint8Array): Uint8Array {
  return amlPkg([AML_BUFFER_OP], concat([amlInteger(bytes.length), bytes]));
}

/** `Memory32Fixed(ReadWrite, base, size)` resource descriptor. */
function resMemory32Fixed(base: bigint, size: bigint): Uint8Array {
  if (base < 0n || size <= 0n || base + size > 0x1_0000_0000n) {
    throw new RangeError(
      `Cannot describe memory range 0x${base.toString(16)}+0x${
        size.toString(16)
      }: not below 4 GiB`,
    );
  }
  const out = new Uint8Array(3 + RES_MEMORY32_FIXED_LEN);
  const view = new DataView(out.buffer);
  out[0] = RES_MEMORY32_FIXED;
  view.setUint16(1, RES_MEMORY32_FIXED_LEN, true);
  out[3] = RES_MEMORY_READ_WRITE;
  view.setUint32(4, Number(base), true);
  view.setUint32(8, Number(size), true);
  return out;
}

/** `Interrupt(ResourceConsumer, mode, ActiveHigh, Exclusive) { gsi }`. */
function resExtendedInterrupt(gsi: number, edge: boolean): Uint8Array {
  const out = new Uint8Array(9);
  const view = new DataView(out.buffer);
  out[0] = RES_EXTENDED_INTERRUPT;
  view.setUint16(1, 6, true); // flags, count, one u32
  // Bit 2 clear: active high; bit 3 clear: exclusive.
  out[3] = RES_IRQ_CONSUMER | (edge ? RES_IRQ_EDGE : 0);
  out[4] = 1;
  view.setUint32(5, gsi, true);
  return out;
}

/** `IO(Decode16, port, port, 1, length)` resource descriptor (§6.4.2.5). */
function resIo(port: number, length: number): Uint8Array {
  const out = new Uint8Array(8);
  const view = new DataView(out.buffer);
  out[0] = RES_IO_PORT;
  out[1] = RES_IO_DECODE16;
  view.setUint16(2, port, true);
  view.setUint16(4, port, true);
  out[6] = 1; // alignment
  out[7] = length;
  return out;
}

/** `EisaId("PNP0501")`: a compressed EISA id as a DWORD (§19.6.35). */
function amlEisaId(id: string): Uint8Array {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) {
    throw new RangeError(
      `Cannot encode EISA id "${id}": expected like PNP0501`,
    );
  }
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  // Stored big-endian: vendor word then product word, read as a u32 LE.
  const be = Uint8Array.of(
    vendor >> 8,
    vendor & 0xff,
    product >> 8,
    product & 0xff,
  );
  return amlInteger(new DataView(be.buffer).getUint32(0, true));
}

/** A ResourceTemplate: the descriptors plus an end tag with checksum 0. */
function resourceTemplate(items: readonly Uint8Array[]): Uint8Array {
  return concat([...items, Uint8Array.of(RES_END_TAG, 0)]);
}

// ---------------------------------------------------------------------------
// Tables.

/**
 * Makes the byte sum of `bytes[start, end)` zero by writing `bytes[at]`.
 *
 * @example
 * ```ts
 * import { acpiChecksum } from "./acpi.ts";
 * const t = Uint8Array.of(1, 2, 0);
 * acpiChecksum(t, 2); // t[2] = 253
 * ```
 */
export function acpiChecksum(
  bytes: Uint8Array,
  at: number,
  range: { start?: number; end?: number } = {},
): void {
  const { start = 0, end = bytes.length } = range;
  bytes[at] = 0;
  let sum = 0;
  for (let i = start; i < end; i++) sum += bytes[i] ?? 0;
  bytes[at] = (256 - (sum & 0xff)) & 0xff;
}

function writeAscii(bytes: Uint8Array, at: number, text: string): void {
  bytes.set(encoder.encode(text), at);
}

/** A table with its 36-byte header filled in and its checksum set. */
function table(
  signature: string,
  revision: number,
  body: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + body.length);
  const view = new DataView(out.buffer);
  writeAscii(out, 0, signature);
  view.setUint32(4, out.length, true);
  out[8] = revision;
  writeAscii(out, 10, ACPI_OEM_ID);
  writeAscii(out, 16, ACPI_OEM_TABLE_ID);
  view.setUint32(24, 1, true); // OEM revision
  writeAscii(out, 28, CREATOR_ID);
  view.setUint32(32, 1, true); // creator revision
  out.set(body, HEADER_BYTES);
  acpiChecksum(out, 9);
  return out;
}

/** Writes a Generic Address Structure (ACPI 6.4 §5.2.3.2) at `at`. */
function writeGas(
  view: DataView,
  at: number,
  gas: { space: number; bitWidth: number; address: bigint },
): void {
  view.setUint8(at, gas.space);
  view.setUint8(at + 1, gas.bitWidth);
  view.setUint8(at + 2, 0); // bit offset
  view.setUint8(at + 3, GAS_ACCESS_BYTE);
  view.setBigUint64(at + 4, gas.address, true);
}

/**
 * Builds a revision 2 RSDP (ACPI 6.4 §5.2.5.3) pointing at an XSDT, with both
 * checksums set and no RSDT.
 *
 * @example
 * ```ts
 * import { buildRsdp } from "./acpi.ts";
 * const rsdp = buildRsdp(0xe0040n); // 36 bytes starting "RSD PTR "
 * ```
 */
export function buildRsdp(xsdtAddr: bigint): Uint8Array {
  const out = new Uint8Array(RSDP_BYTES);
  const view = new DataView(out.buffer);
  writeAscii(out, 0, "RSD PTR ");
  writeAscii(out, 9, ACPI_OEM_ID);
  out[15] = 2; // revision: ACPI 2.0+
  view.setUint32(16, 0, true); // RSDT address: none, XSDT only
  view.setUint32(20, RSDP_BYTES, true);
  view.setBigUint64(24, xsdtAddr, true);
  acpiChecksum(out, 8, { end: RSDP_V1_BYTES });
  acpiChecksum(out, 32);
  return out;
}

/**
 * Builds an XSDT listing `tableAddrs` (ACPI 6.4 §5.2.8).
 *
 * @example
 * ```ts
 * import { buildXsdt } from "./acpi.ts";
 * buildXsdt([0xe0100n, 0xe0200n]).length; // 36 + 16
 * ```
 */
export function buildXsdt(tableAddrs: readonly bigint[]): Uint8Array {
  const body = new Uint8Array(8 * tableAddrs.length);
  const view = new DataView(body.buffer);
  tableAddrs.forEach((addr, i) => view.setBigUint64(8 * i, addr, true));
  return table("XSDT", XSDT_REVISION, body);
}

/**
 * Builds a hardware-reduced revision 6 FADT (ACPI 6.4 §5.2.9) whose
 * X_DSDT is `dsdtAddr`, with sleep control/status and reset registers in I/O
 * space at the ports from `layout.ts`.
 *
 * @example
 * ```ts
 * import { buildFadt } from "./acpi.ts";
 * buildFadt(0xe0400n).length; // 276
 * ```
 */
export function buildFadt(dsdtAddr: bigint): Uint8Array {
  const body = new Uint8Array(FADT_BYTES - HEADER_BYTES);
  const view = new DataView(body.buffer);
  const at = (fadtOffset: number) => fadtOffset - HEADER_BYTES;
  view.setUint16(
    at(109),
    IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED |
      IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT,
    true,
  );
  view.setUint32(
    at(112),
    FADT_FLAG_HW_REDUCED_ACPI | FADT_FLAG_RESET_REG_SUP,
    true,
  );
  writeGas(view, at(116), {
    space: GAS_SPACE_IO,
    bitWidth: 8,
    address: BigInt(ACPI_RESET_PORT),
  });
  view.setUint8(at(128), ACPI_RESET_VALUE);
  view.setUint8(at(131), FADT_MINOR_REVISION);
  view.setBigUint64(at(140), dsdtAddr, true); // X_DSDT
  writeGas(view, at(244), {
    space: GAS_SPACE_IO,
    bitWidth: 8,
    address: BigInt(ACPI_SLEEP_CONTROL_PORT),
  });
  writeGas(view, at(256), {
    space: GAS_SPACE_IO,
    bitWidth: 8,
    address: BigInt(ACPI_SLEEP_STATUS_PORT),
  });
  return table("FACP", FADT_REVISION, body);
}

/** Options of {@link buildMadt}. */
export interface MadtOptions {
  /** Number of vCPUs; local APIC IDs and processor UIDs are 0..cpus-1. */
  cpus: number;
  /**
   * Declare ISA IRQ 0 (the PIT) as wired to IOAPIC pin 2, like a real PC.
   * Default `false`: KVM's default GSI routing sends GSI 0 to IOAPIC pin 0,
   * so the override is only right when the platform installs a QEMU-style
   * routing (KVM_SET_GSI_ROUTING with GSI 0 -> IOAPIC pin 2).
   */
  isaIrq0ToGsi2?: boolean;
}

/**
 * Builds the MADT (ACPI 6.4 §5.2.12): the local APIC window, one enabled
 * local APIC per vCPU, the IOAPIC at GSI base 0, LINT1 as NMI on all CPUs,
 * and with `isaIrq0ToGsi2` an ISA IRQ0 -> GSI 2 interrupt source override.
 *
 * @example
 * ```ts
 * import { buildMadt } from "./acpi.ts";
 * buildMadt({ cpus: 2 });
 * ```
 */
export function buildMadt(options: MadtOptions): Uint8Array {
  const { cpus, isaIrq0ToGsi2 = false } = options;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 255) {
    throw new RangeError(
      `Cannot build MADT: cpu count ${cpus} is outside 1..255`,
    );
  }
  const entries: Uint8Array[] = [];
  const head = new Uint8Array(8);
  new DataView(head.buffer).setUint32(0, Number(LAPIC_ADDR), true);
  new DataView(head.buffer).setUint32(4, MADT_FLAG_PCAT_COMPAT, true);
  entries.push(head);
  for (let id = 0; id < cpus; id++) {
    const e = new Uint8Array(8);
    e.set([MADT_TYPE_LOCAL_APIC, 8, id, id]);
    new DataView(e.buffer).setUint32(4, MADT_LAPIC_ENABLED, true);
    entries.push(e);
  }
  const ioapic = new Uint8Array(12);
  ioapic.set([MADT_TYPE_IOAPIC, 12, 0, 0]); // IOAPIC ID 0, like KVM's reset value
  new DataView(ioapic.buffer).setUint32(4, Number(IOAPIC_ADDR), true);
  new DataView(ioapic.buffer).setUint32(8, 0, true);
  entries.push(ioapic);
  if (isaIrq0ToGsi2) {
    const iso = new Uint8Array(10);
    iso.set([MADT_TYPE_INTERRUPT_OVERRIDE, 10, 0, 0]); // ISA bus, IRQ 0
    new DataView(iso.buffer).setUint32(4, 2, true);
    new DataView(iso.buffer).setUint16(8, 0, true); // conforms to ISA: edge, high
    entries.push(iso);
  }
  const nmi = new Uint8Array(6);
  nmi.set([MADT_TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS_UID]);
  new DataView(nmi.buffer).setUint16(
    3,
    MPS_INTI_ACTIVE_HIGH | MPS_INTI_EDGE,
    true,
  );
  nmi[5] = 1; // LINT1
  entries.push(nmi);
  return table("APIC", MADT_REVISION, concat(entries));
}

/** One virtio-mmio window described in the DSDT. */
export interface VirtioMmioAcpiDevice {
  /** Guest physical base of the register window (below 4 GiB). */
  base: bigint;
  /** Window size in bytes (usually 0x1000). */
  size: bigint;
  /** IOAPIC input (GSI) the device raises. */
  gsi: number;
  /**
   * Interrupt trigger mode. Default `"edge"`, which suits KVM_IRQFD and
   * pulsed KVM_IRQ_LINE; `"level"` needs the line held until the guest
   * acknowledges the interrupt status.
   */
  trigger?: "edge" | "level";
}

/**
 * Builds the DSDT (ACPI 6.4 §5.2.11.1): `\_S5_` and, under `\_SB_`, COM1 and one
 * `Device (VRnn)` per virtio-mmio window with `_HID "LNRO0005"`, `_UID n` and
 * a `_CRS` holding `Memory32Fixed` and `Interrupt` descriptors.
 *
 * @example
 * ```ts
 * import { buildDsdt } from "./acpi.ts";
 * buildDsdt([{ base: 0xd0000000n, size: 0x1000n, gsi: 16 }]);
 * ```
 */
export function buildDsdt(
  virtioMmio: readonly VirtioMmioAcpiDevice[],
): Uint8Array {
  if (virtioMmio.length > 256) {
    throw new RangeError(
      `Cannot build DSDT: ${virtioMmio.length} virtio-mmio devices exceed 256`,
    );
  }
  // Linux's serial driver learns COM1's interrupt from here: with a
  // hardware-reduced FADT it has no legacy PIC, so ISA IRQ numbers are not
  // mapped to IOAPIC pins until ACPI names them.
  const com1 = amlDevice("COM1", [
    amlName("_HID", amlEisaId("PNP0501")),
    amlName("_UID", amlInteger(0)),
    amlName(
      "_CRS",
      amlBuffer(resourceTemplate([
        resIo(SERIAL_COM1_PORT, 8),
        resExtendedInterrupt(SERIAL_COM1_IRQ, true),
      ])),
    ),
  ]);
  const devices = virtioMmio.map((dev, n) => {
    if (!Number.isInteger(dev.gsi) || dev.gsi < 0 || dev.gsi > 0xffff_ffff) {
      throw new RangeError(
        `Cannot build DSDT: virtio-mmio device ${n} has invalid GSI ${dev.gsi}`,
      );
    }
    const crs = resourceTemplate([
      resMemory32Fixed(dev.base, dev.size),
      resExtendedInterrupt(dev.gsi, (dev.trigger ?? "edge") === "edge"),
    ]);
    const name = `VR${n.toString(16).toUpperCase().padStart(2, "0")}`;
    return amlDevice(name, [
      amlName("_HID", amlString("LNRO0005")),
      amlName("_UID", amlInteger(n)),
      amlName("_CRS", amlBuffer(crs)),
    ]);
  });
  const aml = concat([
    amlName("\\_S5_", amlPackage([S5_SLP_TYP, S5_SLP_TYP, 0, 0])),
    amlScope("\\_SB_", [com1, ...devices]),
  ]);
  return table("DSDT", DSDT_REVISION, aml);
}

/** Options of {@link buildAcpiTables}. */
export interface AcpiTablesOptions {
  /** Number of vCPUs (1..255). */
  cpus: number;
  /** virtio-mmio windows to describe; default none. */
  virtioMmio?: readonly VirtioMmioAcpiDevice[];
  /**
   * Guest physical address of the RSDP, the other tables follow it. Default
   * {@link ACPI_TABLES_ADDR} (0xE0000), where legacy scans find the RSDP.
   */
  tablesAddr?: bigint;
  /** See {@link MadtOptions.isaIrq0ToGsi2}. Default `false`. */
  isaIrq0ToGsi2?: boolean;
}

/** ACPI tables ready to copy into guest RAM. */
export interface AcpiTables {
  /** Guest physical address of the RSDP (for `boot_params.acpi_rsdp_addr`). */
  rsdpAddr: bigint;
  /** RSDP, XSDT, FADT, MADT and DSDT, each at its own address. */
  blobs: GuestWrite[];
}

/** End of the 640K-1M BIOS area the default ACPI location lies in. */
const BIOS_AREA_END = ACPI_TABLES_ADDR + ACPI_TABLES_MAX_BYTES;

/** Tables are placed at this alignment after the RSDP. */
const TABLE_ALIGN = 16n;

function alignUp(value: bigint, align: bigint): bigint {
  return (value + align - 1n) / align * align;
}

/**
 * Builds and places the whole ACPI table set: RSDP at `tablesAddr`, then
 * XSDT, FADT, MADT and DSDT, 16-byte aligned, all checksummed.
 *
 * @example
 * ```ts
 * import { buildAcpiTables } from "./acpi.ts";
 * const { rsdpAddr, blobs } = buildAcpiTables({
 *   cpus: 2,
 *   virtioMmio: [{ base: 0xd0000000n, size: 0x1000n, gsi: 16 }],
 * });
 * // rsdpAddr === 0xe0000n; copy every blob to blob.addr
 * ```
 */
export function buildAcpiTables(options: AcpiTablesOptions): AcpiTables {
  const base = options.tablesAddr ?? ACPI_TABLES_ADDR;
  if (base % TABLE_ALIGN !== 0n) {
    throw new RangeError(
      `Cannot place ACPI tables: address 0x${
        base.toString(16)
      } is not 16-byte aligned`,
    );
  }
  const dsdt = buildDsdt(options.virtioMmio ?? []);
  const madt = buildMadt({
    cpus: options.cpus,
    isaIrq0ToGsi2: options.isaIrq0ToGsi2,
  });
  // Sizes of XSDT (2 entries) and FADT are fixed, so addresses are known first.
  const xsdtAddr = alignUp(base + BigInt(RSDP_BYTES), TABLE_ALIGN);
  const fadtAddr = alignUp(
    xsdtAddr + BigInt(HEADER_BYTES + 2 * 8),
    TABLE_ALIGN,
  );
  const madtAddr = alignUp(fadtAddr + BigInt(FADT_BYTES), TABLE_ALIGN);
  const dsdtAddr = alignUp(madtAddr + BigInt(madt.length), TABLE_ALIGN);
  const end = dsdtAddr + BigInt(dsdt.length);
  if (base < BIOS_AREA_END && end > BIOS_AREA_END) {
    throw new RangeError(
      `Cannot place ACPI tables: ${end - base} bytes from 0x${
        base.toString(16)
      } run past the BIOS area at 0x${BIOS_AREA_END.toString(16)}`,
    );
  }
  return {
    rsdpAddr: base,
    blobs: [
      { addr: base, bytes: buildRsdp(xsdtAddr) },
      { addr: xsdtAddr, bytes: buildXsdt([fadtAddr, madtAddr]) },
      { addr: fadtAddr, bytes: buildFadt(dsdtAddr) },
      { addr: madtAddr, bytes: madt },
      { addr: dsdtAddr, bytes: dsdt },
    ],
  };
}
