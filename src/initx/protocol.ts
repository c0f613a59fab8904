/**
 * The program protocol between the host and the guest's init, version 1:
 * ports, magics, flags and limits, and the encoders and decoders of each
 * message. `docs/protocol.md` is the specification; every layout here is
 * written down there, byte by byte. All integers are little-endian.
 *
 * The guest connects, the host listens: port 9998 carries the hello, then
 * requests (host to guest) and replies (guest to host); port 9999 one
 * program's stdin; port 10001 one program's stdout and stderr as frames.
 *
 * Decoders read data that came from the guest and throw
 * {@link ProtocolError} on anything out of the specification; encoders
 * throw `RangeError` on values the host should never send.
 *
 * ```ts
 * import { decodeHello, encodeHello } from "./protocol.ts";
 * const hello = decodeHello(encodeHello({ version: 1, arch: "aarch64" }));
 * console.assert(hello.arch === "aarch64");
 * ```
 *
 * @module
 */

import type { CompiledProgram } from "../ir/mod.ts";
import { ProtocolError } from "./errors.ts";

// ---- constants (docs/protocol.md) ----

/**
 * The protocol version the hello carries.
 *
 * @example
 * ```ts
 * import { PROTOCOL_VERSION } from "./protocol.ts";
 * console.assert(PROTOCOL_VERSION === 1);
 * ```
 */
export const PROTOCOL_VERSION = 1;

/**
 * The vsock ports the host listens on.
 *
 * @example
 * ```ts
 * import { Port } from "./protocol.ts";
 * console.assert(Port.CONTROL === 9998);
 * ```
 */
export const Port = {
  /** Hello, requests and replies. */
  CONTROL: 9998,
  /** One program's stdin, host to guest. */
  STDIN: 9999,
  /** One program's stdout and stderr, framed, guest to host. */
  OUTPUT: 10001,
} as const;

/**
 * Context IDs (`include/uapi/linux/vm_sockets.h`: `VMADDR_CID_HOST` is 2).
 *
 * @example
 * ```ts
 * import { Cid } from "./protocol.ts";
 * console.assert(Cid.HOST === 2);
 * ```
 */
export const Cid = {
  /** The host. */
  HOST: 2,
  /** The guest. */
  GUEST: 3,
} as const;

/**
 * The magic that opens each message, four ASCII letters read as a
 * little-endian u32.
 *
 * @example
 * ```ts
 * import { Magic } from "./protocol.ts";
 * console.assert(Magic.HELLO === 0x4f4c4548); // "HELO"
 * ```
 */
export const Magic = {
  /** `"HELO"`: the guest's hello. */
  HELLO: 0x4f4c4548,
  /** `"PRGM"`: a request. */
  REQUEST: 0x4d475250,
  /** `"DONE"`: a reply. */
  REPLY: 0x454e4f44,
  /** `"SDIN"`: the start of a stdin connection. */
  STDIN: 0x4e494453,
  /** `"SOUT"`: the start of an output connection. */
  OUTPUT: 0x54554f53,
} as const;

/**
 * Bits of a request's output flags.
 *
 * @example
 * ```ts
 * import { OutputFlag } from "./protocol.ts";
 * const flags = OutputFlag.STDOUT | OutputFlag.COMBINE;
 * console.assert(flags === 5);
 * ```
 */
export const OutputFlag = {
  /** Stream the program's stdout (frames of type 1). */
  STDOUT: 1,
  /** Stream the program's stderr (frames of type 2). */
  STDERR: 2,
  /** Make fd 2 the same as fd 1; bit 1 is then ignored. */
  COMBINE: 4,
} as const;

/** Every output flag bit version 1 defines. */
const OUTPUT_FLAGS_MASK = 7;

/**
 * A request's stdin modes.
 *
 * @example
 * ```ts
 * import { StdinMode } from "./protocol.ts";
 * console.assert(StdinMode.STREAMED === 1);
 * ```
 */
export const StdinMode = {
  /** fd 0 is `/dev/null`. */
  NONE: 0,
  /** fd 0 is a connection to port 9999. */
  STREAMED: 1,
} as const;

/**
 * Output frame types.
 *
 * @example
 * ```ts
 * import { FrameType } from "./protocol.ts";
 * console.assert(FrameType.STDERR === 2);
 * ```
 */
