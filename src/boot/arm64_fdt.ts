/**
 * The device tree of an arm64 initx VM, and the machine it describes.
 *
 * The machine is a small cousin of QEMU's `virt` board, so a kernel that
 * boots there boots here:
 *
 * ```text
 * 0x0800_0000 ─ 0x0800_ffff  GICv3 distributor
 * 0x080a_0000 ─ 0x08ff_ffff  GICv3 redistributors, 128 KiB per vCPU (up to 123)
 * 0x0900_0000 ─ 0x0900_0fff  16550A UART (ttyS0), SPI 1
 * 0x0a00_0000 ─ 0x0a01_ffff  32 virtio-mmio windows of 4 KiB, SPIs 16..47
 * 0x4000_0000 ─              RAM
 * ```
 *
 * Differences from QEMU `virt`, on purpose: the UART is a 16550A (the model
 * initx already has, `src/devices/serial.ts`, driven over MMIO with byte
 * registers) rather than a PL011, which would need a second UART model and
 * an `apb_pclk` clock node; virtio-mmio windows are 4 KiB apart rather than
 * 0x200, the window size of initx's virtio-mmio device; and device
 * interrupts default to edge-triggered, as initx's device models pulse
 * their line when an interrupt becomes pending.
 *
 * Bindings followed (Linux Documentation/devicetree/bindings/):
 * `interrupt-controller/arm,gic-v3.yaml` (three interrupt cells: type 0 SPI
 * or 1 PPI, number, flags 1 edge-rising or 4 level-high),
 * `timer/arm,arch_timer.yaml` (secure, non-secure, virtual and hypervisor
 * timer PPIs 13, 14, 11, 10), `arm/psci.yaml`, `arm/cpus.yaml`,
 * `virtio/mmio.yaml`, `serial/8250.yaml`, and `chosen.yaml`.
 *
 * @module
 */

import { ARM64_DTB_MAX_BYTES } from "./arm64_image.ts";
import {
  empty,
  encodeFdt,
  type FdtNode,
  node,
  phandle,
  str,
  strList,
  u32,
  u32List,
  u64,
  u64List,
} from "./fdt.ts";

// ---------------------------------------------------------------------------
// The machine.

/** A guest physical address range. */
export interface Arm64MmioRegion {
  /** First byte. */
  base: bigint;
  /** Size in bytes. */
  size: bigint;
}

/**
 * How a device's interrupt line behaves: `"edge"` (a pulse per interrupt,
 * what KVM_IRQFD and pulsed KVM_IRQ_LINE give) or `"level"` (held until the
 * guest clears the cause).
 */
export type Arm64IrqTrigger = "edge" | "level";

/** The console UART: a 16550A with byte-wide registers over MMIO. */
export interface Arm64Uart extends Arm64MmioRegion {
  /** GIC SPI number (the INTID is 32 + spi). */
  spi: number;
  /** Input clock in Hz, from which the guest computes baud divisors. */
  clockHz: number;
  /** Interrupt trigger. */
  trigger: Arm64IrqTrigger;
}

/** A virtio-mmio device: its register window and interrupt. */
export interface Arm64VirtioMmioDevice extends Arm64MmioRegion {
  /** GIC SPI number (the INTID is 32 + spi). */
  spi: number;
  /** Interrupt trigger; default `"edge"`. */
  trigger?: Arm64IrqTrigger;
}

/** Where everything of an arm64 initx VM sits in guest physical memory. */
export interface Arm64Layout {
  /** First byte of RAM. */
  ramBase: bigint;
  /** Most RAM the layout has room for. */
  ramMaxBytes: bigint;
  /** GICv3 distributor (64 KiB). */
  gicDistributor: Arm64MmioRegion;
  /**
   * Room for the GICv3 redistributors; each vCPU uses
   * {@link ARM64_GIC_REDISTRIBUTOR_BYTES} from the base up, so its size caps
   * the vCPU count.
   */
  gicRedistributors: Arm64MmioRegion;
  /** The console UART. */
  uart: Arm64Uart;
  /** virtio-mmio windows: `count` of them, `stride` apart from `base`, SPIs from `firstSpi`. */
  virtioMmio: {
    base: bigint;
    stride: bigint;
    firstSpi: number;
    count: number;
  };
}

