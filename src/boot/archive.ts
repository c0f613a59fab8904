/**
 * Small readers for the archive formats kernel packages come in: `ar` (the
 * outer layer of a Debian `.deb`), tar (ustar with POSIX pax and GNU long-name
 * extensions; the inner layer of a `.deb` and the body of an Alpine `.apk`) and
 * gzip, including the concatenated gzip members an `.apk` is made of.
 *
 * Everything works on whole byte arrays: kernel packages are tens of
 * megabytes, which is fine to hold in memory once.
 *
 * @module
 */

import { gunzip as gunzipCallback, inflateRawSync } from "node:zlib";
import { promisify } from "node:util";
import { dirname, join, normalize, sep } from "node:path";

const gunzipAsync = promisify(gunzipCallback);

/** One member of an `ar` archive. */
export interface ArMember {
  /** Member name, with the trailing `/` of the GNU variant removed. */
  name: string;
  /** Member contents (a view into the archive). */
  data: Uint8Array;
}

/** Magic line at the start of every `ar` archive. */
const AR_MAGIC = "!<arch>\n";
/** Size of an `ar` member header in bytes. */
const AR_HEADER_SIZE = 60;
/** Size of a tar block in bytes. */
const TAR_BLOCK_SIZE = 512;
/** gzip member header: ID1 ID2 CM FLG MTIME(4) XFL OS (RFC 1952 §2.3). */
const GZIP_HEADER_BYTES = 10;
/** gzip member trailer: CRC32 and ISIZE (RFC 1952 §2.3). */
const GZIP_TRAILER_BYTES = 8;
/** gzip FLG bits (RFC 1952 §2.3.1): header CRC, extra field, name, comment. */
const GZIP_FHCRC = 0x02;
const GZIP_FEXTRA = 0x04;
const GZIP_FNAME = 0x08;
const GZIP_FCOMMENT = 0x10;

const decoder = new TextDecoder();

/**
 * Reads the members of an `ar` archive (the common format, as used by `.deb`).
 *
 * @example
 * ```ts
 * import { readAr } from "./archive.ts";
 * const text = "!<arch>\n" + "a.txt/".padEnd(16) + "0".padEnd(12) +
 *   "0".padEnd(6) + "0".padEnd(6) + "644".padEnd(8) + "2".padEnd(10) +
 *   "`\n" + "hi";
 * const members = readAr(new TextEncoder().encode(text));
 * console.assert(members[0]?.name === "a.txt");
 * ```
 */
export function readAr(bytes: Uint8Array): ArMember[] {
  if (decoder.decode(bytes.subarray(0, AR_MAGIC.length)) !== AR_MAGIC) {
    throw new Error("Cannot read ar archive: the '!<arch>' magic is missing");
  }
  const members: ArMember[] = [];
  let offset = AR_MAGIC.length;
  while (offset + AR_HEADER_SIZE <= bytes.length) {
    const header = decoder.decode(
      bytes.subarray(offset, offset + AR_HEADER_SIZE),
    );
    if (header.slice(58, 60) !== "`\n") {
      throw new Error(
        `Cannot read ar archive: bad member header at offset ${offset}`,
      );
    }
    const name = header.slice(0, 16).trimEnd().replace(/\/$/, "");
    const size = Number.parseInt(header.slice(48, 58).trim(), 10);
    const start = offset + AR_HEADER_SIZE;
    if (!Number.isSafeInteger(size) || start + size > bytes.length) {
      throw new Error(
        `Cannot read ar archive: member '${name}' runs past the end of the archive`,
      );
    }
    members.push({ name, data: bytes.subarray(start, start + size) });
    offset = start + size + (size % 2); // members are 2-byte aligned
  }
  return members;
}

/**
 * Decompresses gzip data, including several gzip members concatenated (the
 * Web `DecompressionStream` rejects data after the first member, which is
 * why this uses `node:zlib`).
 *
 * @example
 * ```ts
 * import { gunzip } from "./archive.ts";
 * const packed = await new Response(
 *   new Blob(["hello"]).stream().pipeThrough(new CompressionStream("gzip")),
 * ).bytes();
 * console.assert(new TextDecoder().decode(await gunzip(packed)) === "hello");
 * ```
 */
