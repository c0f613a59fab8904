/**
 * Hypervisor.framework through `Deno.dlopen`: the symbol table, the
 * constants of its headers, its return codes as one error type, and the two
 * C library calls that make guest RAM (`mmap`, `munmap`).
 *
 * Facts come from the macOS SDK headers and Apple's documentation
 * (developer.apple.com/documentation/hypervisor):
 * - `hv_vcpu_types.h` (arm64): `hv_vcpu_t` is a `uint64_t`; `hv_reg_t`,
 *   `hv_exit_reason_t` and `hv_interrupt_type_t` are `uint32_t` enums;
 *   `hv_sys_reg_t` is a `uint16_t` enum; the layout of `hv_vcpu_exit_t`.
 * - `hv_vcpu.h`, `hv_vm.h`, `hv_gic.h`: the functions' signatures. None is
 *   variadic, so fixed signatures are right on macOS arm64 too.
 * - `hv_kern_types.h` / `hv_error.h`: `hv_return_t` is a `mach_error_t`
 *   (a 32-bit int) with codes `err_local | err_sub(0xba5) | n`, i.e.
 *   0xfae94000 + n; the `hv_memory_flags_t` bits.
 *
 * Threads: every `hv_vcpu_*` call "must be called by the owning thread", the
 * one that created the vCPU (Apple's documentation of each function), except
 * `hv_vcpus_exit`, which exists to stop vCPUs from elsewhere. So vCPU calls
 * are made synchronously from the vCPU's own Worker: a `nonblocking` call
 * would run on some pool thread.
 *
 * The framework is opened from a path, so that tests on Linux can open a
 * stand-in library with the same symbols instead (`testdata/fake_hvf.c`).
 * Unrun: no Mac has opened the real one through this table yet.
 *
 * @module
 */

/** Where macOS keeps the framework's binary. */
export const HVF_PATH =
  "/System/Library/Frameworks/Hypervisor.framework/Hypervisor";

/**
 * The functions initx calls, present since macOS 11 on Apple silicon.
 * `hv_return_t` is read as `u32` so that codes compare with the header's
 * unsigned spellings (0xfae94001, ...).
 */
