/**
 * The owner's side of a vCPU: starts its Worker, serves its device exits from
 * the shared `kvm_run` page, and stops it on request (sets `immediate_exit`
 * and the stop flag, then interrupts `KVM_RUN` with SIGUSR2 sent to the
 * Worker's thread: the "kick").
 *
 * Two rules keep the kick from killing the process (SIGUSR2's default action
 * is to terminate it):
 * - The kernel looks up a signal's action when the target thread takes the
 *   signal, not when `tgkill(2)` queues it (signal(7)), and a thread that is
 *   not in `KVM_RUN` may take it well after the owner has seen the vCPU's
 *   outcome. So the SIGUSR2 listener is installed once and never removed; it
 *   does not keep a finished program alive (Deno polls signals with an unref'd
 *   op).
 * - A thread is kicked only while it may still run the guest: never once the
 *   Worker has marked the run done, reported its outcome or failed, and never
 *   after it was terminated, so that a thread id the kernel has handed to a new
 *   thread is never signalled.
 *
 * @module
 */

import { libc, SIGUSR2 } from "../../../ffi/libc.ts";
import { KVM_EXIT, KVM_EXIT_IO_IN, kvm_run } from "../../../ffi/kvm.ts";
import type { ExitHandlers, HvVcpu, VcpuInit, VcpuOutcome } from "../hv.ts";
import {
  Ctl,
  CtlState,
  type WorkerReply,
  type WorkerStart,
} from "./vcpu_protocol.ts";

/** How long the owner polls for the next exit before it sleeps. */
const SERVE_POLL_MS = 0.2;
/** The longest the owner serves exits without yielding to its event loop. */
const SERVE_STREAK_MS = 5;

let kickListenerInstalled = false;

/**
 * Makes SIGUSR2 harmless for the rest of this isolate's life: a kick may be
 * taken by its thread after every vCPU has ended, so the listener stays.
 */
function installKickListener(): void {
  if (kickListenerInstalled) return;
  Deno.addSignalListener("SIGUSR2", () => {});
  kickListenerInstalled = true;
}

/** A vCPU running in its own Worker. Made by `KvmVm.startVcpu`. */
export class KvmVcpu implements HvVcpu {
  /** The vCPU index. */
  readonly id: number;
  #done!: Promise<VcpuOutcome>;
  #worker: Worker;
  #ctl: Int32Array;
  #handlers: ExitHandlers;
  /** The vCPU thread's id while it may be in `KVM_RUN`, else 0: see `#kick`. */
  #tid = 0;
  #run: DataView | undefined;
  #runBytes: Uint8Array | undefined;
  #handlerError: string | undefined;
  #finished = false;
  #runPtr: Deno.PointerObject | undefined;
  #vcpuFd = -1;
  #mmapSize: number;

  private constructor(
    id: number,
    worker: Worker,
    ctl: Int32Array,
    options: { handlers: ExitHandlers; mmapSize: number },
  ) {
    this.id = id;
    this.#mmapSize = options.mmapSize;
    this.#worker = worker;
    this.#ctl = ctl;
    this.#handlers = options.handlers;
  }

  /** Resolves with the run's outcome. */
  get done(): Promise<VcpuOutcome> {
    return this.#done;
  }

