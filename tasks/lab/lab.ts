/**
 * The KVM lab: a QEMU-emulated machine with a real `/dev/kvm`. On x86_64
 * (the default) it is TCG with `-cpu max`, so AMD SVM is visible to its
 * guest, whose Debian kernel loads `kvm-amd`: KVM backed by nested SVM. On
 * aarch64 (`arch: "aarch64"`) it is the `virt` board with EL2 and a GICv3,
 * whose Debian kernel's built-in KVM runs nested guests at EL1. Hosts whose
 * own KVM cannot boot Linux (a `kvm_pvm` host, or no `/dev/kvm` at all) run
 * the project's end-to-end tests here. What differs between the two lives in
 * `arch.ts` (the machine) and `payload.ts` (the programs). See
 * docs/testing.md.
 *
 * The lab boots from one initramfs made of two concatenated `newc` archives:
 * a cached base (busybox, the KVM modules, deno, QEMU for the nested peer
 * when carried, and their shared libraries) and a small per-run overlay (the
 * project tree, the command and its environment). Output streams live from
 * the lab's serial console; the command's exit status comes back on a marker
 * line; files the command leaves in the lab's `/out` come back as a base64
 * tar stream between two marker lines.
 *
 * @module
 */

import { basename, dirname, join, resolve } from "node:path";
import { createHash } from "node:crypto";
import { ensureLabKernel, type LabKernel } from "./kernel.ts";
import { LAB_MACHINES, type LabArch, labQemuArgs } from "./arch.ts";
import { labCarriesPeer, labPayload } from "./payload.ts";
import { ensurePackages } from "../_packages.ts";
import { resolveModules } from "../../src/boot/modules.ts";

export type { LabArch } from "./arch.ts";
export type { LabKernel } from "./kernel.ts";

/**
 * Start of the marker lines the lab's init prints (command start, files out,
 * exit status); each run adds a random nonce so that the command's own
 * output cannot be mistaken for them.
 */
const MARKER_PREFIX = "@@initx-lab@@";

/**
 * Guest kernel modules the lab carries (with their dependencies) at the same
 * path as on the host, for end-to-end tests whose init loads them.
 */
const GUEST_MODULES = [
  "virtio_mmio",
  "virtio_console",
  "vmw_vsock_virtio_transport",
  "virtiofs",
  "virtio_net",
  "virtio_blk",
  "binfmt_misc",
];

/** What the lab's kernel prints when one of its CPUs is stuck in the kernel. */
const LAB_FAULT = /watchdog: BUG: soft lockup - CPU#\d+ stuck/;

/** Options of {@linkcode runInLab}. */
export interface LabOptions {
  /** The lab machine's architecture; default `x86_64`. */
  arch?: LabArch;
  /** Working directory inside the project tree; default: the project root. */
  cwd?: string;
  /** Seconds before the command is stopped; default 1800. */
  timeoutSeconds?: number;
  /** Extra environment for the command. `CI` and `INITX_*` pass through. */
  env?: Record<string, string>;
  /** Where the lab's output goes; default: this process's stdout. */
  output?: (bytes: Uint8Array) => void;
  /** If set, the lab's `/out` directory is unpacked here after the run. */
  outDir?: string;
  /**
   * Seconds without any output after which the lab counts as stuck (a
   * `labFault`); default: no limit.
   */
  idleTimeoutSeconds?: number;
  /** Extra host files to put into the lab, by their path inside it. */
  files?: Record<string, string>;
  /** Progress messages (building the initramfs, booting); default: stderr. */
  progress?: (line: string) => void;
  /**
   * Carry QEMU (`qemu-system-<arch>`, on the lab's PATH) for a nested peer
   * to compare with. Default: on x86_64 yes, on aarch64 no (QEMU is fetched
   * then, and makes every lab boot unpack about 50 MB more).
   */
  peer?: boolean;
}

