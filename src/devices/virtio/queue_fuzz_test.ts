/**
 * Deterministic fuzzing of the split-ring chain reader with random and
 * adversarial rings. Each case checks that the host survives: pop() returns
 * a chain whose buffers all lie inside guest RAM, or throws VirtqueueError,
 * and never does more work than the chain budget allows.
 */

import assert from "node:assert/strict";
import { GuestMemory, type MemoryRegion } from "../../hv/memory.ts";
import {
  type DescriptorChain,
  MAX_CHAIN_BYTES,
  MAX_INDIRECT_DESCRIPTORS,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  Virtqueue,
  VirtqueueError,
} from "./queue.ts";

const CASES = 4000;
const SEED = 0x1e1e7;
const LOW_BASE = 0x10000n;
const LOW_BYTES = 0x10000;
const HIGH_BASE = 0x100000n;
const HIGH_BYTES = 0x2000;
const U64_MAX = (1n << 64n) - 1n;

/** xorshift32: small, fast, and the same sequence on every run. */
function prng(seed: number) {
  let state = seed >>> 0 || 1;
  const next = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  const below = (n: number) => next() % n;
  return {
    next,
    below,
    chance: (p: number) => next() / 0x100000000 < p,
    pick: <T>(items: readonly T[]): T => items[below(items.length)]!,
    u64: () => (BigInt(next()) << 32n) | BigInt(next()),
  };
}
type Rng = ReturnType<typeof prng>;

/** Guest memory that counts accesses, so a walk that runs away is caught. */
class CountingMemory extends GuestMemory {
  accesses = 0;
  limit = Infinity;
  overran = false;

  #tick(): void {
    if (++this.accesses > this.limit) {
      this.overran = true;
      throw new Error("Cannot go on: access budget exceeded");
    }
  }
  override slice(addr: bigint, len: number): Uint8Array | undefined {
    this.#tick();
    return super.slice(addr, len);
  }
  override read(addr: bigint, dst: Uint8Array): number {
    this.#tick();
    return super.read(addr, dst);
  }
  override write(addr: bigint, src: Uint8Array): number {
    this.#tick();
    return super.write(addr, src);
  }
  override readExact(addr: bigint, dst: Uint8Array): void {
    this.#tick();
    super.readExact(addr, dst);
  }
  override getU16(addr: bigint): number {
    this.#tick();
    return super.getU16(addr);
  }
  override setU16(addr: bigint, value: number): void {
    this.#tick();
    super.setU16(addr, value);
  }
  override setU32(addr: bigint, value: number): void {
    this.#tick();
    super.setU32(addr, value);
  }
}

function inRam(regions: readonly MemoryRegion[], addr: bigint, len: number) {
  if (len === 0) return addr + 0n <= U64_MAX;
  return regions.some((r) =>
    addr >= r.base && addr + BigInt(len) <= r.base + BigInt(r.bytes.length)
  );
}

/** A guest address: mostly inside RAM, often somewhere nasty. */
function address(rng: Rng, align = 1): bigint {
  switch (rng.below(8)) {
    case 0:
      return U64_MAX - BigInt(rng.below(64)); // near 2^64
    case 1:
      return rng.u64();
    case 2:
      return BigInt(rng.below(0x10000)); // below RAM
    case 3:
      return LOW_BASE + BigInt(LOW_BYTES - rng.below(32)); // straddles the end
    case 4:
      return HIGH_BASE + BigInt(rng.below(HIGH_BYTES));
    default: {
      const a = LOW_BASE + BigInt(rng.below(LOW_BYTES));
      return a - (a % BigInt(align));
    }
  }
}

function length(rng: Rng): number {
  switch (rng.below(8)) {
    case 0:
      return 0;
    case 1:
      return 0xffffffff;
    case 2:
      return MAX_CHAIN_BYTES + 1;
    case 3:
      return 16 * (1 + rng.below(300)); // a plausible indirect table
    case 4:
      return rng.next();
    default:
      return rng.below(512);
  }
}

function flags(rng: Rng): number {
  if (rng.chance(0.5)) return rng.below(8);
  return rng.pick([
    0,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_F_INDIRECT,
  ]);
}

function writeDesc(
  memory: GuestMemory,
  at: bigint,
  d: { addr: bigint; len: number; flags: number; next: number },
): void {
  const raw = new Uint8Array(16);
  const v = new DataView(raw.buffer);
  v.setBigUint64(0, d.addr, true);
  v.setUint32(8, d.len >>> 0, true);
  v.setUint16(12, d.flags, true);
  v.setUint16(14, d.next & 0xffff, true);
  memory.write(at, raw);
}

