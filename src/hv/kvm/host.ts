/**
 * What kind of KVM this host has. Users run initx on hosts with hardware
 * virtualization; some hosts (such as VMs whose KVM is `kvm_pvm`) offer a
 * `/dev/kvm` that runs small guests but cannot boot an unmodified Linux
 * kernel, and initx says so instead of failing a minute later.
 *
 * @module
 */

import { Kvm, KVM_DEVICE } from "./system.ts";

/** The host's KVM, as far as initx can tell. */
export interface KvmHost {
  /**
   * `hardware`: VT-x/AMD-V, or arm64's virtualization extensions; `pvm`: a
   * paravirtual KVM; `none`: no usable KVM.
   */
  kind: "hardware" | "pvm" | "none";
  /** Whether `/dev/kvm` opens (small guests of initx's own can run). */
  canOpen: boolean;
  /** One sentence on why. */
  reason: string;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Detects the host's KVM.
 *
 * @example
 * ```ts
 * import { detectKvmHost } from "./host.ts";
 * console.log(detectKvmHost().kind);
 * ```
 */
export function detectKvmHost(): KvmHost {
  if (Deno.build.os !== "linux") {
    return {
      kind: "none",
      canOpen: false,
      reason: `KVM needs Linux, this is ${Deno.build.os}`,
    };
  }
  let canOpen = false;
  let openError = "";
  try {
    Kvm.open().close();
    canOpen = true;
  } catch (e) {
    openError = (e as Error).message;
  }
  if (exists("/sys/module/kvm_pvm")) {
    return {
      kind: "pvm",
      canOpen,
      reason: canOpen
        ? "this host's /dev/kvm is kvm_pvm, which cannot boot an unmodified Linux kernel"
        : `kvm_pvm is loaded but ${KVM_DEVICE} cannot be opened`,
    };
  }
  if (!canOpen) return { kind: "none", canOpen, reason: openError };
  // An arm64 CPU shows no flag for its virtualization extensions: a KVM
  // that opens (and is not kvm_pvm, above) runs at EL2, on hardware or on
  // a hypervisor that gives its guest EL2.
  if (Deno.build.arch === "aarch64") {
    return { kind: "hardware", canOpen, reason: "KVM on arm64 with /dev/kvm" };
  }
  let flags = "";
  try {
    flags = Deno.readTextFileSync("/proc/cpuinfo");
  } catch {
    // not readable: treat as no flags
  }
  const hw = /^flags\s*:.*\b(vmx|svm)\b/m.test(flags);
  if (!hw) {
    return {
      kind: "pvm",
      canOpen,
      reason:
        "the CPU shows no vmx or svm flag, so this KVM is not hardware-backed",
    };
  }
  return {
    kind: "hardware",
    canOpen,
    reason: "hardware virtualization (vmx/svm) with /dev/kvm",
  };
}

/**
 * The one-sentence explanation for users of a host that cannot boot Linux,
 * or undefined when it can.
 */
export function cannotBootLinuxReason(
  host: KvmHost = detectKvmHost(),
): string | undefined {
  if (host.kind === "hardware") return undefined;
  const needs = Deno.build.arch === "aarch64"
    ? "arm64 KVM (a kernel booted at EL2, or nested virtualization when this host is itself a VM)"
    : "hardware virtualization (Intel VT-x or AMD-V, or nested VT-x/AMD-V when this host is itself a VM)";
  return `Cannot boot a Linux guest on this host: ${host.reason}; initx needs ${needs}`;
}
