/**
 * The CPUID a guest sees, derived from what KVM supports.
 *
 * `KVM_GET_SUPPORTED_CPUID` is almost the table to give `KVM_SET_CPUID2`;
 * Documentation/virt/kvm/api.rst ("Known KVM API problems", x86) lists what
 * userspace still decides: the local APIC features (x2APIC, TSC-deadline,
 * `KVM_FEATURE_PV_UNHALT`) work only with the in-kernel LAPIC, and
 * TSC-deadline needs `KVM_CAP_TSC_DEADLINE_TIMER`. Leaf 1's "hypervisor" bit is
 * ours to set too.
 *
 * Leaf 0xD (XSAVE) describes the state components the guest may enable in
 * XCR0 (Intel SDM Vol. 1, 13.2-13.4): subleaf 0 EDX:EAX the XCR0 bits, EBX the
 * XSAVE area size for the XCR0 currently enabled, ECX the size for all of them;
 * subleaf 1 the XSAVE variants, IA32_XSS bits and the compacted size; subleaf
 * `i` the size (EAX) and standard-format offset (EBX) of component `i`. Linux
 * (arch/x86/kernel/fpu/xstate.c) recomputes the area size from the subleaves
 * for the components it enables and warns "XSAVE consistency problem" when the
 * size CPUID reports differs, so the table must hold together: a component
 * whose subleaf is missing or malformed is not offered, nor the features that
 * need its state, nor components that need it by the XCR0 rules (SDM Vol. 1,
 * 13.3).
 *
 * KVM rewrites subleaf 0 EBX (and subleaf 1 EBX) from the vCPU's XCR0 as it
 * knows it. A vCPU therefore starts with XCR0 set to everything it is offered
 * ({@linkcode guestXcr0}, set with `KVM_SET_XCRS`): a guest's `XSETBV` normally
 * exits to KVM, which then tracks the value, but a nested hypervisor that
 * does not intercept `XSETBV` (QEMU's emulated SVM has no such intercept)
 * leaves KVM at the reset value 1 (x87 only, 576 bytes) while Linux has
 * enabled, say, 0x207 (2696 bytes), and Linux reports "size 2696 !=
 * kernel_size 576" and falls back to FXSAVE.
 *
 * @module
 */

import {
  kvm_cpuid2,
  kvm_cpuid_entry2,
  readField,
  writeStruct,
} from "../../../ffi/kvm.ts";

/** One CPUID leaf as KVM describes it (`struct kvm_cpuid_entry2`). */
export interface CpuidEntry {
  /** The leaf (EAX on input). */
  function: number;
  /** The subleaf (ECX on input), when `flags` has the significant-index bit. */
  index: number;
  /** `KVM_CPUID_FLAG_*` (arch/x86/include/uapi/asm/kvm.h). */
  flags: number;
  /** Output EAX. */
  eax: number;
  /** Output EBX. */
  ebx: number;
  /** Output ECX. */
  ecx: number;
  /** Output EDX. */
  edx: number;
}

/** What the guest CPUID depends on besides `KVM_GET_SUPPORTED_CPUID`. */
export interface CpuidCaps {
  /** `KVM_CHECK_EXTENSION(KVM_CAP_TSC_DEADLINE_TIMER)` is non-zero. */
  tscDeadlineTimer: boolean;
  /** The VM has the in-kernel irqchip and so a local APIC per vCPU. */
  irqchip: boolean;
}

const FIELDS = [
  "function",
  "index",
  "flags",
  "eax",
  "ebx",
  "ecx",
  "edx",
] as const;

/**
 * Reads the entries of `kvm_cpuid2` bytes (header, then `nent` entries).
 *
 * @example
 * ```ts
 * import { encodeCpuid, parseCpuid } from "./cpuid.ts";
 * const e = { function: 1, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 3, edx: 4 };
 * console.log(parseCpuid(encodeCpuid([e]))[0]?.ecx); // 3
 * ```
 */
export function parseCpuid(bytes: Uint8Array): CpuidEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getUint32(kvm_cpuid2.fields.nent.offset, true);
  if (kvm_cpuid2.size + n * kvm_cpuid_entry2.size > bytes.byteLength) {
    throw new Error(
      `Cannot parse kvm_cpuid2: ${n} entries do not fit in ${bytes.byteLength} bytes`,
    );
  }
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    const e = {} as CpuidEntry;
    for (const f of FIELDS) {
      e[f] = Number(readField(view, kvm_cpuid_entry2, f, at));
    }
    out.push(e);
  }
  return out;
}

