/**
 * The device's side of a split virtqueue (virtio 1.2 §2.7).
 *
 * Primer: the driver owns three areas in guest RAM. The descriptor table holds
 * `size` 16-byte descriptors `{addr u64, len u32, flags u16, next u16}`; a
 * buffer is a chain of them linked by `next` while `flags` has NEXT, device-
 * readable ones first, then device-writable ones (WRITE). A descriptor with
 * INDIRECT points at a table of further descriptors instead of a buffer. The
 * available ring `{flags u16, idx u16, ring[size] u16, used_event u16}` lists
 * chain heads the driver offers; `idx` counts offers, wrapping at 2^16. The
 * used ring `{flags u16, idx u16, ring[size] {id u32, len u32}, avail_event
 * u16}` is where the device gives chains back with the byte count it wrote.
 *
 * Everything in those areas is hostile input: the driver may change it while
 * the device reads it, point it outside RAM, or make chains that loop. Each
 * descriptor is copied out once before it is used, every walk has a budget,
 * every address is checked before it is touched, and any violation ends in a
 * {@linkcode VirtqueueError}, never in a crash or a hang.
 *
 * @module
 */

import type { GuestMemory } from "../../hv/memory.ts";

// Split ring layout (virtio 1.2 §2.7.5, §2.7.6, §2.7.8).

/** Descriptor flag: the chain continues at `next`. */
export const VIRTQ_DESC_F_NEXT = 1;
/** Descriptor flag: the buffer is device-writable (else device-readable). */
export const VIRTQ_DESC_F_WRITE = 2;
/** Descriptor flag: the buffer is a table of descriptors (virtio 1.2 §2.7.5.3). */
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Available ring flag: the driver needs no used-buffer interrupt. */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Bytes of one descriptor. */
export const VIRTQ_DESC_SIZE = 16;
/** Largest queue size of a split virtqueue (virtio 1.2 §2.7). */
export const VIRTQ_MAX_SIZE = 32768;
/** Required alignment of the descriptor table, in bytes (virtio 1.2 §2.7, alignment table). */
export const VIRTQ_DESC_ALIGN = 16;
/** Required alignment of the available ring, in bytes. */
export const VIRTQ_AVAIL_ALIGN = 2;
/** Required alignment of the used ring, in bytes. */
export const VIRTQ_USED_ALIGN = 4;
/**
 * Cap on the bytes one chain may describe (readable plus writable). No
 * device here needs more; the cap bounds what one chain can make the host
 * allocate or copy.
 */
export const MAX_CHAIN_BYTES = 64 * 1024 * 1024;
/** Cap on the descriptors of an indirect table: `next` is 16 bits wide. */
export const MAX_INDIRECT_DESCRIPTORS = 65536;

const U64_LIMIT = 1n << 64n;

/**
 * Bad guest data in a virtqueue: the device must stop using the queue.
 *
 * @example
 * ```ts
 * import { VirtqueueError } from "./queue.ts";
 * const error = new VirtqueueError("Cannot pop a chain from virtqueue 1: a loop", {
 *   queueIndex: 1,
 * });
 * console.log(error.name, error.queueIndex); // VirtqueueError 1
 * ```
 */
export class VirtqueueError extends Error {
  /** Always "VirtqueueError". */
  override name = "VirtqueueError";
  /** Index of the queue the data belongs to, when known. */
  readonly queueIndex: number | undefined;

  /** Builds the error; `queueIndex` names the queue when it is known. */
  constructor(message: string, options: { queueIndex?: number } = {}) {
    super(message);
    this.queueIndex = options.queueIndex;
  }
}

/**
 * One guest buffer of a chain (guest-physical address and length).
 *
 * @example
 * ```ts
 * import type { GuestBuffer } from "./queue.ts";
 * const buffer: GuestBuffer = { addr: 0x1000n, len: 64 };
 * ```
 */
export interface GuestBuffer {
  /** Guest-physical address of the first byte. */
  addr: bigint;
  /** Length in bytes. */
  len: number;
}

/**
 * A descriptor chain popped from the available ring. Every buffer in it lay
 * inside guest RAM when it was popped.
 *
 * @example
 * ```ts
 * import type { DescriptorChain } from "./queue.ts";
 * const chain: DescriptorChain = {
 *   head: 0,
 *   readable: [{ addr: 0x1000n, len: 4 }],
 *   writable: [],
 *   readableLength: 4,
 *   writableLength: 0,
 * };
 * ```
 */
