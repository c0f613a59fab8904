/**
 * `initx run IMAGE [options] -- CMD [ARGS...]`: runs a command in a Linux
 * micro-VM on the default kernel and returns its exit status.
 *
 * The VM's PID 1 is initx's own IR-compiled init; the command runs as a
 * program it receives over virtio-vsock, with its stdout and stderr streamed
 * back separately (and stdin too with `-i`). The kernel's log goes to stderr
 * only with `--dmesg`.
 *
 * For now the only image is `busybox`: the host's static busybox (Debian
 * `busybox-static`) with a link per applet, in the VM's initramfs. OCI
 * images come later.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ensureKernel } from "../boot/kernel.ts";
import { cannotBootLinuxReason } from "../hv/kvm/host.ts";
import {
  busyboxApplets,
  requireStaticBusybox,
} from "../initx/busybox_guest.ts";
import { ExitError } from "../initx/errors.ts";
import { DEFAULT_ENV } from "../initx/init.ts";
import { buildExecProgram } from "../initx/program_loop.ts";
import { type GuestFile, VirtualMachine } from "../initx/virtual_machine.ts";
import { DEFAULT_MEMORY_MIB } from "../initx/linux_vm.ts";
import { positiveInteger, positiveNumber, writeAll } from "./_args.ts";

/** Default limit from the VM's start to the guest's init connecting, in s. */
const DEFAULT_BOOT_TIMEOUT_S = 60;

/** Usage text of `initx run`. */
export const RUN_USAGE = `Usage: initx run IMAGE [options] -- CMD [ARGS...]

Runs CMD in a Linux micro-VM and exits with its status.

Images:
  busybox          the host's static busybox (apt-get install busybox-static)

Options:
  -i, --interactive  stream this terminal's stdin into the command
  --kernel PATH      bzImage to boot (default: the cached Debian cloud kernel)
  --cpus N           number of vCPUs (default 1)
  --memory MB        guest RAM in MiB (default ${DEFAULT_MEMORY_MIB})
  --timeout S        stop the guest after S seconds (default 300)
  --boot-timeout S   give up when the guest is not up after S seconds (default ${DEFAULT_BOOT_TIMEOUT_S})
  --dmesg            show the kernel's log on stderr
  -h, --help         show this help`;

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
}

/**
 * Runs `initx run` with `args` (the words after `run`) and returns the
 * command's exit status, or 1 when the VM could not run it, 2 for bad usage.
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
        interactive: { type: "boolean", short: "i" },
        kernel: { type: "string" },
        cpus: { type: "string" },
        memory: { type: "string" },
        timeout: { type: "string" },
        "boot-timeout": { type: "string" },
        dmesg: { type: "boolean" },
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
  if (image === undefined || command.length === 0) {
    err(`initx run: an image and a command are needed\n${RUN_USAGE}`);
    return 2;
  }
  if (image !== "busybox") {
    err(
      `initx run: image "${image}" is not available: the only image so far is "busybox"`,
    );
    return 2;
  }
  let cpus: number, memoryMiB: number, timeoutMs: number, bootTimeoutMs: number;
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
  } catch (e) {
    err(`initx run: ${(e as Error).message}`);
    return 2;
  }
  const unsupported = cannotBootLinuxReason();
  if (unsupported !== undefined) {
    err(`initx run: ${unsupported}`);
    return 1;
  }
  let vm: VirtualMachine | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  try {
    const kernel = values.kernel !== undefined
      ? { image: values.kernel }
      : await ensureKernel({ onProgress: (line) => err(`initx run: ${line}`) });
    const busybox = requireStaticBusybox();
    const files: GuestFile[] = [
      { path: "bin/busybox", bytes: await Deno.readFile(busybox), mode: 0o755 },
    ];
    for (const applet of await busyboxApplets(busybox)) {
      if (applet === "busybox" || applet.includes("/")) continue;
      files.push({ path: `bin/${applet}`, symlink: "busybox" });
    }
    vm = await VirtualMachine.create({
      cpus,
      memoryMiB,
      kernel,
      files,
      dmesg: values.dmesg,
      console: values.dmesg ? errOut : undefined,
      debug: (line) => err(`initx run: ${line}`),
    });
    timer = setTimeout(() => {
      timedOut = true;
      void vm?.close();
    }, timeoutMs);
    await vm.boot({ timeoutMs: bootTimeoutMs });
    const [program] = command as [string, ...string[]];
    const path = program.startsWith("/") ? program : `/bin/${program}`;
    try {
      await vm.runWithStreamingOutput(
        buildExecProgram(path, [program, ...command.slice(1)], {
          env: DEFAULT_ENV,
        }),
        {
          stdin: values.interactive
            ? options.stdin ?? Deno.stdin.readable
            : undefined,
          stdout: new WritableStream({ write: (b) => out(b) }),
          stderr: new WritableStream({ write: (b) => errOut(b) }),
        },
      );
      return 0;
    } catch (e) {
      if (e instanceof ExitError) return e.code;
      throw e;
    }
  } catch (e) {
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
    await vm?.close();
  }
}
