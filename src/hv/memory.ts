/**
 * Guest physical memory as seen by the host: bounds-checked accessors over the
 * mapped regions. Devices read and write the guest only through this class;
 * who maps the memory (the hypervisor layer) is not its business.
 *
 * Addresses are `bigint` guest-physical addresses. `read`/`write` may stop
 * short at the end of a region and return the count; `readExact`/`writeExact`
 * finish or throw a {@linkcode GuestMemoryError}.
 *
 * @module
 */

/** A guest access that fell outside guest RAM or came up short. */
export class GuestMemoryError extends Error {
  /** The guest-physical address of the access. */
  readonly addr: bigint;
  /** Bytes the access wanted. */
  readonly expected: number;
  /** Bytes it could complete. */
  readonly completed: number;

  /** Builds the error for an access of `expected` bytes at `addr`. */
  constructor(
    action: string,
    addr: bigint,
    expected: number,
    completed: number,
  ) {
    super(
      `Cannot ${action} ${expected} bytes at guest address 0x${
        addr.toString(16)
      }: only ${completed} bytes are guest RAM`,
    );
    this.name = "GuestMemoryError";
    this.addr = addr;
    this.expected = expected;
    this.completed = completed;
  }
}

/** One contiguous range of guest RAM and the host bytes behind it. */
export interface MemoryRegion {
  /** Guest-physical address of the first byte. */
  base: bigint;
  /** The host view of the region's bytes. */
  bytes: Uint8Array;
}

/**
 * Guest RAM made of one or more regions.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "./memory.ts";
 * const mem = new GuestMemory([{ base: 0n, bytes: new Uint8Array(4096) }]);
 * mem.setU32(0x10n, 0xdeadbeef);
 * console.log(mem.getU32(0x10n).toString(16)); // deadbeef
 * ```
 */
export class GuestMemory {
  #regions: { base: bigint; end: bigint; bytes: Uint8Array; view: DataView }[];

  /** Wraps `regions`; they must not overlap. */
  constructor(regions: MemoryRegion[]) {
    this.#regions = regions.map((r) => ({
      base: r.base,
      end: r.base + BigInt(r.bytes.byteLength),
      bytes: r.bytes,
      view: new DataView(
        r.bytes.buffer,
        r.bytes.byteOffset,
        r.bytes.byteLength,
      ),
    })).sort((a, b) => (a.base < b.base ? -1 : 1));
    for (let i = 1; i < this.#regions.length; i++) {
      if (this.#regions[i]!.base < this.#regions[i - 1]!.end) {
        throw new Error("Cannot build guest memory: regions overlap");
      }
    }
  }

  /** The regions, lowest first. */
  get regions(): readonly MemoryRegion[] {
    return this.#regions.map((r) => ({ base: r.base, bytes: r.bytes }));
  }

  /** Total bytes of guest RAM. */
  get size(): bigint {
    return this.#regions.reduce((n, r) => n + (r.end - r.base), 0n);
  }

  /**
   * Cuts this object off from the host memory behind it (the VM unmapped
   * it): every later access fails as outside guest RAM instead of touching
   * unmapped memory.
   */
  revoke(): void {
    this.#regions = [];
  }

  #find(addr: bigint) {
    for (const r of this.#regions) {
      if (addr >= r.base && addr < r.end) return r;
    }
    return undefined;
  }

  /**
   * A host view of `len` guest bytes at `addr`, or undefined if the range is
   * not entirely inside one region. Writes through it reach the guest.
   */
  slice(addr: bigint, len: number): Uint8Array | undefined {
    const r = this.#find(addr);
    if (r === undefined || len < 0) return undefined;
    const off = addr - r.base;
    if (off + BigInt(len) > r.end - r.base) return undefined;
    return r.bytes.subarray(Number(off), Number(off) + len);
  }

  /** Copies guest bytes at `addr` into `dst` up to a region's end; returns the count. */
  read(addr: bigint, dst: Uint8Array): number {
    const r = this.#find(addr);
    if (r === undefined) return 0;
    const off = Number(addr - r.base);
    const n = Math.min(dst.byteLength, r.bytes.byteLength - off);
    dst.set(r.bytes.subarray(off, off + n));
    return n;
  }

  /** Copies `src` to guest `addr` up to a region's end; returns the count. */
  write(addr: bigint, src: Uint8Array): number {
    const r = this.#find(addr);
    if (r === undefined) return 0;
    const off = Number(addr - r.base);
    const n = Math.min(src.byteLength, r.bytes.byteLength - off);
    r.bytes.set(src.subarray(0, n), off);
    return n;
  }

  /** Fills `dst` from guest `addr`, or throws without reading anything. */
  readExact(addr: bigint, dst: Uint8Array): void {
    const s = this.slice(addr, dst.byteLength);
    if (s === undefined) {
      throw new GuestMemoryError(
        "read",
        addr,
        dst.byteLength,
        this.#available(addr, dst.byteLength),
      );
    }
    dst.set(s);
  }

  /** Writes all of `src` at guest `addr`, or throws without writing anything. */
  writeExact(addr: bigint, src: Uint8Array): void {
    const s = this.slice(addr, src.byteLength);
    if (s === undefined) {
      throw new GuestMemoryError(
        "write",
        addr,
        src.byteLength,
        this.#available(addr, src.byteLength),
      );
    }
    s.set(src);
  }

  /** How many of `len` bytes from `addr` lie in one region. */
  #available(addr: bigint, len: number): number {
    const r = this.#find(addr);
    if (r === undefined) return 0;
    const left = r.end - addr;
    return left < BigInt(len) ? Number(left) : len;
  }

  #at(addr: bigint, width: number, action: string) {
    const r = this.#find(addr);
    if (r === undefined || addr + BigInt(width) > r.end) {
      throw new GuestMemoryError(action, addr, width, 0);
    }
    return { view: r.view, off: Number(addr - r.base) };
  }

  /** Reads a byte. */
  getU8(addr: bigint): number {
    const { view, off } = this.#at(addr, 1, "read");
    return view.getUint8(off);
  }
  /** Reads a little-endian 16-bit value. */
  getU16(addr: bigint): number {
    const { view, off } = this.#at(addr, 2, "read");
    return view.getUint16(off, true);
  }
  /** Reads a little-endian 32-bit value. */
  getU32(addr: bigint): number {
    const { view, off } = this.#at(addr, 4, "read");
    return view.getUint32(off, true);
  }
  /** Reads a little-endian 64-bit value. */
  getU64(addr: bigint): bigint {
    const { view, off } = this.#at(addr, 8, "read");
    return view.getBigUint64(off, true);
  }
  /** Writes a byte. */
  setU8(addr: bigint, value: number): void {
    const { view, off } = this.#at(addr, 1, "write");
    view.setUint8(off, value);
  }
  /** Writes a little-endian 16-bit value. */
  setU16(addr: bigint, value: number): void {
    const { view, off } = this.#at(addr, 2, "write");
    view.setUint16(off, value, true);
  }
  /** Writes a little-endian 32-bit value. */
  setU32(addr: bigint, value: number): void {
    const { view, off } = this.#at(addr, 4, "write");
    view.setUint32(off, value, true);
  }
  /** Writes a little-endian 64-bit value. */
  setU64(addr: bigint, value: bigint): void {
    const { view, off } = this.#at(addr, 8, "write");
    view.setBigUint64(off, value, true);
  }
}
