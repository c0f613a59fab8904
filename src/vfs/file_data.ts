/**
 * The contents of a writable in-memory file: sparse, in chunks of
 * {@linkcode CHUNK_BYTES}, copy-on-write over shared bytes (an image
 * layer's file data is never written: the first write to a shared chunk
 * copies that chunk only). Holes cost nothing, so a guest truncating a file
 * to a terabyte allocates nothing; every allocation goes through a
 * reservation callback, so a quota bounds what a guest can make the host
 * hold.
 *
 * Invariants: a chunk's bytes past its array length are zero, and bytes
 * past the file size are zero (truncation clears them).
 *
 * @module
 */

import { ENXIO, FsError } from "./errno.ts";

/** Bytes of one chunk. */
export const CHUNK_BYTES = 64 * 1024;
/** Smallest owned chunk allocation, in bytes. */
const MIN_ALLOCATION_BYTES = 64;

/** Zeros for holes (never written: pieces handed out are only read). */
const ZEROS = new Uint8Array(CHUNK_BYTES);

/**
 * Takes (positive) or gives back (negative) bytes of allocation; throws an
 * {@linkcode FsError} (ENOSPC) when the bytes cannot be had.
 */
export type Reserve = (bytes: number) => void;

/**
 * Sparse, chunked, copy-on-write file contents.
 *
 * @example
 * ```ts
 * import { FileData } from "./file_data.ts";
 * const image = new TextEncoder().encode("hello world");
 * const data = FileData.fromShared(image);
 * data.write(0, new TextEncoder().encode("HELLO"));
 * console.log(new TextDecoder().decode(data.readAll())); // HELLO world
 * console.log(new TextDecoder().decode(image)); // hello world
 * ```
 */
export class FileData {
  #size = 0;
  /** Chunk index to bytes; absent chunks are holes. */
  #chunks = new Map<number, Uint8Array>();
  /** Chunks this object allocated (and may write in place). */
  #owned = new Set<number>();
  #ownedBytes = 0;
  #reserve: Reserve;

  /** Empty contents; `reserve` accounts for allocations (default: unlimited). */
  constructor(reserve: Reserve = () => {}) {
    this.#reserve = reserve;
  }

  /**
   * Contents that start as `bytes`, shared (viewed, never written, not
   * accounted).
   */
  static fromShared(bytes: Uint8Array, reserve?: Reserve): FileData {
    const data = new FileData(reserve);
    for (let at = 0, i = 0; at < bytes.length; at += CHUNK_BYTES, i++) {
      data.#chunks.set(i, bytes.subarray(at, at + CHUNK_BYTES));
    }
    data.#size = bytes.length;
    return data;
  }

  /** Size in bytes. */
  get size(): number {
    return this.#size;
  }

  /** Bytes this object allocated (what its reservations hold). */
  get ownedBytes(): number {
    return this.#ownedBytes;
  }

