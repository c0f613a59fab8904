/**
 * The hypervisor interface: what the boot and device layers need from KVM
 * (`kvm/`) or Hypervisor.framework (`hvf/`, unrun: not yet run on a Mac), and
 * nothing about virtio or Linux.
 *
 * A {@linkcode Hypervisor} makes a {@linkcode HvVm}; a VM has guest memory and
 * makes vCPUs. Each vCPU runs on its own thread; its exits that need a device
 * reach the {@linkcode ExitHandlers} given at creation, and the run ends with
 * one typed {@linkcode VcpuOutcome}.
 *
 * Two architectures share the interface. What a vCPU starts with is
 * architecture-specific only where a boot plan must say it: the x86_64 fields
 * of {@linkcode VcpuInit} (`regs`, `sregs`, `cpuid`, `sinkPorts`), or its
 * `arm64` field. The registers an outcome reports are tagged with `arch`
 * ({@linkcode VcpuRegs}); {@linkcode describePc} words where a vCPU was
 * without looking at the architecture.
 *
 * @module
 */

import type { GuestMemory } from "./memory.ts";

/** A segment register's hidden state (x86). */
export interface Segment {
  /** Base address. */
  base: bigint;
  /** Limit, in bytes (or 4 KiB pages when `g` is set). */
  limit: number;
  /** Selector value. */
  selector: number;
  /** Descriptor type (e.g. 0xb: execute/read, accessed). */
  type: number;
  /** Present bit. */
  present: number;
  /** Descriptor privilege level. */
  dpl: number;
  /** Default operation size (32-bit) bit. */
  db: number;
  /** Code/data (1) or system (0) descriptor. */
  s: number;
  /** 64-bit code segment bit. */
  l: number;
  /** Granularity (4 KiB) bit. */
  g: number;
  /** Available-for-software bit. */
  avl: number;
  /** KVM's "unusable" flag: a null or absent segment (default 0). */
  unusable?: number;
}

/** General-purpose registers of an x86_64 vCPU. */
export interface X86Regs {
  /** Accumulator. */
  rax: bigint;
  /** Base. */
  rbx: bigint;
  /** Counter. */
  rcx: bigint;
  /** Data. */
  rdx: bigint;
  /** Source index; the zero page pointer at Linux entry. */
  rsi: bigint;
  /** Destination index. */
  rdi: bigint;
  /** Stack pointer. */
  rsp: bigint;
  /** Frame pointer. */
  rbp: bigint;
  /** Instruction pointer. */
  rip: bigint;
  /** Flags (bit 1 is always set). */
  rflags: bigint;
}

/**
 * General-purpose registers, stack pointer, program counter and PSTATE of an
 * arm64 vCPU (AArch64 state).
 */
export interface Arm64Regs {
  /** X0; the device tree's address at Linux entry. */
  x0: bigint;
  /** X1. */
  x1: bigint;
  /** X2. */
  x2: bigint;
  /** X3. */
  x3: bigint;
  /** X4. */
  x4: bigint;
  /** X5. */
  x5: bigint;
  /** X6. */
  x6: bigint;
  /** X7. */
  x7: bigint;
  /** X8. */
  x8: bigint;
  /** X9. */
  x9: bigint;
  /** X10. */
  x10: bigint;
  /** X11. */
  x11: bigint;
  /** X12. */
  x12: bigint;
  /** X13. */
  x13: bigint;
  /** X14. */
  x14: bigint;
  /** X15. */
  x15: bigint;
  /** X16. */
  x16: bigint;
  /** X17. */
  x17: bigint;
  /** X18. */
  x18: bigint;
  /** X19. */
  x19: bigint;
  /** X20. */
  x20: bigint;
  /** X21. */
  x21: bigint;
  /** X22. */
  x22: bigint;
  /** X23. */
  x23: bigint;
  /** X24. */
  x24: bigint;
  /** X25. */
  x25: bigint;
  /** X26. */
  x26: bigint;
  /** X27. */
  x27: bigint;
  /** X28. */
  x28: bigint;
  /** X29, the frame pointer. */
  x29: bigint;
  /** X30, the link register. */
  x30: bigint;
  /**
   * SP_EL1: the stack pointer of a kernel running at EL1h, the level a
   * guest kernel runs at (SP_EL0 is the system register `sp_el0`).
   */
  sp: bigint;
  /** Program counter. */
  pc: bigint;
  /**
   * PSTATE as SPSR/CPSR bits. A vCPU starts at 0x3c5 unless told otherwise:
   * EL1h with D, A, I and F masked, as the Linux arm64 boot protocol asks.
   */
  pstate: bigint;
}

