/**
 * A flattened devicetree (DTB) writer.
 *
 * Primer (Devicetree Specification v0.4, chapter 5 "Flattened Devicetree (DTB)
 * Format"): a DTB is one block of big-endian data in four parts,
 *
 * ```text
 * header (40 bytes, §5.2)
 * memory reservation block (§5.3): { address u64, size u64 } pairs, 8-byte
 *   aligned, ended by a pair of zeros
 * structure block (§5.4): a stream of 4-byte-aligned u32 tokens
 *   FDT_BEGIN_NODE name\0 (padded to 4)
 *     FDT_PROP len nameoff value (padded to 4)   one per property
 *     ... child nodes ...
 *   FDT_END_NODE
 *   FDT_END                                      once, after the root
 * strings block (§5.5): each property name once, NUL-terminated; `nameoff`
 *   is the offset of the name here
 * ```
 *
 * A tree is plain data: {@link FdtNode}s whose property values are already
 * encoded bytes, made with the helpers below ({@link u32}, {@link str}, ...).
 * {@link encodeFdt} checks names against §2.2 and lays out the blob.
 *
 * @example
 * ```ts
 * import { encodeFdt, node, str, u32, u64List } from "./fdt.ts";
 * const dtb = encodeFdt(node("", {
 *   "#address-cells": u32(2),
 *   "#size-cells": u32(2),
 * }, [
 *   node("memory@40000000", {
 *     device_type: str("memory"),
 *     reg: u64List(0x4000_0000n, 0x800_0000n),
 *   }),
 * ]));
 * console.assert(new DataView(dtb.buffer).getUint32(0) === 0xd00dfeed);
 * ```
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Format constants (Devicetree Specification v0.4, chapter 5).

/** Header `magic` (§5.2). */
export const FDT_MAGIC = 0xd00dfeed;
/** Header `version` written: 17, the version §5.2 describes. */
export const FDT_VERSION = 17;
/** Header `last_comp_version`: version 17 is backwards compatible with 16. */
export const FDT_LAST_COMP_VERSION = 16;
/** Structure token: start of a node, followed by its name (§5.4.1). */
export const FDT_BEGIN_NODE = 0x1;
/** Structure token: end of a node (§5.4.1). */
export const FDT_END_NODE = 0x2;
/** Structure token: a property, followed by `len`, `nameoff` and the value (§5.4.1). */
export const FDT_PROP = 0x3;
/** Structure token: ignored by readers (§5.4.1). */
export const FDT_NOP = 0x4;
/** Structure token: end of the structure block (§5.4.1). */
export const FDT_END = 0x9;

/** Size of the version-17 header: ten u32 fields (§5.2). */
const HEADER_BYTES = 40;
/** One memory reservation entry: address u64, size u64 (§5.3). */
const RESERVATION_BYTES = 16;
/** Longest node-name (before any `@unit-address`) and property name (§2.2.1, §2.2.4). */
const MAX_NAME_CHARS = 31;
/** Node names: letters, digits and `,._+-`, starting with a letter (§2.2.1, Table 2.1). */
const NODE_NAME = /^[A-Za-z][0-9A-Za-z,._+-]*$/;
/** Unit addresses use the node-name characters (§2.2.1). */
const UNIT_ADDRESS = /^[0-9A-Za-z,._+-]+$/;
/** Property names: letters, digits and `,._+?#-` (§2.2.4, Table 2.2). */
const PROPERTY_NAME = /^[0-9A-Za-z,._+?#-]+$/;

const encoder = new TextEncoder();

// ---------------------------------------------------------------------------
// The tree.

/**
 * Properties of a node by name, each value already encoded (big-endian, as
 * the helpers in this module make them). Property order does not matter to
 * readers; names that look like array indices ("0") would be reordered by
 * JavaScript, which is harmless.
 */
export type FdtProps = Record<string, Uint8Array>;

/** One devicetree node: its name (`""` for the root), properties and children. */
export interface FdtNode {
  /** `node-name` or `node-name@unit-address`; the root's name is `""`. */
  name: string;
  /** Properties, written in insertion order. */
  props: FdtProps;
  /** Child nodes, written in order. */
  children: FdtNode[];
}

/**
 * Makes a node; `props` and `children` default to empty.
 *
 * @example
 * ```ts
 * import { node, str } from "./fdt.ts";
 * const chosen = node("chosen", { bootargs: str("console=ttyS0") });
 * console.assert(chosen.children.length === 0);
 * ```
 */
export function node(
  name: string,
  props: FdtProps = {},
  children: FdtNode[] = [],
): FdtNode {
  return { name, props, children };
}

// ---------------------------------------------------------------------------
// Property values (§2.2.4.1 "Property Values").

function fail(detail: string): never {
  throw new Error(`Cannot encode devicetree: ${detail}`);
}

function checkU32(value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    fail(`value ${value} is not a u32`);
  }
}

