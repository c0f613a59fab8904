/**
 * The image cache and resolver: turns an image reference into an
 * {@linkcode Image} (manifest, config, layers) whose blobs are in the cache.
 *
 * The cache is itself an OCI image layout (image-layout.md) under initx's
 * cache directory (`images/`): blobs by digest, shared between all images,
 * and an `index.json` naming each pulled image by its canonical reference
 * (`org.opencontainers.image.ref.name`, e.g.
 * `docker.io/library/busybox:latest`) and platform. Tools that read OCI
 * layouts read it too (`skopeo inspect oci:DIR:NAME`).
 *
 * Sources: registries (the distribution API), OCI layout directories, OCI
 * archives and `docker save` archives. When `busybox` is not cached and its
 * registry cannot be reached, an equivalent image is built from the host's
 * static busybox ({@linkcode buildBusyboxImage}) so that a fresh machine
 * without a network still runs containers.
 *
 * @module
 */

import { join } from "node:path";
import { defaultCacheDir } from "../boot/kernel.ts";
import type { LayerEntry } from "../vfs/layer.ts";
import {
  importDockerArchive,
  type ImportedImage,
  importOciArchive,
  importOciLayout,
} from "./archive.ts";
import { BlobStore } from "./blob_store.ts";
import { buildBusyboxImage, BUILT_FROM_ANNOTATION } from "./default_image.ts";
import { readLayer } from "./layer.ts";
import {
  checkDigest,
  type Descriptor,
  formatPlatform,
  hostPlatform,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  MEDIA_TYPES,
  parseManifestOrIndex,
  parsePlatform,
  type Platform,
  platformMatches,
  REF_NAME_ANNOTATION,
  selectPlatform,
} from "./oci.ts";
import {
  DOCKER_HUB,
  familiarName,
  formatReference,
  type ImageReference,
  parseReference,
  type RegistryReference,
} from "./reference.ts";
import {
  RegistryClient,
  type RegistryClientOptions,
  registryReachable,
} from "./registry.ts";

/** What the resolver is doing, for a progress display. */
export type ImageProgress =
  | {
    /** A step, in words (pulling, building the default image, ...). */
    kind: "status";
    /** One line, ready to print. */
    message: string;
  }
  | {
    /** Bytes of a blob arriving. */
    kind: "download";
    /** The blob. */
    digest: string;
    /** Bytes so far. */
    received: number;
    /** Bytes in all. */
    total: number;
    /** True when the blob is complete (or was already cached). */
    done: boolean;
  };

/** When {@linkcode ImageStore.resolve} asks a registry. */
export type PullPolicy = "missing" | "always" | "never";

/** Options of {@linkcode ImageStore.resolve}. */
export interface ResolveOptions {
  /** `os/arch[/variant]` or a platform; default: Linux on the host's CPU. */
  platform?: string | Platform;
  /**
   * `missing` (default): use the cached image, pull if there is none;
   * `always`: ask the registry again; `never`: only the cache.
   */
  pull?: PullPolicy;
  /** Progress events; the CLI prints `status` messages on stderr. */
  onProgress?: (event: ImageProgress) => void;
  /** Registry client options (plain HTTP, credentials). */
  registry?: RegistryClientOptions;
  /**
   * Build `busybox` from the host's static busybox when it is not cached
   * and the registry cannot be reached (default true).
   */
  defaultImage?: boolean;
  /** How long the registry reachability check waits; default 3000 ms. */
  reachabilityTimeoutMs?: number;
  /**
   * Tells whether a registry can be reached, instead of asking it
   * ({@linkcode registryReachable}); for tests and callers that know.
   */
  reachable?: (registry: string) => Promise<boolean>;
}

/** Where an image came from. */
export type ImageSource =
  | "cache"
  | "registry"
  | "built"
  | "oci"
  | "oci-archive"
  | "docker-archive";

/** One layer of an image. */
export interface ImageLayer {
  /** The layer blob's descriptor. */
  descriptor: Descriptor;
  /** The uncompressed layer's digest, from the config. */
  diffId?: string;
  /** The blob, digest verified as it is read. */
  open(): Promise<ReadableStream<Uint8Array>>;
  /** The layer's entries ({@linkcode readLayer}). */
  entries(): AsyncIterable<LayerEntry>;
}

/** A resolved image: all its blobs are in the cache. */
export interface Image {
  /** The canonical reference that was resolved. */
  reference: string;
  /** Where it came from this time. */
  source: ImageSource;
  /** The manifest's digest. */
  digest: string;
  /** The manifest. */
  manifest: ImageManifest;
  /** The config (`config.config` holds Entrypoint, Cmd, Env, WorkingDir, User). */
  config: ImageConfig;
  /** The image's platform. */
  platform: Platform;
  /** Layers, base first. */
  layers: ImageLayer[];
}

