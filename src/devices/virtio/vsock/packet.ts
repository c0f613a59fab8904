/**
 * The virtio-vsock packet header (`struct virtio_vsock_hdr`, 44 bytes,
 * packed, little-endian) and the protocol's numbers, from
 * `include/uapi/linux/virtio_vsock.h` and virtio 1.2 §5.10.6 ("Device
 * Operation"). Decoding never throws on guest bytes: a short header or a
 * length field that lies comes back as a {@link PacketProblem}.
 *
 * Field offsets: src_cid 0 (u64), dst_cid 8 (u64), src_port 16, dst_port 20,
 * len 24 (u32 each), type 28, op 30 (u16 each), flags 32, buf_alloc 36,
 * fwd_cnt 40 (u32 each).
 *
 * @module
 */

// ---- defs (include/uapi/linux/virtio_vsock.h, virtio 1.2 §5.10) ----

/** Size of `struct virtio_vsock_hdr` in bytes. */
export const VSOCK_HDR_BYTES = 44;
/** Well-known CID of the host (virtio 1.2 §5.10.4). */
export const VSOCK_HOST_CID = 2n;
/** The guest CID used when none is given (what QEMU's examples use). */
export const VSOCK_DEFAULT_GUEST_CID = 3n;
/**
 * Largest payload accepted in one packet from the guest, in bytes; Linux
 * never sends more (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`, 64 KiB).
 */
export const MAX_PACKET_PAYLOAD_BYTES = 64 * 1024;
/** Size of `struct virtio_vsock_config` (one le64 `guest_cid`), in bytes. */
export const VSOCK_CONFIG_BYTES = 8;

/** `type`: stream socket (`VIRTIO_VSOCK_TYPE_STREAM`). */
export const VSOCK_TYPE_STREAM = 1;
/** `type`: seqpacket socket (`VIRTIO_VSOCK_TYPE_SEQPACKET`); not offered here. */
export const VSOCK_TYPE_SEQPACKET = 2;

/** `op`: connection request (`VIRTIO_VSOCK_OP_REQUEST`). */
export const VSOCK_OP_REQUEST = 1;
/** `op`: connection accepted (`VIRTIO_VSOCK_OP_RESPONSE`). */
export const VSOCK_OP_RESPONSE = 2;
/** `op`: connection refused or ended (`VIRTIO_VSOCK_OP_RST`). */
export const VSOCK_OP_RST = 3;
/** `op`: one or both directions end; `flags` says which (`VIRTIO_VSOCK_OP_SHUTDOWN`). */
export const VSOCK_OP_SHUTDOWN = 4;
/** `op`: data, `len` payload bytes follow the header (`VIRTIO_VSOCK_OP_RW`). */
export const VSOCK_OP_RW = 5;
/** `op`: the sender's `buf_alloc`/`fwd_cnt` changed (`VIRTIO_VSOCK_OP_CREDIT_UPDATE`). */
export const VSOCK_OP_CREDIT_UPDATE = 6;
/** `op`: asks the peer for a CREDIT_UPDATE (`VIRTIO_VSOCK_OP_CREDIT_REQUEST`). */
export const VSOCK_OP_CREDIT_REQUEST = 7;

/** SHUTDOWN `flags`: the sender will receive no more data (`VIRTIO_VSOCK_SHUTDOWN_RCV`). */
export const VSOCK_SHUTDOWN_RCV = 1;
/** SHUTDOWN `flags`: the sender will send no more data (`VIRTIO_VSOCK_SHUTDOWN_SEND`). */
export const VSOCK_SHUTDOWN_SEND = 2;
/** Both SHUTDOWN flags. */
export const VSOCK_SHUTDOWN_BOTH = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;

/** Event queue: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (never sent by this device). */
export const VSOCK_EVENT_TRANSPORT_RESET = 0;

