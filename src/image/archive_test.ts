import assert from "node:assert/strict";
import { join } from "node:path";
import type { LayerEntry } from "../vfs/layer.ts";
import {
  blobsOf,
  bytes,
  makeImage,
  makeIndex,
  namesIn,
  tarOfDir,
  withTempDir,
  writeOciLayout,
} from "./image_test_util.ts";
import { sha256Digest } from "./oci.ts";
import { type Image, ImageStore } from "./store.ts";
import { bytesStream } from "./layer.ts";
import { decodeTar, encodeTar, type TarInput } from "./tar.ts";

const BASE: TarInput[] = [
  { name: "bin/", kind: "directory" },
  { name: "bin/hello", kind: "file", mode: 0o755, data: bytes("#!/bin/sh\n") },
  { name: "etc/", kind: "directory" },
  { name: "etc/motd", kind: "file", data: bytes("base\n") },
];
const TOP: TarInput[] = [
  { name: "etc/.wh.motd", kind: "file" },
  { name: "etc/issue", kind: "file", data: bytes("top\n") },
];
const AMD64 = { os: "linux", architecture: "amd64" };
const ARM64 = { os: "linux", architecture: "arm64", variant: "v8" };

async function allEntries(image: Image): Promise<string[][]> {
  const out: string[][] = [];
  for (const layer of image.layers) {
    const paths: string[] = [];
    for await (const e of layer.entries() as AsyncIterable<LayerEntry>) {
      paths.push(e.path);
    }
    out.push(paths);
  }
  return out;
}

Deno.test("ImageStore.resolve() reads an OCI layout by tag, and by platform through an index", async () => {
  await withTempDir(async (dir) => {
    const amd = await makeImage([BASE, TOP], {
      config: {
        Entrypoint: ["/bin/hello"],
        Cmd: ["x"],
        Env: ["A=1"],
        WorkingDir: "/etc",
        User: "1000:1000",
      },
    });
    const arm = await makeImage([BASE], { platform: ARM64 });
    const index = makeIndex([[amd, AMD64], [arm, ARM64]]);
    const layout = join(dir, "layout");
    await writeOciLayout(layout, [["v1", amd.manifest], ["multi", index]], [
      ...blobsOf(amd),
      ...blobsOf(arm),
      index,
    ]);
    const store = new ImageStore({ dir: join(dir, "cache") });
    const image = await store.resolve(`oci:${layout}:v1`, { platform: AMD64 });
    assert.equal(image.source, "oci");
    assert.equal(image.digest, amd.manifest.descriptor.digest);
    assert.deepEqual(image.config.config, {
      Entrypoint: ["/bin/hello"],
      Cmd: ["x"],
      Env: ["A=1"],
      WorkingDir: "/etc",
      User: "1000:1000",
    });
    assert.deepEqual(await allEntries(image), [
      ["bin", "bin/hello", "etc", "etc/motd"],
      ["etc/.wh.motd", "etc/issue"],
    ]);
    assert.equal(image.layers[1]!.diffId, await sha256Digest(amd.tars[1]!));
    const multi = await store.resolve(`oci:${layout}:multi`, {
      platform: "linux/arm64",
    });
    assert.equal(multi.digest, arm.manifest.descriptor.digest);
    assert.deepEqual(multi.platform, ARM64);
    // The blobs went into the cache, shared: the base layer once.
    const cached = await namesIn(join(dir, "cache", "blobs", "sha256"));
    assert.ok(cached.includes(amd.layers[0]!.descriptor.digest.slice(7)));
    await assert.rejects(
      store.resolve(`oci:${layout}:nope`),
      /Cannot find the image "nope" in the OCI layout .*: it has "v1", "multi"/,
    );
    await assert.rejects(
      store.resolve(`oci:${layout}:multi`, { platform: "linux/s390x" }),
      /Cannot find a manifest for linux\/s390x: the image offers linux\/amd64, linux\/arm64\/v8/,
    );
    await assert.rejects(
      store.resolve(`oci:${layout}:v1`, { platform: "linux/arm64" }),
      /it is for linux\/amd64, not linux\/arm64/,
    );
  });
});

Deno.test("ImageStore.resolve() refuses an OCI layout blob that does not match its digest", async () => {
  await withTempDir(async (dir) => {
    const image = await makeImage([BASE]);
    const layout = join(dir, "layout");
    await writeOciLayout(layout, [["v1", image.manifest]], blobsOf(image));
    const layer = image.layers[0]!.descriptor;
    const path = join(layout, "blobs", "sha256", layer.digest.slice(7));
    const damaged = await Deno.readFile(path);
    damaged[damaged.length - 1] = damaged[damaged.length - 1]! ^ 0xff;
    await Deno.writeFile(path, damaged);
    const cache = join(dir, "cache");
    await assert.rejects(
      new ImageStore({ dir: cache }).resolve(`oci:${layout}:v1`),
      /Cannot import from the OCI layout .*: Cannot store the blob sha256:.*: its content has the digest/,
    );
    assert.ok(
      !(await namesIn(join(cache, "blobs", "sha256"))).includes(
        layer.digest.slice(7),
      ),
    );
    assert.deepEqual(await namesIn(join(cache, "tmp")), []);
  });
});