/** What a lab run ended with. */
export interface LabResult {
  /** The command's exit status, or 124 on timeout, 125 if the lab failed. */
  code: number;
  /** Why the lab itself failed, when it did. */
  error?: string;
  /** Milliseconds from the call to the command's start inside the lab. */
  startMs?: number;
  /** The pid the lab's QEMU had (it has ended when the call resolves). */
  qemuPid?: number;
  /**
   * Why the lab was found stuck, when that ended the run: the lab kernel's
   * report of a CPU stuck in the kernel (a soft lockup, a failure of the
   * emulated lab seen now and then when a nested guest runs), or no output
   * for `idleTimeoutSeconds`.
   */
  labFault?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The project root: the folder holding deno.json above this file. */
export const PROJECT_ROOT: string = resolve(
  dirname(new URL(import.meta.url).pathname),
  "../..",
);

/** Where the lab keeps its cached kernel and initramfs. */
export function labCacheDir(): string {
  return Deno.env.get("INITX_LAB_CACHE") ?? join(PROJECT_ROOT, ".cache", "lab");
}

async function run(cmd: string[], options: { cwd?: string } = {}) {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    cwd: options.cwd,
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

async function copyInto(root: string, src: string, dest = src) {
  const target = join(root, dest);
  await Deno.mkdir(dirname(target), { recursive: true });
  await Deno.copyFile(await Deno.realPath(src), target);
  const mode = (await Deno.stat(src)).mode ?? 0o644;
  await Deno.chmod(target, mode & 0o7777);
}

async function cpioOf(dir: string, out: string): Promise<void> {
  // The kernel unpacks concatenated archives, so the base and the overlay are
  // written separately and joined per run.
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      `cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > "$2"`,
      "sh",
      dir,
      out,
    ],
    stdout: "inherit",
    stderr: "inherit",
  });
  const status = await child.output();
  if (!status.success) throw new Error(`Cannot write the lab initramfs ${out}`);
}

// The base holds busybox and a /bin/sh link to it; busybox links its other
// applets itself, so the applets of a foreign busybox need not be listed here.
const LAB_INIT = `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /tmp /out && mount -t devpts devpts /dev/pts
for m in /lab/modules/*.ko; do
  [ -e "$m" ] || continue # KVM is built in: no modules
  insmod "$m" || echo "lab: insmod $m failed"
done
[ -c /dev/kvm ] || echo "lab: no /dev/kvm"
ip link set lo up 2>/dev/null
. /lab/env.sh
cd "$LAB_CWD"
echo "$LAB_MARKER"start
# Through a pipe, so that the command sees no terminal (no progress redraws).
{ sh /lab/cmd.sh </dev/null; echo $? > /tmp/.lab-code; } 2>&1 | cat
code=$(cat /tmp/.lab-code)
if [ -n "$(ls -A /out 2>/dev/null)" ]; then
  echo "$LAB_MARKER"out-begin
  tar -C /out -c . | gzip | base64
  echo "$LAB_MARKER"out-end
fi
echo "$LAB_MARKER"status-"$code"
poweroff -f
`;

