import assert from "node:assert/strict";
import { STATUS_DEVICE_NEEDS_RESET, VIRTIO_ID_FS } from "../device.ts";
import { REG_DEVICE_ID, REG_STATUS } from "../mmio.ts";
import { VIRTQ_DESC_F_NEXT } from "../queue.ts";
import { VirtioTestDriver } from "../_driver_test_util.ts";
import { LayerTree, OverlayFs } from "../../../vfs/mod.ts";
import { FuseOpcode as Op } from "./fuse.ts";
import { FS_HIPRIO_QUEUE, FS_REQUEST_QUEUE, VirtioFs } from "./device.ts";
import {
  cstr,
  fields,
  initRequest,
  joinReply,
  request,
} from "./_fuse_test_util.ts";

const text = (s: string) => new TextEncoder().encode(s);

async function harness() {
  const tree = new LayerTree();
  await tree.applyLayer([{
    path: "big",
    type: "file",
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtimeMs: 0,
    data: new Uint8Array(300_000).map((_, i) => i * 7),
  }]);
  const device = new VirtioFs({
    tag: "rootfs",
    filesystem: new OverlayFs(tree),
    queueSize: 64,
  });
  const driver = new VirtioTestDriver(device, { memoryBytes: 8 * 1024 * 1024 });
  driver.start();
  return { device, driver };
}

function roundTrip(
  driver: VirtioTestDriver,
  req: Uint8Array,
  replyBuffers = [4096],
  indirect = false,
) {
  driver.addBuffers(
    FS_REQUEST_QUEUE,
    [req.subarray(0, 40), req.subarray(40)].filter((b) => b.length > 0),
    replyBuffers,
    { indirect },
  );
  driver.notify(FS_REQUEST_QUEUE);
  const used = driver.usedEntries(FS_REQUEST_QUEUE);
  assert.equal(used.length, 1);
  const usedLen = used[0]!.len;
  if (usedLen === 0) return { usedLen, ...joinReply([new Uint8Array(16)]) };
  return { usedLen, ...joinReply([used[0]!.data!]) };
}

Deno.test("VirtioFs is device 26 with its tag and one request queue in the config space", async () => {
  const { driver } = await harness();
  assert.equal(driver.readRegister(REG_DEVICE_ID), VIRTIO_ID_FS);
  const config = driver.readConfig(0, 40);
  assert.equal(new TextDecoder().decode(config.subarray(0, 6)), "rootfs");
  assert.ok(config.subarray(6, 36).every((b) => b === 0));
  assert.equal(
    new DataView(config.buffer, config.byteOffset).getUint32(36, true),
    1,
  );
  assert.throws(
    () => new VirtioFs({ tag: "", filesystem: new OverlayFs(new LayerTree()) }),
    RangeError,
  );
  assert.throws(
    () =>
      new VirtioFs({
        tag: "x".repeat(37),
        filesystem: new OverlayFs(new LayerTree()),
      }),
    RangeError,
  );
  assert.throws(
    () =>
      new VirtioFs({
        tag: "a",
        filesystem: new OverlayFs(new LayerTree()),
        queueSize: 100,
      }),
    RangeError,
  );
});

Deno.test("VirtioFs answers INIT, LOOKUP and a READ spread over many reply buffers", async () => {
  const { driver } = await harness();
  const init = roundTrip(driver, initRequest());
  assert.equal(init.error, 0);
  assert.equal(init.usedLen, 80);
  assert.equal(init.len, 80);
  const lookup = roundTrip(driver, request(Op.LOOKUP, 1, [cstr("big")]), [
    16,
    128,
  ], true);
  assert.equal(lookup.error, 0);
  const node = Number(lookup.view.getBigUint64(0, true));
  const open = roundTrip(
    driver,
    request(Op.OPEN, node, [fields([4, 0], [4, 0])]),
  );
  const fh = Number(open.view.getBigUint64(0, true));
  const size = 128 * 1024;
  const read = roundTrip(
    driver,
    request(Op.READ, node, [
      fields([8, fh], [8, 1000], [4, size], [4, 0], [8, 0], [4, 0], [4, 0]),
    ]),
    [16, ...Array(32).fill(4096)],
    true,
  );
  assert.equal(read.error, 0);
  assert.equal(read.usedLen, 16 + size);
  assert.equal(read.len, 16 + size);
  for (const i of [0, 1, 4095, 4096, size - 1]) {
    assert.equal(read.body[i], ((1000 + i) * 7) & 0xff, `byte ${i}`);
  }
});

Deno.test("VirtioFs takes FORGET on the high-priority queue without a reply", async () => {
  const { driver } = await harness();
  roundTrip(driver, initRequest());
  driver.addBuffers(
    FS_HIPRIO_QUEUE,
    [request(Op.FORGET, 2, [fields([8, 1])])],
    [],
  );
  driver.notify(FS_HIPRIO_QUEUE);
  const used = driver.usedEntries(FS_HIPRIO_QUEUE);
  assert.equal(used.length, 1);
  assert.equal(used[0]!.len, 0);
});

Deno.test("VirtioFs answers a garbage request with an error and a bad chain with DEVICE_NEEDS_RESET", async () => {
  const { driver } = await harness();
  roundTrip(driver, initRequest());
  const garbage = roundTrip(
    driver,
    text("not a fuse request at all, just text..."),
  );
  assert.equal(garbage.error, -22);
  const tiny = roundTrip(driver, request(Op.LOOKUP, 1, [cstr("big")]), [8]);
  assert.equal(tiny.usedLen, 0, "no room even for a header: nothing written");
  // A descriptor that loops back on itself.
  driver.writeDescriptor(FS_REQUEST_QUEUE, 5, {
    addr: 0x100000n,
    len: 64,
    flags: VIRTQ_DESC_F_NEXT,
    next: 5,
  });
  driver.publish(FS_REQUEST_QUEUE, 5);
  driver.notify(FS_REQUEST_QUEUE);
  assert.ok(driver.readRegister(REG_STATUS) & STATUS_DEVICE_NEEDS_RESET);
  assert.equal(driver.errors.length, 1);
});
