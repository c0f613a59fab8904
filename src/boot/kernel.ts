/**
 * Kernel provisioning: find or fetch a Linux kernel image, its config and
 * its modules, and keep them in a cache.
 *
 * Sources, in order:
 * 1. an explicit path (`kernel`, optional `modules`; or `INITX_KERNEL`,
 *    `INITX_MODULES`);
 * 2. Debian's cloud kernel (`linux-image-cloud-amd64` / `-arm64`), resolved
 *    with `apt-cache`, fetched with `apt-get download`, unpacked with
 *    `dpkg-deb -x` or, without dpkg, by {@linkcode extractDeb};
 * 3. Alpine's `linux-virt` `.apk` from a mirror over HTTP(S)
 *    (`INITX_ALPINE_MIRROR`, `INITX_ALPINE_BRANCH`), for hosts without apt.
 *    The mirror is not trusted: its `APKINDEX` must carry a signature by one
 *    of Alpine's keys ({@linkcode ALPINE_KEYS}), and the `.apk` must match
 *    that index (see `apk.ts`) before anything of it is unpacked.
 *
 * `source` (or `INITX_KERNEL_SOURCE`) picks 2 or 3; the default is Debian.
 * Fetched kernels live in `<cache>/kernels/<source>/<package>_<version>/`,
 * unpacked into a temporary directory first and renamed into place, with a
 * `kernel.json` describing them; an entry is reused only if its image still
 * looks like a kernel.
 *
 * @module
 */

import { basename, dirname, join, resolve } from "node:path";
import { ALPINE_KEYS } from "./alpine_keys.ts";
import type { ApkIndexEntry } from "./apk.ts";

// The package readers (`apk.ts`, `archive.ts`) are loaded only when a kernel
// is fetched: they bring `node:zlib` and `node:crypto`, whose loading is a
// large share of a cold `initx run`'s start-up on a slow CPU, and a run with
// a cached kernel never needs them.
const archiveReaders = () => import("./archive.ts");
const apkReaders = () => import("./apk.ts");

/** CPU architecture of a kernel, in the kernel's own spelling. */
export type KernelArch = "x86_64" | "aarch64";

/** Where a kernel came from. */
export type KernelSource = "path" | "debian" | "alpine";

/** A kernel ready to boot. */
export interface KernelInfo {
  /** Kernel image: a bzImage on x86_64, an `Image` on aarch64. */
  image: string;
  /** The kernel's `.config`, when one was found. */
  config: string | undefined;
  /** Module directory (`lib/modules/<version>`), when one was found. */
  modules: string | undefined;
  /** Kernel release (`uname -r`), e.g. `6.1.0-57-cloud-amd64`. */
  version: string;
  /** Architecture the kernel runs on. */
  arch: KernelArch;
  /** Where it came from. */
  source: KernelSource;
  /** Package and version it was unpacked from (fetched kernels only). */
  package: string | undefined;
}

/** Options of {@linkcode ensureKernel}. */
export interface EnsureKernelOptions {
  /** Use this kernel image instead of fetching one. */
  kernel?: string;
  /** Module directory for `kernel` (`lib/modules/<version>` or a root holding `lib/modules`). */
  modules?: string;
  /** Cache directory (default: {@linkcode defaultCacheDir}). */
  cacheDir?: string;
  /** Where to fetch from (default: `INITX_KERNEL_SOURCE`, else `"debian"`). */
  source?: "debian" | "alpine";
  /** Architecture to fetch for (default: the host's). */
  arch?: KernelArch;
  /** Alpine mirror base URL (default: `INITX_ALPINE_MIRROR`, else the Alpine CDN). */
  alpineMirror?: string;
  /** Alpine branch (default: `INITX_ALPINE_BRANCH`, else `latest-stable`). */
  alpineBranch?: string;
  /**
   * Public keys (PEM) trusted to sign the Alpine index, by key file name as
   * `.SIGN.RSA.<name>` names them (default: Alpine's own,
   * {@linkcode ALPINE_KEYS}); for a mirror of packages signed elsewhere.
   */
  alpineKeys?: Readonly<Record<string, string>>;
  /**
   * Look up the newest kernel even if the last lookup is less than a day old
   * (default `false`: within a day, a cached kernel is used without asking
   * `apt-cache` or the mirror).
   */
  refresh?: boolean;
  /**
   * Receives progress messages. Default: print `initx: <message>` on stderr
   * when stderr is a terminal, else nothing.
   */
  onProgress?: (message: string) => void;
}

