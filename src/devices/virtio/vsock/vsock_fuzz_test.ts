import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { VIRTQ_DESC_F_NEXT } from "../queue.ts";
import { BUF_ALLOC_BYTES } from "./connection.ts";
import {
  LISTEN_BACKLOG,
  MAX_PENDING_REPLIES,
  VirtioVsock,
  VSOCK_TX_QUEUE,
  type VsockConnection,
} from "./device.ts";
import {
  type GuestSocket,
  LinuxLikeGuest,
  type LinuxLikeGuestOptions,
} from "./_guest_test_util.ts";
import {
  encodeHeader,
  VSOCK_HDR_BYTES,
  VSOCK_HOST_CID,
  VSOCK_OP_CREDIT_REQUEST,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_SEND,
  type VsockHeader,
} from "./packet.ts";

/** xorshift32: the same seed gives the same run. */
function rng(seed: number) {
  let x = seed >>> 0 || 0x9e3779b9;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  return {
    u32: next,
    int: (n: number) => next() % n,
    pick: <T>(items: readonly T[]): T => items[next() % items.length]!,
    bytes: (n: number) => {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = next() & 0xff;
      return b;
    },
  };
}
type Rng = ReturnType<typeof rng>;

/** Fuzzed packets come from guest ports 30000..30199, away from the good one. */
const FUZZ_PORT_FIRST = 30000;
const LISTEN_PORT = 9998;

/** Rules a well-behaved connection needs the device to keep. */
const CORRECTNESS_ERRORS = /beyond credit|used length|RW on|RW after/;

function randomCid(r: Rng, guestCid: bigint): bigint {
  return r.pick([
    guestCid,
    guestCid,
    guestCid,
    VSOCK_HOST_CID,
    0n,
    1n,
    0xffffffffn,
    0xffffffffffffffffn,
    BigInt(r.u32()) << 32n | BigInt(r.u32()),
  ]);
}

function randomHeader(
  r: Rng,
  guest: LinuxLikeGuest,
): Omit<VsockHeader, "len"> {
  return {
    srcCid: r.int(4) === 0 ? randomCid(r, guest.cid) : guest.cid,
    dstCid: r.int(4) === 0 ? randomCid(r, guest.cid) : VSOCK_HOST_CID,
    srcPort: FUZZ_PORT_FIRST + r.int(200),
    dstPort: r.pick([LISTEN_PORT, LISTEN_PORT, 1, 49152, r.u32()]),
    type: r.pick([1, 1, 1, 1, 0, 2, 3, 0xffff]),
    op: r.pick([1, 2, 3, 4, 5, 5, 5, 6, 7, 0, 8, 0xffff]),
    flags: r.pick([0, 1, 2, 3, r.u32()]),
    bufAlloc: r.pick([0, 4096, 256 * 1024, 0xffffffff, r.u32()]),
    fwdCnt: r.pick([0, r.u32()]),
  };
}

/** Cuts `bytes` into 1 to 4 readable buffers at random places. */
function randomPieces(r: Rng, bytes: Uint8Array): Uint8Array[] {
  if (bytes.length === 0) return [bytes];
  const pieces: Uint8Array[] = [];
  let at = 0;
  for (let i = 0; i < 3 && at < bytes.length; i++) {
    if (r.int(2) === 0) continue;
    const len = 1 + r.int(bytes.length - at);
    pieces.push(bytes.subarray(at, at + len));
    at += len;
  }
  if (at < bytes.length) pieces.push(bytes.subarray(at));
  return pieces;
}

