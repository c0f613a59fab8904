/**
 * Writer for `newc` cpio archives, the format Linux unpacks as an initramfs.
 *
 * Format (see the kernel's `Documentation/driver-api/early-userspace/
 * buffer-format.rst`): each entry is a 110-byte ASCII header (the magic
 * `070701` and 13 fields of 8 hex digits), the NUL-terminated path padded
 * to a multiple of 4 bytes, then the data padded to a multiple of 4 bytes.
 * The archive ends with an entry named `TRAILER!!!`.
 *
 * Output is reproducible: uid, gid and mtime default to 0, inode numbers
 * count up from 1 in insertion order.
 *
 * @module
 */

/** Magic of the `newc` format (no checksums). */
const NEWC_MAGIC = "070701";
/** Size of a `newc` header in bytes. */
const NEWC_HEADER_SIZE = 110;
/** Name of the entry that ends the archive. */
const TRAILER = "TRAILER!!!";

/** File type bits of `st_mode` (`<sys/stat.h>`). */
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
/** Mask of the file type bits. */
const S_IFMT = 0o170000;

/** Header fields after the magic, in order, each 8 hex digits. */
const NEWC_FIELDS = [
  "ino",
  "mode",
  "uid",
  "gid",
  "nlink",
  "mtime",
  "filesize",
  "devmajor",
  "devminor",
  "rdevmajor",
  "rdevminor",
  "namesize",
  "check",
] as const;

/** Ownership and permission options shared by all entry kinds. */
export interface CpioEntryOptions {
  /** Permission bits, e.g. `0o755` (file type bits are added by the writer). */
  mode?: number;
  /** Owner user id (default 0). */
  uid?: number;
  /** Owner group id (default 0). */
  gid?: number;
  /** Modification time in seconds since the epoch (default 0). */
  mtime?: number;
}

/** A device node to create. */
export interface CpioDeviceOptions extends CpioEntryOptions {
  /** Character or block device. */
  type: "char" | "block";
  /** Device major number. */
  major: number;
  /** Device minor number. */
  minor: number;
}

interface Entry {
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  nlink: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Uint8Array;
  /** Directory made because a child needed it; an explicit `dir()` may replace it. */
  implicit: boolean;
}

const EMPTY_ENTRY: Readonly<Entry> = {
  mode: 0,
  uid: 0,
  gid: 0,
  mtime: 0,
  nlink: 1,
  rdevMajor: 0,
  rdevMinor: 0,
  data: new Uint8Array(0),
  implicit: false,
};

const encoder = new TextEncoder();

function align4(n: number): number {
  return (n + 3) & ~3;
}

function hex8(value: number, field: string, path: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(
      `Cannot write cpio entry '${path}': ${field} ${value} does not fit in 32 bits`,
    );
  }
  return value.toString(16).padStart(8, "0");
}

/**
 * Builds a `newc` cpio archive in memory. Paths are stored without a leading
 * `/`; missing parent directories are added automatically (mode `0o755`)
 * because the kernel's unpacker does not create them.
 *
 * @example
 * ```ts
 * import { CpioWriter } from "./cpio.ts";
 * const cpio = new CpioWriter()
 *   .file("/init", new Uint8Array([0x7f, 0x45, 0x4c, 0x46]), { mode: 0o755 })
 *   .dir("/proc")
 *   .symlink("/bin/sh", "busybox")
 *   .device("/dev/console", { type: "char", major: 5, minor: 1 });
 * const archive = cpio.bytes();
 * console.assert(new TextDecoder().decode(archive.subarray(0, 6)) === "070701");
 * const compressed = await cpio.gzip();
 * console.assert(compressed[0] === 0x1f && compressed[1] === 0x8b);
 * ```
 */
export class CpioWriter {
  #entries = new Map<string, Entry>();

  /** Number of entries added so far, implicit parent directories included. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Adds a regular file (default mode `0o644`).
   *
   * @example
   * ```ts
   * import { CpioWriter } from "./cpio.ts";
   * new CpioWriter().file("etc/hostname", new TextEncoder().encode("vm\n"));
   * ```
   */
  file(path: string, data: Uint8Array, options: CpioEntryOptions = {}): this {
    return this.#add(path, S_IFREG, 0o644, options, { data });
  }

  /**
   * Adds a directory (default mode `0o755`).
   *
   * @example
   * ```ts
   * import { CpioWriter } from "./cpio.ts";
   * new CpioWriter().dir("/tmp", { mode: 0o1777 });
   * ```
   */
  dir(path: string, options: CpioEntryOptions = {}): this {
    return this.#add(path, S_IFDIR, 0o755, options, { nlink: 2 });
  }

