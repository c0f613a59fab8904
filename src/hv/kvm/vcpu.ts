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
 * A Worker costs far more to start than a vCPU. In the KVM lab, `new Worker`
 * blocks the calling thread for about 0.4 s while the new isolate is made,
 * then its modules and its own `dlopen` take 0.2-0.4 s more on the new
 * thread. So the threads come from a {@linkcode VcpuThreadPool}: started
 * ahead, so that the loading overlaps the caller's own VM setup, and reused
 * once their vCPU has ended, which costs nothing. A kick still in flight when a
 * thread moves on to its next vCPU makes that vCPU's `KVM_RUN` return EINTR
 * once, which the Worker's loop takes as a spurious wake-up and runs on.
 *
 * @module
 */

import { libc, SIGUSR2 } from "../../../ffi/libc.ts";
import { KVM_EXIT, KVM_EXIT_IO_IN, kvm_run } from "../../../ffi/kvm.ts";
import type { ExitHandlers, HvVcpu, VcpuInit, VcpuOutcome } from "../hv.ts";
import {
  type Arm64Start,
  Ctl,
  CtlState,
  type WorkerReply,
  type WorkerStart,
} from "./vcpu_protocol.ts";

/** How long the owner polls for the next exit before it sleeps. */
const SERVE_POLL_MS = 0.2;
/** The longest the owner serves exits without yielding to its event loop. */
const SERVE_STREAK_MS = 5;

/**
 * The most idle threads a pool keeps; more given back end at once. Each one
 * is an isolate of a few megabytes waiting for its next vCPU.
 */
const MAX_IDLE_THREADS = 8;
/**
 * How long a thread stays idle before it ends: long enough to serve the next
 * VM of a program that boots one after another with other work in between
 * (a benchmark's peer boot takes 15-20 s in the KVM lab). An idle Worker
 * keeps the process alive, so this also bounds how long a pool nobody closes
 * delays the exit of a program that is otherwise done.
 */
export const IDLE_THREAD_MS = 60_000;

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

/**
 * Threads for vCPUs: Workers running `vcpu_worker.ts`, started ahead of need
 * and reused after their vCPU has ended. Idle threads keep the process
 * alive, so whoever owns the pool closes it (`Kvm.close()` does); a thread
 * idle for {@linkcode IDLE_THREAD_MS} ends by itself.
 *
 * @example
 * ```ts
 * import { VcpuThreadPool } from "./vcpu.ts";
 * const threads = new VcpuThreadPool();
 * const worker = threads.take(); // a new thread: it loads from now on
 * threads.give(worker); // once its vCPU has ended (here: none ran)
 * console.assert(threads.take() === worker && threads.started === 1);
 * threads.give(worker);
 * threads.close(); // ends it
 * ```
 */
export class VcpuThreadPool {
  #idle: { worker: Worker; timer: ReturnType<typeof setTimeout> }[] = [];
  #idleMs: number;
  #started = 0;
  #closed = false;

  /** `idleMs`: how long a thread may wait idle (default {@linkcode IDLE_THREAD_MS}). */
  constructor(options: { idleMs?: number } = {}) {
    this.#idleMs = options.idleMs ?? IDLE_THREAD_MS;
  }

  /** Threads waiting for their next vCPU. */
  get idleCount(): number {
    return this.#idle.length;
  }

  /** Threads started so far (each one a new Worker). */
  get started(): number {
    return this.#started;
  }

  /**
   * An idle thread, else a new one, whose modules then load in parallel
   * with the caller. The caller owns it and handles its `error` events: it
   * gives it back once the thread has reported its vCPU's outcome (or
   * before it sent the thread a vCPU), or terminates it.
   */
  take(): Worker {
    const idle = this.#idle.shift();
    if (idle === undefined) {
      this.#started++;
      return spawnVcpuThread();
    }
    clearTimeout(idle.timer);
    idle.worker.onerror = null;
    return idle.worker;
  }