/** One adversarial tx chain. */
function sendAdversarial(r: Rng, guest: LinuxLikeGuest): void {
  const kind = r.int(10);
  const h = randomHeader(r, guest);
  switch (kind) {
    case 0: // noise
      return guest.sendRaw(randomPieces(r, r.bytes(1 + r.int(120))));
    case 1: // truncated header
      return guest.sendRaw([
        encodeHeader({ ...h, len: r.u32() }).slice(0, r.int(VSOCK_HDR_BYTES)),
      ]);
    case 2: { // len says more than there is
      const payload = r.bytes(r.int(100));
      const bytes = new Uint8Array(VSOCK_HDR_BYTES + payload.length);
      encodeHeader({
        ...h,
        op: VSOCK_OP_RW,
        len: payload.length + 1 + r.int(5000),
      }, bytes);
      bytes.set(payload, VSOCK_HDR_BYTES);
      return guest.sendRaw(randomPieces(r, bytes));
    }
    case 3: { // huge len fields, with and without the bytes behind them
      const len = r.pick([0xffffffff, 0x80000000, 65537, 1 << 20]);
      const body = r.int(2) === 0 ? 65537 : 0;
      const bytes = new Uint8Array(VSOCK_HDR_BYTES + body);
      encodeHeader({ ...h, len }, bytes);
      return guest.sendRaw([bytes]);
    }
    case 4: { // data way beyond credit on a connection of our own making
      guest.sendPacket({
        ...h,
        srcCid: guest.cid,
        dstCid: VSOCK_HOST_CID,
        type: 1,
        op: VSOCK_OP_REQUEST,
        dstPort: LISTEN_PORT,
      });
      for (let i = 0; i < 6; i++) {
        guest.sendPacket({
          ...h,
          srcCid: guest.cid,
          dstCid: VSOCK_HOST_CID,
          type: 1,
          op: VSOCK_OP_RW,
          dstPort: LISTEN_PORT,
        }, r.bytes(60000));
      }
      return;
    }
    case 5: // control packets for random connections
      return guest.sendPacket({
        ...h,
        op: r.pick([
          VSOCK_OP_CREDIT_REQUEST,
          VSOCK_OP_SHUTDOWN,
          VSOCK_OP_RST,
          2,
          6,
        ]),
      });
    default: { // a well-formed header with random fields and payload
      const payload = r.bytes(r.pick([0, 1, 17, 600, 4096, 65536]));
      const bytes = new Uint8Array(VSOCK_HDR_BYTES + payload.length + r.int(3));
      encodeHeader({ ...h, len: payload.length }, bytes);
      bytes.set(payload, VSOCK_HDR_BYTES);
      return guest.sendRaw(randomPieces(r, bytes));
    }
  }
}

/**
 * One well-behaved connection moving `bytes` each way while `disturb` runs
 * every turn; returns when both directions are done and checked.
 */
async function goodTraffic(
  guest: LinuxLikeGuest,
  vsock: VirtioVsock,
  options: {
    bytes: number;
    disturb: () => void;
    check: () => void;
    minTurns?: number;
  },
): Promise<void> {
  const listener = vsock.listen(LISTEN_PORT);
  const socket: GuestSocket = guest.connect(LISTEN_PORT, 1024);
  await guest.runUntil(() => socket.state === "established", "RESPONSE");
  const conn: VsockConnection = (await listener.accept())!;
  const toHost = new Uint8Array(options.bytes).map((_, i) => (i * 7) & 0xff);
  const toGuest = new Uint8Array(options.bytes).map((_, i) => (i * 13) & 0xff);
  const hostHash = createHash("sha256");
  let hostGot = 0;
  const reading = (async () => {
    const reader = conn.readable.getReader();
    while (hostGot < toHost.length) {
      const r = await reader.read();
      if (r.done) break;
      hostHash.update(r.value);
      hostGot += r.value.length;
    }
    reader.releaseLock();
  })();
  let hostSent = false;
  const writing = (async () => {
    const writer = conn.writable.getWriter();
    for (let at = 0; at < toGuest.length; at += 50_000) {
      await writer.write(toGuest.subarray(at, at + 50_000));
    }
    writer.releaseLock();
    hostSent = true;
  })();
  const guestHash = createHash("sha256");
  let guestGot = 0;
  for (let at = 0; at < toHost.length; at += 30_000) {
    socket.write(toHost.subarray(at, at + 30_000));
  }
  let turns = 0;
  await guest.runUntil(
    () => {
      options.disturb();
      // A guest reader of 8 KiB per turn keeps traffic going for a while.
      const b = socket.read(8192);
      guestHash.update(b);
      guestGot += b.length;
      options.check();
      return ++turns >= (options.minTurns ?? 0) && hostSent &&
        hostGot === toHost.length && guestGot === toGuest.length;
    },
    "the good connection's traffic",
    50_000,
  );
  await Promise.all([reading, writing]);
  assert.equal(
    hostHash.digest("hex"),
    createHash("sha256").update(toHost).digest("hex"),
  );
  assert.equal(
    guestHash.digest("hex"),
    createHash("sha256").update(toGuest).digest("hex"),
  );
  assert.ok(!socket.reset, "the good connection survived");
  conn.close();
  listener.close();
}

