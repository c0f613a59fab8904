/**
 * The shared block between an HVF vCPU's Worker and the thread that owns
 * the VM, and the messages they exchange.
 *
 * The hand-over of an exit is KVM's (`../kvm/vcpu_protocol.ts`, whose
 * {@linkcode CtlState} values it reuses): the Worker marks an exit pending
 * and sleeps until the owner has replied. KVM's exit data lives in the
 * `kvm_run` page both threads map; Hypervisor.framework's registers can
 * only be read on the vCPU's thread, so here the Worker decodes the exit
 * and writes what the owner needs (an MMIO access, a PSCI request) into the
 * block, and the owner writes its answer back.
 *
 * Stopping: the owner sets `Stop`, bumps `Wake` (ending any sleep of the
 * Worker) and, if the vCPU may be in `hv_vcpu_run`, calls `hv_vcpus_exit`
 * with the handle the Worker published here. `Kicking` and `State` make
 * sure it never does so once the Worker may have destroyed the vCPU (a
 * handle the framework could hand out again): the owner stores
 * `Kicking = 1`, then reads `State`; the Worker stores `State = Done`, then
 * waits for `Kicking = 0` before `hv_vcpu_destroy`. With sequentially
 * consistent atomics one of the two sees the other's store. The same
 * ordering covers a stop before the handle is published: the owner stores
 * `Stop` before it reads `HandleSet`, the Worker publishes before it first
 * reads `Stop`.
 *
 * @module
 */

import { CtlState } from "../kvm/vcpu_protocol.ts";
import type { Arm64Regs, Arm64SysRegs, VcpuOutcome } from "../hv.ts";
export { CtlState };

/** The `Int32Array` slots of the block. */
const Slot = {
  /** A {@linkcode CtlState} value. */
  State: 0,
  /** Non-zero once the owner asked the vCPU to stop. */
  Stop: 1,
  /** Exits seen (wraps at 2^31). */
  Exits: 2,
  /** 1 while the owner may be calling `hv_vcpus_exit` on the handle. */
  Kicking: 3,
  /** 1 once the u64 `Handle` slot holds the vCPU's `hv_vcpu_t`. */
  HandleSet: 4,
  /** Bumped by the owner whenever a sleeping Worker should look again. */
  Wake: 5,
  /** A {@linkcode Power} value. */
  Power: 6,
  /** The {@linkcode ExitKind} waiting for the owner. */
  ExitKind: 7,
  /** MMIO access size in bytes. */
  MmioSize: 8,
  /** 1 for an MMIO store. */
  MmioIsWrite: 9,
  /** Number of `Int32Array` slots (even, so the u64 slots are aligned). */
  Length: 16,
} as const;

/** The `BigUint64Array` slots, after the `Int32Array` ones. */
const Wide = {
  /** The vCPU's `hv_vcpu_t`. */
  Handle: 0,
  /** Guest-physical address of an MMIO access. */
  MmioAddr: 1,
  /** The bytes of an MMIO access, little-endian (up to 8). */
  MmioData: 2,
  /** First argument of a PSCI request (the target MPIDR). */
  Arg0: 3,
  /** Second argument (CPU_ON's entry point). */
  Arg1: 4,
  /** Third argument (CPU_ON's context id). */
  Arg2: 5,
  /** The owner's answer to a PSCI request, as the guest's X0. */
  Result: 6,
  /** Where a powered-on vCPU starts (set by the owner before `Power = On`). */
  EntryPc: 7,
  /** X0 of a powered-on vCPU: CPU_ON's context id. */
  EntryContext: 8,
  /** Number of slots. */
  Length: 9,
} as const;

/** Values of the `Power` slot. */
export const Power = {
  /** Waiting for a PSCI CPU_ON. */
  Off: 0,
  /** Running, or about to. */
  On: 1,
  /** Being powered on: the owner is writing the entry point. */
  Pending: 2,
} as const;

/** What an exit handed to the owner asks for. */
export const ExitKind = {
  /** An MMIO access: the block's MMIO slots describe it. */
  Mmio: 1,
  /** PSCI CPU_ON: Arg0 target MPIDR, Arg1 entry, Arg2 context id. */
  CpuOn: 2,
  /** PSCI AFFINITY_INFO: Arg0 target MPIDR, Arg1 lowest affinity level. */
  AffinityInfo: 3,
} as const;