function decodeBase64(text: string): Uint8Array {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function hashOf(parts: string[]): string {
  return createHash("sha256").update(parts.join("\n")).digest("hex").slice(
    0,
    16,
  );
}

/** Options of {@linkcode ensureBaseInitramfs}. */
export interface BaseInitramfsOptions {
  /** Carry QEMU for a nested peer; default as {@linkcode LabOptions.peer}. */
  peer?: boolean;
}

/**
 * Builds (or reuses) the cached base initramfs for `kernel`'s architecture
 * and returns its path. A base with QEMU and one without have different
 * keys (the payload's key names the QEMU it carries), so both stay cached.
 */
export async function ensureBaseInitramfs(
  kernel: LabKernel,
  progress: (line: string) => void,
  options: BaseInitramfsOptions = {},
): Promise<string> {
  const machine = LAB_MACHINES[kernel.arch];
  const cache = labCacheDir();
  const payload = await labPayload(kernel.arch, {
    cacheDir: cache,
    progress,
    peer: options.peer ?? labCarriesPeer(kernel.arch),
  });
  const key = hashOf([
    LAB_INIT,
    ...GUEST_MODULES,
    ...machine.kvmModules,
    kernel.version,
    ...payload.key,
  ]);
  const path = join(cache, `base-${kernel.arch}-${key}.cpio`);
  try {
    await Deno.stat(path);
    return path;
  } catch {
    // not built yet
  }
  progress(
    `lab: building the ${kernel.arch} base initramfs (once per input change)`,
  );
  await Deno.mkdir(cache, { recursive: true });
  const root = await Deno.makeTempDir({ dir: cache, prefix: "base-" });
  try {
    for (
      const d of ["bin", "proc", "sys", "dev", "tmp", "out", "lab/modules"]
    ) {
      await Deno.mkdir(join(root, d), { recursive: true });
    }
    await copyInto(root, payload.busybox, "bin/busybox");
    await Deno.symlink("busybox", join(root, "bin/sh"));
    await Deno.writeTextFile(join(root, "init"), LAB_INIT, { mode: 0o755 });
    for (const [i, m] of machine.kvmModules.entries()) {
      const src = join(kernel.modulesDir, "kernel", m);
      await copyInto(root, src, join("lab/modules", `${i}-${basename(m)}`));
    }
    for (const f of await payload.files(progress)) {
      if ("host" in f) await copyInto(root, f.host, f.lab);
      else {
        await Deno.mkdir(dirname(join(root, f.lab)), { recursive: true });
        await Deno.symlink(f.symlink, join(root, f.lab));
      }
    }
    await copyInto(root, kernel.image, "lab/vmlinuz");
    for (const m of await resolveModules(kernel.modulesDir, GUEST_MODULES)) {
      await copyInto(root, m.path);
    }
    for (const f of ["modules.builtin", "modules.order"]) {
      await copyInto(root, join(kernel.modulesDir, f)).catch(() => {});
    }
    await cpioOf(root, `${path}.tmp`);
    await Deno.rename(`${path}.tmp`, path);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
  return path;
}

/** Folders of the tree that are never copied into the lab nor searched for tests. */
export const SKIP_DIRS: ReadonlySet<string> = new Set([
  ".git",
  ".cache",
  ".dbg",
  "node_modules",
]);

async function copyTree(src: string, dest: string): Promise<void> {
  await Deno.mkdir(dest, { recursive: true });
  for await (const e of Deno.readDir(src)) {
    if (SKIP_DIRS.has(e.name)) continue;
    const s = join(src, e.name);
    const d = join(dest, e.name);
    if (e.isDirectory) await copyTree(s, d);
    else if (e.isFile) await Deno.copyFile(s, d);
    else if (e.isSymlink) await Deno.symlink(await Deno.readLink(s), d);
  }
}

/** The lab command's Deno cache (`DENO_DIR`). */
const LAB_DENO_DIR = "/tmp/deno";

/** npm packages (`name@version`) the project's lockfile pins. */
async function lockedNpmPackages(): Promise<
  { name: string; version: string }[]
> {
  let lock: { npm?: Record<string, unknown> };
  try {
    lock = JSON.parse(await Deno.readTextFile(join(PROJECT_ROOT, "deno.lock")));
  } catch {
    return [];
  }
  return Object.keys(lock.npm ?? {}).map((key) => {
    const at = key.indexOf("@", 1); // a scoped name starts with "@"
    // Deno writes peer dependencies after the version: "x@1.0.0_peer@2.0.0".
    return {
      name: key.slice(0, at),
      version: key.slice(at + 1).split("_")[0]!,
    };
  });
}

/**
 * The host directories of the npm packages the project uses, in Deno's npm
 * cache (`deno install` fills it from the npm registry when one is
 * missing), and where each goes inside the lab's `DENO_DIR`: the lab has no
 * network, so code run there resolves `npm:` imports from this copy.
 */
export async function labNpmCache(
  progress: (line: string) => void,
): Promise<{ host: string; lab: string }[]> {
  const packages = await lockedNpmPackages();
  if (packages.length === 0) return [];
  const info = JSON.parse(await run([Deno.execPath(), "info", "--json"]));
  const registryDir = join(info.npmCache as string, "registry.npmjs.org");
  const missing = async () => {
    const out: string[] = [];
    for (const p of packages) {
      try {
        await Deno.stat(join(registryDir, p.name, p.version));
      } catch {
        out.push(`${p.name}@${p.version}`);
      }
    }
    return out;
  };
  if ((await missing()).length > 0) {
    progress(
      "lab: filling the Deno cache with the project's npm packages (deno install)",
    );
    await run([Deno.execPath(), "install"], { cwd: PROJECT_ROOT });
    const still = await missing();
    if (still.length > 0) {
      throw new Error(
        `Cannot carry ${
          still.join(", ")
        } into the KVM lab: not in the Deno cache ${registryDir} after "deno install"`,
      );
    }
  }
  const labRegistry = join(LAB_DENO_DIR, "npm", "registry.npmjs.org");
  return packages.flatMap((p) => [
    {
      host: join(registryDir, p.name, p.version),
      lab: join(labRegistry, p.name, p.version),
    },
    {
      host: join(registryDir, p.name, "registry.json"),
      lab: join(labRegistry, p.name, "registry.json"),
    },
  ]);
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** Environment variables that pass from the host into the lab's command. */
function passedEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(Deno.env.toObject())) {
    if (k === "CI" || k.startsWith("INITX_") || k === "NO_COLOR") env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Runs `cmd` inside the KVM lab and streams its output; resolves with its
 * exit status. Never leaves a QEMU process behind.
 */
export async function runInLab(
  cmd: string[],
  options: LabOptions = {},
): Promise<LabResult> {
  const t0 = performance.now();
  const progress = options.progress ??
    ((line: string) => console.error(line));
  const output = options.output ??
    ((bytes: Uint8Array) => Deno.stdout.writeSync(bytes));
  const timeoutSeconds = options.timeoutSeconds ?? 1800;
  const arch = options.arch ?? "x86_64";
  const machine = LAB_MACHINES[arch];
  await ensurePackages(machine.hostTools, progress);
  const kernel = await ensureLabKernel(progress, { arch });
  const base = await ensureBaseInitramfs(kernel, progress, {
    peer: options.peer,
  });

  const cache = labCacheDir();
  const work = await Deno.makeTempDir({ dir: cache, prefix: "run-" });
  let child: Deno.ChildProcess | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const overlay = join(work, "overlay");
    const cwd = resolve(options.cwd ?? PROJECT_ROOT);
    await copyTree(PROJECT_ROOT, join(overlay, PROJECT_ROOT));
    for (const { host, lab } of await labNpmCache(progress)) {
      const info = await Deno.stat(host).catch(() => undefined);
      if (info?.isDirectory) await copyTree(host, join(overlay, lab));
      else if (info?.isFile) await copyInto(overlay, host, lab);
    }
    for (const [labPath, hostPath] of Object.entries(options.files ?? {})) {
      await copyInto(overlay, hostPath, labPath);
    }
    const env = passedEnv({
      ...options.env,
      HOME: "/tmp",
      DENO_DIR: LAB_DENO_DIR,
      DENO_NO_UPDATE_CHECK: "1",
      INITX_IN_LAB: "1",
      INITX_LAB_ARCH: arch,
      INITX_LAB_KERNEL: "/lab/vmlinuz",
      INITX_LAB_MODULES: kernel.modulesDir,
      // The lab has no network: the default kernel is the one it carries.
      INITX_KERNEL: "/lab/vmlinuz",
      INITX_MODULES: kernel.modulesDir,
      LAB_CWD: cwd,
    });
    await Deno.mkdir(join(overlay, "lab"), { recursive: true });
    const marker = `${MARKER_PREFIX}${crypto.randomUUID()}@@`;
    await Deno.writeTextFile(
      join(overlay, "lab/env.sh"),
      Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}\n`)
        .join("") +
        `LAB_MARKER=${shellQuote(marker)}\n` +
        `date -s @${Math.floor(Date.now() / 1000)} >/dev/null\n`,
    );
    await Deno.writeTextFile(
      join(overlay, "lab/cmd.sh"),
      `exec ${cmd.map(shellQuote).join(" ")}\n`,
    );
    const overlayCpio = join(work, "overlay.cpio");
    await cpioOf(overlay, overlayCpio);
    const initrd = join(work, "initrd.cpio");
    await run([
      "sh",
      "-c",
      `cat "$1" "$2" > "$3"`,
      "sh",
      base,
      overlayCpio,
      initrd,
    ]);

    child = new Deno.Command(machine.qemu, {
      args: labQemuArgs(arch, { kernel: kernel.image, initrd }),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const proc = child;
    const qemuPid = proc.pid;
    let timedOut = false;
    timer = setTimeout(() => {
      timedOut = true;
      try {
        proc.kill("SIGKILL");
      } catch {
        // already gone
      }
    }, timeoutSeconds * 1000);

    let code: number | undefined;
    let startMs: number | undefined;
    let pending = "";
    let labFault: string | undefined;
    let outBase64: string[] | undefined;
    let outFiles: string | undefined;
    const tail: string[] = [];
    const handleLine = (line: string) => {
      let clean = line.replace(/\r$/, "");
      if (code !== undefined) return; // the lab's own shutdown messages
      const at = clean.indexOf(marker);
      if (at > 0) {
        // The command's last output had no final newline: the marker follows
        // it on the same line. Pass the output on as it was.
        output(encoder.encode(clean.slice(0, at)));
        clean = clean.slice(at);
      }
      if (at >= 0) {
        const rest = clean.slice(marker.length);
        if (rest === "start") startMs = performance.now() - t0;
        else if (rest === "out-begin") outBase64 = [];
        else if (rest === "out-end") outFiles = outBase64?.join("");
        else if (/^status-\d+$/.test(rest)) code = Number(rest.slice(7));
        else code = 125; // a marker line the init never prints
        return;
      }
      if (outBase64 && outFiles === undefined) {
        outBase64.push(clean);
        return;
      }
      tail.push(clean);
      if (tail.length > 30) tail.shift();
      output(encoder.encode(clean + "\n"));
      if (labFault === undefined && LAB_FAULT.test(clean)) {
        // The lab's own kernel is stuck: nothing the command does can end
        // it. Stop the lab now instead of at the timeout.
        labFault = clean.trim();
        try {
          proc.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
    };
    const stderrText = new Response(proc.stderr).text();
    let idleTimer: ReturnType<typeof setTimeout> | undefined;
    const idle = options.idleTimeoutSeconds;
    const armIdle = () => {
      if (idle === undefined) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        labFault ??= `no output for ${idle} s`;
        try {
          proc.kill("SIGKILL");
        } catch {
          // already gone
        }
      }, idle * 1000);
    };
    armIdle();
    for await (const chunk of proc.stdout) {
      armIdle();
      pending += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        handleLine(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    }
    if (pending) handleLine(pending);
    clearTimeout(idleTimer);
    const status = await proc.status;
    child = undefined;
    const qemuErr = (await stderrText).trim();
    if (labFault !== undefined) {
      return {
        code: 125,
        error:
          `The KVM lab got stuck (${labFault}): nested virtualization under QEMU's emulator failed, or the command hung`,
        labFault,
        startMs,
        qemuPid,
      };
    }
    if (timedOut) {
      return {
        code: 124,
        error: `Lab command timed out after ${timeoutSeconds} s: ${
          cmd.join(" ")
        }`,
        startMs,
        qemuPid,
      };
    }
    if (code === undefined) {
      return {
        code: 125,
        error:
          `The KVM lab ended before the command finished (QEMU exit ${status.code})${
            qemuErr ? `: ${qemuErr}` : ""
          }; last lines:\n${tail.join("\n")}`,
        startMs,
      };
    }
    if (options.outDir && outFiles) {
      await Deno.mkdir(options.outDir, { recursive: true });
      const tgz = join(work, "out.tar.gz");
      await Deno.writeFile(tgz, decodeBase64(outFiles));
      await run(["tar", "-xzf", tgz, "-C", options.outDir]);
    }
    return { code, startMs, qemuPid };
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    if (child) {
      try {
        child.kill("SIGKILL");
        await child.status;
      } catch {
        // already gone
      }
    }
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}
