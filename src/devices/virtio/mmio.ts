/**
 * The virtio-mmio transport, version 2 (virtio 1.2 §4.2): one device behind a
 * 4 KiB window of 32-bit registers, with its configuration space at 0x100.
 *
 * Primer: the driver resets the device (Status 0), sets ACKNOWLEDGE and
 * DRIVER, reads the 64 device feature bits 32 at a time (DeviceFeaturesSel),
 * writes the ones it takes (DriverFeaturesSel/DriverFeatures) and sets
 * FEATURES_OK, which the device may refuse by leaving it clear. For each queue
 * it writes QueueSel, reads QueueNumMax (0: no such queue), writes QueueNum
 * and the three ring addresses, and sets QueueReady. DRIVER_OK then starts the
 * device. The driver kicks a queue by writing its index to QueueNotify; the
 * device interrupts with InterruptStatus bit 0 (used buffers) or bit 1
 * (configuration change), which the driver clears through InterruptACK.
 *
 * The interrupt line is edge-triggered: the owner pulses a GSI each time a
 * bit of InterruptStatus goes from 0 to 1, never while it stays set, so the
 * guest sees no interrupt it would find nothing behind.
 *
 * Register offsets: virtio 1.2 §4.2.2, table "MMIO Device Register Layout",
 * and Linux `include/uapi/linux/virtio_mmio.h`.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import {
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
  type VirtioContext,
  type VirtioDevice,
} from "./device.ts";
import { Virtqueue, VirtqueueError } from "./queue.ts";

/** Size of one virtio-mmio window in bytes. */
export const VIRTIO_MMIO_WINDOW_SIZE = 0x1000;
/** MagicValue: "virt" in little-endian ASCII. */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** Version 2: the virtio 1.x (non-legacy) register layout. */
export const VIRTIO_MMIO_VERSION = 2;
/** VendorID of initx's devices: "inix" in little-endian ASCII. */
export const VIRTIO_MMIO_VENDOR_INITX = 0x78696e69;

// Register offsets (virtio 1.2 §4.2.2).

/** R: magic value 0x74726976. */
export const REG_MAGIC_VALUE = 0x000;
/** R: device version number, 2. */
export const REG_VERSION = 0x004;
/** R: virtio subsystem device ID. */
export const REG_DEVICE_ID = 0x008;
/** R: virtio subsystem vendor ID. */
export const REG_VENDOR_ID = 0x00c;
/** R: 32 device feature bits, chosen by DeviceFeaturesSel. */
export const REG_DEVICE_FEATURES = 0x010;
/** W: which 32 device feature bits DeviceFeatures shows. */
export const REG_DEVICE_FEATURES_SEL = 0x014;
/** W: 32 feature bits the driver takes, chosen by DriverFeaturesSel. */
export const REG_DRIVER_FEATURES = 0x020;
/** W: which 32 driver feature bits DriverFeatures sets. */
export const REG_DRIVER_FEATURES_SEL = 0x024;
/** W: the queue the Queue* registers refer to. */
export const REG_QUEUE_SEL = 0x030;
/** R: maximum size of the selected queue; 0 when it does not exist. */
export const REG_QUEUE_NUM_MAX = 0x034;
/** W: size of the selected queue. */
export const REG_QUEUE_NUM = 0x038;
/** RW: the selected queue is ready (1) or not (0). */
export const REG_QUEUE_READY = 0x044;
/** W: the driver kicks the queue whose index it writes. */
export const REG_QUEUE_NOTIFY = 0x050;
/** R: pending interrupt causes ({@linkcode INT_VRING}, {@linkcode INT_CONFIG}). */
export const REG_INTERRUPT_STATUS = 0x060;
/** W: interrupt causes the driver has handled. */
export const REG_INTERRUPT_ACK = 0x064;
/** RW: device status; writing 0 resets the device. */
export const REG_STATUS = 0x070;
/** W: descriptor table address of the selected queue, low 32 bits. */
export const REG_QUEUE_DESC_LOW = 0x080;
/** W: descriptor table address, high 32 bits. */
export const REG_QUEUE_DESC_HIGH = 0x084;
/** W: driver area (available ring) address, low 32 bits. */
export const REG_QUEUE_DRIVER_LOW = 0x090;
/** W: driver area address, high 32 bits. */
export const REG_QUEUE_DRIVER_HIGH = 0x094;
/** W: device area (used ring) address, low 32 bits. */
export const REG_QUEUE_DEVICE_LOW = 0x0a0;
/** W: device area address, high 32 bits. */
export const REG_QUEUE_DEVICE_HIGH = 0x0a4;
/** W: which shared memory region SHMLen/SHMBase describe. */
export const REG_SHM_SEL = 0x0ac;
/** R: shared memory region length, low 32 bits (all ones: no region). */
export const REG_SHM_LEN_LOW = 0x0b0;
/** R: shared memory region length, high 32 bits. */
export const REG_SHM_LEN_HIGH = 0x0b4;
/** R: shared memory region base, low 32 bits (all ones: no region). */
export const REG_SHM_BASE_LOW = 0x0b8;
/** R: shared memory region base, high 32 bits. */
export const REG_SHM_BASE_HIGH = 0x0bc;
/** W: queue reset; only with VIRTIO_F_RING_RESET, which is never offered. */
export const REG_QUEUE_RESET = 0x0c0;
/** R: changes whenever the configuration space may have changed. */
export const REG_CONFIG_GENERATION = 0x0fc;
/** Start of the device-specific configuration space (byte-granular). */
export const REG_CONFIG = 0x100;

