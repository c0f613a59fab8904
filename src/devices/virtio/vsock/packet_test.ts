import assert from "node:assert/strict";
import {
  decodeHeader,
  encodeHeader,
  encodePacket,
  headerProblem,
  isKnownOp,
  MAX_PACKET_PAYLOAD_BYTES,
  opName,
  parsePacket,
  VSOCK_HDR_BYTES,
  VSOCK_OP_CREDIT_REQUEST,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RW,
  type VsockHeader,
} from "./packet.ts";

const sample: VsockHeader = {
  srcCid: 0x0102030405060708n,
  dstCid: 2n,
  srcPort: 0x11223344,
  dstPort: 9998,
  len: 5,
  type: 1,
  op: VSOCK_OP_RW,
  flags: 3,
  bufAlloc: 262144,
  fwdCnt: 0xfffffffe,
};

Deno.test("encodeHeader() lays out struct virtio_vsock_hdr: 44 bytes, packed, little-endian", () => {
  assert.equal(VSOCK_HDR_BYTES, 44);
  const b = encodeHeader(sample);
  assert.equal(b.length, 44);
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  // Offsets from include/uapi/linux/virtio_vsock.h.
  assert.equal(v.getBigUint64(0, true), sample.srcCid);
  assert.equal(v.getBigUint64(8, true), 2n);
  assert.equal(v.getUint32(16, true), 0x11223344);
  assert.equal(v.getUint32(20, true), 9998);
  assert.equal(v.getUint32(24, true), 5);
  assert.equal(v.getUint16(28, true), 1);
  assert.equal(v.getUint16(30, true), VSOCK_OP_RW);
  assert.equal(v.getUint32(32, true), 3);
  assert.equal(v.getUint32(36, true), 262144);
  assert.equal(v.getUint32(40, true), 0xfffffffe);
  assert.equal(b[0], 0x08, "little-endian");
});

Deno.test("decodeHeader() inverts encodeHeader() and refuses short input", () => {
  assert.deepEqual(decodeHeader(encodeHeader(sample)), sample);
  assert.equal(decodeHeader(new Uint8Array(43)), undefined);
  assert.equal(decodeHeader(new Uint8Array(0)), undefined);
  // At an odd offset inside a bigger buffer.
  const big = new Uint8Array(100);
  encodeHeader(sample, big.subarray(7));
  assert.deepEqual(decodeHeader(big.subarray(7)), sample);
});

Deno.test("encodeHeader() truncates to field widths and needs 44 bytes of room", () => {
  const h = decodeHeader(encodeHeader({
    ...sample,
    srcCid: -1n,
    srcPort: 2 ** 32 + 5,
    op: 0x10005,
  }))!;
  assert.equal(h.srcCid, 0xffffffffffffffffn);
  assert.equal(h.srcPort, 5);
  assert.equal(h.op, 5);
  assert.throws(
    () => encodeHeader(sample, new Uint8Array(43)),
    /Cannot encode vsock header: buffer of 43 bytes/,
  );
});

Deno.test("parsePacket() returns the payload and ignores bytes beyond len", () => {
  const bytes = encodePacket(sample, Uint8Array.of(1, 2, 3, 4, 5));
  const withTail = new Uint8Array(bytes.length + 10);
  withTail.set(bytes);
  const p = parsePacket(withTail);
  assert.ok(p.ok);
  assert.deepEqual(p.payload, Uint8Array.of(1, 2, 3, 4, 5));
  assert.equal(p.header.len, 5);
});

Deno.test("parsePacket() names what is wrong with a bad packet", () => {
  assert.deepEqual(parsePacket(new Uint8Array(20)), {
    ok: false,
    problem: "short-header",
  });
  const truncated = parsePacket(encodeHeader({ ...sample, len: 10 }));
  assert.ok(!truncated.ok);
  assert.equal(truncated.problem, "truncated-payload");
  assert.equal(truncated.header?.srcPort, sample.srcPort);
  const huge = parsePacket(encodeHeader({ ...sample, len: 0xffffffff }));
  assert.ok(!huge.ok);
  assert.equal(huge.problem, "payload-too-long");
  assert.equal(
    headerProblem(
      { ...sample, len: MAX_PACKET_PAYLOAD_BYTES },
      MAX_PACKET_PAYLOAD_BYTES,
    ),
    undefined,
  );
  assert.equal(
    headerProblem({ ...sample, len: MAX_PACKET_PAYLOAD_BYTES + 1 }, 1 << 20),
    "payload-too-long",
  );
});

Deno.test("isKnownOp() and opName() cover the seven ops of virtio 1.2 §5.10.6", () => {
  assert.ok(!isKnownOp(0));
  for (let op = VSOCK_OP_REQUEST; op <= VSOCK_OP_CREDIT_REQUEST; op++) {
    assert.ok(isKnownOp(op));
  }
  assert.ok(!isKnownOp(8));
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 42].map(opName),
    [
      "REQUEST",
      "RESPONSE",
      "RST",
      "SHUTDOWN",
      "RW",
      "CREDIT_UPDATE",
      "CREDIT_REQUEST",
      "op 42",
    ],
  );
});
