/**
 * The KVM API's numbers and struct layouts, written once as data: the ones
 * every architecture shares, those of x86_64, and those of arm64 (the
 * `ARM64_*` and `KVM_ARM*` names). Source: `include/uapi/linux/kvm.h`,
 * `arch/x86/include/uapi/asm/kvm.h`, `arch/arm64/include/uapi/asm/kvm.h`,
 * Documentation/virt/kvm/api.rst and devices/arm-vgic-v3.rst.
 * `ffi/kvm_test.ts` checks every size, offset and number here against
 * `<linux/kvm.h>`: the machine's own for the shared and x86_64 ones, and the
 * arm64 header (the machine's own on an arm64 host, else Debian's
 * `linux-libc-dev-arm64-cross`) for the arm64 ones.
 *
 * @module
 */

// ioctl number encoding, include/uapi/asm-generic/ioctl.h.
const IOC_NRSHIFT = 0n;
const IOC_TYPESHIFT = 8n;
const IOC_SIZESHIFT = 16n;
const IOC_DIRSHIFT = 30n;
const IOC_NONE = 0n;
const IOC_WRITE = 1n;
const IOC_READ = 2n;

/** `_IOC(dir, type, nr, size)`. */
function ioc(dir: bigint, type: number, nr: number, size: number): bigint {
  return (dir << IOC_DIRSHIFT) | (BigInt(type) << IOC_TYPESHIFT) |
    (BigInt(nr) << IOC_NRSHIFT) | (BigInt(size) << IOC_SIZESHIFT);
}
/** `_IO(type, nr)`. */
export function io(type: number, nr: number): bigint {
  return ioc(IOC_NONE, type, nr, 0);
}
/** `_IOR(type, nr, size)`. */
export function ior(type: number, nr: number, size: number): bigint {
  return ioc(IOC_READ, type, nr, size);
}
/** `_IOW(type, nr, size)`. */
export function iow(type: number, nr: number, size: number): bigint {
  return ioc(IOC_WRITE, type, nr, size);
}
/** `_IOWR(type, nr, size)`. */
export function iowr(type: number, nr: number, size: number): bigint {
  return ioc(IOC_READ | IOC_WRITE, type, nr, size);
}

/** A field of a C struct: its byte offset and its C type. */
export interface Field {
  /** Byte offset from the start of the struct. */
  offset: number;
  /** C type name as in the header, used by the layout test. */
  type: "u8" | "u16" | "u32" | "i32" | "u64" | "bytes" | "struct";
}

/** A C struct layout: its name in the header, size and named fields. */
export interface StructLayout<F extends string = string> {
  /** The C name, e.g. `kvm_regs`. */
  name: string;
  /** `sizeof` the struct. */
  size: number;
  /** Fields by their C name (nested as `a.b`). */
  fields: Record<F, Field>;
}

function struct<F extends string>(
  name: string,
  size: number,
  fields: Record<F, Field>,
): StructLayout<F> {
  return { name, size, fields };
}

const u8 = (offset: number): Field => ({ offset, type: "u8" });
const u16 = (offset: number): Field => ({ offset, type: "u16" });
const u32 = (offset: number): Field => ({ offset, type: "u32" });
const u64 = (offset: number): Field => ({ offset, type: "u64" });
const bytes = (offset: number): Field => ({ offset, type: "bytes" });
const sub = (offset: number): Field => ({ offset, type: "struct" });

/** `struct kvm_regs`: general-purpose registers. */
export const kvm_regs = struct("kvm_regs", 144, {
  rax: u64(0),
  rbx: u64(8),
  rcx: u64(16),
  rdx: u64(24),
  rsi: u64(32),
  rdi: u64(40),
  rsp: u64(48),
  rbp: u64(56),
  r8: u64(64),
  r9: u64(72),
  r10: u64(80),
  r11: u64(88),
  r12: u64(96),
  r13: u64(104),
  r14: u64(112),
  r15: u64(120),
  rip: u64(128),
  rflags: u64(136),
});

/** `struct kvm_segment`: a segment register's hidden state. */
export const kvm_segment = struct("kvm_segment", 24, {
  base: u64(0),
  limit: u32(8),
  selector: u16(12),
  type: u8(14),
  present: u8(15),
  dpl: u8(16),
  db: u8(17),
  s: u8(18),
  l: u8(19),
  g: u8(20),
  avl: u8(21),
  unusable: u8(22),
});

