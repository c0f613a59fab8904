/**
 * The Hypervisor.framework VM of this process: guest RAM mapped with
 * `hv_vm_map`, the optional in-framework GICv3, and the vCPUs it starts.
 *
 * Unrun on a Mac: see `vcpu_worker.ts`.
 *
 * @module
 */

import type { HvVcpu, HvVm, VcpuInit } from "../hv.ts";
import { GuestMemory } from "../memory.ts";
import {
  check,
  type HostMemory,
  HV_MEMORY,
  HVF_PAGE_BYTES,
  HvfError,
  type HvfLibrary,
} from "./ffi.ts";
import {
  defaultMpidr,
  MPIDR_AFFINITY_MASK,
  PSCI_AFFINITY,
  PSCI_RET,
  psciResult,
} from "./exits.ts";
import { HvfVcpu, type PsciRequest } from "./vcpu.ts";
import { ExitKind, Power, VcpuControl } from "./vcpu_protocol.ts";

/** INTID of SPI 0 (GICv3): `setIrqLine(gsi)` drives INTID 32 + gsi. */
const SPI_INTID_BASE = 32;

/** What {@linkcode HvfVm} is made with (by `HvfHypervisor.createVm`). */
export interface HvfVmOptions {
  /** The framework, opened on this thread. */
  hvf: HvfLibrary;
  /** Its path, for the vCPU Workers to open. */
  libraryPath: string;
  /** Where guest RAM comes from. */
  host: HostMemory;
  /** Whether `hv_gic_create` made the VM's GICv3. */
  gic: boolean;
  /** Called once the VM is destroyed. */
  onClose(): void;
}

/** A VM made by `HvfHypervisor.createVm()`. */
export class HvfVm implements HvVm {
  #options: HvfVmOptions;
  #regions: { ptr: Deno.PointerObject; base: bigint; size: bigint }[] = [];
  #memory = new GuestMemory([]);
  /** Every memory object handed out, cut off from RAM when the VM closes. */
  #memories: GuestMemory[] = [];
  /** Every vCPU started or starting, by index, with its MPIDR affinity. */
  #cpus = new Map<number, { control: VcpuControl; mpidr: bigint }>();
  #vcpus: HvfVcpu[] = [];
  #starting = new Set<Promise<HvfVcpu>>();
  #closed = false;

  /** Takes over the process's VM, which `hv_vm_create` has just made. */
  constructor(options: HvfVmOptions) {
    this.#options = options;
  }

  /** Guest RAM added so far. */
  get memory(): GuestMemory {
    return this.#memory;
  }

