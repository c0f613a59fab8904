/**
 * The arm64 part of a vCPU Worker (`vcpu_worker.ts`): initializes the vCPU
 * (`KVM_ARM_VCPU_INIT` with the VM's preferred target, in-kernel PSCI and,
 * for a secondary CPU, powered off), sets its registers one by one
 * (`KVM_SET_ONE_REG`), and reads them back for outcomes.
 *
 * PSCI calls (CPU_ON, SYSTEM_OFF, ...) are KVM's own business with
 * `KVM_ARM_VCPU_PSCI_0_2`: a powered-off vCPU sleeps inside `KVM_RUN` until
 * another one powers it on, and only SYSTEM_OFF and SYSTEM_RESET reach the
 * Worker, as `KVM_EXIT_SYSTEM_EVENT`. KVM resets a vCPU's core and system
 * registers when CPU_ON powers it on, so what a powered-off vCPU was
 * started with lasts only until then.
 *
 * @module
 */

import { Errno, libc } from "../../../ffi/libc.ts";
import {
  arm64_kvm_run,
  KVM,
  KVM_ARM64,
  KVM_EXIT,
  kvm_one_reg,
  kvm_vcpu_init,
  writeStruct,
} from "../../../ffi/kvm.ts";
import type { VcpuOutcome } from "../hv.ts";
import {
  ARM64_CORE_REG_IDS,
  arm64RegWrites,
  readArm64Regs,
} from "./regs_arm64.ts";
import type { Arm64Start } from "./vcpu_protocol.ts";
import type { VcpuArch } from "./vcpu_worker.ts";

const c = libc();

/**
 * Sets up the arm64 vCPU `fd` (made by `KVM_CREATE_VCPU` on this thread):
 * `KVM_ARM_VCPU_INIT`, then its registers.
 */
export function setUpArm64Vcpu(fd: number, start: Arm64Start): VcpuArch {
  const init = new Uint8Array(kvm_vcpu_init.size);
  const view = new DataView(init.buffer);
  writeStruct(view, kvm_vcpu_init, { target: start.target });
  view.setUint32(kvm_vcpu_init.fields.features.offset, start.features, true);
  c.ioctl(
    fd,
    KVM_ARM64.ARM_VCPU_INIT,
    Deno.UnsafePointer.of(init),
    "KVM_ARM_VCPU_INIT",
  );
  const reg = new OneReg(fd);
  for (const w of arm64RegWrites(start)) reg.set(w.name, w.id, w.value);
  const regs = () => ({
    arch: "aarch64" as const,
    ...readArm64Regs((id) => reg.get(id)),
  });
  return {
    regs,
    sinkPorts: new Set(),
    runFailed: (errno) => errno === Errno.ENOSYS ? undecodable(reg) : undefined,
    syndrome: (reason, run) => {
      if (reason === KVM_EXIT.ARM_NISV) {
        return run.getBigUint64(
          arm64_kvm_run.fields["arm_nisv.esr_iss"].offset,
          true,
        );
      }
      if (reason === KVM_EXIT.DEBUG) {
        const f = arm64_kvm_run.fields;
        return BigInt(run.getUint32(f["debug.arch.hsr"].offset, true)) |
          (BigInt(run.getUint32(f["debug.arch.hsr_high"].offset, true)) <<
            32n);
      }
      return undefined;
    },
  };
}

/**
 * The outcome of `KVM_RUN` failing with ENOSYS: KVM's answer to a data
 * abort outside guest RAM whose syndrome does not describe the access (no
 * ISV), which it cannot emulate (Documentation/virt/kvm/api.rst,
 * `KVM_EXIT_ARM_NISV`).
 */
function undecodable(reg: OneReg): VcpuOutcome {
  let where = "";
  try {
    where = ` at pc 0x${reg.get(ARM64_CORE_REG_IDS.pc).toString(16)}`;
  } catch {
    // The message stands without the pc.
  }
  return {
    kind: "error",
    message:
      `Cannot run the vCPU: KVM_RUN failed with ENOSYS${where}; the guest most likely accessed MMIO with an instruction KVM cannot emulate, a data abort without a valid syndrome (a load/store pair, a pre- or post-indexed, SIMD or atomic access), at an address with no RAM`,
  };
}

/** `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG` of one vCPU, 64-bit registers. */
class OneReg {
  #fd: number;
  #value = new BigUint64Array(1);
  #arg = new Uint8Array(kvm_one_reg.size);
  #view = new DataView(this.#arg.buffer);

  constructor(fd: number) {
    this.#fd = fd;
    writeStruct(this.#view, kvm_one_reg, {
      addr: Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#value)),
    });
  }

  get(id: bigint): bigint {
    writeStruct(this.#view, kvm_one_reg, { id });
    c.ioctl(
      this.#fd,
      KVM.GET_ONE_REG,
      Deno.UnsafePointer.of(this.#arg),
      "KVM_GET_ONE_REG",
    );
    return this.#value[0]!;
  }

  set(name: string, id: bigint, value: bigint): void {
    writeStruct(this.#view, kvm_one_reg, { id });
    this.#value[0] = BigInt.asUintN(64, value);
    c.ioctl(
      this.#fd,
      KVM.SET_ONE_REG,
      Deno.UnsafePointer.of(this.#arg),
      `KVM_SET_ONE_REG ${name}`,
    );
  }
}