/**
 * The arm64 system registers a boot plan may set or a report may carry,
 * named as in the Arm ARM; unset ones keep the hypervisor's reset values.
 */
export interface Arm64SysRegs {
  /** Multiprocessor affinity: the vCPU's identity in the device tree and to PSCI. */
  mpidr_el1?: bigint;
  /** System control (MMU, caches, alignment checks). */
  sctlr_el1?: bigint;
  /** Architectural feature access control (FP/SIMD traps). */
  cpacr_el1?: bigint;
  /** Translation control. */
  tcr_el1?: bigint;
  /** Translation table base 0. */
  ttbr0_el1?: bigint;
  /** Translation table base 1. */
  ttbr1_el1?: bigint;
  /** Memory attribute indirection. */
  mair_el1?: bigint;
  /** Exception vector base. */
  vbar_el1?: bigint;
  /** EL0 stack pointer. */
  sp_el0?: bigint;
  /** Exception link register (EL1). */
  elr_el1?: bigint;
  /** Saved program status (EL1). */
  spsr_el1?: bigint;
  /** Exception syndrome (EL1). */
  esr_el1?: bigint;
  /** Fault address (EL1). */
  far_el1?: bigint;
  /** EL1 software thread id. */
  tpidr_el1?: bigint;
  /** Virtual timer control. */
  cntv_ctl_el0?: bigint;
  /** Virtual timer compare value. */
  cntv_cval_el0?: bigint;
}

/** What an arm64 vCPU starts with: {@linkcode VcpuInit.arm64}. */
export interface Arm64VcpuInit {
  /** Core registers; unset ones keep their reset values (see `pstate`). */
  regs?: Partial<Arm64Regs>;
  /**
   * System registers. `mpidr_el1` defaults to the vCPU index spread over
   * the affinity fields as KVM does (Aff0 = bits 0-3, Aff1 = bits 4-11,
   * Aff2 = bits 12-19).
   */
  sysRegs?: Arm64SysRegs;
  /**
   * Start powered off: the vCPU waits until another one powers it on with
   * PSCI CPU_ON, which gives its entry point and context id (what KVM's
   * `KVM_ARM_VCPU_POWER_OFF` feature does). For the secondary CPUs of a
   * Linux boot.
   */
  poweredOff?: boolean;
}

/**
 * The registers a finished vCPU reports, tagged with its architecture:
 * switch on `arch` before reading them.
 */
export type VcpuRegs =
  | ({ arch: "x86_64" } & X86Regs)
  | ({ arch: "aarch64" } & Arm64Regs);

/**
 * Where a vCPU was, for messages: `rip 0x1000` on x86_64, `pc 0x40080000`
 * on arm64.
 *
 * @example
 * ```ts
 * import { describePc, type VcpuRegs } from "./hv.ts";
 * const regs = { arch: "x86_64", rip: 0x1000n } as VcpuRegs;
 * console.log(describePc(regs)); // rip 0x1000
 * ```
 */
export function describePc(regs: VcpuRegs): string {
  return regs.arch === "x86_64"
    ? `rip 0x${regs.rip.toString(16)}`
    : `pc 0x${regs.pc.toString(16)}`;
}

/** Segment, control and table registers of an x86_64 vCPU. */
export interface X86Sregs {
  /** Code segment. */
  cs: Segment;
  /** Data segment. */
  ds: Segment;
  /** Extra segment. */
  es: Segment;
  /** FS. */
  fs: Segment;
  /** GS. */
  gs: Segment;
  /** Stack segment. */
  ss: Segment;
  /** Task register. */
  tr?: Segment;
  /** Local descriptor table register. */
  ldt?: Segment;
  /** GDTR. */
  gdt: { base: bigint; limit: number };
  /** IDTR. */
  idt: { base: bigint; limit: number };
  /** CR0. */
  cr0: bigint;
  /** CR3: the page table root. */
  cr3: bigint;
  /** CR4. */
  cr4: bigint;
  /** EFER MSR (long mode enable/active). */
  efer: bigint;
}

/** A port I/O access by the guest. For `in`, the handler fills `data`. */
export interface IoAccess {
  /** The I/O port. */
  port: number;
  /** Access width in bytes: 1, 2 or 4. */
  size: number;
  /** Whether the guest reads (`in`) or writes (`out`). */
  direction: "in" | "out";
  /** The bytes written, or the buffer to fill for a read (`size` bytes). */
  data: Uint8Array;
}

/** An MMIO access by the guest. For reads, the handler fills `data`. */
export interface MmioAccess {
  /** Guest-physical address. */
  addr: bigint;
  /** Whether the guest writes. */
  isWrite: boolean;
  /** The bytes written, or the buffer to fill for a read (1 to 8 bytes). */
  data: Uint8Array;
}

