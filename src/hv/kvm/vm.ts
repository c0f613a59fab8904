/**
 * A KVM virtual machine (`KVM_CREATE_VM`'s fd): memory slots, the in-kernel
 * irqchip and PIT, interrupt lines, and the vCPUs it starts.
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
  kvm_irq_level,
  kvm_pit_config,
  KVM_PIT_SPEAKER_DUMMY,
  kvm_userspace_memory_region,
  writeStruct,
} from "../../../ffi/kvm.ts";
import type { HvVcpu, HvVm, VcpuInit } from "../hv.ts";
import { GuestMemory } from "../memory.ts";
import { KvmVcpu, VcpuThreadPool } from "./vcpu.ts";

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
  /** Create the in-kernel PIC/IOAPIC/LAPIC and the PIT (default false). */
  irqchip?: boolean;
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
    const c = libc();
    try {
      c.ioctl(fd, KVM.SET_TSS_ADDR, TSS_ADDRESS, "KVM_SET_TSS_ADDR");
      const ident = new BigUint64Array([IDENTITY_MAP_ADDRESS]);
      c.ioctl(
        fd,
        KVM.SET_IDENTITY_MAP_ADDR,
        Deno.UnsafePointer.of(ident),
        "KVM_SET_IDENTITY_MAP_ADDR",
      );
      if (options.irqchip) {
        c.ioctl(fd, KVM.CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
        const pit = new Uint8Array(kvm_pit_config.size);
        writeStruct(new DataView(pit.buffer), kvm_pit_config, {
          flags: KVM_PIT_SPEAKER_DUMMY,
        });
        c.ioctl(
          fd,
          KVM.CREATE_PIT2,
          Deno.UnsafePointer.of(pit),
          "KVM_CREATE_PIT2",
        );
      }
    } catch (e) {
      c.close(fd);
      this.#ownedThreads?.close();
      throw e;
    }
    this.#reserveThread();
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
   */
  async startVcpu(id: number, init: VcpuInit): Promise<HvVcpu> {
    this.#checkOpen();
    if (init.arm64 !== undefined) {
      throw new Error(
        `Cannot start vCPU ${id}: it was given arm64 registers, and this KVM VM is x86_64`,
      );
    }
    const starting = KvmVcpu.start(this.#fd, id, {
      mmapSize: this.#options.mmapSize,
      cpuid: this.#options.cpuid,
      init,
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

  /** Sets interrupt line `gsi` to `level` (`KVM_IRQ_LINE`); needs the irqchip. */
  setIrqLine(gsi: number, level: 0 | 1): void {
    this.#checkOpen();
    const buf = new Uint8Array(kvm_irq_level.size);
    writeStruct(new DataView(buf.buffer), kvm_irq_level, { irq: gsi, level });
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