/** Default Alpine mirror; only contacted when the Alpine source is chosen. */
const ALPINE_DEFAULT_MIRROR = "https://dl-cdn.alpinelinux.org/alpine";
/** How long a lookup of the newest kernel is trusted before asking apt or the mirror again. */
const LOOKUP_TTL_MS = 24 * 60 * 60 * 1000;
/** Name of the description file in every cache entry. */
const ENTRY_FILE = "kernel.json";
/** x86 boot protocol: "HdrS" at 0x202, kernel_version pointer at 0x20e (Documentation/arch/x86/boot.rst). */
const BZIMAGE_MAGIC_OFFSET = 0x202;
const BZIMAGE_VERSION_OFFSET = 0x20e;
/** arm64 Image header: "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst). */
const ARM64_MAGIC_OFFSET = 0x38;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env: behave as if unset
  }
}

function hostArch(): KernelArch {
  return Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
}

/**
 * Returns initx's cache directory: `$INITX_CACHE`, else
 * `~/Library/Caches/initx` on macOS, else `$XDG_CACHE_HOME/initx`, else
 * `~/.cache/initx`.
 *
 * @example
 * ```ts
 * import { defaultCacheDir } from "./kernel.ts";
 * console.assert(defaultCacheDir().length > 0);
 * ```
 */
export function defaultCacheDir(): string {
  const explicit = env("INITX_CACHE");
  if (explicit) return explicit;
  const home = env("HOME") ?? env("USERPROFILE") ?? ".";
  if (Deno.build.os === "darwin") return join(home, "Library/Caches/initx");
  return join(env("XDG_CACHE_HOME") ?? join(home, ".cache"), "initx");
}

/**
 * Tells whether `bytes` (the start of an image, 4 KiB is enough) look like a
 * bootable kernel for `arch`: an x86 bzImage (`HdrS` at 0x202) or an arm64
 * `Image` (`ARM\x64` at 0x38).
 *
 * @example
 * ```ts
 * import { isKernelImage } from "./kernel.ts";
 * const image = new Uint8Array(0x400);
 * image.set(new TextEncoder().encode("HdrS"), 0x202);
 * console.assert(isKernelImage(image, "x86_64"));
 * ```
 */
export function isKernelImage(bytes: Uint8Array, arch: KernelArch): boolean {
  const at = (offset: number, magic: string) =>
    decoder.decode(bytes.subarray(offset, offset + magic.length)) === magic;
  return arch === "x86_64"
    ? at(BZIMAGE_MAGIC_OFFSET, "HdrS")
    : at(ARM64_MAGIC_OFFSET, "ARM\x64");
}

/**
 * Reads the kernel release from a bzImage's setup header (`kernel_version`),
 * e.g. `6.1.0-57-cloud-amd64`; `undefined` when the image does not say.
 * `bytes` must hold the setup code (the first 0x10200 bytes are enough).
 *
 * @example
 * ```ts
 * import { bzImageVersion } from "./kernel.ts";
 * const image = new Uint8Array(0x400);
 * image.set(new TextEncoder().encode("HdrS"), 0x202);
 * image.set([0x00, 0x01], 0x20e); // string at 0x100 + 0x200
 * image.set(new TextEncoder().encode("6.6.1-virt (x) #1\0"), 0x300);
 * console.assert(bzImageVersion(image) === "6.6.1-virt");
 * ```
 */
export function bzImageVersion(bytes: Uint8Array): string | undefined {
  if (!isKernelImage(bytes, "x86_64")) return undefined;
  const pointer = (bytes[BZIMAGE_VERSION_OFFSET] ?? 0) |
    ((bytes[BZIMAGE_VERSION_OFFSET + 1] ?? 0) << 8);
  if (pointer === 0) return undefined;
  const start = pointer + 0x200;
  const end = bytes.indexOf(0, start);
  if (start >= bytes.length || end < 0) return undefined;
  const text = decoder.decode(bytes.subarray(start, end)).split(" ")[0];
  return text || undefined;
}

