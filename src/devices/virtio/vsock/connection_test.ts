import assert from "node:assert/strict";
import {
  BUF_ALLOC_BYTES,
  CREDIT_UPDATE_THRESHOLD_BYTES,
  StreamConnection,
  type StreamConnectionOptions,
} from "./connection.ts";
import {
  VSOCK_OP_CREDIT_REQUEST,
  VSOCK_OP_CREDIT_UPDATE,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RESPONSE,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_SHUTDOWN_RCV,
  VSOCK_SHUTDOWN_SEND,
  type VsockHeader,
} from "./packet.ts";

function header(op: number, fields: Partial<VsockHeader> = {}): VsockHeader {
  return {
    srcCid: 3n,
    dstCid: 2n,
    srcPort: 1024,
    dstPort: 9998,
    len: 0,
    type: 1,
    op,
    flags: 0,
    bufAlloc: 256 * 1024,
    fwdCnt: 0,
    ...fields,
  };
}

function rw(conn: StreamConnection, bytes: Uint8Array, fwdCnt = 0) {
  return conn.receive(
    header(VSOCK_OP_RW, { len: bytes.length, fwdCnt }),
    bytes,
  );
}

/** A guest-initiated connection with its RESPONSE already taken. */
function accepted(options: Partial<StreamConnectionOptions> = {}) {
  const conn = new StreamConnection({
    localPort: 9998,
    peerPort: 1024,
    initiator: "guest",
    peerCredit: { bufAlloc: 256 * 1024, fwdCnt: 0 },
    ...options,
  });
  assert.equal(conn.takeControl()?.op, VSOCK_OP_RESPONSE);
  return conn;
}

function drainControl(conn: StreamConnection): number[] {
  const ops: number[] = [];
  for (let p = conn.takeControl(); p; p = conn.takeControl()) ops.push(p.op);
  return ops;
}