/** A cached image, as listed by {@linkcode ImageStore.list}. */
export interface ImageSummary {
  /** Canonical reference. */
  reference: string;
  /** Short name (`busybox`, `alpine:3.20`). */
  name: string;
  /** Manifest digest. */
  digest: string;
  /** Platform. */
  platform: Platform;
  /** Compressed size of its layers. */
  size: number;
  /** When it was stored. */
  stored?: string;
  /** The host file it was built from, for the default image. */
  builtFrom?: string;
}

/** Options of {@linkcode ImageStore}. */
export interface ImageStoreOptions {
  /** The cache directory; default `images/` in initx's cache dir (`INITX_CACHE`). */
  dir?: string;
}

/** Annotation with the time an image entered the cache. */
const STORED_ANNOTATION = "dev.initx.stored";
/** Layers downloaded at once. */
const PARALLEL_DOWNLOADS = 3;
/** Smallest interval between two download events of one blob. */
const PROGRESS_INTERVAL_MS = 100;

/** The reference that gets the built-in fallback. */
const DEFAULT_IMAGE = {
  registry: DOCKER_HUB,
  repository: "library/busybox",
  tag: "latest",
};

/**
 * Whether `ref` names the image that can be built offline (`busybox`,
 * `docker.io/library/busybox:latest`).
 *
 * @example
 * ```ts
 * import { isDefaultImage } from "./store.ts";
 * import { parseReference } from "./reference.ts";
 * const ref = parseReference("busybox");
 * console.log(ref.kind === "registry" && isDefaultImage(ref)); // true
 * ```
 */
export function isDefaultImage(ref: RegistryReference): boolean {
  return ref.registry === DEFAULT_IMAGE.registry &&
    ref.repository === DEFAULT_IMAGE.repository &&
    ref.tag === DEFAULT_IMAGE.tag && ref.digest === undefined;
}

/** The default location of the image cache. */
export function defaultImageCacheDir(): string {
  return join(defaultCacheDir(), "images");
}

/**
 * One line for a progress event (what a log or a non-TTY stderr shows).
 *
 * @example
 * ```ts
 * import { describeProgress } from "./store.ts";
 * console.log(describeProgress({ kind: "download", digest: "sha256:" + "ab".repeat(32), received: 512, total: 1024, done: false }));
 * // sha256:abababababab 512 B / 1.0 KiB
 * ```
 */
