/**
 * The vCPU thread. KVM wants every vCPU ioctl from the thread that created
 * the vCPU, so this Worker creates it, sets its registers and calls `KVM_RUN`
 * synchronously in a loop (an asynchronous FFI call would hop threads and cost
 * five times as much, see DESIGN.md).
 *
 * Exits that need a device are handed to the owning thread through a shared
 * control block: the worker marks an exit pending and sleeps in `Atomics.wait`
 * until the owner has read the exit from the shared `kvm_run` page and written
 * any reply into it. Writes to sink ports never leave this thread.
 *
 * The owner stops the vCPU by kicking this thread with SIGUSR2 (see
 * `vcpu.ts`), so the thread id it reports must stay this thread's while the
 * owner may kick: the Worker never ends itself (no `self.close()`, no uncaught
 * error once "ready" is out) and lives until the owner terminates it.
 *
 * Between setting up its vCPU and the first `KVM_RUN` the Worker waits at a
 * gate the owner opens (`Ctl.Go`): open from the start on x86_64, opened
 * for all vCPUs at once on arm64 when the boot vCPU is ready (see
 * `KvmVm.startVcpu`), and by `stop()`.
 *
 * What depends on the architecture is in `vcpu_worker_x86.ts` and
 * `vcpu_worker_arm64.ts`: setting the vCPU up and reading its registers.
 *
 * The Worker serves one vCPU at a time and may serve several in turn: it is
 * started before its first start message comes (loading this module and its
 * `dlopen` are the slow part), and after it has posted an outcome the owner
 * may send it the next vCPU's start message instead of ending it.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import {
  Errno,
  libc,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from "../../../ffi/libc.ts";
import {
  KVM,
  KVM_EXIT,
  KVM_EXIT_IO_OUT,
  kvm_run,
  KVM_SYSTEM_EVENT,
} from "../../../ffi/kvm.ts";
import type { VcpuOutcome, VcpuRegs } from "../hv.ts";
import {
  Ctl,
  CtlState,
  type WorkerReply,
  type WorkerStart,
} from "./vcpu_protocol.ts";
import { setUpArm64Vcpu } from "./vcpu_worker_arm64.ts";
import { setUpX86Vcpu } from "./vcpu_worker_x86.ts";

const c = libc();
const sym = c.unsafeSymbols;

/** What the run loop needs from the architecture of a vCPU set up. */
export interface VcpuArch {
  /** Reads the registers an outcome reports. */
  regs(): VcpuRegs;
  /** Ports whose `out` writes stay on this thread (x86_64 sink ports). */
  sinkPorts: ReadonlySet<number>;
  /**
   * The outcome of a `KVM_RUN` that failed with `errno` (not EINTR or
   * EAGAIN), when the architecture can say more than the errno.
   */
  runFailed?(errno: number): VcpuOutcome | undefined;
  /** The syndrome an exit the loop does not handle carries, if any. */
  syndrome?(reason: number, run: DataView): bigint | undefined;
}

function start(msg: WorkerStart): void {
  const ctl = new Int32Array(msg.control);
  let vcpuFd = -1;
  let runPtr: Deno.PointerObject | null = null;
  let outcome: VcpuOutcome;
  let ready = false;
  try {
    vcpuFd = c.ioctl(msg.vmFd, KVM.CREATE_VCPU, msg.id, "KVM_CREATE_VCPU");
    runPtr = c.mmap(msg.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd);
    const arch = msg.arm64
      ? setUpArm64Vcpu(vcpuFd, msg.arm64)
      : setUpX86Vcpu(vcpuFd, msg);
    post({
      type: "ready",
      tid: c.gettid(),
      runAddress: Deno.UnsafePointer.value(runPtr),
      vcpuFd,
    });
    ready = true;
    // `stop()` stores `Stop` before it opens the gate: the loop below then
    // ends "stopped" before its first `KVM_RUN`.
    while (Atomics.load(ctl, Ctl.Go) === 0) Atomics.wait(ctl, Ctl.Go, 0);
    outcome = runLoop(vcpuFd, runPtr, ctl, arch);
  } catch (e) {
    outcome = {
      kind: "error",
      message: e instanceof Error ? e.message : String(e),
    };
  }
  // Once "ready" is out, the owner holds views of kvm_run and may still poke
  // `immediate_exit`: it unmaps and closes after the outcome, not this thread.
  if (!ready) {
    if (runPtr !== null) c.munmap(runPtr, msg.mmapSize);
    if (vcpuFd >= 0) c.close(vcpuFd);
  }
  // This thread never enters `KVM_RUN` again: `Done` tells the owner, before
  // the outcome does, that a kick has nothing left to interrupt.
  Atomics.store(ctl, Ctl.State, CtlState.Done);
  Atomics.notify(ctl, Ctl.State);
  post({ type: "outcome", outcome });
}

