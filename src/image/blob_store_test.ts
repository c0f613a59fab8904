import assert from "node:assert/strict";
import { join } from "node:path";
import { BlobStore } from "./blob_store.ts";
import { bytes, namesIn, withTempDir } from "./image_test_util.ts";
import { sha256Digest } from "./oci.ts";

function streamOf(...chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(c) {
      for (const chunk of chunks) c.enqueue(chunk);
      c.close();
    },
  });
}

async function leftovers(root: string): Promise<string[]> {
  return [
    ...(await namesIn(join(root, "tmp"))).map((n) => `tmp/${n}`),
    ...(await namesIn(join(root, "blobs", "sha256"))).map((n) => `blobs/${n}`),
  ];
}

Deno.test("BlobStore.put() stores a blob under its digest after checking it", async () => {
  await withTempDir(async (root) => {
    const store = new BlobStore(root);
    const data = bytes("hello, blob");
    const digest = await sha256Digest(data);
    const blob = await store.put(
      streamOf(data.subarray(0, 3), data.subarray(3)),
      {
        digest,
        size: data.length,
      },
    );
    assert.deepEqual(blob, { digest, size: data.length });
    assert.deepEqual(
      await Deno.readFile(join(root, "blobs", "sha256", digest.slice(7))),
      data,
    );
    assert.deepEqual(await store.readBytes(digest), data);
    assert.deepEqual(await namesIn(join(root, "tmp")), []);
    // Already there: the stream is cancelled, not read.
    let cancelled = false;
    const again = new ReadableStream<Uint8Array>({
      cancel() {
        cancelled = true;
      },
    });
    await store.put(again, { digest, size: data.length });
    assert.equal(cancelled, true);
  });
});

Deno.test("BlobStore.put() refuses a wrong digest and leaves the cache clean", async () => {
  await withTempDir(async (root) => {
    const store = new BlobStore(root);
    const data = bytes("the real content");
    const lie = await sha256Digest(bytes("something else"));
    await assert.rejects(
      store.put(streamOf(data), { digest: lie, size: data.length }),
      /Cannot store the blob sha256:[0-9a-f]+: its content has the digest sha256:/,
    );
    assert.deepEqual(await leftovers(root), []);
    assert.equal(await store.has(lie), false);
  });
});

Deno.test("BlobStore.put() refuses a truncated or overlong blob and leaves the cache clean", async () => {
  await withTempDir(async (root) => {
    const store = new BlobStore(root);
    const data = bytes("0123456789");
    const digest = await sha256Digest(data);
    await assert.rejects(
      store.put(streamOf(data.subarray(0, 6)), { digest, size: data.length }),
      /got 6 of 10 bytes \(the download was cut short\)/,
    );
    await assert.rejects(
      store.put(streamOf(data, data), { digest, size: data.length }),
      /more than the expected 10 bytes arrived/,
    );
    // A stream that breaks mid-way (a dropped connection).
    let sent = false;
    const broken = new ReadableStream<Uint8Array>({
      pull(c) {
        if (!sent) {
          sent = true;
          c.enqueue(data.subarray(0, 4));
        } else c.error(new Error("connection reset"));
      },
    });
    await assert.rejects(
      store.put(broken, { digest, size: data.length }),
      /connection reset/,
    );
    assert.deepEqual(await leftovers(root), []);
  });
});

Deno.test("BlobStore.open() finds a blob damaged on disk and removes it", async () => {
  await withTempDir(async (root) => {
    const store = new BlobStore(root);
    const { digest } = await store.putBytes(bytes("pristine"));
    await Deno.writeFile(store.path(digest), bytes("tampered"));
    await assert.rejects(
      store.readBytes(digest),
      /Cannot read the blob sha256:[0-9a-f]+ from the cache: its content has the digest .* the damaged blob was removed/,
    );
    assert.equal(await store.has(digest), false);
    await assert.rejects(store.open(digest), /it is not in the cache/);
  });
});

Deno.test("BlobStore.open() streams a blob past wholeReadBytes and checks it at its end", async () => {
  await withTempDir(async (root) => {
    const store = new BlobStore(root, { wholeReadBytes: 4 });
    const { digest } = await store.putBytes(bytes("pristine"));
    assert.deepEqual(await store.readBytes(digest), bytes("pristine"));
    await Deno.writeFile(store.path(digest), bytes("tampered"));
    const stream = await store.open(digest);
    await assert.rejects(
      new Response(stream).arrayBuffer(),
      /Cannot read the blob sha256:[0-9a-f]+ from the cache: its content has the digest .* the damaged blob was removed/,
    );
    assert.equal(await store.has(digest), false);
  });
});

Deno.test("BlobStore.cleanTemp() removes stale partial downloads only", async () => {
  await withTempDir(async (root) => {
    const store = new BlobStore(root);
    await Deno.mkdir(join(root, "tmp"), { recursive: true });
    await Deno.writeFile(join(root, "tmp", "old.partial"), bytes("x"));
    await Deno.utime(join(root, "tmp", "old.partial"), 0, 0);
    await Deno.writeFile(join(root, "tmp", "new.partial"), bytes("y"));
    assert.equal(await store.cleanTemp(), 1);
    assert.deepEqual(await namesIn(join(root, "tmp")), ["new.partial"]);
  });
});

Deno.test("BlobStore.path() refuses digests it cannot verify", () => {
  const store = new BlobStore("/nonexistent");
  assert.throws(() => store.path("md5:abc"), /Cannot use the digest "md5:abc"/);
  assert.throws(
    () => store.path("sha256:../../etc/passwd"),
    /Cannot use the digest/,
  );
});