export interface DescriptorChain {
  /** Head descriptor index: give it back with pushUsed(). */
  head: number;
  /** Device-readable buffers, in order (the driver's data for the device). */
  readable: GuestBuffer[];
  /** Device-writable buffers, in order (room for the device's answer). */
  writable: GuestBuffer[];
  /** Sum of readable lengths (with writable: at most {@linkcode MAX_CHAIN_BYTES}). */
  readableLength: number;
  /** Sum of writable lengths (with readable: at most {@linkcode MAX_CHAIN_BYTES}). */
  writableLength: number;
}

/** A word of shared memory whose atomic updates serve as full fences. */
const FENCE_WORD = new Int32Array(new SharedArrayBuffer(4));

/**
 * A full memory fence (StoreLoad included): an atomic read-modify-write,
 * which V8 emits as a locked instruction on x86_64.
 */
function fullFence(): void {
  Atomics.add(FENCE_WORD, 0, 0);
}

/** Options of {@linkcode Virtqueue}. */
export interface VirtqueueOptions {
  /** Largest size the driver may choose: a power of 2, at most 32768. */
  maxSize: number;
  /** The queue's index in its device, used in error messages. */
  index?: number;
}

/**
 * A split virtqueue (virtio 1.2 §2.7), the device's side.
 *
 * The transport sets `size` and the three addresses from the driver's
 * register writes and calls {@linkcode Virtqueue.activate} when the driver
 * sets QueueReady; the device then pops chains, reads and writes their
 * buffers and gives them back with {@linkcode Virtqueue.pushUsed}.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../../hv/memory.ts";
 * import { Virtqueue } from "./queue.ts";
 * const memory = new GuestMemory([{ base: 0n, bytes: new Uint8Array(65536) }]);
 * const queue = new Virtqueue({ maxSize: 16, index: 0 });
 * queue.size = 16;
 * queue.descAddr = 0x1000n;
 * queue.availAddr = 0x2000n;
 * queue.usedAddr = 0x3000n;
 * queue.activate(memory);
 * console.log(queue.pop()); // undefined: the driver offered nothing yet
 * ```
 */
export class Virtqueue {
  /** Largest size the driver may choose. */
  readonly maxSize: number;
  /** Queue size chosen by the driver (QueueNum); `maxSize` after reset. */
  size: number;
  /** Whether the driver enabled the queue (QueueReady). */
  ready = false;
  /** Guest-physical address of the descriptor table. */
  descAddr = 0n;
  /** Guest-physical address of the available ring (driver area). */
  availAddr = 0n;
  /** Guest-physical address of the used ring (device area). */
  usedAddr = 0n;

  #index: number | undefined;
  #memory: GuestMemory | undefined;
  /** The avail idx value of the next chain to pop. */
  #nextAvail = 0;
  /** The used idx value the next pushUsed publishes past. */
  #nextUsed = 0;
  /** pushUsed ran since needsInterrupt() last said yes or no. */
  #unsignalled = false;
  /** One descriptor, copied out of guest memory before it is looked at. */
  #desc = new Uint8Array(VIRTQ_DESC_SIZE);
  #descView = new DataView(this.#desc.buffer);

  /** Creates an unconfigured queue; throws a RangeError on a bad `maxSize`. */
  constructor(options: VirtqueueOptions) {
    const { maxSize } = options;
    if (
      !Number.isInteger(maxSize) || maxSize < 1 || maxSize > VIRTQ_MAX_SIZE ||
      (maxSize & (maxSize - 1)) !== 0
    ) {
      throw new RangeError(
        `Cannot create virtqueue: maximum size ${maxSize} is not a power of 2 up to ${VIRTQ_MAX_SIZE}`,
      );
    }
    this.maxSize = maxSize;
    this.size = maxSize;
    this.#index = options.index;
  }

  /** The queue's index in its device, if it was given. */
  get index(): number | undefined {
    return this.#index;
  }

