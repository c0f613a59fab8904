/**
 * Kernel module metadata and load order, without `modules.dep` or `modprobe`.
 *
 * A module (`.ko`) is an ELF64 relocatable object. Its `.modinfo` section
 * holds NUL-separated `key=value` strings written by the kernel build:
 * `name=`, `depends=` (comma-separated module names), `vermagic=`,
 * `license=`, `alias=` (repeatable), ... Debian's cloud kernel package ships
 * no `modules.dep`, so the load order is computed from `depends=` here.
 *
 * Module names treat `-` and `_` as the same character (the kernel's
 * `KBUILD_MODNAME` uses `_`); everything here keys on the `_` form.
 *
 * @module
 */

import { basename, join } from "node:path";

/** What a module's `.modinfo` section says about it. */
export interface ModuleInfo {
  /** Module name, normalized to use `_` (from `name=`, else the file name). */
  name: string;
  /** Names of the modules this one needs loaded first, normalized. */
  depends: string[];
  /** Kernel version and build flags the module was built for, if stated. */
  vermagic: string | undefined;
  /** Every `key=value` pair in order; keys like `alias` repeat. */
  fields: [key: string, value: string][];
}

/** A module to load, as returned by {@linkcode resolveModules}. */
export interface ResolvedModule {
  /** Normalized module name. */
  name: string;
  /** Path of the module file (`.ko` or `.ko.gz`). */
  path: string;
  /** Its `.modinfo` contents. */
  info: ModuleInfo;
}

/** ELF identification and header offsets (System V ABI, ELF-64 Object File Format). */
const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];
const EI_CLASS = 4;
const ELFCLASS64 = 2;
const EI_DATA = 5;
const ELFDATA2LSB = 1;
const E_SHOFF = 0x28;
const E_SHENTSIZE = 0x3a;
const E_SHNUM = 0x3c;
const E_SHSTRNDX = 0x3e;
/** Section header field offsets (Elf64_Shdr). */
const SH_NAME = 0;
const SH_OFFSET = 24;
const SH_SIZE = 32;
/** Smallest valid Elf64_Shdr size. */
const ELF64_SHDR_SIZE = 64;

const decoder = new TextDecoder();

/**
 * Normalizes a module name: `-` and `_` are equivalent, `_` is canonical.
 *
 * @example
 * ```ts
 * import { normalizeModuleName } from "./modules.ts";
 * console.assert(normalizeModuleName("kvm-amd") === "kvm_amd");
 * ```
 */
export function normalizeModuleName(name: string): string {
  return name.replaceAll("-", "_");
}

/** Module name implied by a file name (`kvm-amd.ko.gz` -> `kvm_amd`). */
function nameFromPath(path: string): string {
  return normalizeModuleName(basename(path).replace(/\.ko(\.[a-z]+)?$/, ""));
}

/**
 * Reads a module file and returns the uncompressed ELF bytes. Accepts `.ko`
 * and `.ko.gz`; `.ko.xz` and `.ko.zst` are refused with a clear error.
 *
 * @example
 * ```ts ignore
 * import { readModuleBytes } from "./modules.ts";
 * const elf = await readModuleBytes("/lib/modules/6.1.0/kernel/virtio.ko.gz");
 * ```
 */
export async function readModuleBytes(path: string): Promise<Uint8Array> {
  const compression = /\.ko\.(xz|zst)$/.exec(path)?.[1];
  if (compression) {
    throw new Error(
      `Cannot read kernel module '${path}': ${compression} compressed modules are not supported, only .ko and .ko.gz`,
    );
  }
  const bytes = await Deno.readFile(path);
  if (!path.endsWith(".gz")) return bytes;
  // Loaded on first use: `node:zlib` costs start-up time a run of plain
  // `.ko` modules does not need.
  const { gunzip } = await import("./archive.ts");
  return await gunzip(bytes);
}

