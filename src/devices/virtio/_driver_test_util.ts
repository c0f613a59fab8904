/**
 * A test-side virtio driver: it plays the guest for device models, without a
 * VM. Guest RAM is a plain Uint8Array wrapped in a {@linkcode GuestMemory};
 * the driver lays out split rings there, talks to a
 * {@linkcode VirtioMmioTransport} through its registers in the order Linux's
 * `virtio_mmio` driver does, and offers buffers, kicks and used-ring reading
 * as one call each. For adversarial tests it also writes raw descriptors and
 * ring entries.
 *
 * @example
 * ```ts
 * import { VirtioConsole } from "./console.ts";
 * import { VirtioTestDriver } from "./_driver_test_util.ts";
 * const out: Uint8Array[] = [];
 * const driver = new VirtioTestDriver(
 *   new VirtioConsole({ output: (b) => out.push(b) }),
 * );
 * driver.start();
 * driver.addBuffers(1, [new TextEncoder().encode("hi")], []);
 * driver.notify(1);
 * console.log(driver.usedEntries(1)); // [{ head: 0, len: 0 }]
 * ```
 *
 * @module
 */

import { GuestMemory } from "../../hv/memory.ts";
import {
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
  type VirtioDevice,
} from "./device.ts";
import {
  REG_CONFIG,
  REG_DEVICE_FEATURES,
  REG_DEVICE_FEATURES_SEL,
  REG_DEVICE_ID,
  REG_DRIVER_FEATURES,
  REG_DRIVER_FEATURES_SEL,
  REG_INTERRUPT_ACK,
  REG_INTERRUPT_STATUS,
  REG_MAGIC_VALUE,
  REG_QUEUE_DESC_HIGH,
  REG_QUEUE_DESC_LOW,
  REG_QUEUE_DEVICE_HIGH,
  REG_QUEUE_DEVICE_LOW,
  REG_QUEUE_DRIVER_HIGH,
  REG_QUEUE_DRIVER_LOW,
  REG_QUEUE_NOTIFY,
  REG_QUEUE_NUM,
  REG_QUEUE_NUM_MAX,
  REG_QUEUE_READY,
  REG_QUEUE_SEL,
  REG_STATUS,
  REG_VERSION,
  VIRTIO_MMIO_MAGIC,
  VIRTIO_MMIO_VERSION,
  VirtioMmioTransport,
} from "./mmio.ts";
import {
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
} from "./queue.ts";

/** Options of {@linkcode VirtioTestDriver}. */
export interface VirtioTestDriverOptions {
  /** Bytes of guest RAM. Default 4 MiB. */
  memoryBytes?: number;
  /** Guest-physical address of the first RAM byte. Default 0x100000. */
  memoryBase?: bigint;
}

/** Options of {@linkcode VirtioTestDriver.start}. */
export interface VirtioTestDriverStartOptions {
  /**
   * Features the driver understands; it takes those the device offers.
   * Default: everything offered. VIRTIO_F_VERSION_1 is always taken.
   */
  features?: bigint;
  /**
   * Feature bits to write no matter what the device offers (to test
   * refusal); replaces the computed set.
   */
  forceFeatures?: bigint;
  /** Queues to set up. Default: every queue whose QueueNumMax is not 0. */
  queues?: number;
  /** Size of each queue; default its QueueNumMax. */
  queueSizes?: readonly number[];
  /** Runs after the queues are ready and before DRIVER_OK (early kicks). */
  beforeDriverOk?: () => void;
}

/** One descriptor as the driver writes it. */
export interface RawDescriptor {
  /** Buffer address. */
  addr: bigint;
  /** Buffer length. */
  len: number;
  /** VIRTQ_DESC_F_* bits. */
  flags: number;
  /** Next descriptor index when flags has NEXT. */
  next: number;
}

/** Where a queue's rings are. */
export interface QueueLayout {
  /** Queue size. */
  size: number;
  /** Descriptor table address. */
  descAddr: bigint;
  /** Available ring address. */
  availAddr: bigint;
  /** Used ring address. */
  usedAddr: bigint;
}

/** One entry the device put on a used ring. */
export interface UsedEntry {
  /** The chain's head descriptor index. */
  head: number;
  /** Bytes the device said it wrote. */
  len: number;
  /** The first `len` bytes of the chain's writable buffers, if it had any. */
  data?: Uint8Array;
}

