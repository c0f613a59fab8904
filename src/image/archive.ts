/**
 * Images on disk: an OCI image layout directory (image-layout.md), an OCI
 * archive (a tar of such a directory, as `skopeo copy ... oci-archive:`
 * writes), and a `docker save` archive (`manifest.json` naming a config and
 * layer tars; Docker 25 and later put those under `blobs/sha256/`). Each is
 * imported into the blob store, every blob verified against its digest,
 * and comes out as a manifest digest there.
 *
 * @module
 */

import { join } from "node:path";
import type { BlobStore, StoredBlob } from "./blob_store.ts";
import { sniffCompression } from "./layer.ts";
import {
  checkDigest,
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  MEDIA_TYPES,
  parseManifestOrIndex,
  type Platform,
  REF_NAME_ANNOTATION,
  selectPlatform,
} from "./oci.ts";
import { formatReference, parseReference } from "./reference.ts";
import { decodeTar } from "./tar.ts";

/** An image imported into the store. */
export interface ImportedImage {
  /** The manifest's digest in the store. */
  manifestDigest: string;
  /** The manifest. */
  manifest: ImageManifest;
}

/** Options of the importers. */
export interface ImportOptions {
  /** Which image: a `ref.name` (OCI) or `NAME:TAG` (docker archive). */
  tag?: string;
  /** Docker archive: the image's index in `manifest.json`. */
  index?: number;
  /** The platform to pick from an index. */
  platform: Platform;
  /** Progress messages. */
  onMessage?: (message: string) => void;
}

/** Largest JSON document read into memory from a layout or archive. */
const MAX_JSON_BYTES = 16 * 1024 * 1024;

function parseJson<T>(bytes: Uint8Array, what: string): T {
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as T;
  } catch (e) {
    throw new Error(`Cannot parse ${what}: ${(e as Error).message}`);
  }
}

/**
 * Follows an OCI `index.json` to one image manifest: the descriptor named
 * `tag` (or the only one), through nested indexes by platform.
 */
async function manifestFromIndex(
  readBlob: (d: Descriptor) => Promise<Uint8Array>,
  index: ImageIndex,
  where: string,
  options: ImportOptions,
): Promise<ImportedImage> {
  const manifests = index.manifests ?? [];
  let chosen: Descriptor | undefined;
  if (options.tag !== undefined) {
    chosen = manifests.find((m) =>
      m.annotations?.[REF_NAME_ANNOTATION] === options.tag
    );
    if (!chosen) {
      const names = manifests.map((m) => m.annotations?.[REF_NAME_ANNOTATION])
        .filter((n) => n);
      throw new Error(
        `Cannot find the image "${options.tag}" in ${where}: it has ${
          names.length > 0 ? names.map((n) => `"${n}"`).join(", ") : "no names"
        }`,
      );
    }
  } else if (manifests.length === 1) {
    chosen = manifests[0];
  } else if (manifests.some((m) => m.platform)) {
    chosen = selectPlatform(index, options.platform);
  } else {
    throw new Error(
      `Cannot choose an image in ${where}: it holds ${manifests.length}; name one with ":TAG"`,
    );
  }
  let descriptor = chosen!;
  for (let depth = 0; depth < 4; depth++) {
    const bytes = await readBlob(descriptor);
    const doc = parseManifestOrIndex(bytes, descriptor.mediaType);
    if (doc.kind === "manifest") {
      return { manifestDigest: descriptor.digest, manifest: doc.manifest };
    }
    descriptor = selectPlatform(doc.index, options.platform);
  }
  throw new Error(`Cannot use ${where}: its indexes nest too deep`);
}

/** Imports the blobs a manifest needs from a layout directory. */
async function importBlob(
  store: BlobStore,
  dir: string,
  d: Descriptor,
): Promise<void> {
  const digest = checkDigest(d.digest);
  if (await store.has(digest, d.size)) return;
  const [alg, hex] = digest.split(":");
  const path = join(dir, "blobs", alg!, hex!);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch {
    throw new Error(
      `Cannot import ${d.digest} from the OCI layout ${dir}: ${path} is missing`,
    );
  }
  try {
    await store.put(file.readable, { digest, size: d.size });
  } catch (e) {
    throw new Error(
      `Cannot import from the OCI layout ${dir}: ${(e as Error).message}`,
    );
  }
}

/**
 * Imports an image from an OCI image layout directory.
 *
 * @example
 * ```ts ignore
 * import { BlobStore } from "./blob_store.ts";
 * import { importOciLayout } from "./archive.ts";
 * import { hostPlatform } from "./oci.ts";
 * const store = new BlobStore(await Deno.makeTempDir());
 * const image = await importOciLayout(store, "/images/box", { tag: "v1", platform: hostPlatform() });
 * console.log(image.manifest.layers.length);
 * ```
 */
