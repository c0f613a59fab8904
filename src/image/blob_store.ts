/**
 * Content-addressed blob storage: `ROOT/blobs/ALG/HEX`, the blob layout of
 * an OCI image layout (image-layout.md "Blobs"). A blob enters the store
 * through a temporary file under `ROOT/tmp/` and is renamed into `blobs/`
 * only after its size and digest match, so an interrupted or corrupt
 * download never leaves a bad blob; reading verifies the digest again, so a
 * blob damaged on disk later is found and removed.
 *
 * @module
 */

import type { Hash } from "node:crypto";
import { join } from "node:path";
import { checkDigest, digestOf } from "./oci.ts";

/** Options of {@linkcode BlobStore.put}. */
export interface PutOptions {
  /** The digest the content must have; without it the store computes one (sha256). */
  digest?: string;
  /** The size the content must have. */
  size?: number;
  /** Called as bytes arrive, with the running count. */
  onBytes?: (received: number) => void;
}

/** A stored blob's digest and size. */
export interface StoredBlob {
  /** `algorithm:hex`. */
  digest: string;
  /** Bytes. */
  size: number;
}

/** Temporary files older than this are left over from a dead process. */
const STALE_TEMP_MS = 24 * 60 * 60 * 1000;

/**
 * Blobs up to this size are read whole and checked with Web Crypto; larger
 * ones stream through an incremental hash (`node:crypto`).
 */
const WHOLE_READ_BYTES = 64 * 1024 * 1024;

/**
 * An incremental hash for `digest`'s algorithm. `node:crypto` is loaded on
 * first use, not at start-up: its loading is a large share of a cold `initx
 * run`, which reads its (small) cached blobs whole.
 */
async function hashFor(digest: string | undefined): Promise<[Hash, string]> {
  const algorithm = digest ? digest.slice(0, digest.indexOf(":")) : "sha256";
  const { createHash } = await import("node:crypto");
  return [createHash(algorithm), algorithm];
}

