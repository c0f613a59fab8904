/**
 * `/dev/kvm`: the KVM system fd. It checks the API version, answers
 * capability queries, reports the supported CPUID (x86_64), and makes VMs
 * for the host's architecture: x86_64 or arm64.
 *
 * @module
 */

import { Errno, libc, O_CLOEXEC, O_RDWR, OsError } from "../../../ffi/libc.ts";
import {
  KVM,
  KVM_API_VERSION,
  KVM_CAP,
  kvm_cpuid2,
  kvm_cpuid_entry2,
  writeStruct,
} from "../../../ffi/kvm.ts";
import type { Hypervisor } from "../hv.ts";
import { encodeCpuid, guestCpuid, parseCpuid } from "./cpuid.ts";
import { hostKvmArch, type KvmArch, type KvmGicOptions, KvmVm } from "./vm.ts";
import { VcpuThreadPool } from "./vcpu.ts";

/** The device node of KVM. */
export const KVM_DEVICE = "/dev/kvm";

/** Most CPUID leaves asked for; KVM answers E2BIG if it has more. */
const MAX_CPUID_ENTRIES = 256;

/** Options of {@linkcode Kvm.createVm}. */
export interface KvmCreateVmOptions {
  /**
   * Create the in-kernel interrupt controllers: PIC, IOAPIC, LAPIC and PIT
   * on x86_64, a GICv3 on arm64 (default false).
   */
  irqchip?: boolean;
  /**
   * arm64: where the GICv3 goes (default `KVM_DEFAULT_GIC` of `vm.ts`),
   * which must match the guest's device tree.
   */
  gic?: KvmGicOptions;
}

/**
 * The KVM hypervisor (`/dev/kvm`).
 *
 * @example
 * ```ts ignore
 * import { Kvm } from "./system.ts";
 * const kvm = Kvm.open();
 * const vm = kvm.createVm();
 * vm.addMemory(0n, 0x10000n);
 * await vm.close();
 * kvm.close();
 * ```
 */
export class Kvm implements Hypervisor {
  /** The host's architecture, which every VM made here has. */
  readonly arch: KvmArch;
  #fd: number;
  #cpuid: Uint8Array | undefined;
  #mmapSize: number;
  /**
   * The vCPU threads of every VM made here: a thread whose vCPU has ended
   * serves the next VM's, which then starts without waiting for a new one.
   */
  #threads = new VcpuThreadPool();

