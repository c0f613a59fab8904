/**
 * The machines the KVM lab can be, one per architecture: the QEMU that
 * emulates it, its machine type and CPU, the kernel's console, and the
 * modules that give the lab kernel its `/dev/kvm`.
 *
 * - `x86_64`: `-M microvm` with `-cpu max`, which shows AMD SVM to the guest;
 *   Debian's cloud kernel loads `kvm-amd` and runs nested guests with SVM.
 * - `aarch64`: `-M virt,virtualization=on,gic-version=3`: the guest starts at
 *   EL2 with a GICv3 whose virtualization interface QEMU emulates, so the
 *   kernel's built-in KVM (`CONFIG_KVM=y` on arm64) initializes and offers
 *   `/dev/kvm`. The console is the virt board's PL011 (`ttyAMA0`).
 *
 * @module
 */

/** The lab's CPU architecture, in the kernel's spelling (`uname -m`). */
export type LabArch = "x86_64" | "aarch64";

/** Every architecture the lab can emulate. */
export const LAB_ARCHES: readonly LabArch[] = ["x86_64", "aarch64"];

/** How QEMU emulates one architecture's lab machine. */
export interface LabMachine {
  /** The host's QEMU for this architecture. */
  qemu: string;
  /** `-M` value. */
  machine: string;
  /** `-cpu` value. */
  cpu: string;
  /** Guest memory in MiB; nested guests take theirs from it. */
  memoryMib: number;
  /** vCPUs; two keep a nested guest's vCPU from starving the lab's own. */
  cpus: number;
  /** The kernel's serial console device (`console=`). */
  console: string;
  /** Kernel command-line arguments beside the console and the log level. */
  kernelArgs: string[];
  /**
   * Modules, in load order and relative to the module tree's `kernel/`, that
   * give the lab kernel its `/dev/kvm`; empty when KVM is built in.
   */
  kvmModules: string[];
  /** Debian's name of the architecture (`dpkg --print-architecture`). */
  debianArch: string;
  /** Debian packages the host needs for this lab, by the command they provide. */
  hostTools: Record<string, string>;
}

/** The lab machine of each architecture. */
export const LAB_MACHINES: Readonly<Record<LabArch, LabMachine>> = {
  x86_64: {
    qemu: "qemu-system-x86_64",
    machine: "microvm",
    cpu: "max",
    memoryMib: 4096,
    cpus: 2,
    console: "ttyS0",
    // tsc_early_khz: TSC calibration can hang under TCG.
    kernelArgs: ["reboot=k", "panic=-1", "tsc_early_khz=2300000"],
    kvmModules: [
      "virt/lib/irqbypass.ko",
      "arch/x86/kvm/kvm.ko",
      "arch/x86/kvm/kvm-amd.ko",
    ],
    debianArch: "amd64",
    hostTools: {
      "qemu-system-x86_64": "qemu-system-x86",
      "busybox": "busybox-static",
      "cpio": "cpio",
    },
  },
  aarch64: {
    qemu: "qemu-system-aarch64",
    machine: "virt,virtualization=on,gic-version=3",
    // The architected pointer-authentication cipher (QARMA) is slow to
    // emulate, and Debian's kernel signs return addresses in every function:
    // QEMU's own faster algorithm behaves the same to the guest.
    cpu: "max,pauth-impdef=on",
    memoryMib: 3072,
    cpus: 2,
    console: "ttyAMA0",
    kernelArgs: ["panic=-1"],
    kvmModules: [],
    debianArch: "arm64",
    hostTools: {
      "qemu-system-aarch64": "qemu-system-arm",
      "cpio": "cpio",
      "dpkg-deb": "dpkg",
      "readelf": "binutils",
      "npm": "npm",
    },
  },
};

/**
 * Reads an architecture name as `--arch` gives it.
 *
 * @example
 * ```ts
 * import { parseLabArch } from "./arch.ts";
 * console.assert(parseLabArch("aarch64") === "aarch64");
 * ```
 */
export function parseLabArch(name: string): LabArch {
  const arch = LAB_ARCHES.find((a) => a === name);
  if (arch === undefined) {
    throw new Error(
      `Cannot run the KVM lab for "${name}": the lab is one of ${
        LAB_ARCHES.map((a) => `"${a}"`).join(", ")
      }`,
    );
  }
  return arch;
}

/** What the lab boots, as host paths. */
export interface LabBootFiles {
  /** The kernel image (bzImage or arm64 Image). */
  kernel: string;
  /** The initramfs. */
  initrd: string;
}

/**
 * The arguments of the lab's QEMU: the machine of `arch`, no default
 * devices, its serial console on stdio, no reboot (a panic or a power-off
 * ends QEMU).
 *
 * @example
 * ```ts
 * import { labQemuArgs } from "./arch.ts";
 * const args = labQemuArgs("aarch64", { kernel: "Image", initrd: "lab.cpio" });
 * console.assert(args.at(-1)!.startsWith("console=ttyAMA0"));
 * ```
 */
export function labQemuArgs(arch: LabArch, files: LabBootFiles): string[] {
  const m = LAB_MACHINES[arch];
  return [
    "-accel",
    "tcg",
    "-cpu",
    m.cpu,
    "-m",
    String(m.memoryMib),
    "-smp",
    String(m.cpus),
    "-M",
    m.machine,
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    files.kernel,
    "-initrd",
    files.initrd,
    "-append",
    [`console=${m.console}`, ...m.kernelArgs, "quiet", "loglevel=1"].join(" "),
  ];
}
