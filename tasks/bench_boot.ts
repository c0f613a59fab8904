/**
 * `deno task bench:boot`: runs `bench/boot_bench.ts` (initx against QEMU
 * microvm, untuned and tuned for fast boots, booting the same kernel to its
 * init) on this host when its KVM is hardware-backed, or inside the KVM lab,
 * in one lab run, otherwise. A lab run that gets stuck (the lab's kernel
 * locks up, or nothing comes out for a while) is run once more.
 *
 * @module
 */

import { PROJECT_ROOT } from "./lab/lab.ts";
import { runInLabRetrying } from "./lab/retry.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const host = detectKvmHost();
const script = ["deno", "run", "-A", "--no-check", "bench/boot_bench.ts"];
if (host.kind === "hardware") {
  console.error(`bench: on this host's /dev/kvm (${host.reason})`);
  const r = await new Deno.Command(Deno.execPath(), {
    args: script.slice(1),
    cwd: PROJECT_ROOT,
  }).spawn().status;
  Deno.exit(r.code);
} else {
  console.error(`bench: inside the KVM lab (${host.reason})`);
  const r = await runInLabRetrying(script, {
    what: "the boot bench",
    log: (line) => console.error(`bench: ${line}`),
    cwd: PROJECT_ROOT,
    timeoutSeconds: 600,
  });
  if (r.error) console.error(`bench: ${r.error}`);
  Deno.exit(r.code);
}
