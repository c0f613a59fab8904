/**
 * `initx run IMAGE [options] -- CMD [ARGS...]`: runs a command in a Linux
 * micro-VM on the default kernel and returns its exit status.
 *
 * For now the only image is `busybox`: the host's static busybox (Debian
 * `busybox-static`) with a link per applet, packed by initx into an initramfs
 * whose PID 1 is initx's own IR-compiled init. OCI images come later.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ensureKernel } from "../boot/kernel.ts";
import { cannotBootLinuxReason } from "../hv/kvm/host.ts";
import {
  bootLinux,
  DEFAULT_CMDLINE,
  DEFAULT_MEMORY_MIB,
} from "../initx/linux_vm.ts";
import {
  buildBusyboxInitramfs,
  busyboxApplets,
  requireStaticBusybox,
} from "../initx/busybox_guest.ts";
import { DEFAULT_MARKER, EXIT_STATUS_PREFIX } from "../initx/init.ts";
import { positiveInteger, positiveNumber, writeAll } from "./_args.ts";
import { describeOutcome } from "./boot.ts";

/** Usage text of `initx run`. */
export const RUN_USAGE = `Usage: initx run IMAGE [options] -- CMD [ARGS...]

Runs CMD in a Linux micro-VM and exits with its status.

Images:
  busybox          the host's static busybox (apt-get install busybox-static)

Options:
  --kernel PATH    bzImage to boot (default: the cached Debian cloud kernel)
  --cpus N         number of vCPUs (default 1)
  --memory MB      guest RAM in MiB (default ${DEFAULT_MEMORY_MIB})
  --timeout S      stop the guest after S seconds (default 300)
  -h, --help       show this help`;

/** A kernel log line on the console (`printk.time` prefix). */
const KERNEL_LOG_LINE = /^\[\s*\d+\.\d+\] /;

/** The init's status line, possibly after output without a newline. */
const STATUS_LINE = new RegExp(
  `^(.*)${
    EXIT_STATUS_PREFIX.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
  }(\\d{1,3})$`,
);
/** Output held back while waiting for the end of its line. */
const MAX_PENDING_CHARS = 4096;

/** Options of {@linkcode runCommand}, for callers other than the CLI. */
export interface RunCommandOptions {
  /** Receives the command's output (default: stdout). */
  out?: (bytes: Uint8Array) => void;
  /** Receives initx's own messages, one line each (default: stderr). */
  err?: (line: string) => void;
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
  const err = options.err ?? ((line: string) => console.error(line));
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      options: {
        kernel: { type: "string" },
        cpus: { type: "string" },
        memory: { type: "string" },
        timeout: { type: "string" },
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
  let cpus: number, memoryMiB: number, timeoutMs: number;
  try {
    cpus = positiveInteger("--cpus", values.cpus ?? "1");
    memoryMiB = positiveInteger(
      "--memory",
      values.memory ?? String(DEFAULT_MEMORY_MIB),
    );
    timeoutMs = positiveNumber("--timeout", values.timeout ?? "300") * 1000;
  } catch (e) {
    err(`initx run: ${(e as Error).message}`);
    return 2;
  }
  const unsupported = cannotBootLinuxReason();
  if (unsupported !== undefined) {
    err(`initx run: ${unsupported}`);
    return 1;
  }
  try {
    const kernel = values.kernel ?? (await ensureKernel({
      onProgress: (line) => err(`initx run: ${line}`),
    })).image;
    const busybox = requireStaticBusybox();
    const initrd = buildBusyboxInitramfs({
      busybox: await Deno.readFile(busybox),
      applets: await busyboxApplets(busybox),
      command,
    });
    // The init's own lines (its marker, the exit status) are not the
    // command's output, and neither is the kernel's power-off message after
    // the status. The kernel prints only emergencies (loglevel=1), so what
    // remains is the command's output. The status line may follow output
    // that did not end its line.
    let status: number | undefined;
    let pending = "";
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    const onConsole = (bytes: Uint8Array) => {
      pending += decoder.decode(bytes, { stream: true });
      let nl: number;
      if (pending.length > MAX_PENDING_CHARS && !pending.includes("\n")) {
        // A guest that never ends its line still gets its output shown.
        out(encoder.encode(pending));
        pending = "";
      }
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl + 1);
        pending = pending.slice(nl + 1);
        const bare = line.replace(/\r?\n$/, "");
        if (bare === DEFAULT_MARKER) continue;
        // The init prints the real status last, so the last one wins.
        const m = STATUS_LINE.exec(bare);
        if (m) {
          if (m[1]) out(encoder.encode(m[1]));
          status = Number(m[2]);
          continue;
        }
        if (status !== undefined && KERNEL_LOG_LINE.test(bare)) continue;
        out(encoder.encode(line.replace(/\r\n$/, "\n")));
      }
    };
    const result = await bootLinux({
      kernel,
      initrd,
      cmdline: `${DEFAULT_CMDLINE} loglevel=1`,
      cpus,
      memoryMiB,
      timeoutMs,
      onConsole,
    });
    if (pending) out(encoder.encode(pending));
    if (result.outcome.kind === "power-off" && status !== undefined) {
      return status;
    }
    err(
      `initx run: ${
        status === undefined ? "the command did not finish: " : ""
      }${describeOutcome(result.outcome)} after ${
        (result.elapsedMs / 1000).toFixed(1)
      } s`,
    );
    return 1;
  } catch (e) {
    err(`initx run: ${(e as Error).message}`);
    return 1;
  }
}
