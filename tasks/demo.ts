/**
 * `deno task demo [-- CMD ARGS...]`: the main job. It boots the default
 * kernel (Debian's cloud kernel, provisioned by initx) in a micro-VM with
 * initx's own IR-compiled init and the busybox image, runs CMD there and
 * exits with its status: `initx run busybox -- CMD`. It runs directly on
 * hosts with hardware KVM and inside the KVM lab elsewhere, and says which.
 *
 * `--arch x86_64|aarch64` (before or after the first `--`) picks the guest's
 * architecture; default the host's. A guest of another architecture than
 * the host's runs in that architecture's KVM lab (the arm64 one is fully
 * emulated: minutes, not seconds).
 *
 * @module
 */

import { PROJECT_ROOT, runInLab } from "./lab/lab.ts";
import { type LabArch, parseLabArch } from "./lab/arch.ts";
import { ensurePackages } from "./_packages.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

let args = [...Deno.args];
let arch: LabArch = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
for (;;) {
  if (args[0] === "--") args = args.slice(1);
  else if (args[0] === "--arch" && args[1] !== undefined) {
    try {
      arch = parseLabArch(args[1]);
    } catch (e) {
      console.error(`demo: ${(e as Error).message}`);
      Deno.exit(2);
    }
    args = args.slice(2);
  } else break;
}
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
const native = arch === Deno.build.arch;
if (native && host.kind === "hardware") {
  console.error(`demo: running on this host's KVM (${host.reason})`);
  await ensurePackages({ busybox: "busybox-static" });
  const r = await new Deno.Command(Deno.execPath(), {
    args: initx,
    cwd: PROJECT_ROOT,
  }).spawn().status;
  Deno.exit(r.code);
}
console.error(
  native
    ? `demo: running inside the KVM lab, because ${host.reason}`
    : `demo: running inside the ${arch} KVM lab, because this host is ${Deno.build.arch} (emulated: slower than native)`,
);
const r = await runInLab(["deno", ...initx], {
  cwd: PROJECT_ROOT,
  arch,
  timeoutSeconds: arch === "aarch64" ? 1500 : 600,
});
if (r.error) console.error(`demo: ${r.error}`);
Deno.exit(r.code);
