/**
 * `deno task bench:run`: runs `bench/run_bench.ts` (containers: `initx run
 * busybox -- true` cold, and filesystem work in a container vs the host) on
 * this host when its KVM is hardware-backed, or inside the KVM lab
 * otherwise (once more if the lab itself gets stuck).
 *
 * @module
 */

import { PROJECT_ROOT } from "./lab/lab.ts";
import { runInLabRetrying } from "./lab/retry.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

/**
 * bench/run_bench.ts prints its figures only at the end, after minutes of
 * file work in a container: a stuck lab shows as a much longer silence.
 */
const RUN_BENCH_IDLE_SECONDS = 1200;

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
  const r = await runInLabRetrying(script, {
    what: "the run bench",
    log: (line) => console.error(`bench: ${line}`),
    cwd: PROJECT_ROOT,
    timeoutSeconds: 2400,
    idleTimeoutSeconds: RUN_BENCH_IDLE_SECONDS,
  });
  if (r.error) console.error(`bench: ${r.error}`);
  Deno.exit(r.code);
}
