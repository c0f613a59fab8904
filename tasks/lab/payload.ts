/**
 * The programs the lab's base initramfs carries beside its kernel, per
 * architecture: a static busybox, `deno` with the shared libraries it needs,
 * and, where the host can give one, QEMU for the nested peer.
 *
 * - `x86_64` takes the host's own: the `deno` running this code, the host's
 *   QEMU, their libraries as `ldd` lists them, Debian's `busybox-static`.
 * - `aarch64` fetches them once into the lab cache: `deno` from the npm
 *   package `@deno/linux-arm64-glibc` at the host deno's version, glibc,
 *   libgcc and `busybox-static` from Debian's `arm64` packages. No arm64
 *   `ldd` runs here, so the libraries are the closure of the ELF files'
 *   `NEEDED` entries (and `deno`'s program interpreter) as `readelf` reads
 *   them, found in the unpacked packages' library folders. QEMU comes only
 *   when asked (`peer`: it is big, and every lab boot unpacks it):
 *   `qemu-system-aarch64` from Debian's `qemu-system-arm:arm64`, fetched
 *   with the packages `apt-cache depends` says it needs, all unpacked into
 *   one root with the rest so that every program gets the same glibc.
 *
 * @module
 */

import { dirname, isAbsolute, join } from "node:path";
import { LAB_MACHINES, type LabArch } from "./arch.ts";
import { ensureDebianArch, ensureDebianRoot } from "./debian.ts";
import { which } from "../_packages.ts";
import { requireStaticBusybox } from "../../src/initx/busybox_guest.ts";

export type { LabArch };

/**
 * One file of the lab's base initramfs: a copy of a host file, or a
 * symbolic link, at `lab` (a path inside the lab, without a leading `/`
 * mattering).
 */
export type LabFile =
  | { lab: string; host: string }
  | { lab: string; symlink: string };

/** What {@linkcode labPayload} gives the base initramfs. */
export interface LabPayload {
  /** Host path of a static busybox built for the lab's CPU. */
  busybox: string;
  /** What the payload is made of; the cached base is rebuilt when it changes. */
  key: string[];
  /** The files to put into the lab, computed when the base is (re)built. */
  files(progress: (line: string) => void): Promise<LabFile[]>;
}

/** Options of {@linkcode labPayload}. */
export interface LabPayloadOptions {
  /** The lab cache (fetched pieces live in `<cacheDir>/<arch>/`). */
  cacheDir: string;
  /** Progress messages (downloads). */
  progress: (line: string) => void;
  /**
   * Carry QEMU (`qemu-system-<arch>` and its libraries) for a nested peer;
   * default {@linkcode labCarriesPeer}.
   */
  peer?: boolean;
}

/**
 * Whether the lab of `arch` carries QEMU when not told: the x86_64 lab
 * always has (the host's own, a copy), the aarch64 one only when asked
 * (fetched, and about 50 MB more for every lab boot to unpack).
 *
 * @example
 * ```ts
 * import { labCarriesPeer } from "./payload.ts";
 * console.assert(labCarriesPeer("x86_64") && !labCarriesPeer("aarch64"));
 * ```
 */
export function labCarriesPeer(arch: LabArch): boolean {
  return arch === "x86_64";
}

/** `e_machine` of each lab architecture (System V ABI, ELF header). */
export const ELF_MACHINE: Readonly<Record<LabArch, number>> = {
  x86_64: 62, // EM_X86_64
  aarch64: 183, // EM_AARCH64
};

/** Offset of `e_machine` in the ELF header. */
const E_MACHINE = 18;

/** QEMU firmware that `-M microvm` needs, copied into the lab for the peer. */
const QEMU_FIRMWARE = ["bios-microvm.bin", "linuxboot_dma.bin", "kvmvapic.bin"];

/** Where the fetched aarch64 pieces come from. */
const AARCH64 = {
  /** Debian packages: glibc and libgcc for deno, and a static busybox. */
  debs: ["libc6:arm64", "libgcc-s1:arm64", "busybox-static:arm64"],
  /** npm package holding deno's aarch64 Linux binary. */
  denoNpm: "@deno/linux-arm64-glibc",
  /** Debian package holding `qemu-system-aarch64`, for the nested peer. */
  peerDeb: "qemu-system-arm:arm64",
  /**
   * Dependencies of `peerDeb` not followed: QEMU's helpers and their data
   * (bridge helper, virtiofsd, vhost-user GPU), whose own libraries (sound,
   * SPICE, USB redirection, GBM) `qemu-system-aarch64` does not load.
   */
  peerSkip: ["qemu-system-common:arm64"],
  /** Where Debian puts arm64 libraries, searched in this order (ld.so's). */
  libraryDirs: [
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib",
    "usr/lib",
  ],
};

