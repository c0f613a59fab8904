/**
 * `deno task lab:soak [N]`: N boot-heavy KVM lab runs in a row (default 30),
 * to measure how often the lab itself gets stuck (issue #10, item 3). Each
 * run boots the default kernel as a nested guest {@linkcode BOOTS_PER_RUN}
 * times with `initx boot` and a busybox init that prints a marker and powers
 * off. Nothing is retried: a run whose lab locks up (its kernel reports a
 * soft lockup, or nothing comes out for {@linkcode IDLE_SECONDS}) counts as
 * a lab fault; a run that fails any other way (a boot that does not reach
 * init, a timeout, a lab that cannot start) counts apart, with its error.
 *
 * One line per run (`soak: run 3/30: ok in 41.2 s`), then the total, exactly
 * `soak: N runs, K lab faults` (and `, F other failures` when there are
 * any). Exit status 0 when every run was ok, 1 otherwise, 2 for a bad N.
 *
 * @module
 */

import { type LabResult, PROJECT_ROOT, runInLab } from "./lab/lab.ts";

export type { LabResult };

/** Runs when N is not given. */
const DEFAULT_RUNS = 30;
/** Nested boots per lab run. */
export const BOOTS_PER_RUN = 3;
/**
 * Seconds of silence after which a lab counts as stuck: a run prints a line
 * before each boot, and a boot (Deno's start-up and the nested guest's
 * kernel, about 20 s in the lab) prints its init's marker well within this.
 */
export const IDLE_SECONDS = 120;
/** Seconds one nested boot may take before initx stops it. */
const BOOT_TIMEOUT_SECONDS = 120;
/** Seconds one lab run may take in all. */
const RUN_TIMEOUT_SECONDS = 900;
/** What the soak guest's init prints once it runs. */
const MARKER = "INITX-SOAK-UP";
/** Lines of a failed run's output shown with its error. */
const TAIL_LINES = 30;

/**
 * The command each lab run executes: build a busybox initramfs, then boot
 * it with `initx boot` {@linkcode BOOTS_PER_RUN} times, each boot streamed
 * and checked for the marker.
 */
const SOAK_SCRIPT = `set -e
set -o pipefail
mkdir -p /tmp/soak/bin
cp /bin/busybox /tmp/soak/bin/busybox
printf '#!/bin/busybox sh\\n/bin/busybox echo ${MARKER}\\n/bin/busybox poweroff -f\\n' > /tmp/soak/init
chmod +x /tmp/soak/init
(cd /tmp/soak && find . | cpio -o -H newc 2>/dev/null > /tmp/soak.cpio)
for i in $(seq ${BOOTS_PER_RUN}); do
  echo "soak: boot $i of ${BOOTS_PER_RUN}"
  deno run -A --no-check mod.ts boot --initrd /tmp/soak.cpio --memory 256 --timeout ${BOOT_TIMEOUT_SECONDS} 2>&1 | tee /tmp/soak-boot.log
  grep -q ${MARKER} /tmp/soak-boot.log || { echo "soak: boot $i did not reach init"; exit 1; }
done
`;

/** How one soak run ended. */
export type SoakOutcome =
  | { kind: "ok" }
  | { kind: "lab-fault"; fault: string }
  | { kind: "failed"; error: string };

/** The outcome of a finished lab run. */
export function classifyRun(result: LabResult): SoakOutcome {
  if (result.labFault !== undefined) {
    return { kind: "lab-fault", fault: result.labFault };
  }
  if (result.code !== 0) {
    return {
      kind: "failed",
      error: result.error ?? `the soak command exited with ${result.code}`,
    };
  }
  return { kind: "ok" };
}

/** `soak: run 3/30: ok in 41.2 s`, or what went wrong instead of `ok`. */
export function runLine(
  outcome: SoakOutcome,
  run: { index: number; runs: number; seconds: number },
): string {
  const head = `soak: run ${run.index}/${run.runs}:`;
  const took = `${run.seconds.toFixed(1)} s`;
  switch (outcome.kind) {
    case "ok":
      return `${head} ok in ${took}`;
    case "lab-fault":
      return `${head} lab fault: ${outcome.fault} (after ${took})`;
    case "failed":
      // The first line only: the rest goes to stderr with the output tail.
      return `${head} failed: ${outcome.error.split("\n")[0]} (after ${took})`;
    default: {
      const never: never = outcome;
      return `${head} unknown outcome ${JSON.stringify(never)}`;
    }
  }
}

/** `soak: N runs, K lab faults`, plus `, F other failures` when F > 0. */
export function summaryLine(outcomes: SoakOutcome[]): string {
  const faults = outcomes.filter((o) => o.kind === "lab-fault").length;
  const failed = outcomes.filter((o) => o.kind === "failed").length;
  return `soak: ${outcomes.length} runs, ${faults} lab faults${
    failed > 0 ? `, ${failed} other failures` : ""
  }`;
}

/** N from the task's arguments (`[N]`, or `-- N`); undefined if not valid. */
export function parseRuns(args: string[]): number | undefined {
  const rest = args[0] === "--" ? args.slice(1) : args;
  if (rest.length === 0) return DEFAULT_RUNS;
  if (rest.length > 1 || !/^[1-9]\d*$/.test(rest[0]!)) return undefined;
  return Number(rest[0]);
}

/** Keeps the last `lines` lines of a byte stream. */
function tailOf(lines: number) {
  const decoder = new TextDecoder();
  let text = "";
  return {
    write(bytes: Uint8Array) {
      text += decoder.decode(bytes, { stream: true });
      // Trim now and then, not on every chunk.
      if (text.length > 256 * 1024) text = text.slice(-64 * 1024);
    },
    text: () => text.split("\n").slice(-lines - 1).join("\n").trimEnd(),
  };
}

async function soakRun(index: number, runs: number): Promise<SoakOutcome> {
  const tail = tailOf(TAIL_LINES);
  const t0 = performance.now();
  let outcome: SoakOutcome;
  try {
    outcome = classifyRun(
      await runInLab(["sh", "-c", SOAK_SCRIPT], {
        cwd: PROJECT_ROOT,
        timeoutSeconds: RUN_TIMEOUT_SECONDS,
        idleTimeoutSeconds: IDLE_SECONDS,
        output: (bytes) => tail.write(bytes),
      }),
    );
  } catch (e) {
    outcome = { kind: "failed", error: (e as Error).message };
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(runLine(outcome, { index, runs, seconds }));
  if (outcome.kind !== "ok") {
    const why = outcome.kind === "failed" ? outcome.error : outcome.fault;
    console.error(
      `soak: run ${index}/${runs}: ${why}\nsoak: its last output:\n${tail.text()}`,
    );
  }
  return outcome;
}

if (import.meta.main) {
  const runs = parseRuns(Deno.args);
  if (runs === undefined) {
    console.error(
      `Cannot start the soak: expected "deno task lab:soak [N]" with N a positive integer, not "${
        Deno.args.join(" ")
      }"`,
    );
    Deno.exit(2);
  }
  console.error(
    `soak: ${runs} KVM lab runs, ${BOOTS_PER_RUN} nested boots each, no retries`,
  );
  const outcomes: SoakOutcome[] = [];
  for (let i = 1; i <= runs; i++) outcomes.push(await soakRun(i, runs));
  console.log(summaryLine(outcomes));
  Deno.exit(outcomes.every((o) => o.kind === "ok") ? 0 : 1);
}
