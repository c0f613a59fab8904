/**
 * A KVM virtual machine (`KVM_CREATE_VM`'s fd): memory slots, the in-kernel
 * interrupt controllers (x86_64: PIC, IOAPIC, LAPIC and PIT; arm64: a
 * GICv3), interrupt lines, and the vCPUs it starts.
 *
 * An arm64 VM follows the vGIC's rule (Documentation/virt/kvm/devices/
 * arm-vgic-v3.rst, `KVM_DEV_ARM_VGIC_CTRL_INIT`): the GIC is initialized
 * after every vCPU was created and before any runs, and KVM refuses new
 * vCPUs from then on. So its vCPUs start in this order: the secondaries,
 * then the boot vCPU (vCPU 0), and none after it. Each one's Worker, once
 * it has set up its vCPU, waits at a gate (`Ctl.Go` of `vcpu_protocol.ts`);
 * when vCPU 0 and every vCPU started before it are set up, the VM
 * initializes the GIC and opens all the gates at once.
 *
 * @module
 */

import {
  libc,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from "../../../ffi/libc.ts";
import {
  KVM,
  KVM_ARM64,
  KVM_ARM_IRQ,
  KVM_ARM_VCPU_FEATURE,
  kvm_create_device,
  KVM_DEV_ARM_VGIC,
  KVM_DEV_TYPE_ARM_VGIC_V3,
  kvm_device_attr,
  kvm_irq_level,
  kvm_pit_config,
  KVM_PIT_SPEAKER_DUMMY,
  kvm_userspace_memory_region,
  kvm_vcpu_init,
  KVM_VGIC_V3_ADDR_TYPE,
  readField,
  writeStruct,
} from "../../../ffi/kvm.ts";
import type { HvVcpu, HvVm, VcpuInit } from "../hv.ts";
import { GuestMemory } from "../memory.ts";
import { KvmVcpu, VcpuThreadPool } from "./vcpu.ts";

/** The architectures of KVM hosts initx runs on, as `Deno.build.arch` says. */
export type KvmArch = "x86_64" | "aarch64";

/**
 * This host's architecture.
 *
 * @example
 * ```ts
 * import { hostKvmArch } from "./vm.ts";
 * console.log(hostKvmArch()); // "x86_64" or "aarch64"
 * ```
 */
export function hostKvmArch(): KvmArch {
  const arch: string = Deno.build.arch;
  if (arch !== "x86_64" && arch !== "aarch64") {
    throw new Error(
      `Cannot use KVM on this host: initx supports x86_64 and aarch64, not ${arch}`,
    );
  }
  return arch;
}

/**
 * Where an arm64 VM's GICv3 goes unless told otherwise: the distributor and
 * redistributor bases of initx's arm64 machine (`ARM64_LAYOUT` in
 * src/boot/arm64_fdt.ts, which this layer may not import), QEMU `virt`'s
 * too. They must match the device tree the guest is given.
 */
export const KVM_DEFAULT_GIC = {
  /** GICD: 64 KiB (`KVM_VGIC_V3_DIST_SIZE`). */
  distributorBase: 0x0800_0000n,
  /** GICR: 128 KiB per vCPU from here, vCPU 0 first (`KVM_VGIC_V3_REDIST_SIZE`). */
  redistributorBase: 0x080a_0000n,
} as const;

/** Where an arm64 VM's GICv3 goes and how many interrupts it has. */
export interface KvmGicOptions {
  /** Distributor base (default {@linkcode KVM_DEFAULT_GIC}); 64 KiB aligned. */
  distributorBase?: bigint;
  /** Redistributor region base (default {@linkcode KVM_DEFAULT_GIC}); 64 KiB aligned. */
  redistributorBase?: bigint;
  /**
   * INTIDs, the 32 private ones included: a multiple of 32 from 64 to 1024
   * (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`). Default: KVM's, 256.
   */
  nrIrqs?: number;
}

/** INTID of SPI 0 (GICv3): `setIrqLine(gsi)` drives INTID 32 + gsi. */
const SPI_INTID_BASE = 32;
/** The highest SPI INTID of a GICv3. */
const SPI_INTID_MAX = 1019;

/** Where KVM's three-page TSS goes: just below the 4 GiB boundary's BIOS area. */
export const TSS_ADDRESS = 0xfffb_d000n;
/** Where KVM's identity-map page goes: the page before the TSS. */
export const IDENTITY_MAP_ADDRESS = 0xfffb_c000n;
/**
 * The boot vCPU (BSP): vCPU 0 unless `KVM_SET_BOOT_CPU_ID` names another
 * (Documentation/virt/kvm/api.rst, KVM_SET_BOOT_CPU_ID), which initx never
 * calls.
 */
const BOOT_VCPU_ID = 0;

/** Options of {@linkcode KvmVm}. */
export interface KvmVmOptions {
  /** The host's architecture (default {@linkcode hostKvmArch}). */
  arch?: KvmArch;
  /**
   * Create the in-kernel interrupt controllers (default false): the
   * PIC/IOAPIC/LAPIC and the PIT on x86_64, a GICv3 on arm64.
   */
  irqchip?: boolean;
  /** Where the arm64 GICv3 goes (with `irqchip`; ignored on x86_64). */
  gic?: KvmGicOptions;
  /** `KVM_GET_VCPU_MMAP_SIZE`. */
  mmapSize: number;
  /** The vCPUs' CPUID (`guestCpuid()` of `cpuid.ts`) as `kvm_cpuid2` bytes. */
  cpuid?: Uint8Array;
  /**
   * Where the vCPUs' threads come from (default: a pool of the VM's own,
   * closed with it).
   */
  threads?: VcpuThreadPool;
}

/** A VM made by `Kvm.createVm()`. */
export class KvmVm implements HvVm {
  #fd: number;
  #options: KvmVmOptions;
  #slots: { ptr: Deno.PointerObject; size: bigint }[] = [];
  #memory = new GuestMemory([]);
  /** Every memory object handed out, cut off from RAM when the VM closes. */
  #memories: GuestMemory[] = [];
  #vcpus: KvmVcpu[] = [];
  #starting = new Set<Promise<KvmVcpu>>();
  #threads: VcpuThreadPool;
  #ownedThreads: VcpuThreadPool | undefined;
  /**
   * Threads this VM took ahead for its next vCPUs: the first one when the VM
   * was made, then one for the boot vCPU while the others start.
   */
  #spares: { worker: Worker; failed: boolean }[] = [];
  #bootVcpuStarted = false;
  #closed = false;
  #arch: KvmArch;
  /** arm64: `KVM_ARM_PREFERRED_TARGET`, every vCPU's `kvm_vcpu_init.target`. */
  #target = 0;
  /** arm64 with `irqchip`: the GICv3 device's fd, and whether it is initialized. */
  #gic: { fd: number; initialized: boolean } | undefined;
  /** arm64: every vCPU start so far, whose gates vCPU 0's start opens. */
  #gated: Promise<KvmVcpu>[] = [];

  /**
   * Takes ownership of the VM fd `fd`, and starts a thread for the first vCPU
   * right away: it loads while the caller adds memory and builds its boot
   * plan.
   */
  constructor(fd: number, options: KvmVmOptions) {
    this.#fd = fd;
    this.#options = options;
    this.#threads = options.threads ??
      (this.#ownedThreads = new VcpuThreadPool());
    this.#arch = options.arch ?? hostKvmArch();
    const c = libc();
    try {
      if (this.#arch === "aarch64") this.#setUpArm64(options);
      else this.#setUpX86(options);
    } catch (e) {
      if (this.#gic !== undefined) c.close(this.#gic.fd);
      c.close(fd);
      this.#ownedThreads?.close();
      throw e;
    }
    this.#reserveThread();
  }

  #setUpX86(options: KvmVmOptions): void {
    const c = libc();
    c.ioctl(this.#fd, KVM.SET_TSS_ADDR, TSS_ADDRESS, "KVM_SET_TSS_ADDR");
    const ident = new BigUint64Array([IDENTITY_MAP_ADDRESS]);
    c.ioctl(
      this.#fd,
      KVM.SET_IDENTITY_MAP_ADDR,
      Deno.UnsafePointer.of(ident),
      "KVM_SET_IDENTITY_MAP_ADDR",
    );
    if (!options.irqchip) return;
    c.ioctl(this.#fd, KVM.CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
    const pit = new Uint8Array(kvm_pit_config.size);
    writeStruct(new DataView(pit.buffer), kvm_pit_config, {
      flags: KVM_PIT_SPEAKER_DUMMY,
    });
    c.ioctl(
      this.#fd,
      KVM.CREATE_PIT2,
      Deno.UnsafePointer.of(pit),
      "KVM_CREATE_PIT2",
    );
  }

  /**
   * The preferred target for the vCPUs, and with `irqchip` the GICv3
   * (`KVM_CREATE_DEVICE`) with its bases set; it is initialized when the
   * boot vCPU starts.
   */
  #setUpArm64(options: KvmVmOptions): void {
    const c = libc();
    const init = new Uint8Array(kvm_vcpu_init.size);
    c.ioctl(
      this.#fd,
      KVM_ARM64.ARM_PREFERRED_TARGET,
      Deno.UnsafePointer.of(init),
      "KVM_ARM_PREFERRED_TARGET",
    );
    this.#target = Number(
      readField(new DataView(init.buffer), kvm_vcpu_init, "target"),
    );
    if (!options.irqchip) return;
    const create = new Uint8Array(kvm_create_device.size);
    const view = new DataView(create.buffer);
    writeStruct(view, kvm_create_device, { type: KVM_DEV_TYPE_ARM_VGIC_V3 });
    try {
      c.ioctl(
        this.#fd,
        KVM.CREATE_DEVICE,
        Deno.UnsafePointer.of(create),
        "KVM_CREATE_DEVICE",
      );
    } catch (e) {
      throw new Error(
        `Cannot create the VM's GICv3: ${
          (e as Error).message
        }; the host's interrupt controller may lack a GICv3 CPU interface KVM can virtualize`,
        { cause: e },
      );
    }
    this.#gic = {
      fd: Number(readField(view, kvm_create_device, "fd")),
      initialized: false,
    };
    const gic = options.gic ?? {};
    this.#setGicAttr(
      KVM_DEV_ARM_VGIC.GRP_ADDR,
      KVM_VGIC_V3_ADDR_TYPE.DIST,
      BigUint64Array.of(
        gic.distributorBase ?? KVM_DEFAULT_GIC.distributorBase,
      ),
    );
    this.#setGicAttr(
      KVM_DEV_ARM_VGIC.GRP_ADDR,
      KVM_VGIC_V3_ADDR_TYPE.REDIST,
      BigUint64Array.of(
        gic.redistributorBase ?? KVM_DEFAULT_GIC.redistributorBase,
      ),
    );
    if (gic.nrIrqs !== undefined) {
      this.#setGicAttr(
        KVM_DEV_ARM_VGIC.GRP_NR_IRQS,
        0,
        Uint32Array.of(gic.nrIrqs),
      );
    }
  }

  /** `KVM_SET_DEVICE_ATTR` on the GIC; `value` is what `addr` points to. */
  #setGicAttr(
    group: number,
    attr: number,
    value?: BigUint64Array | Uint32Array,
  ): void {
    const buf = new Uint8Array(kvm_device_attr.size);
    writeStruct(new DataView(buf.buffer), kvm_device_attr, {
      group,
      attr,
      addr: value === undefined
        ? 0n
        : Deno.UnsafePointer.value(Deno.UnsafePointer.of(value)),
    });
    libc().ioctl(
      this.#gic!.fd,
      KVM.SET_DEVICE_ATTR,
      Deno.UnsafePointer.of(buf),
      `KVM_SET_DEVICE_ATTR group ${group} attr ${attr}`,
    );
  }

  /** Guest RAM added so far. */
  get memory(): GuestMemory {
    return this.#memory;
  }

  /** The VM's fd, for device setups that need it (ioeventfd, irqfd). */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Maps `size` bytes of anonymous memory and registers it as guest RAM at
   * `base` (`KVM_SET_USER_MEMORY_REGION`). The mapping lives until `close()`.
   */
  addMemory(base: bigint, size: bigint): void {
    this.#checkOpen();
    const c = libc();
    const ptr = c.mmap(
      size,
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
    );
    const region = new Uint8Array(kvm_userspace_memory_region.size);
    writeStruct(new DataView(region.buffer), kvm_userspace_memory_region, {
      slot: this.#slots.length,
      flags: 0,
      guest_phys_addr: base,
      memory_size: size,
      userspace_addr: Deno.UnsafePointer.value(ptr),
    });
    try {
      c.ioctl(
        this.#fd,
        KVM.SET_USER_MEMORY_REGION,
        Deno.UnsafePointer.of(region),
        "KVM_SET_USER_MEMORY_REGION",
      );
    } catch (e) {
      c.munmap(ptr, size);
      throw e;
    }
    this.#slots.push({ ptr, size });
    const bytes = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(ptr, Number(size)),
    );
    this.#memory = new GuestMemory([...this.#memory.regions, { base, bytes }]);
    this.#memories.push(this.#memory);
  }

  /**
   * Starts vCPU `id` in its own Worker. Starts may overlap: their threads
   * load in parallel.
   *
   * An x86 boot starts the other vCPUs before the boot vCPU, so that they
   * exist (waiting in the in-kernel LAPIC) when it sends INIT/SIPI: until the
   * boot vCPU has started, each start also takes a thread ahead for the next.
   *
   * On arm64 that order is the rule (see the module doc): a vCPU started
   * before vCPU 0 resolves once set up and waits at its gate; vCPU 0's start
   * waits for every earlier one to be set up, initializes the GIC, opens
   * all the gates and resolves. A start after vCPU 0's is refused.
   */
  async startVcpu(id: number, init: VcpuInit): Promise<HvVcpu> {
    this.#checkOpen();
    this.#checkInit(id, init);
    const starting = this.#arch === "aarch64"
      ? this.#startArm64(id, init)
      : KvmVcpu.start(this.#fd, id, {
        mmapSize: this.#options.mmapSize,
        cpuid: this.#options.cpuid,
        init,
        gateOpen: true,
        worker: this.#takeThread(),
        threads: this.#threads,
      });
    if (id === BOOT_VCPU_ID) this.#bootVcpuStarted = true;
    else if (!this.#bootVcpuStarted) this.#reserveThread();
    this.#starting.add(starting);
    let vcpu: KvmVcpu;
    try {
      vcpu = await starting;
    } finally {
      this.#starting.delete(starting);
    }
    if (this.#closed) {
      // close() ran while this vCPU was starting: it must not outlive the VM.
      await vcpu.stop();
      throw new Error("Cannot start the vCPU: the VM was closed meanwhile");
    }
    this.#vcpus.push(vcpu);
    return vcpu;
  }

  /** Refuses registers of the other architecture, and late arm64 vCPUs. */
  #checkInit(id: number, init: VcpuInit): void {
    if (this.#arch === "x86_64") {
      if (init.arm64 !== undefined) {
        throw new Error(
          `Cannot start vCPU ${id}: it was given arm64 registers, and this KVM VM is x86_64`,
        );
      }
      return;
    }
    if (init.regs !== undefined || init.sregs !== undefined) {
      throw new Error(
        `Cannot start vCPU ${id}: it was given x86_64 registers, and this KVM VM is arm64 (use init.arm64)`,
      );
    }
    if (this.#bootVcpuStarted) {
      throw new Error(
        `Cannot start vCPU ${id}: vCPU ${BOOT_VCPU_ID} has started, and an arm64 VM's vCPUs must all start before it (KVM refuses new vCPUs once the GIC is initialized, which vCPU ${BOOT_VCPU_ID}'s start does)`,
      );
    }
  }

  /**
   * An arm64 vCPU's start: gated until vCPU 0's start opens the gates, which
   * for vCPU 0 is this very start.
   */
  async #startArm64(id: number, init: VcpuInit): Promise<KvmVcpu> {
    const arm64 = init.arm64 ?? {};
    const starting = KvmVcpu.start(this.#fd, id, {
      mmapSize: this.#options.mmapSize,
      init,
      arm64: {
        target: this.#target,
        features: (1 << KVM_ARM_VCPU_FEATURE.PSCI_0_2) |
          (arm64.poweredOff ? 1 << KVM_ARM_VCPU_FEATURE.POWER_OFF : 0),
        regs: arm64.regs,
        sysRegs: arm64.sysRegs,
      },
      gateOpen: false,
      worker: this.#takeThread(),
      threads: this.#threads,
    });
    if (id !== BOOT_VCPU_ID) {
      this.#gated.push(starting);
      return await starting;
    }
    const earlier = this.#gated.splice(0);
    const vcpu = await starting;
    const others = await Promise.allSettled(earlier);
    // close() stops it (and the others) and startVcpu() reports the close.
    if (this.#closed) return vcpu;
    try {
      this.#initGic();
    } catch (e) {
      await vcpu.stop();
      throw e;
    }
    for (const o of others) if (o.status === "fulfilled") o.value.openGate();
    vcpu.openGate();
    return vcpu;
  }

  /**
   * `KVM_DEV_ARM_VGIC_CTRL_INIT`: after every vCPU was created, before any
   * runs.
   */
  #initGic(): void {
    if (this.#gic === undefined || this.#gic.initialized) return;
    try {
      this.#setGicAttr(KVM_DEV_ARM_VGIC.GRP_CTRL, KVM_DEV_ARM_VGIC.CTRL_INIT);
    } catch (e) {
      throw new Error(
        `Cannot initialize the VM's GICv3: ${
          (e as Error).message
        }; check the distributor and redistributor bases against the RAM and the vCPU count`,
        { cause: e },
      );
    }
    this.#gic.initialized = true;
  }

  /**
   * Sets interrupt line `gsi` to `level` (`KVM_IRQ_LINE`); needs the
   * irqchip. On x86_64 `gsi` is a GSI of the in-kernel IOAPIC/PIC. On arm64
   * it is SPI `gsi` of the GICv3, INTID 32 + `gsi` (KVM takes the INTID in
   * `irq_id`, with `irq_type` `KVM_ARM_IRQ_TYPE_SPI`), and it works once
   * vCPU 0 has started, which initializes the GIC.
   */
  setIrqLine(gsi: number, level: 0 | 1): void {
    this.#checkOpen();
    let irq = gsi;
    if (this.#arch === "aarch64") {
      const intid = SPI_INTID_BASE + gsi;
      if (!Number.isInteger(gsi) || gsi < 0 || intid > SPI_INTID_MAX) {
        throw new Error(
          `Cannot set interrupt line ${gsi}: a GICv3 SPI is 0 to ${
            SPI_INTID_MAX - SPI_INTID_BASE
          }`,
        );
      }
      if (this.#gic === undefined) {
        throw new Error(
          `Cannot set interrupt line ${gsi}: the VM has no GIC (create it with irqchip: true)`,
        );
      }
      if (!this.#gic.initialized) {
        throw new Error(
          `Cannot set interrupt line ${gsi}: the GIC is initialized when vCPU ${BOOT_VCPU_ID} starts, and it has not`,
        );
      }
      irq = ((KVM_ARM_IRQ.TYPE_SPI << KVM_ARM_IRQ.TYPE_SHIFT) |
        (intid & KVM_ARM_IRQ.NUM_MASK)) >>> 0;
    }
    const buf = new Uint8Array(kvm_irq_level.size);
    writeStruct(new DataView(buf.buffer), kvm_irq_level, { irq, level });
    libc().ioctl(
      this.#fd,
      KVM.IRQ_LINE,
      Deno.UnsafePointer.of(buf),
      "KVM_IRQ_LINE",
    );
  }

  /** Stops every vCPU, unmaps guest memory and closes the VM fd. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const starting = await Promise.allSettled([...this.#starting]);
    for (const s of starting) {
      if (s.status === "fulfilled") await s.value.stop();
    }
    await Promise.all(this.#vcpus.map((v) => v.stop()));
    const c = libc();
    for (const m of this.#memories) m.revoke();
    for (const s of this.#slots) c.munmap(s.ptr, s.size);
    this.#slots = [];
    if (this.#gic !== undefined) c.close(this.#gic.fd);
    c.close(this.#fd);
    for (const s of this.#spares.splice(0)) {
      if (!s.failed) this.#threads.give(s.worker);
    }
    this.#ownedThreads?.close();
  }

  /** Takes a thread for a later vCPU now, so that it loads meanwhile. */
  #reserveThread(): void {
    const spare = { worker: this.#threads.take(), failed: false };
    // Until a vCPU has it, a thread that fails to load is only dropped.
    spare.worker.onerror = (e) => {
      e.preventDefault();
      spare.failed = true;
      spare.worker.terminate();
    };
    this.#spares.push(spare);
  }

  /** A reserved thread that has not failed, else one from the pool. */
  #takeThread(): Worker {
    for (let s = this.#spares.shift(); s; s = this.#spares.shift()) {
      if (s.failed) continue;
      s.worker.onerror = null;
      return s.worker;
    }
    return this.#threads.take();
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("Cannot use the VM: it is closed");
  }
}
