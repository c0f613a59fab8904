/**
 * A small guest for running one command on a Linux VM: an initramfs whose
 * `/init` is initx's own IR-compiled init (mounts, modules, console, the
 * command, power-off) and whose userland is a static busybox with a link per
 * applet. It is the default guest of the demo and of the end-to-end tests
 * until OCI images arrive.
 *
 * @module
 */

import { CpioWriter } from "../boot/cpio.ts";
import { readModuleBytes, resolveModules } from "../boot/modules.ts";
import type { Arch } from "../ir/syscalls.ts";
import { buildInitElf, type InitConfig, type InitModule } from "./init.ts";

/** Options of {@linkcode buildBusyboxInitramfs}. */
export interface BusyboxInitramfsOptions {
  /** The static busybox binary. */
  busybox: Uint8Array;
  /** Applets to link under `/bin` (e.g. the output of `busybox --list`). */
  applets?: readonly string[];
  /** The command, `argv[0]` first, looked up in `/bin` unless absolute. */
  command: readonly string[];
  /** Kernel modules the init loads first, in order. */
  modules?: readonly InitModule[];
  /** The init's marker line (default: the init's own). */
  marker?: string;
  /** Guest architecture (default x86_64). */
  arch?: Arch;
}

/**
 * Builds the initramfs (uncompressed `newc` cpio).
 *
 * @example
 * ```ts ignore
 * import { buildBusyboxInitramfs } from "./busybox_guest.ts";
 * const initrd = buildBusyboxInitramfs({
 *   busybox: await Deno.readFile("/bin/busybox"),
 *   applets: ["sh", "uname"],
 *   command: ["uname", "-a"],
 * });
 * ```
 */
export function buildBusyboxInitramfs(
  options: BusyboxInitramfsOptions,
): Uint8Array {
  const [program, ...rest] = options.command;
  if (program === undefined) {
    throw new Error("Cannot build the guest: the command is empty");
  }
  const path = program.startsWith("/") ? program : `/bin/${program}`;
  const config: InitConfig = {
    modules: options.modules,
    marker: options.marker,
    run: { path, argv: [program, ...rest] },
  };
  const cpio = new CpioWriter();
  cpio.file("init", buildInitElf(config, { arch: options.arch ?? "x86_64" }), {
    mode: 0o755,
  });
  cpio.file("bin/busybox", options.busybox, { mode: 0o755 });
  for (const applet of options.applets ?? []) {
    if (applet === "busybox" || applet.includes("/")) continue;
    cpio.symlink(`bin/${applet}`, "busybox");
  }
  for (const dir of ["dev", "proc", "sys", "tmp", "etc", "root"]) cpio.dir(dir);
  return cpio.bytes();
}

/**
 * Reads the modules `wanted` (and what they depend on, dependencies first)
 * from a kernel's `lib/modules/<version>` directory, ready for the init.
 */
export async function loadInitModules(
  moduleDir: string,
  wanted: string[],
): Promise<InitModule[]> {
  const resolved = await resolveModules(moduleDir, wanted);
  return await Promise.all(
    resolved.map(async (m) => ({
      name: m.name,
      bytes: await readModuleBytes(m.path),
    })),
  );
}

/** The applets of a busybox binary on this host (`busybox --list`). */
export async function busyboxApplets(busyboxPath: string): Promise<string[]> {
  const out = await new Deno.Command(busyboxPath, {
    args: ["--list"],
    stdout: "piped",
    stderr: "null",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot list the applets of ${busyboxPath}: exit ${out.code}`,
    );
  }
  return new TextDecoder().decode(out.stdout).split("\n").filter((a) => a);
}

/** Where a static busybox is looked for. */
const BUSYBOX_PATHS = ["/bin/busybox", "/usr/bin/busybox"];

/**
 * The path of a static busybox on this host (Debian's `busybox-static`), or
 * undefined. A dynamically linked one would not run in the guest.
 */
export function findStaticBusybox(): string | undefined {
  for (const p of BUSYBOX_PATHS) {
    let head: Uint8Array;
    try {
      using file = Deno.openSync(p);
      head = new Uint8Array(4096);
      head = head.subarray(0, file.readSync(head) ?? 0);
    } catch {
      continue;
    }
    // A dynamic ELF names its loader (PT_INTERP) near the start.
    if (!new TextDecoder().decode(head).includes("ld-linux")) return p;
  }
  return undefined;
}

/** {@linkcode findStaticBusybox}, or a clear error saying how to get one. */
export function requireStaticBusybox(): string {
  const p = findStaticBusybox();
  if (p === undefined) {
    throw new Error(
      "Cannot build the busybox image: no static busybox in /bin or /usr/bin; install it with `apt-get install busybox-static`",
    );
  }
  return p;
}
