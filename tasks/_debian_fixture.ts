/**
 * The Debian fixture of the end-to-end tests: a real, larger root
 * filesystem than busybox's. `debootstrap --variant=minbase` installs the
 * host's Debian release from the host's own mirror into a temporary
 * directory, and the tree is packed as an OCI archive (a tar of an OCI image
 * layout, image-layout.md) with one gzip'd layer, the way `initx run
 * oci-archive:FILE` reads it. The archive is cached in `.cache/fixtures/`
 * and reused while initx can read it.
 *
 * The layer is written by GNU tar, not the project's `encodeTar`, which
 * holds every member in memory: a minbase tree is some 6,800 entries with
 * hard links, device nodes and extended attributes, read straight from disk.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { PROJECT_ROOT } from "./lab/lab.ts";
import { ensurePackages, which } from "./_packages.ts";
import { importOciArchive } from "../src/image/archive.ts";
import { BlobStore } from "../src/image/blob_store.ts";
import { DEFAULT_IMAGE_PATH } from "../src/image/default_image.ts";
import {
  hostPlatform,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  MEDIA_TYPES,
  REF_NAME_ANNOTATION,
  sha256Digest,
} from "../src/image/oci.ts";

/** Commands the build runs and the Debian package of each. */
const FIXTURE_TOOLS: Record<string, string> = {
  "debootstrap": "debootstrap",
  "tar": "tar",
  "gzip": "gzip",
};

/**
 * Version of the packing: part of the cached file's name, so that a change
 * to what goes into the archive builds it again.
 */
const FIXTURE_FORMAT = 1;

/** The mirror used when the host's apt sources name none for its release. */
const DEFAULT_MIRROR = "http://deb.debian.org/debian";

/** Where apt keeps its sources (sources.list(5)). */
const APT_SOURCES = "/etc/apt/sources.list";
const APT_SOURCES_DIR = "/etc/apt/sources.list.d";

/**
 * debootstrap's per-package lines ("I: Retrieving apt 2.6.1", "I: Unpacking
 * dash..."): hundreds of them, not passed on as progress.
 */
const PER_PACKAGE_LINE =
  /^I: (Retrieving|Validating) \S+ \S+$|^I: (Extracting|Unpacking|Configuring) \S+\.\.\.$/;

const decoder = new TextDecoder();

/** The Debian release a fixture is built from. */
export interface DebianSource {
  /** The suite, e.g. `bookworm`. */
  suite: string;
  /** The archive's URL, e.g. `http://deb.debian.org/debian`. */
  mirror: string;
  /** The dpkg architecture, e.g. `amd64`. */
  architecture: string;
}

/**
 * The mirror of `suite` in apt source files: the first `deb` entry for that
 * suite, in one-line (`deb [opts] URI SUITE COMPONENTS`) or deb822 form
 * (`Types:`, `URIs:`, `Suites:` stanzas), as sources.list(5) describes them.
 *
 * @example
 * ```ts
 * import { mirrorFromSources } from "./_debian_fixture.ts";
 * const text = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
 * console.log(mirrorFromSources([{ name: "debian.sources", text }], "bookworm"));
 * ```
 */
export function mirrorFromSources(
  files: { name: string; text: string }[],
  suite: string,
): string | undefined {
  for (const { name, text } of files) {
    if (name.endsWith(".list")) {
      for (const line of text.split("\n")) {
        const words = line.replace(/#.*/, "").replace(/\[[^\]]*\]/, " ")
          .trim().split(/\s+/);
        if (words[0] === "deb" && words[2] === suite) return words[1];
      }
      continue;
    }
    // A deb822 comment line is dropped, not blank: it does not end a stanza.
    const lines = text.split("\n").filter((l) =>
      !l.trimStart().startsWith("#")
    );
    for (const stanza of lines.join("\n").split(/\n\s*\n/)) {
      const fields = new Map<string, string[]>();
      for (const m of stanza.matchAll(/^([A-Za-z-]+):\s*(.*)$/gm)) {
        fields.set(m[1]!.toLowerCase(), m[2]!.split(/\s+/));
      }
      if (
        fields.get("types")?.includes("deb") &&
        fields.get("suites")?.includes(suite) &&
        fields.get("enabled")?.[0] !== "no"
      ) {
        const uri = fields.get("uris")?.[0];
        if (uri) return uri;
      }
    }
  }
  return undefined;
}

async function readSourceFiles(): Promise<{ name: string; text: string }[]> {
  const files: { name: string; text: string }[] = [];
  const add = async (path: string) => {
    try {
      files.push({ name: path, text: await Deno.readTextFile(path) });
    } catch {
      // no such file
    }
  };
  await add(APT_SOURCES);
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(APT_SOURCES_DIR)) names.push(e.name);
  } catch {
    // no such directory
  }
  for (const name of names.sort()) {
    if (name.endsWith(".list") || name.endsWith(".sources")) {
      await add(join(APT_SOURCES_DIR, name));
    }
  }
  return files;
}

