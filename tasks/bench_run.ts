/**
 * `deno task bench:run`: runs `bench/run_bench.ts` (containers: `initx run
 * busybox -- true` cold, and filesystem work in a container vs the host) on
 * this host when its KVM is hardware-backed, or inside the KVM lab
 * otherwise.
 *
 * @module
 */

import { PROJECT_ROOT, runInLab } from "./lab/lab.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const host = detectKvmHost();
const script = ["deno", "run", "-A", "--no-check", "bench/run_bench.ts"];
if (host.kind === "hardware") {
  console.error(`bench: on this host's /dev/kvm (${host.kind})`);
  const r = await new Deno.Command(Deno.execPath(), {
    args: script.slice(1),
    cwd: PROJECT_ROOT,
  }).spawn().status;
  Deno.exit(r.code);
} else {
  console.error(`bench: inside the KVM lab (${host.reason})`);
  const r = await runInLab(script, {
    cwd: PROJECT_ROOT,
    timeoutSeconds: 2400,
  });
  if (r.error) console.error(`bench: ${r.error}`);
  Deno.exit(r.code);
}