function bytes(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

Deno.test("StreamConnection answers a guest REQUEST with RESPONSE and our credit", () => {
  const conn = new StreamConnection({
    localPort: 9998,
    peerPort: 1024,
    initiator: "guest",
  });
  assert.equal(conn.state, "established");
  assert.ok(conn.hasControl());
  const p = conn.takeControl();
  assert.deepEqual(
    { op: p?.op, bufAlloc: p?.bufAlloc, fwdCnt: p?.fwdCnt },
    { op: VSOCK_OP_RESPONSE, bufAlloc: BUF_ALLOC_BYTES, fwdCnt: 0 },
  );
  assert.equal(conn.takeControl(), undefined);
  conn.close();
});

Deno.test("StreamConnection host connect: REQUEST, then RESPONSE establishes", async () => {
  const conn = new StreamConnection({
    localPort: 49152,
    peerPort: 5000,
    initiator: "host",
  });
  assert.equal(conn.state, "connecting");
  assert.equal(conn.takeControl()?.op, VSOCK_OP_REQUEST);
  assert.equal(conn.takeControl(), undefined);
  conn.receive(header(VSOCK_OP_RESPONSE, { bufAlloc: 4096 }), new Uint8Array());
  await conn.established;
  assert.equal(conn.state, "established");
  assert.equal(conn.peerCredit, 4096);
  conn.close();
});

Deno.test("StreamConnection host connect rejects on RST and on timeout", async () => {
  const refused = new StreamConnection({
    localPort: 49152,
    peerPort: 5000,
    initiator: "host",
  });
  refused.takeControl();
  refused.receive(header(VSOCK_OP_RST), new Uint8Array());
  await assert.rejects(refused.established, /connection refused/);
  assert.equal(refused.state, "closed");

  const silent = new StreamConnection({
    localPort: 49153,
    peerPort: 5000,
    initiator: "host",
    connectTimeoutMs: 5,
  });
  silent.takeControl(); // REQUEST went out: the timeout must send RST
  await assert.rejects(silent.established, /no answer within 5 ms/);
  assert.equal(silent.state, "closing");
  assert.deepEqual(drainControl(silent), [VSOCK_OP_RST]);
  assert.equal(silent.state, "closed");
  await silent.closed;

  const unsent = new StreamConnection({
    localPort: 49154,
    peerPort: 5000,
    initiator: "host",
    connectTimeoutMs: 1,
  });
  await assert.rejects(unsent.established, /no answer/);
  assert.equal(unsent.state, "closed"); // REQUEST never left: no RST
});

Deno.test("StreamConnection returns guest credit only as the host reads", async () => {
  const conn = accepted();
  const chunk = bytes(64 * 1024);
  for (let i = 0; i < 4; i++) assert.equal(rw(conn, chunk.slice()), "ok");
  assert.equal(conn.bufferedBytes, BUF_ALLOC_BYTES);
  assert.equal(conn.fwdCnt, 0);
  assert.ok(!conn.hasControl());
  const reader = conn.readable.getReader();
  const first = await reader.read();
  assert.deepEqual(first.value, chunk);
  assert.equal(conn.fwdCnt, 64 * 1024);
  assert.ok(!conn.hasControl(), "no update before half the buffer is read");
  await reader.read();
  assert.equal(conn.fwdCnt, CREDIT_UPDATE_THRESHOLD_BYTES);
  const update = conn.takeControl();
  assert.equal(update?.op, VSOCK_OP_CREDIT_UPDATE);
  assert.equal(update?.fwdCnt, CREDIT_UPDATE_THRESHOLD_BYTES);
  assert.equal(update?.bufAlloc, BUF_ALLOC_BYTES);
  conn.close();
});

Deno.test("StreamConnection answers CREDIT_REQUEST with CREDIT_UPDATE", () => {
  const conn = accepted();
  conn.receive(header(VSOCK_OP_CREDIT_REQUEST), new Uint8Array());
  assert.deepEqual(drainControl(conn), [VSOCK_OP_CREDIT_UPDATE]);
  conn.close();
});

Deno.test("StreamConnection resets a guest that sends beyond its credit", async () => {
  const conn = accepted();
  assert.equal(rw(conn, bytes(BUF_ALLOC_BYTES - 10)), "ok");
  assert.equal(rw(conn, bytes(11)), "protocol-error");
  assert.equal(conn.state, "closing");
  assert.deepEqual(drainControl(conn), [VSOCK_OP_RST]);
  assert.equal(conn.state, "closed");
  // What arrived within credit is still readable, then the error.
  const reader = conn.readable.getReader();
  const r = await reader.read();
  assert.equal(r.value?.length, BUF_ALLOC_BYTES - 10);
  await assert.rejects(reader.read(), /broke the protocol.*beyond the credit/);
});

Deno.test("StreamConnection sends host data within the guest's credit only", async () => {
  const conn = accepted({ peerCredit: { bufAlloc: 10000, fwdCnt: 0 } });
  const writer = conn.writable.getWriter();
  const data = bytes(25000);
  let done = false;
  const write = writer.write(data).then(() => done = true);
  await Promise.resolve();
  assert.ok(conn.hasData());
  const a = conn.takeData(4096)!;
  const b = conn.takeData(4096)!;
  const c = conn.takeData(4096)!;
  assert.deepEqual([a.payload.length, b.payload.length, c.payload.length], [
    4096,
    4096,
    10000 - 8192,
  ]);
  assert.equal(a.op, VSOCK_OP_RW);
  assert.equal(conn.takeData(4096), undefined, "credit is used up");
  assert.ok(!conn.hasData());
  // The guest reads 10000 bytes: its next packet carries fwd_cnt 10000.
  conn.receive(
    header(VSOCK_OP_CREDIT_UPDATE, { bufAlloc: 10000, fwdCnt: 10000 }),
    new Uint8Array(),
  );
  assert.equal(conn.peerCredit, 10000);
  const rest: Uint8Array[] = [];
  for (let p = conn.takeData(65536); p; p = conn.takeData(65536)) {
    rest.push(p.payload.slice());
    conn.receive(
      header(VSOCK_OP_CREDIT_UPDATE, {
        bufAlloc: 10000,
        fwdCnt: 10000 + rest.reduce((n, x) => n + x.length, 0),
      }),
      new Uint8Array(),
    );
  }
  assert.equal(rest.reduce((n, x) => n + x.length, 0), 25000 - 10000);
  await write;
  assert.ok(done);
  writer.releaseLock();
  conn.close();
});

Deno.test("StreamConnection: write() resolves only after all its bytes are taken", async () => {
  const conn = accepted({ peerCredit: { bufAlloc: 100, fwdCnt: 0 } });
  const writer = conn.writable.getWriter();
  let done = false;
  const write = writer.write(bytes(150)).then(() => done = true);
  await Promise.resolve();
  conn.takeData(4096);
  await new Promise((r) => setTimeout(r, 1));
  assert.ok(!done);
  conn.receive(
    header(VSOCK_OP_CREDIT_UPDATE, { bufAlloc: 100, fwdCnt: 100 }),
    new Uint8Array(),
  );
  assert.equal(conn.takeData(4096)?.payload.length, 50);
  await write;
  conn.close();
});

Deno.test("StreamConnection closing the writable sends SHUTDOWN SEND after the data", async () => {
  const conn = accepted();
  const writer = conn.writable.getWriter();
  void writer.write(bytes(10));
  const closing = writer.close();
  await Promise.resolve();
  assert.ok(conn.hasData());
  // Control goes first in general, but SHUTDOWN SEND waits for the data.
  assert.equal(conn.takeControl(), undefined);
  assert.equal(conn.takeData(4096)?.payload.length, 10);
  await new Promise((r) => setTimeout(r, 0));
  const shutdown = conn.takeControl();
  assert.equal(shutdown?.op, VSOCK_OP_SHUTDOWN);
  assert.equal(shutdown?.flags, VSOCK_SHUTDOWN_SEND);
  await closing;
  assert.equal(conn.state, "established", "the guest may still send");
  conn.receive(
    header(VSOCK_OP_SHUTDOWN, { flags: VSOCK_SHUTDOWN_SEND }),
    new Uint8Array(),
  );
  assert.equal(conn.state, "closing");
  assert.deepEqual(drainControl(conn), [VSOCK_OP_RST]);
  assert.equal(conn.state, "closed");
  await conn.closed;
  const r = await conn.readable.getReader().read();
  assert.ok(r.done);
});

Deno.test("StreamConnection ends the readable at the guest's SHUTDOWN SEND, after its data", async () => {
  const conn = accepted();
  rw(conn, bytes(1000));
  conn.receive(
    header(VSOCK_OP_SHUTDOWN, { flags: VSOCK_SHUTDOWN_SEND }),
    new Uint8Array(),
  );
  assert.equal(conn.state, "established");
  const got = await new Response(conn.readable).arrayBuffer();
  assert.deepEqual(new Uint8Array(got), bytes(1000));
  // Sending data after SHUTDOWN SEND breaks the protocol.
  assert.equal(rw(conn, bytes(1)), "protocol-error");
});

Deno.test("StreamConnection: the guest's close (SHUTDOWN both) ends it with RST", async () => {
  const conn = accepted();
  const writer = conn.writable.getWriter();
  conn.receive(
    header(VSOCK_OP_SHUTDOWN, { flags: VSOCK_SHUTDOWN_BOTH }),
    new Uint8Array(),
  );
  assert.equal(conn.state, "closing");
  assert.deepEqual(drainControl(conn), [VSOCK_OP_RST]);
  await assert.rejects(writer.write(bytes(1)), /shut down its receive side/);
  assert.ok((await conn.readable.getReader().read()).done);
  await conn.closed;
});

Deno.test("StreamConnection close() resets at once and frees what was buffered", async () => {
  const conn = accepted();
  rw(conn, bytes(100000));
  const writer = conn.writable.getWriter();
  const pending = writer.write(bytes(10)).catch((e) => e);
  await Promise.resolve();
  conn.close();
  assert.equal(conn.bufferedBytes, 0);
  assert.deepEqual(drainControl(conn), [VSOCK_OP_RST]);
  assert.match(String(await pending), /it was closed/);
  await assert.rejects(conn.readable.getReader().read(), /it was closed/);
  await conn.closed;
});

Deno.test("StreamConnection: RST from the guest ends both directions", async () => {
  const conn = accepted();
  rw(conn, bytes(10));
  const writer = conn.writable.getWriter();
  conn.receive(header(VSOCK_OP_RST), new Uint8Array());
  assert.equal(conn.state, "closed");
  assert.equal(conn.takeControl(), undefined, "no RST answers an RST");
  await assert.rejects(writer.write(bytes(1)), /reset by the guest/);
  const reader = conn.readable.getReader();
  assert.equal((await reader.read()).value?.length, 10);
  await assert.rejects(reader.read(), /reset by the guest/);
});

Deno.test("StreamConnection: RST after the guest's SHUTDOWN SEND reads as the end", async () => {
  const conn = accepted();
  rw(conn, bytes(10));
  conn.receive(
    header(VSOCK_OP_SHUTDOWN, { flags: VSOCK_SHUTDOWN_SEND }),
    new Uint8Array(),
  );
  conn.receive(header(VSOCK_OP_RST), new Uint8Array());
  const got = await new Response(conn.readable).arrayBuffer();
  assert.equal(got.byteLength, 10);
});

Deno.test("StreamConnection coalesces tiny packets and keeps the byte order", async () => {
  const conn = accepted();
  const n = 20000;
  for (let i = 0; i < n; i++) rw(conn, Uint8Array.of(i & 0xff));
  rw(conn, bytes(4000, 7));
  for (let i = 0; i < 100; i++) rw(conn, Uint8Array.of(i));
  assert.equal(conn.bufferedBytes, n + 4000 + 100);
  conn.receive(
    header(VSOCK_OP_SHUTDOWN, { flags: VSOCK_SHUTDOWN_SEND }),
    new Uint8Array(),
  );
  const got = new Uint8Array(await new Response(conn.readable).arrayBuffer());
  assert.equal(got.length, n + 4100);
  for (let i = 0; i < n; i++) assert.equal(got[i], i & 0xff);
  assert.deepEqual(got.subarray(n, n + 4000), bytes(4000, 7));
  for (let i = 0; i < 100; i++) assert.equal(got[n + 4000 + i], i);
});

Deno.test("StreamConnection readable works with a BYOB reader", async () => {
  const conn = accepted();
  rw(conn, bytes(1000));
  const reader = conn.readable.getReader({ mode: "byob" });
  const r1 = await reader.read(new Uint8Array(300));
  assert.deepEqual(r1.value, bytes(1000).subarray(0, 300));
  assert.equal(conn.fwdCnt, 300);
  const r2 = await reader.read(new Uint8Array(4096));
  assert.equal(r2.value?.length, 700);
  const pending = reader.read(new Uint8Array(10));
  conn.receive(
    header(VSOCK_OP_SHUTDOWN, { flags: VSOCK_SHUTDOWN_SEND }),
    new Uint8Array(),
  );
  assert.ok((await pending).done);
});

Deno.test("StreamConnection: cancelling the readable sends SHUTDOWN RCV and returns credit", async () => {
  const conn = accepted();
  rw(conn, bytes(5000));
  await conn.readable.cancel();
  const p = conn.takeControl();
  assert.equal(p?.op, VSOCK_OP_SHUTDOWN);
  assert.equal(p?.flags, VSOCK_SHUTDOWN_RCV);
  assert.equal(conn.fwdCnt, 5000);
  assert.equal(rw(conn, bytes(100)), "ok"); // in flight: dropped, credited
  assert.equal(conn.fwdCnt, 5100);
  assert.equal(conn.bufferedBytes, 0);
  conn.close();
});

Deno.test("StreamConnection: aborting the writable resets, even with a write waiting for credit", async () => {
  const conn = accepted({ peerCredit: { bufAlloc: 0, fwdCnt: 0 } });
  const writer = conn.writable.getWriter();
  const stuck = writer.write(bytes(10)).catch((e) => e);
  await Promise.resolve();
  await writer.abort(new Error("Cannot send: gave up"));
  assert.equal(conn.state, "closing");
  assert.deepEqual(drainControl(conn), [VSOCK_OP_RST]);
  assert.match(String(await stuck), /gave up/);
});

Deno.test("StreamConnection rejects REQUEST and RESPONSE on an open connection", () => {
  const a = accepted();
  assert.equal(
    a.receive(header(VSOCK_OP_REQUEST), new Uint8Array()),
    "protocol-error",
  );
  assert.deepEqual(drainControl(a), [VSOCK_OP_RST]);
  const b = accepted();
  assert.equal(
    b.receive(header(VSOCK_OP_RESPONSE), new Uint8Array()),
    "protocol-error",
  );
  const c = accepted();
  assert.equal(c.receive(header(99), new Uint8Array()), "ignored");
  assert.equal(c.state, "established");
  b.close();
  c.close();
});

Deno.test("StreamConnection abort() errors both streams with the reason, no RST", async () => {
  const conn = accepted();
  rw(conn, bytes(10));
  const reason = new Error("Cannot use vsock: the VM stopped");
  conn.abort(reason);
  assert.equal(conn.state, "closed");
  assert.equal(conn.takeControl(), undefined);
  await assert.rejects(conn.readable.getReader().read(), reason);
  await assert.rejects(conn.writable.getWriter().write(bytes(1)), reason);
});

Deno.test("StreamConnection credit arithmetic wraps at 2^32", () => {
  const conn = accepted({ peerCredit: { bufAlloc: 1000, fwdCnt: 0xffffff00 } });
  // tx_cnt 0 - fwd_cnt 0xffffff00 wraps to 256 "in flight": a hostile
  // guest's counter can only lower its own credit.
  assert.equal(conn.peerCredit, 744);
  conn.receive(
    header(VSOCK_OP_CREDIT_UPDATE, { bufAlloc: 1000, fwdCnt: 0 }),
    new Uint8Array(),
  );
  assert.equal(conn.peerCredit, 1000);
  conn.close();
});
