import { deepEqual, equal, ok, throws } from "node:assert/strict";
import {
  type CpuidEntry,
  encodeCpuid,
  guestCpuid,
  guestXcr0,
  parseCpuid,
  xsaveSize,
} from "./cpuid.ts";
import { cpuidForVcpu, xcrsForVcpu } from "./regs.ts";

/**
 * A `KVM_GET_SUPPORTED_CPUID` table recorded by `testdata/record_cpuid.ts`:
 * `lab.json` in the KVM lab (nested SVM under QEMU TCG), `host_pvm.json` on a
 * build machine whose `/dev/kvm` is kvm_pvm.
 */
function recorded(name: string): {
  tscDeadlineTimer: boolean;
  entries: CpuidEntry[];
} {
  const json = JSON.parse(
    Deno.readTextFileSync(new URL(`./testdata/${name}`, import.meta.url)),
  );
  const entries = (json.entries as string[]).map((line) => {
    const [fn, index, flags, eax, ebx, ecx, edx] = line.split(" ");
    const hex = (s: string | undefined) => parseInt(s!, 16);
    return {
      function: hex(fn),
      index: Number(index),
      flags: Number(flags),
      eax: hex(eax),
      ebx: hex(ebx),
      ecx: hex(ecx),
      edx: hex(edx),
    };
  });
  return { tscDeadlineTimer: json.caps.tscDeadlineTimer > 0, entries };
}

const CAPS = { tscDeadlineTimer: true, irqchip: true };

function leaf(entries: CpuidEntry[], fn: number, index = 0): CpuidEntry {
  const e = entries.find((x) => x.function === fn && x.index === index);
  if (!e) throw new Error(`no CPUID leaf ${fn.toString(16)}.${index}`);
  return e;
}

function bit(value: number, n: number): number {
  return (value >>> n) & 1;
}

/** The XCR0 that leaf 0xD subleaf 0 offers. */
function offeredXcr0(entries: CpuidEntry[]): bigint {
  const d0 = leaf(entries, 0xd);
  return BigInt(d0.eax) | (BigInt(d0.edx) << 32n);
}

/**
 * What Linux checks at boot (arch/x86/kernel/fpu/xstate.c,
 * paranoid_xstate_size_valid): the standard-format size computed from the
 * subleaves of the components it enables equals leaf 0xD subleaf 0 EBX, the
 * size CPUID reports for the XCR0 the vCPU runs with.
 */
function assertXsaveConsistent(entries: CpuidEntry[]): void {
  const xcr0 = guestXcr0(entries)!;
  equal(xcr0, offeredXcr0(entries));
  const d0 = leaf(entries, 0xd);
  equal(xsaveSize(entries, xcr0, false), d0.ebx);
  equal(d0.ecx, d0.ebx);
  for (const i of [...Array(64).keys()].filter((i) => i >= 2)) {
    const on = (xcr0 >> BigInt(i)) & 1n;
    const sub = entries.find((e) => e.function === 0xd && e.index === i);
    equal(sub !== undefined, on === 1n, `leaf 0xd.${i} iff XCR0 bit ${i}`);
    if (sub) ok(sub.eax > 0 && sub.ebx >= 576 && (sub.ecx & 1) === 0);
  }
}

Deno.test("guestCpuid() keeps the lab's XSAVE table and sizes it for the XCR0 the vCPU starts with", () => {
  const lab = recorded("lab.json");
  const out = guestCpuid(lab.entries, {
    tscDeadlineTimer: lab.tscDeadlineTimer,
    irqchip: true,
  });
  // x87, SSE, AVX, PKRU: 576 + AVX 256 at 576 ... PKRU 8 at 2688 = 2696.
  equal(guestXcr0(out), 0x207n);
  equal(leaf(out, 0xd).ebx, 2696);
  assertXsaveConsistent(out);
  // The lab's KVM reports a consistent table: nothing else changes but the
  // leaf 1 bits that are ours to set.
  const l1 = leaf(out, 1);
  equal(bit(l1.ecx, 31), 1, "hypervisor");
  equal(bit(l1.ecx, 24), 1, "TSC-deadline");
  equal(bit(l1.ecx, 26), 1, "XSAVE");
  equal(bit(l1.ecx, 28), 1, "AVX");
  const changed = out.filter((e, i) =>
    JSON.stringify(e) !== JSON.stringify(lab.entries[i])
  );
  deepEqual(changed.map((e) => [e.function, e.index]), [[1, 0]]);
  equal(l1.ecx, (lab.entries[1]!.ecx | (1 << 31) | (1 << 24)) >>> 0);
});