/**
 * Parses the `.modinfo` section of a module's ELF bytes (uncompressed).
 * `fallbackName` is used when the section has no `name=` (kernels before
 * 5.3 did not write it).
 *
 * @example
 * ```ts ignore
 * import { parseModuleInfo } from "./modules.ts";
 * const elf = await Deno.readFile("virtio_mmio.ko");
 * const info = parseModuleInfo(elf, { fallbackName: "virtio_mmio" });
 * console.log(info.depends); // ["virtio", "virtio_ring"]
 * ```
 */
export function parseModuleInfo(
  elf: Uint8Array,
  options: { fallbackName?: string } = {},
): ModuleInfo {
  const section = findSection(elf, ".modinfo");
  const fields: [string, string][] = [];
  for (const item of decoder.decode(section).split("\0")) {
    const equals = item.indexOf("=");
    if (equals > 0) {
      fields.push([item.slice(0, equals), item.slice(equals + 1)]);
    }
  }
  const get = (key: string) => fields.find(([k]) => k === key)?.[1];
  const name = get("name") ?? options.fallbackName;
  if (name === undefined) {
    throw new Error(
      "Cannot read kernel module info: the .modinfo section has no 'name=' and no file name was given",
    );
  }
  return {
    name: normalizeModuleName(name),
    depends: (get("depends") ?? "").split(",").filter((d) => d !== "")
      .map(normalizeModuleName),
    vermagic: get("vermagic"),
    fields,
  };
}

/**
 * Reads the `.modinfo` of a module file (`.ko` or `.ko.gz`).
 *
 * @example
 * ```ts ignore
 * import { readModuleInfo } from "./modules.ts";
 * const info = await readModuleInfo("/lib/modules/6.1.0-57-cloud-amd64/kernel/arch/x86/kvm/kvm-amd.ko");
 * console.log(info.name, info.depends); // kvm_amd ["kvm", "ccp"]
 * ```
 */
export async function readModuleInfo(path: string): Promise<ModuleInfo> {
  const elf = await readModuleBytes(path);
  try {
    return parseModuleInfo(elf, { fallbackName: nameFromPath(path) });
  } catch (error) {
    throw new Error(
      `Cannot read kernel module '${path}': ${(error as Error).message}`,
      { cause: error },
    );
  }
}

function findSection(elf: Uint8Array, wanted: string): Uint8Array {
  if (ELF_MAGIC.some((b, i) => elf[i] !== b)) {
    throw new Error("Cannot parse module: not an ELF file");
  }
  if (elf[EI_CLASS] !== ELFCLASS64 || elf[EI_DATA] !== ELFDATA2LSB) {
    throw new Error(
      "Cannot parse module: only little-endian ELF64 is supported",
    );
  }
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const bounded = (offset: bigint, size: bigint, what: string) => {
    if (offset + size > BigInt(elf.length)) {
      throw new Error(
        `Cannot parse module: ${what} runs past the end of the file`,
      );
    }
    return elf.subarray(Number(offset), Number(offset + size));
  };
  if (elf.length < 0x40) {
    throw new Error("Cannot parse module: truncated ELF header");
  }
  const shoff = view.getBigUint64(E_SHOFF, true);
  const shentsize = view.getUint16(E_SHENTSIZE, true);
  const shnum = view.getUint16(E_SHNUM, true);
  const shstrndx = view.getUint16(E_SHSTRNDX, true);
  if (shentsize < ELF64_SHDR_SIZE || shstrndx >= shnum) {
    throw new Error("Cannot parse module: bad section header table");
  }
  const table = bounded(
    shoff,
    BigInt(shentsize) * BigInt(shnum),
    "section header table",
  );
  const header = (i: number) => {
    const at = table.byteOffset + i * shentsize;
    return {
      name: view.getUint32(at - elf.byteOffset + SH_NAME, true),
      offset: view.getBigUint64(at - elf.byteOffset + SH_OFFSET, true),
      size: view.getBigUint64(at - elf.byteOffset + SH_SIZE, true),
    };
  };
  const strtabHeader = header(shstrndx);
  const strtab = bounded(
    strtabHeader.offset,
    strtabHeader.size,
    "section name table",
  );
  for (let i = 0; i < shnum; i++) {
    const section = header(i);
    const end = strtab.indexOf(0, section.name);
    const name = decoder.decode(
      strtab.subarray(section.name, end < 0 ? undefined : end),
    );
    if (name === wanted) return bounded(section.offset, section.size, wanted);
  }
  throw new Error(`Cannot parse module: no ${wanted} section`);
}

