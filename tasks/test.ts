/**
 * `deno task test`: the project's whole test suite, in three tiers.
 *
 * 1. Unit tests (`*_test.ts`) run on the host.
 * 2. Hypervisor tests (`*_kvm_test.ts`) need `/dev/kvm`: on the host when it
 *    can be opened, else inside the KVM lab.
 * 3. End-to-end tests (`tests/e2e/*_test.ts`) boot real Linux guests: on the
 *    host when its KVM is hardware-backed, else inside the KVM lab.
 *
 * `--kvm host|lab` (or `INITX_TEST_KVM`) forces where tiers 2 and 3 run;
 * `--filter TEXT` passes through to `deno test`. The last line is the total:
 * `total: N passed, N failed, N skipped` (skipped: ignored tests and those
 * that `tests/_gate.ts` skipped for a missing tool or KVM, outside CI).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, relative } from "node:path";
import { PROJECT_ROOT, runInLab, SKIP_DIRS } from "./lab/lab.ts";
import { ensurePackages, TEST_TOOLS } from "./_packages.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    kvm: { type: "string" },
    filter: { type: "string" },
  },
});
const forced = values.kvm ?? Deno.env.get("INITX_TEST_KVM");
if (forced !== undefined && forced !== "host" && forced !== "lab") {
  console.error(
    `Cannot run the tests: --kvm must be "host" or "lab", not "${forced}"`,
  );
  Deno.exit(2);
}

async function findTests(dir: string, out: string[] = []): Promise<string[]> {
  for await (const e of Deno.readDir(dir)) {
    if (SKIP_DIRS.has(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory) await findTests(p, out);
    else if (e.isFile && e.name.endsWith("_test.ts")) {
      out.push(relative(PROJECT_ROOT, p));
    }
  }
  return out.sort();
}

const all = await findTests(PROJECT_ROOT);
const e2e = all.filter((f) => f.startsWith("tests/e2e/"));
const kvm = all.filter((f) => f.endsWith("_kvm_test.ts") && !e2e.includes(f));
const unit = all.filter((f) => !e2e.includes(f) && !kvm.includes(f));

await ensurePackages(TEST_TOOLS);

const host = detectKvmHost();
const kvmWhere = forced ?? (host.canOpen ? "host" : "lab");
const e2eWhere = forced ?? (host.kind === "hardware" ? "host" : "lab");
console.error(
  `tests: KVM on this host: ${host.kind} (${host.reason}); hypervisor tests run on the ${
    kvmWhere === "host" ? "host" : "KVM lab"
  }, end-to-end tests on the ${e2eWhere === "host" ? "host" : "KVM lab"}`,
);

const SUMMARY =
  /(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed(?: \| (\d+) ignored)?/;
/** Lab runs of a phase when the lab itself gets stuck. */
const LAB_ATTEMPTS = 3;
/**
 * A lab phase silent this long is stuck: every test prints its name when it
 * starts and its result when it ends, and none takes this long.
 */
const LAB_IDLE_SECONDS = 300;
/** What `need()` in tests/_gate.ts prints when it skips a test. */
const SKIP_LINE = /^SKIPPED "/gm;
const totals = {
  passed: 0,
  failed: 0,
  skipped: 0,
  phasesFailed: [] as string[],
};
const filterArgs = values.filter ? ["--filter", values.filter] : [];
// Plain output: the summary is parsed, and a log reads better without colour.
const testEnv = { NO_COLOR: "1" };

function account(phase: string, text: string, code: number, files: number) {
  const m = [...text.matchAll(new RegExp(SUMMARY, "g"))].at(-1);
  const skipped = [...text.matchAll(SKIP_LINE)].length;
  if (m) {
    totals.passed += Number(m[1]);
    totals.failed += Number(m[2]);
    totals.skipped += Number(m[3] ?? 0) + skipped;
  }
  // A phase with test files that ran none has not passed.
  const ranNone = m !== undefined && Number(m[1]) === 0 && !values.filter;
  if (code !== 0 || !m || (ranNone && files > 0)) {
    totals.phasesFailed.push(phase);
    // A phase that failed without a failing test (it crashed, or its lab
    // did) still counts as one failure in the total.
    if (!m || Number(m[2]) === 0) totals.failed += 1;
  }
}

async function onHost(phase: string, files: string[]) {
  if (files.length === 0) return;
  console.error(`tests: ${phase} on the host (${files.length} files)`);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", ...filterArgs, ...files],
    cwd: PROJECT_ROOT,
    env: testEnv,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const tee = async (
    stream: ReadableStream<Uint8Array>,
    to: typeof Deno.stdout,
  ) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      to.writeSync(chunk);
      text += decoder.decode(chunk, { stream: true });
    }
  };
  await Promise.all([
    tee(child.stdout, Deno.stdout),
    tee(child.stderr, Deno.stderr),
  ]);
  account(phase, text, (await child.status).code, files.length);
}

async function inLab(phase: string, files: string[]) {
  if (files.length === 0) return;
  for (let attempt = 1;; attempt++) {
    console.error(
      `tests: ${phase} inside the KVM lab (${files.length} files)`,
    );
    let text = "";
    const decoder = new TextDecoder();
    const result = await runInLab(
      ["deno", "test", "-A", "--no-check", ...filterArgs, ...files],
      {
        cwd: PROJECT_ROOT,
        env: testEnv,
        timeoutSeconds: 2400,
        idleTimeoutSeconds: LAB_IDLE_SECONDS,
        output: (bytes) => {
          Deno.stdout.writeSync(bytes);
          text += decoder.decode(bytes, { stream: true });
        },
      },
    );
    if (result.error) console.error(`tests: ${result.error}`);
    // A lab that got stuck (its kernel locked up, or nothing came out for
    // LAB_IDLE_SECONDS) is run again, loudly, up to LAB_ATTEMPTS runs in all:
    // nested virtualization under TCG hangs now and then. A hang of our own
    // would hang every run and still fail.
    if (result.labFault !== undefined && attempt < LAB_ATTEMPTS) {
      console.error(
        `tests: RETRYING the ${phase}: the KVM lab itself failed (attempt ${attempt} of ${LAB_ATTEMPTS})`,
      );
      continue;
    }
    account(phase, text, result.code, files.length);
    return;
  }
}

await onHost("unit tests", unit);
const labFiles: string[] = [];
if (kvmWhere === "host") await onHost("hypervisor tests", kvm);
else labFiles.push(...kvm);
if (e2eWhere === "host") await onHost("end-to-end tests", e2e);
else labFiles.push(...e2e);
await inLab(
  [
    kvmWhere === "lab" && kvm.length > 0 ? "hypervisor" : "",
    e2eWhere === "lab" && e2e.length > 0 ? "end-to-end" : "",
  ].filter((x) => x).join(" and ") + " tests",
  labFiles,
);

if (totals.phasesFailed.length > 0) {
  console.error(`tests: failed: ${totals.phasesFailed.join(", ")}`);
}
console.log(
  `total: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`,
);
Deno.exit(totals.phasesFailed.length > 0 ? 1 : 0);
