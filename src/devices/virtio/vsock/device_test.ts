import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { VIRTIO_F_VERSION_1 } from "../device.ts";
import { REG_STATUS } from "../mmio.ts";
import { BUF_ALLOC_BYTES } from "./connection.ts";
import {
  EPHEMERAL_PORT_FIRST,
  VirtioVsock,
  VSOCK_RX_QUEUE,
  VSOCK_TX_QUEUE,
  type VsockConnection,
} from "./device.ts";
import {
  GUEST_BUF_ALLOC_BYTES,
  LINUX_61_RX_LAYOUT,
  LinuxLikeGuest,
  type LinuxLikeGuestOptions,
  SINGLE_RX_LAYOUT,
} from "./_guest_test_util.ts";
import {
  VSOCK_HOST_CID,
  VSOCK_OP_CREDIT_REQUEST,
  VSOCK_OP_CREDIT_UPDATE,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RESPONSE,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_SEND,
  VSOCK_TYPE_SEQPACKET,
} from "./packet.ts";

function setup(
  options: LinuxLikeGuestOptions & { guestCid?: bigint } = {},
): { vsock: VirtioVsock; guest: LinuxLikeGuest } {
  const vsock = new VirtioVsock({ guestCid: options.guestCid });
  const guest = new LinuxLikeGuest(vsock, options);
  guest.start();
  return { vsock, guest };
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function sha256(...parts: Uint8Array[]): string {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
}

async function acceptFrom(
  guest: LinuxLikeGuest,
  vsock: VirtioVsock,
  port: number,
) {
  const listener = vsock.listen(port);
  const socket = guest.connect(port);
  await guest.runUntil(() => socket.state === "established", "RESPONSE");
  const conn = (await listener.accept())!;
  assert.ok(conn);
  return { listener, socket, conn };
}

Deno.test("VirtioVsock offers device 19, three queues of 256 and guest_cid in config space", () => {
  const { vsock, guest } = setup({ guestCid: 0x1234_5678n });
  assert.equal(vsock.deviceId, 19);
  assert.equal(guest.driver.deviceFeatures(), VIRTIO_F_VERSION_1);
  assert.deepEqual(vsock.queueMaxSizes, [256, 256, 256]);
  assert.equal(guest.cid, 0x1234_5678n);
  assert.deepEqual(
    guest.driver.readConfig(0, 4),
    Uint8Array.of(0x78, 0x56, 0x34, 0x12),
  );
  assert.deepEqual(guest.driver.readConfig(4, 4), new Uint8Array(4));
  assert.deepEqual(guest.driver.readConfig(8, 4), new Uint8Array(4));
  assert.throws(
    () => new VirtioVsock({ guestCid: 2n }),
    /guest CID 2 is reserved/,
  );
  assert.throws(
    () => new VirtioVsock({ guestCid: 1n << 32n }),
    /reserved or above 32 bits/,
  );
  vsock.terminate("done");
});

Deno.test("VirtioVsock: a guest connect to a listener gets RESPONSE and a connection", async () => {
  const { vsock, guest } = setup();
  const { socket, conn, listener } = await acceptFrom(guest, vsock, 9998);
  const response = guest.packets.find((p) =>
    p.header.op === VSOCK_OP_RESPONSE
  )!;
  assert.deepEqual(
    {
      srcCid: response.header.srcCid,
      dstCid: response.header.dstCid,
      srcPort: response.header.srcPort,
      dstPort: response.header.dstPort,
      bufAlloc: response.header.bufAlloc,
    },
    {
      srcCid: VSOCK_HOST_CID,
      dstCid: 3n,
      srcPort: 9998,
      dstPort: socket.localPort,
      bufAlloc: BUF_ALLOC_BYTES,
    },
  );
  assert.equal(conn.localPort, 9998);
  assert.equal(conn.peerPort, socket.localPort);
  assert.throws(() => vsock.listen(9998), /already has a listener/);

  // Both directions.
  socket.write(new TextEncoder().encode("ping"));
  const reader = conn.readable.getReader();
  const got = reader.read();
  await guest.runFor(2);
  assert.equal(new TextDecoder().decode((await got).value), "ping");
  const writer = conn.writable.getWriter();
  const wrote = writer.write(new TextEncoder().encode("pong"));
  await guest.runUntil(() => socket.rxBytes === 4, "pong");
  await wrote;
  assert.equal(new TextDecoder().decode(socket.read()), "pong");

  // The guest closes (SHUTDOWN both): the host's readable ends, RST follows.
  socket.close();
  await guest.runUntil(() => socket.reset, "RST after the guest's close");
  assert.ok((await reader.read()).done);
  await conn.closed;
  assert.equal(vsock.stats.connections, 0);
  assert.deepEqual(guest.errors, []);
  listener.close();
  vsock.terminate("done");
});

Deno.test("VirtioVsock answers RST to a REQUEST for a port without a listener", async () => {
  const { vsock, guest } = setup();
  const socket = guest.connect(7777, 2000);
  await guest.runUntil(() => socket.reset, "RST");
  const rst = guest.packets.at(-1)!.header;
  assert.equal(rst.op, VSOCK_OP_RST);
  assert.equal(rst.srcPort, 7777);
  assert.equal(rst.dstPort, 2000);
  assert.equal(rst.dstCid, 3n);
  assert.equal(vsock.stats.connections, 0);
  // SEQPACKET is not offered: RST too.
  guest.sendPacket({
    srcPort: 2001,
    dstPort: 7777,
    op: VSOCK_OP_REQUEST,
    type: VSOCK_TYPE_SEQPACKET,
  });
  vsock.listen(7777);
  guest.sendPacket({
    srcPort: 2002,
    dstPort: 7777,
    op: VSOCK_OP_REQUEST,
    type: VSOCK_TYPE_SEQPACKET,
  });
  await guest.runFor(2);
  const last = guest.packets.slice(-2).map((p) => [p.header.op, p.header.type]);
  assert.deepEqual(last, [[VSOCK_OP_RST, VSOCK_TYPE_SEQPACKET], [
    VSOCK_OP_RST,
    VSOCK_TYPE_SEQPACKET,
  ]]);
  assert.deepEqual(guest.errors.filter((e) => !e.includes("of type 2")), []);
  vsock.terminate("done");
});

Deno.test("VirtioVsock connect() opens host-initiated connections from port 49152 up", async () => {
  const { vsock, guest } = setup();
  guest.listen(5000);
  const pending = vsock.connect(5000);
  await guest.runUntil(() => guest.accepted.length === 1, "REQUEST");
  const conn = await pending;
  const request = guest.packets.find((p) => p.header.op === VSOCK_OP_REQUEST)!;
  assert.equal(request.header.srcPort, EPHEMERAL_PORT_FIRST);
  assert.equal(request.header.dstPort, 5000);
  assert.equal(request.header.bufAlloc, BUF_ALLOC_BYTES);
  assert.equal(conn.localPort, EPHEMERAL_PORT_FIRST);
  assert.equal(conn.peerPort, 5000);
  // The next one skips the port in use (and a listener's port).
  vsock.listen(EPHEMERAL_PORT_FIRST + 1);
  const second = vsock.connect(5000);
  await guest.runUntil(() => guest.accepted.length === 2, "second REQUEST");
  assert.equal((await second).localPort, EPHEMERAL_PORT_FIRST + 2);

  const child = guest.accepted[0]!;
  const writer = conn.writable.getWriter();
  const w = writer.write(Uint8Array.of(1, 2, 3));
  await guest.runUntil(() => child.rxBytes === 3, "data to the guest");
  await w;
  child.write(Uint8Array.of(9));
  const r = conn.readable.getReader().read();
  await guest.runFor(2);
  assert.deepEqual((await r).value, Uint8Array.of(9));
  assert.deepEqual(guest.errors, []);
  vsock.terminate("done");
});

Deno.test("VirtioVsock connect() rejects on the guest's RST and on timeout", async () => {
  const { vsock, guest } = setup();
  const refused = vsock.connect(6000).catch((e) => e);
  await guest.runFor(3);
  assert.match(
    String(await refused),
    /Cannot connect to vsock port 6000 of the guest: connection refused/,
  );

  // A guest that takes the REQUEST and never answers: RST after the timeout.
  guest.mute = true;
  const slow = vsock.connect(6000, { timeoutMs: 20 }).catch((e) => e);
  const started = Date.now();
  while (Date.now() - started < 60) await guest.runFor(1);
  assert.match(String(await slow), /no answer within 20 ms/);
  const ops = guest.packets.slice(-2).map((p) => p.header.op);
  assert.deepEqual(ops, [VSOCK_OP_REQUEST, VSOCK_OP_RST]);
  assert.equal(vsock.stats.connections, 0);
  vsock.terminate("done");

  // A device whose driver never started: the REQUEST cannot even leave.
  const idle = new VirtioVsock();
  await assert.rejects(
    idle.connect(1, { timeoutMs: 5 }),
    /no answer within 5 ms/,
  );
  idle.terminate("done");
});

Deno.test("VirtioVsock: a slow guest reader slows the host writer (guest credit honoured)", async () => {
  const { vsock, guest } = setup();
  const { socket, conn } = await acceptFrom(guest, vsock, 9998);
  const data = pattern(1024 * 1024, 7);
  let done = false;
  const writer = conn.writable.getWriter();
  const write = writer.write(data).then(() => done = true);
  await guest.runFor(20);
  assert.ok(!done, "the write waits for the guest");
  assert.equal(
    socket.rxBytes,
    GUEST_BUF_ALLOC_BYTES,
    "exactly the guest's credit",
  );
  const got: Uint8Array[] = [socket.read(100_000)];
  await guest.runUntil(
    () => {
      got.push(socket.read(8192)); // a slow reader: 8 KiB per turn
      return done && socket.rxBytes === 0;
    },
    "the whole write",
    100_000,
  );
  await write;
  assert.equal(sha256(...got), sha256(data));
  assert.deepEqual(guest.errors, []);
  vsock.terminate("done");
});

Deno.test("VirtioVsock: a slow host reader slows the guest writer (host credit advertised)", async () => {
  const { vsock, guest } = setup();
  const { socket, conn } = await acceptFrom(guest, vsock, 9998);
  const data = pattern(1024 * 1024, 9);
  socket.write(data);
  await guest.runFor(20);
  assert.equal(vsock.stats.bufferedBytes, BUF_ALLOC_BYTES);
  assert.equal(socket.txQueued, data.length - BUF_ALLOC_BYTES);
  const reader = conn.readable.getReader({ mode: "byob" });
  const got: Uint8Array[] = [];
  let total = 0;
  let reading: Promise<void> | undefined;
  await guest.runUntil(
    () => {
      if (total === data.length) return true;
      // One 3000-byte read per turn: a slow reader.
      reading ??= reader.read(new Uint8Array(3000)).then((r) => {
        if (r.value) {
          got.push(r.value);
          total += r.value.length;
        }
        reading = undefined;
      });
      assert.ok(vsock.stats.bufferedBytes <= BUF_ALLOC_BYTES);
      return total === data.length;
    },
    "the whole guest write",
    100_000,
  );
  assert.equal(sha256(...got), sha256(data));
  assert.ok(guest.packets.some((p) => p.header.op === VSOCK_OP_CREDIT_UPDATE));
  assert.equal(vsock.stats.protocolErrors, 0);
  vsock.terminate("done");
});

for (
  const [name, options] of [
    ["Linux 6.1 rx buffers (header + 4 KiB), header/payload tx", {
      rxLayout: LINUX_61_RX_LAYOUT,
    }],
    ["single rx buffers, single tx buffers", {
      rxLayout: SINGLE_RX_LAYOUT,
      txSplit: "single",
    }],
    ["odd rx splits (10+34+100+3000), odd tx splits", {
      rxLayout: [10, 34, 100, 3000],
      txSplit: [10, 40, 1000],
    }],
    ["64 KiB single rx buffers", { rxLayout: [44 + 65536], rxBuffers: 16 }],
  ] as const
) {
  Deno.test(`VirtioVsock moves 8 MiB each way with matching SHA-256: ${name}`, async () => {
    const { vsock, guest } = setup({ ...options, memoryBytes: 32 << 20 });
    const { socket, conn } = await acceptFrom(guest, vsock, 9998);
    const toGuest = pattern(8 << 20, 1);
    const toHost = pattern(8 << 20, 2);
    let hostWriteDone = false;
    const hostWrite = (async () => {
      const writer = conn.writable.getWriter();
      for (let at = 0; at < toGuest.length; at += 100_000) {
        await writer.write(toGuest.subarray(at, at + 100_000));
      }
      await writer.close();
      hostWriteDone = true;
    })();
    let hostReadDone = false;
    const hostHash = createHash("sha256");
    let hostBytes = 0;
    const hostRead = (async () => {
      for await (const chunk of conn.readable) {
        hostHash.update(chunk);
        hostBytes += chunk.length;
      }
      hostReadDone = true;
    })();
    const guestHash = createHash("sha256");
    let guestBytes = 0;
    socket.write(toHost);
    let sentShutdown = false;
    await guest.runUntil(
      () => {
        const b = socket.read();
        guestHash.update(b);
        guestBytes += b.length;
        if (socket.txQueued === 0 && !(socket.peerShutdown & 1)) {
          // All written: SHUT_WR once, like shutdown(fd, SHUT_WR).
          if (!sentShutdown) socket.shutdown(VSOCK_SHUTDOWN_SEND);
          sentShutdown = true;
        }
        return hostWriteDone && hostReadDone &&
          (socket.peerShutdown & VSOCK_SHUTDOWN_SEND) !== 0;
      },
      "8 MiB each way",
      200_000,
    );
    await Promise.all([hostWrite, hostRead]);
    guestHash.update(socket.read());
    assert.equal(hostBytes, toHost.length);
    assert.equal(hostHash.digest("hex"), sha256(toHost));
    assert.equal(guestBytes, toGuest.length);
    assert.equal(guestHash.digest("hex"), sha256(toGuest));
    // Both directions shut down: the host finished with RST.
    await guest.runUntil(() => socket.reset, "final RST");
    await conn.closed;
    assert.deepEqual(guest.errors, []);
    assert.equal(vsock.stats.malformedPackets, 0);
    assert.equal(vsock.stats.protocolErrors, 0);
    vsock.terminate("done");
  });
}

Deno.test("VirtioVsock: closing the writable sends SHUTDOWN SEND after the data; the guest may go on", async () => {
  const { vsock, guest } = setup();
  const { socket, conn } = await acceptFrom(guest, vsock, 9998);
  const writer = conn.writable.getWriter();
  void writer.write(pattern(10_000, 3));
  const closing = writer.close();
  await guest.runUntil(() => socket.peerShutdown !== 0, "SHUTDOWN");
  await closing;
  const ops = guest.packets.slice(1).map((p) => p.header.op);
  assert.deepEqual(ops.slice(-1), [VSOCK_OP_SHUTDOWN]);
  assert.ok(ops.slice(0, -1).every((op) => op === VSOCK_OP_RW));
  assert.equal(socket.rxBytes, 10_000, "every byte before the SHUTDOWN");
  socket.write(Uint8Array.of(42));
  const r = conn.readable.getReader();
  const got = r.read();
  await guest.runFor(2);
  assert.deepEqual((await got).value, Uint8Array.of(42));
  assert.ok(!socket.reset);
  socket.shutdown(VSOCK_SHUTDOWN_SEND);
  await guest.runUntil(() => socket.reset, "RST once both sides are done");
  assert.ok((await r.read()).done);
  await conn.closed;
  vsock.terminate("done");
});

Deno.test("VirtioVsock: close() sends RST at once", async () => {
  const { vsock, guest } = setup();
  const { socket, conn } = await acceptFrom(guest, vsock, 9998);
  socket.write(pattern(1000, 1));
  await guest.runFor(2);
  conn.close();
  await guest.runUntil(() => socket.reset, "RST");
  await conn.closed;
  assert.equal(vsock.stats.connections, 0);
  assert.equal(vsock.stats.bufferedBytes, 0);
  vsock.terminate("done");
});

Deno.test("VirtioVsock: packets wait for rx buffers, control before data", async () => {
  const { vsock, guest } = setup({ rxBuffers: 8 });
  const { socket, conn } = await acceptFrom(guest, vsock, 9998);
  guest.holdRx = true;
  // Use up the 8 posted rx buffers with data the guest does not read yet.
  const writer = conn.writable.getWriter();
  let done = false;
  const w = writer.write(pattern(20 * 4096, 5)).then(() => done = true);
  await guest.runFor(3);
  assert.ok(!done);
  const before = guest.packets.length;
  assert.equal(
    guest.packets.filter((p) => p.header.op === VSOCK_OP_RW).length,
    8,
  );
  socket.send(VSOCK_OP_CREDIT_REQUEST, 0);
  guest.connect(4444); // no listener: RST waits too
  await guest.runFor(2);
  assert.equal(guest.packets.length, before, "nothing without rx buffers");
  guest.holdRx = false;
  await guest.runFor(1);
  const next = guest.packets.slice(before, before + 2).map((p) => p.header.op);
  assert.deepEqual(next.sort(), [VSOCK_OP_RST, VSOCK_OP_CREDIT_UPDATE].sort());
  assert.equal(guest.packets[before + 2]?.header.op, VSOCK_OP_RW);
  await guest.runUntil(() => {
    socket.read();
    return done;
  }, "the write");
  await w;
  assert.deepEqual(guest.errors, []);
  vsock.terminate("done");
});

Deno.test("VirtioVsock resets a guest that sends beyond the advertised credit", async () => {
  const { vsock, guest } = setup();
  const { socket, conn } = await acceptFrom(guest, vsock, 9998);
  socket.ignoreCredit = true;
  socket.write(pattern(BUF_ALLOC_BYTES + 4096, 1));
  await guest.runUntil(() => socket.reset, "RST");
  assert.equal(vsock.stats.protocolErrors, 1);
  assert.ok(vsock.stats.bufferedBytes <= BUF_ALLOC_BYTES);
  const reader = conn.readable.getReader();
  let got = 0;
  await assert.rejects(async () => {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      got += r.value.length;
    }
  }, /beyond the credit/);
  assert.equal(got, BUF_ALLOC_BYTES);
  vsock.terminate("done");
});