const IO_DIRECTION = kvm_run.fields["io.direction"].offset;
const IO_PORT = kvm_run.fields["io.port"].offset;
const EXIT_REASON = kvm_run.fields.exit_reason.offset;

function runLoop(
  fd: number,
  runPtr: Deno.PointerObject,
  ctl: Int32Array,
  arch: VcpuArch,
): VcpuOutcome {
  const run = new DataView(
    Deno.UnsafePointerView.getArrayBuffer(runPtr, kvm_run.size),
  );
  for (;;) {
    if (Atomics.load(ctl, Ctl.Stop) !== 0) {
      const atMs = performance.timeOrigin + performance.now();
      return { kind: "stopped", atMs, regs: arch.regs() };
    }
    const r = sym.ioctl(fd, KVM.RUN, null);
    if (r < 0) {
      const errno = c.errno();
      if (errno === Errno.EINTR || errno === Errno.EAGAIN) {
        run.setUint8(kvm_run.fields.immediate_exit.offset, 0);
        continue;
      }
      const error = c.lastError("ioctl KVM_RUN");
      return arch.runFailed?.(errno) ??
        { kind: "error", message: error.message };
    }
    Atomics.add(ctl, Ctl.Exits, 1);
    const reason = run.getUint32(EXIT_REASON, true);
    switch (reason) {
      case KVM_EXIT.IO:
        if (
          run.getUint8(IO_DIRECTION) === KVM_EXIT_IO_OUT &&
          arch.sinkPorts.has(run.getUint16(IO_PORT, true))
        ) continue;
        handOver(ctl);
        continue;
      case KVM_EXIT.MMIO:
        handOver(ctl);
        continue;
      case KVM_EXIT.INTR:
      case KVM_EXIT.IRQ_WINDOW_OPEN:
        continue;
      case KVM_EXIT.HLT:
        return { kind: "hlt", regs: arch.regs() };
      case KVM_EXIT.SHUTDOWN:
        return { kind: "shutdown", regs: arch.regs() };
      case KVM_EXIT.SYSTEM_EVENT: {
        const type = run.getUint32(
          kvm_run.fields["system_event.type"].offset,
          true,
        );
        const event = type === KVM_SYSTEM_EVENT.SHUTDOWN
          ? "shutdown"
          : type === KVM_SYSTEM_EVENT.RESET
          ? "reset"
          : type === KVM_SYSTEM_EVENT.CRASH
          ? "crash"
          : "other";
        return { kind: "system-event", event, type, regs: arch.regs() };
      }
      case KVM_EXIT.INTERNAL_ERROR:
        return {
          kind: "internal-error",
          suberror: run.getUint32(
            kvm_run.fields["internal.suberror"].offset,
            true,
          ),
          regs: arch.regs(),
        };
      case KVM_EXIT.FAIL_ENTRY:
        return {
          kind: "fail-entry",
          reason: run.getBigUint64(
            kvm_run.fields["fail_entry.hardware_entry_failure_reason"].offset,
            true,
          ),
          regs: arch.regs(),
        };
      default: {
        const syndrome = arch.syndrome?.(reason, run);
        return syndrome === undefined
          ? { kind: "unsupported", exitReason: reason, regs: arch.regs() }
          : {
            kind: "unsupported",
            exitReason: reason,
            syndrome,
            regs: arch.regs(),
          };
      }
    }
  }
}

/** Lets the owning thread handle the exit in `kvm_run`, and waits for it. */
function handOver(ctl: Int32Array): void {
  Atomics.store(ctl, Ctl.State, CtlState.Exit);
  Atomics.notify(ctl, Ctl.State);
  // The owner usually answers within microseconds: poll before sleeping.
  for (let i = 0; i < HANDOVER_POLLS; i++) {
    if (Atomics.load(ctl, Ctl.State) !== CtlState.Exit) break;
  }
  Atomics.wait(ctl, Ctl.State, CtlState.Exit);
  Atomics.store(ctl, Ctl.State, CtlState.Running);
}

/** Polls of the control block before the vCPU thread sleeps on it. */
const HANDOVER_POLLS = 20_000;

function post(reply: WorkerReply): void {
  self.postMessage(reply);
}

self.onmessage = (e: MessageEvent<WorkerStart>) => start(e.data);
