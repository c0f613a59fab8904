import assert from "node:assert/strict";
import { ImageStore } from "../image/store.ts";
import { cacheCommand, imagesCommand, pullCommand } from "./images.ts";
import { withTempDir } from "../../tests/_util.ts";

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    io: {
      out: (l: string) => void out.push(l),
      err: (l: string) => void err.push(l),
    },
  };
}

Deno.test("initx pull, images and cache prune on a temporary cache", async () => {
  await withTempDir(async (dir) => {
    const images = new ImageStore({ dir });
    const pull = capture();
    assert.equal(
      await pullCommand(["busybox"], { images, offline: true, ...pull.io }),
      0,
      pull.err.join("\n"),
    );
    assert.match(
      pull.out[0]!,
      /^docker\.io\/library\/busybox:latest sha256:[0-9a-f]{64} \(.* built\)$/,
    );
    const list = capture();
    assert.equal(await imagesCommand([], { images, ...list.io }), 0);
    assert.match(list.out[0]!, /^IMAGE\s+PLATFORM\s+SIZE\s+DIGEST/);
    assert.equal(list.out.length, 2);
    assert.match(list.out[1]!, /^busybox\s+linux\/(amd64|arm64)\s+.*sha256:/);
    const prune = capture();
    assert.equal(await cacheCommand(["prune"], { images, ...prune.io }), 0);
    assert.match(prune.out[0]!, /^removed 0 files/);
    const all = capture();
    assert.equal(
      await cacheCommand(["prune", "--all"], { images, ...all.io }),
      0,
    );
    assert.match(all.out[0]!, /^forgot 1 images, removed [1-9]\d* files/);
    const empty = capture();
    assert.equal(await imagesCommand([], { images, ...empty.io }), 0);
    assert.equal(empty.out.length, 1);
  });
});

Deno.test("initx pull refuses what it cannot do, with a clear message", async () => {
  await withTempDir(async (dir) => {
    const images = new ImageStore({ dir });
    const none = capture();
    assert.equal(await pullCommand([], { images, ...none.io }), 2);
    assert.match(none.err[0]!, /one image is needed/);
    const offline = capture();
    assert.equal(
      await pullCommand(["alpine"], { images, offline: true, ...offline.io }),
      1,
    );
    assert.match(offline.err.join("\n"), /alpine/);
    const bad = capture();
    assert.equal(await cacheCommand(["clean"], { images, ...bad.io }), 2);
    assert.match(bad.err[0]!, /Usage: initx cache prune/);
  });
});