Deno.test("VirtioVsock terminate() errors every stream, ends accept() and pending connects", async () => {
  const { vsock, guest } = setup();
  const { conn, listener } = await acceptFrom(guest, vsock, 9998);
  const other = vsock.listen(9999);
  const waiting = other.accept();
  guest.mute = true;
  const connecting = vsock.connect(5000).catch((e) => e);
  const reading = conn.readable.getReader().read().catch((e) => e);
  const writing = conn.writable.getWriter().write(pattern(1 << 20, 1)).catch((
    e,
  ) => e);
  await guest.runFor(2);
  const reason = new Error("Cannot use vsock: the VM stopped");
  vsock.terminate(reason);
  assert.equal(await reading, reason);
  assert.equal(await writing, reason);
  assert.equal(await connecting, reason);
  assert.equal(await waiting, null);
  assert.equal(await listener.accept(), null);
  await conn.closed;
  assert.throws(() => vsock.listen(1), /terminated/);
  await assert.rejects(vsock.connect(1), /terminated/);
  // The guest may still kick: nothing happens, nothing throws.
  guest.connect(9998);
  await guest.runFor(2);
  assert.deepEqual(guest.driver.errors, []);
});

Deno.test("VirtioVsock: a driver reset ends connections, keeps listeners", async () => {
  const { vsock, guest } = setup();
  const { conn } = await acceptFrom(guest, vsock, 9998);
  const reading = conn.readable.getReader().read().catch((e) => e);
  guest.driver.writeRegister(REG_STATUS, 0);
  assert.match(String(await reading), /the guest reset the vsock device/);
  assert.equal(vsock.stats.connections, 0);
  // The driver comes back (module reload): the listener still works.
  guest.restart();
  const socket = guest.connect(9998);
  await guest.runUntil(() => socket.state === "established", "RESPONSE");
  assert.deepEqual(guest.driver.errors, []);
  vsock.terminate("done");
});