interface Outstanding {
  /** Ring descriptors to free. */
  descriptors: number[];
  /** Guest allocations to free: buffers, and an indirect table. */
  allocations: { addr: bigint; len: number }[];
  /** Writable buffers, in order. */
  writable: { addr: bigint; len: number }[];
}

interface DriverQueue extends QueueLayout {
  freeDescriptors: number[];
  availIdx: number;
  lastUsed: number;
  outstanding: Map<number, Outstanding>;
}

/**
 * A virtio driver for tests, over a {@linkcode VirtioMmioTransport} it
 * creates for `device`. Call {@linkcode VirtioTestDriver.start} first.
 *
 * @example
 * ```ts
 * import { VirtioConsole } from "./console.ts";
 * import { VirtioTestDriver } from "./_driver_test_util.ts";
 * const driver = new VirtioTestDriver(new VirtioConsole());
 * driver.start();
 * driver.addBuffers(0, [], [64]); // a receive buffer
 * driver.notify(0);
 * ```
 */
export class VirtioTestDriver {
  /** The device under test. */
  readonly device: VirtioDevice;
  /** The transport the driver talks to. */
  readonly transport: VirtioMmioTransport;
  /** Guest RAM. */
  readonly memory: GuestMemory;
  /** The bytes behind guest RAM (offset 0 is `memoryBase`). */
  readonly bytes: Uint8Array;
  /** Guest-physical address of `bytes[0]`. */
  readonly memoryBase: bigint;
  /** Every message the transport reported through onError. */
  readonly errors: string[] = [];
  /** Features written at start(). */
  features = 0n;

  #interrupts = 0;
  #queues: DriverQueue[] = [];
  /** Free guest RAM as sorted, disjoint [start, end) byte offsets. */
  #free: { start: number; end: number }[];

  /** Builds guest RAM and the transport; nothing is sent to the device yet. */
  constructor(device: VirtioDevice, options: VirtioTestDriverOptions = {}) {
    this.device = device;
    this.memoryBase = options.memoryBase ?? 0x100000n;
    this.bytes = new Uint8Array(options.memoryBytes ?? 4 * 1024 * 1024);
    this.memory = new GuestMemory([{
      base: this.memoryBase,
      bytes: this.bytes,
    }]);
    this.#free = [{ start: 0, end: this.bytes.length }];
    this.transport = new VirtioMmioTransport(device, {
      memory: () => this.memory,
      interrupt: () => void this.#interrupts++,
      onError: (message) => void this.errors.push(message),
    });
  }

  /** Times the transport pulsed the interrupt line. */
  get interrupts(): number {
    return this.#interrupts;
  }

  /** The Status register. */
  get status(): number {
    return this.readRegister(REG_STATUS);
  }

  /**
   * Initializes the device like Linux: reset, ACKNOWLEDGE, DRIVER, feature
   * negotiation (high word first), FEATURES_OK and its read-back, queue
   * setup through QueueSel/QueueNum/addresses/QueueReady, DRIVER_OK. Throws
   * if the device is not a version 2 virtio-mmio device or refuses.
   */
  start(options: VirtioTestDriverStartOptions = {}): void {
    this.writeRegister(REG_STATUS, 0);
    if (this.readRegister(REG_MAGIC_VALUE) !== VIRTIO_MMIO_MAGIC) {
      throw new Error("Cannot start the device: wrong magic value");
    }
    if (this.readRegister(REG_VERSION) !== VIRTIO_MMIO_VERSION) {
      throw new Error("Cannot start the device: not virtio-mmio version 2");
    }
    if (this.readRegister(REG_DEVICE_ID) === 0) {
      throw new Error("Cannot start the device: device ID 0 (placeholder)");
    }
    this.writeRegister(REG_STATUS, STATUS_ACKNOWLEDGE);
    this.writeRegister(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const offered = this.deviceFeatures();
    if ((offered & VIRTIO_F_VERSION_1) === 0n) {
      throw new Error(
        "Cannot start the device: VIRTIO_F_VERSION_1 not offered",
      );
    }
    const features = options.forceFeatures ??
      ((offered & (options.features ?? offered)) | VIRTIO_F_VERSION_1);
    this.writeRegister(REG_DRIVER_FEATURES_SEL, 1);
    this.writeRegister(REG_DRIVER_FEATURES, Number(features >> 32n) >>> 0);
    this.writeRegister(REG_DRIVER_FEATURES_SEL, 0);
    this.writeRegister(
      REG_DRIVER_FEATURES,
      Number(features & 0xffffffffn) >>> 0,
    );
    this.features = features;
    this.writeRegister(REG_STATUS, this.status | STATUS_FEATURES_OK);
    if (!(this.status & STATUS_FEATURES_OK)) {
      throw new Error(
        `Cannot start the device: it refused features 0x${
          features.toString(16)
        }`,
      );
    }
    const count = options.queues ?? this.#countQueues();
    this.#queues = [];
    for (let i = 0; i < count; i++) {
      this.#setUpQueue(i, options.queueSizes?.[i]);
    }
    options.beforeDriverOk?.();
    this.writeRegister(REG_STATUS, this.status | STATUS_DRIVER_OK);
  }

  /** The 64 device feature bits, read high word first like Linux. */
  deviceFeatures(): bigint {
    this.writeRegister(REG_DEVICE_FEATURES_SEL, 1);
    const high = BigInt(this.readRegister(REG_DEVICE_FEATURES));
    this.writeRegister(REG_DEVICE_FEATURES_SEL, 0);
    return (high << 32n) | BigInt(this.readRegister(REG_DEVICE_FEATURES));
  }

  /** Reads a 32-bit register. */
  readRegister(offset: number): number {
    const data = new Uint8Array(4);
    this.transport.read(offset, data);
    return new DataView(data.buffer).getUint32(0, true);
  }

  /** Writes a 32-bit register. */
  writeRegister(offset: number, value: number): void {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, value >>> 0, true);
    this.transport.write(offset, data);
  }

