/**
 * `deno task demo [-- CMD ARGS...]`: the main job. It boots the default
 * kernel (Debian's cloud kernel, provisioned by initx) in a micro-VM with
 * initx's own IR-compiled init and the busybox image, runs CMD there and
 * exits with its status: `initx run busybox -- CMD`. It runs directly on
 * hosts with hardware KVM and inside the KVM lab elsewhere, and says which.
 *
 * @module
 */

import { PROJECT_ROOT, runInLab } from "./lab/lab.ts";
import { ensurePackages } from "./_packages.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const args = Deno.args[0] === "--" ? Deno.args.slice(1) : Deno.args;
const command = args.length > 0 ? args : [
  "sh",
  "-c",
  'echo "hello from $(uname -sr) on $(nproc) vCPU(s) in an initx micro-VM"',
];
const initx = [
  "run",
  "-A",
  "--no-check",
  "mod.ts",
  "run",
  "busybox",
  "--",
  ...command,
];

const host = detectKvmHost();
if (host.kind === "hardware") {
  console.error(`demo: running on this host's KVM (${host.reason})`);
  await ensurePackages({ busybox: "busybox-static" });
  const r = await new Deno.Command(Deno.execPath(), {
    args: initx,
    cwd: PROJECT_ROOT,
  }).spawn().status;
  Deno.exit(r.code);
}
console.error(`demo: running inside the KVM lab, because ${host.reason}`);
const r = await runInLab(["deno", ...initx], {
  cwd: PROJECT_ROOT,
  timeoutSeconds: 600,
});
if (r.error) console.error(`demo: ${r.error}`);
Deno.exit(r.code);