export const FrameType = {
  /** End of the output stream; no payload. */
  END: 0,
  /** Bytes the program wrote to fd 1. */
  STDOUT: 1,
  /** Bytes the program wrote to fd 2. */
  STDERR: 2,
} as const;

/**
 * Architecture codes of the hello.
 *
 * @example
 * ```ts
 * import { ArchCode } from "./protocol.ts";
 * console.assert(ArchCode.aarch64 === 2);
 * ```
 */
export const ArchCode = {
  /** x86_64. */
  x86_64: 1,
  /** aarch64. */
  aarch64: 2,
} as const;

/**
 * Message sizes and limits, in bytes.
 *
 * @example
 * ```ts
 * import { Limits } from "./protocol.ts";
 * console.assert(Limits.REQUEST_HEADER_SIZE === 48);
 * ```
 */
export const Limits = {
  /** The hello. */
  HELLO_SIZE: 16,
  /** A request's header (code and relocations follow). */
  REQUEST_HEADER_SIZE: 48,
  /** A reply. */
  REPLY_SIZE: 16,
  /** What a stdin or output connection starts with. */
  STREAM_HELLO_SIZE: 8,
  /** An output frame's header (type u8, length u32). */
  FRAME_HEADER_SIZE: 5,
  /** The largest program code. */
  MAX_CODE_SIZE: 64 * 1024 * 1024,
  /** The largest output frame payload. */
  MAX_FRAME_PAYLOAD: 1024 * 1024,
  /** What the init reads from a pipe at once, so the largest payload it sends. */
  GUEST_READ_SIZE: 64 * 1024,
} as const;

const U32_MAX = 0xffff_ffff;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

function expectSize(bytes: Uint8Array, size: number, what: string): DataView {
  if (bytes.length !== size) {
    throw new ProtocolError(
      `Cannot decode ${what}: expected ${size} bytes, got ${bytes.length}`,
    );
  }
  return view(bytes);
}

function expectMagic(v: DataView, magic: number, what: string): void {
  const got = v.getUint32(0, true);
  if (got !== magic) {
    throw new ProtocolError(
      `Cannot decode ${what}: bad magic ${hex(got)}, expected ${hex(magic)}`,
    );
  }
}

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new RangeError(`Cannot encode ${what}: ${value} is not a u32`);
  }
}

// ---- hello (guest -> host, once) ----

/**
 * The guest's hello.
 *
 * @example
 * ```ts
 * import type { Hello } from "./protocol.ts";
 * const hello: Hello = { version: 1, arch: "x86_64" };
 * ```
 */
export interface Hello {
  /** Protocol version ({@link PROTOCOL_VERSION}). */
  version: number;
  /** The guest's architecture. */
  arch: "x86_64" | "aarch64";
}

/**
 * Encode a hello (the guest's side; for tests and fake guests).
 *
 * @example
 * ```ts
 * import { encodeHello } from "./protocol.ts";
 * console.assert(encodeHello({ version: 1, arch: "x86_64" }).length === 16);
 * ```
 *
 * @param hello The hello.
 * @returns Its 16 bytes.
 */
export function encodeHello(hello: Hello): Uint8Array {
  checkU32(hello.version, "the hello's version");
  const bytes = new Uint8Array(Limits.HELLO_SIZE);
  const v = view(bytes);
  v.setUint32(0, Magic.HELLO, true);
  v.setUint32(4, hello.version, true);
  v.setUint32(8, ArchCode[hello.arch], true);
  return bytes;
}

/**
 * Decode and check the guest's hello: magic, version 1, a known
 * architecture.
 *
 * @example
 * ```ts
 * import { decodeHello, encodeHello } from "./protocol.ts";
 * console.assert(decodeHello(encodeHello({ version: 1, arch: "x86_64" })).version === 1);
 * ```
 *
 * @param bytes The 16 bytes.
 * @returns The hello.
 * @throws {ProtocolError} On a bad size, magic, version or architecture.
 */
export function decodeHello(bytes: Uint8Array): Hello {
  const v = expectSize(bytes, Limits.HELLO_SIZE, "the hello");
  expectMagic(v, Magic.HELLO, "the hello");
  const version = v.getUint32(4, true);
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `Cannot decode the hello: protocol version ${version} is not supported, expected ${PROTOCOL_VERSION}`,
    );
  }
  const code = v.getUint32(8, true);
  const arch = code === ArchCode.x86_64
    ? "x86_64"
    : code === ArchCode.aarch64
    ? "aarch64"
    : undefined;
  if (arch === undefined) {
    throw new ProtocolError(
      `Cannot decode the hello: architecture code ${code} is unknown`,
    );
  }
  return { version, arch };
}

