/** The protocol's layouts, byte by byte, and the checks of each decoder. */

import { deepEqual, equal, throws } from "node:assert/strict";
import { compile, ProgramBuilder } from "../ir/mod.ts";
import { ProtocolError } from "./errors.ts";
import {
  decodeFrameHeader,
  decodeHello,
  decodeReply,
  decodeRequestHeader,
  decodeStreamHello,
  encodeFrame,
  encodeHello,
  encodeReply,
  encodeRequest,
  encodeRequestHeader,
  encodeRequestParts,
  encodeStreamHello,
  FrameType,
  Limits,
  Magic,
  type RequestHeader,
} from "./protocol.ts";

const HEADER: RequestHeader = {
  id: 7,
  outputFlags: 5,
  stdinMode: 1,
  clockSeconds: 1_700_000_000,
  clockNanoseconds: 123_000_000,
  codeSize: 4096,
  relocationCount: 3,
  bssSize: 64,
  entryOffset: 16,
};

const u32 = (bytes: Uint8Array, at: number) =>
  new DataView(bytes.buffer, bytes.byteOffset).getUint32(at, true);

Deno.test("Magic values spell their names in little-endian ASCII", () => {
  const names = {
    HELLO: "HELO",
    REQUEST: "PRGM",
    REPLY: "DONE",
    STDIN: "SDIN",
    OUTPUT: "SOUT",
  };
  for (const [key, name] of Object.entries(names)) {
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(
      0,
      Magic[key as keyof typeof Magic],
      true,
    );
    equal(new TextDecoder().decode(bytes), name);
  }
});

Deno.test("encodeHello() and decodeHello() agree and check each field", () => {
  const bytes = encodeHello({ version: 1, arch: "aarch64" });
  deepEqual([...bytes], [
    ...[0x48, 0x45, 0x4c, 0x4f],
    ...[1, 0, 0, 0],
    ...[2, 0, 0, 0],
    ...[0, 0, 0, 0],
  ]);
  deepEqual(decodeHello(bytes), { version: 1, arch: "aarch64" });
  const spoil = (at: number, value: number) => {
    const b = bytes.slice();
    new DataView(b.buffer).setUint32(at, value, true);
    return b;
  };
  throws(() => decodeHello(bytes.subarray(0, 15)), ProtocolError);
  throws(() => decodeHello(spoil(0, 1)), {
    name: "ProtocolError",
    message: "Cannot decode the hello: bad magic 0x1, expected 0x4f4c4548",
  });
  throws(() => decodeHello(spoil(4, 2)), /version 2 is not supported/);
  throws(() => decodeHello(spoil(8, 3)), /architecture code 3 is unknown/);
});

Deno.test("encodeRequestHeader() lays out the 48 bytes decodeRequestHeader() reads", () => {
  const bytes = encodeRequestHeader(HEADER);
  equal(bytes.length, Limits.REQUEST_HEADER_SIZE);
  const v = new DataView(bytes.buffer);
  deepEqual(
    [0, 4, 8, 12, 24, 28, 32, 36, 40, 44].map((at) => v.getUint32(at, true)),
    [Magic.REQUEST, 7, 5, 1, 123_000_000, 4096, 3, 64, 16, 0],
  );
  equal(v.getBigUint64(16, true), 1_700_000_000n);
  deepEqual(decodeRequestHeader(bytes), HEADER);
});

Deno.test("decodeRequestHeader() and encodeRequestHeader() reject what the init rejects", () => {
  const bad: [Partial<RequestHeader>, RegExp][] = [
    [{ id: 0 }, /program id 0 is reserved/],
    [{ outputFlags: 8 }, /unknown bits/],
    [{ stdinMode: 2 }, /stdin mode 2 is unknown/],
    [{ clockNanoseconds: 1e9 }, /not below 10\^9/],
    [{ codeSize: 0 }, /code size 0/],
    [{ codeSize: Limits.MAX_CODE_SIZE + 1 }, /code size/],
    [{ relocationCount: 513 }, /513 relocations do not fit/],
    [{ entryOffset: 4096 }, /entry offset 4096 is outside/],
  ];
  for (const [change, message] of bad) {
    const header = { ...HEADER, ...change };
    throws(() => encodeRequestHeader(header), RangeError);
    const bytes = encodeRequestHeader(HEADER);
    const v = new DataView(bytes.buffer);
    v.setUint32(4, header.id, true);
    v.setUint32(8, header.outputFlags, true);
    v.setUint32(12, header.stdinMode, true);
    v.setUint32(24, header.clockNanoseconds, true);
    v.setUint32(28, header.codeSize, true);
    v.setUint32(32, header.relocationCount, true);
    v.setUint32(40, header.entryOffset, true);
    throws(() => decodeRequestHeader(bytes), (e: unknown) => {
      equal((e as Error).name, "ProtocolError");
      return message.test((e as Error).message);
    });
  }
  throws(() => encodeRequestHeader({ ...HEADER, id: 2 ** 32 }), RangeError);
  throws(
    () => encodeRequestHeader({ ...HEADER, clockSeconds: -1 }),
    RangeError,
  );
  const bytes = encodeRequestHeader(HEADER);
  bytes[0] = 0;
  throws(() => decodeRequestHeader(bytes), /bad magic/);
});