export async function gunzip(bytes: Uint8Array): Promise<Uint8Array> {
  const out = await gunzipAsync(bytes);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/**
 * Finds where the gzip member that starts at `start` ends: the offset just
 * past its trailer, where the next member (if any) begins. An Alpine `.apk`
 * is three members (signature, control, data) whose bytes are hashed and
 * signed one by one. Throws `Cannot read gzip member at offset N: ...` for
 * data that is not a whole gzip member.
 *
 * @example
 * ```ts
 * import { gzipMemberEnd } from "./archive.ts";
 * const member = await new Response(
 *   new Blob(["hello"]).stream().pipeThrough(new CompressionStream("gzip")),
 * ).bytes();
 * const two = new Uint8Array([...member, ...member]);
 * console.assert(gzipMemberEnd(two) === member.length);
 * console.assert(gzipMemberEnd(two, member.length) === two.length);
 * ```
 */
export function gzipMemberEnd(bytes: Uint8Array, start = 0): number {
  const fail = (detail: string): never => {
    throw new Error(`Cannot read gzip member at offset ${start}: ${detail}`);
  };
  if (
    bytes[start] !== 0x1f || bytes[start + 1] !== 0x8b || bytes[start + 2] !== 8
  ) {
    fail("no gzip header");
  }
  const flags = bytes[start + 3] ?? 0;
  let at = start + GZIP_HEADER_BYTES;
  if (flags & GZIP_FEXTRA) {
    at += 2 + (bytes[at] ?? 0) + ((bytes[at + 1] ?? 0) << 8);
  }
  for (const flag of [GZIP_FNAME, GZIP_FCOMMENT]) {
    if ((flags & flag) === 0) continue;
    const nul = bytes.indexOf(0, at);
    if (nul < 0) fail("the header runs past the end");
    at = nul + 1;
  }
  if (flags & GZIP_FHCRC) at += 2;
  if (at > bytes.length) fail("the header runs past the end");
  let consumed = 0;
  try {
    // Raw inflate stops at the end of the deflate stream and reports how
    // much input that took; whatever follows is left alone.
    const result = inflateRawSync(bytes.subarray(at), {
      info: true,
    }) as unknown as {
      engine: { bytesWritten: number };
    };
    consumed = result.engine.bytesWritten;
  } catch (error) {
    fail(`the compressed data is damaged (${(error as Error).message})`);
  }
  const end = at + consumed + GZIP_TRAILER_BYTES;
  if (end > bytes.length) fail("the member is truncated");
  return end;
}

/** Kind of a tar entry that this reader understands. */
export type TarEntryType = "file" | "directory" | "symlink" | "hardlink";

/** One entry of a tar archive. */
export interface TarEntry {
  /** Path inside the archive, without a leading `./` or `/`. */
  path: string;
  /** What the entry is. */
  type: TarEntryType;
  /** Permission bits (`0o755`, ...). */
  mode: number;
  /** File contents (empty for anything but files; a view into the archive). */
  data: Uint8Array;
  /** Target of a symlink or hard link (empty otherwise). */
  linkTarget: string;
}

function readString(bytes: Uint8Array, start: number, length: number): string {
  const field = bytes.subarray(start, start + length);
  const end = field.indexOf(0);
  return decoder.decode(end < 0 ? field : field.subarray(0, end));
}

function readNumber(bytes: Uint8Array, start: number, length: number): number {
  const first = bytes[start] ?? 0;
  if (first & 0x80) {
    // GNU base-256 encoding for values that do not fit in octal.
    let value = first & 0x7f;
    for (let i = 1; i < length; i++) {
      value = value * 256 + (bytes[start + i] ?? 0);
    }
    return value;
  }
  const text = readString(bytes, start, length).trim();
  return text === "" ? 0 : Number.parseInt(text, 8);
}

function checksumOk(header: Uint8Array): boolean {
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK_SIZE; i++) {
    sum += i >= 148 && i < 156 ? 0x20 : header[i] ?? 0;
  }
  return sum === readNumber(header, 148, 8);
}

function cleanPath(path: string): string {
  return path.replace(/^(\.\/|\/)+/, "").replace(/\/+$/, "");
}

