// Unit tests of the retry policy, with fake lab runs: no lab is booted.
import { deepEqual, equal, rejects } from "node:assert/strict";
import type { LabResult } from "./lab.ts";
import { retryOnLabFault } from "./retry.ts";

/** A fake lab that returns `results` in turn and records what happened. */
function fakeLab(results: LabResult[]) {
  const calls: number[] = [];
  const lines: string[] = [];
  return {
    run: (attempt: number) => {
      calls.push(attempt);
      const r = results[calls.length - 1];
      if (r === undefined) throw new Error("the fake lab ran out of results");
      return Promise.resolve(r);
    },
    log: (line: string) => lines.push(line),
    calls,
    lines,
  };
}

const STUCK: LabResult = {
  code: 125,
  error: "The KVM lab got stuck (no output for 300 s)",
  labFault: "no output for 300 s",
};

Deno.test("retryOnLabFault() returns a run that did not get stuck at once", async () => {
  const lab = fakeLab([{ code: 3, startMs: 10 }]);
  const r = await retryOnLabFault(lab.run, { what: "the x", log: lab.log });
  deepEqual(r, { code: 3, startMs: 10, attempts: 1 });
  deepEqual(lab.calls, [1]);
  deepEqual(lab.lines, []);
});

Deno.test("retryOnLabFault() runs once more after a lab fault and says so", async () => {
  const lab = fakeLab([STUCK, { code: 0 }]);
  const r = await retryOnLabFault(lab.run, {
    what: "the boot bench",
    log: lab.log,
  });
  deepEqual(r, { code: 0, attempts: 2 });
  deepEqual(lab.calls, [1, 2]);
  deepEqual(lab.lines, [
    "RETRYING the boot bench: the KVM lab itself failed (no output for 300 s; attempt 1 of 2)",
  ]);
});

Deno.test("retryOnLabFault() returns the last lab fault when every attempt gets stuck", async () => {
  const lockup: LabResult = {
    code: 125,
    labFault: "watchdog: BUG: soft lockup - CPU#1 stuck for 23s!",
  };
  const lab = fakeLab([STUCK, STUCK, lockup, { code: 0 }]);
  const r = await retryOnLabFault(lab.run, {
    what: "the tests",
    attempts: 3,
    log: lab.log,
  });
  deepEqual(r, { ...lockup, attempts: 3 });
  deepEqual(lab.calls, [1, 2, 3]);
  equal(lab.lines.length, 2);
  equal(
    lab.lines[1],
    "RETRYING the tests: the KVM lab itself failed (no output for 300 s; attempt 2 of 3)",
  );
});

Deno.test("retryOnLabFault() does not retry a failure of the command or a timeout", async () => {
  for (
    const failed of [
      { code: 1 },
      { code: 124, error: "Lab command timed out after 600 s: x" },
      { code: 125, error: "The KVM lab ended before the command finished" },
    ]
  ) {
    const lab = fakeLab([failed, { code: 0 }]);
    const r = await retryOnLabFault(lab.run, { what: "the x", log: lab.log });
    deepEqual(r, { ...failed, attempts: 1 });
    deepEqual(lab.calls, [1]);
    deepEqual(lab.lines, []);
  }
});

Deno.test("retryOnLabFault() with attempts 1 never retries", async () => {
  const lab = fakeLab([STUCK, { code: 0 }]);
  const r = await retryOnLabFault(lab.run, {
    what: "the x",
    attempts: 1,
    log: lab.log,
  });
  deepEqual(r, { ...STUCK, attempts: 1 });
  deepEqual(lab.lines, []);
});

Deno.test("retryOnLabFault() passes on a run that throws, without retrying", async () => {
  let calls = 0;
  await rejects(
    retryOnLabFault(() => {
      calls++;
      return Promise.reject(new Error("Cannot build the lab initramfs"));
    }, { what: "the x", log: () => {} }),
    /Cannot build the lab initramfs/,
  );
  equal(calls, 1);
});

Deno.test("retryOnLabFault() rejects attempts that are not a positive integer", async () => {
  for (const attempts of [0, -1, 1.5, NaN]) {
    await rejects(
      retryOnLabFault(() => Promise.resolve({ code: 0 }), {
        what: "the x",
        attempts,
      }),
      /^RangeError: Cannot retry the x: attempts must be a positive integer/,
    );
  }
});