/** Device handlers of a vCPU's exits; they run on the caller's thread. */
export interface ExitHandlers {
  /** A port I/O access; unhandled reads return all ones. */
  io?(access: IoAccess): void;
  /** An MMIO access outside guest RAM; unhandled reads return zeros. */
  mmio?(access: MmioAccess): void;
}

/** How a vCPU's run ended. A closed union: switch on `kind`. */
export type VcpuOutcome =
  /**
   * The guest halted with nothing to wake it: HLT with no in-kernel
   * irqchip (x86_64), WFI with no interrupt controller and no armed timer
   * (arm64).
   */
  | { kind: "hlt"; regs: VcpuRegs }
  /** The guest triple-faulted (`KVM_EXIT_SHUTDOWN`). */
  | { kind: "shutdown"; regs: VcpuRegs }
  /**
   * The guest asked for power-off, reset or reported a crash (ACPI, i8042
   * or PSCI). `type` is the backend's own code: `kvm_run.system_event.type`
   * on KVM, the PSCI function id on Hypervisor.framework.
   */
  | {
    kind: "system-event";
    event: "shutdown" | "reset" | "crash" | "other";
    type: number;
    regs: VcpuRegs;
  }
  /** KVM could not run the guest (emulation failure and the like). */
  | { kind: "internal-error"; suberror: number; regs: VcpuRegs }
  /** The vCPU could not enter the guest. */
  | { kind: "fail-entry"; reason: bigint; regs: VcpuRegs }
  /**
   * The host stopped the vCPU; `atMs` is when it left the guest
   * (`performance.timeOrigin + performance.now()` of the vCPU thread).
   */
  | { kind: "stopped"; atMs: number; regs: VcpuRegs }
  /**
   * An exit initx does not handle: the backend's exit reason and, for an
   * arm64 exception, its syndrome (ESR_EL2).
   */
  | {
    kind: "unsupported";
    exitReason: number;
    syndrome?: bigint;
    regs: VcpuRegs;
  }
  /** A host-side failure (an ioctl, a handler that threw). */
  | { kind: "error"; message: string };

/**
 * What a vCPU starts with. `regs`, `sregs`, `cpuid` and `sinkPorts` are for
 * x86_64 vCPUs, `arm64` for arm64 ones; a backend refuses the other
 * architecture's registers.
 */
export interface VcpuInit {
  /** General-purpose registers (x86_64). */
  regs?: Partial<X86Regs>;
  /** Special registers (x86_64); unset fields keep KVM's reset values. */
  sregs?: Partial<X86Sregs>;
  /** Use the host's supported CPUID (x86_64; default true). */
  cpuid?: boolean;
  /** Handlers for exits that need a device. */
  handlers?: ExitHandlers;
  /**
   * Ports whose `out` writes are dropped on the vCPU's own thread without a
   * round trip to the handlers (a sink such as a debug port; x86_64).
   */
  sinkPorts?: number[];
  /** Registers and power state of an arm64 vCPU. */
  arm64?: Arm64VcpuInit;
}

/** A running or finished vCPU. */
export interface HvVcpu {
  /** The vCPU index. */
  readonly id: number;
  /** Resolves when the vCPU's run ends. */
  readonly done: Promise<VcpuOutcome>;
  /** Exits seen so far (all kinds, including sink-port exits). */
  exitCount(): number;
  /** Stops the vCPU, even if the guest spins without exiting. */
  stop(): Promise<VcpuOutcome>;
}

/** A virtual machine: memory and vCPUs. */
export interface HvVm {
  /** Guest RAM added so far. */
  readonly memory: GuestMemory;
  /** Adds `size` bytes of zeroed RAM at guest address `base`. */
  addMemory(base: bigint, size: bigint): void;
  /** Starts a vCPU with `init`; it runs until it ends or is stopped. */
  startVcpu(id: number, init: VcpuInit): Promise<HvVcpu>;
  /**
   * Raises (1) or lowers (0) a guest interrupt line: a GSI on x86_64, a GIC
   * SPI number on arm64 (INTID 32 + `gsi`).
   */
  setIrqLine(gsi: number, level: 0 | 1): void;
  /** Stops all vCPUs, frees memory, fds and threads. Safe to call twice. */
  close(): Promise<void>;
}

/** A hypervisor that makes VMs. */
export interface Hypervisor {
  /**
   * Creates a VM; `irqchip` adds the in-kernel interrupt controllers (x86_64:
   * PIC, IOAPIC, LAPIC and PIT; arm64: a GICv3).
   */
  createVm(options?: { irqchip?: boolean }): HvVm;
  /** Releases the hypervisor handle. Safe to call twice. */
  close(): void;
}