/** The host's Debian release, its mirror and architecture. */
export async function hostDebianSource(): Promise<DebianSource> {
  let osRelease = "";
  try {
    osRelease = await Deno.readTextFile("/etc/os-release");
  } catch {
    // read as empty: not Debian
  }
  const field = (key: string) =>
    new RegExp(`^${key}="?([^"\\n]*)"?$`, "m").exec(osRelease)?.[1];
  const suite = field("VERSION_CODENAME");
  if (field("ID") !== "debian" || !suite) {
    throw new Error(
      `Cannot build the Debian fixture: this host is not a Debian release (ID "${
        field("ID") ?? ""
      }", VERSION_CODENAME "${suite ?? ""}" in /etc/os-release)`,
    );
  }
  const mirror = mirrorFromSources(await readSourceFiles(), suite) ??
    DEFAULT_MIRROR;
  const architecture = (await run("dpkg", ["--print-architecture"])).trim();
  return { suite, mirror, architecture };
}

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot run "${cmd} ${args.join(" ")}": exit ${out.code}: ${
        decoder.decode(out.stderr).trim().slice(-2000)
      }`,
    );
  }
  return decoder.decode(out.stdout);
}

/** The sha256 digest and size of a file, read as a stream. */
async function digestOfFile(
  path: string,
): Promise<{ digest: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  const file = await Deno.open(path);
  // The stream closes the file when it ends or fails.
  for await (const chunk of file.readable) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { digest: `sha256:${hash.digest("hex")}`, size };
}

/** Options of {@linkcode packRootfs}. */
export interface PackRootfsOptions {
  /** The `ref.name` of the image in the archive's `index.json`. */
  name?: string;
  /** The config's `history` line: how the tree was made. */
  createdBy?: string;
}

/** An OCI archive written by {@linkcode packRootfs}. */
export interface PackedRootfs {
  /** The manifest's digest. */
  manifestDigest: string;
  /** The uncompressed layer's digest (the config's `diff_ids`). */
  diffId: string;
  /** The gzip'd layer's size in bytes. */
  layerSize: number;
}

/**
 * Packs the directory tree `rootfs` as an OCI archive at `archive`: one
 * gzip'd layer (GNU tar, numeric owners, extended attributes, sorted names),
 * a config with Debian's usual `PATH` and `Cmd ["bash"]` for the host's
 * platform, a manifest, and an `index.json` naming it. The archive appears
 * at `archive` whole or not at all (written beside it, then renamed).
 *
 * @example
 * ```ts ignore
 * import { packRootfs } from "./_debian_fixture.ts";
 * const packed = await packRootfs("/tmp/rootfs", "/tmp/rootfs.tar");
 * console.log(packed.manifestDigest); // "oci-archive:/tmp/rootfs.tar" runs it
 * ```
 */
export async function packRootfs(
  rootfs: string,
  archive: string,
  options: PackRootfsOptions = {},
): Promise<PackedRootfs> {
  const work = await Deno.makeTempDir({ prefix: "initx-pack-" });
  const partial = `${archive}.tmp-${crypto.randomUUID()}`;
  try {
    const layerTar = join(work, "layer.tar");
    // POSIX format for the extended attributes; the PAX time records would
    // add a header to every member for sub-second times nobody needs.
    await run("tar", [
      "--create",
      `--file=${layerTar}`,
      `--directory=${rootfs}`,
      "--numeric-owner",
      "--xattrs",
      "--format=posix",
      "--pax-option=delete=atime,delete=ctime,delete=mtime",
      "--sort=name",
      ".",
    ]);
    const diffId = (await digestOfFile(layerTar)).digest;
    // -n: no name or time in the gzip header, so one tar gives one blob.
    await run("gzip", ["-n", layerTar]);
    const layer = await digestOfFile(`${layerTar}.gz`);
    const layout = join(work, "layout");
    const blobs = join(layout, "blobs", "sha256");
    await Deno.mkdir(blobs, { recursive: true });
    await Deno.rename(`${layerTar}.gz`, join(blobs, layer.digest.slice(7)));
    const writeBlob = async (doc: unknown) => {
      const bytes = new TextEncoder().encode(JSON.stringify(doc));
      const digest = await sha256Digest(bytes);
      await Deno.writeFile(join(blobs, digest.slice(7)), bytes);
      return { digest, size: bytes.length };
    };

    const created = new Date().toISOString();
    const platform = hostPlatform();
    const config: ImageConfig = {
      created,
      architecture: platform.architecture,
      os: platform.os,
      config: { Env: [`PATH=${DEFAULT_IMAGE_PATH}`], Cmd: ["bash"] },
      rootfs: { type: "layers", diff_ids: [diffId] },
      history: [{
        created,
        created_by: options.createdBy ?? `tar of ${rootfs}`,
        comment: "packed by initx's tasks/_debian_fixture.ts",
      }],
    };
    if (platform.variant) config.variant = platform.variant;
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: MEDIA_TYPES.ociConfig, ...await writeBlob(config) },
      layers: [{ mediaType: MEDIA_TYPES.ociLayerGzip, ...layer }],
    };
    const stored = await writeBlob(manifest);
    const index: ImageIndex = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociIndex,
      manifests: [{
        mediaType: MEDIA_TYPES.ociManifest,
        ...stored,
        platform,
        ...(options.name
          ? { annotations: { [REF_NAME_ANNOTATION]: options.name } }
          : {}),
      }],
    };
    await Deno.writeTextFile(join(layout, "index.json"), JSON.stringify(index));
    await Deno.writeTextFile(
      join(layout, "oci-layout"),
      JSON.stringify({ imageLayoutVersion: "1.0.0" }),
    );
    await run("tar", [
      "--create",
      `--file=${partial}`,
      `--directory=${layout}`,
      "--numeric-owner",
      "--owner=0",
      "--group=0",
      "oci-layout",
      "index.json",
      "blobs",
    ]);
    await Deno.rename(partial, archive);
    return {
      manifestDigest: stored.digest,
      diffId,
      layerSize: layer.size,
    };
  } finally {
    await Deno.remove(partial).catch(() => {});
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/**
 * Why initx cannot read the OCI archive at `path` (every blob is imported
 * into a scratch store and checked against its digest), or undefined when
 * it can.
 */
async function unreadableReason(path: string): Promise<string | undefined> {
  const scratch = await Deno.makeTempDir({ prefix: "initx-fixture-check-" });
  try {
    const image = await importOciArchive(new BlobStore(scratch), path, {
      platform: hostPlatform(),
    });
    return image.manifest.layers.length === 1
      ? undefined
      : `it has ${image.manifest.layers.length} layers, not 1`;
  } catch (e) {
    return (e as Error).message;
  } finally {
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
}

/** Mount points at or under `dir`, deepest first (from /proc/self/mounts). */
async function mountsUnder(dir: string): Promise<string[]> {
  let text = "";
  try {
    text = await Deno.readTextFile("/proc/self/mounts");
  } catch {
    return [];
  }
  return text.split("\n")
    .map((line) =>
      // Spaces and other bytes in a mount point are written as \ooo.
      (line.split(" ")[1] ?? "").replace(
        /\\([0-7]{3})/g,
        (_, o) => String.fromCharCode(parseInt(o, 8)),
      )
    )
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/**
 * Removes a debootstrap target. debootstrap mounts /proc and /sys inside it
 * while it runs; one that was killed may leave them mounted, and a
 * recursive remove must never walk into the host's own filesystems.
 */
async function removeTarget(dir: string): Promise<void> {
  for (const mount of await mountsUnder(dir)) {
    await run("umount", ["--lazy", mount]).catch(() => {});
  }
  const left = await mountsUnder(dir);
  if (left.length > 0) {
    throw new Error(
      `Cannot remove ${dir}: ${left.join(", ")} still mounted; unmount by hand`,
    );
  }
  await run("rm", ["-rf", "--one-file-system", dir]);
}

/**
 * What an image does not carry of a fresh debootstrap tree: the downloaded
 * packages and package lists (80 MB that `apt-get update` fetches again),
 * and the host's resolver configuration that debootstrap copies in.
 * Debian's own container images leave the same out.
 */
async function trimRootfs(rootfs: string): Promise<void> {
  const emptyOut = async (dir: string, keep: (name: string) => boolean) => {
    try {
      for await (const e of Deno.readDir(join(rootfs, dir))) {
        if (e.isFile && !keep(e.name)) {
          await Deno.remove(join(rootfs, dir, e.name));
        }
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  };
  await emptyOut("var/cache/apt/archives", (n) => !n.endsWith(".deb"));
  await emptyOut("var/lib/apt/lists", (n) => n === "lock");
  await Deno.remove(join(rootfs, "etc/resolv.conf")).catch(() => {});
}

/** Runs debootstrap, passing its overall progress lines on. */
async function debootstrap(
  source: DebianSource,
  target: string,
  progress: (line: string) => void,
): Promise<void> {
  const args = [
    "--variant=minbase",
    `--arch=${source.architecture}`,
    source.suite,
    target,
    source.mirror,
  ];
  const child = new Deno.Command(
    which("debootstrap") ?? "/usr/sbin/debootstrap",
    {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    },
  ).spawn();
  const tail: string[] = [];
  const lines = async (stream: ReadableStream<Uint8Array>) => {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      const parts = pending.split("\n");
      pending = parts.pop()!;
      for (const line of parts) {
        tail.push(line);
        if (tail.length > 20) tail.shift();
        if (line.trim() && !PER_PACKAGE_LINE.test(line)) {
          progress(`fixture: debootstrap: ${line.trim()}`);
        }
      }
    }
    if (pending) tail.push(pending);
  };
  await Promise.all([lines(child.stdout), lines(child.stderr)]);
  const status = await child.status;
  if (!status.success) {
    throw new Error(
      `Cannot build the Debian fixture: "debootstrap ${
        args.join(" ")
      }" failed with exit ${status.code}:\n${tail.join("\n")}`,
    );
  }
}

