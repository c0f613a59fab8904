/**
 * `initx run [options] IMAGE [-- CMD ARGS...]`: runs a container's command
 * in its own Linux micro-VM and exits with the command's status.
 *
 * The image (a registry reference, `oci:DIR`, `oci-archive:FILE` or
 * `docker-archive:FILE`) is resolved into the image cache; its layers become
 * the VM's root filesystem over virtio-fs, with a copy-on-write layer that
 * lives as long as the VM. initx's IR-compiled container init mounts it and
 * receives the command over virtio-vsock; its stdout and stderr stream back
 * separately, stdin too with `-i`. The kernel's log goes to stderr only with
 * `--dmesg`. `busybox` works offline: when the registry cannot be reached,
 * the cache gets an equivalent built from the host's `busybox-static`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { ensureKernel } from "../boot/kernel.ts";
import { cannotBootLinuxReason } from "../hv/kvm/host.ts";
import { ImageStore, isDefaultImage } from "../image/store.ts";
import { parseReference } from "../image/reference.ts";
import { resolveContainerCommand } from "../initx/container_command.ts";
import { ExitError } from "../initx/errors.ts";
import { buildExecProgram } from "../initx/program_loop.ts";
import {
  GUEST_CONSOLE,
  type GuestShare,
  VirtualMachine,
} from "../initx/virtual_machine.ts";
import { DEFAULT_MEMORY_MIB } from "../initx/linux_vm.ts";
import { HostDirFs } from "../vfs/host_dir.ts";
import { openImageFilesystem } from "../vfs/image_fs.ts";
import {
  positiveInteger,
  positiveNumber,
  progressPrinter,
  writeAll,
} from "./_args.ts";

/** Default limit from the VM's start to the guest's init connecting, in s. */
const DEFAULT_BOOT_TIMEOUT_S = 60;
/** Exit status after Ctrl-C (128 + SIGINT), as shells report it. */
const INTERRUPTED_STATUS = 130;

/** Usage text of `initx run`. */
export const RUN_USAGE = `Usage: initx run [options] IMAGE [-- CMD [ARGS...]]

Runs a container's command in a Linux micro-VM and exits with its status.
Without CMD it runs the image's Entrypoint and Cmd.

Images:
  busybox, alpine:3.20, ghcr.io/o/n:tag   from a registry (busybox is built
                                           offline when none can be reached)
  oci:DIR[:TAG]  oci-archive:FILE  docker-archive:FILE

Options:
  -e, --env KEY=VAL    set an environment variable (KEY alone: from this host)
  -w, --workdir DIR    working directory inside the container
  -u, --user USER      user[:group], by name or number
  -v, --volume H:G[:ro]  share host directory H at G (read-only with :ro)
  -i, --interactive    stream this terminal's stdin into the command
  -t, --tty            give the command a terminal (the guest's hvc0; with -i
                       this terminal goes raw and keys reach it as typed)
  --exec               run the command as PID 1 (of its own PID namespace,
                       with its own /proc), as container runtimes do
  --platform OS/ARCH   image platform (default: this host's)
  --pull WHEN          missing (default), always or never
  --kernel PATH        bzImage to boot (default: the cached Debian cloud kernel)
  --cpus N             number of vCPUs (default 1)
  --memory MB          guest RAM in MiB (default ${DEFAULT_MEMORY_MIB})
  --timeout S          stop the VM after S seconds (default 300)
  --boot-timeout S     give up when the guest is not up after S seconds (default ${DEFAULT_BOOT_TIMEOUT_S})
  --dmesg              show the kernel's log on stderr
  --debug              show initx's own diagnostics on stderr
  -h, --help           show this help`;