/** InterruptStatus bit: the device used buffers in at least one queue. */
export const INT_VRING = 1;
/** InterruptStatus bit: the configuration space or status changed. */
export const INT_CONFIG = 2;

const U32_MASK = 0xffffffffn;
/** Ignored guest accesses reported through onError before going quiet. */
export const MAX_IGNORED_ACCESS_REPORTS = 32;

/** Options of {@linkcode VirtioMmioTransport}. */
export interface VirtioMmioTransportOptions {
  /** Guest RAM; asked for when a queue or the device is activated. */
  memory: () => GuestMemory;
  /** Pulses the device's edge-triggered interrupt line. */
  interrupt: () => void;
  /**
   * Receives reports of device failures (bad guest data, a throwing device)
   * and of guest accesses the transport ignored. Default: ignored.
   */
  onError?: (message: string) => void;
}

/**
 * A virtio-mmio (version 2) transport for one device. The owner maps guest
 * accesses inside the device's 4 KiB window to {@linkcode read} and
 * {@linkcode write}. Nothing the guest does makes these throw: bad guest data
 * and device exceptions end in the device failing (DEVICE_NEEDS_RESET) and a
 * report through `onError`.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../../hv/memory.ts";
 * import { VirtioConsole } from "./console.ts";
 * import { REG_MAGIC_VALUE, VirtioMmioTransport } from "./mmio.ts";
 * const memory = new GuestMemory([{ base: 0n, bytes: new Uint8Array(1 << 20) }]);
 * const transport = new VirtioMmioTransport(new VirtioConsole(), {
 *   memory: () => memory,
 *   interrupt: () => {}, // e.g. pulse the window's GSI
 *   onError: (message) => console.error(message),
 * });
 * const data = new Uint8Array(4);
 * transport.read(REG_MAGIC_VALUE, data);
 * console.log(new TextDecoder().decode(data)); // "virt"
 * ```
 */
export class VirtioMmioTransport {
  #device: VirtioDevice;
  #memory: () => GuestMemory;
  #interrupt: () => void;
  #onError: (message: string) => void;
  #queues: Virtqueue[];
  #offered: bigint;
  #status = 0;
  #interruptStatus = 0;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #driverFeatures = 0n;
  /** The driver wrote a set bit through a DriverFeaturesSel above 1. */
  #driverFeaturesTooHigh = false;
  #queueSel = 0;
  #configGeneration = 0;
  /** The device got DRIVER_OK and has not been reset since. */
  #active = false;
  /** The device failed; it is not called again until the driver resets it. */
  #failed = false;
  /** Bumped by every reset and failure: contexts handed out before go dead. */
  #epoch = 0;
  /** Ignored guest accesses reported so far. */
  #notes = 0;
  /** Queues the driver kicked before DRIVER_OK, replayed on activation. */
  #earlyNotify = new Set<number>();