  /** Reads `length` bytes of config space at `offset`. */
  readConfig(offset: number, length: number): Uint8Array {
    const data = new Uint8Array(length);
    this.transport.read(REG_CONFIG + offset, data);
    return data;
  }

  /** Reads InterruptStatus and acknowledges it, like Linux's handler; returns it. */
  ackInterrupt(): number {
    const status = this.readRegister(REG_INTERRUPT_STATUS);
    this.writeRegister(REG_INTERRUPT_ACK, status);
    return status;
  }

  /** Where queue `index`'s rings are. */
  queue(index: number): QueueLayout {
    const q = this.#queue(index);
    return {
      size: q.size,
      descAddr: q.descAddr,
      availAddr: q.availAddr,
      usedAddr: q.usedAddr,
    };
  }

  /**
   * Offers one chain on queue `queueIndex`: device-readable buffers holding
   * `readable`, then device-writable buffers of `writableLengths` bytes.
   * With `indirect`, the chain is an indirect table named by one ring
   * descriptor. Returns the head descriptor index. The kick is separate:
   * {@linkcode VirtioTestDriver.notify}.
   */
  addBuffers(
    queueIndex: number,
    readable: Uint8Array[],
    writableLengths: number[],
    options: { indirect?: boolean } = {},
  ): number {
    const q = this.#queue(queueIndex);
    const count = readable.length + writableLengths.length;
    if (count === 0) throw new Error("Cannot add buffers: the chain is empty");
    const ringNeeds = options.indirect ? 1 : count;
    if (q.freeDescriptors.length < ringNeeds) {
      throw new Error(
        `Cannot add buffers to queue ${queueIndex}: ${q.freeDescriptors.length} free descriptors, ${ringNeeds} needed`,
      );
    }
    const record: Outstanding = {
      descriptors: [],
      allocations: [],
      writable: [],
    };
    const descs: RawDescriptor[] = [];
    for (const bytes of readable) {
      const addr = this.alloc(bytes.length);
      record.allocations.push({ addr, len: bytes.length });
      this.memory.writeExact(addr, bytes);
      descs.push({ addr, len: bytes.length, flags: 0, next: 0 });
    }
    for (const len of writableLengths) {
      const addr = this.alloc(len);
      record.allocations.push({ addr, len });
      this.memory.writeExact(addr, new Uint8Array(len));
      record.writable.push({ addr, len });
      descs.push({ addr, len, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    }
    let head: number;
    if (options.indirect) {
      const tableLen = count * VIRTQ_DESC_SIZE;
      const table = this.alloc(tableLen);
      record.allocations.push({ addr: table, len: tableLen });
      descs.forEach((d, i) => {
        const last = i === count - 1;
        this.#writeDescriptorAt(table + BigInt(i * VIRTQ_DESC_SIZE), {
          ...d,
          flags: d.flags | (last ? 0 : VIRTQ_DESC_F_NEXT),
          next: last ? 0 : i + 1,
        });
      });
      head = q.freeDescriptors.pop()!;
      record.descriptors.push(head);
      this.writeDescriptor(queueIndex, head, {
        addr: table,
        len: tableLen,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
    } else {
      const indexes = descs.map(() => q.freeDescriptors.pop()!);
      record.descriptors.push(...indexes);
      descs.forEach((d, i) => {
        const last = i === count - 1;
        this.writeDescriptor(queueIndex, indexes[i]!, {
          ...d,
          flags: d.flags | (last ? 0 : VIRTQ_DESC_F_NEXT),
          next: last ? 0 : indexes[i + 1]!,
        });
      });
      head = indexes[0]!;
    }
    q.outstanding.set(head, record);
    this.publish(queueIndex, head);
    return head;
  }

  /** Kicks queue `queueIndex` (QueueNotify). */
  notify(queueIndex: number): void {
    this.writeRegister(REG_QUEUE_NOTIFY, queueIndex);
  }

  /**
   * The entries the device used on queue `queueIndex` since the last call,
   * with the bytes it wrote; frees their descriptors and buffers. Throws if
   * the device used a head the driver never offered.
   */
  usedEntries(queueIndex: number): UsedEntry[] {
    const q = this.#queue(queueIndex);
    const usedIdx = this.memory.getU16(q.usedAddr + 2n);
    const entries: UsedEntry[] = [];
    while (q.lastUsed !== usedIdx) {
      const elem = q.usedAddr + 4n + 8n * BigInt(q.lastUsed % q.size);
      const head = this.memory.getU32(elem);
      const len = this.memory.getU32(elem + 4n);
      q.lastUsed = (q.lastUsed + 1) & 0xffff;
      const record = q.outstanding.get(head);
      if (record === undefined) {
        throw new Error(
          `Cannot read used entry of queue ${queueIndex}: head ${head} was not offered`,
        );
      }
      q.outstanding.delete(head);
      const entry: UsedEntry = { head, len };
      if (record.writable.length > 0) {
        const data = new Uint8Array(Math.min(len, sum(record.writable)));
        let done = 0;
        for (const b of record.writable) {
          if (done === data.length) break;
          const n = Math.min(b.len, data.length - done);
          this.memory.readExact(b.addr, data.subarray(done, done + n));
          done += n;
        }
        entry.data = data;
      }
      for (const a of record.allocations) this.free(a.addr, a.len);
      q.freeDescriptors.push(...record.descriptors);
      entries.push(entry);
    }
    return entries;
  }

  // Raw access, for adversarial tests.

  /** Writes descriptor `index` of queue `queueIndex`'s table as given. */
  writeDescriptor(
    queueIndex: number,
    index: number,
    desc: RawDescriptor,
  ): void {
    const q = this.#queue(queueIndex);
    this.#writeDescriptorAt(
      q.descAddr + BigInt(index * VIRTQ_DESC_SIZE),
      desc,
    );
  }

  /** Writes a descriptor anywhere in guest RAM (e.g. into an indirect table). */
  writeDescriptorAt(addr: bigint, desc: RawDescriptor): void {
    this.#writeDescriptorAt(addr, desc);
  }

  /**
   * Puts `head` in the next available ring slot and publishes it (avail idx
   * + 1), as addBuffers does. A head the driver did not build with
   * addBuffers comes back from usedEntries without data.
   */
  publish(queueIndex: number, head: number): void {
    const q = this.#queue(queueIndex);
    const slot = q.availIdx % q.size;
    this.memory.setU16(q.availAddr + 4n + 2n * BigInt(slot), head);
    q.availIdx = (q.availIdx + 1) & 0xffff;
    this.memory.setU16(q.availAddr + 2n, q.availIdx);
    if (!q.outstanding.has(head)) {
      q.outstanding.set(head, {
        descriptors: [],
        allocations: [],
        writable: [],
      });
    }
  }

  /** Writes avail idx directly (it stays the driver's idx for publish()). */
  setAvailIdx(queueIndex: number, idx: number): void {
    const q = this.#queue(queueIndex);
    q.availIdx = idx & 0xffff;
    this.memory.setU16(q.availAddr + 2n, q.availIdx);
  }

  /** Writes the available ring's flags (VIRTQ_AVAIL_F_NO_INTERRUPT). */
  setAvailFlags(queueIndex: number, flags: number): void {
    this.memory.setU16(this.#queue(queueIndex).availAddr, flags);
  }

  /** The used ring's idx as the device last published it. */
  usedIdx(queueIndex: number): number {
    return this.memory.getU16(this.#queue(queueIndex).usedAddr + 2n);
  }

  /** Allocates `len` bytes of guest RAM (at least 1) aligned to `align`. */
  alloc(len: number, align = 16): bigint {
    const size = Math.max(1, len);
    for (let i = 0; i < this.#free.length; i++) {
      const range = this.#free[i]!;
      const abs = Number(this.memoryBase) + range.start;
      const start = range.start + ((align - (abs % align)) % align);
      if (start + size > range.end) continue;
      const pieces = [];
      if (start > range.start) pieces.push({ start: range.start, end: start });
      if (start + size < range.end) {
        pieces.push({ start: start + size, end: range.end });
      }
      this.#free.splice(i, 1, ...pieces);
      return this.memoryBase + BigInt(start);
    }
    throw new Error(`Cannot allocate ${len} bytes: guest RAM is full`);
  }

  /** Gives back an allocation of `len` bytes at `addr`. */
  free(addr: bigint, len: number): void {
    const start = Number(addr - this.memoryBase);
    const end = start + Math.max(1, len);
    let i = this.#free.findIndex((r) => r.start > start);
    if (i === -1) i = this.#free.length;
    this.#free.splice(i, 0, { start, end });
    // Merge with the neighbours.
    const next = this.#free[i + 1];
    if (next && next.start === end) {
      this.#free[i]!.end = next.end;
      this.#free.splice(i + 1, 1);
    }
    const prev = this.#free[i - 1];
    if (prev && prev.end === start) {
      prev.end = this.#free[i]!.end;
      this.#free.splice(i, 1);
    }
  }

  #countQueues(): number {
    let n = 0;
    for (; n < 64; n++) {
      this.writeRegister(REG_QUEUE_SEL, n);
      if (this.readRegister(REG_QUEUE_NUM_MAX) === 0) break;
    }
    return n;
  }

  #setUpQueue(index: number, wanted: number | undefined): void {
    this.writeRegister(REG_QUEUE_SEL, index);
    if (this.readRegister(REG_QUEUE_READY) !== 0) {
      throw new Error(`Cannot set up queue ${index}: it is already ready`);
    }
    const max = this.readRegister(REG_QUEUE_NUM_MAX);
    if (max === 0) {
      throw new Error(`Cannot set up queue ${index}: no such queue`);
    }
    const size = Math.min(wanted ?? max, max);
    const descAddr = this.alloc(VIRTQ_DESC_SIZE * size, 16);
    const availAddr = this.alloc(6 + 2 * size, 2);
    const usedAddr = this.alloc(6 + 8 * size, 4);
    this.memory.writeExact(descAddr, new Uint8Array(VIRTQ_DESC_SIZE * size));
    this.memory.writeExact(availAddr, new Uint8Array(6 + 2 * size));
    this.memory.writeExact(usedAddr, new Uint8Array(6 + 8 * size));
    this.writeRegister(REG_QUEUE_NUM, size);
    const halves = (addr: bigint) =>
      [Number(addr & 0xffffffffn), Number(addr >> 32n)] as const;
    const pairs = [
      [REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, descAddr],
      [REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, availAddr],
      [REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, usedAddr],
    ] as const;
    for (const [low, high, addr] of pairs) {
      const [l, h] = halves(addr);
      this.writeRegister(low, l);
      this.writeRegister(high, h);
    }
    this.writeRegister(REG_QUEUE_READY, 1);
    this.#queues[index] = {
      size,
      descAddr,
      availAddr,
      usedAddr,
      // Popped from the end: descriptors are handed out 0, 1, 2, ...
      freeDescriptors: Array.from({ length: size }, (_, i) => size - 1 - i),
      availIdx: 0,
      lastUsed: 0,
      outstanding: new Map(),
    };
  }

  #queue(index: number): DriverQueue {
    const q = this.#queues[index];
    if (q === undefined) {
      throw new Error(`Cannot use queue ${index}: it was not set up`);
    }
    return q;
  }

  #writeDescriptorAt(addr: bigint, desc: RawDescriptor): void {
    const raw = new Uint8Array(VIRTQ_DESC_SIZE);
    const view = new DataView(raw.buffer);
    view.setBigUint64(0, BigInt.asUintN(64, desc.addr), true);
    view.setUint32(8, desc.len >>> 0, true);
    view.setUint16(12, desc.flags & 0xffff, true);
    view.setUint16(14, desc.next & 0xffff, true);
    this.memory.writeExact(addr, raw);
  }
}

function sum(buffers: { len: number }[]): number {
  return buffers.reduce((n, b) => n + b.len, 0);
}