/** `struct kvm_dtable`: a descriptor table register (GDTR, IDTR). */
export const kvm_dtable = struct("kvm_dtable", 16, {
  base: u64(0),
  limit: u16(8),
});

/** `struct kvm_sregs`: segment, control and descriptor-table registers. */
export const kvm_sregs = struct("kvm_sregs", 312, {
  cs: sub(0),
  ds: sub(24),
  es: sub(48),
  fs: sub(72),
  gs: sub(96),
  ss: sub(120),
  tr: sub(144),
  ldt: sub(168),
  gdt: sub(192),
  idt: sub(208),
  cr0: u64(224),
  cr2: u64(232),
  cr3: u64(240),
  cr4: u64(248),
  cr8: u64(256),
  efer: u64(264),
  apic_base: u64(272),
  interrupt_bitmap: bytes(280),
});

/** `struct kvm_run`: the shared page of a vCPU (header and exit members). */
export const kvm_run = struct("kvm_run", 2352, {
  request_interrupt_window: u8(0),
  immediate_exit: u8(1),
  exit_reason: u32(8),
  ready_for_interrupt_injection: u8(12),
  if_flag: u8(13),
  flags: u16(14),
  cr8: u64(16),
  apic_base: u64(24),
  "io.direction": u8(32),
  "io.size": u8(33),
  "io.port": u16(34),
  "io.count": u32(36),
  "io.data_offset": u64(40),
  "mmio.phys_addr": u64(32),
  "mmio.data": bytes(40),
  "mmio.len": u32(48),
  "mmio.is_write": u8(52),
  "system_event.type": u32(32),
  "system_event.ndata": u32(36),
  "system_event.data": bytes(40),
  "internal.suberror": u32(32),
  "internal.ndata": u32(36),
  "internal.data": bytes(40),
  "fail_entry.hardware_entry_failure_reason": u64(32),
  "fail_entry.cpu": u32(40),
  "hw.hardware_exit_reason": u64(32),
});

/** `struct kvm_userspace_memory_region`: one guest memory slot. */
export const kvm_userspace_memory_region = struct(
  "kvm_userspace_memory_region",
  32,
  {
    slot: u32(0),
    flags: u32(4),
    guest_phys_addr: u64(8),
    memory_size: u64(16),
    userspace_addr: u64(24),
  },
);

/** `struct kvm_cpuid_entry2`: one CPUID leaf. */
export const kvm_cpuid_entry2 = struct("kvm_cpuid_entry2", 40, {
  function: u32(0),
  index: u32(4),
  flags: u32(8),
  eax: u32(12),
  ebx: u32(16),
  ecx: u32(20),
  edx: u32(24),
});

/** `struct kvm_cpuid2`: header of a CPUID leaf array. */
export const kvm_cpuid2 = struct("kvm_cpuid2", 8, {
  nent: u32(0),
  entries: bytes(8),
});

/** `struct kvm_msr_entry`: one model-specific register. */
export const kvm_msr_entry = struct("kvm_msr_entry", 16, {
  index: u32(0),
  data: u64(8),
});

/** `struct kvm_msrs`: header of an MSR array. */
export const kvm_msrs = struct("kvm_msrs", 8, {
  nmsrs: u32(0),
  entries: bytes(8),
});

/** `struct kvm_fpu`: x87 and SSE state. */
export const kvm_fpu = struct("kvm_fpu", 416, {
  fpr: bytes(0),
  fcw: u16(128),
  fsw: u16(130),
  ftwx: u8(132),
  last_opcode: u16(134),
  last_ip: u64(136),
  last_dp: u64(144),
  xmm: bytes(152),
  mxcsr: u32(408),
});

/** `struct kvm_xsave`: the XSAVE area. */
export const kvm_xsave = struct("kvm_xsave", 4096, { region: bytes(0) });

/** `struct kvm_xcrs`: extended control registers (XCR0). */
export const kvm_xcrs = struct("kvm_xcrs", 392, {
  nr_xcrs: u32(0),
  flags: u32(4),
  xcrs: bytes(8),
});

/** `struct kvm_lapic_state`: the local APIC's register page. */
export const kvm_lapic_state = struct("kvm_lapic_state", 1024, {
  regs: bytes(0),
});

/** `struct kvm_irq_level`: an interrupt line and its level. */
export const kvm_irq_level = struct("kvm_irq_level", 8, {
  irq: u32(0),
  level: u32(4),
});