  /**
   * Validates the configuration against guest memory and starts using the
   * queue (sets `ready`); throws {@linkcode VirtqueueError} when the size is
   * not a power of 2 up to `maxSize`, a ring is misaligned, or a ring is not
   * entirely guest RAM. Called by the transport when the driver sets
   * QueueReady=1.
   */
  activate(memory: GuestMemory): void {
    const size = this.size;
    if (
      !Number.isInteger(size) || size < 1 || size > this.maxSize ||
      (size & (size - 1)) !== 0
    ) {
      // Split rings need a power of 2 (virtio 1.2 §2.7: "Queue Size value is
      // always a power of 2"), which also keeps ring slots stable across the
      // 16-bit index wrap.
      throw this.#error(
        "activate",
        `size ${size} is not a power of 2 from 1 to ${this.maxSize}`,
      );
    }
    const n = BigInt(size);
    const rings = [
      ["descriptor table", this.descAddr, VIRTQ_DESC_ALIGN, 16n * n],
      ["available ring", this.availAddr, VIRTQ_AVAIL_ALIGN, 6n + 2n * n],
      ["used ring", this.usedAddr, VIRTQ_USED_ALIGN, 6n + 8n * n],
    ] as const;
    for (const [name, addr, align, len] of rings) {
      if (addr % BigInt(align) !== 0n) {
        throw this.#error(
          "activate",
          `${name} at 0x${addr.toString(16)} is not ${align}-byte aligned`,
        );
      }
      if (!rangeInRam(memory, addr, Number(len))) {
        throw this.#error(
          "activate",
          `${name} of ${len} bytes at 0x${addr.toString(16)} is not guest RAM`,
        );
      }
    }
    this.#memory = memory;
    this.#nextAvail = 0;
    this.#nextUsed = 0;
    this.#unsignalled = false;
    this.ready = true;
  }

  /**
   * The next available chain, or undefined when the ring is empty or the
   * queue is not active. Throws {@linkcode VirtqueueError} on hostile data: a
   * loop (more descriptors than the queue or table has), an index past the
   * queue or table, a buffer outside guest RAM or past 2^64, avail idx
   * jumping more than the queue size ahead, a chain over
   * {@linkcode MAX_CHAIN_BYTES}, an indirect descriptor inside an indirect
   * table or together with NEXT, an indirect table whose length is 0 or not a
   * multiple of 16, and a readable descriptor after a writable one.
   * Indirect descriptors (VIRTIO_F_INDIRECT_DESC) are always understood.
   */
  pop(): DescriptorChain | undefined {
    const memory = this.#memory;
    if (!this.ready || memory === undefined) return undefined;
    try {
      const availIdx = memory.getU16(this.availAddr + 2n);
      const pending = (availIdx - this.#nextAvail) & 0xffff;
      if (pending === 0) return undefined;
      // The driver may offer at most `size` chains beyond the last one taken.
      // A bigger jump is bad data; honouring it would have the device walk
      // stale ring slots up to 65535 times per notify (denial of service).
      if (pending > this.size) {
        throw this.#error(
          "pop a chain from",
          `avail idx ${availIdx} is ${pending} entries ahead of ${this.#nextAvail}, more than the queue size ${this.size}`,
        );
      }
      const slot = this.#nextAvail & (this.size - 1);
      const head = memory.getU16(this.availAddr + 4n + 2n * BigInt(slot));
      this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
      return this.#walk(memory, head);
    } catch (e) {
      throw this.#wrap(e, "pop a chain from");
    }
  }

  /**
   * Copies all readable bytes of `chain` into one new Uint8Array (at most
   * `limit` bytes, default all). Throws {@linkcode VirtqueueError} if a
   * buffer is no longer guest RAM.
   */
  readAll(chain: DescriptorChain, limit: number = Infinity): Uint8Array {
    const memory = this.#activeMemory("read a chain of");
    const total = Math.max(0, Math.min(chain.readableLength, limit));
    const out = new Uint8Array(total);
    let done = 0;
    for (const b of chain.readable) {
      if (done === total) break;
      const n = Math.min(b.len, total - done);
      this.#copy(memory, b.addr, out.subarray(done, done + n), "read");
      done += n;
    }
    return out;
  }

  /**
   * Copies `bytes` into the chain's writable buffers starting at writable
   * offset `offset`; returns bytes written (stops short when the chain is
   * full). Throws {@linkcode VirtqueueError} if a buffer is no longer guest
   * RAM.
   */
  write(chain: DescriptorChain, bytes: Uint8Array, offset = 0): number {
    const memory = this.#activeMemory("write a chain of");
    let skip = Math.max(0, offset);
    let done = 0;
    for (const b of chain.writable) {
      if (done === bytes.length) break;
      if (skip >= b.len) {
        skip -= b.len;
        continue;
      }
      const n = Math.min(b.len - skip, bytes.length - done);
      this.#copy(
        memory,
        b.addr + BigInt(skip),
        bytes.subarray(done, done + n),
        "write",
      );
      done += n;
      skip = 0;
    }
    return done;
  }

  /**
   * Puts `head` on the used ring with `len` bytes written; publishes used
   * idx after the element. Throws {@linkcode VirtqueueError} when the queue
   * is not active, `head` is not a descriptor index or the ring is no longer
   * guest RAM.
   */
  pushUsed(head: number, len: number): void {
    const memory = this.#activeMemory("put a used buffer on");
    if (!Number.isInteger(head) || head < 0 || head >= this.size) {
      throw this.#error(
        "put a used buffer on",
        `head ${head} is not a descriptor index below ${this.size}`,
      );
    }
    if (!Number.isInteger(len) || len < 0 || len > 0xffffffff) {
      throw this.#error(
        "put a used buffer on",
        `length ${len} is not a 32-bit count`,
      );
    }
    try {
      const slot = this.#nextUsed & (this.size - 1);
      const elem = this.usedAddr + 4n + 8n * BigInt(slot);
      memory.setU32(elem, head);
      memory.setU32(elem + 4n, len);
      // The element is written before idx moves past it: the driver reads
      // idx first (x86 keeps stores in program order).
      this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
      memory.setU16(this.usedAddr + 2n, this.#nextUsed);
      this.#unsignalled = true;
    } catch (e) {
      throw this.#wrap(e, "put a used buffer on");
    }
  }

  /**
   * Whether the driver asked for an interrupt after the last pushUsed
   * (VIRTQ_AVAIL_F_NO_INTERRUPT clear; event idx is not offered). False when
   * nothing was pushed since the previous call, so a device cannot raise an
   * interrupt with nothing new in the used ring.
   */
  needsInterrupt(): boolean {
    const memory = this.#memory;
    if (!this.ready || memory === undefined || !this.#unsignalled) {
      return false;
    }
    this.#unsignalled = false;
    // The used idx just written must be visible before the flags are read:
    // the driver clears NO_INTERRUPT, fences, then reads used idx. Without
    // a full fence here both sides can read stale values (a store may wait
    // in the store buffer past a later load, even on x86) and the driver
    // sleeps on a used buffer nobody tells it about.
    fullFence();
    try {
      return (memory.getU16(this.availAddr) & VIRTQ_AVAIL_F_NO_INTERRUPT) ===
        0;
    } catch (e) {
      throw this.#wrap(e, "check the interrupt flag of");
    }
  }

  /** Back to the unconfigured state (device reset). */
  reset(): void {
    this.ready = false;
    this.size = this.maxSize;
    this.descAddr = 0n;
    this.availAddr = 0n;
    this.usedAddr = 0n;
    this.#memory = undefined;
    this.#nextAvail = 0;
    this.#nextUsed = 0;
    this.#unsignalled = false;
  }

  /** Follows the chain at `head`; the budget makes every walk end. */
  #walk(memory: GuestMemory, head: number): DescriptorChain {
    const chain: DescriptorChain = {
      head,
      readable: [],
      writable: [],
      readableLength: 0,
      writableLength: 0,
    };
    let table = this.descAddr;
    let tableLength = this.size;
    let budget = this.size;
    let indirect = false;
    let index = head;
    const where = () => indirect ? "indirect descriptor" : "descriptor";
    if (index >= tableLength) {
      throw this.#error(
        "pop a chain from",
        `head ${index} is past the queue size ${tableLength}`,
      );
    }
    for (;;) {
      if (budget === 0) {
        throw this.#error(
          "pop a chain from",
          `chain at head ${head} has more than ${tableLength} ${where()}s (a loop)`,
        );
      }
      budget--;
      memory.readExact(table + BigInt(VIRTQ_DESC_SIZE * index), this.#desc);
      const v = this.#descView;
      const addr = v.getBigUint64(0, true);
      const len = v.getUint32(8, true);
      const flags = v.getUint16(12, true);
      const next = v.getUint16(14, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) {
          throw this.#error(
            "pop a chain from",
            `indirect descriptor ${index} of head ${head} is inside an indirect table`,
          );
        }
        if (flags & VIRTQ_DESC_F_NEXT) {
          throw this.#error(
            "pop a chain from",
            `indirect descriptor ${index} of head ${head} also has NEXT`,
          );
        }
        if (len === 0 || len % VIRTQ_DESC_SIZE !== 0) {
          throw this.#error(
            "pop a chain from",
            `indirect table of descriptor ${index} has length ${len}, not a non-zero multiple of ${VIRTQ_DESC_SIZE}`,
          );
        }
        if (len / VIRTQ_DESC_SIZE > MAX_INDIRECT_DESCRIPTORS) {
          throw this.#error(
            "pop a chain from",
            `indirect table of descriptor ${index} has ${
              len / VIRTQ_DESC_SIZE
            } entries, more than ${MAX_INDIRECT_DESCRIPTORS}`,
          );
        }
        if (!rangeInRam(memory, addr, len)) {
          throw this.#error(
            "pop a chain from",
            `indirect table of ${len} bytes at 0x${
              addr.toString(16)
            } is not guest RAM`,
          );
        }
        // The device ignores WRITE on the descriptor naming the table
        // (virtio 1.2 §2.7.5.3.2).
        table = addr;
        tableLength = len / VIRTQ_DESC_SIZE;
        budget = tableLength;
        indirect = true;
        index = 0;
        continue;
      }
      if (!rangeInRam(memory, addr, len)) {
        throw this.#error(
          "pop a chain from",
          `${where()} ${index} of head ${head}: buffer of ${len} bytes at 0x${
            addr.toString(16)
          } is not guest RAM`,
        );
      }
      if (flags & VIRTQ_DESC_F_WRITE) {
        chain.writable.push({ addr, len });
        chain.writableLength += len;
      } else {
        if (chain.writable.length > 0) {
          throw this.#error(
            "pop a chain from",
            `${where()} ${index} of head ${head} is readable after a writable one`,
          );
        }
        chain.readable.push({ addr, len });
        chain.readableLength += len;
      }
      if (chain.readableLength + chain.writableLength > MAX_CHAIN_BYTES) {
        throw this.#error(
          "pop a chain from",
          `chain at head ${head} describes more than ${MAX_CHAIN_BYTES} bytes`,
        );
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      if (next >= tableLength) {
        throw this.#error(
          "pop a chain from",
          `${where()} ${index} of head ${head} points at ${next}, past the ${
            indirect ? "table" : "queue"
          } size ${tableLength}`,
        );
      }
      index = next;
    }
  }

  /** Copies between guest `addr` and `bytes`, across adjacent regions. */
  #copy(
    memory: GuestMemory,
    addr: bigint,
    bytes: Uint8Array,
    direction: "read" | "write",
  ): void {
    let done = 0;
    while (done < bytes.length) {
      const at = addr + BigInt(done);
      const rest = bytes.subarray(done);
      const n = direction === "read"
        ? memory.read(at, rest)
        : memory.write(at, rest);
      if (n === 0) {
        throw this.#error(
          `${direction} a chain of`,
          `guest address 0x${at.toString(16)} is no longer guest RAM`,
        );
      }
      done += n;
    }
  }

  #activeMemory(action: string): GuestMemory {
    if (!this.ready || this.#memory === undefined) {
      throw this.#error(action, "the queue is not active");
    }
    return this.#memory;
  }

  #error(action: string, detail: string): VirtqueueError {
    const name = this.#index === undefined
      ? "virtqueue"
      : `virtqueue ${this.#index}`;
    return new VirtqueueError(`Cannot ${action} ${name}: ${detail}`, {
      queueIndex: this.#index,
    });
  }

  /** Turns a guest memory failure into a VirtqueueError; keeps those. */
  #wrap(e: unknown, action: string): VirtqueueError {
    if (e instanceof VirtqueueError) return e;
    return this.#error(action, e instanceof Error ? e.message : String(e));
  }
}

/**
 * Whether `len` bytes at `addr` are all guest RAM (possibly across adjacent
 * regions) without wrapping past 2^64. A zero-length range only has to stay
 * below 2^64.
 */
function rangeInRam(memory: GuestMemory, addr: bigint, len: number): boolean {
  const end = addr + BigInt(len);
  if (addr < 0n || end > U64_LIMIT) return false;
  if (len === 0 || memory.slice(addr, len) !== undefined) return true;
  let at = addr;
  for (const r of memory.regions) {
    const regionEnd = r.base + BigInt(r.bytes.byteLength);
    if (at >= r.base && at < regionEnd) {
      at = regionEnd < end ? regionEnd : end;
      if (at === end) return true;
    }
  }
  return false;
}
