/**
 * Hypervisor.framework, Apple's hypervisor on macOS, as an initx
 * {@linkcode Hypervisor}: arm64 guests on Apple silicon.
 *
 * **Unrun.** This backend is written against Apple's headers and
 * documentation and tested on Linux against a stand-in library with the
 * same symbols (`testdata/fake_hvf.c`, see `hvf_test.ts`); no Mac has run
 * it yet. docs/hvf.md lists what a first run on a Mac must confirm.
 *
 * The framework allows one VM per process, and a process may use it only if
 * its binary carries the `com.apple.security.hypervisor` entitlement: for
 * initx, the `deno` binary itself. Without it `hv_vm_create` returns
 * `HV_DENIED`, which {@linkcode HvfHypervisor.createVm} turns into one
 * error naming the `codesign` command that fixes it.
 *
 * @module
 */

import type { Hypervisor } from "../hv.ts";
import {
  check,
  type HostMemory,
  HV_RETURN,
  HVF_PATH,
  HvfError,
  type HvfLibrary,
  openHostMemory,
  openHvf,
} from "./ffi.ts";
import { HvfVm } from "./vm.ts";

/**
 * Where the GICv3 goes by default: the distributor and redistributor bases
 * of initx's arm64 machine (`ARM64_LAYOUT` in src/boot/arm64_fdt.ts, which
 * this layer may not import), QEMU `virt`'s too.
 */
export const HVF_DEFAULT_GIC = {
  /** GICD: 64 KiB. */
  distributorBase: 0x0800_0000n,
  /** GICR: 128 KiB per vCPU from here. */
  redistributorBase: 0x080a_0000n,
} as const;

/** Options of {@linkcode HvfHypervisor.open}. */
export interface HvfOptions {
  /**
   * The framework's binary (default {@linkcode HVF_PATH}); tests pass a
   * stand-in library with the same symbols.
   */
  libraryPath?: string;
  /** GICv3 distributor base for `createVm({ irqchip: true })`. */
  gicDistributorBase?: bigint;
  /** GICv3 redistributor region base. */
  gicRedistributorBase?: bigint;
}

/**
 * The command that gives `deno` the entitlement, for the error and the
 * docs: an ad-hoc signature with an entitlements file (docs/hvf.md).
 */
function codesignCommand(): string {
  return `codesign --sign - --force --entitlements hvf.entitlements ${Deno.execPath()}`;
}

/**
 * Hypervisor.framework (unrun: see the module doc).
 *
 * @example
 * ```ts ignore
 * import { HvfHypervisor } from "./system.ts";
 * const hvf = HvfHypervisor.open();
 * const vm = hvf.createVm();
 * vm.addMemory(0x4000_0000n, 0x10_0000n);
 * await vm.close();
 * hvf.close();
 * ```
 */
export class HvfHypervisor implements Hypervisor {
  #hvf: HvfLibrary | undefined;
  #host: HostMemory;
  #libraryPath: string;
  #gicBases: { distributor: bigint; redistributor: bigint };
  #vmOpen = false;

