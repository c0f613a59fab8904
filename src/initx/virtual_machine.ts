/**
 * `VirtualMachine`: a Linux micro-VM that runs compiled programs. It boots a
 * kernel with initx's own init as PID 1; the init connects back to the host
 * over virtio-vsock and then runs each program the host sends it, with stdin
 * and output streamed as Web Streams (the protocol is in `docs/protocol.md`).
 *
 * One VM runs one program at a time; calls made meanwhile wait their turn.
 * A program that exits with a non-zero status makes the call throw
 * {@linkcode ExitError}; a VM that ends while a program runs makes it throw
 * {@linkcode VmTerminatedError}.
 *
 * @module
 */

import { CpioWriter } from "../boot/cpio.ts";
import { ensureKernel } from "../boot/kernel.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { VirtioConsole } from "../devices/virtio/console.ts";
import { VirtioVsock } from "../devices/virtio/vsock/device.ts";
import { VirtioFs } from "../devices/virtio/fs/mod.ts";
import type { Filesystem } from "../vfs/filesystem.ts";
import type { Hypervisor } from "../hv/hv.ts";
import {
  type Arch,
  compile,
  type CompiledProgram,
  compileElf,
  type Program,
} from "../ir/mod.ts";
import {
  buildContainerInitProgram,
  CONTAINER_ROOT_TAG,
} from "./container_init.ts";
import { loadInitModules } from "./busybox_guest.ts";
import { ExitError, VmTerminatedError } from "./errors.ts";
import { buildInitElf, DEFAULT_ENV, type InitModule } from "./init.ts";
import { defaultCmdline, LinuxVm, type LinuxVmResult } from "./linux_vm.ts";
import { hostGuestArch } from "./machine.ts";
import { buildExecProgram, vsockAddress } from "./program_loop.ts";
import { VsockProgramServer } from "./program_server.ts";

/** The guest's vsock CID (the host is 2). */
export const GUEST_CID = 3n;
/** Default time from the start of the VM to the init's connection. */
export const DEFAULT_BOOT_TIMEOUT_MS = 10_000;
/** Default guest RAM of a {@linkcode VirtualMachine}, in MiB. */
export const DEFAULT_VM_MEMORY_MIB = 256;
/**
 * Kernel modules the init loads (with their dependencies): the virtio-mmio
 * transport, vsock and the virtio console.
 */
const GUEST_MODULES = [
  "virtio_mmio",
  "vmw_vsock_virtio_transport",
  "virtio_console",
];
/** More modules when the root is virtio-fs (`fuse` comes as a dependency). */
const ROOT_MODULES = ["virtiofs"];
/** The init's console once `virtio_console` is loaded: `hvc0`. */
export const GUEST_CONSOLE = "/dev/hvc0";
/** Console text kept for error messages, in characters. */
const CONSOLE_TAIL_CHARS = 2000;
/** Kernel log level without `dmesg`: emergencies only. */
const QUIET_LOGLEVEL = "loglevel=1";

/**
 * A file put into the guest's initramfs before boot.
 *
 * @example
 * ```ts
 * import type { GuestFile } from "./virtual_machine.ts";
 * const files: GuestFile[] = [
 *   { path: "etc/motd", bytes: new TextEncoder().encode("hi\n") },
 *   { path: "bin/sh", symlink: "busybox" },
 * ];
 * ```
 */
export type GuestFile =
  /** A regular file (mode default 0o644). */
  | { path: string; bytes: Uint8Array; mode?: number }
  /** A symbolic link to `symlink`. */
  | { path: string; symlink: string }
  /** A directory (mode default 0o755). */
  | { path: string; directory: true; mode?: number };

/**
 * A host filesystem the guest mounts over virtio-fs (a volume).
 *
 * @example
 * ```ts ignore
 * import { HostDirFs } from "../vfs/host_dir.ts";
 * import type { GuestShare } from "./virtual_machine.ts";
 * const share: GuestShare = {
 *   path: "/data",
 *   filesystem: new HostDirFs({ root: "/srv/data", readOnly: true }),
 *   readOnly: true,
 * };
 * ```
 */
export interface GuestShare {
  /** Where the guest mounts it: absolute, normalized, not `/`. */
  path: string;
  /** What it serves. */
  filesystem: Filesystem;
  /** The guest mounts it read-only (the filesystem should refuse writes too). */
  readOnly?: boolean;
}

