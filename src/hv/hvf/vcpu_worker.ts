/**
 * The thread of one Hypervisor.framework vCPU. The framework binds a vCPU
 * to the thread that creates it: this Worker opens the framework itself,
 * creates the vCPU, sets its registers and calls `hv_vcpu_run`
 * synchronously in a loop, then destroys it, all on its own thread.
 *
 * Exits, by `hv_exit_reason_t`:
 * - `EXCEPTION`, decoded from ESR_EL2 (`exits.ts`): a data abort becomes an
 *   MMIO access served by the owner's handlers (a round trip through the
 *   control block, `vcpu_protocol.ts`), then PC + 4; an HVC is a PSCI call
 *   (VERSION, CPU_ON, CPU_OFF, AFFINITY_INFO, MIGRATE_INFO_TYPE, SYSTEM_OFF,
 *   SYSTEM_RESET); WFI sleeps briefly when something may wake the guest and
 *   ends the run as `hlt` when nothing can; WFE yields. Anything else ends
 *   the run as `unsupported` with the syndrome.
 * - `VTIMER_ACTIVATED`: the guest's virtual timer fired and the framework
 *   masked it. The Worker raises the vCPU's IRQ input, and before each run
 *   looks whether the timer still fires (CNTV_CTL_EL0): once the guest has
 *   moved or disabled it, it lowers the IRQ and unmasks the timer.
 * - `CANCELED`: `hv_vcpus_exit` from the owner: the run ends as `stopped`
 *   if the owner asked for it, and goes on otherwise.
 *
 * Unrun: written against Apple's headers and documentation, tested on Linux
 * against a stand-in library (`testdata/fake_hvf.c`), not yet run on a Mac.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import type { Arm64Regs, Arm64SysRegs, VcpuOutcome, VcpuRegs } from "../hv.ts";
import {
  check,
  HV_EXIT_REASON,
  HV_INTERRUPT_TYPE,
  HV_REG,
  HV_RETURN,
  HV_VCPU_EXIT,
  HvfError,
  type HvfLibrary,
  type HvfSymbols,
  openHvf,
} from "./ffi.ts";
import {
  type Arm64Trap,
  decodeSyndrome,
  loadedValue,
  PSCI_FN,
  PSCI_RET,
  PSCI_TOS_NOT_PRESENT,
  PSCI_VERSION_0_2,
  psciResult,
  XZR,
} from "./exits.ts";
import { CNTV_CTL, CORE_REGS, PSTATE_EL1H_MASKED, SYS_REGS } from "./regs.ts";
import {
  CtlState,
  ExitKind,
  Power,
  VcpuControl,
  type WorkerReply,
  type WorkerStart,
} from "./vcpu_protocol.ts";

/**
 * The longest a WFI sleeps before the guest runs again. initx does not yet
 * compute the virtual timer's deadline (it would need the host counter), so
 * a guest waiting for its timer re-checks every millisecond; a stop or an
 * interrupt line raised by the owner wakes it at once.
 */
const WFI_SLEEP_MS = 1;

/** The SMC64 calling convention bit of a function id (SMCCC). */
const SMC64_BIT = 0x4000_0000;

/** Polls of the control block before the vCPU thread sleeps on it. */
const HANDOVER_POLLS = 20_000;

/** One vCPU, on the thread that created it. */
class Cpu {
  readonly handle: bigint;
  #sym: HvfSymbols;
  #exit: DataView;
  #value = new BigUint64Array(1);

  private constructor(sym: HvfSymbols, handle: bigint, exit: DataView) {
    this.#sym = sym;
    this.handle = handle;
    this.#exit = exit;
  }

  /** `hv_vcpu_create`: this thread becomes the vCPU's owner. */
  static create(sym: HvfSymbols): Cpu {
    const handle = new BigUint64Array(1);
    const exit = new BigUint64Array(1);
    check(
      "create a vCPU",
      "hv_vcpu_create",
      sym.hv_vcpu_create(handle, exit, null),
    );
    const ptr = Deno.UnsafePointer.create(exit[0]!);
    if (ptr === null) {
      throw new Error(
        "Cannot create a vCPU: hv_vcpu_create gave no exit record",
      );
    }
    const view = new DataView(
      Deno.UnsafePointerView.getArrayBuffer(ptr, HV_VCPU_EXIT.size),
    );
    return new Cpu(sym, handle[0]!, view);
  }