/** A decoded `struct virtio_vsock_hdr`. Ports and counters are u32, CIDs u64. */
export interface VsockHeader {
  /** Source context ID. */
  srcCid: bigint;
  /** Destination context ID. */
  dstCid: bigint;
  /** Source port. */
  srcPort: number;
  /** Destination port. */
  dstPort: number;
  /** Payload length in bytes (RW only; 0 otherwise). */
  len: number;
  /** Socket type ({@link VSOCK_TYPE_STREAM}). */
  type: number;
  /** Operation ({@link VSOCK_OP_REQUEST} ... {@link VSOCK_OP_CREDIT_REQUEST}). */
  op: number;
  /** SHUTDOWN flags; 0 for other ops. */
  flags: number;
  /** The sender's receive buffer size in bytes. */
  bufAlloc: number;
  /** Bytes the sender's reader has consumed so far (wraps at 2^32). */
  fwdCnt: number;
}

/** Why a packet from the guest cannot be used. */
export type PacketProblem =
  /** Fewer than {@link VSOCK_HDR_BYTES} bytes. */
  | "short-header"
  /** `len` is above {@link MAX_PACKET_PAYLOAD_BYTES}. */
  | "payload-too-long"
  /** `len` says more bytes than the buffer holds after the header. */
  | "truncated-payload";

/** The result of {@link parsePacket}: a closed union on `ok`. */
export type ParsedPacket =
  | {
    /** The packet is usable. */
    ok: true;
    /** Its header. */
    header: VsockHeader;
    /** Exactly `header.len` bytes (a view into the input). */
    payload: Uint8Array;
  }
  | {
    /** The packet is not usable. */
    ok: false;
    /** Why. */
    problem: PacketProblem;
    /** The header when at least 44 bytes were there (to address an RST). */
    header?: VsockHeader;
  };

/**
 * Whether `op` is one of the seven operations of virtio 1.2 §5.10.6.
 *
 * @example
 * ```ts
 * import { isKnownOp } from "./packet.ts";
 * console.assert(isKnownOp(5) && !isKnownOp(0));
 * ```
 */
export function isKnownOp(op: number): boolean {
  return op >= VSOCK_OP_REQUEST && op <= VSOCK_OP_CREDIT_REQUEST;
}

/**
 * Writes `header` into the first 44 bytes of `out` (a new array when
 * omitted) and returns that view. Values are truncated to their field width.
 *
 * @example
 * ```ts
 * import { encodeHeader, VSOCK_OP_REQUEST, VSOCK_TYPE_STREAM } from "./packet.ts";
 * const bytes = encodeHeader({
 *   srcCid: 3n, dstCid: 2n, srcPort: 1024, dstPort: 9998, len: 0,
 *   type: VSOCK_TYPE_STREAM, op: VSOCK_OP_REQUEST, flags: 0,
 *   bufAlloc: 262144, fwdCnt: 0,
 * });
 * console.assert(bytes.length === 44);
 * ```
 */
export function encodeHeader(
  header: VsockHeader,
  out: Uint8Array = new Uint8Array(VSOCK_HDR_BYTES),
): Uint8Array {
  if (out.length < VSOCK_HDR_BYTES) {
    throw new RangeError(
      `Cannot encode vsock header: buffer of ${out.length} bytes is shorter than ${VSOCK_HDR_BYTES}`,
    );
  }
  const v = new DataView(out.buffer, out.byteOffset, VSOCK_HDR_BYTES);
  v.setBigUint64(0, BigInt.asUintN(64, header.srcCid), true);
  v.setBigUint64(8, BigInt.asUintN(64, header.dstCid), true);
  v.setUint32(16, header.srcPort >>> 0, true);
  v.setUint32(20, header.dstPort >>> 0, true);
  v.setUint32(24, header.len >>> 0, true);
  v.setUint16(28, header.type & 0xffff, true);
  v.setUint16(30, header.op & 0xffff, true);
  v.setUint32(32, header.flags >>> 0, true);
  v.setUint32(36, header.bufAlloc >>> 0, true);
  v.setUint32(40, header.fwdCnt >>> 0, true);
  return out.subarray(0, VSOCK_HDR_BYTES);
}

/**
 * Decodes the header in the first 44 bytes of `bytes`, or returns undefined
 * when there are fewer. No field is judged here; see {@link headerProblem}.
 *
 * @example
 * ```ts
 * import { decodeHeader, encodeHeader } from "./packet.ts";
 * const h = { srcCid: 3n, dstCid: 2n, srcPort: 1, dstPort: 2, len: 0,
 *   type: 1, op: 3, flags: 0, bufAlloc: 0, fwdCnt: 0 };
 * console.assert(decodeHeader(encodeHeader(h))?.op === 3);
 * ```
 */
