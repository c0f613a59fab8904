/**
 * The x86_64 part of a vCPU Worker (`vcpu_worker.ts`): sets the vCPU's
 * CPUID, XCR0 and registers, and reads its registers for outcomes.
 *
 * @module
 */

import { libc } from "../../../ffi/libc.ts";
import { KVM, kvm_regs, kvm_sregs } from "../../../ffi/kvm.ts";
import type { VcpuRegs, X86Regs, X86Sregs } from "../hv.ts";
import {
  cpuidForVcpu,
  readRegs,
  writeRegs,
  writeSregs,
  xcrsForVcpu,
} from "./regs.ts";
import type { WorkerStart } from "./vcpu_protocol.ts";
import type { VcpuArch } from "./vcpu_worker.ts";

const c = libc();

/**
 * Sets up the x86_64 vCPU `fd` (made by `KVM_CREATE_VCPU` on this thread)
 * as `msg` says: its CPUID and XCR0, then its special and general registers.
 */
export function setUpX86Vcpu(fd: number, msg: WorkerStart): VcpuArch {
  if (msg.cpuid) {
    const cpuid = cpuidForVcpu(msg.cpuid, msg.id);
    c.ioctl(fd, KVM.SET_CPUID2, Deno.UnsafePointer.of(cpuid), "KVM_SET_CPUID2");
    // After the CPUID: KVM accepts only the XCR0 bits it offers.
    const xcrs = xcrsForVcpu(cpuid);
    if (xcrs !== undefined) {
      c.ioctl(fd, KVM.SET_XCRS, Deno.UnsafePointer.of(xcrs), "KVM_SET_XCRS");
    }
  }
  setRegisters(fd, msg.regs, msg.sregs);
  return { regs: () => getRegs(fd), sinkPorts: new Set(msg.sinkPorts) };
}

function setRegisters(
  fd: number,
  regs: Partial<X86Regs> | undefined,
  sregs: Partial<X86Sregs> | undefined,
): void {
  if (sregs) {
    const buf = new Uint8Array(kvm_sregs.size);
    c.ioctl(fd, KVM.GET_SREGS, Deno.UnsafePointer.of(buf), "KVM_GET_SREGS");
    writeSregs(new DataView(buf.buffer), sregs);
    c.ioctl(fd, KVM.SET_SREGS, Deno.UnsafePointer.of(buf), "KVM_SET_SREGS");
  }
  if (regs) {
    const buf = new Uint8Array(kvm_regs.size);
    c.ioctl(fd, KVM.GET_REGS, Deno.UnsafePointer.of(buf), "KVM_GET_REGS");
    writeRegs(new DataView(buf.buffer), { rflags: 2n, ...regs });
    c.ioctl(fd, KVM.SET_REGS, Deno.UnsafePointer.of(buf), "KVM_SET_REGS");
  }
}

function getRegs(fd: number): VcpuRegs {
  const buf = new Uint8Array(kvm_regs.size);
  c.ioctl(fd, KVM.GET_REGS, Deno.UnsafePointer.of(buf), "KVM_GET_REGS");
  return { arch: "x86_64", ...readRegs(new DataView(buf.buffer)) };
}