/** Fills a descriptor table of `count` entries at `table` adversarially. */
function fillTable(
  rng: Rng,
  memory: GuestMemory,
  table: bigint,
  count: number,
  descTable: bigint,
): void {
  for (let i = 0; i < count; i++) {
    const f = flags(rng);
    let addr = address(rng);
    let len = length(rng);
    if (f & VIRTQ_DESC_F_INDIRECT && rng.chance(0.6)) {
      // Indirect tables that are the ring itself, this table, or a new one.
      addr = rng.pick([descTable, table, address(rng, 16)]);
      len = 16 * (1 + rng.below(count + 4)) + (rng.chance(0.1) ? 8 : 0);
    }
    const next = rng.pick([
      i, // itself
      Math.max(0, i - 1), // back: a loop
      i + 1,
      rng.below(count + 3), // sometimes past the end
      rng.next() & 0xffff,
    ]);
    writeDesc(memory, table + 16n * BigInt(i), { addr, len, flags: f, next });
  }
}

/**
 * Fills a table with well-formed chains (a few readable, then writable
 * descriptors, some through an indirect table) for the fuzzer to mutate.
 */
function fillValid(
  rng: Rng,
  memory: GuestMemory,
  table: bigint,
  count: number,
  indirectAt: bigint,
): void {
  let i = 0;
  while (i < count) {
    const n = Math.min(count - i, 1 + rng.below(4));
    let writing = false;
    for (let k = 0; k < n; k++) {
      writing ||= rng.chance(0.4);
      const last = k === n - 1;
      const len = rng.below(300);
      const addr = LOW_BASE + 0xc000n + BigInt(rng.below(0x3000));
      const indirect = last && rng.chance(0.2);
      if (indirect) {
        const entries = 1 + rng.below(8);
        for (let e = 0; e < entries; e++) {
          writeDesc(memory, indirectAt + 16n * BigInt(e), {
            addr: HIGH_BASE + BigInt(rng.below(HIGH_BYTES - 512)),
            len: rng.below(512),
            flags: (e < entries - 1 ? VIRTQ_DESC_F_NEXT : 0) |
              (writing ? VIRTQ_DESC_F_WRITE : 0),
            next: e + 1,
          });
        }
        writeDesc(memory, table + 16n * BigInt(i + k), {
          addr: indirectAt,
          len: 16 * entries,
          flags: VIRTQ_DESC_F_INDIRECT,
          next: 0,
        });
        continue;
      }
      writeDesc(memory, table + 16n * BigInt(i + k), {
        addr,
        len,
        flags: (last ? 0 : VIRTQ_DESC_F_NEXT) |
          (writing ? VIRTQ_DESC_F_WRITE : 0),
        next: i + k + 1,
      });
    }
    i += n;
  }
}

function checkChain(
  chain: DescriptorChain,
  queue: Virtqueue,
  regions: readonly MemoryRegion[],
): void {
  assert.ok(chain.head >= 0 && chain.head < queue.size, `head ${chain.head}`);
  let readable = 0;
  let writable = 0;
  for (const b of chain.readable) {
    assert.ok(inRam(regions, b.addr, b.len), `readable ${b.addr}+${b.len}`);
    readable += b.len;
  }
  for (const b of chain.writable) {
    assert.ok(inRam(regions, b.addr, b.len), `writable ${b.addr}+${b.len}`);
    writable += b.len;
  }
  assert.equal(chain.readableLength, readable);
  assert.equal(chain.writableLength, writable);
  assert.ok(readable + writable <= MAX_CHAIN_BYTES);
}

