import assert from "node:assert/strict";
import { GuestMemory } from "../../hv/memory.ts";
import {
  MAX_CHAIN_BYTES,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  Virtqueue,
  VirtqueueError,
} from "./queue.ts";

const BASE = 0x10000n;
const DESC = BASE;
const AVAIL = BASE + 0x1000n;
const USED = BASE + 0x2000n;
const DATA = BASE + 0x4000n;
const RAM_BYTES = 0x20000;

/** A queue over fresh RAM, with helpers that play the driver. */
function ring(size = 8, index: number | undefined = 2) {
  const bytes = new Uint8Array(RAM_BYTES);
  const memory = new GuestMemory([{ base: BASE, bytes }]);
  const queue = new Virtqueue({ maxSize: 16, index });
  queue.size = size;
  queue.descAddr = DESC;
  queue.availAddr = AVAIL;
  queue.usedAddr = USED;
  queue.activate(memory);
  let availIdx = 0;
  const desc = (i: number, addr: bigint, len: number, flags = 0, next = 0) => {
    const at = DESC + 16n * BigInt(i);
    memory.setU64(at, addr);
    memory.setU32(at + 8n, len);
    memory.setU16(at + 12n, flags);
    memory.setU16(at + 14n, next);
  };
  const descAt = (
    at: bigint,
    addr: bigint,
    len: number,
    flags = 0,
    next = 0,
  ) => {
    memory.setU64(at, addr);
    memory.setU32(at + 8n, len);
    memory.setU16(at + 12n, flags);
    memory.setU16(at + 14n, next);
  };
  const publish = (head: number) => {
    memory.setU16(AVAIL + 4n + 2n * BigInt(availIdx % size), head);
    availIdx = (availIdx + 1) & 0xffff;
    memory.setU16(AVAIL + 2n, availIdx);
  };
  const setAvailIdx = (idx: number) => {
    availIdx = idx;
    memory.setU16(AVAIL + 2n, idx);
  };
  return { bytes, memory, queue, desc, descAt, publish, setAvailIdx };
}

function popError(queue: Virtqueue, pattern: RegExp): VirtqueueError {
  let caught: unknown;
  try {
    queue.pop();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof VirtqueueError, `expected a VirtqueueError`);
  assert.match(caught.message, pattern);
  return caught;
}

Deno.test("Virtqueue() rejects a maximum size that is not a power of 2 up to 32768", () => {
  for (const maxSize of [0, 3, 65536, 1.5, -4]) {
    assert.throws(() => new Virtqueue({ maxSize }), RangeError);
  }
  assert.equal(new Virtqueue({ maxSize: 32768 }).size, 32768);
});

Deno.test("Virtqueue.activate() rejects bad sizes, misaligned rings and rings outside RAM", () => {
  const memory = new GuestMemory([{
    base: BASE,
    bytes: new Uint8Array(0x4000),
  }]);
  const cases: [Partial<Virtqueue>, RegExp][] = [
    [{ size: 0 }, /size 0 is not a power of 2/],
    [{ size: 12 }, /size 12 is not a power of 2/],
    [{ size: 32 }, /size 32 is not a power of 2 from 1 to 16/],
    [
      { descAddr: DESC + 8n },
      /descriptor table at 0x10008 is not 16-byte aligned/,
    ],
    [{ availAddr: AVAIL + 1n }, /available ring .* not 2-byte aligned/],
    [{ usedAddr: USED + 2n }, /used ring .* not 4-byte aligned/],
    [{ descAddr: 0n }, /descriptor table of 256 bytes at 0x0 is not guest RAM/],
    [
      { usedAddr: BASE + 0x4000n - 8n },
      /used ring of 134 bytes .* not guest RAM/,
    ],
    [{ availAddr: (1n << 64n) - 2n }, /available ring .* not guest RAM/],
  ];
  for (const [change, pattern] of cases) {
    const queue = new Virtqueue({ maxSize: 16, index: 5 });
    Object.assign(queue, {
      size: 16,
      descAddr: DESC,
      availAddr: AVAIL,
      usedAddr: USED,
      ...change,
    });
    assert.throws(() => queue.activate(memory), (e) => {
      assert.ok(e instanceof VirtqueueError);
      assert.equal(e.queueIndex, 5);
      assert.match(e.message, /^Cannot activate virtqueue 5: /);
      assert.match(e.message, pattern);
      return true;
    });
    assert.equal(queue.ready, false);
  }
});

