/**
 * Tar archives, read and written as streams. This is the one file that uses
 * the tar library (`npm:modern-tar`, see DESIGN.md); the rest of the image
 * layer sees only {@linkcode TarMember} and {@linkcode TarInput}, so that a
 * later switch of library (to `@std/tar`) changes this file alone.
 *
 * The library drops two things image layers carry: the ustar `devmajor` and
 * `devminor` fields of device nodes, and the exact bytes of PAX records (it
 * decodes every value as UTF-8, which garbles binary extended attributes such
 * as `security.capability`). A small header scanner in front of the library
 * sees the same bytes and recovers both, member by member, so that nothing is
 * parsed twice in ways that could disagree about where a member starts.
 *
 * Formats: POSIX.1-2001 pax (IEEE Std 1003.1, `pax` "ustar Interchange
 * Format" and "pax Extended Header"), with GNU long names (`L`, `K`) and
 * star's `SCHILY.xattr.*` records for extended attributes.
 *
 * @module
 */

import {
  createTarDecoder,
  packTar,
  type TarHeader,
  unpackTar,
} from "modern-tar";

/** The kinds of tar members initx reads and writes. */
export type TarMemberKind =
  | "file"
  | "directory"
  | "symlink"
  | "hardlink"
  | "char"
  | "block"
  | "fifo";

/** One member of a tar archive being read. */
export interface TarMember {
  /** Path as stored (after PAX and GNU long-name overrides), not normalized. */
  name: string;
  /** What the member is. */
  kind: TarMemberKind;
  /** Permission bits (`0o7777`). */
  mode: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Modification time, in milliseconds since the epoch. */
  mtimeMs: number;
  /** Size of the body in bytes (0 for all but files). */
  size: number;
  /** Target of a symlink or hard link. */
  linkName?: string;
  /** A device node's major number. */
  devMajor?: number;
  /** A device node's minor number. */
  devMinor?: number;
  /** Extended attributes from `SCHILY.xattr.*` PAX records, as raw bytes. */
  xattrs?: Record<string, Uint8Array>;
  /**
   * The member's contents. The reader must consume or cancel it before the
   * next member arrives.
   */
  body: ReadableStream<Uint8Array>;
}

/** One member of a tar archive to write. */
export interface TarInput {
  /** Path inside the archive (a directory's may end with `/`). */
  name: string;
  /** What the member is. */
  kind: TarMemberKind;
  /** Permission bits; default 0o644 for files, 0o755 for directories. */
  mode?: number;
  /** Owner; default 0. */
  uid?: number;
  /** Group; default 0. */
  gid?: number;
  /** Modification time in milliseconds since the epoch; default 0. */
  mtimeMs?: number;
  /** A file's contents. */
  data?: Uint8Array;
  /** Target of a symlink or hard link. */
  linkName?: string;
  /** A device node's major number. */
  devMajor?: number;
  /** A device node's minor number. */
  devMinor?: number;
  /** Extended attributes, written as `SCHILY.xattr.*` records (UTF-8 text). */
  xattrs?: Record<string, string>;
}

/** Tar blocks are 512 bytes (ustar header layout). */
const BLOCK_SIZE = 512;
/** ustar header fields: offset and length (pax "ustar Header Block"). */
const SIZE_FIELD = [124, 12] as const;
/** ustar header field `typeflag`. */
const TYPEFLAG_OFFSET = 156;
/** ustar header field `chksum`. */
const CHECKSUM_FIELD = [148, 8] as const;
/** ustar header field `devmajor`. */
const DEVMAJOR_FIELD = [329, 8] as const;
/** ustar header field `devminor`. */
const DEVMINOR_FIELD = [337, 8] as const;
/** Typeflags of metadata members that describe the next member. */
const PAX_LOCAL = 0x78; // 'x'
const PAX_GLOBAL = 0x67; // 'g'
const GNU_LONG_NAME = 0x4c; // 'L'
const GNU_LONG_LINK = 0x4b; // 'K'
/** Typeflags '1'..'6' (link, symlink, char, block, directory, fifo) carry no body. */
const BODYLESS_FIRST = 0x31;
const BODYLESS_LAST = 0x36;
/** Largest metadata member accepted (the library's own limit, 8 MiB). */
const MAX_META_BYTES = 8 * 1024 * 1024;
/** PAX record key prefix of extended attributes (star, GNU tar, Go). */
const XATTR_PREFIX = "SCHILY.xattr.";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What the scanner saw of one member header. */
interface ScannedHeader {
  devMajor: number;
  devMinor: number;
  xattrs: Map<string, Uint8Array> | undefined;
}