function checkU64(value: bigint): void {
  if (value < 0n || value > 0xffff_ffff_ffff_ffffn) {
    fail(`value ${value} is not a u64`);
  }
}

/**
 * A `<u32>` value: one big-endian cell.
 *
 * @example
 * ```ts
 * import { u32 } from "./fdt.ts";
 * u32(2); // Uint8Array [0, 0, 0, 2]
 * ```
 */
export function u32(value: number): Uint8Array {
  return u32List(value);
}

/**
 * A `<u64>` value: two big-endian cells, high cell first.
 *
 * @example
 * ```ts
 * import { u64 } from "./fdt.ts";
 * u64(0x1_0000_0000n); // Uint8Array [0, 0, 0, 1, 0, 0, 0, 0]
 * ```
 */
export function u64(value: bigint): Uint8Array {
  return u64List(value);
}

/**
 * A `<prop-encoded-array>` of u32 cells, e.g. `interrupts = <0 16 1>`.
 *
 * @example
 * ```ts
 * import { u32List } from "./fdt.ts";
 * u32List(0, 16, 1).length; // 12
 * ```
 */
export function u32List(...values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => {
    checkU32(v);
    view.setUint32(i * 4, v);
  });
  return out;
}

/**
 * A `<prop-encoded-array>` of u64 values (two cells each), e.g. a `reg` of
 * address/size pairs when `#address-cells` and `#size-cells` are 2.
 *
 * @example
 * ```ts
 * import { u64List } from "./fdt.ts";
 * u64List(0x4000_0000n, 0x800_0000n).length; // 16
 * ```
 */
export function u64List(...values: bigint[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => {
    checkU64(v);
    view.setBigUint64(i * 8, v);
  });
  return out;
}

/**
 * A `<string>` value: the UTF-8 text and a NUL.
 *
 * @example
 * ```ts
 * import { str } from "./fdt.ts";
 * str("cpu"); // Uint8Array [0x63, 0x70, 0x75, 0]
 * ```
 */
export function str(value: string): Uint8Array {
  return strList(value);
}

/**
 * A `<stringlist>` value: each string NUL-terminated, one after the other,
 * e.g. `compatible = "arm,psci-0.2", "arm,psci"`.
 *
 * @example
 * ```ts
 * import { strList } from "./fdt.ts";
 * strList("a", "b"); // Uint8Array [0x61, 0, 0x62, 0]
 * ```
 */
export function strList(...values: string[]): Uint8Array {
  const parts = values.map((v) => {
    const bytes = encoder.encode(v);
    if (bytes.includes(0)) fail(`string ${JSON.stringify(v)} contains a NUL`);
    return bytes;
  });
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length + 1, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length + 1;
  }
  return out;
}

/**
 * An `<empty>` value: a property whose presence is the information, e.g.
 * `interrupt-controller` or `dma-coherent`.
 *
 * @example
 * ```ts
 * import { empty } from "./fdt.ts";
 * empty().length; // 0
 * ```
 */
export function empty(): Uint8Array {
  return new Uint8Array(0);
}

