/**
 * Records this machine's `KVM_GET_SUPPORTED_CPUID` table and the KVM
 * capabilities the CPUID derivation reads, as a JSON fixture for
 * `cpuid_test.ts`:
 *
 *   deno run -A src/hv/kvm/testdata/record_cpuid.ts OUT.json "what machine"
 *
 * In the KVM lab: `deno task lab --out DIR -- deno run -A --no-check
 * src/hv/kvm/testdata/record_cpuid.ts /out/lab.json "the KVM lab"`.
 *
 * @module
 */

import { KVM_CAP } from "../../../../ffi/kvm.ts";
import { parseCpuid } from "../cpuid.ts";
import { Kvm } from "../system.ts";

const [out, source] = Deno.args;
if (!out) {
  console.error("Usage: record_cpuid.ts OUT.json [DESCRIPTION]");
  Deno.exit(2);
}
const hex = (n: number) => n.toString(16).padStart(8, "0");
const kvm = Kvm.open();
try {
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  const fixture = {
    source: source ?? "",
    kernel: Deno.osRelease(),
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "",
    caps: {
      tscDeadlineTimer: kvm.checkExtension(KVM_CAP.TSC_DEADLINE_TIMER),
    },
    format: "function index flags eax ebx ecx edx",
    entries: parseCpuid(kvm.supportedCpuid()).map((e) =>
      [
        hex(e.function),
        e.index,
        e.flags,
        hex(e.eax),
        hex(e.ebx),
        hex(e.ecx),
        hex(e.edx),
      ].join(" ")
    ),
  };
  Deno.writeTextFileSync(out, JSON.stringify(fixture, null, 2) + "\n");
  console.log(`recorded ${fixture.entries.length} CPUID entries to ${out}`);
} finally {
  kvm.close();
}