/** A ustar numeric field: octal text, or base-256 when the top bit is set. */
function readNumeric(block: Uint8Array, [offset, length]: readonly number[]) {
  let value = 0;
  if ((block[offset!]! & 0x80) !== 0) {
    value = block[offset!]! & 0x7f;
    for (let i = 1; i < length!; i++) value = value * 256 + block[offset! + i]!;
    return value;
  }
  for (let i = offset!; i < offset! + length!; i++) {
    const c = block[i]!;
    if (c === 0) break;
    if (c < 0x30 || c > 0x37) continue; // spaces pad the field
    value = value * 8 + (c - 0x30);
  }
  return value;
}

/** Parses PAX records (`LEN key=value\n`), keeping values as bytes. */
function parsePaxRecords(body: Uint8Array): Map<string, Uint8Array> {
  const records = new Map<string, Uint8Array>();
  let at = 0;
  while (at < body.length) {
    const space = body.indexOf(0x20, at);
    if (space < 0) break;
    const length = Number(decoder.decode(body.subarray(at, space)));
    if (!Number.isSafeInteger(length) || length <= 0) break;
    const end = at + length;
    if (end > body.length) break;
    const record = body.subarray(space + 1, end - 1); // drop the newline
    const eq = record.indexOf(0x3d);
    if (eq > 0) {
      records.set(decoder.decode(record.subarray(0, eq)), record.slice(eq + 1));
    }
    at = end;
  }
  return records;
}

/**
 * Walks tar headers in a byte stream without holding bodies, recording each
 * member's device numbers and raw extended attributes in order. It skips
 * exactly what the library skips: metadata members (`x`, `g`, `L`, `K`), and
 * bodies of the size their header (or a PAX `size` record) gives, none for
 * typeflags 1 to 6.
 */
class HeaderScanner {
  readonly headers: ScannedHeader[] = [];
  #block = new Uint8Array(BLOCK_SIZE);
  #blockFill = 0;
  #skip = 0;
  #meta: { type: number; data: Uint8Array; fill: number; size: number } | null =
    null;
  #local: Map<string, Uint8Array> | null = null;
  #global = new Map<string, Uint8Array>();
  #done = false;