/**
 * The block, over one `SharedArrayBuffer` both threads wrap.
 *
 * @example
 * ```ts
 * import { VcpuControl } from "./vcpu_protocol.ts";
 * const owner = VcpuControl.create();
 * const worker = new VcpuControl(owner.buffer);
 * worker.publishHandle(7n);
 * console.log(owner.handle()); // 7n
 * ```
 */
export class VcpuControl {
  /** The shared buffer, to post to the Worker. */
  readonly buffer: SharedArrayBuffer;
  /** The MMIO data slot as bytes. */
  readonly mmioBytes: Uint8Array;
  readonly #i32: Int32Array;
  readonly #u64: BigUint64Array;

  /** Wraps `buffer`, made by {@linkcode VcpuControl.create}. */
  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.#i32 = new Int32Array(buffer, 0, Slot.Length);
    this.#u64 = new BigUint64Array(buffer, Slot.Length * 4, Wide.Length);
    this.mmioBytes = new Uint8Array(
      buffer,
      Slot.Length * 4 + Wide.MmioData * 8,
      8,
    );
  }

  /** A new, zeroed block. */
  static create(): VcpuControl {
    return new VcpuControl(
      new SharedArrayBuffer(Slot.Length * 4 + Wide.Length * 8),
    );
  }

  // --- state and exits -----------------------------------------------------

  /** The {@linkcode CtlState}. */
  state(): number {
    return Atomics.load(this.#i32, Slot.State);
  }

  /** Sets the state and wakes whoever waits on it. */
  setState(state: number): void {
    Atomics.store(this.#i32, Slot.State, state);
    Atomics.notify(this.#i32, Slot.State);
  }

  /** Waits (blocking: the Worker) while the state is `state`. */
  waitWhileState(state: number): void {
    Atomics.wait(this.#i32, Slot.State, state);
  }

  /** Resolves once the state may have left `state` (the owner). */
  async stateChange(state: number): Promise<void> {
    const w = Atomics.waitAsync(this.#i32, Slot.State, state);
    if (w.async) await w.value;
  }

  /** Counts an exit. */
  countExit(): void {
    Atomics.add(this.#i32, Slot.Exits, 1);
  }

  /** Exits counted so far. */
  exits(): number {
    return Atomics.load(this.#i32, Slot.Exits);
  }

  /** Whether the owner asked the vCPU to stop. */
  stopRequested(): boolean {
    return Atomics.load(this.#i32, Slot.Stop) !== 0;
  }

  /** Asks the vCPU to stop and ends any sleep of its Worker. */
  requestStop(): void {
    Atomics.store(this.#i32, Slot.Stop, 1);
    this.wake();
  }

  // --- sleeping and waking -------------------------------------------------

  /** The wake generation: read it before checking what a sleep waits for. */
  wakeGeneration(): number {
    return Atomics.load(this.#i32, Slot.Wake);
  }

  /**
   * Sleeps (blocking) until {@linkcode VcpuControl.wake} moves the
   * generation on from `generation`, or `timeoutMs` passes.
   */
  sleep(generation: number, timeoutMs = Infinity): void {
    Atomics.wait(this.#i32, Slot.Wake, generation, timeoutMs);
  }

  /** Ends the Worker's current or next sleep. */
  wake(): void {
    Atomics.add(this.#i32, Slot.Wake, 1);
    Atomics.notify(this.#i32, Slot.Wake);
  }

  // --- the handle and the kick ---------------------------------------------

  /** Publishes the vCPU's handle (the Worker, right after creating it). */
  publishHandle(handle: bigint): void {
    this.#u64[Wide.Handle] = handle;
    Atomics.store(this.#i32, Slot.HandleSet, 1);
  }

  /** The published handle, or undefined before it is. */
  handle(): bigint | undefined {
    return Atomics.load(this.#i32, Slot.HandleSet) === 0
      ? undefined
      : this.#u64[Wide.Handle];
  }

  /**
   * Runs `exit(handle)` if the vCPU has a handle and the Worker has not
   * marked the run done (see the module doc).
   */
  kick(exit: (handle: bigint) => void): void {
    Atomics.store(this.#i32, Slot.Kicking, 1);
    try {
      const handle = this.handle();
      if (handle !== undefined && this.state() !== CtlState.Done) {
        exit(handle);
      }
    } finally {
      Atomics.store(this.#i32, Slot.Kicking, 0);
    }
  }

  /** Marks the run done, then waits out a kick in progress (the Worker). */
  finish(): void {
    this.setState(CtlState.Done);
    while (Atomics.load(this.#i32, Slot.Kicking) !== 0) {
      // A kick is one framework call: spin, do not sleep.
    }
  }

  // --- power ---------------------------------------------------------------

  /** The {@linkcode Power} state. */
  power(): number {
    return Atomics.load(this.#i32, Slot.Power);
  }

  /** Sets the power state (the owner at start, the Worker on CPU_OFF). */
  setPower(power: number): void {
    Atomics.store(this.#i32, Slot.Power, power);
  }

  /**
   * Powers the vCPU on at `pc` with X0 = `context` if it is off (the
   * owner, for a CPU_ON); returns whether it was off.
   */
  powerOn(pc: bigint, context: bigint): boolean {
    const was = Atomics.compareExchange(
      this.#i32,
      Slot.Power,
      Power.Off,
      Power.Pending,
    );
    if (was !== Power.Off) return false;
    this.#u64[Wide.EntryPc] = pc;
    this.#u64[Wide.EntryContext] = context;
    Atomics.store(this.#i32, Slot.Power, Power.On);
    this.wake();
    return true;
  }

  /** Where a powered-on vCPU starts: `{ pc, context }`. */
  entry(): { pc: bigint; context: bigint } {
    return {
      pc: this.#u64[Wide.EntryPc]!,
      context: this.#u64[Wide.EntryContext]!,
    };
  }

  // --- the exit being handed over ------------------------------------------

  /** Describes an MMIO access; a store's bytes go in `mmioBytes` first. */
  setMmio(addr: bigint, size: number, isWrite: boolean): void {
    Atomics.store(this.#i32, Slot.ExitKind, ExitKind.Mmio);
    this.#u64[Wide.MmioAddr] = addr;
    Atomics.store(this.#i32, Slot.MmioSize, size);
    Atomics.store(this.#i32, Slot.MmioIsWrite, isWrite ? 1 : 0);
  }

  /** The MMIO access waiting for the owner. */
  mmio(): { addr: bigint; size: number; isWrite: boolean } {
    return {
      addr: this.#u64[Wide.MmioAddr]!,
      size: Atomics.load(this.#i32, Slot.MmioSize),
      isWrite: Atomics.load(this.#i32, Slot.MmioIsWrite) !== 0,
    };
  }

  /** Describes a PSCI request ({@linkcode ExitKind}) for the owner. */
  setRequest(kind: number, args: readonly bigint[]): void {
    Atomics.store(this.#i32, Slot.ExitKind, kind);
    this.#u64[Wide.Arg0] = args[0] ?? 0n;
    this.#u64[Wide.Arg1] = args[1] ?? 0n;
    this.#u64[Wide.Arg2] = args[2] ?? 0n;
  }

  /** The kind of the exit waiting for the owner ({@linkcode ExitKind}). */
  exitKind(): number {
    return Atomics.load(this.#i32, Slot.ExitKind);
  }

  /** The request's arguments. */
  args(): [bigint, bigint, bigint] {
    return [
      this.#u64[Wide.Arg0]!,
      this.#u64[Wide.Arg1]!,
      this.#u64[Wide.Arg2]!,
    ];
  }

  /** The owner's answer to a request. */
  result(): bigint {
    return this.#u64[Wide.Result]!;
  }

  /** Answers a request with the guest's X0 (cut to 64 bits). */
  setResult(value: bigint): void {
    this.#u64[Wide.Result] = BigInt.asUintN(64, value);
  }
}

/** The one message the owner sends a vCPU's Worker: create it and run it. */
export interface WorkerStart {
  /** The framework's path (a stand-in library's in tests). */
  libraryPath: string;
  /** vCPU index. */
  id: number;
  /** The control block's buffer. */
  control: SharedArrayBuffer;
  /** Core registers to set. */
  regs?: Partial<Arm64Regs>;
  /** System registers to set (`mpidr_el1` always present). */
  sysRegs: Arm64SysRegs;
  /** Start powered off, waiting for a CPU_ON. */
  poweredOff: boolean;
  /** Whether the VM has the framework's GIC (which may wake a WFI). */
  gic: boolean;
}

/**
 * Messages from the Worker: "ready" once the vCPU exists (and its handle is
 * in the block), then "outcome" once, after `hv_vcpu_destroy`.
 */
export type WorkerReply =
  | { type: "ready" }
  | { type: "outcome"; outcome: VcpuOutcome };