/**
 * Reads the first bytes of a file: enough for the magic checks and the
 * bzImage version string (its 16-bit pointer is relative to 0x200).
 */
async function readHead(
  path: string,
  length = 0x10200,
): Promise<Uint8Array> {
  const file = await Deno.open(path);
  try {
    const buffer = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const n = await file.read(buffer.subarray(filled));
      if (n === null) break;
      filled += n;
    }
    return buffer.subarray(0, filled);
  } finally {
    file.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

async function listDir(path: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(path)) names.push(entry.name);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return names.sort();
}

function defaultProgress(message: string): void {
  if (Deno.stderr.isTerminal()) {
    Deno.stderr.writeSync(encoder.encode(`initx: ${message}\n`));
  }
}

/**
 * Returns a kernel ready to boot: the one named by `kernel`, else a cached
 * or freshly fetched Debian cloud kernel or Alpine `linux-virt` kernel.
 *
 * @example
 * ```ts ignore
 * import { ensureKernel } from "./kernel.ts";
 * const kernel = await ensureKernel();
 * console.log(kernel.image, kernel.modules, kernel.version);
 * // /root/.cache/initx/kernels/debian/linux-image-6.1.0-57-cloud-amd64_6.1.192-3/boot/vmlinuz-6.1.0-57-cloud-amd64 ...
 * ```
 */
export async function ensureKernel(
  options: EnsureKernelOptions = {},
): Promise<KernelInfo> {
  const arch = options.arch ?? hostArch();
  const kernel = options.kernel ?? env("INITX_KERNEL");
  if (kernel !== undefined) {
    return await explicitKernel(kernel, {
      modules: options.modules ?? env("INITX_MODULES"),
      arch,
    });
  }
  const source = options.source ?? env("INITX_KERNEL_SOURCE") ?? "debian";
  const cacheDir = resolve(options.cacheDir ?? defaultCacheDir());
  const progress = options.onProgress ?? defaultProgress;
  const refresh = options.refresh ?? false;
  switch (source) {
    case "debian":
      return await debianKernel({ cacheDir, arch, progress, refresh });
    case "alpine":
      return await alpineKernel({
        cacheDir,
        arch,
        progress,
        mirror: options.alpineMirror ?? env("INITX_ALPINE_MIRROR") ??
          ALPINE_DEFAULT_MIRROR,
        branch: options.alpineBranch ?? env("INITX_ALPINE_BRANCH") ??
          "latest-stable",
        keys: options.alpineKeys ?? ALPINE_KEYS,
        refresh,
      });
    default:
      throw new Error(
        `Cannot fetch a kernel: unknown source '${source}' (INITX_KERNEL_SOURCE must be 'debian' or 'alpine')`,
      );
  }
}

// ---------------------------------------------------------------------------
// Explicit path

