/**
 * Messages and the shared control block between a vCPU Worker and the thread
 * that owns the VM.
 *
 * @module
 */

import type {
  Arm64Regs,
  Arm64SysRegs,
  VcpuOutcome,
  X86Regs,
  X86Sregs,
} from "../hv.ts";

/** Slots of the shared `Int32Array` control block. */
export const Ctl = {
  /** A {@linkcode CtlState} value. */
  State: 0,
  /** Non-zero once the owner asked the vCPU to stop. */
  Stop: 1,
  /** Exits seen (wraps at 2^31). */
  Exits: 2,
  /**
   * The gate: 0 until the owner lets the vCPU run, then 1. A Worker that has
   * set its vCPU up and posted "ready" waits here before its first
   * `KVM_RUN`. On x86_64 the gate is open from the start; on arm64 the VM
   * opens the gates of all its vCPUs at once, when the boot vCPU is ready
   * and the GIC initialized (see `KvmVm.startVcpu`). `stop()` opens it too,
   * after setting `Stop`, so a vCPU waiting there ends "stopped" at once.
   */
  Go: 3,
  /** Number of slots. */
  Length: 4,
} as const;

/** Values of the control block's `State` slot. */
export const CtlState = {
  /** The vCPU is in or about to enter `KVM_RUN`. */
  Running: 0,
  /** An exit waits in `kvm_run` for the owner. */
  Exit: 1,
  /** The owner has handled the exit. */
  Replied: 2,
  /**
   * The run has ended: the vCPU thread never enters `KVM_RUN` again, and the
   * owner no longer kicks it. Stored before the outcome is posted.
   */
  Done: 3,
} as const;

/**
 * The one message the owner sends per vCPU: create the vCPU and run it. A
 * Worker gets the next one only after it has posted the outcome of the last.
 */
export interface WorkerStart {
  /** The VM's fd (fds are shared by all threads of the process). */
  vmFd: number;
  /** vCPU index. */
  id: number;
  /** `KVM_GET_VCPU_MMAP_SIZE`. */
  mmapSize: number;
  /** The control block's buffer. */
  control: SharedArrayBuffer;
  /** `kvm_cpuid2` bytes to set, if any. */
  cpuid?: Uint8Array;
  /** Initial general registers. */
  regs?: Partial<X86Regs>;
  /** Initial special registers. */
  sregs?: Partial<X86Sregs>;
  /** Ports whose writes are dropped on the vCPU thread. */
  sinkPorts: number[];
  /** Present for an arm64 vCPU: how to initialize it (no x86 fields then). */
  arm64?: Arm64Start;
}

/** What an arm64 vCPU's Worker needs to set it up. */
export interface Arm64Start {
  /** `kvm_vcpu_init.target`: the VM's `KVM_ARM_PREFERRED_TARGET`. */
  target: number;
  /** `kvm_vcpu_init.features[0]`: `KVM_ARM_VCPU_*` bits. */
  features: number;
  /** Core registers to set (PSTATE defaults to EL1h, DAIF masked). */
  regs?: Partial<Arm64Regs>;
  /** System registers to set. */
  sysRegs?: Arm64SysRegs;
}

/**
 * Messages from the worker: "ready" once, then "outcome" once. `tid` is the
 * vCPU thread's `gettid()`, for the owner's SIGUSR2 kick; the thread keeps it
 * until the owner terminates the Worker, which the owner does only after the
 * outcome (or the Worker's error), and it kicks no thread after that.
 */
export type WorkerReply =
  | { type: "ready"; tid: number; runAddress: bigint; vcpuFd: number }
  | { type: "outcome"; outcome: VcpuOutcome };