export function decodeHeader(bytes: Uint8Array): VsockHeader | undefined {
  if (bytes.length < VSOCK_HDR_BYTES) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, VSOCK_HDR_BYTES);
  return {
    srcCid: v.getBigUint64(0, true),
    dstCid: v.getBigUint64(8, true),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

/**
 * What is wrong with a decoded header whose packet has `payloadBytes` bytes
 * after the header, or undefined when its length field can be trusted.
 * Bytes beyond `len` are ignored, as Linux's vhost does.
 *
 * @example
 * ```ts
 * import { headerProblem } from "./packet.ts";
 * const h = { srcCid: 3n, dstCid: 2n, srcPort: 1, dstPort: 2, len: 10,
 *   type: 1, op: 5, flags: 0, bufAlloc: 0, fwdCnt: 0 };
 * console.assert(headerProblem(h, 4) === "truncated-payload");
 * ```
 */
export function headerProblem(
  header: VsockHeader,
  payloadBytes: number,
): PacketProblem | undefined {
  if (header.len > MAX_PACKET_PAYLOAD_BYTES) return "payload-too-long";
  if (header.len > payloadBytes) return "truncated-payload";
  return undefined;
}

/**
 * Decodes a whole packet (header, then payload) from one buffer.
 *
 * @example
 * ```ts
 * import { encodePacket, parsePacket, VSOCK_OP_RW } from "./packet.ts";
 * const bytes = encodePacket({ srcCid: 3n, dstCid: 2n, srcPort: 1,
 *   dstPort: 2, type: 1, op: VSOCK_OP_RW, flags: 0, bufAlloc: 0,
 *   fwdCnt: 0 }, new Uint8Array([1, 2, 3]));
 * const p = parsePacket(bytes);
 * console.assert(p.ok && p.payload.length === 3);
 * ```
 */
export function parsePacket(bytes: Uint8Array): ParsedPacket {
  const header = decodeHeader(bytes);
  if (header === undefined) return { ok: false, problem: "short-header" };
  const problem = headerProblem(header, bytes.length - VSOCK_HDR_BYTES);
  if (problem !== undefined) return { ok: false, problem, header };
  const payload = bytes.subarray(
    VSOCK_HDR_BYTES,
    VSOCK_HDR_BYTES + header.len,
  );
  return { ok: true, header, payload };
}

/**
 * Encodes a header (with `len` set from `payload`) followed by `payload`.
 *
 * @example
 * ```ts
 * import { encodePacket } from "./packet.ts";
 * const bytes = encodePacket({ srcCid: 2n, dstCid: 3n, srcPort: 9,
 *   dstPort: 1024, type: 1, op: 5, flags: 0, bufAlloc: 0, fwdCnt: 0 },
 *   new Uint8Array(4));
 * console.assert(bytes.length === 48);
 * ```
 */
export function encodePacket(
  header: Omit<VsockHeader, "len">,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const out = new Uint8Array(VSOCK_HDR_BYTES + payload.length);
  encodeHeader({ ...header, len: payload.length }, out);
  out.set(payload, VSOCK_HDR_BYTES);
  return out;
}

/**
 * The name of an op for messages and logs (`"RW"`, `"op 9"` when unknown).
 *
 * @example
 * ```ts
 * import { opName } from "./packet.ts";
 * console.assert(opName(1) === "REQUEST");
 * ```
 */
export function opName(op: number): string {
  return OP_NAMES[op] ?? `op ${op}`;
}

const OP_NAMES: Record<number, string> = {
  [VSOCK_OP_REQUEST]: "REQUEST",
  [VSOCK_OP_RESPONSE]: "RESPONSE",
  [VSOCK_OP_RST]: "RST",
  [VSOCK_OP_SHUTDOWN]: "SHUTDOWN",
  [VSOCK_OP_RW]: "RW",
  [VSOCK_OP_CREDIT_UPDATE]: "CREDIT_UPDATE",
  [VSOCK_OP_CREDIT_REQUEST]: "CREDIT_REQUEST",
};