/**
 * Writes `entries` as `kvm_cpuid2` bytes for `KVM_SET_CPUID2`.
 *
 * @example
 * ```ts
 * import { encodeCpuid } from "./cpuid.ts";
 * console.log(encodeCpuid([]).byteLength); // 8
 * ```
 */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const bytes = new Uint8Array(
    kvm_cpuid2.size + entries.length * kvm_cpuid_entry2.size,
  );
  const view = new DataView(bytes.buffer);
  writeStruct(view, kvm_cpuid2, { nent: entries.length });
  entries.forEach((e, i) => {
    const values = Object.fromEntries(FIELDS.map((f) => [f, e[f]]));
    writeStruct(
      view,
      kvm_cpuid_entry2,
      values,
      kvm_cpuid2.size + i * kvm_cpuid_entry2.size,
    );
  });
  return bytes;
}

type Reg = "eax" | "ebx" | "ecx" | "edx";

/** One feature bit: CPUID leaf, subleaf, output register and bit. */
interface Feature {
  leaf: number;
  subleaf: number;
  reg: Reg;
  bit: number;
}

function feature(leaf: number, subleaf: number, reg: Reg, bit: number) {
  return { leaf, subleaf, reg, bit };
}

// Leaf 1 ECX (Intel SDM Vol. 2A, CPUID, "Feature Information").
const FMA = feature(1, 0, "ecx", 12);
const X2APIC = feature(1, 0, "ecx", 21);
/** The LAPIC timer has TSC-deadline mode. */
const TSC_DEADLINE = feature(1, 0, "ecx", 24);
const XSAVE = feature(1, 0, "ecx", 26);
const AVX = feature(1, 0, "ecx", 28);
const F16C = feature(1, 0, "ecx", 29);
/**
 * Running under a hypervisor: without it Linux never looks at the KVM leaves
 * 0x40000000/0x40000001, so it runs without kvmclock and calibrates the TSC
 * against legacy timers that a hardware-reduced ACPI machine does not have.
 */
const HYPERVISOR = feature(1, 0, "ecx", 31);

// Leaf 7 subleaf 0 (SDM Vol. 2A, CPUID, "Structured Extended Feature Flags").
const AVX2 = feature(7, 0, "ebx", 5);
const MPX = feature(7, 0, "ebx", 14);
const AVX512_EBX = [16, 17, 21, 26, 27, 28, 30, 31].map((b) =>
  feature(7, 0, "ebx", b)
);
const AVX512_ECX = [1, 6, 11, 12, 14].map((b) => feature(7, 0, "ecx", b));
const AVX512_EDX = [2, 3, 8, 23].map((b) => feature(7, 0, "edx", b));
const PKU = feature(7, 0, "ecx", 3);
const CET_SS = feature(7, 0, "ecx", 7);
const VAES = feature(7, 0, "ecx", 9);
const VPCLMULQDQ = feature(7, 0, "ecx", 10);
const IBT = feature(7, 0, "edx", 20);
const AMX = [22, 24, 25].map((b) => feature(7, 0, "edx", b));
// Leaf 7 subleaf 1 EAX: AVX-VNNI (4), AVX512-BF16 (5), AMX-FP16 (21).
const AVX_VNNI = feature(7, 1, "eax", 4);
const AVX512_BF16 = feature(7, 1, "eax", 5);
const AMX_FP16 = feature(7, 1, "eax", 21);

// Leaf 0xD subleaf 1 EAX (SDM Vol. 1, 13.2).
const XSAVE_VARIANTS = [0, 1, 2, 3, 4].map((b) => feature(0xd, 1, "eax", b));
const XSAVEC = feature(0xd, 1, "eax", 1);
const XSAVES = feature(0xd, 1, "eax", 3);

/** Leaf 0x40000001 EAX bit 7 (Documentation/virt/kvm/x86/cpuid.rst). */
const KVM_FEATURE_PV_UNHALT = feature(0x4000_0001, 0, "eax", 7);

/** x87 and SSE state: always in XCR0 when XSAVE is usable (SDM Vol. 1, 13.3). */
const XSTATE_FP_SSE = 0b11n;
/** The legacy region (512 bytes) and the XSAVE header (64 bytes). */
const XSAVE_LEGACY_AND_HEADER = 576;
/** Leaf 0xD subleaf `i` ECX bit 0: component `i` is an IA32_XSS component. */
const XSTATE_ECX_SUPERVISOR = 1;
/** Leaf 0xD subleaf `i` ECX bit 1: 64-byte aligned in the compacted format. */
const XSTATE_ECX_ALIGN64 = 2;

/**
 * State components that go together, what they need, and the features that
 * use their state (SDM Vol. 1, 13.1 and 13.3), in dependency order.
 */
