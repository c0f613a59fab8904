// Unit tests of the soak's bookkeeping: no lab is booted.
import { deepEqual, equal } from "node:assert/strict";
import {
  classifyRun,
  parseRuns,
  runLine,
  type SoakOutcome,
  summaryLine,
} from "./lab_soak.ts";

Deno.test("classifyRun() tells a lab fault from another failure and from success", () => {
  deepEqual(classifyRun({ code: 0, startMs: 5000 }), { kind: "ok" });
  deepEqual(
    classifyRun({
      code: 125,
      error: "The KVM lab got stuck (no output for 120 s): ...",
      labFault: "no output for 120 s",
    }),
    { kind: "lab-fault", fault: "no output for 120 s" },
  );
  deepEqual(
    classifyRun({ code: 124, error: "Lab command timed out after 900 s: sh" }),
    { kind: "failed", error: "Lab command timed out after 900 s: sh" },
  );
  deepEqual(classifyRun({ code: 1 }), {
    kind: "failed",
    error: "the soak command exited with 1",
  });
});

Deno.test("runLine() prints one line per run", () => {
  const run = { index: 3, runs: 30, seconds: 41.23 };
  equal(runLine({ kind: "ok" }, run), "soak: run 3/30: ok in 41.2 s");
  equal(
    runLine({
      kind: "lab-fault",
      fault: "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [x:1]",
    }, run),
    "soak: run 3/30: lab fault: watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [x:1] (after 41.2 s)",
  );
  equal(
    runLine({
      kind: "failed",
      error: "The KVM lab ended before the command finished\nlast lines: x",
    }, run),
    "soak: run 3/30: failed: The KVM lab ended before the command finished (after 41.2 s)",
  );
});

Deno.test("summaryLine() counts lab faults, and other failures only when there are any", () => {
  const ok: SoakOutcome = { kind: "ok" };
  const fault: SoakOutcome = { kind: "lab-fault", fault: "no output" };
  const failed: SoakOutcome = { kind: "failed", error: "exit 1" };
  equal(summaryLine([ok, ok, ok]), "soak: 3 runs, 0 lab faults");
  equal(summaryLine([ok, fault, fault]), "soak: 3 runs, 2 lab faults");
  equal(
    summaryLine([failed, fault, ok, failed]),
    "soak: 4 runs, 1 lab faults, 2 other failures",
  );
});

Deno.test("parseRuns() takes N, defaults to 30 and refuses anything else", () => {
  equal(parseRuns([]), 30);
  equal(parseRuns(["5"]), 5);
  equal(parseRuns(["--", "12"]), 12);
  for (const bad of [["0"], ["-3"], ["2.5"], ["ten"], ["1", "2"], ["01"]]) {
    equal(parseRuns(bad), undefined, bad.join(" "));
  }
});