  getReg(reg: number): bigint {
    check(
      "read a vCPU register",
      "hv_vcpu_get_reg",
      this.#sym.hv_vcpu_get_reg(this.handle, reg, this.#value),
    );
    return this.#value[0]!;
  }

  setReg(reg: number, value: bigint): void {
    check(
      "write a vCPU register",
      "hv_vcpu_set_reg",
      this.#sym.hv_vcpu_set_reg(this.handle, reg, BigInt.asUintN(64, value)),
    );
  }

  getSysReg(reg: number): bigint {
    check(
      "read a vCPU system register",
      "hv_vcpu_get_sys_reg",
      this.#sym.hv_vcpu_get_sys_reg(this.handle, reg, this.#value),
    );
    return this.#value[0]!;
  }

  setSysReg(reg: number, value: bigint): void {
    check(
      "write a vCPU system register",
      "hv_vcpu_set_sys_reg",
      this.#sym.hv_vcpu_set_sys_reg(
        this.handle,
        reg,
        BigInt.asUintN(64, value),
      ),
    );
  }

  /** Sets one core register by its `hv.ts` name. */
  setCore(place: (typeof CORE_REGS)[number][1], value: bigint): void {
    if (place.kind === "reg") this.setReg(place.reg, value);
    else this.setSysReg(place.reg, value);
  }

  /** The registers an outcome reports. */
  regs(): VcpuRegs {
    const out = { arch: "aarch64" } as { arch: "aarch64" } & Arm64Regs;
    for (const [name, place] of CORE_REGS) {
      out[name] = place.kind === "reg"
        ? this.getReg(place.reg)
        : this.getSysReg(place.reg);
    }
    return out;
  }

  /** Steps past the instruction that trapped. */
  advancePc(): void {
    this.setReg(HV_REG.PC, this.getReg(HV_REG.PC) + 4n);
  }

  setIrq(pending: boolean): void {
    check(
      "set the vCPU's IRQ input",
      "hv_vcpu_set_pending_interrupt",
      this.#sym.hv_vcpu_set_pending_interrupt(
        this.handle,
        HV_INTERRUPT_TYPE.IRQ,
        pending,
      ),
    );
  }

  setVtimerMask(masked: boolean): void {
    check(
      "mask the virtual timer",
      "hv_vcpu_set_vtimer_mask",
      this.#sym.hv_vcpu_set_vtimer_mask(this.handle, masked),
    );
  }

  /** `hv_vcpu_run`; its `hv_return_t`. */
  run(): number {
    return this.#sym.hv_vcpu_run(this.handle);
  }

  exitReason(): number {
    return this.#exit.getUint32(HV_VCPU_EXIT.reason, true);
  }

  syndrome(): bigint {
    return this.#exit.getBigUint64(HV_VCPU_EXIT.syndrome, true);
  }

  faultIpa(): bigint {
    return this.#exit.getBigUint64(HV_VCPU_EXIT.physicalAddress, true);
  }

  destroy(): number {
    return this.#sym.hv_vcpu_destroy(this.handle);
  }
}

function start(msg: WorkerStart): void {
  const ctl = new VcpuControl(msg.control);
  let hvf: HvfLibrary | undefined;
  let cpu: Cpu | undefined;
  let outcome: VcpuOutcome;
  try {
    hvf = openHvf(msg.libraryPath);
    cpu = Cpu.create(hvf.symbols);
    ctl.publishHandle(cpu.handle);
    setRegisters(cpu, msg.regs, msg.sysRegs);
    post({ type: "ready" });
    outcome = runLoop(cpu, ctl, msg);
  } catch (e) {
    outcome = { kind: "error", message: errorMessage(e) };
  }
  // No kick may reach the handle once it can be destroyed and reused.
  ctl.finish();
  if (cpu !== undefined) {
    const code = cpu.destroy();
    if (code !== HV_RETURN.HV_SUCCESS && outcome.kind !== "error") {
      outcome = {
        kind: "error",
        message: new HvfError("destroy the vCPU", "hv_vcpu_destroy", code)
          .message,
      };
    }
  }
  hvf?.close();
  post({ type: "outcome", outcome });
}

