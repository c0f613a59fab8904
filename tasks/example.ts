/**
 * `deno task example:program`: runs `examples/program.ts` (two compiled
 * programs in a booted VM) on this host when its KVM is hardware-backed, or
 * inside the KVM lab otherwise, and says which.
 *
 * @module
 */

import { PROJECT_ROOT, runInLab } from "./lab/lab.ts";
import { detectKvmHost } from "../src/hv/kvm/host.ts";

const script = ["deno", "run", "-A", "--no-check", "examples/program.ts"];
const host = detectKvmHost();
if (host.kind === "hardware") {
  console.error(`example: running on this host's KVM (${host.reason})`);
  const r = await new Deno.Command(Deno.execPath(), {
    args: script.slice(1),
    cwd: PROJECT_ROOT,
  }).spawn().status;
  Deno.exit(r.code);
}
console.error(`example: running inside the KVM lab, because ${host.reason}`);
const r = await runInLab(script, { cwd: PROJECT_ROOT, timeoutSeconds: 600 });
if (r.error) console.error(`example: ${r.error}`);
Deno.exit(r.code);