/**
 * Finds every module file below a module directory (`lib/modules/<version>`),
 * keyed by normalized module name.
 *
 * @example
 * ```ts ignore
 * import { indexModules } from "./modules.ts";
 * const index = await indexModules("/lib/modules/6.1.0-57-cloud-amd64");
 * console.log(index.get("virtio_mmio"));
 * ```
 */
export async function indexModules(
  moduleDir: string,
): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  async function walk(dir: string): Promise<void> {
    const entries: Deno.DirEntry[] = [];
    for await (const entry of Deno.readDir(dir)) entries.push(entry);
    entries.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory) await walk(path);
      else if (entry.isFile && /\.ko(\.(gz|xz|zst))?$/.test(entry.name)) {
        const name = nameFromPath(path);
        if (!index.has(name)) index.set(name, path);
      }
    }
  }
  try {
    await walk(moduleDir);
  } catch (error) {
    throw new Error(
      `Cannot index kernel modules in '${moduleDir}': ${
        (error as Error).message
      }`,
      { cause: error },
    );
  }
  return index;
}

/** Names listed in `modules.builtin` (modules compiled into the kernel). */
async function readBuiltin(moduleDir: string): Promise<Set<string>> {
  try {
    const text = await Deno.readTextFile(join(moduleDir, "modules.builtin"));
    return new Set(
      text.split("\n").filter((l) => l !== "").map(nameFromPath),
    );
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return new Set();
    throw error;
  }
}

/**
 * Returns the module files to load for `wanted`, dependencies first, each
 * once. Modules listed in `modules.builtin` are part of the kernel and are
 * left out. A missing module or a dependency cycle is an error.
 *
 * @example
 * ```ts ignore
 * import { resolveModules } from "./modules.ts";
 * const order = await resolveModules(
 *   "/lib/modules/6.1.0-57-cloud-amd64",
 *   ["virtio_mmio", "kvm_amd"],
 * );
 * console.log(order.map((m) => m.name)); // [..., "virtio_mmio", ..., "kvm_amd"]
 * ```
 */
export async function resolveModules(
  moduleDir: string,
  wanted: string[],
): Promise<ResolvedModule[]> {
  const index = await indexModules(moduleDir);
  const builtin = await readBuiltin(moduleDir);
  const order: ResolvedModule[] = [];
  const done = new Set<string>();
  const visiting: string[] = [];
  async function visit(name: string, requiredBy: string | undefined) {
    if (done.has(name) || builtin.has(name)) return;
    if (visiting.includes(name)) {
      const cycle = [...visiting.slice(visiting.indexOf(name)), name];
      throw new Error(
        `Cannot resolve kernel modules: dependency cycle ${cycle.join(" -> ")}`,
      );
    }
    const path = index.get(name);
    if (path === undefined) {
      const why = requiredBy ? ` (needed by '${requiredBy}')` : "";
      throw new Error(
        `Cannot resolve kernel module '${name}'${why}: not found in '${moduleDir}'`,
      );
    }
    visiting.push(name);
    const info = await readModuleInfo(path);
    for (const dependency of info.depends) await visit(dependency, name);
    visiting.pop();
    done.add(name);
    order.push({ name, path, info });
  }
  for (const name of wanted) await visit(normalizeModuleName(name), undefined);
  return order;
}