// ---- request (host -> guest) ----

/**
 * A request's header, field by field.
 *
 * @example
 * ```ts
 * import { OutputFlag, type RequestHeader, StdinMode } from "./protocol.ts";
 * const header: RequestHeader = {
 *   id: 1,
 *   outputFlags: OutputFlag.STDOUT,
 *   stdinMode: StdinMode.NONE,
 *   clockSeconds: 0,
 *   clockNanoseconds: 0,
 *   codeSize: 64,
 *   relocationCount: 0,
 *   bssSize: 0,
 *   entryOffset: 0,
 * };
 * ```
 */
export interface RequestHeader {
  /** Program id, 1 and up. */
  id: number;
  /** {@link OutputFlag} bits. */
  outputFlags: number;
  /** A {@link StdinMode}. */
  stdinMode: number;
  /** Seconds since the epoch to set the clock to; 0 leaves it alone. */
  clockSeconds: number;
  /** Nanoseconds part of the clock, below 10^9. */
  clockNanoseconds: number;
  /** Code size in bytes, 1 to {@link Limits.MAX_CODE_SIZE}. */
  codeSize: number;
  /** Number of relocations, at most `codeSize / 8`. */
  relocationCount: number;
  /** Zeroed bytes after the code. */
  bssSize: number;
  /** Entry offset, below `codeSize`. */
  entryOffset: number;
}

/** Why a header is out of the specification, or `undefined`. */
function requestHeaderProblem(h: RequestHeader): string | undefined {
  if (h.id === 0) return "program id 0 is reserved";
  if ((h.outputFlags & ~OUTPUT_FLAGS_MASK) !== 0) {
    return `output flags ${hex(h.outputFlags)} have unknown bits`;
  }
  if (h.stdinMode !== StdinMode.NONE && h.stdinMode !== StdinMode.STREAMED) {
    return `stdin mode ${h.stdinMode} is unknown`;
  }
  if (h.clockNanoseconds >= 1e9) {
    return `clock nanoseconds ${h.clockNanoseconds} are not below 10^9`;
  }
  if (h.codeSize === 0 || h.codeSize > Limits.MAX_CODE_SIZE) {
    return `code size ${h.codeSize} is not 1 to ${Limits.MAX_CODE_SIZE}`;
  }
  if (h.relocationCount > Math.floor(h.codeSize / 8)) {
    return `${h.relocationCount} relocations do not fit ${h.codeSize} bytes of code`;
  }
  if (h.entryOffset >= h.codeSize) {
    return `entry offset ${h.entryOffset} is outside ${h.codeSize} bytes of code`;
  }
  return undefined;
}

/**
 * Encode a request's header.
 *
 * @example
 * ```ts
 * import { encodeRequestHeader } from "./protocol.ts";
 * const bytes = encodeRequestHeader({
 *   id: 1, outputFlags: 0, stdinMode: 0, clockSeconds: 0, clockNanoseconds: 0,
 *   codeSize: 16, relocationCount: 0, bssSize: 0, entryOffset: 0,
 * });
 * console.assert(bytes.length === 48);
 * ```
 *
 * @param header The fields.
 * @returns The 48 bytes.
 * @throws {RangeError} When a field is out of range.
 */
export function encodeRequestHeader(header: RequestHeader): Uint8Array {
  const u32s = [
    "id",
    "outputFlags",
    "stdinMode",
    "clockNanoseconds",
    "codeSize",
    "relocationCount",
    "bssSize",
    "entryOffset",
  ] as const;
  for (const field of u32s) checkU32(header[field], `the request's ${field}`);
  if (!Number.isSafeInteger(header.clockSeconds) || header.clockSeconds < 0) {
    throw new RangeError(
      `Cannot encode the request's clockSeconds: ${header.clockSeconds} is not a non-negative safe integer`,
    );
  }
  const problem = requestHeaderProblem(header);
  if (problem !== undefined) {
    throw new RangeError(`Cannot encode the request: ${problem}`);
  }
  const bytes = new Uint8Array(Limits.REQUEST_HEADER_SIZE);
  const v = view(bytes);
  v.setUint32(0, Magic.REQUEST, true);
  v.setUint32(4, header.id, true);
  v.setUint32(8, header.outputFlags, true);
  v.setUint32(12, header.stdinMode, true);
  v.setBigUint64(16, BigInt(header.clockSeconds), true);
  v.setUint32(24, header.clockNanoseconds, true);
  v.setUint32(28, header.codeSize, true);
  v.setUint32(32, header.relocationCount, true);
  v.setUint32(36, header.bssSize, true);
  v.setUint32(40, header.entryOffset, true);
  return bytes;
}