  /** Wraps `device`, in its reset state; the device is not called yet. */
  constructor(device: VirtioDevice, options: VirtioMmioTransportOptions) {
    this.#device = device;
    this.#memory = options.memory;
    this.#interrupt = options.interrupt;
    this.#onError = options.onError ?? (() => {});
    this.#queues = device.queueMaxSizes.map((maxSize, index) =>
      new Virtqueue({ maxSize, index })
    );
    this.#offered = (device.features | VIRTIO_F_VERSION_1) &
      ((1n << 64n) - 1n);
  }

  /** The Status register as the driver reads it. */
  get status(): number {
    return this.#status;
  }

  /** The InterruptStatus register as the driver reads it. */
  get interruptStatus(): number {
    return this.#interruptStatus;
  }

  /** The device's queues, in queue order. */
  get queues(): readonly Virtqueue[] {
    return this.#queues;
  }

  /**
   * Handles a guest read of `data.length` bytes at `offset` inside the
   * window: a 32-bit register below 0x100, any width in config space.
   * Accesses of another width, or outside the window, read as zeros.
   */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (!this.#inWindow(offset, data.length, "read")) return;
    if (offset >= REG_CONFIG) {
      if (this.#failed) return;
      try {
        this.#device.readConfig(offset - REG_CONFIG, data);
      } catch (e) {
        data.fill(0);
        this.#fail(`Cannot read the device's config space: ${message(e)}`);
      }
      return;
    }
    if (!this.#isRegisterAccess(offset, data.length, "read")) return;
    const value = this.#readRegister(offset);
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, value, true);
  }

  /**
   * Handles a guest write of `data` at `offset` inside the window: a 32-bit
   * register below 0x100, any width in config space. Accesses of another
   * width, outside the window, or to read-only registers are ignored and
   * reported.
   */
  write(offset: number, data: Uint8Array): void {
    if (!this.#inWindow(offset, data.length, "write")) return;
    if (offset >= REG_CONFIG) {
      if (this.#failed) return;
      try {
        this.#device.writeConfig(offset - REG_CONFIG, data);
      } catch (e) {
        this.#fail(`Cannot write the device's config space: ${message(e)}`);
      }
      return;
    }
    if (!this.#isRegisterAccess(offset, data.length, "write")) return;
    const value = new DataView(data.buffer, data.byteOffset, 4)
      .getUint32(0, true);
    this.#writeRegister(offset, value);
  }

  #readRegister(offset: number): number {
    const queue = this.#queues[this.#queueSel];
    switch (offset) {
      case REG_MAGIC_VALUE:
        return VIRTIO_MMIO_MAGIC;
      case REG_VERSION:
        return VIRTIO_MMIO_VERSION;
      case REG_DEVICE_ID:
        return this.#device.deviceId;
      case REG_VENDOR_ID:
        return VIRTIO_MMIO_VENDOR_INITX;
      case REG_DEVICE_FEATURES:
        return this.#deviceFeaturesSel > 1 ? 0 : Number(
          (this.#offered >> BigInt(32 * this.#deviceFeaturesSel)) & U32_MASK,
        );
      case REG_QUEUE_NUM_MAX:
        return queue?.maxSize ?? 0;
      case REG_QUEUE_READY:
        return queue?.ready ? 1 : 0;
      case REG_INTERRUPT_STATUS:
        return this.#interruptStatus;
      case REG_STATUS:
        return this.#status;
      case REG_SHM_LEN_LOW:
      case REG_SHM_LEN_HIGH:
      case REG_SHM_BASE_LOW:
      case REG_SHM_BASE_HIGH:
        // No shared memory regions: a length (and base) of -1 says so
        // (virtio 1.2 §4.2.2).
        return 0xffffffff;
      case REG_CONFIG_GENERATION:
        return this.#configGeneration;
      default:
        // Write-only and reserved registers read as zero.
        return 0;
    }
  }

  #writeRegister(offset: number, value: number): void {
    switch (offset) {
      case REG_DEVICE_FEATURES_SEL:
        this.#deviceFeaturesSel = value;
        return;
      case REG_DRIVER_FEATURES:
        return this.#writeDriverFeatures(value);
      case REG_DRIVER_FEATURES_SEL:
        this.#driverFeaturesSel = value;
        return;
      case REG_QUEUE_SEL:
        this.#queueSel = value;
        return;
      case REG_QUEUE_NUM:
      case REG_QUEUE_DESC_LOW:
      case REG_QUEUE_DESC_HIGH:
      case REG_QUEUE_DRIVER_LOW:
      case REG_QUEUE_DRIVER_HIGH:
      case REG_QUEUE_DEVICE_LOW:
      case REG_QUEUE_DEVICE_HIGH:
        return this.#writeQueueConfig(offset, value);
      case REG_QUEUE_READY:
        return this.#writeQueueReady(value);
      case REG_QUEUE_NOTIFY:
        return this.#writeQueueNotify(value);
      case REG_INTERRUPT_ACK:
        this.#interruptStatus &= ~value;
        return;
      case REG_STATUS:
        return this.#writeStatus(value);
      case REG_SHM_SEL:
        // Every region ID is unused; SHMLen/SHMBase say so whatever is chosen.
        return;
      default:
        this.#note(
          `Cannot write virtio-mmio register 0x${
            offset.toString(16)
          }: it is read-only or reserved`,
        );
        return;
    }
  }

  #writeDriverFeatures(value: number): void {
    if (this.#status & STATUS_FEATURES_OK) {
      this.#note(
        "Cannot change driver features: FEATURES_OK is already set",
      );
      return;
    }
    const sel = this.#driverFeaturesSel;
    if (sel > 1) {
      if (value !== 0) this.#driverFeaturesTooHigh = true;
      return;
    }
    const shift = BigInt(32 * sel);
    this.#driverFeatures = (this.#driverFeatures & ~(U32_MASK << shift)) |
      (BigInt(value) << shift);
  }

  #writeQueueConfig(offset: number, value: number): void {
    const queue = this.#queues[this.#queueSel];
    if (queue === undefined) {
      this.#note(
        `Cannot configure queue ${this.#queueSel}: the device has ${this.#queues.length} queues`,
      );
      return;
    }
    if (queue.ready) {
      this.#note(
        `Cannot configure queue ${this.#queueSel}: it is ready (write QueueReady 0 first)`,
      );
      return;
    }
    const v = BigInt(value);
    const low = (addr: bigint) => (addr & ~U32_MASK) | v;
    const high = (addr: bigint) => (addr & U32_MASK) | (v << 32n);
    switch (offset) {
      case REG_QUEUE_NUM:
        queue.size = value;
        return;
      case REG_QUEUE_DESC_LOW:
        queue.descAddr = low(queue.descAddr);
        return;
      case REG_QUEUE_DESC_HIGH:
        queue.descAddr = high(queue.descAddr);
        return;
      case REG_QUEUE_DRIVER_LOW:
        queue.availAddr = low(queue.availAddr);
        return;
      case REG_QUEUE_DRIVER_HIGH:
        queue.availAddr = high(queue.availAddr);
        return;
      case REG_QUEUE_DEVICE_LOW:
        queue.usedAddr = low(queue.usedAddr);
        return;
      case REG_QUEUE_DEVICE_HIGH:
        queue.usedAddr = high(queue.usedAddr);
        return;
    }
  }

  #writeQueueReady(value: number): void {
    const queue = this.#queues[this.#queueSel];
    if (queue === undefined) {
      this.#note(
        `Cannot enable queue ${this.#queueSel}: the device has ${this.#queues.length} queues`,
      );
      return;
    }
    if ((value & 1) === 0) {
      queue.ready = false;
      return;
    }
    if (queue.ready || this.#failed) return;
    try {
      queue.activate(this.#memory());
    } catch (e) {
      this.#fail(message(e));
    }
  }

  #writeQueueNotify(value: number): void {
    // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
    const index = value;
    if (this.#failed) return;
    const queue = this.#queues[index];
    if (queue === undefined) {
      this.#note(
        `Cannot notify queue ${index}: the device has ${this.#queues.length} queues`,
      );
      return;
    }
    if (!this.#active) {
      this.#earlyNotify.add(index);
      return;
    }
    if (queue.ready) this.#notifyDevice(index);
  }

  #notifyDevice(index: number): void {
    try {
      this.#device.notify(index);
    } catch (e) {
      this.#fail(
        e instanceof VirtqueueError
          ? e.message
          : `Cannot handle a notification of queue ${index}: ${message(e)}`,
      );
    }
  }

  #writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) return this.#reset();
    const old = this.#status;
    // DEVICE_NEEDS_RESET is the device's to set, and it stays until reset.
    let status = (value & ~STATUS_DEVICE_NEEDS_RESET) |
      (old & STATUS_DEVICE_NEEDS_RESET);
    if ((status & STATUS_FEATURES_OK) && !(old & STATUS_FEATURES_OK)) {
      const problem = this.#featureProblem();
      if (problem !== undefined) {
        // Left clear, FEATURES_OK tells the driver the device refuses
        // (virtio 1.2 §3.1.1 step 6).
        status &= ~STATUS_FEATURES_OK;
        this.#report(`Cannot accept the driver's features: ${problem}`);
      }
    }
    this.#status = status;
    if ((status & STATUS_DRIVER_OK) && !(old & STATUS_DRIVER_OK)) {
      this.#activate();
    }
  }

  #featureProblem(): string | undefined {
    if (this.#driverFeaturesTooHigh) {
      return "it set feature bits above bit 63";
    }
    if ((this.#driverFeatures & VIRTIO_F_VERSION_1) === 0n) {
      return "VIRTIO_F_VERSION_1 is not set (legacy drivers are not supported)";
    }
    const extra = this.#driverFeatures & ~this.#offered;
    if (extra !== 0n) {
      return `bits 0x${extra.toString(16)} were not offered (offered 0x${
        this.#offered.toString(16)
      })`;
    }
    return undefined;
  }

  #activate(): void {
    if (this.#failed || this.#active) return;
    if (!(this.#status & STATUS_FEATURES_OK)) {
      this.#fail("Cannot start the device: DRIVER_OK without FEATURES_OK");
      return;
    }
    let memory: GuestMemory;
    try {
      memory = this.#memory();
    } catch (e) {
      this.#fail(`Cannot start the device: ${message(e)}`);
      return;
    }
    const epoch = this.#epoch;
    const live = () => epoch === this.#epoch && !this.#failed;
    const context: VirtioContext = {
      memory,
      queues: this.#queues,
      features: this.#driverFeatures,
      signalUsed: (queue) => {
        if (!live()) return;
        try {
          if (queue.needsInterrupt()) this.#raise(INT_VRING);
        } catch (e) {
          this.#fail(message(e));
        }
      },
      signalConfig: () => {
        if (!live()) return;
        this.#configGeneration = (this.#configGeneration + 1) >>> 0;
        this.#raise(INT_CONFIG);
      },
      fail: (reason) => {
        if (live()) this.#fail(reason);
      },
    };
    this.#active = true;
    try {
      this.#device.activate(context);
    } catch (e) {
      this.#fail(`Cannot start the device: ${message(e)}`);
      return;
    }
    const early = [...this.#earlyNotify].sort((a, b) => a - b);
    this.#earlyNotify.clear();
    for (const index of early) {
      if (!live()) return;
      if (this.#queues[index]?.ready) this.#notifyDevice(index);
    }
  }

  /** Sets interrupt cause `bit`; pulses the line only if it was clear. */
  #raise(bit: number): void {
    if (this.#interruptStatus & bit) return;
    this.#interruptStatus |= bit;
    try {
      this.#interrupt();
    } catch (e) {
      this.#report(`Cannot raise the device's interrupt: ${message(e)}`);
    }
  }

  #fail(reason: string): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#active = false;
    this.#epoch++;
    this.#earlyNotify.clear();
    // The device must not touch the rings again: a dead queue pops nothing.
    for (const queue of this.#queues) queue.reset();
    this.#status |= STATUS_DEVICE_NEEDS_RESET;
    this.#report(reason);
    // Virtio 1.2 §2.1.2: once DRIVER_OK is set, DEVICE_NEEDS_RESET comes
    // with a configuration change notification.
    if (this.#status & STATUS_DRIVER_OK) this.#raise(INT_CONFIG);
    this.#resetDevice();
  }

  #reset(): void {
    this.#epoch++;
    this.#resetDevice();
    for (const queue of this.#queues) queue.reset();
    this.#status = 0;
    this.#interruptStatus = 0;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#driverFeatures = 0n;
    this.#driverFeaturesTooHigh = false;
    this.#queueSel = 0;
    this.#active = false;
    this.#failed = false;
    this.#earlyNotify.clear();
  }

  #resetDevice(): void {
    try {
      this.#device.reset();
    } catch (e) {
      this.#report(`Cannot reset the device: ${message(e)}`);
    }
  }

  #inWindow(offset: number, length: number, action: string): boolean {
    if (
      Number.isInteger(offset) && offset >= 0 &&
      offset + length <= VIRTIO_MMIO_WINDOW_SIZE
    ) {
      return true;
    }
    this.#note(
      `Cannot ${action} ${length} bytes at virtio-mmio offset 0x${
        offset.toString(16)
      }: outside the 4 KiB window`,
    );
    return false;
  }

  #isRegisterAccess(offset: number, length: number, action: string): boolean {
    if (length === 4 && offset % 4 === 0) return true;
    this.#note(
      `Cannot ${action} virtio-mmio register 0x${
        offset.toString(16)
      }: a ${length}-byte access, registers take aligned 32-bit ones`,
    );
    return false;
  }

  /** Reports an ignored guest access; quiet after a few, so a guest cannot flood the owner's log. */
  #note(text: string): void {
    if (this.#notes > MAX_IGNORED_ACCESS_REPORTS) return;
    this.#notes++;
    this.#report(
      this.#notes > MAX_IGNORED_ACCESS_REPORTS
        ? `Cannot report more ignored accesses: ${MAX_IGNORED_ACCESS_REPORTS} reported already`
        : text,
    );
  }

  #report(text: string): void {
    try {
      this.#onError(text);
    } catch {
      // A failing report sink must not stop the guest.
    }
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