/**
 * A raw byte string value (`[01 02 ...]` in DTS), copied.
 *
 * @example
 * ```ts
 * import { bytes } from "./fdt.ts";
 * bytes(Uint8Array.of(1, 2, 3)).length; // 3
 * ```
 */
export function bytes(value: Uint8Array): Uint8Array {
  return value.slice();
}

/**
 * A `<phandle>` value: one cell naming a node by the number in its
 * `phandle` property, e.g. `interrupt-parent`. 0 and 0xffffffff are not
 * valid phandles (§2.3.3).
 *
 * @example
 * ```ts
 * import { node, phandle, u32 } from "./fdt.ts";
 * const gic = node("intc@8000000", { phandle: u32(1) });
 * const root = node("", { "interrupt-parent": phandle(1) }, [gic]);
 * console.assert(root.children.length === 1);
 * ```
 */
export function phandle(value: number): Uint8Array {
  if (value === 0 || value === 0xffff_ffff) {
    fail(`phandle ${value} is reserved`);
  }
  return u32(value);
}

// ---------------------------------------------------------------------------
// Encoding.

/** A memory reservation block entry (§5.3): memory the OS must not use. */
export interface FdtReservation {
  /** Guest physical address of the first reserved byte. */
  address: bigint;
  /** Size in bytes (non-zero: a zero size ends the block). */
  size: bigint;
}

/** Options of {@link encodeFdt}. */
export interface EncodeFdtOptions {
  /** Entries of the memory reservation block; default none. */
  reservations?: FdtReservation[];
  /** Header `boot_cpuid_phys`: the `reg` of the boot CPU's node; default 0. */
  bootCpuidPhys?: number;
  /**
   * Largest blob accepted, in bytes; a bigger tree throws. Default: no limit
   * beyond the format's u32 sizes. (arm64 Linux takes at most 2 MiB.)
   */
  maxBytes?: number;
}

/** Growable big-endian byte buffer for the structure block. */
class StructWriter {
  #bytes = new Uint8Array(4096);
  #view = new DataView(this.#bytes.buffer);
  #length = 0;