  /**
   * Maps `size` bytes of zeroed host memory and gives it to the guest at
   * `base` (`hv_vm_map`, read, write and execute). Both must be multiples
   * of 16 KiB, the page size of Apple silicon. The mapping lives until
   * `close()`.
   */
  addMemory(base: bigint, size: bigint): void {
    this.#checkOpen();
    if (size <= 0n || base % HVF_PAGE_BYTES !== 0n || size % HVF_PAGE_BYTES) {
      throw new Error(
        `Cannot add guest RAM at 0x${
          base.toString(16)
        } (${size} bytes): base and size must be multiples of 16 KiB`,
      );
    }
    const { hvf, host } = this.#options;
    const ptr = host.map(size);
    const code = hvf.symbols.hv_vm_map(
      ptr,
      base,
      size,
      HV_MEMORY.READ | HV_MEMORY.WRITE | HV_MEMORY.EXEC,
    );
    if (code !== 0) {
      host.unmap(ptr, size);
      throw new HvfError("map guest memory", "hv_vm_map", code);
    }
    this.#regions.push({ ptr, base, size });
    const bytes = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(ptr, Number(size)),
    );
    this.#memory = new GuestMemory([...this.#memory.regions, { base, bytes }]);
    this.#memories.push(this.#memory);
  }

  /**
   * Starts vCPU `id` in its own Worker with `init.arm64`. A vCPU started
   * `poweredOff` waits for a PSCI CPU_ON naming its MPIDR.
   */
  async startVcpu(id: number, init: VcpuInit): Promise<HvVcpu> {
    this.#checkOpen();
    if (init.regs !== undefined || init.sregs !== undefined) {
      throw new Error(
        `Cannot start vCPU ${id}: it was given x86_64 registers, and a Hypervisor.framework VM is arm64 (use init.arm64)`,
      );
    }
    if (this.#cpus.has(id)) {
      throw new Error(`Cannot start vCPU ${id}: it was started already`);
    }
    const arm64 = init.arm64 ?? {};
    const mpidr = arm64.sysRegs?.mpidr_el1 ?? defaultMpidr(id);
    const control = VcpuControl.create();
    control.setPower(arm64.poweredOff ? Power.Off : Power.On);
    this.#cpus.set(id, { control, mpidr: mpidr & MPIDR_AFFINITY_MASK });
    const starting = HvfVcpu.start({
      control,
      start: {
        libraryPath: this.#options.libraryPath,
        id,
        regs: arm64.regs,
        sysRegs: { ...arm64.sysRegs, mpidr_el1: mpidr },
        poweredOff: arm64.poweredOff ?? false,
        gic: this.#options.gic,
      },
      handlers: init.handlers ?? {},
      psci: (request) => this.#psci(request),
      exitVcpu: (handle) => this.#exitVcpu(handle),
    });
    this.#starting.add(starting);
    let vcpu: HvfVcpu;
    try {
      vcpu = await starting;
    } finally {
      this.#starting.delete(starting);
    }
    if (this.#closed) {
      await vcpu.stop();
      throw new Error("Cannot start the vCPU: the VM was closed meanwhile");
    }
    this.#vcpus.push(vcpu);
    return vcpu;
  }

  /**
   * Sets SPI `gsi` (INTID 32 + `gsi`) of the VM's GICv3 to `level`
   * (`hv_gic_set_spi`); needs `createVm({ irqchip: true })`.
   */
  setIrqLine(gsi: number, level: 0 | 1): void {
    this.#checkOpen();
    const gic = this.#options.gic ? this.#options.hvf.gic : undefined;
    if (gic === undefined) {
      throw new Error(
        `Cannot set interrupt line ${gsi}: the VM has no GIC (create it with irqchip: true, on macOS 15 or later)`,
      );
    }
    check(
      `set interrupt line ${gsi}`,
      "hv_gic_set_spi",
      gic.hv_gic_set_spi(SPI_INTID_BASE + gsi, level === 1),
    );
    // A vCPU sleeping in WFI looks again at once.
    for (const { control } of this.#cpus.values()) control.wake();
  }

  /**
   * Stops every vCPU (each Worker destroys its own), unmaps guest memory and
   * destroys the VM (`hv_vm_destroy`). Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const starting = await Promise.allSettled([...this.#starting]);
    for (const s of starting) {
      if (s.status === "fulfilled") await s.value.stop();
    }
    await Promise.all(this.#vcpus.map((v) => v.stop()));
    const { hvf, host } = this.#options;
    for (const m of this.#memories) m.revoke();
    const failures: HvfError[] = [];
    for (const r of this.#regions) {
      const code = hvf.symbols.hv_vm_unmap(r.base, r.size);
      if (code !== 0) {
        failures.push(new HvfError("unmap guest memory", "hv_vm_unmap", code));
      }
      host.unmap(r.ptr, r.size);
    }
    this.#regions = [];
    const code = hvf.symbols.hv_vm_destroy();
    this.#options.onClose();
    if (code !== 0) {
      failures.push(new HvfError("destroy the VM", "hv_vm_destroy", code));
    }
    if (failures.length > 0) throw failures[0];
  }

  /** Answers CPU_ON and AFFINITY_INFO from the vCPUs' power states. */
  #psci(request: PsciRequest): bigint {
    const [target, arg1, arg2] = request.args;
    const cpu = [...this.#cpus.values()].find((c) =>
      c.mpidr === (target & MPIDR_AFFINITY_MASK)
    );
    if (cpu === undefined) return psciResult(PSCI_RET.INVALID_PARAMS);
    if (request.kind === ExitKind.CpuOn) {
      return psciResult(
        cpu.control.powerOn(arg1, arg2)
          ? PSCI_RET.SUCCESS
          : PSCI_RET.ALREADY_ON,
      );
    }
    // AFFINITY_INFO: only level 0, a single CPU, is described.
    if (arg1 !== 0n) return psciResult(PSCI_RET.INVALID_PARAMS);
    const power = cpu.control.power();
    return BigInt(
      power === Power.On
        ? PSCI_AFFINITY.ON
        : power === Power.Pending
        ? PSCI_AFFINITY.ON_PENDING
        : PSCI_AFFINITY.OFF,
    );
  }

  #exitVcpu(handle: bigint): void {
    // A failure here means the vCPU is gone already: nothing to stop.
    this.#options.hvf.symbols.hv_vcpus_exit(BigUint64Array.of(handle), 1);
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("Cannot use the VM: it is closed");
  }
}