Deno.test("guestCpuid() sets TSC-deadline only with KVM_CAP_TSC_DEADLINE_TIMER and the in-kernel LAPIC", () => {
  for (const name of ["lab.json", "host_pvm.json"]) {
    const { entries } = recorded(name);
    const ecx = (caps: typeof CAPS) => leaf(guestCpuid(entries, caps), 1).ecx;
    equal(bit(ecx(CAPS), 24), 1, name);
    equal(bit(ecx({ ...CAPS, tscDeadlineTimer: false }), 24), 0, name);
    // Without the irqchip there is no LAPIC: no TSC-deadline, no x2APIC, no
    // PV unhalt (api.rst, "Local APIC features").
    const noLapic = guestCpuid(entries, { ...CAPS, irqchip: false });
    equal(bit(leaf(noLapic, 1).ecx, 24), 0, name);
    equal(bit(leaf(noLapic, 1).ecx, 21), 0, name);
    equal(bit(leaf(noLapic, 0x4000_0001).eax, 7), 0, name);
    equal(bit(leaf(guestCpuid(entries, CAPS), 1).ecx, 21), 1, name);
    equal(bit(leaf(noLapic, 1).ecx, 31), 1, name);
  }
});

Deno.test("guestCpuid() clears leaf 0xd when KVM offers no XSAVE (kvm_pvm)", () => {
  const { entries } = recorded("host_pvm.json");
  // kvm_pvm reports XCR0 0xe7 in leaf 0xd but no XSAVE in leaf 1.
  equal(bit(leaf(entries, 1).ecx, 26), 0);
  equal(offeredXcr0(entries), 0xe7n);
  const out = guestCpuid(entries, CAPS);
  equal(guestXcr0(out), undefined);
  deepEqual(leaf(out, 0xd), { ...leaf(entries, 0xd), eax: 0, ebx: 0, ecx: 0 });
  ok(!out.some((e) => e.function === 0xd && e.index >= 2));
  equal(xcrsForVcpu(encodeCpuid(out)), undefined);
});

/** The lab's table with `edit` applied to a copy. */
function labWith(edit: (entries: CpuidEntry[]) => CpuidEntry[]): CpuidEntry[] {
  return edit(recorded("lab.json").entries.map((e) => ({ ...e })));
}

Deno.test("guestCpuid() drops a component whose subleaf is missing, and the features using it", () => {
  const supported = labWith((t) =>
    t.filter((e) => !(e.function === 0xd && e.index === 9))
  );
  // The lab advertises PKU (leaf 7 ECX bit 3) along with PKRU.
  equal(bit(leaf(supported, 7).ecx, 3), 1);
  const out = guestCpuid(supported, CAPS);
  equal(guestXcr0(out), 0x7n);
  equal(leaf(out, 0xd).ebx, 832);
  equal(bit(leaf(out, 7).ecx, 3), 0, "PKU");
  assertXsaveConsistent(out);
});

Deno.test("guestCpuid() drops a component of size 0 or flagged supervisor, and AVX with YMM", () => {
  for (const bad of [{ eax: 0 }, { ecx: 1 }, { ebx: 100 }, { ebx: 4000 }]) {
    const supported = labWith((t) => {
      Object.assign(leaf(t, 0xd, 2), bad);
      return t;
    });
    const out = guestCpuid(supported, CAPS);
    const why = JSON.stringify(bad);
    equal(guestXcr0(out), 0x203n, why);
    // PKRU keeps its standard-format offset 2688.
    equal(leaf(out, 0xd).ebx, 2696, why);
    const l1 = leaf(out, 1).ecx;
    for (const [name, b] of [["AVX", 28], ["FMA", 12], ["F16C", 29]] as const) {
      equal(bit(l1, b), 0, `${name} ${why}`);
    }
    equal(bit(leaf(out, 7).ebx, 5), 0, `AVX2 ${why}`);
    assertXsaveConsistent(out);
  }
});

