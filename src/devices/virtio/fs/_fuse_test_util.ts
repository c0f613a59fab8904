/**
 * Test helpers: FUSE requests built the way the guest kernel builds them,
 * and replies taken apart.
 *
 * @module
 */

import { FuseOpcode } from "./fuse.ts";
import type { FuseServer } from "./server.ts";

const encoder = new TextEncoder();

/** A NUL-terminated UTF-8 string. */
export function cstr(s: string): Uint8Array {
  return encoder.encode(s + "\0");
}

/** Little-endian fields written in order: [bytes, value] pairs. */
export function fields(...parts: [4 | 8 | 2, number | bigint][]): Uint8Array {
  const size = parts.reduce((n, [w]) => n + w, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const [w, v] of parts) {
    if (w === 8) view.setBigUint64(at, BigInt(v), true);
    else if (w === 4) view.setUint32(at, Number(v) >>> 0, true);
    else view.setUint16(at, Number(v), true);
    at += w;
  }
  return out;
}

/** A request: in_header (len filled in) and the argument bytes. */
export function request(
  opcode: number,
  nodeid: number,
  args: Uint8Array[] = [],
  unique = 1n,
): Uint8Array {
  const len = 40 + args.reduce((n, a) => n + a.length, 0);
  const out = new Uint8Array(len);
  const view = new DataView(out.buffer);
  view.setUint32(0, len, true);
  view.setUint32(4, opcode, true);
  view.setBigUint64(8, unique, true);
  view.setBigUint64(16, BigInt(nodeid), true);
  let at = 40;
  for (const a of args) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

/** The INIT request Linux 6.1 sends (7.37, 64 bytes of fuse_init_in). */
export function initRequest(flags = 0xffffffff): Uint8Array {
  const body = new Uint8Array(64);
  const view = new DataView(body.buffer);
  view.setUint32(0, 7, true);
  view.setUint32(4, 37, true);
  view.setUint32(8, 128 * 1024, true);
  view.setUint32(12, flags, true);
  return request(FuseOpcode.INIT, 0, [body]);
}

/** A reply joined, with its header fields. */
export interface Reply {
  len: number;
  error: number;
  unique: bigint;
  body: Uint8Array;
  view: DataView;
}

/** Joins a server's reply pieces and reads the header. */
export function joinReply(pieces: Uint8Array[]): Reply {
  const total = pieces.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(total);
  let at = 0;
  for (const p of pieces) {
    all.set(p, at);
    at += p.length;
  }
  const view = new DataView(all.buffer);
  const body = all.subarray(16);
  return {
    len: view.getUint32(0, true),
    error: view.getInt32(4, true),
    unique: view.getBigUint64(8, true),
    body,
    view: new DataView(body.buffer, body.byteOffset, body.byteLength),
  };
}

/** Sends a request to `server` with a generous reply buffer. */
export function call(
  server: FuseServer,
  req: Uint8Array,
  capacity = 1 << 21,
): Reply {
  const pieces = server.handle(req, capacity);
  if (pieces === undefined) throw new Error("the request got no reply");
  return joinReply(pieces);
}