  private constructor(
    hvf: HvfLibrary,
    host: HostMemory,
    options: Required<HvfOptions>,
  ) {
    this.#hvf = hvf;
    this.#host = host;
    this.#libraryPath = options.libraryPath;
    this.#gicBases = {
      distributor: options.gicDistributorBase,
      redistributor: options.gicRedistributorBase,
    };
  }

  /**
   * Opens the framework. On the real one, checks first that this is macOS
   * on Apple silicon.
   */
  static open(options: HvfOptions = {}): HvfHypervisor {
    const libraryPath = options.libraryPath ?? HVF_PATH;
    if (
      libraryPath === HVF_PATH &&
      (Deno.build.os !== "darwin" || Deno.build.arch !== "aarch64")
    ) {
      throw new Error(
        `Cannot use Hypervisor.framework: initx drives it on macOS on Apple silicon only, and this host is ${Deno.build.os} ${Deno.build.arch}`,
      );
    }
    const hvf = openHvf(libraryPath);
    let host: HostMemory;
    try {
      host = openHostMemory();
    } catch (e) {
      hvf.close();
      throw e;
    }
    return new HvfHypervisor(hvf, host, {
      libraryPath,
      gicDistributorBase: options.gicDistributorBase ??
        HVF_DEFAULT_GIC.distributorBase,
      gicRedistributorBase: options.gicRedistributorBase ??
        HVF_DEFAULT_GIC.redistributorBase,
    });
  }

  /** Whether this framework has the GICv3 functions (macOS 15 and later). */
  get hasGic(): boolean {
    return this.#open().gic !== undefined;
  }

  /**
   * Creates the process's VM (`hv_vm_create`); `irqchip` adds the
   * framework's GICv3 (`hv_gic_create`, macOS 15 and later) at the bases
   * given to {@linkcode HvfHypervisor.open}. The framework allows one VM
   * per process: close it before making the next.
   */
  createVm(options: { irqchip?: boolean } = {}): HvfVm {
    const hvf = this.#open();
    if (this.#vmOpen) {
      throw new Error(
        "Cannot create a Hypervisor.framework VM: this process has one open (the framework allows one per process); close it first",
      );
    }
    if (options.irqchip && hvf.gic === undefined) {
      throw new Error(
        "Cannot create a VM with a GIC: this Hypervisor.framework has no hv_gic_create (it needs macOS 15 or later)",
      );
    }
    const code = hvf.symbols.hv_vm_create(null);
    if (code === HV_RETURN.HV_DENIED) {
      throw new HvfError(
        "create a Hypervisor.framework VM",
        "hv_vm_create",
        code,
        `the deno binary must be signed with the com.apple.security.hypervisor entitlement: ${codesignCommand()} (the entitlements file is in docs/hvf.md)`,
      );
    }
    if (code === HV_RETURN.HV_BUSY) {
      throw new HvfError(
        "create a Hypervisor.framework VM",
        "hv_vm_create",
        code,
        "this process has a VM already (the framework allows one per process)",
      );
    }
    check("create a Hypervisor.framework VM", "hv_vm_create", code);
    if (options.irqchip) {
      try {
        this.#createGic(hvf);
      } catch (e) {
        hvf.symbols.hv_vm_destroy();
        throw e;
      }
    }
    this.#vmOpen = true;
    return new HvfVm({
      hvf,
      libraryPath: this.#libraryPath,
      host: this.#host,
      gic: options.irqchip ?? false,
      onClose: () => this.#vmOpen = false,
    });
  }

  /**
   * Closes the framework and the C library handles. A VM made here must be
   * closed first. Safe to call twice.
   */
  close(): void {
    if (this.#hvf === undefined) return;
    this.#hvf.close();
    this.#host.close();
    this.#hvf = undefined;
  }

  /**
   * `hv_gic_create` with the configured bases: after `hv_vm_create`, before
   * any vCPU (Apple's documentation). The configuration object is not
   * released (that is `os_release`, from another library): a few bytes per
   * VM.
   */
  #createGic(hvf: HvfLibrary): void {
    const gic = hvf.gic!;
    const config = gic.hv_gic_config_create();
    if (config === null) {
      throw new Error(
        "Cannot create the VM's GIC: hv_gic_config_create returned nothing",
      );
    }
    check(
      "set the GIC distributor base",
      "hv_gic_config_set_distributor_base",
      gic.hv_gic_config_set_distributor_base(
        config,
        this.#gicBases.distributor,
      ),
    );
    check(
      "set the GIC redistributor base",
      "hv_gic_config_set_redistributor_base",
      gic.hv_gic_config_set_redistributor_base(
        config,
        this.#gicBases.redistributor,
      ),
    );
    check("create the VM's GIC", "hv_gic_create", gic.hv_gic_create(config));
  }

  #open(): HvfLibrary {
    if (this.#hvf === undefined) {
      throw new Error("Cannot use Hypervisor.framework: it is closed");
    }
    return this.#hvf;
  }
}