Deno.test("Virtqueue.pop() returns undefined on an empty ring and before activation", () => {
  const queue = new Virtqueue({ maxSize: 4 });
  assert.equal(queue.pop(), undefined);
  const r = ring();
  assert.equal(r.queue.pop(), undefined);
  r.queue.ready = false;
  r.publish(0);
  assert.equal(r.queue.pop(), undefined);
});

Deno.test("Virtqueue.pop() returns readable then writable buffers; readAll(), write() and pushUsed() move the bytes", () => {
  const r = ring();
  r.bytes.set(new TextEncoder().encode("hello, "), Number(DATA - BASE));
  r.bytes.set(new TextEncoder().encode("world"), Number(DATA - BASE) + 0x100);
  r.desc(3, DATA, 7, VIRTQ_DESC_F_NEXT, 5);
  r.desc(5, DATA + 0x100n, 5, VIRTQ_DESC_F_NEXT, 1);
  r.desc(1, DATA + 0x200n, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);
  r.desc(0, DATA + 0x300n, 8, VIRTQ_DESC_F_WRITE);
  r.publish(3);
  const chain = r.queue.pop();
  assert.ok(chain);
  assert.deepEqual(chain, {
    head: 3,
    readable: [{ addr: DATA, len: 7 }, { addr: DATA + 0x100n, len: 5 }],
    writable: [{ addr: DATA + 0x200n, len: 4 }, {
      addr: DATA + 0x300n,
      len: 8,
    }],
    readableLength: 12,
    writableLength: 12,
  });
  assert.equal(
    new TextDecoder().decode(r.queue.readAll(chain)),
    "hello, world",
  );
  assert.equal(
    new TextDecoder().decode(r.queue.readAll(chain, 9)),
    "hello, wo",
  );
  const answer = new TextEncoder().encode("0123456789abcdef");
  assert.equal(r.queue.write(chain, answer.subarray(0, 2)), 2);
  assert.equal(r.queue.write(chain, answer, 2), 10);
  assert.equal(
    new TextDecoder().decode(r.memory.slice(DATA + 0x200n, 4)),
    "0101",
  );
  assert.equal(
    new TextDecoder().decode(r.memory.slice(DATA + 0x300n, 8)),
    "23456789",
  );
  assert.equal(r.queue.write(chain, answer, 12), 0);
  r.queue.pushUsed(chain.head, 12);
  assert.equal(r.memory.getU16(USED + 2n), 1);
  assert.equal(r.memory.getU32(USED + 4n), 3);
  assert.equal(r.memory.getU32(USED + 8n), 12);
  assert.equal(r.queue.pop(), undefined);
});

Deno.test("Virtqueue.pop() follows an indirect table, also after direct descriptors", () => {
  const r = ring();
  const table = DATA + 0x1000n;
  r.descAt(table, DATA, 4, VIRTQ_DESC_F_NEXT, 2);
  r.descAt(table + 32n, DATA + 0x10n, 6, VIRTQ_DESC_F_WRITE);
  r.desc(0, table, 48, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE);
  r.publish(0);
  const chain = r.queue.pop();
  assert.deepEqual(chain?.readable, [{ addr: DATA, len: 4 }]);
  assert.deepEqual(chain?.writable, [{ addr: DATA + 0x10n, len: 6 }]);

  r.desc(1, DATA + 0x40n, 2, VIRTQ_DESC_F_NEXT, 2);
  r.desc(2, table, 48, VIRTQ_DESC_F_INDIRECT);
  r.publish(1);
  const mixed = r.queue.pop();
  assert.equal(mixed?.readable.length, 2);
  assert.equal(mixed?.readableLength, 6);
});