export function describeProgress(event: ImageProgress): string {
  if (event.kind === "status") return event.message;
  const short = event.digest.slice(0, 19);
  if (event.done) return `${short} done (${formatBytes(event.total)})`;
  return `${short} ${formatBytes(event.received)} / ${
    formatBytes(event.total)
  }`;
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

/**
 * Runs `fn` on the items, `limit` at a time. After a failure no new item
 * starts, and the call settles only when the running ones have (so that no
 * download is still writing when the error reaches the caller).
 */
async function mapLimit<T>(
  items: T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      try {
        await fn(items[next++]!);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(
    Array.from({ length: Math.min(limit, items.length) }, worker),
  );
  for (const r of results) if (r.status === "rejected") throw r.reason;
}

/**
 * initx's image cache.
 *
 * @example
 * ```ts ignore
 * import { ImageStore } from "./store.ts";
 * const images = new ImageStore();
 * const image = await images.resolve("busybox", {
 *   onProgress: (e) => e.kind === "status" && console.error(e.message),
 * });
 * console.log(image.config.config?.Cmd);
 * for (const layer of image.layers) {
 *   for await (const entry of layer.entries()) console.log(entry.path);
 * }
 * ```
 */
export class ImageStore {
  #dir: string;
  #blobs: BlobStore;

  /** The cache at `options.dir` (default {@linkcode defaultImageCacheDir}). */
  constructor(options: ImageStoreOptions = {}) {
    this.#dir = options.dir ?? defaultImageCacheDir();
    this.#blobs = new BlobStore(this.#dir);
  }

  /** The cache directory (an OCI image layout). */
  get dir(): string {
    return this.#dir;
  }

  /** The cache's blobs. */
  get blobs(): BlobStore {
    return this.#blobs;
  }

  /**
   * Resolves `reference` to an image whose blobs are all in the cache,
   * pulling or importing what is missing.
   */
  async resolve(
    reference: string | ImageReference,
    options: ResolveOptions = {},
  ): Promise<Image> {
    const ref = typeof reference === "string"
      ? parseReference(reference)
      : reference;
    const platform = typeof options.platform === "string"
      ? parsePlatform(options.platform)
      : options.platform ?? hostPlatform();
    const status = (message: string) =>
      options.onProgress?.({ kind: "status", message });
    const canonical = formatReference(ref);
    if (ref.kind !== "registry") {
      const importOptions = {
        tag: ref.tag,
        index: ref.index,
        platform,
        onMessage: status,
      };
      status(`reading ${canonical}`);
      const imported = ref.kind === "oci"
        ? await importOciLayout(this.#blobs, ref.path, importOptions)
        : ref.kind === "oci-archive"
        ? await importOciArchive(this.#blobs, ref.path, importOptions)
        : await importDockerArchive(this.#blobs, ref.path, importOptions);
      return await this.#image(canonical, ref.kind, imported, platform);
    }
    const policy = options.pull ?? "missing";
    const cached = await this.#lookup(canonical, platform);
    if (cached && policy !== "always") {
      return await this.#image(canonical, "cache", cached, platform);
    }
    if (policy === "never") {
      throw new Error(
        `Cannot find ${familiarName(ref)} (${
          formatPlatform(platform)
        }) in the image cache ${this.#dir}, and pulling is off`,
      );
    }
    const fallback = (options.defaultImage ?? true) && isDefaultImage(ref) &&
      platformMatches(hostPlatform(), platform);
    if (fallback) {
      const reachable = options.reachable
        ? await options.reachable(ref.registry)
        : await registryReachable(ref.registry, {
          timeoutMs: options.reachabilityTimeoutMs,
          insecure: options.registry?.insecure,
        });
      if (!reachable) {
        if (cached) {
          status(
            `${ref.registry} cannot be reached: using the cached ${
              familiarName(ref)
            }`,
          );
          return await this.#image(canonical, "cache", cached, platform);
        }
        status(
          `${
            familiarName(ref)
          } is not cached and ${ref.registry} cannot be reached: building it from the host's static busybox (Debian's busybox-static)`,
        );
        const built = await buildBusyboxImage(this.#blobs);
        const imported = {
          manifestDigest: built.stored.digest,
          manifest: built.manifest,
        };
        await this.#record(canonical, {
          mediaType: MEDIA_TYPES.ociManifest,
          digest: built.stored.digest,
          size: built.stored.size,
          platform,
        });
        status(
          `built ${familiarName(ref)} from ${built.busybox} as ${
            built.stored.digest.slice(0, 19)
          } in ${this.#dir}`,
        );
        return await this.#image(canonical, "built", imported, platform);
      }
    }
    const pulled = await this.#pull(ref, platform, options);
    await this.#record(canonical, {
      mediaType: pulled.mediaType,
      digest: pulled.manifestDigest,
      size: pulled.size,
      platform,
    });
    return await this.#image(canonical, "registry", pulled, platform);
  }

  async #pull(
    ref: RegistryReference,
    platform: Platform,
    options: ResolveOptions,
  ): Promise<ImportedImage & { mediaType: string; size: number }> {
    const status = (message: string) =>
      options.onProgress?.({ kind: "status", message });
    const client = new RegistryClient(ref.registry, options.registry);
    const name = familiarName(ref);
    status(
      `pulling ${name} (${formatPlatform(platform)}) from ${ref.registry}`,
    );
    let fetched = await client.getManifest(
      ref.repository,
      ref.digest ?? ref.tag ?? "latest",
    );
    let doc = parseManifestOrIndex(fetched.bytes, fetched.mediaType);
    if (doc.kind === "index") {
      const chosen = selectPlatform(doc.index, platform);
      fetched = await client.getManifest(ref.repository, chosen.digest);
      doc = parseManifestOrIndex(fetched.bytes, fetched.mediaType);
      if (doc.kind !== "manifest") {
        throw new Error(
          `Cannot pull ${name}: the index entry for ${
            formatPlatform(platform)
          } is another index`,
        );
      }
    }
    const manifest = doc.manifest;
    await this.#blobs.putBytes(fetched.bytes, { digest: fetched.digest });
    const blobs = [manifest.config, ...manifest.layers];
    for (const d of blobs) checkDigest(d.digest);
    await mapLimit(blobs, PARALLEL_DOWNLOADS, async (d) => {
      const total = d.size;
      if (await this.#blobs.has(d.digest, d.size)) {
        options.onProgress?.({
          kind: "download",
          digest: d.digest,
          received: total,
          total,
          done: true,
        });
        return;
      }
      const res = await client.getBlob(ref.repository, d.digest);
      let last = 0;
      await this.#blobs.put(res.body ?? new ReadableStream(), {
        digest: d.digest,
        size: d.size,
        onBytes: (received) => {
          const now = performance.now();
          if (now - last < PROGRESS_INTERVAL_MS) return;
          last = now;
          options.onProgress?.({
            kind: "download",
            digest: d.digest,
            received,
            total,
            done: false,
          });
        },
      }).catch((e) => {
        throw new Error(
          `Cannot pull ${name}: ${
            (e as Error).message
          }; nothing of it was kept`,
        );
      });
      options.onProgress?.({
        kind: "download",
        digest: d.digest,
        received: total,
        total,
        done: true,
      });
    });
    return {
      manifestDigest: fetched.digest,
      manifest,
      mediaType: manifest.mediaType ?? fetched.mediaType,
      size: fetched.bytes.length,
    };
  }

  async #image(
    reference: string,
    source: ImageSource,
    imported: ImportedImage,
    want: Platform,
  ): Promise<Image> {
    const manifest = imported.manifest;
    const configBytes = await this.#blobs.readBytes(manifest.config.digest);
    let config: ImageConfig;
    try {
      config = JSON.parse(new TextDecoder().decode(configBytes));
    } catch (e) {
      throw new Error(
        `Cannot parse the config of ${reference}: ${(e as Error).message}`,
      );
    }
    const platform: Platform = {
      os: config.os || want.os,
      architecture: config.architecture || want.architecture,
    };
    if (config.variant) platform.variant = config.variant;
    if (
      config.architecture && config.os && !platformMatches(platform, want)
    ) {
      throw new Error(
        `Cannot use ${reference}: it is for ${formatPlatform(platform)}, not ${
          formatPlatform(want)
        } (choose the platform with the platform option)`,
      );
    }
    const diffIds = config.rootfs?.diff_ids ?? [];
    const blobs = this.#blobs;
    const layers = manifest.layers.map((descriptor, i): ImageLayer => ({
      descriptor,
      diffId: diffIds[i],
      open: () => blobs.open(descriptor.digest),
      async *entries() {
        // A layer small enough is read and parsed whole, which skips the
        // streams per member (most of a small layer's reading time).
        yield* readLayer(
          descriptor.size <= blobs.wholeReadBytes
            ? await blobs.readBytes(descriptor.digest)
            : await blobs.open(descriptor.digest),
          descriptor.mediaType,
        );
      },
    }));
    return {
      reference,
      source,
      digest: imported.manifestDigest,
      manifest,
      config,
      platform,
      layers,
    };
  }

  async #readIndex(): Promise<ImageIndex> {
    try {
      const doc = JSON.parse(
        await Deno.readTextFile(join(this.#dir, "index.json")),
      );
      if (Array.isArray(doc.manifests)) return doc;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound) && !(e instanceof SyntaxError)) {
        throw e;
      }
    }
    return { schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [] };
  }

  async #writeIndex(index: ImageIndex): Promise<void> {
    await Deno.mkdir(join(this.#dir, "tmp"), { recursive: true });
    const layoutPath = join(this.#dir, "oci-layout");
    try {
      await Deno.stat(layoutPath);
    } catch {
      await Deno.writeTextFile(
        layoutPath,
        JSON.stringify({ imageLayoutVersion: "1.0.0" }),
      );
    }
    const tmp = join(this.#dir, "tmp", `index-${crypto.randomUUID()}.json`);
    await Deno.writeTextFile(tmp, JSON.stringify(index, null, 2) + "\n");
    await Deno.rename(tmp, join(this.#dir, "index.json"));
  }

  /** The cached manifest for a name and platform, if all its blobs are there. */
  async #lookup(
    reference: string,
    platform: Platform,
  ): Promise<ImportedImage | undefined> {
    const index = await this.#readIndex();
    for (const d of index.manifests) {
      if (d.annotations?.[REF_NAME_ANNOTATION] !== reference) continue;
      if (d.platform && !platformMatches(d.platform, platform)) continue;
      try {
        if (!await this.#blobs.has(d.digest, d.size)) continue;
        const bytes = await this.#blobs.readBytes(d.digest);
        const doc = parseManifestOrIndex(bytes, d.mediaType);
        if (doc.kind !== "manifest") continue;
        let complete = true;
        for (const b of [doc.manifest.config, ...doc.manifest.layers]) {
          if (!await this.#blobs.has(b.digest, b.size)) complete = false;
        }
        if (complete) {
          return { manifestDigest: d.digest, manifest: doc.manifest };
        }
      } catch {
        // a damaged entry counts as not cached
      }
    }
    return undefined;
  }

  async #record(reference: string, descriptor: Descriptor): Promise<void> {
    const index = await this.#readIndex();
    index.manifests = index.manifests.filter((d) =>
      d.annotations?.[REF_NAME_ANNOTATION] !== reference ||
      (d.platform !== undefined && descriptor.platform !== undefined &&
        !platformMatches(d.platform, descriptor.platform))
    );
    const annotations: Record<string, string> = {
      [REF_NAME_ANNOTATION]: reference,
      [STORED_ANNOTATION]: new Date().toISOString(),
    };
    try {
      const manifest = JSON.parse(
        new TextDecoder().decode(
          await this.#blobs.readBytes(descriptor.digest),
        ),
      ) as ImageManifest;
      const from = manifest.annotations?.[BUILT_FROM_ANNOTATION];
      if (from) annotations[BUILT_FROM_ANNOTATION] = from;
    } catch {
      // the annotation is a nicety
    }
    index.manifests.push({ ...descriptor, annotations });
    await this.#writeIndex(index);
  }

  /** The images in the cache. */
  async list(): Promise<ImageSummary[]> {
    const out: ImageSummary[] = [];
    for (const d of (await this.#readIndex()).manifests) {
      const reference = d.annotations?.[REF_NAME_ANNOTATION];
      if (!reference) continue;
      let size = 0;
      try {
        const doc = parseManifestOrIndex(
          await this.#blobs.readBytes(d.digest),
          d.mediaType,
        );
        if (doc.kind === "manifest") {
          size = doc.manifest.layers.reduce((n, l) => n + l.size, 0);
        }
      } catch {
        continue; // blobs gone: not really cached
      }
      let name = reference;
      try {
        name = familiarName(parseReference(reference));
      } catch {
        // keep the stored text
      }
      out.push({
        reference,
        name,
        digest: d.digest,
        platform: d.platform ?? hostPlatform(),
        size,
        stored: d.annotations?.[STORED_ANNOTATION],
        builtFrom: d.annotations?.[BUILT_FROM_ANNOTATION],
      });
    }
    return out;
  }

  /** Forgets a cached image (its blobs go at the next prune); true if it was there. */
  async remove(
    reference: string,
    options: { platform?: string | Platform } = {},
  ): Promise<boolean> {
    const canonical = formatReference(parseReference(reference));
    const platform = typeof options.platform === "string"
      ? parsePlatform(options.platform)
      : options.platform;
    const index = await this.#readIndex();
    const before = index.manifests.length;
    index.manifests = index.manifests.filter((d) =>
      d.annotations?.[REF_NAME_ANNOTATION] !== canonical ||
      (platform !== undefined && d.platform !== undefined &&
        !platformMatches(d.platform, platform))
    );
    if (index.manifests.length === before) return false;
    await this.#writeIndex(index);
    return true;
  }

  /**
   * Removes blobs no cached image uses (those of images read from layouts
   * and archives, of replaced tags, of removed images) and stale temporary
   * files.
   */
  async prune(
    options: { tempOlderThanMs?: number } = {},
  ): Promise<{ removed: number; bytes: number }> {
    const keep = new Set<string>();
    for (const d of (await this.#readIndex()).manifests) {
      keep.add(d.digest);
      try {
        const doc = parseManifestOrIndex(
          await this.#blobs.readBytes(d.digest),
          d.mediaType,
        );
        if (doc.kind === "manifest") {
          keep.add(doc.manifest.config.digest);
          for (const l of doc.manifest.layers) keep.add(l.digest);
        }
      } catch {
        // a damaged manifest keeps nothing
      }
    }
    let removed = 0;
    let bytes = 0;
    for (const blob of await this.#blobs.list()) {
      if (keep.has(blob.digest)) continue;
      await this.#blobs.remove(blob.digest);
      removed++;
      bytes += blob.size;
    }
    removed += await this.#blobs.cleanTemp(options.tempOlderThanMs);
    return { removed, bytes };
  }
}

/**
 * Resolves an image reference with the default cache ({@linkcode ImageStore}).
 *
 * @example
 * ```ts ignore
 * import { resolveImage } from "./store.ts";
 * const image = await resolveImage("alpine:3.20", { platform: "linux/arm64" });
 * console.log(image.digest, image.config.config?.Entrypoint);
 * ```
 */
export async function resolveImage(
  reference: string,
  options: ResolveOptions & ImageStoreOptions = {},
): Promise<Image> {
  return await new ImageStore(options).resolve(reference, options);
}