function setup(options: LinuxLikeGuestOptions = {}) {
  const vsock = new VirtioVsock();
  const guest = new LinuxLikeGuest(vsock, {
    memoryBytes: 32 << 20,
    ...options,
  });
  guest.start();
  return { vsock, guest };
}

for (const seed of [1, 2, 3, 0xdecafbad]) {
  Deno.test(`VirtioVsock survives adversarial packets beside a good connection (seed ${seed})`, async () => {
    const { vsock, guest } = setup();
    const r = rng(seed);
    let sent = 0;
    await goodTraffic(guest, vsock, {
      bytes: 512 * 1024,
      minTurns: 300,
      disturb: () => {
        for (let i = 0; i < 8; i++, sent++) sendAdversarial(r, guest);
      },
      check: () => {
        const s = vsock.stats;
        // Fuzzed connections are never read: each holds at most its credit.
        assert.ok(
          s.connections <= LISTEN_BACKLOG + 1,
          `${s.connections} connections`,
        );
        assert.ok(s.bufferedBytes <= (LISTEN_BACKLOG + 1) * BUF_ALLOC_BYTES);
        assert.ok(s.pendingReplies <= MAX_PENDING_REPLIES);
      },
    });
    assert.ok(sent > 100, `only ${sent} adversarial packets`);
    const s = vsock.stats;
    assert.ok(
      s.malformedPackets > 0 && s.droppedPackets > 0 && s.protocolErrors > 0,
      JSON.stringify(s),
    );
    assert.deepEqual(guest.driver.errors, [], "the device never failed");
    assert.deepEqual(
      guest.errors.filter((e) => CORRECTNESS_ERRORS.test(e)),
      [],
    );
    vsock.terminate("done");
  });
}

Deno.test("VirtioVsock keeps a good connection going with random rx buffer layouts", async () => {
  const r = rng(77);
  const layouts = [[44, 4096], [4140], [10, 34, 4096], [44], [20], [45], [
    44,
    1,
    2,
    3,
  ], [0, 44, 100]];
  const { vsock, guest } = setup({ rxLayout: [44, 4096], rxBuffers: 20 });
  await goodTraffic(guest, vsock, {
    bytes: 256 * 1024,
    disturb: () => {
      // Extra rx chains of odd shapes, a few per turn.
      for (let i = 0; i < 3; i++) {
        try {
          guest.driver.addBuffers(0, [], r.pick(layouts));
        } catch {
          // Ring full: fine.
        }
      }
      guest.driver.notify(0);
    },
    check: () => {},
  });
  assert.deepEqual(guest.driver.errors, []);
  assert.deepEqual(guest.errors.filter((e) => CORRECTNESS_ERRORS.test(e)), []);
  vsock.terminate("done");
});

Deno.test("VirtioVsock: a REQUEST flood is bounded by the backlog, then RST", async () => {
  const { vsock, guest } = setup();
  vsock.listen(LISTEN_PORT);
  const sockets = Array.from(
    { length: 300 },
    (_, i) => guest.connect(LISTEN_PORT, 40000 + i),
  );
  await guest.runUntil(
    () => sockets.every((s) => s.state !== "connecting"),
    "answers",
    5000,
  );
  const accepted = sockets.filter((s) => s.state === "established").length;
  assert.equal(accepted, LISTEN_BACKLOG);
  assert.equal(sockets.filter((s) => s.reset).length, 300 - LISTEN_BACKLOG);
  assert.equal(vsock.stats.connections, LISTEN_BACKLOG);
  vsock.terminate("done");
});

