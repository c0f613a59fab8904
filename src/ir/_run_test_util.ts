/**
 * Test helper: compile a program to ELF for both architectures and run each
 * as a process, natively or under QEMU user mode (`qemu-<arch>-static` from
 * Debian's qemu-user-static). Internal to `src/ir/` tests.
 *
 * When the emulator is missing, the foreign architecture fails the test
 * with `CI=true` and is skipped, loudly, otherwise.
 *
 * @module
 */

import { deepEqual } from "node:assert/strict";
import type { Program } from "./ir.ts";
import { compileElf } from "./mod.ts";
import type { Arch } from "./syscalls.ts";
import { HOST_ARCH, withTempDir } from "../../tests/_util.ts";

/** What a process did. */
export interface RunResult {
  /** Standard output, decoded as UTF-8. */
  stdout: string;
  /** Exit code (as Deno reports it, also for a signal). */
  code: number;
}

const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];
let warned = false;

/**
 * The command prefix that runs an ELF of `arch` here (empty when native), or
 * `undefined` after a loud warning when the emulator is missing; with CI it
 * throws instead.
 */
export function launcher(
  arch: Arch,
  options: { emulatorDir?: string; ci?: boolean } = {},
): string[] | undefined {
  if (arch === HOST_ARCH) return [];
  const emulator = `${options.emulatorDir ?? "/usr/bin"}/qemu-${arch}-static`;
  try {
    Deno.statSync(emulator);
    return [emulator];
  } catch {
    const message =
      `Cannot run ${arch} programs: ${emulator} is missing (apt-get install -y qemu-user-static)`;
    if (options.ci ?? Deno.env.get("CI") === "true") throw new Error(message);
    if (!warned) {
      console.warn(`\n!!! SKIPPING ${arch} behaviour checks. ${message}\n`);
    }
    warned = true;
    return undefined;
  }
}

/** Compile `program` for `arch`, write it to `dir` and run it with `args`. */
export async function run(
  program: Program,
  options: { arch: Arch; dir: string; args?: string[]; stdin?: string },
): Promise<RunResult | undefined> {
  const prefix = launcher(options.arch);
  if (prefix === undefined) return undefined;
  const path = `${options.dir}/program-${options.arch}-${crypto.randomUUID()}`;
  await Deno.writeFile(path, compileElf(program, { arch: options.arch }), {
    mode: 0o755,
  });
  const [command, ...rest] = [...prefix, path, ...(options.args ?? [])];
  const child = new Deno.Command(command!, {
    args: rest,
    cwd: options.dir,
    stdout: "piped",
    stderr: "piped",
    stdin: options.stdin === undefined ? "null" : "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const output = await child.output();
  return { stdout: new TextDecoder().decode(output.stdout), code: output.code };
}

/**
 * Run `program` on every architecture and check each one's stdout and exit
 * code against the expectation (so both architectures agree).
 */
export async function expectRun(
  program: Program,
  expected: {
    stdout: string;
    code?: number;
    args?: string[];
    setup?: (dir: string) => Promise<void>;
  },
): Promise<void> {
  await withTempDir(async (dir) => {
    await expected.setup?.(dir);
    const results = await Promise.all(
      ARCHES.map((arch) => run(program, { arch, dir, args: expected.args })),
    );
    ARCHES.forEach((arch, i) => {
      const result = results[i];
      if (result === undefined) return;
      deepEqual(
        { arch, stdout: result.stdout, code: result.code },
        { arch, stdout: expected.stdout, code: expected.code ?? 0 },
      );
    });
  });
}