/**
 * Decode and check a request's header, as the init does (for tests and
 * fake guests).
 *
 * @example
 * ```ts
 * import { decodeRequestHeader, encodeRequestHeader } from "./protocol.ts";
 * const fields = {
 *   id: 9, outputFlags: 3, stdinMode: 1, clockSeconds: 1_700_000_000, clockNanoseconds: 5,
 *   codeSize: 16, relocationCount: 2, bssSize: 8, entryOffset: 4,
 * };
 * console.assert(decodeRequestHeader(encodeRequestHeader(fields)).id === 9);
 * ```
 *
 * @param bytes The 48 bytes.
 * @returns The fields.
 * @throws {ProtocolError} On a bad size, magic or field.
 */
export function decodeRequestHeader(bytes: Uint8Array): RequestHeader {
  const v = expectSize(bytes, Limits.REQUEST_HEADER_SIZE, "the request");
  expectMagic(v, Magic.REQUEST, "the request");
  const seconds = v.getBigUint64(16, true);
  if (seconds > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError(
      `Cannot decode the request: clock seconds ${seconds} are too large`,
    );
  }
  const header: RequestHeader = {
    id: v.getUint32(4, true),
    outputFlags: v.getUint32(8, true),
    stdinMode: v.getUint32(12, true),
    clockSeconds: Number(seconds),
    clockNanoseconds: v.getUint32(24, true),
    codeSize: v.getUint32(28, true),
    relocationCount: v.getUint32(32, true),
    bssSize: v.getUint32(36, true),
    entryOffset: v.getUint32(40, true),
  };
  const problem = requestHeaderProblem(header);
  if (problem !== undefined) {
    throw new ProtocolError(`Cannot decode the request: ${problem}`);
  }
  return header;
}

/**
 * What a request asks for besides the program.
 *
 * @example
 * ```ts
 * import type { RequestOptions } from "./protocol.ts";
 * const options: RequestOptions = { id: 1, outputFlags: 3, stdinMode: 1 };
 * ```
 */
export interface RequestOptions {
  /** Program id, 1 and up. */
  id: number;
  /** {@link OutputFlag} bits (default 0). */
  outputFlags?: number;
  /** A {@link StdinMode} (default none). */
  stdinMode?: number;
  /** The time to set the guest's clock to (default: leave it alone). */
  clock?: Date;
}

/**
 * Encode a request in three parts, so the code is sent without a copy: the
 * header, the code itself, and the relocations.
 *
 * @example
 * ```ts
 * import { compile, ProgramBuilder } from "../ir/mod.ts";
 * import { encodeRequestParts } from "./protocol.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => m.return(7));
 * const program = compile(p.build(), { arch: "aarch64" });
 * const [header, code, relocations] = encodeRequestParts(program, { id: 1 });
 * console.assert(header.length === 48 && code === program.code && relocations.length === 0);
 * ```
 *
 * @param program The compiled program.
 * @param options Id, output flags, stdin mode, clock.
 * @returns Header, code and relocation bytes, to send in this order.
 * @throws {RangeError} When the program or an option is out of range (an
 * empty or too large program, a relocation outside the code).
 */
export function encodeRequestParts(
  program: CompiledProgram,
  options: RequestOptions,
): [header: Uint8Array, code: Uint8Array, relocations: Uint8Array] {
  const { code, relocations } = program;
  const ms = options.clock?.getTime() ?? 0;
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError(
      `Cannot encode the request: the clock ${options.clock} is before the epoch or invalid`,
    );
  }
  const header = encodeRequestHeader({
    id: options.id,
    outputFlags: options.outputFlags ?? 0,
    stdinMode: options.stdinMode ?? StdinMode.NONE,
    clockSeconds: Math.floor(ms / 1000),
    clockNanoseconds: (ms % 1000) * 1_000_000,
    codeSize: code.length,
    relocationCount: relocations.length,
    bssSize: program.bssSize,
    entryOffset: program.entryOffset,
  });
  const table = new Uint8Array(4 * relocations.length);
  const v = view(table);
  relocations.forEach((offset, i) => {
    if (!Number.isInteger(offset) || offset < 0 || offset + 8 > code.length) {
      throw new RangeError(
        `Cannot encode the request: relocation at ${offset} is outside ${code.length} bytes of code`,
      );
    }
    v.setUint32(4 * i, offset, true);
  });
  return [header, code, table];
}