const XSTATE_GROUPS: {
  mask: bigint;
  needs: bigint;
  features: Feature[];
}[] = [
  {
    // AVX: YMM_Hi128 (2) needs SSE.
    mask: 1n << 2n,
    needs: 1n << 1n,
    features: [AVX, FMA, F16C, AVX2, VAES, VPCLMULQDQ, AVX_VNNI],
  },
  // MPX: BNDREGS (3) and BNDCSR (4), both or neither.
  { mask: 0b11n << 3n, needs: 0n, features: [MPX] },
  {
    // AVX-512: opmask, ZMM_Hi256, Hi16_ZMM (5-7), all or none, need AVX.
    mask: 0b111n << 5n,
    needs: 1n << 2n,
    features: [...AVX512_EBX, ...AVX512_ECX, ...AVX512_EDX, AVX512_BF16],
  },
  // PKRU (9).
  { mask: 1n << 9n, needs: 0n, features: [PKU] },
  // CET user and supervisor state (11, 12, supervisor).
  { mask: 0b11n << 11n, needs: 0n, features: [CET_SS, IBT] },
  // AMX: XTILECFG (17) and XTILEDATA (18), both or neither.
  { mask: 0b11n << 17n, needs: 0n, features: [...AMX, AMX_FP16] },
];

function find(
  entries: readonly CpuidEntry[],
  leaf: number,
  subleaf = 0,
): CpuidEntry | undefined {
  return entries.find((e) =>
    e.function === leaf && (e.index === subleaf || !significantIndex(e))
  );
}

/** `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (sic, arch/x86/include/uapi/asm/kvm.h). */
function significantIndex(e: CpuidEntry): boolean {
  return (e.flags & 1) !== 0;
}

function has(entries: readonly CpuidEntry[], f: Feature): boolean {
  const e = find(entries, f.leaf, f.subleaf);
  return e !== undefined && ((e[f.reg] >>> f.bit) & 1) === 1;
}

function setFeature(entries: CpuidEntry[], f: Feature, on: boolean): void {
  const e = find(entries, f.leaf, f.subleaf);
  if (!e) return;
  const bit = (1 << f.bit) >>> 0;
  e[f.reg] = (on ? e[f.reg] | bit : e[f.reg] & ~bit) >>> 0;
}

function bits(mask: bigint): number[] {
  const out: number[] = [];
  for (let i = 0; mask >> BigInt(i) !== 0n; i++) {
    if ((mask >> BigInt(i)) & 1n) out.push(i);
  }
  return out;
}

/** Whether leaf 0xD subleaf `i` describes a usable component `i`. */
function componentValid(
  entries: readonly CpuidEntry[],
  i: number,
  supervisor: boolean,
  maxSize: number,
): boolean {
  const e = entries.find((x) => x.function === 0xd && x.index === i);
  if (!e || !significantIndex(e) || e.eax === 0) return false;
  if (((e.ecx & XSTATE_ECX_SUPERVISOR) !== 0) !== supervisor) return false;
  if (supervisor) return true;
  // A user component has a standard-format offset after the header.
  return e.ebx >= XSAVE_LEGACY_AND_HEADER && e.ebx + e.eax <= maxSize;
}

/**
 * The XSAVE area size for the components in `mask`: the standard format
 * (`XSAVE`, offsets from each subleaf's EBX) or the compacted one (`XSAVEC`,
 * `XSAVES`: components packed in order, 64-byte aligned where ECX bit 1 says
 * so), as in SDM Vol. 1, 13.4.3 and 13.11.
 *
 * @example
 * ```ts
 * import { xsaveSize } from "./cpuid.ts";
 * const avx = { function: 0xd, index: 2, flags: 1, eax: 256, ebx: 576, ecx: 0, edx: 0 };
 * console.log(xsaveSize([avx], 0b111n, false)); // 832
 * ```
 */
export function xsaveSize(
  entries: readonly CpuidEntry[],
  mask: bigint,
  compacted: boolean,
): number {
  let size = XSAVE_LEGACY_AND_HEADER;
  for (const i of bits(mask)) {
    if (i < 2) continue;
    const e = entries.find((x) => x.function === 0xd && x.index === i);
    if (!e) continue;
    if (compacted) {
      if (e.ecx & XSTATE_ECX_ALIGN64) size = Math.ceil(size / 64) * 64;
      size += e.eax;
    } else {
      size = Math.max(size, e.ebx + e.eax);
    }
  }
  return size;
}

/**
 * The XCR0 a vCPU with CPUID `entries` (from {@linkcode guestCpuid}) starts
 * with: every component it is offered, or undefined when XSAVE is not offered.
 * See the module documentation for why it is not the reset value 1.
 *
 * @example
 * ```ts
 * import { guestXcr0 } from "./cpuid.ts";
 * console.log(guestXcr0([])); // undefined
 * ```
 */