Deno.test("VirtioVsock: a guest that never gives rx buffers cannot pile up replies", async () => {
  const { vsock, guest } = setup({ rxBuffers: 0 });
  for (let i = 0; i < 1000; i++) {
    guest.sendPacket(
      { srcPort: 50000 + i, dstPort: 7, op: VSOCK_OP_RW },
      Uint8Array.of(1),
    );
    assert.ok(vsock.stats.pendingReplies <= MAX_PENDING_REPLIES);
  }
  await guest.runFor(5);
  assert.equal(vsock.stats.pendingReplies, MAX_PENDING_REPLIES);
  // Once the guest reads its rx queue again every packet gets its RST.
  for (let turn = 0; turn < 200 && vsock.stats.resetsSent < 1000; turn++) {
    for (let i = 0; i < 64; i++) {
      try {
        guest.driver.addBuffers(0, [], [4140]);
      } catch {
        break;
      }
    }
    guest.driver.notify(0);
    guest.driver.usedEntries(0);
    guest.poll();
    await new Promise((r) => setTimeout(r, 0));
  }
  assert.equal(vsock.stats.resetsSent, 1000);
  assert.equal(vsock.stats.pendingReplies, 0);
  vsock.terminate("done");
});

Deno.test("VirtioVsock: a looping tx chain fails the device, and every connection learns why", async () => {
  const { vsock, guest } = setup();
  const listener = vsock.listen(LISTEN_PORT);
  const socket = guest.connect(LISTEN_PORT);
  await guest.runUntil(() => socket.state === "established", "RESPONSE");
  const conn = (await listener.accept())!;
  const reading = conn.readable.getReader().read().catch((e) => e);
  // Descriptors 200 -> 201 -> 200: a loop.
  const addr = guest.driver.alloc(64);
  guest.driver.writeDescriptor(VSOCK_TX_QUEUE, 200, {
    addr,
    len: 16,
    flags: VIRTQ_DESC_F_NEXT,
    next: 201,
  });
  guest.driver.writeDescriptor(VSOCK_TX_QUEUE, 201, {
    addr,
    len: 16,
    flags: VIRTQ_DESC_F_NEXT,
    next: 200,
  });
  const pendingAccept = vsock.listen(2).accept();
  guest.driver.publish(VSOCK_TX_QUEUE, 200);
  guest.driver.notify(VSOCK_TX_QUEUE);
  assert.equal(guest.driver.errors.length, 1);
  assert.match(guest.driver.errors[0]!, /loop/);
  assert.equal(vsock.stats.connections, 0);
  assert.match(String(await reading), /loop/);
  // The host side goes on: listeners still there, nothing thrown.
  vsock.terminate("done");
  assert.equal(await pendingAccept, null);
});

Deno.test("VirtioVsock: a guest ignoring credit on many connections stays bounded", async () => {
  const { vsock, guest } = setup();
  vsock.listen(LISTEN_PORT);
  const sockets = Array.from(
    { length: 20 },
    (_, i) => guest.connect(LISTEN_PORT, 41000 + i),
  );
  await guest.runUntil(
    () => sockets.every((s) => s.state === "established"),
    "RESPONSEs",
  );
  for (const s of sockets) {
    s.ignoreCredit = true;
    s.write(new Uint8Array(BUF_ALLOC_BYTES * 2));
  }
  await guest.runUntil(() => sockets.every((s) => s.reset), "RSTs", 5000);
  assert.equal(vsock.stats.protocolErrors, 20);
  assert.ok(vsock.stats.bufferedBytes <= 20 * BUF_ALLOC_BYTES);
  // A connection shut down for sending that sends again is reset too.
  const late = guest.connect(LISTEN_PORT, 42000);
  await guest.runUntil(() => late.state === "established", "RESPONSE");
  late.shutdown(VSOCK_SHUTDOWN_SEND);
  late.send(VSOCK_OP_RW, 0, Uint8Array.of(1));
  await guest.runUntil(() => late.reset, "RST");
  vsock.terminate("done");
});