const decoder = new TextDecoder();

async function run(cmd: string[], options: { cwd?: string } = {}) {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    cwd: options.cwd,
    env: { LC_ALL: "C" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot run "${cmd.join(" ")}": exit ${out.code}: ${
        decoder.decode(out.stderr).trim().slice(-2000)
      }`,
    );
  }
  return decoder.decode(out.stdout);
}

async function statKey(path: string): Promise<string> {
  const s = await Deno.stat(path);
  return `${path}:${s.size}:${s.mtime?.getTime()}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The static busybox, `deno` and libraries of the lab of `arch`, fetching
 * what the host cannot give (the first time only).
 */
export async function labPayload(
  arch: LabArch,
  options: LabPayloadOptions,
): Promise<LabPayload> {
  const peer = options.peer ?? labCarriesPeer(arch);
  switch (arch) {
    case "x86_64":
      return await hostPayload(peer);
    case "aarch64":
      return await aarch64Payload(options, peer);
    default: {
      const never: never = arch;
      throw new Error(`Cannot build the KVM lab for "${never}"`);
    }
  }
}

async function hostPayload(peer: boolean): Promise<LabPayload> {
  if (Deno.build.arch !== "x86_64") {
    throw new Error(
      `Cannot build the x86_64 lab on an ${Deno.build.arch} host: it carries the host's own deno and QEMU`,
    );
  }
  const deno = Deno.execPath();
  const qemu = peer ? which("qemu-system-x86_64") : undefined;
  if (peer && qemu === undefined) {
    throw new Error(
      "Cannot build the x86_64 lab: qemu-system-x86_64 is not installed (Debian package qemu-system-x86)",
    );
  }
  const busybox = requireStaticBusybox();
  const programs = qemu === undefined ? [deno] : [deno, qemu];
  return {
    busybox,
    key: [
      ...await Promise.all(programs.map(statKey)),
      await statKey(busybox),
    ],
    files: async (progress) => {
      const files: LabFile[] = [];
      for (const bin of programs) {
        files.push({ lab: join("usr/bin", bin.split("/").pop()!), host: bin });
        for (const lib of await sharedLibraries(bin)) {
          files.push({ lab: lib, host: lib });
        }
      }
      if (qemu === undefined) return files;
      for (const fw of QEMU_FIRMWARE) {
        const host = join("/usr/share/qemu", fw);
        if (await exists(host)) files.push({ lab: host, host });
        else {
          progress(
            `lab: QEMU firmware ${host} missing; the nested peer may fail`,
          );
        }
      }
      return files;
    },
  };
}

async function sharedLibraries(binary: string): Promise<string[]> {
  const text = await run(["ldd", binary]);
  const libs: string[] = [];
  for (const line of text.split("\n")) {
    const m = line.match(/=>\s*(\/\S+)/) ?? line.match(/^\s*(\/\S+)/);
    if (m?.[1]) libs.push(m[1]);
  }
  return libs;
}

async function aarch64Payload(
  options: LabPayloadOptions,
  peer: boolean,
): Promise<LabPayload> {
  const dir = join(options.cacheDir, "aarch64");
  const debianArch = LAB_MACHINES.aarch64.debianArch;
  await ensureDebianArch(debianArch, options.progress);
  const debs = peer
    ? [...new Set([...AARCH64.debs, ...await aarch64PeerDebs(debianArch)])]
    : AARCH64.debs;
  const root = await ensureDebianRoot(dir, debs, options.progress);
  const deno = await ensureNpmBinary(AARCH64.denoNpm, {
    version: Deno.version.deno,
    binary: "deno",
    dir,
    machine: ELF_MACHINE.aarch64,
    progress: options.progress,
  });
  const busybox = join(root, "bin/busybox");
  await requireElf(busybox, ELF_MACHINE.aarch64);
  const qemuLab = join("usr/bin", LAB_MACHINES.aarch64.qemu);
  const qemu = peer ? join(root, qemuLab) : undefined;
  if (qemu !== undefined) await requireElf(qemu, ELF_MACHINE.aarch64);
  return {
    busybox,
    key: [
      await statKey(deno),
      await Deno.readTextFile(join(root, ".debs")),
      ...(qemu === undefined ? [] : [`peer ${await statKey(qemu)}`]),
    ],
    files: async () => {
      const closure = (binary: string) =>
        libraryClosure(binary, { root, libraryDirs: AARCH64.libraryDirs });
      const files: LabFile[] = [
        { lab: "usr/bin/deno", host: deno },
        ...await closure(deno),
      ];
      if (qemu !== undefined) {
        files.push({ lab: qemuLab, host: qemu }, ...await closure(qemu));
      }
      return uniqueLabFiles(files);
    },
  };
}

/**
 * The Debian packages `qemu-system-aarch64` needs to run: its package and
 * what that depends on, of `debianArch` and recursively, but for
 * `AARCH64.peerSkip`.
 */
async function aarch64PeerDebs(debianArch: string): Promise<string[]> {
  const graph = parseAptDepends(await aptCacheDepends(AARCH64.peerDeb));
  return packageClosure(graph, AARCH64.peerDeb, {
    arch: debianArch,
    skip: AARCH64.peerSkip,
  });
}

/**
 * `files` with each lab path once (the first entry for it), as programs
 * that share libraries list them twice.
 */
function uniqueLabFiles(files: readonly LabFile[]): LabFile[] {
  const byLab = new Map<string, LabFile>();
  for (const f of files) {
    const key = f.lab.replace(/^\/+/, "");
    if (!byLab.has(key)) byLab.set(key, f);
  }
  return [...byLab.values()];
}

/**
 * What `apt-cache depends --recurse` prints for `name`: every package it
 * depends on (`Depends`, `Pre-Depends`), recursively; recommendations and
 * the other relations left out.
 */
async function aptCacheDepends(name: string): Promise<string> {
  return await run([
    "apt-cache",
    "depends",
    "--recurse",
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
    name,
  ]);
}

/**
 * Reads what `apt-cache depends --recurse` prints into each package's
 * dependencies (`Depends` and `PreDepends`), as apt would satisfy them: of
 * alternatives (`a | b`, printed `|Depends: a` then `Depends: b`) the
 * first, and a virtual package (`<name>`) by its first provider, listed
 * below it. A virtual package nobody provides is left out.
 *
 * @example
 * ```ts
 * import { parseAptDepends } from "./payload.ts";
 * const graph = parseAptDepends(
 *   "qemu:arm64\n" +
 *     "  Depends: libc6:arm64\n" +
 *     " |Depends: libx:arm64\n" +
 *     "  Depends: liby:arm64\n" +
 *     "libc6:arm64\n",
 * );
 * console.assert(graph.get("qemu:arm64")!.join() === "libc6:arm64,libx:arm64");
 * ```
 */
export function parseAptDepends(text: string): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  let deps: string[] = [];
  /** Inside an OR group whose first alternative is already taken. */
  let inGroup = false;
  /** The dependency just read is virtual: its first provider stands for it. */
  let wantProvider = false;
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    if (!line.startsWith(" ")) {
      deps = [];
      graph.set(line.trim(), deps);
      inGroup = wantProvider = false;
      continue;
    }
    const dep = /^ ([| ])([A-Za-z-]+): (\S+)$/.exec(line);
    if (dep === null) {
      // A provider of the virtual package above, indented further.
      if (wantProvider) deps.push(line.trim());
      wantProvider = false;
      continue;
    }
    const taken = inGroup;
    inGroup = dep[1] === "|"; // the group's last alternative has no bar
    wantProvider = false;
    if (taken || (dep[2] !== "Depends" && dep[2] !== "PreDepends")) continue;
    const name = dep[3]!;
    if (name.startsWith("<")) wantProvider = true;
    else deps.push(name);
  }
  return graph;
}