export async function importOciLayout(
  store: BlobStore,
  dir: string,
  options: ImportOptions,
): Promise<ImportedImage> {
  const where = `the OCI layout ${dir}`;
  let layout: { imageLayoutVersion?: string };
  try {
    layout = JSON.parse(await Deno.readTextFile(join(dir, "oci-layout")));
  } catch (e) {
    throw new Error(
      `Cannot read ${where}: ${
        e instanceof Deno.errors.NotFound
          ? "it has no oci-layout file (is it an OCI image layout?)"
          : (e as Error).message
      }`,
    );
  }
  if (!layout.imageLayoutVersion?.startsWith("1.")) {
    throw new Error(
      `Cannot read ${where}: unsupported imageLayoutVersion "${layout.imageLayoutVersion}"`,
    );
  }
  const index = parseJson<ImageIndex>(
    await Deno.readFile(join(dir, "index.json")),
    `${where}/index.json`,
  );
  const readBlob = async (d: Descriptor) => {
    await importBlob(store, dir, d);
    return await store.readBytes(d.digest);
  };
  const image = await manifestFromIndex(readBlob, index, where, options);
  for (const d of [image.manifest.config, ...image.manifest.layers]) {
    await importBlob(store, dir, d);
  }
  return image;
}

/** Reads a tar archive's members into the store (`blobs/...`) or memory (JSON). */
async function scanArchive(
  store: BlobStore,
  path: string,
  keepInMemory: (name: string) => boolean,
  verifyName: boolean,
): Promise<{ files: Map<string, StoredBlob>; json: Map<string, Uint8Array> }> {
  const files = new Map<string, StoredBlob>();
  const json = new Map<string, Uint8Array>();
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    throw new Error(`Cannot open the archive ${path}: ${(e as Error).message}`);
  }
  try {
    for await (const m of decodeTar(file.readable)) {
      const name = m.name.replace(/^(\.\/|\/)+/, "");
      if (m.kind !== "file") {
        await m.body.cancel();
        continue;
      }
      if (keepInMemory(name)) {
        if (m.size > MAX_JSON_BYTES) {
          throw new Error(`${name} is ${m.size} bytes, too large`);
        }
        json.set(
          name,
          new Uint8Array(await new Response(m.body).arrayBuffer()),
        );
        continue;
      }
      const named = /^blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(name);
      const digest = named ? `${named[1]}:${named[2]}` : undefined;
      if (verifyName && !digest) {
        await m.body.cancel();
        continue;
      }
      files.set(
        name,
        await store.put(m.body, {
          digest: digest && checkDigest(digest),
          size: m.size,
        }),
      );
    }
  } catch (e) {
    throw new Error(`Cannot read the archive ${path}: ${(e as Error).message}`);
  }
  return { files, json };
}

/**
 * Imports an image from an OCI archive (a tar of an OCI image layout).
 *
 * @example
 * ```ts ignore
 * import { BlobStore } from "./blob_store.ts";
 * import { importOciArchive } from "./archive.ts";
 * import { hostPlatform } from "./oci.ts";
 * const store = new BlobStore(await Deno.makeTempDir());
 * const image = await importOciArchive(store, "/tmp/box.tar", { platform: hostPlatform() });
 * ```
 */
export async function importOciArchive(
  store: BlobStore,
  path: string,
  options: ImportOptions,
): Promise<ImportedImage> {
  const { json } = await scanArchive(
    store,
    path,
    (name) => name === "index.json" || name === "oci-layout",
    true,
  );
  const where = `the OCI archive ${path}`;
  const indexBytes = json.get("index.json");
  if (!indexBytes) {
    throw new Error(
      `Cannot read ${where}: it has no index.json (is it an OCI archive?)`,
    );
  }
  const index = parseJson<ImageIndex>(indexBytes, `${where}/index.json`);
  const image = await manifestFromIndex(
    (d) => store.readBytes(checkDigest(d.digest)),
    index,
    where,
    options,
  );
  for (const d of [image.manifest.config, ...image.manifest.layers]) {
    if (!await store.has(checkDigest(d.digest), d.size)) {
      throw new Error(`Cannot read ${where}: the blob ${d.digest} is missing`);
    }
  }
  return image;
}

interface DockerManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

function sameName(a: string, b: string): boolean {
  try {
    return formatReference(parseReference(a)) ===
      formatReference(parseReference(b));
  } catch {
    return a === b;
  }
}