async function explicitKernel(
  image: string,
  options: { modules: string | undefined; arch: KernelArch },
): Promise<KernelInfo> {
  image = resolve(image);
  let head: Uint8Array;
  try {
    head = await readHead(image);
  } catch (error) {
    throw new Error(
      `Cannot use kernel '${image}': ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (!isKernelImage(head, options.arch)) {
    throw new Error(
      `Cannot use kernel '${image}': ${describeImageCheck(options.arch)}`,
    );
  }
  const suffix = basename(image).replace(/^(vmlinuz|bzImage|Image)-?/, "");
  let version = options.arch === "x86_64" ? bzImageVersion(head) : undefined;
  let modules: string | undefined;
  if (options.modules !== undefined) {
    modules = await findModuleDir(resolve(options.modules), version ?? suffix);
    if (modules === undefined) {
      throw new Error(
        `Cannot use modules '${options.modules}': no lib/modules/<version> directory there`,
      );
    }
  } else {
    const root = dirname(dirname(image)); // <root>/boot/vmlinuz-<version>
    for (const candidate of [version, suffix]) {
      if (!candidate) continue;
      for (const base of ["lib/modules", "usr/lib/modules"]) {
        const dir = join(root, base, candidate);
        if (modules === undefined && await isDirectory(dir)) modules = dir;
      }
    }
  }
  version ??= modules ? basename(modules) : suffix || "unknown";
  let config: string | undefined;
  const configNames = [`config-${version}`, "config"];
  if (suffix !== "") configNames.unshift(`config-${suffix}`);
  for (const name of configNames) {
    const path = join(dirname(image), name);
    if (config === undefined && await exists(path)) config = path;
  }
  return {
    image,
    config,
    modules,
    version,
    arch: options.arch,
    source: "path",
    package: undefined,
  };
}

function describeImageCheck(arch: KernelArch): string {
  return arch === "x86_64"
    ? "not a bzImage (no 'HdrS' magic at offset 0x202)"
    : "not an arm64 Image (no 'ARM\\x64' magic at offset 0x38)";
}

/** Accepts `lib/modules/<version>` itself or a directory above it. */
async function findModuleDir(
  dir: string,
  version: string,
): Promise<string | undefined> {
  if (
    await isDirectory(join(dir, "kernel")) ||
    await exists(join(dir, "modules.builtin"))
  ) {
    return dir;
  }
  for (const base of [".", "lib/modules", "usr/lib/modules"]) {
    const parent = join(dir, base);
    const versions = [];
    for (const name of await listDir(parent)) {
      if (await isDirectory(join(parent, name, "kernel"))) versions.push(name);
    }
    const pick = versions.includes(version)
      ? version
      : versions.length === 1
      ? versions[0]
      : undefined;
    if (pick !== undefined) return join(parent, pick);
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Cache entries

/** What `kernel.json` in a cache entry holds (paths relative to the entry). */
interface EntryDescription {
  image: string;
  config: string | undefined;
  modules: string | undefined;
  version: string;
  arch: KernelArch;
  source: "debian" | "alpine";
  package: string;
}

async function readEntry(dir: string): Promise<KernelInfo | undefined> {
  let description: EntryDescription;
  try {
    description = JSON.parse(
      await Deno.readTextFile(join(dir, ENTRY_FILE)),
    ) as EntryDescription;
    const image = join(dir, description.image);
    if (!isKernelImage(await readHead(image), description.arch)) {
      return undefined;
    }
    if (
      description.modules !== undefined &&
      !await isDirectory(join(dir, description.modules))
    ) {
      return undefined;
    }
    return {
      image,
      config: description.config && join(dir, description.config),
      modules: description.modules && join(dir, description.modules),
      version: description.version,
      arch: description.arch,
      source: description.source,
      package: description.package,
    };
  } catch {
    return undefined;
  }
}

/**
 * Describes an unpacked kernel tree and moves it into the cache. `root`
 * must be on the same filesystem as `entryDir` (it is a sibling temp dir).
 */
async function commitEntry(
  root: string,
  entryDir: string,
  found: EntryDescription,
): Promise<KernelInfo> {
  const imagePath = join(root, found.image);
  if (!isKernelImage(await readHead(imagePath), found.arch)) {
    throw new Error(
      `Cannot use the kernel from ${found.package}: ${
        describeImageCheck(found.arch)
      }`,
    );
  }
  await Deno.writeTextFile(
    join(root, ENTRY_FILE),
    JSON.stringify(found, null, 2) + "\n",
  );
  await Deno.mkdir(dirname(entryDir), { recursive: true });
  try {
    await Deno.rename(root, entryDir);
  } catch (error) {
    // Another process may have finished the same entry first: use theirs.
    const theirs = await readEntry(entryDir);
    await Deno.remove(root, { recursive: true }).catch(() => {});
    if (theirs) return theirs;
    throw new Error(
      `Cannot store the kernel in the cache '${entryDir}': ${
        (error as Error).message
      }`,
      { cause: error },
    );
  }
  const info = await readEntry(entryDir);
  if (!info) {
    throw new Error(
      `Cannot store the kernel in the cache '${entryDir}': the entry does not read back`,
    );
  }
  return info;
}

/** Finds `boot/<image>`, the config and `lib/modules/<version>` in an unpacked package. */
async function describeTree(
  root: string,
): Promise<
  {
    image: string;
    config: string | undefined;
    modules: string | undefined;
    version: string;
  }
> {
  const boot = await listDir(join(root, "boot"));
  const imageName = boot.find((name) => name.startsWith("vmlinuz-"));
  if (imageName === undefined) {
    throw new Error(
      `no boot/vmlinuz-* kernel image (boot/ holds: ${
        boot.join(", ") || "nothing"
      })`,
    );
  }
  const suffix = imageName.replace(/^vmlinuz-/, "");
  let modules: string | undefined;
  for (const base of ["lib/modules", "usr/lib/modules"]) {
    for (const name of await listDir(join(root, base))) {
      if (
        modules === undefined &&
        await isDirectory(join(root, base, name, "kernel"))
      ) {
        modules = join(base, name);
      }
    }
  }
  const configName = `config-${suffix}`;
  return {
    image: join("boot", imageName),
    config: boot.includes(configName) ? join("boot", configName) : undefined,
    modules,
    version: modules ? basename(modules) : suffix,
  };
}

async function withTempDir<T>(
  parent: string,
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  await Deno.mkdir(parent, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: parent, prefix: ".tmp-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function safeName(text: string): string {
  return text.replace(/[^A-Za-z0-9._+-]/g, "_");
}

// ---------------------------------------------------------------------------
// Debian

interface FetchContext {
  cacheDir: string;
  arch: KernelArch;
  progress: (message: string) => void;
}

async function run(
  command: string,
  args: string[],
  options: { cwd?: string } = {},
): Promise<string> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(command, {
      args,
      cwd: options.cwd,
      stdout: "piped",
      stderr: "piped",
      env: { LC_ALL: "C" },
    }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`'${command}' is not installed`);
    }
    throw error;
  }
  if (!output.success) {
    const details = decoder.decode(output.stderr).trim() ||
      decoder.decode(output.stdout).trim();
    throw new Error(
      `${command} ${args.join(" ")} failed (exit ${output.code}): ${details}`,
    );
  }
  return decoder.decode(output.stdout);
}

async function commandExists(command: string): Promise<boolean> {
  try {
    await new Deno.Command(command, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return true;
  } catch {
    return false;
  }
}

/**
 * Remembers which cache entry answered a lookup (`key`: the Debian meta
 * package or the Alpine index URL), so later calls within
 * {@linkcode LOOKUP_TTL_MS} skip `apt-cache` and the network.
 */
interface LatestPointer {
  key: string;
  entry: string;
  checked: number;
}

function pointerPath(context: FetchContext, source: string): string {
  return join(
    context.cacheDir,
    "kernels",
    source,
    safeName(`latest_${context.arch}.json`),
  );
}

async function readLatest(
  context: FetchContext,
  source: string,
  key: string,
): Promise<{ info: KernelInfo | undefined; fresh: boolean }> {
  try {
    const path = pointerPath(context, source);
    const pointer = JSON.parse(await Deno.readTextFile(path)) as LatestPointer;
    if (pointer.key !== key) return { info: undefined, fresh: false };
    const info = await readEntry(join(dirname(path), pointer.entry));
    return { info, fresh: Date.now() - pointer.checked < LOOKUP_TTL_MS };
  } catch {
    return { info: undefined, fresh: false };
  }
}

async function writeLatest(
  context: FetchContext,
  source: string,
  pointer: Omit<LatestPointer, "checked">,
): Promise<void> {
  const path = pointerPath(context, source);
  const temp = `${path}.${crypto.randomUUID()}.tmp`;
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.writeTextFile(
    temp,
    JSON.stringify({ ...pointer, checked: Date.now() }) + "\n",
  );
  await Deno.rename(temp, path);
}

/**
 * Returns the cache entry in `entryDir`, or builds it with `fill` (which
 * unpacks a package into the temp directory it is given and returns the
 * unpacked root and its description).
 */
async function cachedOrFetched(
  context: FetchContext,
  entryDir: string,
  label: string,
  fill: (temp: string) => Promise<{ root: string; entry: EntryDescription }>,
): Promise<KernelInfo> {
  const cached = await readEntry(entryDir);
  if (cached) return cached;
  if (await exists(entryDir)) {
    context.progress(`cached kernel ${label} is damaged, fetching it again`);
    await Deno.remove(entryDir, { recursive: true });
  }
  const info = await withTempDir(
    join(context.cacheDir, "kernels"),
    async (temp) => {
      const { root, entry } = await fill(temp);
      return await commitEntry(root, entryDir, entry);
    },
  );
  context.progress(`kernel ${info.version} ready in ${entryDir}`);
  return info;
}

async function debianKernel(
  context: FetchContext & { refresh: boolean },
): Promise<KernelInfo> {
  const debArch = context.arch === "x86_64" ? "amd64" : "arm64";
  const meta = `linux-image-cloud-${debArch}`;
  const latest = await readLatest(context, "debian", meta);
  if (latest.info && latest.fresh && !context.refresh) return latest.info;
  if (!await commandExists("apt-get") || !await commandExists("apt-cache")) {
    throw new Error(
      "Cannot fetch the default kernel: apt-get is not available on this host; pass --kernel PATH or set INITX_KERNEL_SOURCE=alpine",
    );
  }
  const { name, version } = await debianPackage(meta);
  const label = `${name}_${version}`;
  const entryDir = join(context.cacheDir, "kernels", "debian", safeName(label));
  const info = await cachedOrFetched(context, entryDir, label, async (temp) => {
    context.progress(`fetching kernel ${name} ${version} ...`);
    const sandbox = Deno.uid() === 0 ? ["-o", "APT::Sandbox::User=root"] : [];
    try {
      await run("apt-get", [...sandbox, "download", `${name}=${version}`], {
        cwd: temp,
      });
    } catch (error) {
      throw new Error(
        `Cannot fetch the default kernel ${name}: ${(error as Error).message}`,
        { cause: error },
      );
    }
    const debName = (await listDir(temp)).find((f) => f.endsWith(".deb"));
    if (debName === undefined) {
      throw new Error(
        `Cannot fetch the default kernel ${name}: apt-get download left no .deb file`,
      );
    }
    const deb = join(temp, debName);
    const root = join(temp, "root");
    context.progress(`unpacking ${debName} ...`);
    try {
      if (await commandExists("dpkg-deb")) {
        await run("dpkg-deb", ["-x", deb, root]);
      } else {
        const { extractDeb } = await archiveReaders();
        await extractDeb(await Deno.readFile(deb), root);
      }
    } catch (error) {
      throw new Error(
        `Cannot unpack ${debName}: ${(error as Error).message}`,
        { cause: error },
      );
    }
    await Deno.remove(deb);
    const tree = await describeTree(root).catch((error) => {
      throw new Error(
        `Cannot use the kernel from ${debName}: ${(error as Error).message}`,
      );
    });
    return {
      root,
      entry: { ...tree, arch: context.arch, source: "debian", package: label },
    };
  });
  await writeLatest(context, "debian", {
    key: meta,
    entry: basename(entryDir),
  });
  return info;
}

/** Resolves the meta package to the versioned kernel package apt would install. */
async function debianPackage(
  meta: string,
): Promise<{ name: string; version: string }> {
  let show: string;
  try {
    show = await run("apt-cache", ["show", "--no-all-versions", meta]);
  } catch (error) {
    throw new Error(
      `Cannot fetch the default kernel: apt-cache does not know '${meta}' (${
        (error as Error).message
      }); run apt-get update, pass --kernel PATH or set INITX_KERNEL_SOURCE=alpine`,
      { cause: error },
    );
  }
  // Debian's meta package pins its kernel: "Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)".
  const depends = /^Depends:(.*)$/m.exec(show)?.[1] ?? "";
  const match = /(linux-image-[^\s,(|]+)\s*(?:\(=\s*([^)\s]+)\))?/.exec(
    depends,
  );
  const name = match?.[1];
  if (name === undefined) {
    throw new Error(
      `Cannot fetch the default kernel: '${meta}' depends on no linux-image package (Depends:${depends})`,
    );
  }
  let version = match?.[2];
  if (version === undefined) {
    const versioned = await run("apt-cache", [
      "show",
      "--no-all-versions",
      name,
    ]);
    version = /^Version:\s*(\S+)/m.exec(versioned)?.[1];
  }
  if (version === undefined) {
    throw new Error(
      `Cannot fetch the default kernel: apt-cache gives no version for ${name}`,
    );
  }
  return { name, version };
}

// ---------------------------------------------------------------------------
// Alpine

interface AlpineContext extends FetchContext {
  mirror: string;
  branch: string;
  keys: Readonly<Record<string, string>>;
  refresh: boolean;
}

/** Alpine's package name for the virtual-machine kernel. */
const ALPINE_PACKAGE = "linux-virt";

async function download(url: string, what: string): Promise<Uint8Array> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(
      `Cannot download ${what} from ${url}: ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (!response.ok) {
    await response.body?.cancel();
    throw new Error(
      `Cannot download ${what} from ${url}: HTTP ${response.status} ${response.statusText}`
        .trimEnd(),
    );
  }
  return await response.bytes();
}

/** Finds a package in a signed `APKINDEX.tar.gz`. */
async function alpineIndexEntry(
  archive: Uint8Array,
  indexUrl: string,
  keys: Readonly<Record<string, string>>,
): Promise<ApkIndexEntry> {
  const { readSignedApkIndex } = await apkReaders();
  const entries = await readSignedApkIndex(archive, { keys, source: indexUrl });
  const entry = entries.find((e) => e.name === ALPINE_PACKAGE);
  if (entry === undefined) {
    throw new Error(`Cannot find ${ALPINE_PACKAGE} in ${indexUrl}`);
  }
  return entry;
}

async function alpineKernel(context: AlpineContext): Promise<KernelInfo> {
  const mirror = context.mirror.replace(/\/+$/, "");
  const base = `${mirror}/${context.branch}/main/${context.arch}`;
  const latest = await readLatest(context, "alpine", base);
  if (latest.info && latest.fresh && !context.refresh) return latest.info;
  const indexUrl = `${base}/APKINDEX.tar.gz`;
  let archive: Uint8Array;
  try {
    archive = await download(indexUrl, "the Alpine package index");
  } catch (error) {
    if (!latest.info) throw error;
    context.progress(
      `cannot reach ${mirror}, using cached kernel ${latest.info.version}`,
    );
    return latest.info;
  }
  // An index that fails its signature check is an error, cached kernel or
  // not: the mirror answers, with something Alpine did not sign.
  const pkg = await alpineIndexEntry(archive, indexUrl, context.keys);
  const version = pkg.version;
  const label = `${ALPINE_PACKAGE}_${version}_${context.arch}`;
  const entryDir = join(context.cacheDir, "kernels", "alpine", safeName(label));
  const info = await cachedOrFetched(context, entryDir, label, async (temp) => {
    const file = `${ALPINE_PACKAGE}-${version}.apk`;
    context.progress(`fetching kernel ${file} from ${mirror} ...`);
    const apkBytes = await download(
      `${base}/${file}`,
      `kernel package ${file}`,
    );
    // Only the data member, checked against the signed index, is unpacked.
    const data = await (await apkReaders()).verifiedApkData(apkBytes, pkg);
    context.progress(`unpacking ${file} ...`);
    const root = join(temp, "root");
    try {
      const { extractTar, gunzip, readTar } = await archiveReaders();
      await extractTar(readTar(await gunzip(data)), root);
    } catch (error) {
      throw new Error(
        `Cannot unpack ${file}: ${(error as Error).message}`,
        { cause: error },
      );
    }
    const tree = await describeTree(root).catch((error) => {
      throw new Error(
        `Cannot use the kernel from ${file}: ${(error as Error).message}`,
      );
    });
    return {
      root,
      entry: { ...tree, arch: context.arch, source: "alpine", package: label },
    };
  });
  await writeLatest(context, "alpine", {
    key: base,
    entry: basename(entryDir),
  });
  return info;
}
