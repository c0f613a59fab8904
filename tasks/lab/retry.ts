/**
 * Lab runs that survive the lab itself getting stuck: the lab's kernel
 * locks up now and then while a nested guest runs (nested SVM under QEMU's
 * emulator), and a run that hits it proves nothing about the command. Such
 * a run is done again, loudly; a command that hangs by itself hangs every
 * time and still fails.
 *
 * @module
 */

import { type LabOptions, type LabResult, runInLab } from "./lab.ts";

export type { LabOptions, LabResult };

/**
 * Seconds without output after which a lab run counts as stuck, unless the
 * caller says otherwise: a test prints its name and its result, most benches
 * a line per round, and no step of those is silent this long. A command
 * that is (bench/run_bench.ts prints only at its end) passes its own.
 */
export const LAB_IDLE_SECONDS = 300;

/** Options of {@linkcode retryOnLabFault}. */
export interface RetryOptions {
  /** Names what is run in the retry message, e.g. `the boot bench`. */
  what: string;
  /** Runs in all while the lab itself fails; default 2 (one retry). */
  attempts?: number;
  /** Receives the retry message, one line each; default: stderr. */
  log?: (line: string) => void;
}

/** Options of {@linkcode runInLabRetrying}. */
export interface LabRetryOptions extends LabOptions, RetryOptions {
  /**
   * Called (and awaited) before each lab run with its number, from 1: a
   * caller that collects the output starts afresh here.
   */
  onAttempt?: (attempt: number) => void | Promise<void>;
}

/** A lab run's result and how many runs it took. */
export interface RetriedLabResult extends LabResult {
  /** Lab runs made, 1 when the first one was not stuck. */
  attempts: number;
}

/**
 * Calls `run` (one lab run, given its number from 1) until its result has no
 * `labFault` or `attempts` runs are made, and returns the last result. Other
 * failures are returned at once.
 *
 * @example
 * ```ts
 * import { retryOnLabFault } from "./retry.ts";
 * const r = await retryOnLabFault(
 *   async (attempt) =>
 *     attempt === 1 ? { code: 125, labFault: "no output for 300 s" } : { code: 0 },
 *   { what: "an example", log: () => {} },
 * );
 * console.log(r.code, r.attempts); // 0 2
 * ```
 */
export async function retryOnLabFault(
  run: (attempt: number) => Promise<LabResult>,
  options: RetryOptions,
): Promise<RetriedLabResult> {
  const attempts = options.attempts ?? 2;
  if (!Number.isInteger(attempts) || attempts < 1) {
    throw new RangeError(
      `Cannot retry ${options.what}: attempts must be a positive integer, not ${attempts}`,
    );
  }
  const log = options.log ?? ((line: string) => console.error(line));
  for (let attempt = 1;; attempt++) {
    const result = await run(attempt);
    if (result.labFault === undefined || attempt >= attempts) {
      return { ...result, attempts: attempt };
    }
    log(
      `RETRYING ${options.what}: the KVM lab itself failed (${result.labFault}; attempt ${attempt} of ${attempts})`,
    );
  }
}

/**
 * {@linkcode runInLab} with stuck-lab detection and retries: an idle
 * timeout of {@linkcode LAB_IDLE_SECONDS} unless `idleTimeoutSeconds` is
 * given, and a new run (one by default) when the lab itself failed.
 *
 * @example
 * ```ts ignore
 * import { runInLabRetrying } from "./retry.ts";
 * const r = await runInLabRetrying(["deno", "run", "-A", "bench/boot_bench.ts"], {
 *   what: "the boot bench",
 *   log: (line) => console.error(`bench: ${line}`),
 * });
 * Deno.exit(r.code);
 * ```
 */
export function runInLabRetrying(
  cmd: string[],
  options: LabRetryOptions,
): Promise<RetriedLabResult> {
  const { what, attempts, log, onAttempt, ...lab } = options;
  return retryOnLabFault(async (attempt) => {
    await onAttempt?.(attempt);
    return runInLab(cmd, {
      ...lab,
      idleTimeoutSeconds: lab.idleTimeoutSeconds ?? LAB_IDLE_SECONDS,
    });
  }, { what, attempts, log });
}