Deno.test("guestCpuid() offers AVX-512 state all or nothing", () => {
  const avx512 = (t: CpuidEntry[], indexes: number[]) => {
    const d0 = leaf(t, 0xd);
    const sizes: Record<number, [number, number]> = {
      5: [64, 1088],
      6: [512, 1152],
      7: [1024, 1664],
    };
    for (const i of indexes) {
      d0.eax |= 1 << i;
      const [eax, ebx] = sizes[i]!;
      t.push({ function: 0xd, index: i, flags: 1, eax, ebx, ecx: 0, edx: 0 });
    }
    leaf(t, 7).ebx |= 1 << 16; // AVX512F
    return t;
  };
  const whole = guestCpuid(labWith((t) => avx512(t, [5, 6, 7])), CAPS);
  equal(guestXcr0(whole), 0x2e7n);
  equal(bit(leaf(whole, 7).ebx, 16), 1);
  assertXsaveConsistent(whole);
  const part = guestCpuid(labWith((t) => avx512(t, [5, 6])), CAPS);
  equal(guestXcr0(part), 0x207n);
  equal(bit(leaf(part, 7).ebx, 16), 0, "AVX512F");
  assertXsaveConsistent(part);
});

Deno.test("guestCpuid() offers no XSAVE when XCR0 lacks x87 or SSE", () => {
  const out = guestCpuid(
    labWith((t) => {
      leaf(t, 0xd).eax &= ~2;
      return t;
    }),
    CAPS,
  );
  equal(guestXcr0(out), undefined);
  const l1 = leaf(out, 1).ecx;
  equal(bit(l1, 26), 0, "XSAVE");
  equal(bit(l1, 28), 0, "AVX");
  equal(leaf(out, 0xd, 1).eax, 0, "XSAVEOPT and friends");
});

Deno.test("guestCpuid() sizes the compacted format and keeps IA32_XSS components that hold together", () => {
  const cet = (t: CpuidEntry[], indexes: number[]) => {
    const d1 = leaf(t, 0xd, 1);
    d1.eax |= 0b1010; // XSAVEC, XSAVES
    d1.ecx = 0x1800; // CET_U, CET_S
    for (const i of indexes) {
      t.push({
        function: 0xd,
        index: i,
        flags: 1,
        eax: 16,
        ebx: 0,
        ecx: 1,
        edx: 0,
      });
    }
    leaf(t, 7).ecx |= 1 << 7; // CET_SS
    return t;
  };
  const out = guestCpuid(labWith((t) => cet(t, [11, 12])), CAPS);
  const d1 = leaf(out, 0xd, 1);
  equal(d1.ecx, 0x1800);
  // Compacted, XSS 0 at reset: 576 + AVX 256 + PKRU 8.
  equal(d1.ebx, 840);
  equal(bit(leaf(out, 7).ecx, 7), 1);
  ok(out.some((e) => e.function === 0xd && e.index === 12));
  const half = guestCpuid(labWith((t) => cet(t, [11])), CAPS);
  equal(leaf(half, 0xd, 1).ecx, 0);
  equal(bit(leaf(half, 7).ecx, 7), 0, "CET_SS");
  ok(!half.some((e) => e.function === 0xd && e.index === 11));
});

Deno.test("guestCpuid() leaves its input alone", () => {
  const { entries } = recorded("lab.json");
  const before = JSON.stringify(entries);
  guestCpuid(entries, CAPS);
  equal(JSON.stringify(entries), before);
});

Deno.test("parseCpuid() reads what encodeCpuid() writes, and refuses short bytes", () => {
  for (const name of ["lab.json", "host_pvm.json"]) {
    const { entries } = recorded(name);
    deepEqual(parseCpuid(encodeCpuid(entries)), entries);
  }
  const bytes = encodeCpuid(recorded("lab.json").entries);
  throws(() => parseCpuid(bytes.subarray(0, bytes.length - 1)), /Cannot parse/);
});

Deno.test("cpuidForVcpu() sets the APIC ids, xcrsForVcpu() the XCR0 offered", () => {
  const out = encodeCpuid(guestCpuid(recorded("lab.json").entries, CAPS));
  const vcpu = parseCpuid(cpuidForVcpu(out, 5));
  equal(leaf(vcpu, 1).ebx >>> 24, 5);
  equal(leaf(vcpu, 0xb).edx, 5);
  const xcrs = new DataView(xcrsForVcpu(out)!.buffer);
  equal(xcrs.getUint32(0, true), 1, "nr_xcrs");
  equal(xcrs.getUint32(8, true), 0, "XCR0");
  equal(xcrs.getBigUint64(16, true), 0x207n);
});