/** Options of {@linkcode VirtualMachine.create}. */
export interface VirtualMachineOptions {
  /** Number of vCPUs (default 1). */
  cpus?: number;
  /** Guest RAM in MiB (default {@linkcode DEFAULT_VM_MEMORY_MIB}). */
  memoryMiB?: number;
  /**
   * The kernel: a bzImage path or its bytes, with the directory of its
   * modules (`lib/modules/<version>`) when they are not built in. Default:
   * initx's provisioned kernel (`ensureKernel()`).
   */
  kernel?: { image: string | Uint8Array; modules?: string };
  /** Extra kernel command-line arguments, after initx's own. */
  cmdline?: string;
  /**
   * Receives the guest's consoles, in chunks: the kernel's log (the serial
   * port; emergencies only unless `dmesg`) and the init's own console
   * (virtio-console, `hvc0`). A sink that throws loses that chunk, never
   * the guest: see {@linkcode VirtualMachine.consoleError}.
   */
  console?: (bytes: Uint8Array) => void;
  /** Kernel log at its normal level on the console (default: emergencies only). */
  dmesg?: boolean;
  /** Files to add to the guest's initramfs. */
  files?: readonly GuestFile[];
  /**
   * The guest's root filesystem, served over virtio-fs (tag `rootfs`): the
   * init mounts it, makes it `/` and sets up a container there (proc, sys,
   * dev, devpts, `/dev/shm`, `/tmp`, hostname, loopback) before it serves
   * programs. Default: the init's own initramfs. Needs a kernel with its
   * modules directory (`virtiofs`).
   */
  root?: Filesystem;
  /** More virtio-fs filesystems mounted inside `root` (needs `root`). */
  shares?: readonly GuestShare[];
  /** The guest's hostname with `root` (default `initx`). */
  hostname?: string;
  /** Where `run()` sends programs' stdout (default: discarded). */
  stdout?: (bytes: Uint8Array) => void;
  /** Where `run()` sends programs' stderr (default: discarded). */
  stderr?: (bytes: Uint8Array) => void;
  /** Extra virtio devices, after initx's vsock device. */
  devices?: readonly VirtioDevice[];
  /** Receives device errors (bad guest data) and other diagnostics. */
  debug?: (line: string) => void;
  /** The hypervisor to use (default: `Kvm.open()`, closed with the VM). */
  hypervisor?: Hypervisor;
}

/** Options of {@linkcode VirtualMachine.boot}. */
export interface BootOptions {
  /** Limit from the VM's start to the init's connection (default 10 s). */
  timeoutMs?: number;
  /** Aborts the boot: the VM is closed and `boot()` rejects. */
  signal?: AbortSignal;
}

/**
 * Which output streams `runWithCapture` collects. With `combine`, stderr is
 * collected into stdout, in the order the program wrote them.
 */
export interface CaptureFlags {
  /** Collect stdout (default true). */
  stdout?: boolean;
  /** Collect stderr (default true). */
  stderr?: boolean;
  /** Merge stderr into stdout (default false). */
  combine?: boolean;
}

/** What `runWithCapture` returns for a program that exited with status 0. */
export interface CapturedOutput {
  /** The bytes the program wrote to stdout (and stderr, when combined). */
  stdout: Uint8Array;
  /** The bytes it wrote to stderr (empty when combined or not captured). */
  stderr: Uint8Array;
}

/** Streams of {@linkcode VirtualMachine.runWithStreamingOutput}. */
export interface StreamingOptions {
  /** The program's stdin (default: none, `/dev/null`). */
  stdin?: ReadableStream<Uint8Array> | Uint8Array;
  /** Receives the program's stdout (default: discarded). */
  stdout?: WritableStream<Uint8Array>;
  /** Receives the program's stderr (default: discarded). */
  stderr?: WritableStream<Uint8Array>;
  /** Aborts the program's run: the VM is closed and the call rejects. */
  signal?: AbortSignal;
}

/** A program started by {@linkcode VirtualMachine.spawn}. */
export interface GuestProcess {
  /** The program's stdin; close it to send end of file. */
  readonly stdin: WritableStream<Uint8Array>;
  /** The program's stdout. */
  readonly stdout: ReadableStream<Uint8Array>;
  /** The program's stderr. */
  readonly stderr: ReadableStream<Uint8Array>;
  /** Resolves with the exit status (any status; it never throws ExitError). */
  readonly status: Promise<number>;
}

/** A program: IR to compile for the VM's architecture, or compiled code. */
export type GuestProgram = Program | CompiledProgram;