export const HVF_SYMBOLS = {
  /** `hv_return_t hv_vm_create(hv_vm_config_t config)`; null: defaults. */
  hv_vm_create: { parameters: ["pointer"], result: "u32" },
  /** `hv_return_t hv_vm_destroy(void)`. */
  hv_vm_destroy: { parameters: [], result: "u32" },
  /**
   * `hv_return_t hv_vm_map(void *addr, hv_ipa_t ipa, size_t size,
   * hv_memory_flags_t flags)`: addr, ipa and size page-aligned.
   */
  hv_vm_map: {
    parameters: ["pointer", "u64", "usize", "u64"],
    result: "u32",
  },
  /** `hv_return_t hv_vm_unmap(hv_ipa_t ipa, size_t size)`. */
  hv_vm_unmap: { parameters: ["u64", "usize"], result: "u32" },
  /**
   * `hv_return_t hv_vcpu_create(hv_vcpu_t *vcpu, hv_vcpu_exit_t **exit,
   * hv_vcpu_config_t config)`: the calling thread becomes the owner; `exit`
   * receives the address of the structure each run fills.
   */
  hv_vcpu_create: {
    parameters: ["buffer", "buffer", "pointer"],
    result: "u32",
  },
  /** `hv_return_t hv_vcpu_destroy(hv_vcpu_t vcpu)`; owning thread. */
  hv_vcpu_destroy: { parameters: ["u64"], result: "u32" },
  /**
   * `hv_return_t hv_vcpu_run(hv_vcpu_t vcpu)`: blocks until the next exit;
   * owning thread. Called synchronously on the vCPU's Worker, never
   * `nonblocking`.
   */
  hv_vcpu_run: { parameters: ["u64"], result: "u32", nonblocking: false },
  /** `hv_return_t hv_vcpu_get_reg(hv_vcpu_t, hv_reg_t, uint64_t *value)`. */
  hv_vcpu_get_reg: { parameters: ["u64", "u32", "buffer"], result: "u32" },
  /** `hv_return_t hv_vcpu_set_reg(hv_vcpu_t, hv_reg_t, uint64_t value)`. */
  hv_vcpu_set_reg: { parameters: ["u64", "u32", "u64"], result: "u32" },
  /** `hv_return_t hv_vcpu_get_sys_reg(hv_vcpu_t, hv_sys_reg_t, uint64_t *)`. */
  hv_vcpu_get_sys_reg: {
    parameters: ["u64", "u16", "buffer"],
    result: "u32",
  },
  /** `hv_return_t hv_vcpu_set_sys_reg(hv_vcpu_t, hv_sys_reg_t, uint64_t)`. */
  hv_vcpu_set_sys_reg: {
    parameters: ["u64", "u16", "u64"],
    result: "u32",
  },
  /**
   * `hv_return_t hv_vcpus_exit(hv_vcpu_t *vcpus, uint32_t vcpu_count)`:
   * "forces an immediate exit of a set of vCPUs"; any thread.
   */
  hv_vcpus_exit: { parameters: ["buffer", "u32"], result: "u32" },
  /**
   * `hv_return_t hv_vcpu_set_pending_interrupt(hv_vcpu_t,
   * hv_interrupt_type_t, bool pending)`: the vCPU's IRQ or FIQ input.
   */
  hv_vcpu_set_pending_interrupt: {
    parameters: ["u64", "u32", "bool"],
    result: "u32",
  },
  /**
   * `hv_return_t hv_vcpu_set_vtimer_mask(hv_vcpu_t, bool vtimer_is_masked)`:
   * a `VTIMER_ACTIVATED` exit sets the mask; clearing it allows the next.
   */
  hv_vcpu_set_vtimer_mask: { parameters: ["u64", "bool"], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * The in-framework GICv3 (`hv_gic.h`, macOS 15 and later). Opened apart and
 * each symbol optional: on an older macOS they are absent, and that is a
 * capability the VM reports ({@linkcode HvfLibrary.gic} undefined), not a
 * failed `dlopen`.
 */
export const HVF_GIC_SYMBOLS = {
  /** `hv_gic_config_t hv_gic_config_create(void)`: an os_object. */
  hv_gic_config_create: { parameters: [], result: "pointer", optional: true },
  /** `hv_return_t hv_gic_config_set_distributor_base(hv_gic_config_t, hv_ipa_t)`. */
  hv_gic_config_set_distributor_base: {
    parameters: ["pointer", "u64"],
    result: "u32",
    optional: true,
  },
  /** `hv_return_t hv_gic_config_set_redistributor_base(hv_gic_config_t, hv_ipa_t)`. */
  hv_gic_config_set_redistributor_base: {
    parameters: ["pointer", "u64"],
    result: "u32",
    optional: true,
  },
  /**
   * `hv_return_t hv_gic_create(hv_gic_config_t)`: after `hv_vm_create`,
   * before any vCPU exists (Apple's documentation), at most one per VM.
   */
  hv_gic_create: { parameters: ["pointer"], result: "u32", optional: true },
  /** `hv_return_t hv_gic_set_spi(uint32_t intid, bool level)`. */
  hv_gic_set_spi: {
    parameters: ["u32", "bool"],
    result: "u32",
    optional: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The framework's functions, as `Deno.dlopen` returns them. */
export type HvfSymbols = Deno.DynamicLibrary<typeof HVF_SYMBOLS>["symbols"];

/** The GIC functions, all present. */
export type HvfGicSymbols = {
  [K in keyof typeof HVF_GIC_SYMBOLS]: NonNullable<
    Deno.DynamicLibrary<typeof HVF_GIC_SYMBOLS>["symbols"][K]
  >;
};

/** `hv_return_t` values (hv_kern_types.h: 0xfae94000 + n). */
export const HV_RETURN = {
  HV_SUCCESS: 0,
  HV_ERROR: 0xfae94001,
  HV_BUSY: 0xfae94002,
  HV_BAD_ARGUMENT: 0xfae94003,
  HV_ILLEGAL_GUEST_STATE: 0xfae94004,
  HV_NO_RESOURCES: 0xfae94005,
  HV_NO_DEVICE: 0xfae94006,
  HV_DENIED: 0xfae94007,
  HV_EXISTS: 0xfae94008,
  HV_UNSUPPORTED: 0xfae9400f,
} as const;

/**
 * The name of an `hv_return_t`, e.g. `HV_DENIED`, or its hex spelling.
 *
 * @example
 * ```ts
 * import { hvReturnName } from "./ffi.ts";
 * console.log(hvReturnName(0xfae94007)); // HV_DENIED
 * ```
 */
export function hvReturnName(code: number): string {
  for (const [name, value] of Object.entries(HV_RETURN)) {
    if (value === code) return name;
  }
  return `hv_return_t 0x${(code >>> 0).toString(16)}`;
}

/**
 * A Hypervisor.framework call that did not return `HV_SUCCESS`: which
 * function, and its `hv_return_t` by value and name.
 *
 * @example
 * ```ts
 * import { HvfError } from "./ffi.ts";
 * const e = new HvfError("map guest memory", "hv_vm_map", 0xfae94003);
 * console.log(e.message); // Cannot map guest memory: hv_vm_map returned HV_BAD_ARGUMENT (0xfae94003)
 * ```
 */
export class HvfError extends Error {
  /** The framework function, e.g. `hv_vm_map`. */
  readonly fn: string;
  /** The `hv_return_t` value. */
  readonly code: number;
  /** Its name, e.g. `HV_BAD_ARGUMENT`. */
  readonly codeName: string;

  /** Builds the error; `hint`, if given, follows the code (after a `;`). */
  constructor(action: string, fn: string, code: number, hint?: string) {
    const name = hvReturnName(code);
    super(
      `Cannot ${action}: ${fn} returned ${name} (0x${
        (code >>> 0).toString(16)
      })${hint === undefined ? "" : `; ${hint}`}`,
    );
    this.name = "HvfError";
    this.fn = fn;
    this.code = code;
    this.codeName = name;
  }
}

/** Throws an {@linkcode HvfError} unless `code` is `HV_SUCCESS`. */
export function check(action: string, fn: string, code: number): void {
  if (code !== HV_RETURN.HV_SUCCESS) throw new HvfError(action, fn, code);
}

/**
 * `hv_reg_t` (hv_vcpu_types.h): X0..X30 are 0..30 (FP = X29, LR = X30),
 * then PC, FPCR, FPSR, CPSR.
 */
export const HV_REG = {
  X0: 0,
  FP: 29,
  LR: 30,
  PC: 31,
  FPCR: 32,
  FPSR: 33,
  CPSR: 34,
} as const;

/** `hv_sys_reg_t` encodings (hv_vcpu_types.h) of the registers initx uses. */
export const HV_SYS_REG = {
  MPIDR_EL1: 0xc005,
  SCTLR_EL1: 0xc080,
  CPACR_EL1: 0xc082,
  TTBR0_EL1: 0xc100,
  TTBR1_EL1: 0xc101,
  TCR_EL1: 0xc102,
  SPSR_EL1: 0xc200,
  ELR_EL1: 0xc201,
  SP_EL0: 0xc208,
  ESR_EL1: 0xc290,
  FAR_EL1: 0xc300,
  MAIR_EL1: 0xc510,
  VBAR_EL1: 0xc600,
  TPIDR_EL1: 0xc684,
  CNTV_CTL_EL0: 0xdf19,
  CNTV_CVAL_EL0: 0xdf1a,
  SP_EL1: 0xe208,
} as const;

/** `hv_exit_reason_t` (hv_vcpu_types.h). */
export const HV_EXIT_REASON = {
  /** `hv_vcpus_exit()` asked for the exit. */
  CANCELED: 0,
  /** A synchronous exception to EL2: `exception` holds its syndrome. */
  EXCEPTION: 1,
  /** The virtual timer fired; the framework masked it (see the module doc). */
  VTIMER_ACTIVATED: 2,
  /** "Should not happen under normal operation." */
  UNKNOWN: 3,
} as const;

/** `hv_interrupt_type_t` (hv_vcpu_types.h). */
export const HV_INTERRUPT_TYPE = { IRQ: 0, FIQ: 1 } as const;

/** `hv_memory_flags_t` bits (hv_kern_types.h). */
export const HV_MEMORY = { READ: 1n, WRITE: 2n, EXEC: 4n } as const;

/**
 * `hv_vcpu_exit_t`: `{ hv_exit_reason_t reason; hv_vcpu_exit_exception_t
 * exception; }` with the exception `{ uint64_t syndrome (ESR_EL2);
 * uint64_t virtual_address (FAR_EL2); uint64_t physical_address (the
 * faulting IPA); }`. Byte offsets under the arm64 C ABI: the u32 reason is
 * padded to the exception's 8-byte alignment.
 */
export const HV_VCPU_EXIT = {
  reason: 0,
  syndrome: 8,
  virtualAddress: 16,
  physicalAddress: 24,
  size: 32,
} as const;

/**
 * The page size of Apple silicon hosts and of the framework's default IPA
 * granule: `hv_vm_map` wants addresses and sizes that are multiples of it.
 */
export const HVF_PAGE_BYTES = 0x4000n;

/** The framework, opened once per thread that calls it. */
export interface HvfLibrary {
  /** The functions every macOS 11+ framework has. */
  readonly symbols: HvfSymbols;
  /** The GICv3 functions, or undefined where the framework lacks them. */
  readonly gic: HvfGicSymbols | undefined;
  /** Closes both handles. */
  close(): void;
}

/**
 * Opens the framework at `path` (default {@linkcode HVF_PATH}); a test
 * passes a stand-in library with the same symbols.
 *
 * @example
 * ```ts ignore
 * import { openHvf } from "./ffi.ts";
 * const hvf = openHvf();
 * console.log(hvf.gic !== undefined); // true on macOS 15 and later
 * hvf.close();
 * ```
 */
export function openHvf(path: string = HVF_PATH): HvfLibrary {
  let core: Deno.DynamicLibrary<typeof HVF_SYMBOLS>;
  try {
    core = Deno.dlopen(path, HVF_SYMBOLS);
  } catch (e) {
    const detail = e instanceof Error ? e.message : String(e);
    throw new Error(
      path === HVF_PATH
        ? `Cannot open Hypervisor.framework: ${detail}; it needs macOS 11 or later on Apple silicon`
        : `Cannot open the Hypervisor.framework library ${path}: ${detail}`,
      { cause: e },
    );
  }
  const gicLib = Deno.dlopen(path, HVF_GIC_SYMBOLS);
  const g = gicLib.symbols;
  const gic = g.hv_gic_config_create && g.hv_gic_config_set_distributor_base &&
      g.hv_gic_config_set_redistributor_base && g.hv_gic_create &&
      g.hv_gic_set_spi
    ? {
      hv_gic_config_create: g.hv_gic_config_create,
      hv_gic_config_set_distributor_base: g.hv_gic_config_set_distributor_base,
      hv_gic_config_set_redistributor_base:
        g.hv_gic_config_set_redistributor_base,
      hv_gic_create: g.hv_gic_create,
      hv_gic_set_spi: g.hv_gic_set_spi,
    }
    : undefined;
  return {
    symbols: core.symbols,
    gic,
    close() {
      gicLib.close();
      core.close();
    },
  };
}

// ---------------------------------------------------------------------------
// Guest RAM: anonymous private mappings from the host's C library.

const HOST_MEMORY_SYMBOLS = {
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** `MAP_FAILED`, `(void *)-1`, as an address. */
const MAP_FAILED = 2n ** 64n - 1n;

/** `PROT_READ | PROT_WRITE`: 0x1 | 0x2 on macOS (sys/mman.h) and Linux. */
const PROT_READ_WRITE = 0x3;

/**
 * The C library and `MAP_PRIVATE | MAP_ANON` of each host: macOS's
 * libSystem (sys/mman.h: MAP_PRIVATE 0x0002, MAP_ANON 0x1000), and glibc on
 * Linux, where the tests run (MAP_PRIVATE 0x02, MAP_ANONYMOUS 0x20,
 * MAP_NORESERVE 0x4000).
 */
function hostC(): { path: string; flags: number } {
  return Deno.build.os === "darwin"
    ? { path: "/usr/lib/libSystem.B.dylib", flags: 0x0002 | 0x1000 }
    : { path: "libc.so.6", flags: 0x02 | 0x20 | 0x4000 };
}

/** Anonymous host memory for guest RAM: `mmap` and `munmap`. */
export interface HostMemory {
  /** Maps `size` zeroed bytes, page-aligned; throws if the host refuses. */
  map(size: bigint): Deno.PointerObject;
  /** Unmaps what {@linkcode HostMemory.map} returned. */
  unmap(ptr: Deno.PointerObject, size: bigint): void;
  /** Closes the C library handle. */
  close(): void;
}

/**
 * Opens the host's C library for guest RAM.
 *
 * @example
 * ```ts
 * import { openHostMemory } from "./ffi.ts";
 * const host = openHostMemory();
 * const ptr = host.map(0x4000n);
 * console.log(new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, 4))[0]); // 0
 * host.unmap(ptr, 0x4000n);
 * host.close();
 * ```
 */
export function openHostMemory(): HostMemory {
  const { path, flags } = hostC();
  const lib = Deno.dlopen(path, HOST_MEMORY_SYMBOLS);
  return {
    map(size) {
      const ptr = lib.symbols.mmap(null, size, PROT_READ_WRITE, flags, -1, 0n);
      if (
        ptr === null || BigInt(Deno.UnsafePointer.value(ptr)) === MAP_FAILED
      ) {
        throw new Error(
          `Cannot map ${size} bytes of guest RAM: the host refused (mmap failed)`,
        );
      }
      return ptr;
    },
    unmap(ptr, size) {
      lib.symbols.munmap(ptr, size);
    },
    close() {
      lib.close();
    },
  };
}