/** Options of {@linkcode packageClosure}. */
export interface PackageClosureOptions {
  /**
   * The Debian architecture followed (e.g. `arm64`): only names qualified
   * with it (`libc6:arm64`); packages for all architectures (data, scripts)
   * and the host's own are not libraries of a foreign program.
   */
  arch: string;
  /** Packages neither taken nor followed. */
  skip?: readonly string[];
}

/**
 * `name` and every package it depends on in `graph` (from
 * {@linkcode parseAptDepends}), recursively, through the packages of
 * `options.arch` only; sorted, `name` first.
 *
 * @example
 * ```ts
 * import { packageClosure } from "./payload.ts";
 * const graph = new Map([
 *   ["qemu:arm64", ["libc6:arm64", "qemu-data", "common:arm64"]],
 *   ["common:arm64", ["libasound2:arm64"]],
 *   ["libc6:arm64", ["libgcc-s1:arm64"]],
 * ]);
 * const debs = packageClosure(graph, "qemu:arm64", {
 *   arch: "arm64",
 *   skip: ["common:arm64"],
 * });
 * console.assert(debs.join() === "qemu:arm64,libc6:arm64,libgcc-s1:arm64");
 * ```
 */
export function packageClosure(
  graph: ReadonlyMap<string, readonly string[]>,
  name: string,
  options: PackageClosureOptions,
): string[] {
  if (!graph.has(name)) {
    throw new Error(
      `Cannot list the packages ${name} needs: apt-cache depends printed nothing for it`,
    );
  }
  const skip = new Set(options.skip ?? []);
  const found = new Set<string>();
  const queue = [name];
  for (let p = queue.shift(); p !== undefined; p = queue.shift()) {
    if (found.has(p)) continue;
    found.add(p);
    for (const dep of graph.get(p) ?? []) {
      if (dep.endsWith(`:${options.arch}`) && !skip.has(dep)) queue.push(dep);
    }
  }
  found.delete(name);
  return [name, ...[...found].sort()];
}