/** `struct kvm_irqchip`: PIC or IOAPIC state. */
export const kvm_irqchip = struct("kvm_irqchip", 520, {
  chip_id: u32(0),
  chip: bytes(8),
});

/** `struct kvm_pit_config`: flags for `KVM_CREATE_PIT2`. */
export const kvm_pit_config = struct("kvm_pit_config", 64, {
  flags: u32(0),
});

/** `struct kvm_pit_state2`: the i8254 timer's state. */
export const kvm_pit_state2 = struct("kvm_pit_state2", 112, {
  channels: bytes(0),
  flags: u32(72),
});

/** `struct kvm_clock_data`: kvmclock state. */
export const kvm_clock_data = struct("kvm_clock_data", 48, {
  clock: u64(0),
  flags: u32(8),
  realtime: u64(16),
  host_tsc: u64(24),
});

/** `struct kvm_ioeventfd`: an eventfd signalled by a guest write. */
export const kvm_ioeventfd = struct("kvm_ioeventfd", 64, {
  datamatch: u64(0),
  addr: u64(8),
  len: u32(16),
  fd: u32(20),
  flags: u32(24),
});

/** `struct kvm_irqfd`: an eventfd that raises a guest interrupt. */
export const kvm_irqfd = struct("kvm_irqfd", 32, {
  fd: u32(0),
  gsi: u32(4),
  flags: u32(8),
  resamplefd: u32(12),
});

/** `struct kvm_one_reg`: one register for `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`. */
export const kvm_one_reg = struct("kvm_one_reg", 16, {
  id: u64(0),
  /** The address of the value, whose size the id encodes. */
  addr: u64(8),
});

/** `struct kvm_create_device`: `KVM_CREATE_DEVICE`'s argument; `fd` is out. */
export const kvm_create_device = struct("kvm_create_device", 12, {
  type: u32(0),
  fd: u32(4),
  flags: u32(8),
});

/** `struct kvm_device_attr`: one attribute of a KVM device. */
export const kvm_device_attr = struct("kvm_device_attr", 24, {
  flags: u32(0),
  group: u32(4),
  attr: u64(8),
  /** The address of the value (its size depends on the group). */
  addr: u64(16),
});

/** Every layout above, for the layout test. */
export const ALL_STRUCTS: StructLayout[] = [
  kvm_regs,
  kvm_segment,
  kvm_dtable,
  kvm_sregs,
  kvm_run,
  kvm_userspace_memory_region,
  kvm_cpuid_entry2,
  kvm_cpuid2,
  kvm_msr_entry,
  kvm_msrs,
  kvm_fpu,
  kvm_xsave,
  kvm_xcrs,
  kvm_lapic_state,
  kvm_irq_level,
  kvm_irqchip,
  kvm_pit_config,
  kvm_pit_state2,
  kvm_clock_data,
  kvm_ioeventfd,
  kvm_irqfd,
  kvm_one_reg,
  kvm_create_device,
  kvm_device_attr,
];

// ---------------------------------------------------------------------------
// arm64 (arch/arm64/include/uapi/asm/kvm.h).

/** `struct kvm_vcpu_init` (arm64): the target CPU and feature bitmap. */
export const kvm_vcpu_init = struct("kvm_vcpu_init", 32, {
  target: u32(0),
  /** `__u32 features[7]`: bit `n` of the bitmap is bit `n % 32` of word `n / 32`. */
  features: bytes(4),
});

/**
 * `struct kvm_regs` of arm64, for the offsets `KVM_REG_ARM_CORE` register
 * ids are made of (offset / 4). `regs` is `struct user_pt_regs`, whose `sp`
 * is SP_EL0; `spsr[0]` is SPSR_EL1 (`KVM_SPSR_EL1`).
 */
export const arm64_kvm_regs = struct("kvm_regs", 864, {
  "regs.regs": bytes(0),
  "regs.sp": u64(248),
  "regs.pc": u64(256),
  "regs.pstate": u64(264),
  sp_el1: u64(272),
  elr_el1: u64(280),
  spsr: bytes(288),
  fp_regs: sub(336),
});

/**
 * `struct kvm_run` members only arm64 has: the syndrome of a debug exit
 * (`struct kvm_debug_exit_arch`). The rest is {@linkcode kvm_run}.
 */
