/**
 * What a virtio device model and its transport owe each other, and the
 * constants every virtio device shares: device status bits, transport feature
 * bits and device IDs.
 *
 * A device model ({@linkcode VirtioDevice}) knows its queues, features and
 * configuration space; the transport (virtio-mmio, `mmio.ts`) runs the
 * driver's side of the handshake and hands the device a
 * {@linkcode VirtioContext} once the driver sets DRIVER_OK.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";
import type { Virtqueue } from "./queue.ts";

// Device status bits (virtio 1.2 §2.1 "Device Status Field").

/** Status: the guest found the device and knows it is a virtio device. */
export const STATUS_ACKNOWLEDGE = 1;
/** Status: the guest has a driver for the device. */
export const STATUS_DRIVER = 2;
/** Status: the driver is set up and ready to drive the device. */
export const STATUS_DRIVER_OK = 4;
/** Status: the driver acknowledged the features it understands. */
export const STATUS_FEATURES_OK = 8;
/** Status: the device hit an error it cannot recover from without a reset. */
export const STATUS_DEVICE_NEEDS_RESET = 0x40;
/** Status: the driver gave up on the device. */
export const STATUS_FAILED = 0x80;

// Device-independent feature bits (virtio 1.2 §6 "Reserved Feature Bits").

/** Feature: descriptors may refer to indirect descriptor tables (bit 28). */
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
/** Feature: the device follows virtio 1.0 or later, not legacy (bit 32). */
export const VIRTIO_F_VERSION_1 = 1n << 32n;

// Device IDs (virtio 1.2 §5 "Device Types").

/** Device ID of a console (virtio 1.2 §5.3). */
export const VIRTIO_ID_CONSOLE = 3;
/** Device ID of a socket device, vsock (virtio 1.2 §5.10). */
export const VIRTIO_ID_VSOCK = 19;
/** Device ID of a file system device, virtio-fs (virtio 1.2 §5.11). */
export const VIRTIO_ID_FS = 26;

/**
 * What a virtio device model gives its transport. The transport calls these
 * methods from the owner's thread only; a device never sees the hypervisor.
 *
 * @example
 * ```ts
 * import type { VirtioContext, VirtioDevice } from "./device.ts";
 * class NullDevice implements VirtioDevice {
 *   readonly deviceId = 3;
 *   readonly features = 0n;
 *   readonly queueMaxSizes = [16];
 *   #context: VirtioContext | undefined;
 *   readConfig(_offset: number, data: Uint8Array) {
 *     data.fill(0);
 *   }
 *   writeConfig() {}
 *   activate(context: VirtioContext) {
 *     this.#context = context;
 *   }
 *   notify(index: number) {
 *     const queue = this.#context?.queues[index];
 *     for (let chain = queue?.pop(); chain; chain = queue?.pop()) {
 *       queue!.pushUsed(chain.head, 0);
 *     }
 *     if (queue) this.#context?.signalUsed(queue);
 *   }
 *   reset() {
 *     this.#context = undefined;
 *   }
 * }
 * ```
 */
export interface VirtioDevice {
  /** Virtio device ID (3 console, 19 vsock, 26 fs). */
  readonly deviceId: number;
  /** Device feature bits (VIRTIO_F_VERSION_1, bit 32, is added by the transport). */
  readonly features: bigint;
  /** Maximum size of each queue, in queue order. */
  readonly queueMaxSizes: readonly number[];
  /** Reads `data.length` bytes of config space at `offset` (unknown bytes read 0). */
  readConfig(offset: number, data: Uint8Array): void;
  /** Writes config space (most devices ignore writes). */
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver set DRIVER_OK: queues are configured and ready. */
  activate(context: VirtioContext): void;
  /** The driver notified queue `index` (QueueNotify). */
  notify(index: number): void;
  /**
   * The driver reset the device (status 0), or the transport did after a
   * failure: drop all state.
   */
  reset(): void;
}

/**
 * Given to a device on activation. The device may use it at any time from
 * the owner's thread (e.g. when host data arrives), not only inside
 * {@linkcode VirtioDevice.notify}, until the transport resets it.
 *
 * @example
 * ```ts
 * import type { VirtioContext } from "./device.ts";
 * function answerAll(context: VirtioContext, index: number) {
 *   const queue = context.queues[index];
 *   if (queue === undefined) return context.fail("Cannot answer: no queue");
 *   for (let chain = queue.pop(); chain; chain = queue.pop()) {
 *     queue.pushUsed(chain.head, queue.write(chain, Uint8Array.of(1)));
 *   }
 *   context.signalUsed(queue);
 * }
 * ```
 */
export interface VirtioContext {
  /** Guest RAM, as it was when the driver set DRIVER_OK. */
  readonly memory: GuestMemory;
  /** The device's queues, in queue order. */
  readonly queues: readonly Virtqueue[];
  /** Negotiated features (driver-acked). */
  readonly features: bigint;
  /**
   * Raises the used-buffer interrupt (sets InterruptStatus bit 0 and
   * triggers the line, if the queue wants it — the device passes the queue).
   */
  signalUsed(queue: Virtqueue): void;
  /** Raises the configuration-change interrupt (InterruptStatus bit 1). */
  signalConfig(): void;
  /**
   * Bad guest data or an internal failure: the transport sets
   * DEVICE_NEEDS_RESET (0x40), raises a config interrupt, reports `reason`
   * through its onError hook, and stops calling the device until reset. The
   * transport's virtio-mmio implementation also deactivates the queues and
   * calls {@linkcode VirtioDevice.reset} before it returns, so a device
   * calling it should return right after.
   */
  fail(reason: string): void;
}