  /** Bytes of chunks held, shared or owned (for `st_blocks`). */
  get storedBytes(): number {
    let n = 0;
    for (const c of this.#chunks.values()) n += c.length;
    return n;
  }

  /**
   * Up to `length` bytes at `offset` as views (holes as zeros), fewer at
   * the end of the file. The views are valid until the next change.
   */
  read(offset: number, length: number): Uint8Array[] {
    const end = Math.min(this.#size, offset + Math.max(0, length));
    const pieces: Uint8Array[] = [];
    let at = offset;
    while (at < end) {
      const index = Math.floor(at / CHUNK_BYTES);
      const base = index * CHUNK_BYTES;
      const from = at - base;
      const to = Math.min(CHUNK_BYTES, end - base);
      const chunk = this.#chunks.get(index);
      const stored = chunk === undefined ? 0 : Math.min(to, chunk.length);
      if (chunk !== undefined && from < stored) {
        pieces.push(chunk.subarray(from, stored));
      }
      const zeroFrom = Math.max(from, stored);
      if (zeroFrom < to) pieces.push(ZEROS.subarray(0, to - zeroFrom));
      at = base + to;
    }
    return pieces;
  }

  /** All bytes as one new array. */
  readAll(): Uint8Array {
    const out = new Uint8Array(this.#size);
    let at = 0;
    for (const piece of this.read(0, this.#size)) {
      out.set(piece, at);
      at += piece.length;
    }
    return out;
  }

  /**
   * Writes `bytes` at `offset`, growing the file; returns the bytes
   * written. A reservation that fails after some bytes were written ends the
   * write short; one that fails first throws.
   */
  write(offset: number, bytes: Uint8Array): number {
    let done = 0;
    while (done < bytes.length) {
      const at = offset + done;
      const index = Math.floor(at / CHUNK_BYTES);
      const base = index * CHUNK_BYTES;
      const from = at - base;
      const n = Math.min(CHUNK_BYTES - from, bytes.length - done);
      let target: Uint8Array;
      try {
        target = this.#writable(index, from + n);
      } catch (e) {
        if (done > 0) break;
        throw e;
      }
      target.set(bytes.subarray(done, done + n), from);
      done += n;
      if (at + n > this.#size) this.#size = at + n;
    }
    return done;
  }

  /** Sets the size: shrinking drops and clears bytes past it, growing adds a hole. */
  truncate(size: number): void {
    if (size >= this.#size) {
      this.#size = size;
      return;
    }
    const last = size === 0 ? -1 : Math.floor((size - 1) / CHUNK_BYTES);
    for (const index of [...this.#chunks.keys()]) {
      if (index > last) this.#drop(index);
    }
    if (last >= 0) this.#clearFrom(last, size - last * CHUNK_BYTES);
    this.#size = size;
  }

  /** Makes `length` bytes at `offset` read as zeros (within the size). */
  zeroRange(offset: number, length: number): void {
    const end = Math.min(this.#size, offset + length);
    let at = offset;
    while (at < end) {
      const index = Math.floor(at / CHUNK_BYTES);
      const base = index * CHUNK_BYTES;
      const from = at - base;
      const to = Math.min(CHUNK_BYTES, end - base);
      const chunk = this.#chunks.get(index);
      if (chunk !== undefined && from < chunk.length) {
        if (from === 0 && to >= chunk.length) this.#drop(index);
        else {
          const stop = Math.min(to, chunk.length);
          this.#writable(index, stop).fill(0, from, stop);
        }
      }
      at = base + to;
    }
  }

  /** SEEK_DATA: the first data byte at or after `offset` (ENXIO if none). */
  seekData(offset: number): number {
    if (offset >= this.#size) throw new FsError(ENXIO);
    let best = Infinity;
    const first = Math.floor(offset / CHUNK_BYTES);
    for (const index of this.#chunks.keys()) {
      if (index >= first && index < best) best = index;
    }
    const at = Math.max(offset, best * CHUNK_BYTES);
    if (at >= this.#size) throw new FsError(ENXIO);
    return at;
  }

  /** SEEK_HOLE: the first hole at or after `offset`, or the size (ENXIO past it). */
  seekHole(offset: number): number {
    if (offset >= this.#size) throw new FsError(ENXIO);
    let index = Math.floor(offset / CHUNK_BYTES);
    while (this.#chunks.has(index)) index++;
    return Math.min(this.#size, Math.max(offset, index * CHUNK_BYTES));
  }

  /** Drops everything and gives back all reservations. */
  release(): void {
    for (const index of [...this.#chunks.keys()]) this.#drop(index);
    this.#size = 0;
  }

  /** Chunk `index` as an owned array of at least `length` bytes. */
  #writable(index: number, length: number): Uint8Array {
    const chunk = this.#chunks.get(index);
    const owned = this.#owned.has(index);
    if (owned && chunk !== undefined && chunk.length >= length) return chunk;
    const current = chunk?.length ?? 0;
    const wanted = owned ? Math.max(length, current * 2) : Math.max(
      length,
      current,
    );
    let capacity = MIN_ALLOCATION_BYTES;
    while (capacity < wanted) capacity *= 2;
    capacity = Math.min(CHUNK_BYTES, capacity);
    this.#reserve(capacity - (owned ? current : 0));
    const grown = new Uint8Array(capacity);
    if (chunk !== undefined) grown.set(chunk);
    this.#ownedBytes += capacity - (owned ? current : 0);
    this.#chunks.set(index, grown);
    this.#owned.add(index);
    return grown;
  }

  /** Clears chunk `index` from byte `from` on. */
  #clearFrom(index: number, from: number): void {
    const chunk = this.#chunks.get(index);
    if (chunk === undefined || chunk.length <= from) return;
    if (this.#owned.has(index)) chunk.fill(0, from);
    else this.#chunks.set(index, chunk.subarray(0, from));
  }

  #drop(index: number): void {
    const chunk = this.#chunks.get(index);
    if (chunk === undefined) return;
    this.#chunks.delete(index);
    if (this.#owned.delete(index)) {
      this.#ownedBytes -= chunk.length;
      this.#reserve(-chunk.length);
    }
  }
}