  /**
   * Takes back a thread that has reported its vCPU's outcome (it will not
   * enter `KVM_RUN` again for that vCPU) or that never got one; ends it if
   * the pool is closed or full.
   */
  give(worker: Worker): void {
    if (this.#closed || this.#idle.length >= MAX_IDLE_THREADS) {
      worker.terminate();
      return;
    }
    worker.onmessage = null;
    this.#park(worker);
  }

  /** Ends the idle threads; threads given back later end at once. */
  close(): void {
    this.#closed = true;
    for (const { worker, timer } of this.#idle.splice(0)) {
      clearTimeout(timer);
      worker.terminate();
    }
  }

  #park(worker: Worker): void {
    const retire = () => {
      const at = this.#idle.findIndex((i) => i.worker === worker);
      if (at >= 0) clearTimeout(this.#idle.splice(at, 1)[0]!.timer);
      worker.terminate();
    };
    // A thread that fails while idle (its module did not load) is dropped:
    // the next `take()` starts a new one, whose failure reaches its vCPU.
    worker.onerror = (e) => {
      e.preventDefault();
      retire();
    };
    const timer = setTimeout(retire, this.#idleMs);
    // The idle thread is what keeps the process alive, not this timer.
    Deno.unrefTimer(timer);
    this.#idle.push({ worker, timer });
  }
}

function spawnVcpuThread(): Worker {
  return new Worker(new URL("./vcpu_worker.ts", import.meta.url).href, {
    type: "module",
  });
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

  /**
   * Starts vCPU `id` of the VM `vmFd` on `worker`, a thread taken from
   * `threads` (which gets it back after the run); resolves once the vCPU is
   * set up. It runs once its gate is open: at once with `gateOpen`, else
   * after {@linkcode KvmVcpu.openGate} (or `stop()`). `arm64` makes it an
   * arm64 vCPU, set up from `arm64` rather than `init`'s x86 fields.
   */
  static start(
    vmFd: number,
    id: number,
    options: {
      mmapSize: number;
      cpuid?: Uint8Array;
      init: VcpuInit;
      arm64?: Arm64Start;
      gateOpen: boolean;
      worker: Worker;
      threads: VcpuThreadPool;
    },
  ): Promise<KvmVcpu> {
    installKickListener();
    const control = new SharedArrayBuffer(Ctl.Length * 4);
    const ctl = new Int32Array(control);
    if (options.gateOpen) Atomics.store(ctl, Ctl.Go, 1);
    const worker = options.worker;
    /** Whether the thread reported the outcome itself, and so can be reused. */
    let reported = false;
    let resolveOutcome!: (o: VcpuOutcome) => void;
    const outcome = new Promise<VcpuOutcome>((r) => resolveOutcome = r);
    return new Promise((resolveReady, rejectReady) => {
      const vcpu = new KvmVcpu(id, worker, ctl, {
        handlers: options.init.handlers ?? {},
        mmapSize: options.mmapSize,
      });
      vcpu.#done = outcome.then((o) => {
        vcpu.#tid = 0;
        if (reported) options.threads.give(worker);
        else worker.terminate();
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
          reported = true;
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
        arm64: options.arm64,
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

  /**
   * Lets the vCPU run: its Worker waits at this gate from the time it is
   * set up (the start resolved) until now. Idempotent; `stop()` opens it
   * too, so that the vCPU ends "stopped" without running.
   */
  openGate(): void {
    Atomics.store(this.#ctl, Ctl.Go, 1);
    Atomics.notify(this.#ctl, Ctl.Go);
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
      // Let what the exit set off on this thread (promise reactions: a
      // program server reading the bytes a device just took in) run before
      // the poll below holds the thread for up to SERVE_POLL_MS.
      await null;
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
      // A vCPU still at its gate sees `Stop` before its first `KVM_RUN`.
      this.openGate();
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