/**
 * Imports an image from a `docker save` archive. The config and layers get
 * OCI descriptors with Docker media types in a manifest made here (stored
 * as a blob like any other). Blobs are checked against the names they have:
 * a config named by its digest, layers against the config's `diff_ids`.
 *
 * @example
 * ```ts ignore
 * import { BlobStore } from "./blob_store.ts";
 * import { importDockerArchive } from "./archive.ts";
 * import { hostPlatform } from "./oci.ts";
 * const store = new BlobStore(await Deno.makeTempDir());
 * const image = await importDockerArchive(store, "/tmp/save.tar", { tag: "busybox:latest", platform: hostPlatform() });
 * ```
 */
export async function importDockerArchive(
  store: BlobStore,
  path: string,
  options: ImportOptions,
): Promise<ImportedImage> {
  const where = `the docker archive ${path}`;
  const { files, json } = await scanArchive(
    store,
    path,
    (name) =>
      name === "manifest.json" || name === "repositories" ||
      name === "index.json" || name === "oci-layout",
    false,
  );
  const manifestBytes = json.get("manifest.json");
  if (!manifestBytes) {
    throw new Error(
      `Cannot read ${where}: it has no manifest.json (is it a "docker save" archive?)`,
    );
  }
  const entries = parseJson<DockerManifestEntry[]>(
    manifestBytes,
    `${where}/manifest.json`,
  );
  if (!Array.isArray(entries) || entries.length === 0) {
    throw new Error(`Cannot read ${where}: its manifest.json lists no image`);
  }
  let entry: DockerManifestEntry | undefined;
  if (options.index !== undefined) {
    entry = entries[options.index];
    if (!entry) {
      throw new Error(
        `Cannot find image @${options.index} in ${where}: it holds ${entries.length}`,
      );
    }
  } else if (options.tag !== undefined) {
    entry = entries.find((e) =>
      (e.RepoTags ?? []).some((t) => sameName(t, options.tag!))
    );
    if (!entry) {
      const tags = entries.flatMap((e) => e.RepoTags ?? []);
      throw new Error(
        `Cannot find the image "${options.tag}" in ${where}: it has ${
          tags.length > 0 ? tags.join(", ") : "no tags"
        }`,
      );
    }
  } else if (entries.length === 1) {
    entry = entries[0];
  } else {
    throw new Error(
      `Cannot choose an image in ${where}: it holds ${entries.length}; name one with ":NAME:TAG" or ":@INDEX"`,
    );
  }
  const blobOf = (name: string): StoredBlob => {
    const blob = files.get(name.replace(/^(\.\/|\/)+/, ""));
    if (!blob) throw new Error(`Cannot read ${where}: ${name} is missing`);
    return blob;
  };
  const configBlob = blobOf(entry!.Config);
  const configName = /([a-f0-9]{64})(?:\.json)?$/.exec(entry!.Config);
  if (configName && configBlob.digest !== `sha256:${configName[1]}`) {
    throw new Error(
      `Cannot read ${where}: ${
        entry!.Config
      } has the digest ${configBlob.digest}`,
    );
  }
  const config = parseJson<ImageConfig>(
    await store.readBytes(configBlob.digest),
    `${where}/${entry!.Config}`,
  );
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== entry!.Layers.length) {
    throw new Error(
      `Cannot read ${where}: the config lists ${diffIds.length} layers, manifest.json ${
        entry!.Layers.length
      }`,
    );
  }
  const layers: Descriptor[] = [];
  for (const [i, name] of entry!.Layers.entries()) {
    const blob = blobOf(name);
    const stream = await store.open(blob.digest);
    const reader = stream.getReader();
    const head = (await reader.read()).value ?? new Uint8Array();
    await reader.cancel();
    const compression = sniffCompression(head);
    if (compression === "none" && blob.digest !== diffIds[i]) {
      throw new Error(
        `Cannot read ${where}: the layer ${name} has the digest ${blob.digest}, the config says ${
          diffIds[i]
        }`,
      );
    }
    layers.push({
      mediaType: compression === "gzip"
        ? "application/vnd.docker.image.rootfs.diff.tar.gzip"
        : compression === "zstd"
        ? "application/vnd.oci.image.layer.v1.tar+zstd"
        : MEDIA_TYPES.dockerLayer,
      digest: blob.digest,
      size: blob.size,
    });
  }
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.dockerManifest,
    config: {
      mediaType: MEDIA_TYPES.dockerConfig,
      digest: configBlob.digest,
      size: configBlob.size,
    },
    layers,
  };
  const stored = await store.putBytes(
    new TextEncoder().encode(JSON.stringify(manifest)),
  );
  return { manifestDigest: stored.digest, manifest };
}