function setRegisters(
  cpu: Cpu,
  regs: Partial<Arm64Regs> | undefined,
  sysRegs: Arm64SysRegs,
): void {
  for (const [name, value] of Object.entries(sysRegs)) {
    if (value === undefined) continue;
    cpu.setSysReg(SYS_REGS[name as keyof Arm64SysRegs], value);
  }
  const all: Partial<Arm64Regs> = { pstate: PSTATE_EL1H_MASKED, ...regs };
  for (const [name, place] of CORE_REGS) {
    const value = all[name];
    if (value !== undefined) cpu.setCore(place, value);
  }
}

function runLoop(cpu: Cpu, ctl: VcpuControl, msg: WorkerStart): VcpuOutcome {
  /** Whether this thread holds the IRQ input up for a fired virtual timer. */
  let timerIrq = false;
  if (msg.poweredOff) {
    const stopped = waitForPowerOn(cpu, ctl);
    if (stopped) return stopped;
  }
  for (;;) {
    if (ctl.stopRequested()) return stoppedOutcome(cpu);
    if (timerIrq && !timerFires(cpu)) {
      cpu.setIrq(false);
      cpu.setVtimerMask(false);
      timerIrq = false;
    }
    const code = cpu.run();
    if (code !== HV_RETURN.HV_SUCCESS) {
      return {
        kind: "error",
        message: new HvfError("run the vCPU", "hv_vcpu_run", code).message,
      };
    }
    ctl.countExit();
    const reason = cpu.exitReason();
    switch (reason) {
      case HV_EXIT_REASON.CANCELED:
        // A stop request ends the run at the top of the loop; a kick that
        // raced the end of another request is a spurious wake-up.
        continue;
      case HV_EXIT_REASON.VTIMER_ACTIVATED:
        cpu.setIrq(true);
        timerIrq = true;
        continue;
      case HV_EXIT_REASON.EXCEPTION: {
        const ended = handleException(cpu, ctl, msg, timerIrq);
        if (ended) return ended;
        continue;
      }
      default:
        return { kind: "unsupported", exitReason: reason, regs: cpu.regs() };
    }
  }
}

/** Serves a synchronous exception; an outcome if it ends the run. */
function handleException(
  cpu: Cpu,
  ctl: VcpuControl,
  msg: WorkerStart,
  timerIrq: boolean,
): VcpuOutcome | undefined {
  const syndrome = cpu.syndrome();
  const trap = decodeSyndrome(syndrome);
  switch (trap.kind) {
    case "mmio":
      mmio(cpu, ctl, trap);
      cpu.advancePc();
      return undefined;
    case "hvc":
      return psci(cpu, ctl);
    case "smc": {
      const ended = psci(cpu, ctl);
      if (!ended) cpu.advancePc();
      return ended;
    }
    case "wfi": {
      cpu.advancePc();
      const generation = ctl.wakeGeneration();
      if (timerIrq || timerFires(cpu)) return undefined;
      if (!msg.gic && !timerArmed(cpu)) {
        return { kind: "hlt", regs: cpu.regs() };
      }
      ctl.sleep(generation, WFI_SLEEP_MS);
      return undefined;
    }
    case "wfe":
      cpu.advancePc();
      return undefined;
    case "abort-undecodable":
    case "other":
      return {
        kind: "unsupported",
        exitReason: HV_EXIT_REASON.EXCEPTION,
        syndrome,
        regs: cpu.regs(),
      };
    default: {
      const never: never = trap;
      throw new Error(`Unknown trap ${JSON.stringify(never)}`);
    }
  }
}

/** An MMIO access: the owner's handlers act as the device. */
function mmio(
  cpu: Cpu,
  ctl: VcpuControl,
  access: Extract<Arm64Trap, { kind: "mmio" }>,
): void {
  const data = new DataView(
    ctl.mmioBytes.buffer,
    ctl.mmioBytes.byteOffset,
    8,
  );
  const value = access.isWrite && access.reg !== XZR
    ? cpu.getReg(HV_REG.X0 + access.reg)
    : 0n;
  data.setBigUint64(0, value, true);
  ctl.setMmio(cpu.faultIpa(), access.size, access.isWrite);
  handOver(ctl);
  if (!access.isWrite && access.reg !== XZR) {
    cpu.setReg(
      HV_REG.X0 + access.reg,
      loadedValue(data.getBigUint64(0, true), access),
    );
  }
}