  /** Starts vCPU `id` of the VM `vmFd`; resolves once it is about to run. */
  static start(
    vmFd: number,
    id: number,
    options: { mmapSize: number; cpuid?: Uint8Array; init: VcpuInit },
  ): Promise<KvmVcpu> {
    installKickListener();
    const control = new SharedArrayBuffer(Ctl.Length * 4);
    const ctl = new Int32Array(control);
    const worker = new Worker(
      new URL("./vcpu_worker.ts", import.meta.url).href,
      {
        type: "module",
      },
    );
    let resolveOutcome!: (o: VcpuOutcome) => void;
    const outcome = new Promise<VcpuOutcome>((r) => resolveOutcome = r);
    return new Promise((resolveReady, rejectReady) => {
      const vcpu = new KvmVcpu(id, worker, ctl, {
        handlers: options.init.handlers ?? {},
        mmapSize: options.mmapSize,
      });
      vcpu.#done = outcome.then((o) => {
        vcpu.#tid = 0;
        worker.terminate();
        vcpu.#finished = true;
        vcpu.#release();
        if (vcpu.#handlerError !== undefined) {
          return { kind: "error", message: vcpu.#handlerError } as VcpuOutcome;
        }
        return o;
      });
      worker.onmessage = (e: MessageEvent<WorkerReply>) => {
        const msg = e.data;
        if (msg.type === "ready") {
          vcpu.#attach(msg.tid, msg.runAddress, msg.vcpuFd);
          resolveReady(vcpu);
        } else {
          // The thread has left `KVM_RUN` for good: no more kicks.
          vcpu.#tid = 0;
          resolveOutcome(msg.outcome);
          // A vCPU that failed before it was ready still resolves `start`.
          resolveReady(vcpu);
        }
      };
      worker.onerror = (e) => {
        e.preventDefault();
        // The Worker's thread may be gone already: its id is not ours any more.
        vcpu.#tid = 0;
        const message = `vCPU ${id} thread failed: ${e.message}`;
        resolveOutcome({ kind: "error", message });
        rejectReady(new Error(message));
      };
      const start: WorkerStart = {
        vmFd,
        id,
        mmapSize: options.mmapSize,
        control,
        cpuid: options.init.cpuid === false ? undefined : options.cpuid,
        regs: options.init.regs,
        sregs: options.init.sregs,
        sinkPorts: options.init.sinkPorts ?? [],
      };
      worker.postMessage(start);
    });
  }

  #attach(tid: number, runAddress: bigint, vcpuFd: number): void {
    this.#tid = tid;
    const ptr = Deno.UnsafePointer.create(runAddress)!;
    this.#runPtr = ptr;
    this.#vcpuFd = vcpuFd;
    const buf = Deno.UnsafePointerView.getArrayBuffer(ptr, this.#mmapSize);
    this.#run = new DataView(buf);
    this.#runBytes = new Uint8Array(buf);
    void this.#serve();
  }

  /** Unmaps `kvm_run` and closes the vCPU fd once the Worker has ended. */
  #release(): void {
    const c = libc();
    this.#run = undefined;
    this.#runBytes = undefined;
    if (this.#runPtr !== undefined) c.munmap(this.#runPtr, this.#mmapSize);
    if (this.#vcpuFd >= 0) c.close(this.#vcpuFd);
    this.#runPtr = undefined;
    this.#vcpuFd = -1;
  }

  /** Exits seen so far. */
  exitCount(): number {
    return Atomics.load(this.#ctl, Ctl.Exits);
  }

  async #serve(): Promise<void> {
    const ctl = this.#ctl;
    // Exits come in bursts (a console line is a few exits per byte): after
    // serving one, poll briefly for the next before going back to the event
    // loop, whose wake-up costs far more than an exit. A long streak still
    // yields now and then so that timers and I/O on this thread run.
    let streakStart = performance.now();
    for (;;) {
      let state = Atomics.load(ctl, Ctl.State);
      if (state !== CtlState.Exit && state !== CtlState.Done) {
        const pollUntil = performance.now() + SERVE_POLL_MS;
        while (
          state !== CtlState.Exit && state !== CtlState.Done &&
          performance.now() < pollUntil
        ) {
          state = Atomics.load(ctl, Ctl.State);
        }
      }
      if (state === CtlState.Done) return;
      if (state !== CtlState.Exit) {
        const w = Atomics.waitAsync(ctl, Ctl.State, state);
        if (w.async) await w.value;
        streakStart = performance.now();
        continue;
      }
      if (performance.now() - streakStart > SERVE_STREAK_MS) {
        await new Promise((r) => setTimeout(r, 0));
        streakStart = performance.now();
      }
      try {
        this.#dispatch();
      } catch (e) {
        this.#handlerError ??= `Device handler failed on vCPU ${this.id}: ${
          e instanceof Error ? e.message : String(e)
        }`;
        Atomics.store(ctl, Ctl.Stop, 1);
      }
      Atomics.store(ctl, Ctl.State, CtlState.Replied);
      Atomics.notify(ctl, Ctl.State);
    }
  }

  #dispatch(): void {
    const run = this.#run!;
    const bytes = this.#runBytes!;
    const reason = run.getUint32(kvm_run.fields.exit_reason.offset, true);
    if (reason === KVM_EXIT.IO) {
      const direction =
        run.getUint8(kvm_run.fields["io.direction"].offset) === KVM_EXIT_IO_IN
          ? "in"
          : "out";
      const size = run.getUint8(kvm_run.fields["io.size"].offset);
      const port = run.getUint16(kvm_run.fields["io.port"].offset, true);
      const count = run.getUint32(kvm_run.fields["io.count"].offset, true);
      const offset = Number(
        run.getBigUint64(kvm_run.fields["io.data_offset"].offset, true),
      );
      // data_offset points inside the vCPU's mmap area; a hostile value must
      // not make us read outside the part we mapped.
      if (
        (size !== 1 && size !== 2 && size !== 4) ||
        offset + size * count > bytes.byteLength
      ) {
        throw new Error(
          `port I/O exit is malformed: ${count} x ${size} bytes at offset ${offset} of the vCPU's mapping`,
        );
      }
      for (let i = 0; i < count; i++) {
        const data = bytes.subarray(offset + i * size, offset + (i + 1) * size);
        if (direction === "in") data.fill(0xff);
        this.#handlers.io?.({ port, size, direction, data });
      }
    } else if (reason === KVM_EXIT.MMIO) {
      const addr = run.getBigUint64(
        kvm_run.fields["mmio.phys_addr"].offset,
        true,
      );
      const len = Math.min(
        8,
        run.getUint32(kvm_run.fields["mmio.len"].offset, true),
      );
      const isWrite =
        run.getUint8(kvm_run.fields["mmio.is_write"].offset) !== 0;
      const at = kvm_run.fields["mmio.data"].offset;
      const data = bytes.subarray(at, at + len);
      if (!isWrite) data.fill(0);
      this.#handlers.mmio?.({ addr, isWrite, data });
    }
  }

  /**
   * Stops the vCPU, even if the guest spins without exiting; resolves with the
   * outcome. Stopping a vCPU that has ended does nothing.
   *
   * @example
   * ```ts ignore
   * import { Kvm } from "./system.ts";
   * const kvm = Kvm.open();
   * const vm = kvm.createVm();
   * vm.addMemory(0n, 0x10000n);
   * const vcpu = await vm.startVcpu(0, { regs: { rip: 0x1000n } });
   * const outcome = await vcpu.stop();
   * console.log(outcome.kind); // "stopped", unless the guest ended first
   * await vm.close();
   * ```
   */
  stop(): Promise<VcpuOutcome> {
    if (!this.#finished) {
      // The worker checks the flag before each `KVM_RUN`, and `KVM_RUN` returns
      // EINTR at once while `immediate_exit` is set: a kick that arrives before
      // the thread enters `KVM_RUN` is not lost.
      Atomics.store(this.#ctl, Ctl.Stop, 1);
      this.#run?.setUint8(kvm_run.fields.immediate_exit.offset, 1);
      this.#kick();
    }
    return this.done;
  }

  /** Interrupts `KVM_RUN` with SIGUSR2 if the vCPU's thread may be in it. */
  #kick(): void {
    // The thread lives until this thread terminates its Worker (the Worker never
    // ends itself), and `#tid` is cleared before that: the id is still the
    // vCPU thread's. `Done` is stored before the outcome is posted; after it
    // the thread never enters `KVM_RUN` again.
    if (
      this.#tid === 0 ||
      Atomics.load(this.#ctl, Ctl.State) === CtlState.Done
    ) return;
    try {
      const c = libc();
      c.tgkill(c.getpid(), this.#tid, SIGUSR2);
    } catch {
      // Only if the thread died on its own: `done` resolves through `onerror`.
      this.#tid = 0;
    }
  }
}