/** Options of {@linkcode runCommand}, for callers other than the CLI. */
export interface RunCommandOptions {
  /** Receives the command's stdout (default: stdout). */
  out?: (bytes: Uint8Array) => void;
  /** Receives the command's stderr and the kernel log (default: stderr). */
  errOut?: (bytes: Uint8Array) => void;
  /** Receives initx's own messages, one line each (default: stderr). */
  err?: (line: string) => void;
  /** The command's stdin with `-i` (default: this process's stdin). */
  stdin?: ReadableStream<Uint8Array>;
  /** The image cache (default: the user's, `~/.cache/initx/images`). */
  images?: ImageStore;
  /** Stops the run as Ctrl-C does (default: Ctrl-C itself, SIGINT). */
  signal?: AbortSignal;
  /**
   * Never ask a registry: cached images only, and the offline `busybox`
   * (default: true when `INITX_OFFLINE=1` is set).
   */
  offline?: boolean;
  /** The terminal `-t` drives (default: this process's, {@linkcode hostTerminal}). */
  terminal?: RunTerminal;
}

/** What `initx run -t` needs of the user's terminal. */
export interface RunTerminal {
  /** Its size now, if it has one. */
  size(): { columns: number; rows: number } | undefined;
  /** Calls `listener` on every resize until the returned function is called. */
  onResize(listener: (columns: number, rows: number) => void): () => void;
  /** Raw mode on or off (keys go to the guest's terminal as typed). */
  setRaw(raw: boolean): void;
}

/**
 * This process's terminal: `Deno.consoleSize()` of stdout, SIGWINCH, and
 * raw mode on stdin.
 *
 * @example
 * ```ts ignore
 * import { hostTerminal } from "./run.ts";
 * console.log(hostTerminal().size());
 * ```
 */
export function hostTerminal(): RunTerminal {
  const size = () => {
    try {
      return Deno.consoleSize();
    } catch {
      return undefined; // not a terminal
    }
  };
  return {
    size,
    onResize(listener) {
      if (Deno.build.os === "windows") return () => {};
      const handler = () => {
        const s = size();
        if (s) listener(s.columns, s.rows);
      };
      Deno.addSignalListener("SIGWINCH", handler);
      return () => Deno.removeSignalListener("SIGWINCH", handler);
    },
    setRaw(raw) {
      Deno.stdin.setRaw(raw);
    },
  };
}

/** A `-v HOST:GUEST[:ro]` flag, parsed. */
export interface VolumeSpec {
  /** The host directory, absolute. */
  host: string;
  /** Where the guest sees it. */
  guest: string;
  /** Read-only. */
  readOnly: boolean;
}

/**
 * Parses `-v HOST:GUEST[:ro|:rw]`; throws with the reason.
 *
 * @example
 * ```ts
 * import { parseVolume } from "./run.ts";
 * console.log(parseVolume("/srv/data:/data:ro").readOnly); // true
 * ```
 */
export function parseVolume(spec: string): VolumeSpec {
  const parts = spec.split(":");
  const mode = parts.length === 3 ? parts[2] : undefined;
  if (
    parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1] ||
    (mode !== undefined && mode !== "ro" && mode !== "rw")
  ) {
    throw new Error(
      `--volume "${spec}" is not HOST:GUEST, HOST:GUEST:ro or HOST:GUEST:rw`,
    );
  }
  const guest = parts[1];
  if (
    !guest.startsWith("/") || guest === "/" ||
    guest.split("/").slice(1).some((p) => p === "" || p === "." || p === "..")
  ) {
    throw new Error(
      `--volume "${spec}": the guest path must be absolute and normalized, and not /`,
    );
  }
  return { host: resolve(parts[0]), guest, readOnly: mode === "ro" };
}

/**
 * Runs `initx run` with `args` (the words after `run`) and returns the
 * command's exit status, or 1 when the VM could not run it, 2 for bad usage,
 * 130 after Ctrl-C.
 *
 * @example
 * ```ts ignore
 * import { runCommand } from "./run.ts";
 * Deno.exit(await runCommand(["busybox", "--", "uname", "-a"]));
 * ```
 */
