/**
 * The owner's side of a Hypervisor.framework vCPU: starts its Worker
 * (`vcpu_worker.ts`, one thread per vCPU for the vCPU's life), serves the
 * exits it hands over (MMIO through the handlers, PSCI requests through
 * the VM), and stops it with `hv_vcpus_exit`.
 *
 * Unrun on a Mac: see `vcpu_worker.ts`.
 *
 * @module
 */

import type { ExitHandlers, HvVcpu, VcpuOutcome } from "../hv.ts";
import {
  CtlState,
  ExitKind,
  type VcpuControl,
  type WorkerReply,
  type WorkerStart,
} from "./vcpu_protocol.ts";

/** How long the owner polls for the next exit before it sleeps. */
const SERVE_POLL_MS = 0.2;
/** The longest the owner serves exits without yielding to its event loop. */
const SERVE_STREAK_MS = 5;

/** A PSCI request a vCPU hands to the VM: CPU_ON or AFFINITY_INFO. */
export interface PsciRequest {
  /** {@linkcode ExitKind.CpuOn} or {@linkcode ExitKind.AffinityInfo}. */
  kind: number;
  /** The call's arguments (target MPIDR first). */
  args: [bigint, bigint, bigint];
}

/** What {@linkcode HvfVcpu.start} needs besides the Worker's message. */
export interface HvfVcpuOptions {
  /** The vCPU's control block (the VM keeps it to power the vCPU on). */
  control: VcpuControl;
  /** The start message, less the control buffer. */
  start: Omit<WorkerStart, "control">;
  /** Device handlers. */
  handlers: ExitHandlers;
  /** Answers a PSCI request with the guest's X0. */
  psci(request: PsciRequest): bigint;
  /** `hv_vcpus_exit` of one vCPU, on the owner's thread. */
  exitVcpu(handle: bigint): void;
}

/** A vCPU running in its own Worker. Made by `HvfVm.startVcpu`. */
export class HvfVcpu implements HvVcpu {
  /** The vCPU index. */
  readonly id: number;
  #done!: Promise<VcpuOutcome>;
  #ctl: VcpuControl;
  #options: HvfVcpuOptions;
  #handlerError: string | undefined;
  #finished = false;

  private constructor(id: number, options: HvfVcpuOptions) {
    this.id = id;
    this.#ctl = options.control;
    this.#options = options;
  }

  /** Resolves with the run's outcome. */
  get done(): Promise<VcpuOutcome> {
    return this.#done;
  }

  /**
   * Starts the vCPU on a new Worker; resolves once the vCPU exists (and, if
   * it starts powered on, is about to run).
   */
  static start(options: HvfVcpuOptions): Promise<HvfVcpu> {
    const vcpu = new HvfVcpu(options.start.id, options);
    const worker = new Worker(
      new URL("./vcpu_worker.ts", import.meta.url).href,
      { type: "module" },
    );
    let resolveOutcome!: (o: VcpuOutcome) => void;
    const outcome = new Promise<VcpuOutcome>((r) => resolveOutcome = r);
    vcpu.#done = outcome.then((o) => {
      vcpu.#finished = true;
      worker.terminate();
      // The thread is gone: end the serve loop if it still waits.
      vcpu.#ctl.setState(CtlState.Done);
      if (vcpu.#handlerError !== undefined) {
        return { kind: "error", message: vcpu.#handlerError } as VcpuOutcome;
      }
      return o;
    });
    void vcpu.#serve();
    return new Promise((resolveReady, rejectReady) => {
      worker.onmessage = (e: MessageEvent<WorkerReply>) => {
        if (e.data.type === "ready") {
          resolveReady(vcpu);
        } else {
          resolveOutcome(e.data.outcome);
          // A vCPU that failed before it was ready still resolves `start`.
          resolveReady(vcpu);
        }
      };
      worker.onerror = (e) => {
        e.preventDefault();
        const message = `vCPU ${vcpu.id} thread failed: ${e.message}`;
        resolveOutcome({ kind: "error", message });
        rejectReady(new Error(message));
      };
      const start: WorkerStart = {
        ...options.start,
        control: options.control.buffer,
      };
      worker.postMessage(start);
    });
  }

  /** Exits seen so far. */
  exitCount(): number {
    return this.#ctl.exits();
  }

  /**
   * Stops the vCPU, even if the guest spins without exiting; resolves with
   * the outcome. Stopping a vCPU that has ended does nothing.
   */
  stop(): Promise<VcpuOutcome> {
    if (!this.#finished) {
      // The Worker checks the flag before each run and in every sleep; the
      // kick ends a run already under way.
      this.#ctl.requestStop();
      this.#ctl.kick((handle) => this.#options.exitVcpu(handle));
    }
    return this.done;
  }

  async #serve(): Promise<void> {
    const ctl = this.#ctl;
    // As KVM's owner does: poll briefly for the next exit of a burst, and
    // yield to this thread's timers and I/O now and then in a long one.
    let streakStart = performance.now();
    for (;;) {
      let state = ctl.state();
      const pollUntil = performance.now() + SERVE_POLL_MS;
      while (
        state !== CtlState.Exit && state !== CtlState.Done &&
        performance.now() < pollUntil
      ) {
        state = ctl.state();
      }
      if (state === CtlState.Done) return;
      if (state !== CtlState.Exit) {
        await ctl.stateChange(state);
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
        ctl.requestStop();
      }
      ctl.setState(CtlState.Replied);
    }
  }

  #dispatch(): void {
    const ctl = this.#ctl;
    const kind = ctl.exitKind();
    if (kind === ExitKind.Mmio) {
      const { addr, size, isWrite } = ctl.mmio();
      const data = ctl.mmioBytes.subarray(0, Math.min(8, size));
      if (!isWrite) data.fill(0);
      this.#options.handlers.mmio?.({ addr, isWrite, data });
    } else {
      ctl.setResult(this.#options.psci({ kind, args: ctl.args() }));
    }
  }
}
