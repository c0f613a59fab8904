/**
 * `deno task test`: the project's whole test suite, in three tiers.
 *
 * 1. Unit tests (`*_test.ts`) run on the host.
 * 2. Hypervisor tests (`*_kvm_test.ts`) need `/dev/kvm`: on the host when it
 *    can be opened, else inside the KVM lab.
 * 3. End-to-end tests (`tests/e2e/*_test.ts`) boot real Linux guests: on the
 *    host when its KVM is hardware-backed, else inside the KVM lab.
 *
 * 4. arm64 tests (`*_aarch64_test.ts`: the KVM arm64 backend's tiny guests,
 *    an arm64 Linux boot) need arm64 KVM: on the host when it is an arm64
 *    host with hardware KVM, else inside the arm64 KVM lab (emulated, slow:
 *    keep them few).
 *
 * Beside them, the lab's own tests (`*_lab_test.ts`) boot the KVM lab under
 * QEMU: they drive it from the host, always on the host (never inside the
 * lab), after the unit tests.
 *
 * `--kvm host|lab` (or `INITX_TEST_KVM`) forces where tiers 2 and 3 run;
 * `--filter TEXT` passes through to `deno test`. The last line is the total:
 * `total: N passed, N failed, N skipped` (skipped: ignored tests and those
 * that `tests/_gate.ts` skipped for a missing tool or KVM, outside CI).
 * The Debian image of `tests/e2e/debian_e2e_test.ts` is built on the host
 * (`tasks/_debian_fixture.ts`) and carried into the lab when it runs there.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, relative } from "node:path";
import { PROJECT_ROOT, SKIP_DIRS } from "./lab/lab.ts";
import { runInLabRetrying } from "./lab/retry.ts";
import { ensurePackages, TEST_TOOLS } from "./_packages.ts";
import { ensureDebianFixture } from "./_debian_fixture.ts";
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
const labTests = all.filter((f) =>
  f.endsWith("_lab_test.ts") && !e2e.includes(f)
);
const arm64 = all.filter((f) => f.endsWith("_aarch64_test.ts"));
const unit = all.filter((f) =>
  !e2e.includes(f) && !kvm.includes(f) && !labTests.includes(f) &&
  !arm64.includes(f)
);

await ensurePackages(TEST_TOOLS);

const host = detectKvmHost();
const kvmWhere = forced ?? (host.canOpen ? "host" : "lab");
const e2eWhere = forced ?? (host.kind === "hardware" ? "host" : "lab");
const arm64Where = forced ??
  (Deno.build.arch === "aarch64" && host.kind === "hardware" ? "host" : "lab");
console.error(
  `tests: KVM on this host: ${host.kind} (${host.reason}); hypervisor tests run on the ${
    kvmWhere === "host" ? "host" : "KVM lab"
  }, end-to-end tests on the ${
    e2eWhere === "host" ? "host" : "KVM lab"
  }, arm64 tests on the ${arm64Where === "host" ? "host" : "arm64 KVM lab"}`,
);

const SUMMARY =
  /(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed(?: \| (\d+) ignored)?/;
/** Lab runs of a phase when the lab itself gets stuck. */
const LAB_ATTEMPTS = 3;
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
const testEnv: Record<string, string> = { NO_COLOR: "1" };
/** Host files the lab run carries, by their path inside the lab. */
const labInputs: Record<string, string> = {};

/** The end-to-end test that runs a Debian minbase, named in INITX_DEBIAN_IMAGE. */
const DEBIAN_E2E = "tests/e2e/debian_e2e_test.ts";
/** Where that image sits inside the KVM lab, which cannot build it. */
const LAB_DEBIAN_IMAGE = "/lab/debian-minbase.tar";
if (e2e.includes(DEBIAN_E2E)) {
  try {
    const image = await ensureDebianFixture();
    if (e2eWhere === "host") testEnv.INITX_DEBIAN_IMAGE = image;
    else {
      labInputs[LAB_DEBIAN_IMAGE] = image;
      testEnv.INITX_DEBIAN_IMAGE = LAB_DEBIAN_IMAGE;
    }
  } catch (e) {
    // The test itself then fails, saying the image is missing.
    console.error(`tests: ${(e as Error).message}`);
  }
}

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

async function inLab(
  phase: string,
  files: string[],
  arch: "x86_64" | "aarch64" = "x86_64",
) {
  if (files.length === 0) return;
  let text = "";
  let decoder = new TextDecoder();
  // A lab that got stuck (its kernel locked up, or nothing came out for
  // LAB_IDLE_SECONDS of tasks/lab/retry.ts) is run again, loudly: nested
  // virtualization under TCG hangs now and then. A hang of our own would
  // hang every run and still fail.
  const result = await runInLabRetrying(
    ["deno", "test", "-A", "--no-check", ...filterArgs, ...files],
    {
      what: `the ${phase}`,
      attempts: LAB_ATTEMPTS,
      log: (line) => console.error(`tests: ${line}`),
      onAttempt: () => {
        console.error(
          `tests: ${phase} inside the ${
            arch === "x86_64" ? "" : `${arch} `
          }KVM lab (${files.length} files)`,
        );
        text = "";
        decoder = new TextDecoder();
      },
      cwd: PROJECT_ROOT,
      arch,
      env: testEnv,
      files: arch === "x86_64" ? labInputs : {},
      timeoutSeconds: 2400,
      output: (bytes) => {
        Deno.stdout.writeSync(bytes);
        text += decoder.decode(bytes, { stream: true });
      },
    },
  );
  if (result.error) console.error(`tests: ${result.error}`);
  account(phase, text, result.code, files.length);
}

await onHost("unit tests", unit);
await onHost("lab tests", labTests);
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
if (arm64Where === "host") await onHost("arm64 tests", arm64);
else await inLab("arm64 tests", arm64, "aarch64");

if (totals.phasesFailed.length > 0) {
  console.error(`tests: failed: ${totals.phasesFailed.join(", ")}`);
}
console.log(
  `total: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`,
);
Deno.exit(totals.phasesFailed.length > 0 ? 1 : 0);
