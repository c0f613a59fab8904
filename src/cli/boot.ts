/**
 * `initx boot`: boots a Linux kernel with an optional initramfs and streams
 * its serial console to stdout.
 *
 * ```
 * initx boot [--kernel PATH] [--initrd PATH] [--append ARGS] [--cpus N]
 *            [--memory MB] [--timeout S]
 * ```
 *
 * Exit status: 0 when the guest powers off, 1 for any other end (reboot,
 * panic, triple fault, timeout, error), a failure to start or console output
 * that could not be written (the guest runs on regardless), 2 for bad
 * arguments.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { positiveInteger, positiveNumber, writeAll } from "./_args.ts";
import { ensureKernel } from "../boot/kernel.ts";
import { cannotBootLinuxReason } from "../hv/kvm/host.ts";
import {
  bootLinux,
  DEFAULT_CMDLINE,
  DEFAULT_MEMORY_MIB,
  type LinuxVmOutcome,
} from "../initx/linux_vm.ts";

/** Usage text of `initx boot`. */
export const BOOT_USAGE = `Usage: initx boot [options]

Boots a Linux kernel and streams its serial console to stdout.

Options:
  --kernel PATH    bzImage to boot (default: the cached Debian cloud kernel)
  --initrd PATH    initramfs (newc cpio, optionally compressed)
  --append ARGS    extra kernel command line arguments
  --cpus N         number of vCPUs (default 1)
  --memory MB      guest RAM in MiB (default ${DEFAULT_MEMORY_MIB})
  --timeout S      stop the guest after S seconds (default: never)
  -h, --help       show this help`;

/** Options of {@linkcode bootCommand}, for callers other than the CLI. */
export interface BootCommandOptions {
  /** Receives the guest console (default: stdout). */
  out?: (bytes: Uint8Array) => void;
  /** Receives initx's own messages, one line each (default: stderr). */
  err?: (line: string) => void;
}

/**
 * Runs `initx boot` with `args` (the words after `boot`) and returns the
 * process exit status.
 *
 * @example
 * ```ts ignore
 * import { bootCommand } from "./boot.ts";
 * Deno.exit(await bootCommand(["--initrd", "initrd.cpio", "--cpus", "2"]));
 * ```
 */
export async function bootCommand(
  args: string[],
  options: BootCommandOptions = {},
): Promise<number> {
  const out = options.out ?? ((b: Uint8Array) => writeAll(Deno.stdout, b));
  const err = options.err ?? ((line: string) => console.error(line));
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        kernel: { type: "string" },
        initrd: { type: "string" },
        append: { type: "string" },
        cpus: { type: "string" },
        memory: { type: "string" },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    err(`initx boot: ${(e as Error).message}\n${BOOT_USAGE}`);
    return 2;
  }
  if (values.help) {
    err(BOOT_USAGE);
    return 0;
  }
  let cpus: number, memoryMiB: number, timeoutMs: number | undefined;
  try {
    cpus = positiveInteger("--cpus", values.cpus ?? "1");
    memoryMiB = positiveInteger(
      "--memory",
      values.memory ?? String(DEFAULT_MEMORY_MIB),
    );
    timeoutMs = values.timeout === undefined
      ? undefined
      : positiveNumber("--timeout", values.timeout) * 1000;
  } catch (e) {
    err(`initx boot: ${(e as Error).message}`);
    return 2;
  }

  const unsupported = cannotBootLinuxReason();
  if (unsupported !== undefined) {
    err(`initx boot: ${unsupported}`);
    return 1;
  }
  try {
    const kernel = values.kernel ?? (await ensureKernel()).image;
    const cmdline = values.append
      ? `${DEFAULT_CMDLINE} ${values.append}`
      : DEFAULT_CMDLINE;
    const result = await bootLinux({
      kernel,
      initrd: values.initrd,
      cmdline,
      cpus,
      memoryMiB,
      timeoutMs,
      onConsole: out,
    });
    const seconds = (result.elapsedMs / 1000).toFixed(1);
    if (result.consoleError !== undefined) {
      err(
        `initx boot: cannot write the guest's console: ${result.consoleError.message}`,
      );
    }
    if (result.outcome.kind === "power-off") {
      return result.consoleError === undefined ? 0 : 1;
    }
    err(`initx boot: ${describeOutcome(result.outcome)} after ${seconds} s`);
    return 1;
  } catch (e) {
    err(`initx boot: ${(e as Error).message}`);
    return 1;
  }
}

/** One sentence on how a run ended. */
export function describeOutcome(outcome: LinuxVmOutcome): string {
  switch (outcome.kind) {
    case "power-off":
      return "the guest powered off";
    case "reboot":
      return "the guest rebooted";
    case "panic":
      return "the guest kernel panicked (console tail above)";
    case "triple-fault":
      return "the guest triple-faulted";
    case "timeout":
      return "the guest did not power off before the timeout";
    case "stopped":
      return "the guest was stopped";
    case "error":
      return `the guest could not run: ${outcome.message}`;
    default: {
      const never: never = outcome;
      return `unknown outcome ${JSON.stringify(never)}`;
    }
  }
}