Deno.test("encodeRequest() sends the header, the code, then the relocations", () => {
  const p = new ProgramBuilder();
  const words = p.pointers([p.string("a"), p.string("b")]);
  const g = p.global(24);
  p.method("main", (m) => {
    const t = m.var("t", { init: words });
    m.set(m.var("g", { init: g }), t);
    m.return(0);
  });
  const program = compile(p.build(), { arch: "x86_64" });
  equal(program.relocations.length, 2);
  const clock = new Date(1_700_000_000_250);
  const bytes = encodeRequest(program, { id: 3, outputFlags: 1, clock });
  const header = decodeRequestHeader(
    bytes.subarray(0, Limits.REQUEST_HEADER_SIZE),
  );
  deepEqual(header, {
    id: 3,
    outputFlags: 1,
    stdinMode: 0,
    clockSeconds: 1_700_000_000,
    clockNanoseconds: 250_000_000,
    codeSize: program.code.length,
    relocationCount: 2,
    bssSize: program.bssSize,
    entryOffset: program.entryOffset,
  });
  const codeEnd = Limits.REQUEST_HEADER_SIZE + program.code.length;
  deepEqual(bytes.subarray(Limits.REQUEST_HEADER_SIZE, codeEnd), program.code);
  deepEqual(
    [u32(bytes, codeEnd), u32(bytes, codeEnd + 4)],
    program.relocations,
  );
  equal(bytes.length, codeEnd + 8);
  const [head, code, table] = encodeRequestParts(program, { id: 3 });
  equal(head.length, Limits.REQUEST_HEADER_SIZE);
  equal(code, program.code);
  equal(table.length, 8);
  equal(decodeRequestHeader(head).clockSeconds, 0, "no clock: leave it");
  throws(
    () =>
      encodeRequest({ ...program, relocations: [program.code.length - 7] }, {
        id: 1,
      }),
    /relocation at \d+ is outside/,
  );
  throws(
    () => encodeRequest(program, { id: 1, clock: new Date(Number.NaN) }),
    RangeError,
  );
});

Deno.test("encodeReply() and decodeReply() agree; a status above 255 needs a guest error", () => {
  const bytes = encodeReply({ id: 9, status: 137, guestError: 0 });
  deepEqual(
    [0, 4, 8, 12].map((at) => u32(bytes, at)),
    [Magic.REPLY, 9, 137, 0],
  );
  deepEqual(decodeReply(bytes), { id: 9, status: 137, guestError: 0 });
  throws(
    () => decodeReply(encodeReply({ id: 1, status: 256, guestError: 0 })),
    /exit status 256 is above 255/,
  );
  deepEqual(
    decodeReply(encodeReply({ id: 1, status: 999, guestError: 12 })),
    { id: 1, status: 999, guestError: 12 },
  );
  throws(() => decodeReply(new Uint8Array(16)), ProtocolError);
  throws(() => decodeReply(new Uint8Array(17)), /expected 16 bytes, got 17/);
});

Deno.test("encodeStreamHello() and decodeStreamHello() tell the two streams apart", () => {
  for (const kind of ["stdin", "output"] as const) {
    const bytes = encodeStreamHello({ kind, id: 77 });
    equal(u32(bytes, 0), kind === "stdin" ? Magic.STDIN : Magic.OUTPUT);
    deepEqual(decodeStreamHello(bytes), { kind, id: 77 });
  }
  throws(
    () => decodeStreamHello(encodeHello({ version: 1, arch: "x86_64" })),
    /expected 8 bytes/,
  );
  throws(() => decodeStreamHello(new Uint8Array(8)), /bad magic 0x0/);
});

Deno.test("encodeFrame() and decodeFrameHeader() agree and check type and length", () => {
  const frame = encodeFrame(FrameType.STDERR, new Uint8Array([1, 2, 3]));
  deepEqual([...frame], [2, 3, 0, 0, 0, 1, 2, 3]);
  deepEqual(decodeFrameHeader(frame.subarray(0, 5)), { type: 2, length: 3 });
  deepEqual(decodeFrameHeader(encodeFrame(FrameType.END)), {
    type: 0,
    length: 0,
  });
  const header = (type: number, length: number) => {
    const b = new Uint8Array(5);
    b[0] = type;
    new DataView(b.buffer).setUint32(1, length, true);
    return b;
  };
  deepEqual(decodeFrameHeader(header(1, Limits.MAX_FRAME_PAYLOAD)), {
    type: 1,
    length: Limits.MAX_FRAME_PAYLOAD,
  });
  throws(() => decodeFrameHeader(header(3, 0)), /type 3 is unknown/);
  throws(() => decodeFrameHeader(header(0, 1)), /end frame has a 1-byte/);
  throws(
    () => decodeFrameHeader(header(1, Limits.MAX_FRAME_PAYLOAD + 1)),
    /is above 1048576/,
  );
  throws(() => encodeFrame(256), RangeError);
});
