/**
 * Conversions between the typed register objects of `hv.ts` and the bytes of
 * `struct kvm_regs` / `struct kvm_sregs`, per-vCPU CPUID fix-ups and the
 * initial XCR0.
 *
 * @module
 */

import {
  kvm_cpuid2,
  kvm_cpuid_entry2,
  kvm_dtable,
  kvm_regs,
  kvm_segment,
  kvm_sregs,
  kvm_xcrs,
  readField,
  writeStruct,
} from "../../../ffi/kvm.ts";
import type { Segment, X86Regs, X86Sregs } from "../hv.ts";
export type { Segment, X86Regs, X86Sregs } from "../hv.ts";
import { guestXcr0, parseCpuid } from "./cpuid.ts";

const REG_NAMES = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "rip",
  "rflags",
] as const;

/** Overlays `regs` onto a `kvm_regs` buffer. */
export function writeRegs(view: DataView, regs: Partial<X86Regs>): void {
  writeStruct(view, kvm_regs, regs);
}

/** Reads the registers initx reports from a `kvm_regs` buffer. */
export function readRegs(view: DataView): X86Regs {
  const out = {} as X86Regs;
  for (const n of REG_NAMES) out[n] = readField(view, kvm_regs, n);
  return out;
}

const SEGMENTS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;

/** Overlays `sregs` onto a `kvm_sregs` buffer. */
export function writeSregs(view: DataView, sregs: Partial<X86Sregs>): void {
  for (const name of SEGMENTS) {
    const seg: Segment | undefined = sregs[name];
    if (seg === undefined) continue;
    const base = kvm_sregs.fields[name].offset;
    writeStruct(view, kvm_segment, {
      ...seg,
      unusable: seg.unusable ?? 0,
    }, base);
  }
  for (const name of ["gdt", "idt"] as const) {
    const t = sregs[name];
    if (t) writeStruct(view, kvm_dtable, t, kvm_sregs.fields[name].offset);
  }
  const { cr0, cr3, cr4, efer } = sregs;
  writeStruct(
    view,
    kvm_sregs,
    Object.fromEntries(
      Object.entries({ cr0, cr3, cr4, efer }).filter(([, v]) =>
        v !== undefined
      ),
    ),
  );
}

/**
 * Makes the guest CPUID (from `guestCpuid()`, see `cpuid.ts`) right for vCPU
 * `id`: its initial APIC id (leaf 1 EBX[31:24]) and x2APIC id (leaves 0xb and
 * 0x1f EDX).
 *
 * @example
 * ```ts
 * import { cpuidForVcpu } from "./regs.ts";
 * import { encodeCpuid, parseCpuid } from "./cpuid.ts";
 * const leaf1 = { function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 };
 * const bytes = cpuidForVcpu(encodeCpuid([leaf1]), 3);
 * console.log(parseCpuid(bytes)[0]!.ebx >>> 24); // 3
 * ```
 */
export function cpuidForVcpu(cpuid: Uint8Array, id: number): Uint8Array {
  const copy = cpuid.slice();
  const view = new DataView(copy.buffer);
  const n = view.getUint32(kvm_cpuid2.fields.nent.offset, true);
  for (let i = 0; i < n; i++) {
    const at = kvm_cpuid2.size + i * kvm_cpuid_entry2.size;
    const fn = Number(readField(view, kvm_cpuid_entry2, "function", at));
    if (fn === 1) {
      const ebx = Number(readField(view, kvm_cpuid_entry2, "ebx", at));
      writeStruct(view, kvm_cpuid_entry2, {
        ebx: ((ebx & 0x00ffffff) | (id << 24)) >>> 0,
      }, at);
    } else if (fn === 0xb || fn === 0x1f) {
      writeStruct(view, kvm_cpuid_entry2, { edx: id }, at);
    }
  }
  return copy;
}

/**
 * Offset of `value` in `struct kvm_xcr { __u32 xcr; __u32 reserved; __u64
 * value; }` (arch/x86/include/uapi/asm/kvm.h).
 */
const KVM_XCR_VALUE = 8;

/**
 * The `kvm_xcrs` bytes for `KVM_SET_XCRS` that start a vCPU with CPUID
 * `cpuid` (`kvm_cpuid2` bytes) at XCR0 = every state component it is offered
 * (`guestXcr0()`), or undefined when it is offered no XSAVE. Set it after
 * `KVM_SET_CPUID2`: KVM accepts only the XCR0 bits the CPUID offers. Why not
 * the reset value 1: see `cpuid.ts`.
 *
 * @example
 * ```ts
 * import { xcrsForVcpu } from "./regs.ts";
 * import { encodeCpuid } from "./cpuid.ts";
 * console.log(xcrsForVcpu(encodeCpuid([]))); // undefined
 * ```
 */
export function xcrsForVcpu(cpuid: Uint8Array): Uint8Array | undefined {
  const xcr0 = guestXcr0(parseCpuid(cpuid));
  if (xcr0 === undefined) return undefined;
  const bytes = new Uint8Array(kvm_xcrs.size);
  const view = new DataView(bytes.buffer);
  writeStruct(view, kvm_xcrs, { nr_xcrs: 1 });
  const xcr = kvm_xcrs.fields.xcrs.offset;
  view.setUint32(xcr, 0, true); // XCR0
  view.setBigUint64(xcr + KVM_XCR_VALUE, xcr0, true);
  return bytes;
}