export function guestXcr0(entries: readonly CpuidEntry[]): bigint | undefined {
  const d0 = find(entries, 0xd, 0);
  if (!has(entries, XSAVE) || !d0) return undefined;
  const xcr0 = BigInt(d0.eax) | (BigInt(d0.edx) << 32n);
  return (xcr0 & XSTATE_FP_SSE) === XSTATE_FP_SSE ? xcr0 : undefined;
}

/**
 * Derives the CPUID table to give every vCPU from `KVM_GET_SUPPORTED_CPUID`'s
 * entries and `caps` (per-vCPU APIC ids are set later, by `cpuidForVcpu`):
 *
 * - leaf 1 ECX "hypervisor" set; x2APIC only with the in-kernel irqchip;
 *   TSC-deadline exactly when the irqchip is in-kernel and KVM has
 *   `KVM_CAP_TSC_DEADLINE_TIMER`; `KVM_FEATURE_PV_UNHALT` only with the irqchip;
 * - leaf 0xD offers only components whose subleaf KVM describes properly and
 *   that satisfy the XCR0 rules, with the sizes recomputed for them (subleaf 0
 *   EBX and subleaf 1 EBX for the XCR0 of {@linkcode guestXcr0}, XSS 0);
 *   features whose state is not offered are cleared, and without usable XSAVE
 *   the XSAVE bit and leaf 0xD are cleared.
 *
 * The input is not modified.
 *
 * @example
 * ```ts
 * import { guestCpuid } from "./cpuid.ts";
 * const leaf1 = { function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 };
 * const [out] = guestCpuid([leaf1], { tscDeadlineTimer: true, irqchip: true });
 * console.log((out!.ecx >>> 24) & 1); // 1
 * ```
 */
export function guestCpuid(
  supported: readonly CpuidEntry[],
  caps: CpuidCaps,
): CpuidEntry[] {
  const out = supported.map((e) => ({ ...e }));
  setFeature(out, HYPERVISOR, true);
  setFeature(out, X2APIC, caps.irqchip && has(out, X2APIC));
  setFeature(out, TSC_DEADLINE, caps.irqchip && caps.tscDeadlineTimer);
  setFeature(
    out,
    KVM_FEATURE_PV_UNHALT,
    caps.irqchip && has(out, KVM_FEATURE_PV_UNHALT),
  );
  deriveXsave(out);
  return out;
}

/** The leaf 0xD part of {@linkcode guestCpuid}, in place. */
function deriveXsave(out: CpuidEntry[]): void {
  const d0 = find(out, 0xd, 0);
  const d1 = find(out, 0xd, 1);
  let xcr0 = d0 && has(out, XSAVE)
    ? BigInt(d0.eax) | (BigInt(d0.edx) << 32n)
    : 0n;
  let xss = d1 && has(out, XSAVES)
    ? BigInt(d1.ecx) | (BigInt(d1.edx) << 32n)
    : 0n;
  const maxSize = d0?.ecx ?? 0;
  for (const i of bits(xcr0)) {
    if (i >= 2 && !componentValid(out, i, false, maxSize)) {
      xcr0 &= ~(1n << BigInt(i));
    }
  }
  for (const i of bits(xss)) {
    if (!componentValid(out, i, true, maxSize)) xss &= ~(1n << BigInt(i));
  }
  if ((xcr0 & XSTATE_FP_SSE) !== XSTATE_FP_SSE) {
    xcr0 = 0n;
    xss = 0n;
  }
  for (const g of XSTATE_GROUPS) {
    const offered = (xcr0 | xss) & g.mask;
    const whole = offered === g.mask && (xcr0 & g.needs) === g.needs;
    if (whole) continue;
    xcr0 &= ~g.mask;
    xss &= ~g.mask;
    for (const f of g.features) setFeature(out, f, false);
  }
  if (xcr0 === 0n) {
    setFeature(out, XSAVE, false);
    for (const f of XSAVE_VARIANTS) setFeature(out, f, false);
  }
  const kept = xcr0 | xss;
  for (let i = out.length - 1; i >= 0; i--) {
    const e = out[i]!;
    if (
      e.function === 0xd && e.index >= 2 && !((kept >> BigInt(e.index)) & 1n)
    ) {
      out.splice(i, 1);
    }
  }
  if (d0) {
    const size = xcr0 === 0n ? 0 : xsaveSize(out, xcr0, false);
    Object.assign(d0, {
      eax: Number(xcr0 & 0xffff_ffffn),
      edx: Number(xcr0 >> 32n),
      ebx: size,
      ecx: size,
    });
  }
  if (d1) {
    const compacted = has(out, XSAVEC) || has(out, XSAVES);
    Object.assign(d1, {
      ebx: compacted ? xsaveSize(out, xcr0, true) : 0,
      ecx: Number(xss & 0xffff_ffffn),
      edx: Number(xss >> 32n),
    });
  }
}
