/**
 * The default image of a fresh machine that cannot reach a registry: a
 * `busybox` equivalent built from the host's static busybox (Debian's
 * `busybox-static`). One uncompressed tar layer holds `/bin/busybox`, a symlink
 * per applet (`busybox --list`), `/etc/passwd` and `/etc/group` with root
 * and nobody, and the usual empty directories; the config sets `PATH` and
 * `Cmd ["sh"]` like Docker Hub's busybox. Everything is a real OCI blob
 * with a real digest, stored in the blob store; the same busybox binary
 * gives the same digests.
 *
 * @module
 */

import type { BlobStore, StoredBlob } from "./blob_store.ts";
import {
  hostPlatform,
  type ImageConfig,
  type ImageManifest,
  MEDIA_TYPES,
  sha256Digest,
} from "./oci.ts";
import { encodeTar, type TarInput } from "./tar.ts";

/** Where a static busybox is looked for (Debian's `busybox-static` puts it in /bin). */
const BUSYBOX_PATHS = ["/bin/busybox", "/usr/bin/busybox"];

/** The `PATH` of the image (Docker Hub's busybox image has the same). */
export const DEFAULT_IMAGE_PATH =
  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Annotation naming the host file an image was built from. */
export const BUILT_FROM_ANNOTATION = "dev.initx.built-from";

/** Empty directories of the root, with their modes. */
const DIRECTORIES: [string, number][] = [
  ["bin", 0o755],
  ["dev", 0o755],
  ["etc", 0o755],
  ["home", 0o755],
  ["lib", 0o755],
  ["proc", 0o555],
  ["root", 0o700],
  ["run", 0o755],
  ["sbin", 0o755],
  ["sys", 0o555],
  ["tmp", 0o1777],
  ["usr", 0o755],
  ["usr/bin", 0o755],
  ["usr/sbin", 0o755],
  ["var", 0o755],
  ["var/tmp", 0o1777],
];

/** Users of the image (passwd(5)). */
const PASSWD = "root:x:0:0:root:/root:/bin/sh\n" +
  "nobody:x:65534:65534:nobody:/home:/bin/false\n";
/** Groups of the image (group(5)). */
const GROUP = "root:x:0:\nnobody:x:65534:\n";

/** The built image's blobs. */
export interface BuiltImage {
  /** The manifest blob's digest and size. */
  stored: StoredBlob;
  /** The manifest. */
  manifest: ImageManifest;
  /** The config. */
  config: ImageConfig;
  /** The static busybox it was built from. */
  busybox: string;
}

/** Options of {@linkcode buildBusyboxImage}. */
export interface BuildBusyboxImageOptions {
  /** The static busybox to use; default: the host's (see {@linkcode findStaticBusybox}). */
  busybox?: string;
}

/**
 * The path of a static busybox on this host, or undefined (a dynamically
 * linked one names its loader near the start of the file).
 *
 * @example
 * ```ts
 * import { findStaticBusybox } from "./default_image.ts";
 * console.log(findStaticBusybox() ?? "no static busybox");
 * ```
 */
export function findStaticBusybox(): string | undefined {
  for (const p of BUSYBOX_PATHS) {
    try {
      using file = Deno.openSync(p);
      const head = new Uint8Array(4096);
      const n = file.readSync(head) ?? 0;
      const text = new TextDecoder().decode(head.subarray(0, n));
      if (text.startsWith("\x7fELF") && !text.includes("ld-linux")) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

async function runText(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot run "${cmd} ${args.join(" ")}": exit ${out.code}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * Builds the busybox image into `store` and returns its manifest.
 *
 * @example
 * ```ts ignore
 * import { BlobStore } from "./blob_store.ts";
 * import { buildBusyboxImage } from "./default_image.ts";
 * const built = await buildBusyboxImage(new BlobStore(await Deno.makeTempDir()));
 * console.log(built.stored.digest, built.config.config?.Cmd); // sha256:... ["sh"]
 * ```
 */
export async function buildBusyboxImage(
  store: BlobStore,
  options: BuildBusyboxImageOptions = {},
): Promise<BuiltImage> {
  const busybox = options.busybox ?? findStaticBusybox();
  if (busybox === undefined) {
    throw new Error(
      "Cannot build the busybox image: no static busybox in /bin or /usr/bin; install it with `apt-get install busybox-static`",
    );
  }
  const binary = await Deno.readFile(busybox);
  const info = await Deno.stat(busybox);
  // The binary's own time, so that the same busybox gives the same digests.
  const mtimeMs = Math.floor((info.mtime?.getTime() ?? 0) / 1000) * 1000;
  const applets = (await runText(busybox, ["--list"])).split("\n")
    .map((a) => a.trim())
    .filter((a) => a !== "" && a !== "busybox" && !a.includes("/"))
    .sort();
  if (!applets.includes("sh")) {
    throw new Error(
      `Cannot build the busybox image: ${busybox} has no "sh" applet`,
    );
  }
  const version = (await runText(busybox, ["--help"]).catch(() => ""))
    .split("\n")[0]?.trim() || "BusyBox";

  const members: TarInput[] = DIRECTORIES.map(([name, mode]) => ({
    name: `${name}/`,
    kind: "directory",
    mode,
    mtimeMs,
  }));
  const text = new TextEncoder();
  members.push(
    { name: "bin/busybox", kind: "file", mode: 0o755, mtimeMs, data: binary },
    ...applets.map((a): TarInput => ({
      name: `bin/${a}`,
      kind: "symlink",
      mode: 0o777,
      mtimeMs,
      linkName: "busybox",
    })),
    {
      name: "etc/passwd",
      kind: "file",
      mode: 0o644,
      mtimeMs,
      data: text.encode(PASSWD),
    },
    {
      name: "etc/group",
      kind: "file",
      mode: 0o644,
      mtimeMs,
      data: text.encode(GROUP),
    },
  );
  // Uncompressed: the layer never leaves this machine, and every run then
  // skips inflating it (measured 15-25% of the image's open time).
  const tar = await encodeTar(members);
  const layer = await store.putBytes(tar);
  const created = new Date(mtimeMs).toISOString();
  const platform = hostPlatform();
  const config: ImageConfig = {
    created,
    architecture: platform.architecture,
    os: platform.os,
    config: { Env: [`PATH=${DEFAULT_IMAGE_PATH}`], Cmd: ["sh"] },
    rootfs: { type: "layers", diff_ids: [await sha256Digest(tar)] },
    history: [{
      created,
      created_by: `initx: ${busybox} (${version}) with a link per applet`,
      comment: "built by initx without a registry",
    }],
  };
  const configBytes = text.encode(JSON.stringify(config));
  const configBlob = await store.putBytes(configBytes);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociManifest,
    config: {
      mediaType: MEDIA_TYPES.ociConfig,
      digest: configBlob.digest,
      size: configBlob.size,
    },
    layers: [{
      mediaType: MEDIA_TYPES.ociLayer,
      digest: layer.digest,
      size: layer.size,
    }],
    annotations: {
      [BUILT_FROM_ANNOTATION]: busybox,
      "org.opencontainers.image.created": created,
      "org.opencontainers.image.description":
        `busybox built from the host's static busybox (${version})`,
    },
  };
  const stored = await store.putBytes(text.encode(JSON.stringify(manifest)));
  return { stored, manifest, config, busybox };
}
