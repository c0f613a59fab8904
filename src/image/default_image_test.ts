import assert from "node:assert/strict";
import { join } from "node:path";
import { need } from "../../tests/_gate.ts";
import type { LayerEntry } from "../vfs/layer.ts";
import { BlobStore } from "./blob_store.ts";
import { buildBusyboxImage, findStaticBusybox } from "./default_image.ts";
import { tryEnsureTools, withTempDir } from "./image_test_util.ts";
import { readLayer } from "./layer.ts";
import { sha256Digest } from "./oci.ts";
import { type ImageProgress, ImageStore } from "./store.ts";

async function haveBusybox(t: Deno.TestContext): Promise<boolean> {
  await tryEnsureTools({ busybox: "busybox-static" });
  return need(
    t,
    findStaticBusybox() !== undefined,
    "no static busybox (Debian's busybox-static) on this host",
  );
}

Deno.test("buildBusyboxImage() makes a real OCI image of the host's static busybox", async (t) => {
  if (!await haveBusybox(t)) return;
  await withTempDir(async (dir) => {
    const store = new BlobStore(dir);
    const built = await buildBusyboxImage(store);
    const layer = built.manifest.layers[0]!;
    assert.equal(
      layer.mediaType,
      "application/vnd.oci.image.layer.v1.tar",
    );
    // Real digests: every blob's file hashes to its name.
    for (const d of [built.manifest.config, layer]) {
      const data = await Deno.readFile(store.path(d.digest));
      assert.equal(await sha256Digest(data), d.digest);
      assert.equal(data.length, d.size);
    }
    const tar = await Deno.readFile(store.path(layer.digest));
    assert.equal(await sha256Digest(tar), built.config.rootfs.diff_ids[0]);
    assert.deepEqual(built.config.config, {
      Env: [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      ],
      Cmd: ["sh"],
    });

    const entries = new Map<string, LayerEntry>();
    for await (const e of readLayer(tar, layer.mediaType)) {
      entries.set(e.path, e);
    }
    const busybox = entries.get("bin/busybox")!;
    assert.equal(busybox.type, "file");
    assert.equal(busybox.mode, 0o755);
    assert.deepEqual(busybox.data, await Deno.readFile(built.busybox));
    for (const applet of ["sh", "ls", "cat", "id", "mount"]) {
      const e = entries.get(`bin/${applet}`);
      assert.deepEqual(
        [e?.type, e?.linkTarget],
        ["symlink", "busybox"],
        applet,
      );
    }
    const passwd = new TextDecoder().decode(entries.get("etc/passwd")!.data);
    assert.match(passwd, /^root:x:0:0:root:\/root:\/bin\/sh$/m);
    assert.match(passwd, /^nobody:x:65534:65534:/m);
    const group = new TextDecoder().decode(entries.get("etc/group")!.data);
    assert.match(group, /^root:x:0:$/m);
    assert.match(group, /^nobody:x:65534:$/m);
    assert.equal(entries.get("tmp")!.mode, 0o1777);
    assert.equal(entries.get("root")!.mode, 0o700);
    for (const d of ["home", "proc", "sys", "dev", "etc", "usr/bin"]) {
      assert.equal(entries.get(d)?.type, "directory", d);
    }
    // The same busybox gives the same image.
    const again = await buildBusyboxImage(new BlobStore(join(dir, "again")));
    assert.equal(again.stored.digest, built.stored.digest);
  });
});

Deno.test('ImageStore.resolve("busybox") builds the default image when the registry cannot be reached, and says so', async (t) => {
  if (!await haveBusybox(t)) return;
  await withTempDir(async (dir) => {
    const store = new ImageStore({ dir });
    const events: ImageProgress[] = [];
    const asked: string[] = [];
    const offline = (registry: string) => {
      asked.push(registry);
      return Promise.resolve(false);
    };
    const image = await store.resolve("busybox", {
      reachable: offline,
      onProgress: (e) => events.push(e),
    });
    assert.equal(image.source, "built");
    assert.deepEqual(asked, ["docker.io"]);
    const said = events.flatMap((e) => e.kind === "status" ? [e.message] : []);
    assert.ok(
      said.some((m) =>
        /busybox is not cached and docker.io cannot be reached: building it from the host's static busybox/
          .test(m)
      ),
      said.join("\n"),
    );
    assert.deepEqual(image.config.config?.Cmd, ["sh"]);
    const paths: string[] = [];
    for await (const e of image.layers[0]!.entries()) paths.push(e.path);
    assert.ok(paths.includes("bin/sh"));

    // Cached now: no reachability check, no build.
    asked.length = 0;
    const cached = await store.resolve("busybox:latest", {
      reachable: offline,
    });
    assert.equal(cached.source, "cache");
    assert.equal(cached.digest, image.digest);
    assert.deepEqual(asked, []);
    const listed = await store.list();
    assert.deepEqual(listed.map((i) => [i.name, i.digest]), [[
      "busybox",
      image.digest,
    ]]);
    assert.equal(listed[0]!.builtFrom, findStaticBusybox());
    // An explicit pull while offline keeps the cached image.
    const pulled = await store.resolve("busybox", {
      reachable: offline,
      pull: "always",
    });
    assert.equal(pulled.source, "cache");
    // Other names get no fallback.
    await assert.rejects(
      store.resolve("alpine", { reachable: offline, pull: "never" }),
      /Cannot find alpine \(linux\/.*\) in the image cache/,
    );
    // Prune keeps what the index names and drops the rest.
    const stray = await store.blobs.putBytes(new TextEncoder().encode("stray"));
    const pruned = await store.prune();
    assert.deepEqual(pruned, { removed: 1, bytes: 5 });
    assert.equal(await store.blobs.has(stray.digest), false);
    assert.equal(
      (await store.resolve("busybox", { reachable: offline })).source,
      "cache",
    );
  });
});

Deno.test("registryReachable() answers within about 3 s for an unreachable registry", async () => {
  const { registryReachable } = await import("./registry.ts");
  const t0 = performance.now();
  // A loopback port nobody listens on: refused at once.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  assert.equal(await registryReachable(`127.0.0.1:${port}`), false);
  // Docker Hub: unreachable on these machines, reachable elsewhere; either
  // way the answer comes within the probe's limit.
  await registryReachable("docker.io");
  assert.ok(performance.now() - t0 < 4000, `${performance.now() - t0} ms`);
});