/**
 * The path of a Debian minbase image of the host's release, as an OCI
 * archive (`oci-archive:PATH`): the cached one in `.cache/fixtures/` when
 * initx can read it, else built now with debootstrap from the host's mirror
 * (a minute or more; building needs root and the network).
 *
 * @example
 * ```ts ignore
 * import { ensureDebianFixture } from "./_debian_fixture.ts";
 * const path = await ensureDebianFixture();
 * // deno run -A mod.ts run oci-archive:$path -- apt-get --version
 * ```
 */
export async function ensureDebianFixture(
  progress: (line: string) => void = (l) => console.error(l),
): Promise<string> {
  const source = await hostDebianSource();
  const dir = join(PROJECT_ROOT, ".cache", "fixtures");
  const path = join(
    dir,
    `debian-minbase-${source.suite}-${source.architecture}-v${FIXTURE_FORMAT}.tar`,
  );
  const cached = await Deno.stat(path).then(() => true, () => false);
  if (cached) {
    const why = await unreadableReason(path);
    if (why === undefined) return path;
    progress(`fixture: building ${path} again: ${why}`);
  }
  if (Deno.uid() !== 0) {
    throw new Error(
      `Cannot build the Debian fixture ${path}: debootstrap needs root (run as root once to cache it)`,
    );
  }
  await ensurePackages(FIXTURE_TOOLS, progress);
  await Deno.mkdir(dir, { recursive: true });
  const t0 = performance.now();
  const seconds = () => ((performance.now() - t0) / 1000).toFixed(0);
  const work = await Deno.makeTempDir({ prefix: "initx-debian-" });
  const rootfs = join(work, "rootfs");
  try {
    progress(
      `fixture: debootstrap --variant=minbase ${source.suite} (${source.architecture}) from ${source.mirror} into ${rootfs}; this takes a minute or more`,
    );
    await debootstrap(source, rootfs, progress);
    progress(`fixture: installed in ${seconds()} s; packing ${path}`);
    await trimRootfs(rootfs);
    const packed = await packRootfs(rootfs, path, {
      name: source.suite,
      createdBy:
        `debootstrap --variant=minbase --arch=${source.architecture} ${source.suite} ROOT ${source.mirror}`,
    });
    const size = (await Deno.stat(path)).size;
    progress(
      `fixture: ${path}: ${(size / 2 ** 20).toFixed(1)} MiB, layer ${
        packed.diffId.slice(0, 19)
      }, built in ${seconds()} s`,
    );
  } finally {
    // Reported, not thrown: a failed build's own error matters more.
    await removeTarget(work).catch((e) =>
      progress(`fixture: ${(e as Error).message}`)
    );
  }
  const why = await unreadableReason(path);
  if (why !== undefined) {
    throw new Error(
      `Cannot read the Debian fixture just built at ${path}: ${why}`,
    );
  }
  return path;
}