/** One vCPU's GICv3 redistributor: RD_base and SGI_base frames of 64 KiB each. */
export const ARM64_GIC_REDISTRIBUTOR_BYTES = 0x2_0000n;
/** INTID of SPI 0: KVM_IRQ_LINE and the GIC count SPIs from here. */
export const ARM64_SPI_INTID_BASE = 32;
/** Highest SPI number a GICv3 has (INTID 1019). */
const MAX_SPI = 987;

const GIB = 1024n * 1024n * 1024n;

/**
 * initx's arm64 machine (see the module doc for the map).
 *
 * @example
 * ```ts
 * import { ARM64_LAYOUT } from "./arm64_fdt.ts";
 * ARM64_LAYOUT.uart.base; // 0x9000000n
 * ```
 */
export const ARM64_LAYOUT: Arm64Layout = Object.freeze({
  ramBase: 0x4000_0000n,
  ramMaxBytes: 255n * GIB,
  gicDistributor: Object.freeze({ base: 0x0800_0000n, size: 0x1_0000n }),
  gicRedistributors: Object.freeze({ base: 0x080a_0000n, size: 0xf6_0000n }),
  uart: Object.freeze({
    base: 0x0900_0000n,
    size: 0x1000n,
    spi: 1,
    clockHz: 1_843_200,
    trigger: "edge" as const,
  }),
  virtioMmio: Object.freeze({
    base: 0x0a00_0000n,
    stride: 0x1000n,
    firstSpi: 16,
    count: 32,
  }),
});

/**
 * The window and SPI of virtio-mmio device `index` in `layout`.
 *
 * @example
 * ```ts
 * import { arm64VirtioMmioWindow } from "./arm64_fdt.ts";
 * arm64VirtioMmioWindow(1); // { base: 0xa001000n, size: 0x1000n, spi: 17 }
 * ```
 */
export function arm64VirtioMmioWindow(
  index: number,
  layout: Arm64Layout = ARM64_LAYOUT,
): Arm64VirtioMmioDevice {
  const { base, stride, firstSpi, count } = layout.virtioMmio;
  if (!Number.isInteger(index) || index < 0 || index >= count) {
    throw new RangeError(
      `Cannot place virtio-mmio device: index ${index} is outside 0..${
        count - 1
      }`,
    );
  }
  return {
    base: base + BigInt(index) * stride,
    size: stride,
    spi: firstSpi + index,
  };
}

/**
 * The MPIDR affinity of vCPU `index` as KVM assigns it by default
 * (Aff0 = bits 0-3 of the index, Aff1 = bits 4-11, Aff2 = bits 12-19): the
 * `reg` of its `cpu` node, and what PSCI CPU_ON names it by.
 *
 * @example
 * ```ts
 * import { arm64CpuMpidr } from "./arm64_fdt.ts";
 * arm64CpuMpidr(17); // 0x101
 * ```
 */
export function arm64CpuMpidr(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= 1 << 20) {
    throw new RangeError(
      `Cannot name vCPU ${index}: index is outside 0..2^20-1`,
    );
  }
  return (index & 0xf) | (((index >> 4) & 0xff) << 8) |
    (((index >> 12) & 0xff) << 16);
}

// ---------------------------------------------------------------------------
// Binding constants.

