import assert from "node:assert/strict";
import { LayerTree, OverlayFs } from "../../../vfs/mod.ts";
import { VirtioTestDriver } from "../_driver_test_util.ts";
import { FS_REQUEST_QUEUE, VirtioFs } from "./device.ts";
import { FuseOpcode as Op } from "./fuse.ts";
import { FuseServer } from "./server.ts";
import {
  call,
  cstr,
  initRequest,
  joinReply,
  request,
} from "./_fuse_test_util.ts";

/** A small deterministic PRNG (xorshift32), so a failure can be replayed. */
function prng(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  return {
    int: (n: number) => next() % n,
    bytes: (n: number) => Uint8Array.from({ length: n }, () => next() & 0xff),
  };
}

async function filesystem(): Promise<OverlayFs> {
  const tree = new LayerTree();
  const base = { mode: 0o755, uid: 0, gid: 0, mtimeMs: 0 };
  await tree.applyLayer([
    { ...base, path: "d", type: "directory" },
    { ...base, path: "d/f", type: "file", data: new Uint8Array(5000) },
    { ...base, path: "l", type: "symlink", linkTarget: "d/f" },
  ]);
  return new OverlayFs(tree, { maxBytes: 4 * 1024 * 1024 });
}

/** A request with a real header for a random opcode and a random body. */
function randomRequest(r: ReturnType<typeof prng>): Uint8Array {
  const kind = r.int(4);
  if (kind === 0) return r.bytes(r.int(200)); // no structure at all
  const opcodes = Object.values(Op) as number[];
  const opcode = r.int(5) === 0 ? r.int(256) : opcodes[r.int(opcodes.length)]!;
  const nodeid = [0, 1, 2, 3, 4, 5, 1000, 2 ** 40][r.int(8)]!;
  const body = kind === 1
    ? r.bytes(r.int(160))
    : new Uint8Array(72 + r.int(120));
  if (kind === 3) {
    // A plausible name at a random argument offset.
    body.set(cstr(["d", "f", "x", "..", ""][r.int(5)]!), r.int(64));
  }
  const req = request(opcode, nodeid, [body], BigInt(r.int(1000)));
  if (r.int(8) === 0) new DataView(req.buffer).setUint32(0, r.int(400), true);
  return req;
}

Deno.test("FuseServer survives 20,000 random and malformed requests", async () => {
  const errors: unknown[] = [];
  const server = new FuseServer(await filesystem(), {
    onError: (e) => void errors.push(e),
  });
  assert.equal(call(server, initRequest()).error, 0);
  const r = prng(0x1f2e3d4c);
  let succeeded = 0;
  for (let i = 0; i < 20_000; i++) {
    const req = randomRequest(r);
    const capacity = r.int(3) === 0 ? r.int(64) : 8192;
    const pieces = server.handle(req, capacity);
    if (pieces === undefined) continue;
    const reply = joinReply(pieces);
    assert.equal(reply.len, reply.body.length + 16, `request ${i}: len`);
    assert.ok(reply.error <= 0 && reply.error > -4096, `request ${i}: error`);
    assert.ok(reply.len <= Math.max(16, capacity), `request ${i}: fits`);
    if (reply.error === 0) succeeded++;
    if (!server.initialized) call(server, initRequest());
  }
  assert.ok(
    succeeded > 200,
    `${succeeded} requests succeeded: too few reach the filesystem`,
  );
  assert.deepEqual(errors, [], "no filesystem bug surfaced as EIO");
  assert.equal(call(server, request(Op.LOOKUP, 1, [cstr("d")])).error, 0);
});

Deno.test("VirtioFs survives random request bytes in random chains", async () => {
  const device = new VirtioFs({
    tag: "fuzz",
    filesystem: await filesystem(),
    queueSize: 64,
  });
  const driver = new VirtioTestDriver(device, { memoryBytes: 4 * 1024 * 1024 });
  driver.start();
  const r = prng(0xabcdef);
  driver.addBuffers(FS_REQUEST_QUEUE, [initRequest()], [4096]);
  driver.notify(FS_REQUEST_QUEUE);
  driver.usedEntries(FS_REQUEST_QUEUE);
  for (let i = 0; i < 2_000; i++) {
    const req = randomRequest(r);
    const cut = r.int(req.length + 1);
    const readable = [req.subarray(0, cut), req.subarray(cut)].filter((b) =>
      b.length > 0
    );
    if (readable.length === 0) readable.push(Uint8Array.of(0));
    const writable = r.int(4) === 0 ? [] : [1 + r.int(4096)];
    driver.addBuffers(FS_REQUEST_QUEUE, readable, writable, {
      indirect: r.int(2) === 0,
    });
    driver.notify(FS_REQUEST_QUEUE);
    const used = driver.usedEntries(FS_REQUEST_QUEUE);
    assert.equal(used.length, 1, `request ${i}`);
    assert.ok(
      used[0]!.len <= (writable[0] ?? 0),
      `request ${i}: within the buffer`,
    );
  }
  assert.deepEqual(
    driver.errors,
    [],
    "well-formed chains never break the device",
  );
});
