/**
 * Image layers: a layer blob (a tar archive, plain, gzip'd or zstd'd) read
 * as a stream of {@linkcode LayerEntry} values for the filesystem layer
 * (`src/vfs/`). Whiteouts (`.wh.NAME`, `.wh..wh..opq`) pass through as plain
 * entries: applying them is the filesystem's business (OCI image spec,
 * layer.md "Whiteouts").
 *
 * @module
 */

import type { LayerEntry } from "../vfs/layer.ts";
import {
  decodeTar,
  decodeTarBytes,
  type TarMember,
  type TarMemberBytes,
} from "./tar.ts";

/** OCI and Docker layer media types (OCI image spec, layer.md and media-types.md). */
export const LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
  "application/vnd.docker.image.rootfs.diff.tar",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);

/** gzip's magic bytes (RFC 1952 section 2.3.1: ID1 ID2). */
const GZIP_MAGIC = [0x1f, 0x8b];
/** zstd's frame magic number 0xFD2FB528, little-endian (RFC 8878 section 3.1.1). */
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

/** How a layer blob is compressed. */
export type LayerCompression = "none" | "gzip" | "zstd";

/** Options of {@linkcode readLayer}. */
export interface ReadLayerOptions {
  /**
   * Whether to yield the layer's root directory entry (`./`); it has no path
   * of its own, so it is skipped by default.
   */
  keepRoot?: boolean;
}

function startsWith(bytes: Uint8Array, magic: number[]): boolean {
  return magic.every((b, i) => bytes[i] === b);
}

/**
 * Splits off the first bytes of a stream (to sniff its compression) and
 * returns them with a stream that yields all bytes, those first.
 */
async function peek(
  stream: ReadableStream<Uint8Array>,
  want: number,
): Promise<[Uint8Array, ReadableStream<Uint8Array>]> {
  const reader = stream.getReader();
  const head: Uint8Array[] = [];
  let have = 0;
  let done = false;
  while (have < want) {
    const r = await reader.read();
    if (r.done) {
      done = true;
      break;
    }
    head.push(r.value);
    have += r.value.length;
  }
  const first = new Uint8Array(have);
  let at = 0;
  for (const h of head) {
    first.set(h, at);
    at += h.length;
  }
  let sentHead = false;
  const all = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sentHead) {
        sentHead = true;
        if (first.length > 0) controller.enqueue(first);
        if (done) controller.close();
        return;
      }
      const r = await reader.read();
      if (r.done) controller.close();
      else controller.enqueue(r.value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return [first, all];
}

/**
 * The compression of a layer from its first bytes; the media type only
 * decides when the bytes say nothing (an empty blob).
 *
 * @example
 * ```ts
 * import { sniffCompression } from "./layer.ts";
 * console.log(sniffCompression(new Uint8Array([0x1f, 0x8b, 8, 0]))); // "gzip"
 * ```
 */
export function sniffCompression(
  head: Uint8Array,
  mediaType = "",
): LayerCompression {
  if (startsWith(head, GZIP_MAGIC)) return "gzip";
  if (startsWith(head, ZSTD_MAGIC)) return "zstd";
  if (head.length === 0) {
    if (/gzip$/.test(mediaType)) return "gzip";
    if (/zstd$/.test(mediaType)) return "zstd";
  }
  return "none";
}

/**
 * A zstd decompressor from `node:zlib`, loaded on first use: `node:zlib`
 * and `node:stream` cost start-up time that gzip and plain layers do not
 * need.
 */
async function zstdDecompressor(): Promise<
  ReadableWritablePair<Uint8Array, Uint8Array>
> {
  const [{ createZstdDecompress }, { Duplex }] = await Promise.all([
    import("node:zlib"),
    import("node:stream"),
  ]);
  if (typeof createZstdDecompress !== "function") {
    throw new Error(
      "Cannot decompress a zstd layer: this runtime's node:zlib has no zstd (use a gzip image)",
    );
  }
  return Duplex.toWeb(
    createZstdDecompress(),
  ) as unknown as ReadableWritablePair<
    Uint8Array,
    Uint8Array
  >;
}

/** `stream` piped through a transform made (asynchronously) on first read. */
function lazilyPiped(
  stream: ReadableStream<Uint8Array>,
  make: () => Promise<ReadableWritablePair<Uint8Array, Uint8Array>>,
): ReadableStream<Uint8Array> {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      reader ??= stream.pipeThrough(await make()).getReader();
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel(reason) {
      await (reader ?? stream).cancel(reason);
    },
  });
}

/**
 * Decompresses a stream. gzip uses the Web `DecompressionStream`; zstd uses
 * `node:zlib`, since Deno 2.9's `DecompressionStream` does not know `"zstd"`.
 */
export function decompress(
  stream: ReadableStream<Uint8Array>,
  compression: LayerCompression,
): ReadableStream<Uint8Array> {
  switch (compression) {
    case "none":
      return stream;
    case "gzip":
      return stream.pipeThrough(
        new DecompressionStream("gzip") as unknown as ReadableWritablePair<
          Uint8Array,
          Uint8Array
        >,
      );
    case "zstd":
      return lazilyPiped(stream, zstdDecompressor);
    default: {
      const never: never = compression;
      throw new Error(`Cannot decompress: unknown compression "${never}"`);
    }
  }
}