Deno.test("VirtioVsock gives tx chains back with length 0 and interrupts", async () => {
  const { vsock, guest } = setup({ rxBuffers: 0 });
  const before = guest.driver.interrupts;
  guest.driver.addBuffers(VSOCK_TX_QUEUE, [new Uint8Array(44)], []);
  guest.driver.notify(VSOCK_TX_QUEUE);
  const used = guest.driver.usedEntries(VSOCK_TX_QUEUE);
  assert.deepEqual(used.map((u) => u.len), [0]);
  assert.ok(guest.driver.interrupts > before);
  guest.driver.ackInterrupt();
  await guest.runFor(1);
  assert.equal(vsock.stats.malformedPackets, 1, "src_cid 0 is not the guest");
  // An rx buffer too small for a header goes back empty; the RST for
  // this REQUEST (no listener) takes the next one.
  guest.driver.addBuffers(VSOCK_RX_QUEUE, [], [20]);
  guest.driver.addBuffers(VSOCK_RX_QUEUE, [], [44]);
  guest.connect(1);
  await Promise.resolve();
  const rx = guest.driver.usedEntries(VSOCK_RX_QUEUE);
  assert.deepEqual(rx.map((u) => u.len), [0, 44]);
  assert.equal(vsock.stats.malformedPackets, 2);
  assert.equal(vsock.stats.resetsSent, 1);
  vsock.terminate("done");
});

Deno.test("VirtioVsock: accept() waits, and a listener's close() resets connections not yet accepted", async () => {
  const { vsock, guest } = setup();
  const listener = vsock.listen(80);
  const waiting = listener.accept();
  const a = guest.connect(80);
  await guest.runUntil(() => a.state === "established", "a");
  const first: VsockConnection | null = await waiting;
  assert.equal(first?.peerPort, a.localPort);
  const b = guest.connect(80);
  await guest.runUntil(() => b.state === "established", "b");
  listener.close();
  await guest.runUntil(() => b.reset, "RST for the unaccepted one");
  assert.ok(!a.reset);
  assert.equal(await listener.accept(), null);
  const c = guest.connect(80);
  await guest.runUntil(() => c.reset, "RST: nobody listens");
  vsock.terminate("done");
});