/**
 * Encode a whole request: header, code, relocations.
 *
 * @example
 * ```ts
 * import { compile, ProgramBuilder } from "../ir/mod.ts";
 * import { encodeRequest, Limits } from "./protocol.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => m.return(7));
 * const program = compile(p.build(), { arch: "x86_64" });
 * const bytes = encodeRequest(program, { id: 1 });
 * console.assert(bytes.length === Limits.REQUEST_HEADER_SIZE + program.code.length);
 * ```
 *
 * @param program The compiled program.
 * @param options Id, output flags, stdin mode, clock.
 * @returns The bytes to send on the control connection.
 * @throws {RangeError} As {@link encodeRequestParts}.
 */
export function encodeRequest(
  program: CompiledProgram,
  options: RequestOptions,
): Uint8Array {
  const parts = encodeRequestParts(program, options);
  const bytes = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}

// ---- reply (guest -> host, one per request) ----

/**
 * A reply.
 *
 * @example
 * ```ts
 * import type { Reply } from "./protocol.ts";
 * const reply: Reply = { id: 1, status: 0, guestError: 0 };
 * ```
 */
export interface Reply {
  /** The request's program id. */
  id: number;
  /** Exit status 0..255, or 128 + N for signal N; meaningless on a guest error. */
  status: number;
  /** 0, or the errno of the init's failed step. */
  guestError: number;
}

/**
 * Encode a reply (the guest's side; for tests and fake guests).
 *
 * @example
 * ```ts
 * import { encodeReply } from "./protocol.ts";
 * console.assert(encodeReply({ id: 1, status: 3, guestError: 0 }).length === 16);
 * ```
 *
 * @param reply The reply.
 * @returns Its 16 bytes.
 */
export function encodeReply(reply: Reply): Uint8Array {
  checkU32(reply.id, "the reply's id");
  checkU32(reply.status, "the reply's status");
  checkU32(reply.guestError, "the reply's guest error");
  const bytes = new Uint8Array(Limits.REPLY_SIZE);
  const v = view(bytes);
  v.setUint32(0, Magic.REPLY, true);
  v.setUint32(4, reply.id, true);
  v.setUint32(8, reply.status, true);
  v.setUint32(12, reply.guestError, true);
  return bytes;
}

/**
 * Decode and check a reply: magic, and a status of 0..255 unless a guest
 * error makes it meaningless.
 *
 * @example
 * ```ts
 * import { decodeReply, encodeReply } from "./protocol.ts";
 * console.assert(decodeReply(encodeReply({ id: 4, status: 137, guestError: 0 })).status === 137);
 * ```
 *
 * @param bytes The 16 bytes.
 * @returns The reply.
 * @throws {ProtocolError} On a bad size, magic or status.
 */
export function decodeReply(bytes: Uint8Array): Reply {
  const v = expectSize(bytes, Limits.REPLY_SIZE, "the reply");
  expectMagic(v, Magic.REPLY, "the reply");
  const reply = {
    id: v.getUint32(4, true),
    status: v.getUint32(8, true),
    guestError: v.getUint32(12, true),
  };
  if (reply.guestError === 0 && reply.status > 255) {
    throw new ProtocolError(
      `Cannot decode the reply: exit status ${reply.status} is above 255`,
    );
  }
  return reply;
}

// ---- stream hellos (guest -> host, first on ports 9999 and 10001) ----

/**
 * The start of a stdin or output connection.
 *
 * @example
 * ```ts
 * import type { StreamHello } from "./protocol.ts";
 * const hello: StreamHello = { kind: "output", id: 3 };
 * ```
 */
export interface StreamHello {
  /** Which stream: `"stdin"` (port 9999) or `"output"` (port 10001). */
  kind: "stdin" | "output";
  /** The program id. */
  id: number;
}

/**
 * Encode a stream hello (the guest's side; for tests and fake guests).
 *
 * @example
 * ```ts
 * import { encodeStreamHello } from "./protocol.ts";
 * console.assert(encodeStreamHello({ kind: "stdin", id: 1 }).length === 8);
 * ```
 *
 * @param hello The stream and the program id.
 * @returns Its 8 bytes.
 */