export const arm64_kvm_run = struct("kvm_run", 2352, {
  exit_reason: u32(8),
  "debug.arch.hsr": u32(32),
  "debug.arch.hsr_high": u32(36),
  "debug.arch.far": u64(40),
  "arm_nisv.esr_iss": u64(32),
  "arm_nisv.fault_ipa": u64(40),
});

/** The arm64 layouts, for the layout test against the arm64 header. */
export const ARM64_STRUCTS: StructLayout[] = [
  kvm_vcpu_init,
  arm64_kvm_regs,
  arm64_kvm_run,
  kvm_one_reg,
  kvm_create_device,
  kvm_device_attr,
];

/** The ioctl type byte of KVM (`KVMIO`). */
export const KVMIO = 0xae;

/** KVM ioctl request numbers, by their C name. */
export const KVM = {
  // System ioctls (on the /dev/kvm fd).
  GET_API_VERSION: io(KVMIO, 0x00),
  CREATE_VM: io(KVMIO, 0x01),
  CHECK_EXTENSION: io(KVMIO, 0x03),
  GET_VCPU_MMAP_SIZE: io(KVMIO, 0x04),
  GET_SUPPORTED_CPUID: iowr(KVMIO, 0x05, kvm_cpuid2.size),
  // VM ioctls.
  CREATE_VCPU: io(KVMIO, 0x41),
  SET_USER_MEMORY_REGION: iow(KVMIO, 0x46, kvm_userspace_memory_region.size),
  SET_TSS_ADDR: io(KVMIO, 0x47),
  SET_IDENTITY_MAP_ADDR: iow(KVMIO, 0x48, 8),
  CREATE_IRQCHIP: io(KVMIO, 0x60),
  IRQ_LINE: iow(KVMIO, 0x61, kvm_irq_level.size),
  GET_IRQCHIP: iowr(KVMIO, 0x62, kvm_irqchip.size),
  SET_IRQCHIP: ior(KVMIO, 0x63, kvm_irqchip.size),
  IRQFD: iow(KVMIO, 0x76, kvm_irqfd.size),
  CREATE_PIT2: iow(KVMIO, 0x77, kvm_pit_config.size),
  IOEVENTFD: iow(KVMIO, 0x79, kvm_ioeventfd.size),
  SET_CLOCK: iow(KVMIO, 0x7b, kvm_clock_data.size),
  GET_CLOCK: ior(KVMIO, 0x7c, kvm_clock_data.size),
  GET_PIT2: ior(KVMIO, 0x9f, kvm_pit_state2.size),
  SET_PIT2: iow(KVMIO, 0xa0, kvm_pit_state2.size),
  // vCPU ioctls.
  RUN: io(KVMIO, 0x80),
  GET_REGS: ior(KVMIO, 0x81, kvm_regs.size),
  SET_REGS: iow(KVMIO, 0x82, kvm_regs.size),
  GET_SREGS: ior(KVMIO, 0x83, kvm_sregs.size),
  SET_SREGS: iow(KVMIO, 0x84, kvm_sregs.size),
  GET_MSRS: iowr(KVMIO, 0x88, kvm_msrs.size),
  SET_MSRS: iow(KVMIO, 0x89, kvm_msrs.size),
  GET_FPU: ior(KVMIO, 0x8c, kvm_fpu.size),
  SET_FPU: iow(KVMIO, 0x8d, kvm_fpu.size),
  GET_LAPIC: ior(KVMIO, 0x8e, kvm_lapic_state.size),
  SET_LAPIC: iow(KVMIO, 0x8f, kvm_lapic_state.size),
  SET_CPUID2: iow(KVMIO, 0x90, kvm_cpuid2.size),
  GET_CPUID2: iowr(KVMIO, 0x91, kvm_cpuid2.size),
  GET_XSAVE: ior(KVMIO, 0xa4, kvm_xsave.size),
  SET_XSAVE: iow(KVMIO, 0xa5, kvm_xsave.size),
  GET_XCRS: ior(KVMIO, 0xa6, kvm_xcrs.size),
  SET_XCRS: iow(KVMIO, 0xa7, kvm_xcrs.size),
  GET_ONE_REG: iow(KVMIO, 0xab, kvm_one_reg.size),
  SET_ONE_REG: iow(KVMIO, 0xac, kvm_one_reg.size),
  // Device ioctls: KVM_CREATE_DEVICE on the VM fd, the others on the device's.
  CREATE_DEVICE: iowr(KVMIO, 0xe0, kvm_create_device.size),
  SET_DEVICE_ATTR: iow(KVMIO, 0xe1, kvm_device_attr.size),
  GET_DEVICE_ATTR: iow(KVMIO, 0xe2, kvm_device_attr.size),
  HAS_DEVICE_ATTR: iow(KVMIO, 0xe3, kvm_device_attr.size),
} as const;