/** Parses pax extended header records (`"<len> key=value\n"`). */
function parsePax(data: Uint8Array): Map<string, string> {
  const records = new Map<string, string>();
  let offset = 0;
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset);
    if (space < 0) break;
    const length = Number.parseInt(
      decoder.decode(data.subarray(offset, space)),
      10,
    );
    if (!Number.isSafeInteger(length) || length <= 0) break;
    const record = decoder.decode(
      data.subarray(space + 1, offset + length - 1),
    );
    const equals = record.indexOf("=");
    if (equals > 0) {
      records.set(record.slice(0, equals), record.slice(equals + 1));
    }
    offset += length;
  }
  return records;
}

/**
 * Reads the entries of an uncompressed tar archive: ustar, POSIX pax `path`
 * and `linkpath` records, and GNU `L`/`K` long names. Blocks of zeros between
 * entries are skipped rather than ending the archive, so the concatenated
 * tar segments of an Alpine `.apk` read as one archive. Device nodes, FIFOs
 * and unknown entry types are left out.
 *
 * @example
 * ```ts
 * import { readTar } from "./archive.ts";
 * const entries = readTar(new Uint8Array(1024)); // just the end marker
 * console.assert(entries.length === 0);
 * ```
 */
export function readTar(bytes: Uint8Array): TarEntry[] {
  const entries: TarEntry[] = [];
  let offset = 0;
  let longPath: string | undefined;
  let longLink: string | undefined;
  let pax = new Map<string, string>();
  while (offset + TAR_BLOCK_SIZE <= bytes.length) {
    const header = bytes.subarray(offset, offset + TAR_BLOCK_SIZE);
    if (header.every((b) => b === 0)) {
      offset += TAR_BLOCK_SIZE;
      continue;
    }
    if (!checksumOk(header)) {
      throw new Error(
        `Cannot read tar archive: bad header checksum at offset ${offset}`,
      );
    }
    const size = readNumber(header, 124, 12);
    const start = offset + TAR_BLOCK_SIZE;
    if (start + size > bytes.length) {
      throw new Error(
        `Cannot read tar archive: entry at offset ${offset} runs past the end of the archive`,
      );
    }
    const data = bytes.subarray(start, start + size);
    offset = start + Math.ceil(size / TAR_BLOCK_SIZE) * TAR_BLOCK_SIZE;
    const typeFlag = String.fromCharCode(header[156] ?? 0);
    switch (typeFlag) {
      case "L":
        longPath = readString(data, 0, data.length);
        continue;
      case "K":
        longLink = readString(data, 0, data.length);
        continue;
      case "x":
        pax = parsePax(data);
        continue;
      case "g":
        continue;
    }
    const prefix = readString(header, 345, 155);
    const name = readString(header, 0, 100);
    const path = longPath ?? pax.get("path") ??
      (prefix && readString(header, 257, 5) === "ustar"
        ? `${prefix}/${name}`
        : name);
    const linkTarget = longLink ?? pax.get("linkpath") ??
      readString(header, 157, 100);
    longPath = longLink = undefined;
    pax = new Map();
    const type: TarEntryType | undefined = typeFlag === "0" ||
        typeFlag === "\0" || typeFlag === "7"
      ? "file"
      : typeFlag === "5"
      ? "directory"
      : typeFlag === "2"
      ? "symlink"
      : typeFlag === "1"
      ? "hardlink"
      : undefined;
    if (type === undefined) continue;
    entries.push({
      path: cleanPath(path),
      type,
      mode: readNumber(header, 100, 8) & 0o7777,
      data: type === "file" ? data : new Uint8Array(0),
      linkTarget: type === "hardlink" ? cleanPath(linkTarget) : linkTarget,
    });
  }
  return entries;
}