/** GIC interrupt type cell: shared peripheral interrupt (arm-gic.h `GIC_SPI`). */
const GIC_SPI = 0;
/** GIC interrupt type cell: private peripheral interrupt (arm-gic.h `GIC_PPI`). */
const GIC_PPI = 1;
/** Interrupt flags cell: rising edge (irq.h `IRQ_TYPE_EDGE_RISING`). */
const IRQ_TYPE_EDGE_RISING = 1;
/** Interrupt flags cell: active-high level (irq.h `IRQ_TYPE_LEVEL_HIGH`). */
const IRQ_TYPE_LEVEL_HIGH = 4;
/**
 * Architected timer PPIs in binding order: secure physical, non-secure
 * physical, virtual, hypervisor (INTIDs 29, 30, 27, 26).
 */
const TIMER_PPIS = [13, 14, 11, 10] as const;
/** The GIC's phandle, the root's `interrupt-parent`. */
const GIC_PHANDLE = 1;
/**
 * PSCI 0.2 function IDs (ARM DEN 0022, SMC64 where there is one), given for
 * readers that only know the original "arm,psci" binding.
 */
const PSCI_CPU_SUSPEND = 0xc400_0001;
const PSCI_CPU_OFF = 0x8400_0002;
const PSCI_CPU_ON = 0xc400_0003;
const PSCI_MIGRATE = 0xc400_0005;
/** arm64 COMMAND_LINE_SIZE (arch/arm64/include/uapi/asm/setup.h), with the NUL. */
const CMDLINE_MAX_BYTES = 2048;
/** RAM must be a multiple of this: the largest arm64 page size. */
const RAM_ALIGN = 64n * 1024n;

// ---------------------------------------------------------------------------
// The tree.

/** What {@link buildArm64Fdt} describes. */
export interface Arm64FdtConfig {
  /** RAM size in bytes, from `layout.ramBase`; a multiple of 64 KiB. */
  memoryBytes: bigint | number;
  /** Number of vCPUs: `cpu` nodes for MPIDRs `arm64CpuMpidr(0..cpus-1)`. */
  cpus: number;
  /** Kernel command line (`/chosen/bootargs`), at most 2047 bytes. */
  cmdline: string;
  /** Where the initramfs was loaded, if any (`linux,initrd-start`/`-end`). */
  initrd?: { addr: bigint; size: bigint };
  /** virtio-mmio devices, e.g. from {@link arm64VirtioMmioWindow}; default none. */
  virtioMmio?: Arm64VirtioMmioDevice[];
  /** Random bytes for `/chosen/rng-seed`, which seeds the guest's RNG early. */
  rngSeed?: Uint8Array;
  /** The machine; default {@link ARM64_LAYOUT}. */
  layout?: Arm64Layout;
}

function fail(detail: string): never {
  throw new Error(`Cannot build arm64 device tree: ${detail}`);
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

function interrupt(spi: number, trigger: Arm64IrqTrigger = "edge"): Uint8Array {
  return u32List(
    GIC_SPI,
    spi,
    trigger === "edge" ? IRQ_TYPE_EDGE_RISING : IRQ_TYPE_LEVEL_HIGH,
  );
}

function reg(region: Arm64MmioRegion): Uint8Array {
  return u64List(region.base, region.size);
}

/** Throws when two of the labelled regions overlap. */
function checkDisjoint(regions: { label: string; region: Arm64MmioRegion }[]) {
  const sorted = [...regions].sort((a, b) =>
    a.region.base < b.region.base ? -1 : a.region.base > b.region.base ? 1 : 0
  );
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const next = sorted[i]!;
    if (prev.region.base + prev.region.size > next.region.base) {
      fail(
        `${next.label} at ${hex(next.region.base)} overlaps ${prev.label} at ${
          hex(prev.region.base)
        }..${hex(prev.region.base + prev.region.size)}`,
      );
    }
  }
}