/**
 * The arm64-only ioctls (`struct kvm_vcpu_init` exists only there), by
 * their C name less `KVM_`.
 */
export const KVM_ARM64 = {
  /** vCPU: sets the target and features; before any register access or run. */
  ARM_VCPU_INIT: iow(KVMIO, 0xae, kvm_vcpu_init.size),
  /** VM: the target KVM suggests for this host's CPUs. */
  ARM_PREFERRED_TARGET: ior(KVMIO, 0xaf, kvm_vcpu_init.size),
} as const;

/** The only KVM API version there has ever been (`KVM_API_VERSION`). */
export const KVM_API_VERSION = 12;

/** `KVM_CAP_*` numbers checked with `KVM_CHECK_EXTENSION`. */
export const KVM_CAP = {
  IRQCHIP: 0,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  PIT2: 33,
  IOEVENTFD: 36,
  IRQFD: 32,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
  IMMEDIATE_EXIT: 136,
  TSC_DEADLINE_TIMER: 72,
  ONE_REG: 70,
  DEVICE_CTRL: 89,
  ARM_PSCI_0_2: 102,
} as const;

/** `KVM_EXIT_*` exit reasons. */
export const KVM_EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  /**
   * arm64: a data abort outside guest RAM without a valid syndrome, when
   * `KVM_CAP_ARM_NISV_TO_USER` is enabled (initx leaves it off, and
   * `KVM_RUN` fails with ENOSYS instead).
   */
  ARM_NISV: 28,
} as const;

/** `KVM_EXIT_IO_*` directions of a port I/O exit. */
export const KVM_EXIT_IO_IN = 0;
/** The guest wrote to the port. */
export const KVM_EXIT_IO_OUT = 1;

/** `KVM_SYSTEM_EVENT_*` types. */
export const KVM_SYSTEM_EVENT = {
  SHUTDOWN: 1,
  RESET: 2,
  CRASH: 3,
} as const;

/**
 * `KVM_ARM_VCPU_*` feature bits of `kvm_vcpu_init.features` (arm64,
 * api.rst "KVM_ARM_VCPU_INIT").
 */
export const KVM_ARM_VCPU_FEATURE = {
  /** Start powered off, until a PSCI CPU_ON names the vCPU. */
  POWER_OFF: 0,
  /** In-kernel PSCI 0.2 (and later) over HVC. */
  PSCI_0_2: 2,
} as const;

/** `KVM_DEV_TYPE_ARM_VGIC_V3`: the in-kernel GICv3 (`enum kvm_device_type`). */
export const KVM_DEV_TYPE_ARM_VGIC_V3 = 7;

/** Attribute groups and attributes of the GICv3 device (arm-vgic-v3.rst). */
export const KVM_DEV_ARM_VGIC = {
  /** `KVM_DEV_ARM_VGIC_GRP_ADDR`: base addresses; `attr` a `KVM_VGIC_V3_ADDR_TYPE_*`, value a u64. */
  GRP_ADDR: 0,
  /** `KVM_DEV_ARM_VGIC_GRP_NR_IRQS`: INTIDs including the 32 private ones, a u32 (64 to 1024, a multiple of 32). */
  GRP_NR_IRQS: 3,
  /** `KVM_DEV_ARM_VGIC_GRP_CTRL`. */
  GRP_CTRL: 4,
  /** `KVM_DEV_ARM_VGIC_CTRL_INIT`: after every vCPU was created, before any runs. */
  CTRL_INIT: 0,
} as const;

/** `KVM_VGIC_V3_ADDR_TYPE_*`: the `attr` of `KVM_DEV_ARM_VGIC_GRP_ADDR`. */
export const KVM_VGIC_V3_ADDR_TYPE = {
  /** The distributor, `KVM_VGIC_V3_DIST_SIZE` (64 KiB) long, 64 KiB aligned. */
  DIST: 2,
  /** The redistributors, `KVM_VGIC_V3_REDIST_SIZE` (128 KiB) each, vCPU 0 first. */
  REDIST: 3,
} as const;