  private constructor(fd: number, arch: KvmArch) {
    this.#fd = fd;
    this.arch = arch;
    this.#mmapSize = libc().ioctl(
      fd,
      KVM.GET_VCPU_MMAP_SIZE,
      0,
      "KVM_GET_VCPU_MMAP_SIZE",
    );
  }

  /** Opens `/dev/kvm` and checks the API version; clear errors otherwise. */
  static open(path = KVM_DEVICE): Kvm {
    const c = libc();
    let fd: number;
    try {
      fd = c.open(path, O_RDWR | O_CLOEXEC);
    } catch (e) {
      throw explainOpenError(path, e);
    }
    try {
      const version = c.ioctl(
        fd,
        KVM.GET_API_VERSION,
        0,
        "KVM_GET_API_VERSION",
      );
      if (version !== KVM_API_VERSION) {
        throw new Error(
          `Cannot use ${path}: KVM API version ${version}, initx needs ${KVM_API_VERSION}; upgrade the host kernel`,
        );
      }
      return new Kvm(fd, hostKvmArch());
    } catch (e) {
      c.close(fd);
      throw e;
    }
  }

  /** `KVM_CHECK_EXTENSION`: 0 if the capability is missing, else its value. */
  checkExtension(cap: number): number {
    return libc().ioctl(
      this.#fd,
      KVM.CHECK_EXTENSION,
      cap,
      "KVM_CHECK_EXTENSION",
    );
  }

  /**
   * `KVM_GET_SUPPORTED_CPUID` as `kvm_cpuid2` bytes (header + entries);
   * x86_64 only.
   */
  supportedCpuid(): Uint8Array {
    if (this.#cpuid) return this.#cpuid;
    if (this.arch !== "x86_64") {
      throw new Error(
        `Cannot read the supported CPUID: CPUID is x86_64's, and this host is ${this.arch}`,
      );
    }
    const buf = new Uint8Array(
      kvm_cpuid2.size + MAX_CPUID_ENTRIES * kvm_cpuid_entry2.size,
    );
    writeStruct(new DataView(buf.buffer), kvm_cpuid2, {
      nent: MAX_CPUID_ENTRIES,
    });
    libc().ioctl(
      this.#fd,
      KVM.GET_SUPPORTED_CPUID,
      Deno.UnsafePointer.of(buf),
      "KVM_GET_SUPPORTED_CPUID",
    );
    const n = new DataView(buf.buffer).getUint32(0, true);
    this.#cpuid = buf.slice(0, kvm_cpuid2.size + n * kvm_cpuid_entry2.size);
    return this.#cpuid;
  }

  /**
   * Creates a VM (`KVM_CREATE_VM`). On x86_64 its vCPUs get the CPUID
   * `guestCpuid()` derives from the supported one (see `cpuid.ts`); on
   * arm64 they get in-kernel PSCI, which needs `KVM_CAP_ARM_PSCI_0_2`.
   */
  createVm(options: KvmCreateVmOptions = {}): KvmVm {
    let cpuid: Uint8Array | undefined;
    if (this.arch === "x86_64") {
      cpuid = encodeCpuid(guestCpuid(parseCpuid(this.supportedCpuid()), {
        tscDeadlineTimer: this.checkExtension(KVM_CAP.TSC_DEADLINE_TIMER) > 0,
        irqchip: options.irqchip ?? false,
      }));
    } else if (this.checkExtension(KVM_CAP.ARM_PSCI_0_2) === 0) {
      throw new Error(
        "Cannot create a KVM virtual machine: this host's KVM has no in-kernel PSCI 0.2 (KVM_CAP_ARM_PSCI_0_2), which initx's arm64 guests use to start and stop CPUs; upgrade the host kernel",
      );
    }
    let fd: number;
    try {
      fd = createVmRetryingSignals(this.#fd);
    } catch (e) {
      if (e instanceof OsError) {
        throw new Error(
          `Cannot create a KVM virtual machine: ${e.message}; another hypervisor may hold the CPU's virtualization, or the host is out of memory`,
          { cause: e },
        );
      }
      throw e;
    }
    return new KvmVm(fd, {
      arch: this.arch,
      irqchip: options.irqchip,
      gic: options.gic,
      mmapSize: this.#mmapSize,
      cpuid,
      threads: this.#threads,
    });
  }

  /**
   * Closes `/dev/kvm` and ends the idle vCPU threads. VMs made here keep
   * working; their threads end with their vCPUs (or with the VM, for those
   * it took ahead). Safe to call twice.
   */
  close(): void {
    this.#threads.close();
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }
}

/** Turns a failed `open("/dev/kvm")` into one sentence a user can act on. */
export function explainOpenError(path: string, e: unknown): Error {
  if (!(e instanceof OsError)) {
    return e instanceof Error ? e : new Error(String(e));
  }
  const arm64 = Deno.build.arch === "aarch64";
  switch (e.errno) {
    case Errno.ENOENT:
      return new Error(
        arm64
          ? `Cannot open ${path}: it does not exist; this host has no KVM (boot the kernel at EL2 with KVM built in, or use a VM with nested virtualization)`
          : `Cannot open ${path}: it does not exist; this host has no KVM (enable virtualization in the firmware and load kvm_intel or kvm_amd, or use a VM with nested virtualization)`,
        { cause: e },
      );
    case Errno.EACCES:
    case Errno.EPERM:
      return new Error(
        `Cannot open ${path}: permission denied; add your user to the "kvm" group or run as root`,
        { cause: e },
      );
    case Errno.ENODEV:
    case Errno.ENXIO:
      return new Error(
        arm64
          ? `Cannot open ${path}: no KVM driver is behind it; the kernel was not booted at EL2, or its KVM failed to initialize (see dmesg)`
          : `Cannot open ${path}: no KVM driver is loaded behind it; load kvm_intel or kvm_amd`,
        { cause: e },
      );
    default:
      return new Error(`Cannot open ${path}: ${e.message}`, { cause: e });
  }
}

/** How often `KVM_CREATE_VM` is tried again after a signal interrupted it. */
const CREATE_VM_TRIES = 100;

/**
 * `KVM_CREATE_VM`, tried again when a signal interrupts it (EINTR: the
 * kernel gives up before the VM exists, so a retry is safe). Profilers'
 * `SIGPROF` and the host program's own signals land there now and then.
 */
function createVmRetryingSignals(kvmFd: number): number {
  for (let tries = 1;; tries++) {
    try {
      return libc().ioctl(kvmFd, KVM.CREATE_VM, 0, "KVM_CREATE_VM");
    } catch (e) {
      const interrupted = e instanceof OsError && e.errno === Errno.EINTR;
      if (!interrupted || tries >= CREATE_VM_TRIES) throw e;
    }
  }
}