  push(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length && !this.#done) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - i);
        this.#skip -= n;
        i += n;
        continue;
      }
      const meta = this.#meta;
      if (meta) {
        const n = Math.min(meta.data.length - meta.fill, chunk.length - i);
        meta.data.set(chunk.subarray(i, i + n), meta.fill);
        meta.fill += n;
        i += n;
        if (meta.fill === meta.data.length) this.#endMeta(meta);
        continue;
      }
      const n = Math.min(BLOCK_SIZE - this.#blockFill, chunk.length - i);
      this.#block.set(chunk.subarray(i, i + n), this.#blockFill);
      this.#blockFill += n;
      i += n;
      if (this.#blockFill === BLOCK_SIZE) {
        this.#blockFill = 0;
        this.#header(this.#block);
      }
    }
  }

  #header(block: Uint8Array): void {
    if (block.every((b) => b === 0)) {
      // End of archive (or damage, which the library reports).
      this.#done = true;
      return;
    }
    const type = block[TYPEFLAG_OFFSET]!;
    let size = readNumeric(block, SIZE_FIELD);
    if (
      type === PAX_LOCAL || type === PAX_GLOBAL || type === GNU_LONG_NAME ||
      type === GNU_LONG_LINK
    ) {
      if (size > MAX_META_BYTES) {
        this.#done = true; // the library throws on this
        return;
      }
      const padded = size + (-size & (BLOCK_SIZE - 1));
      this.#meta = { type, data: new Uint8Array(padded), fill: 0, size };
      if (padded === 0) this.#endMeta(this.#meta);
      return;
    }
    const paxSize = this.#local?.get("size") ?? this.#global.get("size");
    if (paxSize !== undefined) {
      const n = Number(decoder.decode(paxSize));
      if (Number.isSafeInteger(n) && n >= 0) size = n;
    }
    let xattrs: Map<string, Uint8Array> | undefined;
    for (const source of [this.#global, this.#local]) {
      for (const [key, value] of source ?? []) {
        if (!key.startsWith(XATTR_PREFIX)) continue;
        xattrs ??= new Map();
        xattrs.set(key.slice(XATTR_PREFIX.length), value);
      }
    }
    this.headers.push({
      devMajor: readNumeric(block, DEVMAJOR_FIELD),
      devMinor: readNumeric(block, DEVMINOR_FIELD),
      xattrs,
    });
    this.#local = null;
    const body = type >= BODYLESS_FIRST && type <= BODYLESS_LAST ? 0 : size;
    this.#skip = body + (-body & (BLOCK_SIZE - 1));
  }

  #endMeta(meta: { type: number; data: Uint8Array; size: number }): void {
    this.#meta = null;
    if (meta.type === PAX_LOCAL) {
      this.#local = parsePaxRecords(meta.data.subarray(0, meta.size));
    } else if (meta.type === PAX_GLOBAL) {
      for (const [k, v] of parsePaxRecords(meta.data.subarray(0, meta.size))) {
        this.#global.set(k, v);
      }
    }
  }
}

const KIND_OF: Record<string, TarMemberKind> = {
  "file": "file",
  "link": "hardlink",
  "symlink": "symlink",
  "character-device": "char",
  "block-device": "block",
  "directory": "directory",
  "fifo": "fifo",
};

const TYPE_OF: Record<TarMemberKind, NonNullable<TarHeader["type"]>> = {
  file: "file",
  hardlink: "link",
  symlink: "symlink",
  char: "character-device",
  block: "block-device",
  directory: "directory",
  fifo: "fifo",
};

/**
 * Reads an uncompressed tar stream member by member. Checksums are checked
 * and a truncated archive is an error (the library's strict mode).
 *
 * @example
 * ```ts
 * import { decodeTar, encodeTar } from "./tar.ts";
 * import { bytesStream } from "./layer.ts";
 * const tar = await encodeTar([{ name: "a.txt", kind: "file", data: new Uint8Array([104, 105]) }]);
 * for await (const m of decodeTar(bytesStream(tar))) {
 *   console.log(m.name, new Uint8Array(await new Response(m.body).arrayBuffer()));
 * }
 * ```
 */
export async function* decodeTar(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<TarMember> {
  const scanner = new HeaderScanner();
  const tap = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      scanner.push(chunk);
      controller.enqueue(chunk);
    },
  });
  const members = stream.pipeThrough(tap).pipeThrough(
    createTarDecoder({ strict: true }),
  );
  for await (const entry of members) {
    yield {
      ...describeMember(entry.header, scanner.headers.shift()),
      body: entry.body,
    };
  }
}

/** A {@linkcode TarMember} read whole: its contents are in memory. */
export interface TarMemberBytes extends Omit<TarMember, "body"> {
  /** The member's contents (empty for all but files). */
  data: Uint8Array;
}

/**
 * Reads a whole uncompressed tar archive in memory, with the same checks as
 * {@linkcode decodeTar} (checksums; a truncated archive is an error). It
 * skips the per-member streams, several times faster for the many small
 * members of an image layer.
 *
 * @example
 * ```ts
 * import { decodeTarBytes, encodeTar } from "./tar.ts";
 * const tar = await encodeTar([{ name: "a.txt", kind: "file", data: new Uint8Array([104, 105]) }]);
 * const [member] = await decodeTarBytes(tar);
 * console.log(member!.name, member!.data); // a.txt Uint8Array(2) [ 104, 105 ]
 * ```
 */