/** `KVM_VGIC_V3_DIST_SIZE`: the GICv3 distributor's window. */
export const KVM_VGIC_V3_DIST_SIZE = 0x1_0000n;
/** `KVM_VGIC_V3_REDIST_SIZE`: one vCPU's redistributor window. */
export const KVM_VGIC_V3_REDIST_SIZE = 0x2_0000n;

/**
 * The `irq` field of `KVM_IRQ_LINE` on arm64 (api.rst "KVM_IRQ_LINE"):
 * `irq_type` in bits 27:24, `vcpu_index` in 23:16, `irq_id` in 15:0. For
 * an SPI of the in-kernel GIC, `irq_id` is the INTID itself (32 to 1019),
 * not the SPI's index.
 */
export const KVM_ARM_IRQ = {
  TYPE_SHIFT: 24,
  NUM_MASK: 0xffff,
  /** `KVM_ARM_IRQ_TYPE_SPI`: a shared peripheral interrupt of the in-kernel GIC. */
  TYPE_SPI: 1,
} as const;

/**
 * Register id fields of `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG` on arm64
 * (api.rst "KVM_SET_ONE_REG", "ARM64 registers are mapped using the lower
 * 32 bits").
 */
export const KVM_REG = {
  /** `KVM_REG_ARM64`: the architecture. */
  ARM64: 0x6000_0000_0000_0000n,
  /** `KVM_REG_SIZE_U64`: a 64-bit register. */
  SIZE_U64: 0x0030_0000_0000_0000n,
  /** `KVM_REG_ARM_CORE`: a `struct kvm_regs` member; index = offset / 4. */
  ARM_CORE: 0x0010n << 16n,
  /** `KVM_REG_ARM64_SYSREG`: a system register by its MRS/MSR encoding. */
  ARM64_SYSREG: 0x0013n << 16n,
} as const;

/** `KVM_REG_ARM64_SYSREG_*_SHIFT`: where the encoding fields go. */
export const KVM_REG_ARM64_SYSREG_SHIFT = {
  op0: 14n,
  op1: 11n,
  crn: 7n,
  crm: 3n,
  op2: 0n,
} as const;

/** `KVM_PIT_SPEAKER_DUMMY`: a dummy speaker port for the PIT. */
export const KVM_PIT_SPEAKER_DUMMY = 1;

/** `KVM_IRQFD_FLAG_DEASSIGN`. */
export const KVM_IRQFD_FLAG_DEASSIGN = 1;

/** `kvm_ioeventfd` flags (`KVM_IOEVENTFD_FLAG_*`). */
export const KVM_IOEVENTFD_FLAG = {
  DATAMATCH: 1 << 0,
  PIO: 1 << 1,
  DEASSIGN: 1 << 2,
} as const;

/** Writes the fields of `values` into `view` at `base` per `layout`. */
export function writeStruct<F extends string>(
  view: DataView,
  layout: StructLayout<F>,
  values: Partial<Record<F, bigint | number>>,
  base = 0,
): void {
  for (
    const [name, value] of Object.entries(values) as [F, bigint | number][]
  ) {
    const f = layout.fields[name];
    const at = base + f.offset;
    switch (f.type) {
      case "u8":
        view.setUint8(at, Number(value));
        break;
      case "u16":
        view.setUint16(at, Number(value), true);
        break;
      case "u32":
        view.setUint32(at, Number(value), true);
        break;
      case "i32":
        view.setInt32(at, Number(value), true);
        break;
      case "u64":
        view.setBigUint64(at, BigInt(value), true);
        break;
      default:
        throw new Error(
          `Cannot write ${layout.name}.${name}: it is not a scalar field`,
        );
    }
  }
}

/** Reads one scalar field of `layout` from `view` at `base`. */
export function readField<F extends string>(
  view: DataView,
  layout: StructLayout<F>,
  name: F,
  base = 0,
): bigint {
  const f = layout.fields[name];
  const at = base + f.offset;
  switch (f.type) {
    case "u8":
      return BigInt(view.getUint8(at));
    case "u16":
      return BigInt(view.getUint16(at, true));
    case "u32":
      return BigInt(view.getUint32(at, true));
    case "i32":
      return BigInt(view.getInt32(at, true));
    case "u64":
      return view.getBigUint64(at, true);
    default:
      throw new Error(
        `Cannot read ${layout.name}.${name}: it is not a scalar field`,
      );
  }
}