function checkConfig(config: Arm64FdtConfig, layout: Arm64Layout): void {
  const maxCpus = Number(
    layout.gicRedistributors.size / ARM64_GIC_REDISTRIBUTOR_BYTES,
  );
  if (
    !Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > maxCpus
  ) {
    fail(
      `cpu count ${config.cpus} is outside 1..${maxCpus} (the room for GIC redistributors)`,
    );
  }
  const memoryBytes = BigInt(config.memoryBytes);
  if (memoryBytes <= 0n || memoryBytes % RAM_ALIGN !== 0n) {
    fail(`memory size ${memoryBytes} is not a positive multiple of 64 KiB`);
  }
  if (memoryBytes > layout.ramMaxBytes) {
    fail(
      `memory size ${memoryBytes} exceeds the layout's ${layout.ramMaxBytes} bytes`,
    );
  }
  const cmdline = new TextEncoder().encode(config.cmdline);
  if (cmdline.includes(0)) fail(`command line contains a NUL byte`);
  if (cmdline.length >= CMDLINE_MAX_BYTES) {
    fail(
      `command line of ${cmdline.length} bytes exceeds the kernel's limit of ${
        CMDLINE_MAX_BYTES - 1
      }`,
    );
  }
  const ramEnd = layout.ramBase + memoryBytes;
  if (config.initrd !== undefined) {
    const { addr, size } = config.initrd;
    if (size <= 0n || addr < layout.ramBase || addr + size > ramEnd) {
      fail(
        `initrd at ${hex(addr)} of ${size} bytes is not inside RAM ${
          hex(layout.ramBase)
        }..${hex(ramEnd)}`,
      );
    }
  }
  const devices = config.virtioMmio ?? [];
  const spis = new Map<number, string>([[layout.uart.spi, "the UART"]]);
  devices.forEach((d, i) => {
    const label = `virtio-mmio device ${i}`;
    if (!Number.isInteger(d.spi) || d.spi < 0 || d.spi > MAX_SPI) {
      fail(`${label} has SPI ${d.spi}, outside 0..${MAX_SPI}`);
    }
    const owner = spis.get(d.spi);
    if (owner !== undefined) {
      fail(`${label} has SPI ${d.spi}, already used by ${owner}`);
    }
    spis.set(d.spi, label);
    if (d.size <= 0n) fail(`${label} has an empty window`);
  });
  checkDisjoint([
    { label: "RAM", region: { base: layout.ramBase, size: memoryBytes } },
    { label: "the GIC distributor", region: layout.gicDistributor },
    {
      label: "the GIC redistributors",
      region: {
        base: layout.gicRedistributors.base,
        size: BigInt(config.cpus) * ARM64_GIC_REDISTRIBUTOR_BYTES,
      },
    },
    { label: "the UART", region: layout.uart },
    ...devices.map((region, i) => ({
      label: `virtio-mmio device ${i}`,
      region,
    })),
  ]);
}

/**
 * Builds the DTB that boots arm64 Linux on initx's machine: root
 * (`compatible = "initx,virt", "linux,dummy-virt"`, two address and size
 * cells, the GIC as interrupt parent), `chosen` (bootargs, stdout-path, the
 * initrd, an RNG seed), `memory`, `cpus` (PSCI enable-method), `psci`
 * (0.2, HVC), the GICv3, the architected timer, the 16550A UART and the
 * virtio-mmio devices. Addresses come from `config.layout`.
 *
 * Throws `Cannot build arm64 device tree: ...` for a vCPU count the
 * redistributor room cannot hold, RAM not a positive multiple of 64 KiB, a
 * command line over 2047 bytes, an initrd outside RAM, overlapping windows
 * or shared SPIs, and `Cannot encode devicetree: ...` for a blob over the
 * 2 MiB arm64 Linux accepts.
 *
 * @example
 * ```ts
 * import { arm64VirtioMmioWindow, buildArm64Fdt } from "./arm64_fdt.ts";
 * const dtb = buildArm64Fdt({
 *   memoryBytes: 512n << 20n,
 *   cpus: 2,
 *   cmdline: "console=ttyS0 earlycon panic=-1",
 *   initrd: { addr: 0x4400_0000n, size: 0x10_0000n },
 *   virtioMmio: [arm64VirtioMmioWindow(0), arm64VirtioMmioWindow(1)],
 * });
 * console.assert(new DataView(dtb.buffer).getUint32(0) === 0xd00dfeed);
 * ```
 */
