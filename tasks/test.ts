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
 * `total: N passed, N failed`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join, relative } from "node:path";
import { PROJECT_ROOT, runInLab } from "./lab/lab.ts";
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

const SKIP = new Set([".git", ".cache", "node_modules", ".dbg"]);

async function findTests(dir: string, out: string[] = []): Promise<string[]> {
  for await (const e of Deno.readDir(dir)) {
    if (SKIP.has(e.name)) continue;
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
  /(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/;
const totals = { passed: 0, failed: 0, phasesFailed: [] as string[] };
const filterArgs = values.filter ? ["--filter", values.filter] : [];

function account(phase: string, text: string, code: number) {
  // deno prints ANSI colours when it thinks it has a terminal.
  const plain = text.replace(
    new RegExp(String.fromCharCode(27) + "\\[[0-9;]*m", "g"),
    "",
  );
  const m = [...plain.matchAll(new RegExp(SUMMARY, "g"))].at(-1);
  if (m) {
    totals.passed += Number(m[1]);
    totals.failed += Number(m[2]);
  }
  if (code !== 0 || !m) totals.phasesFailed.push(phase);
}

async function onHost(phase: string, files: string[]) {
  if (files.length === 0) return;
  console.error(`tests: ${phase} on the host (${files.length} files)`);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", ...filterArgs, ...files],
    cwd: PROJECT_ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    Deno.stdout.writeSync(chunk);
    text += decoder.decode(chunk, { stream: true });
  }
  account(phase, text, (await child.status).code);
}

async function inLab(phase: string, files: string[]) {
  if (files.length === 0) return;
  console.error(`tests: ${phase} inside the KVM lab (${files.length} files)`);
  let text = "";
  const decoder = new TextDecoder();
  const result = await runInLab(
    ["deno", "test", "-A", "--no-check", ...filterArgs, ...files],
    {
      cwd: PROJECT_ROOT,
      timeoutSeconds: 2400,
      output: (bytes) => {
        Deno.stdout.writeSync(bytes);
        text += decoder.decode(bytes, { stream: true });
      },
    },
  );
  if (result.error) console.error(`tests: ${result.error}`);
  account(phase, text, result.code);
}

await onHost("unit tests", unit);
const labFiles: string[] = [];
if (kvmWhere === "host") await onHost("hypervisor tests", kvm);
else labFiles.push(...kvm);
if (e2eWhere === "host") await onHost("end-to-end tests", e2e);
else labFiles.push(...e2e);
await inLab(
  kvmWhere === "lab" && e2eWhere === "lab"
    ? "hypervisor and end-to-end tests"
    : "end-to-end tests",
  labFiles,
);

if (totals.phasesFailed.length > 0) {
  console.error(`tests: failed: ${totals.phasesFailed.join(", ")}`);
}
console.log(`total: ${totals.passed} passed, ${totals.failed} failed`);
Deno.exit(totals.phasesFailed.length > 0 ? 1 : 0);
