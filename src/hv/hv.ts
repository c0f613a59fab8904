/**
 * The hypervisor interface: what the boot and device layers need from KVM (or,
 * later, Hypervisor.framework), and nothing about virtio or Linux.
 *
 * A {@linkcode Hypervisor} makes a {@linkcode HvVm}; a VM has guest memory and
 * makes vCPUs. Each vCPU runs on its own thread; its exits that need a device
 * reach the {@linkcode ExitHandlers} given at creation, and the run ends with
 * one typed {@linkcode VcpuOutcome}.
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
  /** The guest executed HLT with no in-kernel irqchip to wake it. */
  | { kind: "hlt"; regs: X86Regs }
  /** The guest triple-faulted (`KVM_EXIT_SHUTDOWN`). */
  | { kind: "shutdown"; regs: X86Regs }
  /** The guest asked for power-off, reset or reported a crash. */
  | {
    kind: "system-event";
    event: "shutdown" | "reset" | "crash" | "other";
    type: number;
    regs: X86Regs;
  }
  /** KVM could not run the guest (emulation failure and the like). */
  | { kind: "internal-error"; suberror: number; regs: X86Regs }
  /** The vCPU could not enter the guest. */
  | { kind: "fail-entry"; reason: bigint; regs: X86Regs }
  /**
   * The host stopped the vCPU; `atMs` is when it left the guest
   * (`performance.timeOrigin + performance.now()` of the vCPU thread).
   */
  | { kind: "stopped"; atMs: number; regs: X86Regs }
  /** An exit reason initx does not handle. */
  | { kind: "unsupported"; exitReason: number; regs: X86Regs }
  /** A host-side failure (an ioctl, a handler that threw). */
  | { kind: "error"; message: string };

/** What a vCPU starts with. */
export interface VcpuInit {
  /** General-purpose registers. */
  regs?: Partial<X86Regs>;
  /** Special registers; unset fields keep KVM's reset values. */
  sregs?: Partial<X86Sregs>;
  /** Use the host's supported CPUID (default true). */
  cpuid?: boolean;
  /** Handlers for exits that need a device. */
  handlers?: ExitHandlers;
  /**
   * Ports whose `out` writes are dropped on the vCPU's own thread without a
   * round trip to the handlers (a sink such as a debug port).
   */
  sinkPorts?: number[];
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
  /** Raises (1) or lowers (0) a guest interrupt line (GSI). */
  setIrqLine(gsi: number, level: 0 | 1): void;
  /** Stops all vCPUs, frees memory, fds and threads. Safe to call twice. */
  close(): Promise<void>;
}

/** A hypervisor that makes VMs. */
export interface Hypervisor {
  /** Creates a VM; `irqchip` adds the in-kernel interrupt controllers and PIT. */
  createVm(options?: { irqchip?: boolean }): HvVm;
  /** Releases the hypervisor handle. Safe to call twice. */
  close(): void;
}