  #reserve(n: number): void {
    if (this.#length + n <= this.#bytes.length) return;
    let size = this.#bytes.length * 2;
    while (size < this.#length + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.#bytes.subarray(0, this.#length));
    this.#bytes = grown;
    this.#view = new DataView(grown.buffer);
  }

  u32(value: number): void {
    this.#reserve(4);
    this.#view.setUint32(this.#length, value);
    this.#length += 4;
  }

  /** Appends bytes, then zeros up to the next 4-byte boundary. */
  padded(data: Uint8Array): void {
    const n = (data.length + 3) & ~3;
    this.#reserve(n);
    this.#bytes.set(data, this.#length);
    this.#bytes.fill(0, this.#length + data.length, this.#length + n);
    this.#length += n;
  }

  done(): Uint8Array {
    return this.#bytes.subarray(0, this.#length);
  }
}

function checkNodeName(name: string, path: string): void {
  const at = name.indexOf("@");
  const base = at < 0 ? name : name.slice(0, at);
  const unit = at < 0 ? undefined : name.slice(at + 1);
  if (
    !NODE_NAME.test(base) || base.length > MAX_NAME_CHARS ||
    (unit !== undefined && !UNIT_ADDRESS.test(unit))
  ) {
    fail(
      `node name ${
        JSON.stringify(name)
      } under "${path}" is not node-name[@unit-address] (1-31 of A-Za-z0-9,._+- starting with a letter)`,
    );
  }
}

function checkPropertyName(name: string, path: string): void {
  if (!PROPERTY_NAME.test(name) || name.length > MAX_NAME_CHARS) {
    fail(
      `property name ${
        JSON.stringify(name)
      } in "${path}" is not 1-31 of A-Za-z0-9,._+?#-`,
    );
  }
}

function childPath(parent: string, name: string): string {
  return parent === "/" ? `/${name}` : `${parent}/${name}`;
}

/**
 * Encodes a tree as a DTB (version 17, last compatible 16). Throws
 * `Cannot encode devicetree: ...` for a root not named `""`, a node or
 * property name outside §2.2, two siblings of one name, a reservation of
 * size 0, or a blob over `maxBytes`.
 *
 * Property names are stored once each in the strings block however many
 * nodes use them.
 *
 * @example
 * ```ts
 * import { empty, encodeFdt, node, strList } from "./fdt.ts";
 * const dtb = encodeFdt(node("", {}, [
 *   node("psci", { compatible: strList("arm,psci-0.2", "arm,psci") }),
 *   node("pmu", { "always-on": empty() }),
 * ]), { maxBytes: 2 << 20 });
 * console.assert(new DataView(dtb.buffer).getUint32(4) === dtb.length);
 * ```
 */
export function encodeFdt(
  root: FdtNode,
  options: EncodeFdtOptions = {},
): Uint8Array {
  if (root.name !== "") {
    fail(`the root node must be named "" (got ${JSON.stringify(root.name)})`);
  }
  const bootCpuidPhys = options.bootCpuidPhys ?? 0;
  checkU32(bootCpuidPhys);
  const reservations = options.reservations ?? [];
  for (const r of reservations) {
    checkU64(r.address);
    checkU64(r.size);
    if (r.size === 0n) {
      fail(
        `memory reservation at 0x${
          r.address.toString(16)
        } has size 0 (which would end the block)`,
      );
    }
  }

  const structure = new StructWriter();
  const strings: Uint8Array[] = [];
  const nameOffsets = new Map<string, number>();
  let stringsBytes = 0;
  const nameOffset = (name: string): number => {
    let offset = nameOffsets.get(name);
    if (offset === undefined) {
      offset = stringsBytes;
      const bytes = encoder.encode(`${name}\0`);
      strings.push(bytes);
      stringsBytes += bytes.length;
      nameOffsets.set(name, offset);
    }
    return offset;
  };

  const writeNode = (n: FdtNode, path: string): void => {
    structure.u32(FDT_BEGIN_NODE);
    structure.padded(encoder.encode(`${n.name}\0`));
    for (const [name, value] of Object.entries(n.props)) {
      checkPropertyName(name, path);
      structure.u32(FDT_PROP);
      structure.u32(value.length);
      structure.u32(nameOffset(name));
      structure.padded(value);
    }
    const seen = new Set<string>();
    for (const child of n.children) {
      checkNodeName(child.name, path);
      if (seen.has(child.name)) {
        fail(`"${path}" has two children named "${child.name}"`);
      }
      seen.add(child.name);
      writeNode(child, childPath(path, child.name));
    }
    structure.u32(FDT_END_NODE);
  };
  writeNode(root, "/");
  structure.u32(FDT_END);
  const structBlock = structure.done();

  const offRsvmap = HEADER_BYTES; // already 8-byte aligned (§5.6)
  const offStruct = offRsvmap + (reservations.length + 1) * RESERVATION_BYTES;
  const offStrings = offStruct + structBlock.length;
  const totalSize = offStrings + stringsBytes;
  const limit = options.maxBytes ?? 0xffff_ffff;
  if (totalSize > limit) {
    fail(`blob of ${totalSize} bytes exceeds the limit of ${limit} bytes`);
  }

  const out = new Uint8Array(totalSize);
  const view = new DataView(out.buffer);
  const header = [
    FDT_MAGIC,
    totalSize,
    offStruct,
    offStrings,
    offRsvmap,
    FDT_VERSION,
    FDT_LAST_COMP_VERSION,
    bootCpuidPhys,
    stringsBytes,
    structBlock.length,
  ];
  header.forEach((v, i) => view.setUint32(i * 4, v));
  reservations.forEach((r, i) => {
    view.setBigUint64(offRsvmap + i * RESERVATION_BYTES, r.address);
    view.setBigUint64(offRsvmap + i * RESERVATION_BYTES + 8, r.size);
  });
  // The terminating zero entry is already zero.
  out.set(structBlock, offStruct);
  let at = offStrings;
  for (const s of strings) {
    out.set(s, at);
    at += s.length;
  }
  return out;
}
