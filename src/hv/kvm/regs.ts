/**
 * Conversions between the typed register objects of `hv.ts` and the bytes of
 * `struct kvm_regs` / `struct kvm_sregs`, and per-vCPU CPUID fix-ups.
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
  readField,
  writeStruct,
} from "../../../ffi/kvm.ts";
import type { Segment, X86Regs, X86Sregs } from "../hv.ts";

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

/** Leaf 1 ECX bit 24: the LAPIC timer has TSC-deadline mode. */
const CPUID_1_ECX_TSC_DEADLINE = 1 << 24;
/** Leaf 1 ECX bit 31: running under a hypervisor. */
const CPUID_1_ECX_HYPERVISOR = 1 << 31;

/**
 * Makes the host's supported CPUID right for vCPU `id`: its initial APIC id
 * (leaf 1 EBX[31:24]) and x2APIC id (leaves 0xb and 0x1f EDX).
 *
 * It also sets two leaf 1 ECX bits that `KVM_GET_SUPPORTED_CPUID` leaves to
 * userspace (Documentation/virt/kvm/api.rst):
 * - "hypervisor": without it Linux never looks at the KVM leaves
 *   0x40000000/0x40000001, so it runs without kvmclock and calibrates the TSC
 *   against legacy timers that a hardware-reduced ACPI machine does not have;
 * - "TSC-deadline": the in-kernel LAPIC has emulated it since Linux 3.2
 *   (`KVM_CAP_TSC_DEADLINE_TIMER`); with it the guest skips the LAPIC timer
 *   calibration.
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
      const ecx = Number(readField(view, kvm_cpuid_entry2, "ecx", at));
      writeStruct(view, kvm_cpuid_entry2, {
        ebx: ((ebx & 0x00ffffff) | (id << 24)) >>> 0,
        ecx: (ecx | CPUID_1_ECX_TSC_DEADLINE | CPUID_1_ECX_HYPERVISOR) >>> 0,
      }, at);
    } else if (fn === 0xb || fn === 0x1f) {
      writeStruct(view, kvm_cpuid_entry2, { edx: id }, at);
    }
  }
  return copy;
}
