/**
 * `deno task bench:exec`: builds the C exit floor and runs
 * `bench/exec_bench.ts` (programs on a booted VM) on this host when its KVM
 * is hardware-backed, or inside the KVM lab otherwise (once more if the lab
 * itself gets stuck).
 *
 * @module
 */

import { join } from "node:path";
import { PROJECT_ROOT } from "./lab/lab.ts";
import { runInLabRetrying } from "./lab/retry.ts";
import { which } from "./_packages.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const LAB_FLOOR = "/lab/kvm_exit_floor";
let floor: string | undefined;
if (which("cc")) {
  floor = join(PROJECT_ROOT, ".cache", "bench", "kvm_exit_floor");
  await Deno.mkdir(join(PROJECT_ROOT, ".cache", "bench"), { recursive: true });
  const cc = await new Deno.Command("cc", {
    args: [
      "-O2",
      "-static",
      "-o",
      floor,
      join(PROJECT_ROOT, "bench", "kvm_exit_floor.c"),
    ],
    stderr: "inherit",
  }).output();
  if (!cc.success) {
    throw new Error("Cannot build the C floor bench/kvm_exit_floor.c");
  }
} else {
  console.error("bench: no C compiler; the C floor is not measured");
}

const host = detectKvmHost();
const script = ["deno", "run", "-A", "--no-check", "bench/exec_bench.ts"];
if (host.kind === "hardware") {
  console.error(`bench: on this host's /dev/kvm (${host.kind})`);
  const r = await new Deno.Command(Deno.execPath(), {
    args: script.slice(1),
    cwd: PROJECT_ROOT,
    env: floor ? { INITX_C_FLOOR: floor } : {},
  }).spawn().status;
  Deno.exit(r.code);
} else {
  console.error(`bench: inside the KVM lab (${host.reason})`);
  const r = await runInLabRetrying(script, {
    what: "the exec bench",
    log: (line) => console.error(`bench: ${line}`),
    cwd: PROJECT_ROOT,
    env: floor ? { INITX_C_FLOOR: LAB_FLOOR } : {},
    files: floor ? { [LAB_FLOOR]: floor } : {},
    timeoutSeconds: 1800,
  });
  if (r.error) console.error(`bench: ${r.error}`);
  Deno.exit(r.code);
}
