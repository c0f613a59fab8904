/**
 * `deno task lab -- CMD [ARGS...]`: runs CMD inside the KVM lab (a QEMU-emulated
 * machine with a real, nested `/dev/kvm`) with the project tree at the same
 * path, streams its output and exits with its status. See docs/testing.md.
 *
 * Options (before `--`): `--arch x86_64|aarch64` (the lab machine; default
 * x86_64), `--timeout SECONDS`, `--env K=V` (repeatable), `--out DIR` (the
 * lab's `/out` is copied there afterwards).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { runInLab } from "./lab/lab.ts";
import { type LabArch, parseLabArch } from "./lab/arch.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    arch: { type: "string" },
    timeout: { type: "string" },
    env: { type: "string", multiple: true },
    out: { type: "string" },
  },
});
if (positionals.length === 0) {
  console.error(
    "Usage: deno task lab [--arch x86_64|aarch64] [--timeout S] [--env K=V] [--out DIR] -- CMD [ARGS...]",
  );
  Deno.exit(2);
}
let arch: LabArch | undefined;
try {
  arch = values.arch === undefined ? undefined : parseLabArch(values.arch);
} catch (error) {
  console.error((error as Error).message);
  Deno.exit(2);
}
const env: Record<string, string> = {};
for (const kv of values.env ?? []) {
  const eq = kv.indexOf("=");
  if (eq <= 0) {
    console.error(`Cannot parse --env "${kv}": expected NAME=VALUE`);
    Deno.exit(2);
  }
  env[kv.slice(0, eq)] = kv.slice(eq + 1);
}
const result = await runInLab(positionals, {
  arch,
  cwd: Deno.cwd(),
  timeoutSeconds: values.timeout ? Number(values.timeout) : undefined,
  env,
  outDir: values.out,
});
if (result.error) console.error(`lab: ${result.error}`);
Deno.exit(result.code);