Deno.test("Virtqueue.pop() ends a looping chain with an error naming the queue", () => {
  const r = ring(8, 4);
  r.desc(0, DATA, 1, VIRTQ_DESC_F_NEXT, 1);
  r.desc(1, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
  r.publish(0);
  const e = popError(r.queue, /^Cannot pop a chain from virtqueue 4: .*a loop/);
  assert.equal(e.queueIndex, 4);

  const self = ring();
  self.desc(6, DATA, 1, VIRTQ_DESC_F_NEXT, 6);
  self.publish(6);
  popError(self.queue, /more than 8 descriptors \(a loop\)/);
});

Deno.test("Virtqueue.pop() rejects indexes past the queue size", () => {
  const head = ring();
  head.publish(8);
  popError(head.queue, /head 8 is past the queue size 8/);

  const next = ring();
  next.desc(0, DATA, 1, VIRTQ_DESC_F_NEXT, 200);
  next.publish(0);
  popError(
    next.queue,
    /descriptor 0 of head 0 points at 200, past the queue size 8/,
  );
});

Deno.test("Virtqueue.pop() rejects buffers outside RAM or wrapping past 2^64", () => {
  const cases: [bigint, number, RegExp][] = [
    [0n, 16, /buffer of 16 bytes at 0x0 is not guest RAM/],
    [BASE + BigInt(RAM_BYTES) - 4n, 8, /is not guest RAM/],
    [(1n << 64n) - 8n, 16, /at 0xfffffffffffffff8 is not guest RAM/],
    [(1n << 64n) - 1n, 0xffffffff, /is not guest RAM/],
  ];
  for (const [addr, len, pattern] of cases) {
    const r = ring();
    r.desc(0, addr, len);
    r.publish(0);
    popError(r.queue, pattern);
  }
});

Deno.test("Virtqueue.pop() rejects a readable descriptor after a writable one", () => {
  const r = ring();
  r.desc(0, DATA, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
  r.desc(1, DATA, 4);
  r.publish(0);
  popError(r.queue, /descriptor 1 of head 0 is readable after a writable one/);
});

Deno.test("Virtqueue.pop() caps a chain's total length at 64 MiB", () => {
  // Four descriptors of 16 MiB + 1 each, all over the same small RAM would
  // be rejected as outside RAM first; use a RAM big enough for one of them.
  const bytes = new Uint8Array(17 * 1024 * 1024);
  const memory = new GuestMemory([{ base: 0n, bytes }]);
  const queue = new Virtqueue({ maxSize: 8 });
  queue.size = 8;
  queue.descAddr = 0n;
  queue.availAddr = 0x1000n;
  queue.usedAddr = 0x2000n;
  queue.activate(memory);
  const len = 16 * 1024 * 1024 + 1;
  for (let i = 0; i < 5; i++) {
    memory.setU64(16n * BigInt(i), 0x10000n);
    memory.setU32(16n * BigInt(i) + 8n, len);
    memory.setU16(16n * BigInt(i) + 12n, VIRTQ_DESC_F_NEXT);
    memory.setU16(16n * BigInt(i) + 14n, i + 1);
  }
  memory.setU16(0x1000n + 2n, 1);
  assert.ok(4 * len > MAX_CHAIN_BYTES);
  popError(queue, /describes more than 67108864 bytes/);
});

Deno.test("Virtqueue.pop() rejects an avail idx more than the queue size ahead (denial of service)", () => {
  const r = ring();
  r.setAvailIdx(9);
  popError(
    r.queue,
    /avail idx 9 is 9 entries ahead of 0, more than the queue size 8/,
  );
  const wrap = ring();
  wrap.setAvailIdx(0xffff);
  popError(wrap.queue, /65535 entries ahead/);
  const full = ring();
  for (let i = 0; i < 8; i++) {
    full.desc(i, DATA, 1);
    full.publish(i);
  }
  for (let i = 0; i < 8; i++) assert.equal(full.queue.pop()?.head, i);
  assert.equal(full.queue.pop(), undefined);
});

Deno.test("Virtqueue.pop() rejects bad indirect tables", () => {
  const table = DATA + 0x1000n;
  const cases: [(r: ReturnType<typeof ring>) => void, RegExp][] = [
    [
      (r) => r.desc(0, table, 0, VIRTQ_DESC_F_INDIRECT),
      /length 0, not a non-zero multiple of 16/,
    ],
    [(r) => r.desc(0, table, 24, VIRTQ_DESC_F_INDIRECT), /length 24/],
    [
      (r) => r.desc(0, table, 0x100000 + 16, VIRTQ_DESC_F_INDIRECT),
      /entries, more than 65536/,
    ],
    [
      (r) => r.desc(0, 0n, 32, VIRTQ_DESC_F_INDIRECT),
      /indirect table of 32 bytes at 0x0 is not guest RAM/,
    ],
    [
      (r) => r.desc(0, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1),
      /indirect descriptor 0 of head 0 also has NEXT/,
    ],
    [(r) => {
      r.descAt(table, table, 16, VIRTQ_DESC_F_INDIRECT);
      r.desc(0, table, 16, VIRTQ_DESC_F_INDIRECT);
    }, /indirect descriptor 0 of head 0 is inside an indirect table/],
    [(r) => {
      r.descAt(table, DATA, 1, VIRTQ_DESC_F_NEXT, 1);
      r.descAt(table + 16n, DATA, 1, VIRTQ_DESC_F_NEXT, 0);
      r.desc(0, table, 32, VIRTQ_DESC_F_INDIRECT);
    }, /more than 2 indirect descriptors \(a loop\)/],
    [(r) => {
      r.descAt(table, DATA, 1, VIRTQ_DESC_F_NEXT, 2);
      r.desc(0, table, 32, VIRTQ_DESC_F_INDIRECT);
    }, /indirect descriptor 0 of head 0 points at 2, past the table size 2/],
  ];
  for (const [build, pattern] of cases) {
    const r = ring();
    build(r);
    r.publish(0);
    popError(r.queue, pattern);
  }
});

Deno.test("Virtqueue.needsInterrupt() follows NO_INTERRUPT and needs a pushUsed first", () => {
  const r = ring();
  assert.equal(r.queue.needsInterrupt(), false);
  r.desc(0, DATA, 1);
  r.publish(0);
  r.queue.pushUsed(r.queue.pop()!.head, 0);
  assert.equal(r.queue.needsInterrupt(), true);
  assert.equal(r.queue.needsInterrupt(), false);
  r.memory.setU16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT);
  r.queue.pushUsed(0, 0);
  assert.equal(r.queue.needsInterrupt(), false);
});

Deno.test("Virtqueue.pushUsed() rejects heads past the queue and inactive queues", () => {
  const r = ring();
  assert.throws(
    () => r.queue.pushUsed(8, 0),
    /head 8 is not a descriptor index below 8/,
  );
  assert.throws(
    () => r.queue.pushUsed(0, -1),
    /length -1 is not a 32-bit count/,
  );
  r.queue.reset();
  assert.throws(() => r.queue.pushUsed(0, 0), VirtqueueError);
  assert.equal(r.queue.size, 16);
  assert.equal(r.queue.descAddr, 0n);
});

Deno.test("Virtqueue used and avail indexes wrap at 2^16", () => {
  const r = ring(2);
  r.desc(0, DATA, 1);
  r.desc(1, DATA, 1);
  for (let i = 0; i < 65540; i++) {
    r.publish(i % 2);
    const chain = r.queue.pop();
    assert.equal(chain?.head, i % 2);
    r.queue.pushUsed(chain!.head, 1);
  }
  assert.equal(r.queue.pop(), undefined);
  assert.equal(r.memory.getU16(USED + 2n), 65540 & 0xffff);
});

Deno.test("Virtqueue reads and writes buffers that span adjacent regions", () => {
  const low = new Uint8Array(0x8000);
  const high = new Uint8Array(0x1000);
  const memory = new GuestMemory([
    { base: 0n, bytes: low },
    { base: 0x8000n, bytes: high },
  ]);
  const queue = new Virtqueue({ maxSize: 4 });
  queue.size = 4;
  queue.descAddr = 0x1000n;
  queue.availAddr = 0x2000n;
  queue.usedAddr = 0x3000n;
  queue.activate(memory);
  low.set([1, 2, 3, 4], 0x7ffc);
  high.set([5, 6], 0);
  memory.setU64(0x1000n, 0x7ffcn);
  memory.setU32(0x1008n, 6);
  memory.setU16(0x100cn, VIRTQ_DESC_F_NEXT);
  memory.setU16(0x100en, 1);
  memory.setU64(0x1010n, 0x7ffen);
  memory.setU32(0x1018n, 4);
  memory.setU16(0x101cn, VIRTQ_DESC_F_WRITE);
  memory.setU16(0x2002n, 1);
  const chain = queue.pop()!;
  assert.deepEqual([...queue.readAll(chain)], [1, 2, 3, 4, 5, 6]);
  assert.equal(queue.write(chain, Uint8Array.of(9, 8, 7, 6, 5)), 4);
  assert.deepEqual([...low.subarray(0x7ffe)], [9, 8]);
  assert.deepEqual([...high.subarray(0, 2)], [7, 6]);

  memory.setU64(0x1000n, 0x8800n); // 0x8800 + 0x1000 runs off the end
  memory.setU32(0x1008n, 0x1000);
  memory.setU16(0x100cn, 0);
  memory.setU16(0x2004n, 0);
  memory.setU16(0x2002n, 2);
  assert.throws(() => queue.pop(), /not guest RAM/);
});

Deno.test("Virtqueue turns guest memory that went away into VirtqueueError", () => {
  const r = ring();
  r.desc(0, DATA, 4, VIRTQ_DESC_F_NEXT, 1);
  r.desc(1, DATA, 4, VIRTQ_DESC_F_WRITE);
  r.publish(0);
  r.publish(0);
  const chain = r.queue.pop()!;
  r.memory.revoke();
  assert.throws(() => r.queue.readAll(chain), VirtqueueError);
  assert.throws(() => r.queue.write(chain, Uint8Array.of(1)), VirtqueueError);
  assert.throws(() => r.queue.pushUsed(0, 0), VirtqueueError);
  assert.throws(() => r.queue.pop(), VirtqueueError);
});