async function exists(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/**
 * A directory of blobs named by digest.
 *
 * @example
 * ```ts
 * import { BlobStore } from "./blob_store.ts";
 * const store = new BlobStore(await Deno.makeTempDir());
 * const blob = await store.putBytes(new TextEncoder().encode("hi"));
 * console.log(await store.has(blob.digest)); // true
 * ```
 */
export class BlobStore {
  #root: string;
  #wholeReadBytes: number;

  /** A store rooted at `root` (created on first write). */
  /**
   * `root`: the directory. `options.wholeReadBytes`: blobs up to this size
   * are read whole by {@linkcode BlobStore.open} (default 64 MiB).
   */
  constructor(root: string, options: { wholeReadBytes?: number } = {}) {
    this.#root = root;
    this.#wholeReadBytes = options.wholeReadBytes ?? WHOLE_READ_BYTES;
  }

  /** The store's directory. */
  get root(): string {
    return this.#root;
  }

  /** Where the blob with `digest` lives (whether or not it is there). */
  path(digest: string): string {
    checkDigest(digest);
    const colon = digest.indexOf(":");
    return join(
      this.#root,
      "blobs",
      digest.slice(0, colon),
      digest.slice(colon + 1),
    );
  }

  /** Whether the blob is stored (with `size` bytes, when given). */
  async has(digest: string, size?: number): Promise<boolean> {
    const info = await exists(this.path(digest));
    return info !== undefined && info.isFile &&
      (size === undefined || info.size === size);
  }

  /**
   * Stores a stream's bytes. With `options.digest`, a blob already stored
   * is kept and the stream cancelled; a stream whose size or digest differs
   * from what `options` expects is an error and leaves nothing behind.
   */
  async put(
    stream: ReadableStream<Uint8Array>,
    options: PutOptions = {},
  ): Promise<StoredBlob> {
    const expected = options.digest && checkDigest(options.digest);
    if (expected && await this.has(expected, options.size)) {
      await stream.cancel();
      return {
        digest: expected,
        size: (await Deno.stat(this.path(expected))).size,
      };
    }
    const tmpDir = join(this.#root, "tmp");
    await Deno.mkdir(tmpDir, { recursive: true });
    const tmp = join(tmpDir, `${crypto.randomUUID()}.partial`);
    const [hash, algorithm] = await hashFor(expected || undefined);
    let received = 0;
    const what = expected ? `the blob ${expected}` : "a blob";
    try {
      const file = await Deno.open(tmp, { write: true, createNew: true });
      try {
        for await (const chunk of stream) {
          received += chunk.length;
          if (options.size !== undefined && received > options.size) {
            throw new Error(
              `Cannot store ${what}: more than the expected ${options.size} bytes arrived`,
            );
          }
          hash.update(chunk);
          let at = 0;
          while (at < chunk.length) at += await file.write(chunk.subarray(at));
          options.onBytes?.(received);
        }
      } finally {
        file.close();
      }
      if (options.size !== undefined && received !== options.size) {
        throw new Error(
          `Cannot store ${what}: got ${received} of ${options.size} bytes (the download was cut short)`,
        );
      }
      const digest = `${algorithm}:${hash.digest("hex")}`;
      if (expected && digest !== expected) {
        throw new Error(
          `Cannot store ${what}: its content has the digest ${digest} (corrupt download or a lying source)`,
        );
      }
      const target = this.path(digest);
      await Deno.mkdir(join(target, ".."), { recursive: true });
      await Deno.rename(tmp, target);
      return { digest, size: received };
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
  }

  /** {@linkcode BlobStore.put} for bytes in memory. */
  async putBytes(
    bytes: Uint8Array,
    options: PutOptions = {},
  ): Promise<StoredBlob> {
    return await this.put(
      new ReadableStream({
        start(c) {
          c.enqueue(bytes);
          c.close();
        },
      }),
      { size: bytes.length, ...options },
    );
  }

  /**
   * Opens a stored blob as a stream of verified bytes. A blob of up to 64
   * MiB (`wholeReadBytes`) is read and checked before this resolves; a larger one streams and
   * is checked at its end. A blob that no longer matches its name is
   * removed, and the call (or the stream) fails.
   */
  async open(digest: string): Promise<ReadableStream<Uint8Array>> {
    const opened = await this.#open(digest, true);
    if (!(opened instanceof Uint8Array)) return opened;
    return new ReadableStream({
      start(controller) {
        if (opened.length > 0) controller.enqueue(opened);
        controller.close();
      },
    });
  }

  /**
   * The verified bytes of a blob up to `wholeReadBytes` (else, with
   * `streamLarger`, its checking stream).
   */
  async #open(
    digest: string,
    streamLarger: boolean,
  ): Promise<Uint8Array | ReadableStream<Uint8Array>> {
    const path = this.path(digest);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(
          `Cannot open the blob ${digest}: it is not in the cache`,
        );
      }
      throw e;
    }
    const damaged = async (got: string) => {
      await Deno.remove(path).catch(() => {});
      return new Error(
        `Cannot read the blob ${digest} from the cache: its content has the digest ${got}; the damaged blob was removed, pull the image again`,
      );
    };
    let size: number;
    try {
      size = (await file.stat()).size;
    } catch (e) {
      file.close();
      throw e;
    }
    if (size <= this.#wholeReadBytes || !streamLarger) {
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await new Response(file.readable).arrayBuffer());
      } catch (e) {
        throw new Error(`Cannot read the blob ${digest} from the cache`, {
          cause: e,
        });
      }
      const got = await digestOf(bytes, digest.slice(0, digest.indexOf(":")));
      if (got !== digest) throw await damaged(got);
      return bytes;
    }
    let hashing: [Hash, string];
    try {
      hashing = await hashFor(digest);
    } catch (e) {
      file.close();
      throw e;
    }
    const [hash, algorithm] = hashing;
    const check = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        hash.update(chunk);
        controller.enqueue(chunk);
      },
      async flush(controller) {
        const got = `${algorithm}:${hash.digest("hex")}`;
        if (got !== digest) controller.error(await damaged(got));
      },
    });
    return file.readable.pipeThrough(check);
  }

  /** Reads a stored blob whole, verified (any size: it is held in memory). */
  async readBytes(digest: string): Promise<Uint8Array> {
    return await this.#open(digest, false) as Uint8Array;
  }

  /** Blobs up to this size are read whole by {@linkcode BlobStore.open}. */
  get wholeReadBytes(): number {
    return this.#wholeReadBytes;
  }

  /** Removes a blob (no error when it is not there). */
  async remove(digest: string): Promise<void> {
    await Deno.remove(this.path(digest)).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }

  /** Every stored blob's digest and size. */
  async list(): Promise<StoredBlob[]> {
    const out: StoredBlob[] = [];
    const blobs = join(this.#root, "blobs");
    if (!await exists(blobs)) return out;
    for await (const alg of Deno.readDir(blobs)) {
      if (!alg.isDirectory) continue;
      for await (const e of Deno.readDir(join(blobs, alg.name))) {
        if (!e.isFile) continue;
        const digest = `${alg.name}:${e.name}`;
        try {
          checkDigest(digest);
        } catch {
          continue; // not ours
        }
        const info = await Deno.stat(join(blobs, alg.name, e.name));
        out.push({ digest, size: info.size });
      }
    }
    return out;
  }

  /**
   * Removes temporary files of downloads that ended without finishing
   * (a killed process); those younger than `olderThanMs` (default a day)
   * may belong to a download still running.
   */
  async cleanTemp(olderThanMs: number = STALE_TEMP_MS): Promise<number> {
    const tmpDir = join(this.#root, "tmp");
    let removed = 0;
    if (!await exists(tmpDir)) return removed;
    const now = Date.now();
    for await (const e of Deno.readDir(tmpDir)) {
      const p = join(tmpDir, e.name);
      const info = await Deno.stat(p).catch(() => undefined);
      if (!info || now - (info.mtime?.getTime() ?? 0) < olderThanMs) continue;
      await Deno.remove(p, { recursive: true }).catch(() => {});
      removed++;
    }
    return removed;
  }
}