Deno.test("ImageStore.resolve() reads an OCI archive", async () => {
  await withTempDir(async (dir) => {
    const image = await makeImage([BASE, TOP]);
    const layout = join(dir, "layout");
    await writeOciLayout(layout, [["latest", image.manifest]], blobsOf(image));
    const archive = join(dir, "image.tar");
    await Deno.writeFile(archive, await tarOfDir(layout));
    const store = new ImageStore({ dir: join(dir, "cache") });
    const resolved = await store.resolve(`oci-archive:${archive}`);
    assert.equal(resolved.source, "oci-archive");
    assert.equal(resolved.digest, image.manifest.descriptor.digest);
    assert.deepEqual((await allEntries(resolved))[1], [
      "etc/.wh.motd",
      "etc/issue",
    ]);
  });
});

/** A `docker save` archive (legacy layout: `<id>/layer.tar`, `<hex>.json`). */
async function dockerSave(
  layers: TarInput[][],
  tags: string[],
): Promise<
  { archive: Uint8Array; configDigest: string; layerTars: Uint8Array[] }
> {
  const layerTars = await Promise.all(layers.map((l) => encodeTar(l)));
  const diffIds = await Promise.all(layerTars.map((t) => sha256Digest(t)));
  const config = bytes(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/bin/hello"], Env: ["PATH=/bin"] },
    rootfs: { type: "layers", diff_ids: diffIds },
  }));
  const configDigest = await sha256Digest(config);
  const members: TarInput[] = [];
  const layerNames: string[] = [];
  layerTars.forEach((tar, i) => {
    const id = `${i}`.repeat(64).slice(0, 64);
    members.push({ name: `${id}/`, kind: "directory" });
    members.push({ name: `${id}/layer.tar`, kind: "file", data: tar });
    members.push({ name: `${id}/VERSION`, kind: "file", data: bytes("1.0") });
    layerNames.push(`${id}/layer.tar`);
  });
  members.push({
    name: `${configDigest.slice(7)}.json`,
    kind: "file",
    data: config,
  });
  members.push({
    name: "manifest.json",
    kind: "file",
    data: bytes(JSON.stringify([{
      Config: `${configDigest.slice(7)}.json`,
      RepoTags: tags,
      Layers: layerNames,
    }])),
  });
  return { archive: await encodeTar(members), configDigest, layerTars };
}

Deno.test("ImageStore.resolve() reads a docker save archive", async () => {
  await withTempDir(async (dir) => {
    const saved = await dockerSave([BASE, TOP], ["hello:1"]);
    const path = join(dir, "save.tar");
    await Deno.writeFile(path, saved.archive);
    const store = new ImageStore({ dir: join(dir, "cache") });
    for (
      const ref of [
        `docker-archive:${path}`,
        `docker-archive:${path}:hello:1`,
        `docker-archive:${path}:docker.io/library/hello:1`,
      ]
    ) {
      const image = await store.resolve(ref);
      assert.equal(image.source, "docker-archive");
      assert.equal(image.manifest.config.digest, saved.configDigest);
      assert.deepEqual(image.config.config?.Cmd, ["/bin/hello"]);
      assert.deepEqual(
        image.layers.map((l) => l.descriptor.digest),
        await Promise.all(saved.layerTars.map((t) => sha256Digest(t))),
      );
      assert.deepEqual(await allEntries(image), [
        ["bin", "bin/hello", "etc", "etc/motd"],
        ["etc/.wh.motd", "etc/issue"],
      ]);
    }
    await assert.rejects(
      store.resolve(`docker-archive:${path}:other:2`),
      /Cannot find the image "other:2" in the docker archive .*: it has hello:1/,
    );
  });
});

Deno.test("ImageStore.resolve() refuses a docker save archive whose layer does not match the config", async () => {
  await withTempDir(async (dir) => {
    const saved = await dockerSave([BASE], ["hello:1"]);
    // Swap the layer for another one: same name, other content.
    const other = await dockerSave([TOP], ["hello:1"]);
    const good = await makeArchiveWithLayer(saved, other.layerTars[0]!);
    const path = join(dir, "save.tar");
    await Deno.writeFile(path, good);
    await assert.rejects(
      new ImageStore({ dir: join(dir, "cache") }).resolve(
        `docker-archive:${path}`,
      ),
      /the layer 0+\/layer.tar has the digest sha256:[0-9a-f]+, the config says sha256:/,
    );
  });
});

async function makeArchiveWithLayer(
  saved: { archive: Uint8Array },
  layer: Uint8Array,
): Promise<Uint8Array> {
  const members: TarInput[] = [];
  for await (const m of decodeTar(bytesStream(saved.archive))) {
    const data = new Uint8Array(await new Response(m.body).arrayBuffer());
    members.push({
      name: m.name,
      kind: m.kind,
      data: m.name.endsWith("layer.tar") ? layer : data,
    });
  }
  return await encodeTar(members);
}