/** A PSCI call (function id in W0); an outcome if it ends the run. */
function psci(cpu: Cpu, ctl: VcpuControl): VcpuOutcome | undefined {
  const fn = Number(cpu.getReg(HV_REG.X0) & 0xffff_ffffn);
  /** SMC32 functions (bit 30 of the id clear) take W registers. */
  const arg = (i: number) => {
    const v = cpu.getReg(HV_REG.X0 + i);
    return (fn & SMC64_BIT) !== 0 ? v : v & 0xffff_ffffn;
  };
  switch (fn) {
    case PSCI_FN.VERSION:
      cpu.setReg(HV_REG.X0, BigInt(PSCI_VERSION_0_2));
      return undefined;
    case PSCI_FN.MIGRATE_INFO_TYPE:
      cpu.setReg(HV_REG.X0, BigInt(PSCI_TOS_NOT_PRESENT));
      return undefined;
    case PSCI_FN.SYSTEM_OFF:
      return {
        kind: "system-event",
        event: "shutdown",
        type: fn,
        regs: cpu.regs(),
      };
    case PSCI_FN.SYSTEM_RESET:
      return {
        kind: "system-event",
        event: "reset",
        type: fn,
        regs: cpu.regs(),
      };
    case PSCI_FN.CPU_ON:
    case PSCI_FN.CPU_ON_64:
      ctl.setRequest(ExitKind.CpuOn, [arg(1), arg(2), arg(3)]);
      handOver(ctl);
      cpu.setReg(HV_REG.X0, ctl.result());
      return undefined;
    case PSCI_FN.AFFINITY_INFO:
    case PSCI_FN.AFFINITY_INFO_64:
      ctl.setRequest(ExitKind.AffinityInfo, [arg(1), arg(2)]);
      handOver(ctl);
      cpu.setReg(HV_REG.X0, ctl.result());
      return undefined;
    case PSCI_FN.CPU_OFF:
      ctl.setPower(Power.Off);
      return waitForPowerOn(cpu, ctl);
    default:
      // CPU_SUSPEND and the rest of SMCCC: not offered.
      cpu.setReg(HV_REG.X0, psciResult(PSCI_RET.NOT_SUPPORTED));
      return undefined;
  }
}

/**
 * Waits, powered off, for a CPU_ON (then enters the guest where it says) or
 * a stop (then returns the outcome).
 */
function waitForPowerOn(cpu: Cpu, ctl: VcpuControl): VcpuOutcome | undefined {
  for (;;) {
    const generation = ctl.wakeGeneration();
    if (ctl.stopRequested()) return stoppedOutcome(cpu);
    if (ctl.power() === Power.On) break;
    ctl.sleep(generation);
  }
  const { pc, context } = ctl.entry();
  cpu.setReg(HV_REG.PC, pc);
  cpu.setReg(HV_REG.X0, context);
  cpu.setReg(HV_REG.CPSR, PSTATE_EL1H_MASKED);
  return undefined;
}

/** The virtual timer is enabled, unmasked and its condition met. */
function timerFires(cpu: Cpu): boolean {
  const ctl = cpu.getSysReg(SYS_REGS.cntv_ctl_el0);
  return (ctl & (CNTV_CTL.ENABLE | CNTV_CTL.IMASK | CNTV_CTL.ISTATUS)) ===
    (CNTV_CTL.ENABLE | CNTV_CTL.ISTATUS);
}

/** The virtual timer is enabled and unmasked: it can wake a WFI. */
function timerArmed(cpu: Cpu): boolean {
  const ctl = cpu.getSysReg(SYS_REGS.cntv_ctl_el0);
  return (ctl & (CNTV_CTL.ENABLE | CNTV_CTL.IMASK)) === CNTV_CTL.ENABLE;
}

function stoppedOutcome(cpu: Cpu): VcpuOutcome {
  const atMs = performance.timeOrigin + performance.now();
  return { kind: "stopped", atMs, regs: cpu.regs() };
}

/** Lets the owner handle the exit in the block, and waits for its answer. */
function handOver(ctl: VcpuControl): void {
  ctl.setState(CtlState.Exit);
  // The owner usually answers within microseconds: poll before sleeping.
  for (let i = 0; i < HANDOVER_POLLS; i++) {
    if (ctl.state() !== CtlState.Exit) break;
  }
  ctl.waitWhileState(CtlState.Exit);
  ctl.setState(CtlState.Running);
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function post(reply: WorkerReply): void {
  self.postMessage(reply);
}

self.onmessage = (e: MessageEvent<WorkerStart>) => start(e.data);
