/**
 * Test helpers: images made by the tests themselves (layers, OCI layouts,
 * OCI archives, `docker save` archives), with real digests.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { ensurePackages } from "../../tasks/_packages.ts";
import {
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  MEDIA_TYPES,
  type Platform,
  REF_NAME_ANNOTATION,
} from "./oci.ts";
import { encodeTar, type TarInput } from "./tar.ts";

/** Text as bytes. */
export function bytes(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** gzip of `data`. */
export async function gzipBytes(data: Uint8Array): Promise<Uint8Array> {
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(data);
      c.close();
    },
  }).pipeThrough(
    new CompressionStream("gzip") as unknown as ReadableWritablePair<
      Uint8Array,
      Uint8Array
    >,
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A blob with its descriptor. */
export interface TestBlob {
  /** Content. */
  data: Uint8Array;
  /** Its descriptor. */
  descriptor: Descriptor;
}

/** `sha256Digest`, synchronous (`node:crypto` costs tests nothing). */
function syncSha256Digest(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

function blob(data: Uint8Array, mediaType: string): TestBlob {
  return {
    data,
    descriptor: {
      mediaType,
      digest: syncSha256Digest(data),
      size: data.length,
    },
  };
}

/** An image made of tar layers, as blobs. */
export interface TestImage {
  /** The manifest blob. */
  manifest: TestBlob;
  /** The config blob. */
  config: TestBlob;
  /** The layer blobs (gzip'd). */
  layers: TestBlob[];
  /** The uncompressed layer tars. */
  tars: Uint8Array[];
}

/** Builds an image from layers of tar members. */
export async function makeImage(
  layers: TarInput[][],
  options: {
    platform?: Platform;
    config?: ImageConfig["config"];
    gzip?: boolean;
  } = {},
): Promise<TestImage> {
  const platform = options.platform ?? { os: "linux", architecture: "amd64" };
  const tars: Uint8Array[] = [];
  const blobs: TestBlob[] = [];
  for (const members of layers) {
    const tar = await encodeTar(members);
    tars.push(tar);
    blobs.push(
      options.gzip === false
        ? blob(tar, MEDIA_TYPES.ociLayer)
        : blob(await gzipBytes(tar), MEDIA_TYPES.ociLayerGzip),
    );
  }
  const config: ImageConfig = {
    architecture: platform.architecture,
    os: platform.os,
    config: options.config ?? { Cmd: ["sh"], Env: ["PATH=/bin"] },
    rootfs: {
      type: "layers",
      diff_ids: tars.map(syncSha256Digest),
    },
  };
  if (platform.variant) config.variant = platform.variant;
  const configBlob = blob(
    bytes(JSON.stringify(config)),
    MEDIA_TYPES.ociConfig,
  );
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociManifest,
    config: configBlob.descriptor,
    layers: blobs.map((b) => b.descriptor),
  };
  return {
    manifest: blob(bytes(JSON.stringify(manifest)), MEDIA_TYPES.ociManifest),
    config: configBlob,
    layers: blobs,
    tars,
  };
}

/** An index of platform manifests, as a blob. */
export function makeIndex(images: [TestImage, Platform][]): TestBlob {
  const index: ImageIndex = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociIndex,
    manifests: images.map(([image, platform]) => ({
      ...image.manifest.descriptor,
      platform,
    })),
  };
  return blob(bytes(JSON.stringify(index)), MEDIA_TYPES.ociIndex);
}

/** Every blob of an image. */
export function blobsOf(image: TestImage): TestBlob[] {
  return [image.manifest, image.config, ...image.layers];
}

/**
 * Writes an OCI image layout to `dir`: the blobs, and an `index.json`
 * naming each top descriptor.
 */
export async function writeOciLayout(
  dir: string,
  tops: [string, TestBlob][],
  blobs: TestBlob[],
): Promise<void> {
  await Deno.mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  await Deno.writeTextFile(
    join(dir, "oci-layout"),
    JSON.stringify({ imageLayoutVersion: "1.0.0" }),
  );
  for (const b of blobs) {
    await Deno.writeFile(
      join(dir, "blobs", "sha256", b.descriptor.digest.slice(7)),
      b.data,
    );
  }
  const index: ImageIndex = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociIndex,
    manifests: tops.map(([name, b]) => ({
      ...b.descriptor,
      annotations: { [REF_NAME_ANNOTATION]: name },
    })),
  };
  await Deno.writeTextFile(join(dir, "index.json"), JSON.stringify(index));
}

/** A tar of a directory tree (files and directories), paths relative to it. */
export async function tarOfDir(dir: string): Promise<Uint8Array> {
  const members: TarInput[] = [];
  const walk = async (rel: string) => {
    const entries = [];
    for await (const e of Deno.readDir(join(dir, rel))) entries.push(e);
    entries.sort((a, b) => a.name < b.name ? -1 : 1);
    for (const e of entries) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        members.push({ name: `${path}/`, kind: "directory" });
        await walk(path);
      } else if (e.isFile) {
        members.push({
          name: path,
          kind: "file",
          data: await Deno.readFile(join(dir, path)),
        });
      }
    }
  };
  await walk("");
  return await encodeTar(members);
}

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir<T>(
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "initx-image-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The names in a directory (empty if it does not exist). */
export async function namesIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) out.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

/**
 * Installs the Debian packages behind missing `tools` (command -> package)
 * when it can (apt-get, as root); the tests then gate on the tools.
 */
export async function tryEnsureTools(
  tools: Record<string, string>,
): Promise<void> {
  try {
    await ensurePackages(tools, () => {});
  } catch {
    // the test's gate says what is missing
  }
}
