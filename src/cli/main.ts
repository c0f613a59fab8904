/**
 * The `initx` command line: `main(args)` dispatches the subcommand and
 * returns the exit status.
 *
 * @module
 */

import { bootCommand } from "./boot.ts";

/** A subcommand: a one-line summary and what runs it. */
export interface Command {
  /** Shown by `initx --help`. */
  summary: string;
  /** Runs with the words after the subcommand's name; returns the exit status. */
  run?: (args: string[]) => Promise<number>;
}

/**
 * The subcommands. Entries without `run` are announced but not built yet
 * (`compile`, `run`, `kernel fetch`); they are the hooks to fill in.
 */
export const COMMANDS: Record<string, Command> = {
  boot: {
    summary: "boot a Linux kernel and stream its console",
    run: bootCommand,
  },
  run: { summary: "run a command in an OCI image (not built yet)" },
  compile: { summary: "compile an init program (not built yet)" },
  kernel: {
    summary: "kernel fetch: download the default kernel (not built yet)",
  },
};

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
  if (name === undefined || name === "-h" || name === "--help") {
    console.error(usage());
    return name === undefined ? 2 : 0;
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
