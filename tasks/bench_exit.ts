/**
 * `deno task bench:exit`: builds the C floor and runs `bench/exit_bench.ts`
 * on the host's `/dev/kvm`, or inside the KVM lab when the host has none
 * (once more if the lab itself gets stuck).
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
const script = ["deno", "run", "-A", "--no-check", "bench/exit_bench.ts"];
if (host.canOpen) {
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
    what: "the exit bench",
    log: (line) => console.error(`bench: ${line}`),
    cwd: PROJECT_ROOT,
    env: floor ? { INITX_C_FLOOR: LAB_FLOOR } : {},
    files: floor ? { [LAB_FLOOR]: floor } : {},
    timeoutSeconds: 600,
  });
  if (r.error) console.error(`bench: ${r.error}`);
  Deno.exit(r.code);
}