  /**
   * Adds a symbolic link pointing at `target` (default mode `0o777`).
   *
   * @example
   * ```ts
   * import { CpioWriter } from "./cpio.ts";
   * new CpioWriter().symlink("/bin/sh", "busybox");
   * ```
   */
  symlink(path: string, target: string, options: CpioEntryOptions = {}): this {
    return this.#add(path, S_IFLNK, 0o777, options, {
      data: encoder.encode(target),
    });
  }

  /**
   * Adds a character or block device node (default mode `0o600`).
   *
   * @example
   * ```ts
   * import { CpioWriter } from "./cpio.ts";
   * new CpioWriter().device("/dev/null", {
   *   type: "char", major: 1, minor: 3, mode: 0o666,
   * });
   * ```
   */
  device(path: string, options: CpioDeviceOptions): this {
    const type = options.type === "char" ? S_IFCHR : S_IFBLK;
    return this.#add(path, type, 0o600, options, {
      rdevMajor: options.major,
      rdevMinor: options.minor,
    });
  }

  /**
   * Returns the archive, `TRAILER!!!` included.
   *
   * @example
   * ```ts
   * import { CpioWriter } from "./cpio.ts";
   * const empty = new CpioWriter().bytes();
   * console.assert(empty.length === 124); // header + "TRAILER!!!\0" padded
   * ```
   */
  bytes(): Uint8Array {
    const entries = [...this.#entries].map(([path, entry]) => ({
      path,
      name: encoder.encode(path),
      entry,
    }));
    entries.push({
      path: TRAILER,
      name: encoder.encode(TRAILER),
      entry: { ...EMPTY_ENTRY },
    });
    let total = 0;
    for (const { name, entry } of entries) {
      total += align4(NEWC_HEADER_SIZE + name.length + 1) +
        align4(entry.data.length);
    }
    const out = new Uint8Array(total);
    let offset = 0;
    for (const [index, { path, name, entry }] of entries.entries()) {
      const isTrailer = index === entries.length - 1;
      const fields: Record<(typeof NEWC_FIELDS)[number], number> = {
        ino: isTrailer ? 0 : index + 1,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        nlink: entry.nlink,
        mtime: entry.mtime,
        filesize: entry.data.length,
        devmajor: 0, // the device holding the file: meaningless here
        devminor: 0,
        rdevmajor: entry.rdevMajor,
        rdevminor: entry.rdevMinor,
        namesize: name.length + 1,
        check: 0, // only used by the "070702" variant
      };
      const header = NEWC_MAGIC +
        NEWC_FIELDS.map((field) => hex8(fields[field], field, path)).join("");
      offset += encoder.encodeInto(header, out.subarray(offset)).written;
      out.set(name, offset);
      offset = align4(offset + name.length + 1);
      out.set(entry.data, offset);
      offset = align4(offset + entry.data.length);
    }
    return out;
  }

  /**
   * Returns the archive compressed with gzip, as Linux accepts it for an
   * initramfs.
   *
   * @example
   * ```ts
   * import { CpioWriter } from "./cpio.ts";
   * const gz = await new CpioWriter().dir("proc").gzip();
   * console.assert(gz[0] === 0x1f);
   * ```
   */
  async gzip(): Promise<Uint8Array> {
    const stream = new Blob([this.bytes() as Uint8Array<ArrayBuffer>]).stream()
      .pipeThrough(new CompressionStream("gzip"));
    return await new Response(stream).bytes();
  }

  #add(
    path: string,
    type: number,
    defaultMode: number,
    options: CpioEntryOptions,
    extra: Partial<Pick<Entry, "data" | "nlink" | "rdevMajor" | "rdevMinor">>,
  ): this {
    const clean = normalizePath(path);
    const existing = this.#entries.get(clean);
    if (existing && !(existing.implicit && type === S_IFDIR)) {
      throw new Error(
        `Cannot add '${clean}' to the cpio archive: the path is already present`,
      );
    }
    const slash = clean.lastIndexOf("/");
    if (slash > 0) this.#parent(clean.slice(0, slash));
    const entry: Entry = {
      mode: type | ((options.mode ?? defaultMode) & 0o7777),
      uid: options.uid ?? 0,
      gid: options.gid ?? 0,
      mtime: options.mtime ?? 0,
      nlink: extra.nlink ?? 1,
      rdevMajor: extra.rdevMajor ?? 0,
      rdevMinor: extra.rdevMinor ?? 0,
      data: extra.data ?? new Uint8Array(0),
      implicit: false,
    };
    this.#entries.set(clean, entry);
    return this;
  }

  #parent(dir: string): void {
    const existing = this.#entries.get(dir);
    if (existing) {
      if ((existing.mode & S_IFMT) !== S_IFDIR) {
        throw new Error(
          `Cannot add entries below '${dir}' to the cpio archive: it is not a directory`,
        );
      }
      return;
    }
    const slash = dir.lastIndexOf("/");
    if (slash > 0) this.#parent(dir.slice(0, slash));
    this.#entries.set(dir, {
      ...EMPTY_ENTRY,
      mode: S_IFDIR | 0o755,
      nlink: 2,
      implicit: true,
    });
  }
}

function normalizePath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0 || parts.includes("..")) {
    throw new Error(
      `Cannot add '${path}' to the cpio archive: the path must name something below the root without '..'`,
    );
  }
  return parts.join("/");
}
