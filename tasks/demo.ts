/**
 * `deno task demo`: the KVM smoke demo. It starts a VM through initx's own
 * hypervisor layer, runs a tiny 64-bit guest that computes 1 + 2 + ... + 100
 * and prints a greeting through port I/O, and shows what came back. It runs
 * on this host's `/dev/kvm` when it can be opened, else inside the KVM lab,
 * and says which.
 *
 * @module
 */

import { PROJECT_ROOT, runInLab } from "./lab/lab.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const host = detectKvmHost();
if (Deno.env.get("INITX_IN_LAB") === undefined && !host.canOpen) {
  console.error(`demo: running inside the KVM lab, because ${host.reason}`);
  const r = await runInLab([
    "deno",
    "run",
    "-A",
    "--no-check",
    "examples/kvm_smoke.ts",
  ], {
    cwd: PROJECT_ROOT,
    timeoutSeconds: 300,
  });
  if (r.error) console.error(`demo: ${r.error}`);
  Deno.exit(r.code);
}
console.error(`demo: running on this host's /dev/kvm (${host.kind})`);
const r = await new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", "--no-check", "examples/kvm_smoke.ts"],
  cwd: PROJECT_ROOT,
}).spawn().status;
Deno.exit(r.code);