/**
 * Throws unless `path` is an ELF file for the CPU `machine` names (its
 * `e_machine`).
 */
async function requireElf(path: string, machine: number): Promise<void> {
  const head = new Uint8Array(20);
  try {
    using file = await Deno.open(path);
    let filled = 0;
    while (filled < head.length) {
      const n = await file.read(head.subarray(filled));
      if (n === null) break;
      filled += n;
    }
  } catch (error) {
    throw new Error(`Cannot use ${path} in the KVM lab: ${error}`);
  }
  const isElf = head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c &&
    head[3] === 0x46;
  const found = (head[E_MACHINE] ?? 0) | ((head[E_MACHINE + 1] ?? 0) << 8);
  if (!isElf || found !== machine) {
    throw new Error(
      `Cannot use ${path} in the KVM lab: not an ELF file for machine ${machine} (${
        isElf ? `e_machine ${found}` : "no ELF magic"
      })`,
    );
  }
}

/** Options of {@linkcode ensureNpmBinary}. */
interface NpmBinaryOptions {
  version: string;
  /** The executable's path inside the package. */
  binary: string;
  /** Where `<package>-<version>/` is kept. */
  dir: string;
  /** Its ELF `e_machine`, checked after the download. */
  machine: number;
  progress: (line: string) => void;
}

/**
 * Returns the host path of the executable `binary` of the npm package
 * `name` at `version`: fetched with `npm pack` (which checks the tarball
 * against the registry's integrity hash) the first time, kept in `dir`.
 */
async function ensureNpmBinary(
  name: string,
  options: NpmBinaryOptions,
): Promise<string> {
  const home = join(
    options.dir,
    `${name.replace(/^@/, "").replace("/", "-")}-${options.version}`,
  );
  const path = join(home, options.binary);
  if (await exists(path)) return path;
  options.progress(`lab: fetching ${name}@${options.version} (npm pack, once)`);
  await Deno.mkdir(options.dir, { recursive: true });
  const temp = await Deno.makeTempDir({ dir: options.dir, prefix: ".npm-" });
  try {
    await run(
      [
        "npm",
        "pack",
        "--silent",
        "--pack-destination",
        temp,
        `${name}@${options.version}`,
      ],
      { cwd: temp },
    );
    let tarball: string | undefined;
    for await (const e of Deno.readDir(temp)) {
      if (e.name.endsWith(".tgz")) tarball = join(temp, e.name);
    }
    if (tarball === undefined) {
      throw new Error(
        `Cannot fetch ${name}@${options.version}: npm pack left no .tgz file`,
      );
    }
    await run(["tar", "-xzf", tarball, "-C", temp]);
    const unpacked = join(temp, "package", options.binary);
    await requireElf(unpacked, options.machine);
    await Deno.chmod(unpacked, 0o755);
    await Deno.mkdir(home, { recursive: true });
    await Deno.rename(unpacked, path);
  } finally {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  return path;
}

/** The dynamic-linking needs of one ELF file. */
export interface ElfDeps {
  /** `PT_INTERP`: the program interpreter's path, for executables. */
  interpreter?: string;
  /** `DT_NEEDED` entries, in order. */
  needed: string[];
}

/**
 * Reads the program interpreter and the `NEEDED` libraries out of what
 * `readelf -d -l -W` prints.
 *
 * @example
 * ```ts
 * import { parseReadelf } from "./payload.ts";
 * const deps = parseReadelf(
 *   "      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]\n" +
 *     " 0x0000000000000001 (NEEDED)  Shared library: [libc.so.6]\n",
 * );
 * console.assert(deps.needed[0] === "libc.so.6");
 * ```
 */
export function parseReadelf(text: string): ElfDeps {
  const interpreter = /\[Requesting program interpreter: ([^\]]+)\]/.exec(
    text,
  )?.[1];
  const needed = [
    ...text.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g),
  ]
    .map((m) => m[1]!);
  return interpreter === undefined ? { needed } : { interpreter, needed };
}