/** Runs one case; returns the chains popped and whether a pop was refused. */
function runCase(seed: number): { chains: number; refused: boolean } {
  const rng = prng(seed);
  const low = new Uint8Array(LOW_BYTES);
  const high = new Uint8Array(HIGH_BYTES);
  const regions = [
    { base: LOW_BASE, bytes: low },
    { base: HIGH_BASE, bytes: high },
  ];
  const memory = new CountingMemory(regions);
  const maxSize = 1 << rng.below(9);
  const queue = new Virtqueue({ maxSize, index: seed % 3 });
  queue.size = rng.chance(0.9)
    ? 1 << rng.below(Math.log2(maxSize) + 1)
    : rng.below(maxSize + 4);
  // Rings: usually well placed, sometimes anywhere.
  const sane = rng.chance(0.85);
  const size = queue.size || 1;
  queue.descAddr = sane ? LOW_BASE : address(rng, 16);
  queue.availAddr = sane ? LOW_BASE + 0x4000n : address(rng, 2);
  queue.usedAddr = sane ? LOW_BASE + 0x5000n : address(rng, 4);
  if (rng.chance(0.05)) queue.usedAddr += 2n; // misaligned
  if (rng.chance(0.1)) {
    for (let i = 0; i < low.length; i++) low[i] = rng.next() & 0xff;
  }
  const valid = rng.chance(0.4);
  if (valid) {
    fillValid(rng, memory, queue.descAddr, size, LOW_BASE + 0xb000n);
    // Then a few mutations of single bytes of the table.
    for (let m = rng.below(4); m > 0; m--) {
      const at = queue.descAddr + BigInt(rng.below(16 * size));
      memory.write(at, Uint8Array.of(rng.next() & 0xff));
    }
  } else if (rng.chance(0.8)) {
    fillTable(rng, memory, queue.descAddr, size, queue.descAddr);
  }
  // A few indirect tables elsewhere in RAM.
  for (let t = 0; t < 3; t++) {
    const at = LOW_BASE + 0x8000n + BigInt(t * 0x1000);
    fillTable(rng, memory, at, 1 + rng.below(200), queue.descAddr);
  }
  const ringEntries = size;
  for (let i = 0; i < ringEntries; i++) {
    const head = rng.chance(valid ? 0.99 : 0.9)
      ? rng.below(size)
      : rng.next() & 0xffff;
    memory.write(
      queue.availAddr + 4n + 2n * BigInt(i),
      Uint8Array.of(head & 0xff, head >> 8),
    );
  }
  const idx = valid && rng.chance(0.7) ? 1 + rng.below(size) : rng.pick([
    rng.below(size + 1),
    size,
    size + 1 + rng.below(100),
    0xffff,
    rng.next() & 0xffff,
  ]);
  memory.write(queue.availAddr + 2n, Uint8Array.of(idx & 0xff, idx >> 8));

  try {
    queue.activate(memory);
  } catch (e) {
    assert.ok(e instanceof VirtqueueError, `activate threw ${e}`);
    return { chains: 0, refused: true };
  }
  let chains = 0;
  // A bound on the work one pop may do: every descriptor of the ring and of
  // one indirect table is read once and checked once, plus the ring reads.
  const perPop = 8 + 3 * (queue.size + MAX_INDIRECT_DESCRIPTORS);
  for (let n = 0; n < queue.size + 4; n++) {
    if (rng.chance(0.03)) {
      // The guest scribbles on its rings meanwhile.
      const at = rng.pick([queue.descAddr, queue.availAddr]) +
        BigInt(rng.below(16 * size));
      memory.write(at, Uint8Array.of(rng.next() & 0xff));
    }
    memory.accesses = 0;
    memory.limit = perPop;
    let chain: DescriptorChain | undefined;
    try {
      chain = queue.pop();
    } catch (e) {
      assert.equal(memory.overran, false, `seed ${seed}: pop ran away`);
      assert.ok(e instanceof VirtqueueError, `seed ${seed}: pop threw ${e}`);
      return { chains, refused: true };
    }
    assert.equal(memory.overran, false, `seed ${seed}: pop ran away`);
    if (chain === undefined) break;
    chains++;
    checkChain(chain, queue, regions);
    memory.limit = Infinity;
    const data = queue.readAll(chain, 4096);
    assert.equal(data.length, Math.min(4096, chain.readableLength));
    const written = queue.write(chain, new Uint8Array(64).fill(0xee));
    assert.equal(written, Math.min(64, chain.writableLength));
    queue.pushUsed(chain.head, written);
  }
  return { chains, refused: false };
}

Deno.test("Virtqueue.pop() survives random and adversarial rings", () => {
  const outcomes = { chains: 0, withChain: 0, refused: 0 };
  const started = performance.now();
  for (let i = 0; i < CASES; i++) {
    const { chains, refused } = runCase(SEED + i);
    outcomes.chains += chains;
    if (chains > 0) outcomes.withChain++;
    if (refused) outcomes.refused++;
  }
  const ms = performance.now() - started;
  // Both paths must be exercised, or the fuzzer tests nothing.
  assert.ok(outcomes.withChain > CASES / 6, JSON.stringify(outcomes));
  assert.ok(outcomes.refused > CASES / 4, JSON.stringify(outcomes));
  assert.ok(ms < 10_000, `fuzzing took ${ms} ms`);
});

Deno.test("Virtqueue.pop() ends a worst-case indirect loop within its budget", () => {
  // One maximal indirect table whose entries all chain forward and the last
  // points back at the first: the walk must stop after 4096 entries.
  const bytes = new Uint8Array(0x20000);
  const memory = new CountingMemory([{ base: 0n, bytes }]);
  const queue = new Virtqueue({ maxSize: 1 });
  queue.size = 1;
  queue.descAddr = 0n;
  queue.availAddr = 0x100n;
  queue.usedAddr = 0x200n;
  queue.activate(memory);
  const table = 0x1000n;
  const entries = 4096;
  for (let i = 0; i < entries; i++) {
    writeDesc(memory, table + 16n * BigInt(i), {
      addr: 0x800n,
      len: 1,
      flags: VIRTQ_DESC_F_NEXT,
      next: (i + 1) % entries,
    });
  }
  writeDesc(memory, 0n, {
    addr: table,
    len: 16 * entries,
    flags: VIRTQ_DESC_F_INDIRECT,
    next: 0,
  });
  memory.setU16(0x102n, 1);
  memory.accesses = 0;
  assert.throws(() => queue.pop(), /more than 4096 indirect descriptors/);
  assert.ok(memory.accesses < 3 * entries + 16, `${memory.accesses} accesses`);
});