/**
 * Writes tar entries below a directory. Refuses entries that would land
 * outside it (`..` components, or a path through a symlink the archive made).
 *
 * @example
 * ```ts
 * import { extractTar } from "./archive.ts";
 * const dir = await Deno.makeTempDir();
 * await extractTar([{
 *   path: "etc/motd", type: "file", mode: 0o644, linkTarget: "",
 *   data: new TextEncoder().encode("hi\n"),
 * }], dir);
 * console.assert(await Deno.readTextFile(`${dir}/etc/motd`) === "hi\n");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function extractTar(
  entries: Iterable<TarEntry>,
  destDir: string,
): Promise<void> {
  const symlinks = new Set<string>();
  const made = new Set<string>();
  async function mkdirs(dir: string): Promise<void> {
    if (made.has(dir)) return;
    await Deno.mkdir(dir, { recursive: true });
    made.add(dir);
  }
  for (const entry of entries) {
    const relative = normalize(entry.path);
    if (relative === "." || relative === "") continue;
    if (relative.split(sep).includes("..") || relative.startsWith(sep)) {
      throw new Error(
        `Cannot extract '${entry.path}': the path leaves the destination directory`,
      );
    }
    const parts = relative.split(sep);
    for (let i = 1; i < parts.length; i++) {
      if (symlinks.has(parts.slice(0, i).join(sep))) {
        throw new Error(
          `Cannot extract '${entry.path}': the path goes through a symlink`,
        );
      }
    }
    const target = join(destDir, relative);
    switch (entry.type) {
      case "directory":
        await mkdirs(target);
        await Deno.chmod(target, entry.mode || 0o755);
        break;
      case "file":
        await mkdirs(dirname(target));
        await Deno.writeFile(target, entry.data, { mode: entry.mode });
        await Deno.chmod(target, entry.mode);
        break;
      case "symlink":
        await mkdirs(dirname(target));
        await Deno.remove(target).catch(() => {});
        await Deno.symlink(entry.linkTarget, target);
        symlinks.add(relative);
        break;
      case "hardlink": {
        const source = normalize(entry.linkTarget);
        if (source.split(sep).includes("..") || source.startsWith(sep)) {
          throw new Error(
            `Cannot extract '${entry.path}': the link target leaves the destination directory`,
          );
        }
        await mkdirs(dirname(target));
        await Deno.remove(target).catch(() => {});
        await Deno.link(join(destDir, source), target);
        break;
      }
      default: {
        const never: never = entry.type;
        throw new Error(
          `Cannot extract '${entry.path}': unknown type ${never}`,
        );
      }
    }
  }
}

/** Decompresses with an external tool, streaming input and output. */
async function decompressWith(
  command: string,
  bytes: Uint8Array,
): Promise<Uint8Array> {
  const child = new Deno.Command(command, {
    args: ["-dc"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writing = (async () => {
    const writer = child.stdin.getWriter();
    await writer.write(bytes);
    await writer.close();
  })();
  const [{ success, stdout, stderr }] = await Promise.all([
    child.output(),
    writing,
  ]);
  if (!success) {
    throw new Error(
      `Cannot decompress with ${command}: ${decoder.decode(stderr).trim()}`,
    );
  }
  return stdout;
}

/**
 * Unpacks the files of a Debian package (`ar` holding `data.tar`,
 * `data.tar.gz`, `data.tar.xz` or `data.tar.zst`) below `destDir`, like
 * `dpkg-deb -x`. gzip is handled here; xz and zstd need the `xz` or `zstd`
 * command.
 *
 * @example
 * ```ts ignore
 * import { extractDeb } from "./archive.ts";
 * await extractDeb(await Deno.readFile("linux-image.deb"), "/tmp/root");
 * ```
 */
export async function extractDeb(
  deb: Uint8Array,
  destDir: string,
): Promise<void> {
  const member = readAr(deb).find((m) =>
    /^data\.tar(\.(gz|xz|zst))?$/.test(m.name)
  );
  if (!member) {
    throw new Error("Cannot unpack Debian package: it has no data.tar member");
  }
  let tar: Uint8Array;
  if (member.name.endsWith(".gz")) tar = await gunzip(member.data);
  else if (member.name === "data.tar") tar = member.data;
  else {
    const tool = member.name.endsWith(".xz") ? "xz" : "zstd";
    try {
      tar = await decompressWith(tool, member.data);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      const aptPackage = tool === "xz" ? "xz-utils" : "zstd";
      throw new Error(
        `Cannot unpack Debian package: ${member.name} needs '${tool}' and it is not installed (apt-get install ${aptPackage}, or install dpkg for dpkg-deb)`,
      );
    }
  }
  await extractTar(readTar(tar), destDir);
}