/**
 * A Linux micro-VM running initx's program server as PID 1.
 *
 * @example
 * ```ts ignore
 * import { ProgramBuilder, VirtualMachine } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   m.printf("hello\n");
 *   m.return(0);
 * });
 * await using vm = await VirtualMachine.create({ memoryMiB: 256 });
 * await vm.boot();
 * const { stdout } = await vm.runWithCapture(p.build());
 * console.log(new TextDecoder().decode(stdout)); // hello
 * ```
 */
export class VirtualMachine {
  #options: VirtualMachineOptions;
  #linux: LinuxVm | undefined;
  #vsock: VirtioVsock;
  #console: VirtioConsole;
  #server: VsockProgramServer;
  #booting: Promise<void> | undefined;
  #ended: LinuxVmResult | undefined;
  #closed = false;
  #consoleTail = "";
  #consoleError: Error | undefined;
  #decoder = new TextDecoder();

  private constructor(options: VirtualMachineOptions) {
    this.#options = options;
    this.#vsock = new VirtioVsock({ guestCid: GUEST_CID });
    this.#console = new VirtioConsole({ output: (b) => this.#onConsole(b) });
    this.#server = new VsockProgramServer(this.#vsock);
  }

  /**
   * Makes a VM; nothing runs until {@linkcode VirtualMachine.boot}. Throws a
   * `RangeError` for bad sizes.
   */
  static create(options: VirtualMachineOptions = {}): Promise<VirtualMachine> {
    const cpus = options.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 255) {
      throw new RangeError(
        `Cannot create the VM: ${cpus} vCPUs is not an integer in 1..255`,
      );
    }
    return Promise.resolve(new VirtualMachine(options));
  }

  /** The guest architecture: the host's (KVM and Hypervisor.framework run guests of their own). */
  get architecture(): Arch {
    return hostGuestArch();
  }

  /**
   * Boots the kernel and waits until the init has connected. Rejects with
   * `BootTimeoutError` after `timeoutMs`, and with `VmTerminatedError` when
   * the VM ends first (a panic, a missing module); the VM is then closed.
   * Calling it again returns the same boot.
   */
  boot(options: BootOptions = {}): Promise<void> {
    if (this.#closed) {
      return Promise.reject(
        new VmTerminatedError("Cannot boot the VM: it is closed"),
      );
    }
    this.#booting ??= this.#boot(options).catch(async (e) => {
      await this.close();
      throw e;
    });
    return this.#booting;
  }

  async #boot(options: BootOptions): Promise<void> {
    const o = this.#options;
    const arch = this.architecture;
    const kernel = o.kernel ?? await ensureKernel();
    if (o.root !== undefined && kernel.modules === undefined) {
      throw new Error(
        "Cannot boot the VM with a virtio-fs root: the kernel has no modules directory (virtiofs)",
      );
    }
    if (o.shares?.length && o.root === undefined) {
      throw new Error("Cannot mount shares in the VM: they need a root");
    }
    const modules: InitModule[] = kernel.modules === undefined
      ? []
      : await loadInitModules(kernel.modules, [
        ...GUEST_MODULES,
        ...(o.root === undefined ? [] : ROOT_MODULES),
      ]);
    const initConfig = {
      modules,
      console: modules.some((m) => m.name === "virtio_console")
        ? GUEST_CONSOLE
        : undefined,
      serve: { address: (port: number) => vsockAddress(port) },
    };
    const init = o.root === undefined
      ? buildInitElf(initConfig, { arch })
      : compileElf(
        buildContainerInitProgram({
          ...initConfig,
          hostname: o.hostname,
          shares: (o.shares ?? []).map((share, i) => ({
            tag: shareTag(i),
            path: share.path,
            readOnly: share.readOnly,
          })),
        }),
        { arch },
      );
    const fsDevices = o.root === undefined ? [] : [
      new VirtioFs({ tag: CONTAINER_ROOT_TAG, filesystem: o.root }),
      ...(o.shares ?? []).map((share, i) =>
        new VirtioFs({ tag: shareTag(i), filesystem: share.filesystem })
      ),
    ];
    const cpio = new CpioWriter();
    cpio.file("init", init, { mode: 0o755 });
    for (const dir of ["dev", "proc", "sys", "tmp", "etc", "root"]) {
      cpio.dir(dir);
    }
    for (const f of o.files ?? []) {
      if ("bytes" in f) cpio.file(f.path, f.bytes, { mode: f.mode ?? 0o644 });
      else if ("symlink" in f) cpio.symlink(f.path, f.symlink);
      else cpio.dir(f.path, { mode: f.mode ?? 0o755 });
    }
    options.signal?.throwIfAborted();
    const cmdline = [
      defaultCmdline(arch),
      o.dmesg ? "" : QUIET_LOGLEVEL,
      o.cmdline ?? "",
    ].filter((a) => a).join(" ");
    const linux = await LinuxVm.start({
      kernel: kernel.image,
      initrd: cpio.bytes(),
      cmdline,
      cpus: o.cpus ?? 1,
      memoryMiB: o.memoryMiB ?? DEFAULT_VM_MEMORY_MIB,
      onConsole: (b) => this.#onConsole(b),
      virtioDevices: [
        this.#vsock,
        this.#console,
        ...fsDevices,
        ...(o.devices ?? []),
      ],
      onDeviceError: (message) => o.debug?.(`device: ${message}`),
      hypervisor: o.hypervisor,
      arch,
    });
    this.#linux = linux;
    void linux.done.then((result) => {
      this.#ended = result;
      const tail = this.#consoleTail.trim();
      const reason = `the VM ended: ${describeEnd(result)}${
        tail && result.outcome.kind !== "panic"
          ? `; the console's last lines:\n${tail}`
          : ""
      }`;
      this.#server.terminate(reason);
      this.#vsock.terminate(reason);
    });
    await this.#server.waitForGuest({
      timeoutMs: options.timeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS,
      signal: options.signal,
    });
    for (const fs of fsDevices) {
      o.debug?.(
        `virtio-fs ${fs.tag}: ${fs.server.requests} requests (${fs.server.errors} errors) until the init connected`,
      );
    }
  }

  /**
   * Runs a program; its output goes to the VM's `stdout`/`stderr` options.
   * Throws {@linkcode ExitError} when it exits with a non-zero status.
   */
  async run(program: GuestProgram): Promise<void> {
    const o = this.#options;
    await this.runWithStreamingOutput(program, {
      stdout: o.stdout === undefined ? undefined : sinkStream(o.stdout),
      stderr: o.stderr === undefined ? undefined : sinkStream(o.stderr),
    });
  }

  /**
   * Runs a program and collects its output. Throws {@linkcode ExitError}
   * (with the collected output) when it exits with a non-zero status.
   */
  async runWithCapture(
    program: GuestProgram,
    flags: CaptureFlags = {},
    stdin?: ReadableStream<Uint8Array> | Uint8Array,
  ): Promise<CapturedOutput> {
    const server = await this.#ready();
    const result = await server.run(this.#compile(program), {
      stdin,
      capture: {
        stdout: flags.stdout ?? true,
        stderr: flags.stderr ?? true,
        combine: flags.combine ?? false,
      },
    });
    const stdout = result.stdout ?? new Uint8Array(0);
    const stderr = result.stderr ?? new Uint8Array(0);
    if (result.exitCode !== 0) {
      throw new ExitError(result.exitCode, { stdout, stderr });
    }
    return { stdout, stderr };
  }

  /**
   * Runs a program with its stdin and output as streams, with backpressure
   * both ways. Throws {@linkcode ExitError} on a non-zero status.
   */
  async runWithStreamingOutput(
    program: GuestProgram,
    streams: StreamingOptions = {},
  ): Promise<void> {
    const code = await this.#stream(program, streams);
    if (code !== 0) throw new ExitError(code);
  }

  async #stream(
    program: GuestProgram,
    streams: StreamingOptions,
  ): Promise<number> {
    const server = await this.#ready();
    const onAbort = () => void this.close();
    streams.signal?.throwIfAborted();
    streams.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const result = await server.run(this.#compile(program), {
        stdin: streams.stdin,
        stdout: streams.stdout,
        stderr: streams.stderr,
      });
      return result.exitCode;
    } finally {
      streams.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Starts `path` with `args` in the guest (`execve`, environment with a
   * standard `PATH`), with its stdin, stdout and stderr as streams. Read
   * both outputs (or cancel them): unread output holds the program up.
   */
  spawn(path: string, ...args: string[]): GuestProcess {
    const stdin = new TransformStream<Uint8Array, Uint8Array>();
    const stdout = new TransformStream<Uint8Array, Uint8Array>();
    const stderr = new TransformStream<Uint8Array, Uint8Array>();
    const program = buildExecProgram(path, [path, ...args], {
      env: DEFAULT_ENV,
    });
    const status = this.#stream(program, {
      stdin: stdin.readable,
      stdout: stdout.writable,
      stderr: stderr.writable,
    });
    // The output streams end with the program, whatever its status.
    const end = (e?: unknown) => {
      for (const s of [stdout.writable, stderr.writable]) {
        if (e === undefined) s.close().catch(() => {});
        else s.abort(e).catch(() => {});
      }
    };
    status.then(() => end(), end);
    return {
      stdin: stdin.writable,
      stdout: stdout.readable,
      stderr: stderr.readable,
      status,
    };
  }

  #onConsole(bytes: Uint8Array): void {
    const text = this.#decoder.decode(bytes, { stream: true });
    this.#consoleTail = (this.#consoleTail + text).slice(-CONSOLE_TAIL_CHARS);
    try {
      this.#options.console?.(bytes);
    } catch (e) {
      // The guest runs on; the caller learns of it from `consoleError`.
      if (this.#consoleError !== undefined) return;
      this.#consoleError = e instanceof Error ? e : new Error(String(e));
      this.#options.debug?.(
        `console sink failed: ${this.#consoleError.message}`,
      );
    }
  }

  /**
   * The first error the `console` option threw, or undefined while it has
   * not thrown. The chunks it threw on were lost; later chunks still reach
   * it, and the guest runs on. Also in {@linkcode VirtualMachine.result}
   * once the VM has ended.
   */
  get consoleError(): Error | undefined {
    return this.#consoleError;
  }

  /**
   * Types `bytes` into the guest's console (`hvc0`): a program attached to
   * it as its terminal (`buildExecProgram(..., { tty: "/dev/hvc0" })`)
   * reads them. Up to 1 MiB waits for the guest; beyond that input is
   * dropped.
   *
   * @example
   * ```ts ignore
   * import { VirtualMachine } from "../../mod.ts";
   * await using vm = await VirtualMachine.create({ console: (b) => void Deno.stdout.write(b) });
   * await vm.boot();
   * vm.writeConsole(new TextEncoder().encode("ls\n"));
   * ```
   */
  writeConsole(bytes: Uint8Array): void {
    this.#console.input(bytes);
  }

  /**
   * Sets the console's size (columns, rows) as the guest's `hvc0` sees it,
   * and tells the guest when it changes (a terminal resize). Throws a
   * RangeError unless both are integers 0..65535.
   *
   * @example
   * ```ts ignore
   * import { VirtualMachine } from "../../mod.ts";
   * await using vm = await VirtualMachine.create();
   * vm.setConsoleSize(120, 40);
   * ```
   */
  setConsoleSize(columns: number, rows: number): void {
    this.#console.setConsoleSize(columns, rows);
  }

  /** Stops the VM and frees everything it holds. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const reason = "the VM was closed";
    this.#server.terminate(reason);
    this.#vsock.terminate(reason);
    await this.#server.close();
    await this.#linux?.close();
  }

  /** {@linkcode VirtualMachine.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * vCPU exits to userspace since boot, summed over the vCPUs: a diagnostic
   * for benchmarks (0 before boot).
   */
  exitCount(): number {
    return this.#linux?.exitCount() ?? 0;
  }

  /** How the VM's run ended, once it has; undefined while it runs. */
  get result(): LinuxVmResult | undefined {
    const ended = this.#ended;
    const consoleError = this.#consoleError;
    return ended === undefined || consoleError === undefined
      ? ended
      : { ...ended, consoleError };
  }

  async #ready(): Promise<VsockProgramServer> {
    if (this.#booting === undefined) {
      throw new Error("Cannot run a program: boot() the VM first");
    }
    await this.#booting;
    return this.#server;
  }

  #compile(program: GuestProgram): CompiledProgram {
    if ("code" in program) return program;
    return compile(program, { arch: this.architecture });
  }
}

/** The virtio-fs tag of share `i`. */
function shareTag(i: number): string {
  return `share${i}`;
}

/** A WritableStream that hands each chunk to `sink`. */
function sinkStream(
  sink: (bytes: Uint8Array) => void,
): WritableStream<Uint8Array> {
  return new WritableStream({ write: (chunk) => sink(chunk) });
}

/** One line on how a VM's run ended. */
export function describeEnd(result: LinuxVmResult): string {
  const o = result.outcome;
  switch (o.kind) {
    case "panic":
      return `the kernel panicked:\n${o.tail.slice(-1500)}`;
    case "error":
      return o.message;
    default:
      return o.kind;
  }
}
