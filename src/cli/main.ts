/**
 * The `initx` command line: `main(args)` dispatches the subcommand and
 * returns the exit status.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { bootCommand } from "./boot.ts";
import { compileCommand } from "./compile.ts";
import { runCommand } from "./run.ts";
import { cacheCommand, imagesCommand, pullCommand } from "./images.ts";
import { ensureKernel } from "../boot/kernel.ts";

/** A subcommand: a one-line summary and what runs it. */
export interface Command {
  /** Shown by `initx --help`. */
  summary: string;
  /** Runs with the words after the subcommand's name; returns the exit status. */
  run?: (args: string[]) => Promise<number>;
}

/**
 * The subcommands.
 */
export const COMMANDS: Record<string, Command> = {
  boot: {
    summary: "boot a Linux kernel and stream its console",
    run: bootCommand,
  },
  run: {
    summary:
      "run a container's command in a micro-VM: initx run IMAGE [-- CMD ARGS...]",
    run: runCommand,
  },
  pull: {
    summary: "pull IMAGE: put an image into the cache",
    run: (args) => pullCommand(args),
  },
  images: {
    summary: "list the cached images",
    run: (args) => imagesCommand(args),
  },
  cache: {
    summary: "cache prune [--all]: remove blobs no cached image uses",
    run: (args) => cacheCommand(args),
  },
  compile: {
    summary:
      "compile an IR program module to an ELF: initx compile prog.ts --arch x86_64|aarch64 -o out",
    run: compileCommand,
  },
  kernel: {
    summary:
      "kernel fetch [--refresh] [--arch A]: download and cache the default kernel",
    run: kernelCommand,
  },
};

const KERNEL_USAGE =
  `Usage: initx kernel fetch [--refresh] [--arch x86_64|aarch64]

Downloads and caches the default kernel (Debian's cloud kernel with its
modules) and prints the paths of its image and modules.

Options:
  --refresh        look up the newest kernel even if the last lookup is recent
  --arch ARCH      the kernel's architecture (default: this host's)
  -h, --help       show this help`;

/** `initx kernel fetch`: provisions the default kernel and prints its paths. */
async function kernelCommand(args: string[]): Promise<number> {
  const [verb, ...rest] = args;
  if (verb === "-h" || verb === "--help") {
    console.log(KERNEL_USAGE);
    return 0;
  }
  if (verb !== "fetch") {
    console.error(KERNEL_USAGE);
    return 2;
  }
  let values: { refresh?: boolean; arch?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        refresh: { type: "boolean" },
        arch: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    console.error(`initx kernel: ${(e as Error).message}\n\n${KERNEL_USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(KERNEL_USAGE);
    return 0;
  }
  const arch = values.arch;
  if (arch !== undefined && arch !== "x86_64" && arch !== "aarch64") {
    console.error(
      `initx kernel: --arch must be x86_64 or aarch64, not "${arch}"`,
    );
    return 2;
  }
  try {
    const k = await ensureKernel({
      refresh: values.refresh,
      arch,
      onProgress: (line) => console.error(`initx kernel: ${line}`),
    });
    console.log(`image=${k.image}`);
    if (k.modules) console.log(`modules=${k.modules}`);
    console.log(`version=${k.version}`);
    return 0;
  } catch (e) {
    console.error(`initx kernel: ${(e as Error).message}`);
    return 1;
  }
}

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  return [
    "Usage: initx <command> [options]",
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, c]) =>
      `  ${name.padEnd(width)}  ${c.summary}`
    ),
  ].join("\n");
}

/**
 * Runs the `initx` command line with `args` and returns the exit status.
 *
 * @example
 * ```ts ignore
 * import { main } from "./main.ts";
 * Deno.exit(await main(["boot", "--cpus", "2"]));
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === "-h" || name === "--help") {
    console.log(usage());
    return 0;
  }
  if (name === undefined) {
    console.error(usage());
    return 2;
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (command === undefined) {
    console.error(`initx: unknown command "${name}"\n${usage()}`);
    return 2;
  }
  if (command.run === undefined) {
    console.error(`initx: "${name}" is not available yet`);
    return 2;
  }
  return await command.run(rest);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