export async function decodeTarBytes(
  bytes: Uint8Array,
): Promise<TarMemberBytes[]> {
  const scanner = new HeaderScanner();
  scanner.push(bytes);
  const entries = await unpackTar(bytes, { strict: true });
  return entries.map((entry, i) => ({
    ...describeMember(entry.header, scanner.headers[i]),
    data: entry.data ?? new Uint8Array(0),
  }));
}

/** A member's description from the library's header and the scanner's. */
function describeMember(
  h: TarHeader,
  scanned: ScannedHeader | undefined,
): Omit<TarMember, "body"> {
  const kind = KIND_OF[h.type ?? "file"] ?? "file";
  let xattrs: Record<string, Uint8Array> | undefined;
  if (scanned?.xattrs) xattrs = Object.fromEntries(scanned.xattrs);
  const device = kind === "char" || kind === "block";
  return {
    name: h.name,
    kind,
    mode: (h.mode ?? 0) & 0o7777,
    uid: h.uid ?? 0,
    gid: h.gid ?? 0,
    mtimeMs: h.mtime ? h.mtime.getTime() : 0,
    size: h.size,
    linkName: h.linkname || undefined,
    devMajor: device ? scanned?.devMajor ?? 0 : undefined,
    devMinor: device ? scanned?.devMinor ?? 0 : undefined,
    xattrs,
  };
}

/** Writes a field of a header block as zero-padded octal with a NUL. */
function writeOctal(
  block: Uint8Array,
  [offset, length]: readonly number[],
  value: number,
) {
  const text = value.toString(8).padStart(length! - 1, "0");
  block.set(encoder.encode(text), offset!);
  block[offset! + length! - 1] = 0;
}

/** Recomputes a header block's checksum (pax "chksum": spaces while summing). */
function writeChecksum(block: Uint8Array) {
  const [offset, length] = CHECKSUM_FIELD;
  block.fill(0x20, offset, offset + length);
  let sum = 0;
  for (const b of block) sum += b;
  const text = sum.toString(8).padStart(6, "0");
  block.set(encoder.encode(text), offset);
  block[offset + 6] = 0;
  block[offset + 7] = 0x20;
}

/**
 * Writes a tar archive (pax format where a name or record needs it) of
 * `members`, in order, and returns its bytes.
 *
 * @example
 * ```ts
 * import { encodeTar } from "./tar.ts";
 * const tar = await encodeTar([
 *   { name: "bin/", kind: "directory" },
 *   { name: "bin/sh", kind: "symlink", linkName: "busybox" },
 * ]);
 * console.log(tar.length); // 2048: two headers and the end-of-archive blocks
 * ```
 */
export async function encodeTar(
  members: Iterable<TarInput>,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (const m of members) {
    const pax: Record<string, string> = {};
    for (const [k, v] of Object.entries(m.xattrs ?? {})) {
      pax[XATTR_PREFIX + k] = v;
    }
    const data = m.kind === "file" ? m.data ?? new Uint8Array(0) : undefined;
    const header: TarHeader = {
      name: m.name,
      type: TYPE_OF[m.kind],
      size: data?.length ?? 0,
      mode: m.mode ?? (m.kind === "directory" ? 0o755 : 0o644),
      uid: m.uid ?? 0,
      gid: m.gid ?? 0,
      mtime: new Date(m.mtimeMs ?? 0),
      linkname: m.linkName,
      pax: Object.keys(pax).length > 0 ? pax : undefined,
    };
    // One member at a time, without the library's end-of-archive blocks, so
    // that device numbers (which the library does not write) can be set in
    // the member's own header, the last block before its (empty) body.
    const one = await packTar([{ header, body: data }]);
    const member = one.subarray(0, one.length - 2 * BLOCK_SIZE);
    if (m.kind === "char" || m.kind === "block") {
      const block = member.subarray(member.length - BLOCK_SIZE);
      writeOctal(block, DEVMAJOR_FIELD, m.devMajor ?? 0);
      writeOctal(block, DEVMINOR_FIELD, m.devMinor ?? 0);
      writeChecksum(block);
    }
    parts.push(member);
  }
  parts.push(new Uint8Array(2 * BLOCK_SIZE));
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