export function encodeStreamHello(hello: StreamHello): Uint8Array {
  checkU32(hello.id, "the stream's program id");
  const bytes = new Uint8Array(Limits.STREAM_HELLO_SIZE);
  const v = view(bytes);
  v.setUint32(0, hello.kind === "stdin" ? Magic.STDIN : Magic.OUTPUT, true);
  v.setUint32(4, hello.id, true);
  return bytes;
}

/**
 * Decode a stream hello; its magic tells the stream.
 *
 * @example
 * ```ts
 * import { decodeStreamHello, encodeStreamHello } from "./protocol.ts";
 * console.assert(decodeStreamHello(encodeStreamHello({ kind: "output", id: 2 })).kind === "output");
 * ```
 *
 * @param bytes The 8 bytes.
 * @returns The stream and the program id.
 * @throws {ProtocolError} On a bad size or magic.
 */
export function decodeStreamHello(bytes: Uint8Array): StreamHello {
  const v = expectSize(bytes, Limits.STREAM_HELLO_SIZE, "the stream hello");
  const magic = v.getUint32(0, true);
  const kind = magic === Magic.STDIN
    ? "stdin"
    : magic === Magic.OUTPUT
    ? "output"
    : undefined;
  if (kind === undefined) {
    throw new ProtocolError(
      `Cannot decode the stream hello: bad magic ${hex(magic)}`,
    );
  }
  return { kind, id: v.getUint32(4, true) };
}

// ---- output frames (guest -> host, port 10001) ----

/**
 * An output frame's header.
 *
 * @example
 * ```ts
 * import { FrameType, type FrameHeader } from "./protocol.ts";
 * const header: FrameHeader = { type: FrameType.STDOUT, length: 5 };
 * ```
 */
export interface FrameHeader {
  /** A {@link FrameType}. */
  type: number;
  /** Payload length, at most {@link Limits.MAX_FRAME_PAYLOAD}; 0 for the end frame. */
  length: number;
}

/**
 * Encode a frame (the guest's side; for tests and fake guests).
 *
 * @example
 * ```ts
 * import { encodeFrame, FrameType } from "./protocol.ts";
 * const frame = encodeFrame(FrameType.STDOUT, new TextEncoder().encode("hi"));
 * console.assert(frame.length === 7);
 * ```
 *
 * @param type A {@link FrameType}.
 * @param payload The payload (empty for the end frame).
 * @returns Header and payload.
 */
export function encodeFrame(
  type: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  if (!Number.isInteger(type) || type < 0 || type > 255) {
    throw new RangeError(`Cannot encode a frame: type ${type} is not a u8`);
  }
  const bytes = new Uint8Array(Limits.FRAME_HEADER_SIZE + payload.length);
  bytes[0] = type;
  view(bytes).setUint32(1, payload.length, true);
  bytes.set(payload, Limits.FRAME_HEADER_SIZE);
  return bytes;
}

/**
 * Decode and check an output frame's header: a known type, a payload of at
 * most {@link Limits.MAX_FRAME_PAYLOAD} bytes, none for the end frame.
 *
 * @example
 * ```ts
 * import { decodeFrameHeader } from "./protocol.ts";
 * const header = decodeFrameHeader(new Uint8Array([2, 3, 0, 0, 0]));
 * console.assert(header.type === 2 && header.length === 3);
 * ```
 *
 * @param bytes The 5 bytes.
 * @returns Type and payload length.
 * @throws {ProtocolError} On a bad size, type or length.
 */
export function decodeFrameHeader(bytes: Uint8Array): FrameHeader {
  const v = expectSize(bytes, Limits.FRAME_HEADER_SIZE, "an output frame");
  const type = v.getUint8(0);
  const length = v.getUint32(1, true);
  if (type > FrameType.STDERR) {
    throw new ProtocolError(
      `Cannot decode an output frame: type ${type} is unknown`,
    );
  }
  if (type === FrameType.END && length !== 0) {
    throw new ProtocolError(
      `Cannot decode an output frame: the end frame has a ${length}-byte payload`,
    );
  }
  if (length > Limits.MAX_FRAME_PAYLOAD) {
    throw new ProtocolError(
      `Cannot decode an output frame: payload of ${length} bytes is above ${Limits.MAX_FRAME_PAYLOAD}`,
    );
  }
  return { type, length };
}