export function buildArm64Fdt(config: Arm64FdtConfig): Uint8Array {
  const layout = config.layout ?? ARM64_LAYOUT;
  checkConfig(config, layout);
  const memoryBytes = BigInt(config.memoryBytes);
  const uartName = `serial@${layout.uart.base.toString(16)}`;

  const chosen: Record<string, Uint8Array> = {
    bootargs: str(config.cmdline),
    "stdout-path": str(`/${uartName}`),
  };
  if (config.initrd !== undefined) {
    chosen["linux,initrd-start"] = u64(config.initrd.addr);
    chosen["linux,initrd-end"] = u64(config.initrd.addr + config.initrd.size);
  }
  if (config.rngSeed !== undefined) chosen["rng-seed"] = config.rngSeed.slice();

  const cpus: FdtNode[] = Array.from({ length: config.cpus }, (_, i) => {
    const mpidr = arm64CpuMpidr(i);
    return node(`cpu@${mpidr.toString(16)}`, {
      device_type: str("cpu"),
      compatible: str("arm,arm-v8"),
      reg: u32(mpidr),
      "enable-method": str("psci"),
    });
  });

  const timerFlags = IRQ_TYPE_LEVEL_HIGH;
  const root = node("", {
    "#address-cells": u32(2),
    "#size-cells": u32(2),
    compatible: strList("initx,virt", "linux,dummy-virt"),
    model: str("initx virt"),
    "interrupt-parent": phandle(GIC_PHANDLE),
  }, [
    node("chosen", chosen),
    node(`memory@${layout.ramBase.toString(16)}`, {
      device_type: str("memory"),
      reg: u64List(layout.ramBase, memoryBytes),
    }),
    node("cpus", { "#address-cells": u32(1), "#size-cells": u32(0) }, cpus),
    node("psci", {
      compatible: strList("arm,psci-0.2", "arm,psci"),
      method: str("hvc"),
      cpu_suspend: u32(PSCI_CPU_SUSPEND),
      cpu_off: u32(PSCI_CPU_OFF),
      cpu_on: u32(PSCI_CPU_ON),
      migrate: u32(PSCI_MIGRATE),
    }),
    node(`intc@${layout.gicDistributor.base.toString(16)}`, {
      compatible: str("arm,gic-v3"),
      "#interrupt-cells": u32(3),
      // No ITS child nodes, so no child address space: 0 cells.
      "#address-cells": u32(0),
      "interrupt-controller": empty(),
      reg: u64List(
        layout.gicDistributor.base,
        layout.gicDistributor.size,
        layout.gicRedistributors.base,
        BigInt(config.cpus) * ARM64_GIC_REDISTRIBUTOR_BYTES,
      ),
      phandle: u32(GIC_PHANDLE),
    }),
    node("timer", {
      compatible: str("arm,armv8-timer"),
      interrupts: u32List(
        ...TIMER_PPIS.flatMap((ppi) => [GIC_PPI, ppi, timerFlags]),
      ),
      "always-on": empty(),
    }),
    // reg-shift 0 and reg-io-width 1 (byte registers) are the defaults.
    node(uartName, {
      compatible: str("ns16550a"),
      reg: reg(layout.uart),
      interrupts: interrupt(layout.uart.spi, layout.uart.trigger),
      "clock-frequency": u32(layout.uart.clockHz),
    }),
    ...(config.virtioMmio ?? []).map((d) =>
      node(`virtio_mmio@${d.base.toString(16)}`, {
        compatible: str("virtio,mmio"),
        reg: reg(d),
        interrupts: interrupt(d.spi, d.trigger),
        "dma-coherent": empty(),
      })
    ),
  ]);
  return encodeFdt(root, {
    maxBytes: ARM64_DTB_MAX_BYTES,
    bootCpuidPhys: arm64CpuMpidr(0),
  });
}
