/**
 * A growable code buffer with labels, fixups and relocations, shared by the
 * backends. Internal to `src/ir/`.
 *
 * @module
 */

/** A label: an index into the assembler's label table. */
export type Label = number;

/** A place in the code that must be patched once `label` is bound. */
export interface Fixup {
  /** Byte offset of the instruction or field to patch. */
  at: number;
  /** The label it refers to. */
  label: Label;
  /** Backend-specific kind of patch. */
  kind: string;
}

/** Bytes, labels, fixups and 64-bit code-relative relocations. */
export class Assembler {
  #bytes = new Uint8Array(4096);
  #view = new DataView(this.#bytes.buffer);
  #length = 0;
  #labels: (number | undefined)[] = [];
  #fixups: Fixup[] = [];
  #relocations: number[] = [];

  /** Current offset. */
  get offset(): number {
    return this.#length;
  }

  #reserve(n: number): void {
    if (this.#length + n <= this.#bytes.length) return;
    let size = this.#bytes.length * 2;
    while (size < this.#length + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.#bytes.subarray(0, this.#length));
    this.#bytes = grown;
    this.#view = new DataView(grown.buffer);
  }

  /** Append bytes. */
  emit(bytes: ArrayLike<number>): void {
    this.#reserve(bytes.length);
    for (let i = 0; i < bytes.length; i++) {
      this.#bytes[this.#length++] = bytes[i]! & 0xff;
    }
  }

  /** Append a little-endian 32-bit word. */
  emit32(word: number): void {
    this.#reserve(4);
    this.#view.setUint32(this.#length, word >>> 0, true);
    this.#length += 4;
  }

  /** Append zero bytes until the offset is a multiple of `alignment`. */
  align(alignment: number, fill = 0): void {
    while (this.#length % alignment !== 0) this.emit([fill]);
  }

  /** A new, unbound label. */
  label(): Label {
    this.#labels.push(undefined);
    return this.#labels.length - 1;
  }

  /** Bind a label to the current offset (or to `at`, e.g. past the end for bss). */
  bind(label: Label, at: number = this.#length): void {
    if (this.#labels[label] !== undefined) {
      throw new Error(`Cannot bind label ${label}: it is already bound`);
    }
    this.#labels[label] = at;
  }

  /** Offset of a bound label. */
  position(label: Label): number {
    const at = this.#labels[label];
    if (at === undefined) {
      throw new Error(`Cannot resolve label ${label}: it is never bound`);
    }
    return at;
  }

  /** Record a fixup at `at` (default: the current offset). */
  fixup(label: Label, kind: string, at: number = this.#length): void {
    this.#fixups.push({ at, label, kind });
  }

  /** Append a 64-bit code-relative address of `label` and record a relocation. */
  pointer(label: Label): void {
    this.#relocations.push(this.#length);
    this.fixup(label, "abs64");
    this.emit(new Uint8Array(8));
  }

  /** Read a little-endian 32-bit word. */
  read32(at: number): number {
    return this.#view.getUint32(at, true);
  }

  /** Write a little-endian 32-bit word. */
  write32(at: number, word: number): void {
    this.#view.setUint32(at, word >>> 0, true);
  }

  /**
   * Patch every fixup (`abs64` here, the rest through `patch`) and return
   * the code and relocations.
   */
  finish(
    patch: (fixup: Fixup, target: number) => void,
  ): { code: Uint8Array; relocations: number[] } {
    const view = this.#view;
    for (const f of this.#fixups) {
      const target = this.position(f.label);
      if (f.kind === "abs64") view.setBigUint64(f.at, BigInt(target), true);
      else patch(f, target);
    }
    return {
      code: this.#bytes.slice(0, this.#length),
      relocations: [...this.#relocations],
    };
  }
}