/** {@linkcode parseReadelf} of `readelf` run on `path`. */
export async function readElfDeps(path: string): Promise<ElfDeps> {
  return parseReadelf(await run(["readelf", "-d", "-l", "-W", path]));
}

/** Options of {@linkcode libraryClosure}. */
export interface LibraryClosureOptions {
  /** The unpacked packages the libraries come from, laid out as `/`. */
  root: string;
  /** Folders of `root` searched for a `NEEDED` name, in order. */
  libraryDirs: readonly string[];
  /** Reads one file's needs; default {@linkcode readElfDeps}. */
  readDeps?: (path: string) => Promise<ElfDeps>;
}

/** Symbolic links followed before a lookup counts as a loop. */
const MAX_LINKS = 16;

/**
 * The files of `root` that `binary` needs at run time: its program
 * interpreter and every `NEEDED` library, recursively, each at its path in
 * `root` (symbolic links kept as links, with their targets). Throws when
 * one is in none of `libraryDirs`.
 *
 * @example
 * ```ts ignore
 * import { libraryClosure } from "./payload.ts";
 * const files = await libraryClosure("deno", {
 *   root: "arm64-root",
 *   libraryDirs: ["lib/aarch64-linux-gnu"],
 * });
 * ```
 */
export async function libraryClosure(
  binary: string,
  options: LibraryClosureOptions,
): Promise<LabFile[]> {
  const readDeps = options.readDeps ?? readElfDeps;
  const files = new Map<string, LabFile>();
  const seen = new Set<string>();
  const queue = [binary];
  // A path in root, and its links, into `files`; returns the real file's host path.
  const take = async (labPath: string, neededBy: string): Promise<string> => {
    let path = labPath.replace(/^\/+/, "");
    for (let hop = 0; hop <= MAX_LINKS; hop++) {
      const host = join(options.root, path);
      const info = await Deno.lstat(host).catch(() => undefined);
      if (info === undefined) {
        throw new Error(
          `Cannot put ${neededBy}'s libraries into the KVM lab: /${path} is not in ${options.root}`,
        );
      }
      if (!info.isSymlink) {
        files.set(path, { lab: path, host });
        return host;
      }
      const target = await Deno.readLink(host);
      files.set(path, { lab: path, symlink: target });
      path = isAbsolute(target)
        ? target.replace(/^\/+/, "")
        : join(dirname(path), target);
    }
    throw new Error(
      `Cannot put ${neededBy}'s libraries into the KVM lab: /${labPath} is a loop of symbolic links`,
    );
  };
  const read = new Set<string>();
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
    if (read.has(file)) continue; // one file under two names (ld.so)
    read.add(file);
    const deps = await readDeps(file);
    if (deps.interpreter !== undefined && !seen.has(deps.interpreter)) {
      seen.add(deps.interpreter);
      queue.push(await take(deps.interpreter, file));
    }
    for (const name of deps.needed) {
      if (seen.has(name)) continue;
      seen.add(name);
      let dir: string | undefined;
      for (const d of options.libraryDirs) {
        if (await exists(join(options.root, d, name))) {
          dir = d;
          break;
        }
      }
      if (dir === undefined) {
        throw new Error(
          `Cannot put ${file}'s libraries into the KVM lab: ${name} is in none of ${
            options.libraryDirs.join(", ")
          } under ${options.root}`,
        );
      }
      queue.push(await take(join(dir, name), file));
    }
  }
  return [...files.values()];
}