/**
 * Normalizes a tar path: no leading `/` or `./`, no `.` or empty
 * components. A `..` component is an error: a layer must not write outside
 * the root. Returns `""` for the root itself.
 *
 * @example
 * ```ts
 * import { normalizeLayerPath } from "./layer.ts";
 * console.log(normalizeLayerPath("./usr//bin/")); // "usr/bin"
 * ```
 */
export function normalizeLayerPath(name: string): string {
  const parts: string[] = [];
  for (const part of name.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      throw new Error(
        `Cannot read the layer entry "${name}": its path leaves the root`,
      );
    }
    parts.push(part);
  }
  return parts.join("/");
}

/**
 * A stream of one chunk.
 *
 * @example
 * ```ts
 * import { bytesStream } from "./layer.ts";
 * console.log(await new Response(bytesStream(new Uint8Array([104, 105]))).text()); // hi
 * ```
 */
export function bytesStream(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      if (bytes.length > 0) controller.enqueue(bytes);
      controller.close();
    },
  });
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

async function readAll(body: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(body).arrayBuffer());
}

/**
 * Reads a layer blob as a stream of entries. `blob` may be gzip- or
 * zstd-compressed or plain (sniffed from its first bytes); `mediaType` must
 * be a layer media type ({@linkcode LAYER_MEDIA_TYPES}). Whiteouts and hard
 * links pass through as entries; symlink targets are kept as stored, hard
 * link targets are normalized like paths. A file's data is read whole.
 *
 * @example
 * ```ts
 * import { readLayer } from "./layer.ts";
 * import { encodeTar } from "./tar.ts";
 * const tar = await encodeTar([{ name: "etc/", kind: "directory" }]);
 * for await (const e of readLayer(tar, "application/vnd.oci.image.layer.v1.tar")) {
 *   console.log(e.type, e.path); // directory etc
 * }
 * ```
 */
export async function* readLayer(
  blob: ReadableStream<Uint8Array> | Uint8Array,
  mediaType: string,
  options: ReadLayerOptions = {},
): AsyncGenerator<LayerEntry> {
  if (!LAYER_MEDIA_TYPES.has(mediaType)) {
    if (blob instanceof ReadableStream) await blob.cancel();
    throw new Error(
      `Cannot read the layer: unsupported media type "${mediaType}"${
        mediaType.includes("encrypted") ? " (encrypted layers)" : ""
      }`,
    );
  }
  if (blob instanceof Uint8Array) {
    yield* readLayerBytes(blob, mediaType, options);
    return;
  }
  const [head, stream] = await peek(blob, ZSTD_MAGIC.length);
  const compression = sniffCompression(head, mediaType);
  try {
    for await (const m of decodeTar(decompress(stream, compression))) {
      const entry = layerEntry(m, options);
      if (entry === undefined || m.kind !== "file") await m.body.cancel();
      if (entry === undefined) continue;
      if (m.kind === "file") entry.data = await readAll(m.body);
      yield entry;
    }
  } catch (e) {
    throw layerError(e, compression);
  }
}

/**
 * {@linkcode readLayer} of a blob in memory: decompressed whole, then read
 * with {@linkcode decodeTarBytes}, without a stream per member. The entries
 * are the same as the streaming path's.
 */
async function* readLayerBytes(
  blob: Uint8Array,
  mediaType: string,
  options: ReadLayerOptions,
): AsyncGenerator<LayerEntry> {
  const compression = sniffCompression(
    blob.subarray(0, ZSTD_MAGIC.length),
    mediaType,
  );
  let members: TarMemberBytes[];
  try {
    const tar = compression === "none"
      ? blob
      : await readAll(decompress(bytesStream(blob), compression));
    members = await decodeTarBytes(tar);
  } catch (e) {
    throw layerError(e, compression);
  }
  try {
    for (const m of members) {
      const entry = layerEntry(m, options);
      if (entry === undefined) continue;
      if (m.kind === "file") entry.data = m.data;
      yield entry;
    }
  } catch (e) {
    throw layerError(e, compression);
  }
}

/**
 * The entry of a tar member, without its data; undefined for the root
 * (unless `keepRoot`). Throws for a hard link to the root.
 */
function layerEntry(
  m: Omit<TarMember, "body">,
  options: ReadLayerOptions,
): LayerEntry | undefined {
  const path = normalizeLayerPath(m.name);
  if (path === "" && !options.keepRoot) return undefined;
  const entry: LayerEntry = {
    path,
    type: m.kind,
    mode: m.mode,
    uid: m.uid,
    gid: m.gid,
    mtimeMs: m.mtimeMs,
  };
  if (m.kind === "symlink") entry.linkTarget = m.linkName ?? "";
  if (m.kind === "hardlink") {
    entry.linkTarget = normalizeLayerPath(m.linkName ?? "");
    if (entry.linkTarget === "") {
      throw new Error(
        `Cannot read the layer entry "${m.name}": a hard link to the root`,
      );
    }
  }
  if (m.kind === "char" || m.kind === "block") {
    entry.devMajor = m.devMajor;
    entry.devMinor = m.devMinor;
  }
  if (m.xattrs) entry.xattrs = m.xattrs;
  return entry;
}

/** A layer reading error, named as such with the layer's compression. */
function layerError(e: unknown, compression: LayerCompression): Error {
  const message = (e as Error).message;
  if (message.startsWith("Cannot read the layer")) return e as Error;
  return new Error(
    `Cannot read the layer (${compression === "none" ? "tar" : compression}): ${
      lowerFirst(message.replace(/\.$/, ""))
    }`,
    { cause: e },
  );
}