export async function runCommand(
  args: string[],
  options: RunCommandOptions = {},
): Promise<number> {
  const out = options.out ?? ((b: Uint8Array) => writeAll(Deno.stdout, b));
  const errOut = options.errOut ??
    ((b: Uint8Array) => writeAll(Deno.stderr, b));
  const err = options.err ?? ((line: string) => console.error(line));
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      options: {
        env: { type: "string", short: "e", multiple: true },
        workdir: { type: "string", short: "w" },
        user: { type: "string", short: "u" },
        volume: { type: "string", short: "v", multiple: true },
        interactive: { type: "boolean", short: "i" },
        tty: { type: "boolean", short: "t" },
        exec: { type: "boolean" },
        platform: { type: "string" },
        pull: { type: "string" },
        kernel: { type: "string" },
        cpus: { type: "string" },
        memory: { type: "string" },
        timeout: { type: "string" },
        "boot-timeout": { type: "string" },
        dmesg: { type: "boolean" },
        debug: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    err(`initx run: ${(e as Error).message}\n${RUN_USAGE}`);
    return 2;
  }
  if (values.help) {
    err(RUN_USAGE);
    return 0;
  }
  const [image, ...command] = positionals;
  if (image === undefined) {
    err(`initx run: an image is needed\n${RUN_USAGE}`);
    return 2;
  }
  const pull = values.pull ?? "missing";
  if (pull !== "missing" && pull !== "always" && pull !== "never") {
    err(`initx run: --pull "${pull}" is not missing, always or never`);
    return 2;
  }
  let cpus: number, memoryMiB: number, timeoutMs: number, bootTimeoutMs: number;
  let volumes: VolumeSpec[];
  try {
    cpus = positiveInteger("--cpus", values.cpus ?? "1");
    memoryMiB = positiveInteger(
      "--memory",
      values.memory ?? String(DEFAULT_MEMORY_MIB),
    );
    timeoutMs = positiveNumber("--timeout", values.timeout ?? "300") * 1000;
    bootTimeoutMs = positiveNumber(
      "--boot-timeout",
      values["boot-timeout"] ?? String(DEFAULT_BOOT_TIMEOUT_S),
    ) * 1000;
    volumes = (values.volume ?? []).map(parseVolume);
  } catch (e) {
    err(`initx run: ${(e as Error).message}`);
    return 2;
  }
  const unsupported = cannotBootLinuxReason();
  if (unsupported !== undefined) {
    err(`initx run: ${unsupported}`);
    return 1;
  }
  const interrupt = new AbortController();
  const onSigint = () => interrupt.abort();
  const signal = options.signal ?? interrupt.signal;
  if (options.signal === undefined) Deno.addSignalListener("SIGINT", onSigint);
  let vm: VirtualMachine | undefined;
  const terminal = options.terminal ?? hostTerminal();
  let rawMode = false;
  let showConsole = false;
  let stopResize = () => {};
  let typing: Promise<void> | undefined;
  const typingDone = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  const shares: GuestShare[] = [];
  const progress = progressPrinter("initx run", err);
  // --debug: when each step ended, in ms since the process started (the
  // first figure is Deno's start and module loading).
  let last = performance.now();
  const step = (what: string) => {
    if (!values.debug) return;
    const now = performance.now();
    err(
      `initx run: ${what} at ${now.toFixed(0)} ms (+${
        (now - last).toFixed(0)
      } ms)`,
    );
    last = now;
  };
  step("started");
  try {
    for (const v of volumes) {
      const info = await Deno.stat(v.host).catch(() => undefined);
      if (!info?.isDirectory) {
        throw new Error(
          `Cannot share ${v.host}: it is not a directory on this host`,
        );
      }
      shares.push({
        path: v.guest,
        filesystem: new HostDirFs(v.host, { readOnly: v.readOnly }),
        readOnly: v.readOnly,
      });
    }
    const store = options.images ?? new ImageStore();
    const offline = options.offline ?? Deno.env.get("INITX_OFFLINE") === "1";
    const ref = parseReference(image);
    // Offline, only the default image may be made (from busybox-static).
    const buildable = ref.kind === "registry" && isDefaultImage(ref);
    const resolved = await store.resolve(ref, {
      platform: values.platform,
      pull: offline ? (buildable ? "missing" : "never") : pull,
      onProgress: progress.event,
      reachable: offline ? () => Promise.resolve(false) : undefined,
    });
    progress.done();
    step("image resolved");
    signal.throwIfAborted();
    const root = await openImageFilesystem(resolved);
    step("image filesystem open");
    const cmd = resolveContainerCommand(root, resolved.config.config ?? {}, {
      command,
      env: values.env,
      workdir: values.workdir,
      user: values.user,
      hostEnv: (name) => Deno.env.get(name),
    });
    const kernel = values.kernel !== undefined
      ? { image: values.kernel }
      : await ensureKernel({ onProgress: (line) => err(`initx run: ${line}`) });
    step("kernel found");
    vm = await VirtualMachine.create({
      cpus,
      memoryMiB,
      kernel,
      root,
      shares,
      dmesg: values.dmesg,
      // With -t the console is the command's terminal: it goes to stdout.
      // (from the command's start: the init's own boot lines stay out).
      console: values.tty
        ? (b) => {
          if (showConsole) out(b);
        }
        : values.dmesg
        ? errOut
        : undefined,
      debug: values.debug ? (line) => err(`initx run: ${line}`) : undefined,
    });
    const running = vm;
    timer = setTimeout(() => {
      timedOut = true;
      void running.close();
    }, timeoutMs);
    if (values.tty) {
      const size = terminal.size();
      if (size) vm.setConsoleSize(size.columns, size.rows);
      stopResize = terminal.onResize((columns, rows) =>
        running.setConsoleSize(columns, rows)
      );
    }
    await vm.boot({ timeoutMs: bootTimeoutMs, signal });
    step("booted (init connected)");
    if (values.tty) {
      const env = cmd.env.some((e) => e.startsWith("TERM="))
        ? cmd.env
        : [...cmd.env, `TERM=${Deno.env.get("TERM") || "xterm"}`];
      const program = buildExecProgram(cmd.path, cmd.argv, {
        env,
        cwd: cmd.cwd,
        uid: cmd.uid,
        gid: cmd.gid,
        tty: GUEST_CONSOLE,
        ttySize: terminal.size(),
        pidNamespace: values.exec,
      });
      if (values.interactive) {
        const stdin = options.stdin ?? Deno.stdin.readable;
        if (options.stdin === undefined && Deno.stdin.isTerminal()) {
          terminal.setRaw(true);
          rawMode = true;
        }
        typing = stdin.pipeTo(
          new WritableStream({ write: (b) => running.writeConsole(b) }),
          { signal: typingDone.signal },
        ).catch(() => {});
      }
      // Ctrl-C outside raw mode stops the VM, and with it the run.
      const stop = () => void running.close();
      signal.addEventListener("abort", stop, { once: true });
      showConsole = true;
      try {
        await vm.run(program);
        return 0;
      } catch (e) {
        if (e instanceof ExitError) return e.code;
        throw e;
      } finally {
        signal.removeEventListener("abort", stop);
      }
    }
    try {
      await vm.runWithStreamingOutput(
        buildExecProgram(cmd.path, cmd.argv, {
          env: cmd.env,
          cwd: cmd.cwd,
          uid: cmd.uid,
          gid: cmd.gid,
          pidNamespace: values.exec,
        }),
        {
          stdin: values.interactive
            ? options.stdin ?? Deno.stdin.readable
            : undefined,
          stdout: new WritableStream({ write: (b) => out(b) }),
          stderr: new WritableStream({ write: (b) => errOut(b) }),
          signal,
        },
      );
      step("command exited");
      return 0;
    } catch (e) {
      if (e instanceof ExitError) {
        step("command exited");
        return e.code;
      }
      throw e;
    }
  } catch (e) {
    progress.done();
    if (signal.aborted) {
      err("initx run: interrupted: the VM was stopped");
      return INTERRUPTED_STATUS;
    }
    err(
      `initx run: ${
        timedOut
          ? `the command did not finish within ${timeoutMs / 1000} s`
          : (e as Error).message
      }`,
    );
    return 1;
  } finally {
    clearTimeout(timer);
    stopResize();
    typingDone.abort();
    await typing;
    if (rawMode) terminal.setRaw(false);
    if (options.signal === undefined) {
      Deno.removeSignalListener("SIGINT", onSigint);
    }
    await vm?.close();
    for (const s of shares) s.filesystem.destroy();
    step("VM closed");
  }
}
