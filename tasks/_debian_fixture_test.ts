import { deepEqual, equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { mirrorFromSources, packRootfs } from "./_debian_fixture.ts";
import { ImageStore } from "../src/image/store.ts";
import { MEDIA_TYPES } from "../src/image/oci.ts";
import { decodeTar } from "../src/image/tar.ts";
import type { LayerEntry } from "../src/vfs/layer.ts";
import { openImageFilesystem } from "../src/vfs/image_fs.ts";

Deno.test("mirrorFromSources() finds the suite's deb entry in deb822 and one-line files", () => {
  const deb822 = {
    name: "/etc/apt/sources.list.d/debian.sources",
    text: [
      "Types: deb-src",
      "URIs: http://src.example/debian",
      "Suites: bookworm",
      "",
      "Types: deb",
      "# a comment line",
      "URIs: http://security.example/debian-security",
      "Suites: bookworm-security",
      "",
      "Types: deb",
      "URIs: http://mirror.example/debian http://other.example/debian",
      "Suites: bookworm bookworm-updates",
      "Components: main",
    ].join("\n"),
  };
  equal(
    mirrorFromSources([deb822], "bookworm"),
    "http://mirror.example/debian",
  );
  equal(
    mirrorFromSources([deb822], "bookworm-security"),
    "http://security.example/debian-security",
  );
  const list = {
    name: "/etc/apt/sources.list",
    text: "# deb http://old.example/debian bookworm main\n" +
      "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n",
  };
  equal(
    mirrorFromSources([list, deb822], "bookworm"),
    "http://list.example/debian",
    "the first file that names the suite wins",
  );
  equal(mirrorFromSources([list, deb822], "trixie"), undefined);
  const disabled = {
    name: "/etc/apt/sources.list.d/off.sources",
    text:
      "Types: deb\nURIs: http://off.example/debian\nSuites: trixie\nEnabled: no\n",
  };
  equal(mirrorFromSources([disabled], "trixie"), undefined);
});

async function entriesOf(
  layer: { entries(): AsyncIterable<LayerEntry> },
): Promise<Map<string, LayerEntry>> {
  const out = new Map<string, LayerEntry>();
  for await (const e of layer.entries()) out.set(e.path, e);
  return out;
}

Deno.test("packRootfs() writes an OCI archive that ImageStore resolves and the image filesystem opens", async () => {
  const work = await Deno.makeTempDir({ prefix: "initx-pack-test-" });
  try {
    const root = join(work, "root");
    await Deno.mkdir(join(root, "usr/bin"), { recursive: true });
    await Deno.mkdir(join(root, "tmp"), { mode: 0o1777 });
    await Deno.chmod(join(root, "tmp"), 0o1777);
    await Deno.writeTextFile(join(root, "usr/bin/hello"), "#!/bin/sh\n", {
      mode: 0o755,
    });
    await Deno.chmod(join(root, "usr/bin/hello"), 0o755);
    await Deno.link(join(root, "usr/bin/hello"), join(root, "usr/bin/hi"));
    await Deno.symlink("usr/bin", join(root, "bin"));
    const archive = join(work, "image.tar");

    const packed = await packRootfs(root, archive, {
      name: "v1",
      createdBy: "a test tree",
    });

    // The archive holds exactly the layout, with no temporary left beside it.
    const names: string[] = [];
    const file = await Deno.open(archive);
    for await (const m of decodeTar(file.readable)) {
      names.push(m.name);
      await m.body.cancel();
    }
    deepEqual(
      names.filter((n) => !n.startsWith("blobs/sha256/")),
      ["oci-layout", "index.json", "blobs/"],
    );
    equal(names.length, 4 + 3, "manifest, config and layer blobs");
    deepEqual([...Deno.readDirSync(work)].map((e) => e.name).sort(), [
      "image.tar",
      "root",
    ]);

    const images = new ImageStore({ dir: join(work, "images") });
    const image = await images.resolve(`oci-archive:${archive}:v1`);
    equal(image.digest, packed.manifestDigest);
    equal(image.manifest.layers[0]?.mediaType, MEDIA_TYPES.ociLayerGzip);
    equal(image.manifest.layers[0]?.size, packed.layerSize);
    deepEqual(image.config.rootfs.diff_ids, [packed.diffId]);
    deepEqual(image.config.config?.Cmd, ["bash"]);
    equal(image.config.history?.[0]?.created_by, "a test tree");

    const entries = await entriesOf(image.layers[0]!);
    equal(entries.get("tmp")?.type, "directory");
    equal(entries.get("tmp")?.mode, 0o1777);
    equal(entries.get("usr/bin/hello")?.mode, 0o755);
    equal(entries.get("bin")?.type, "symlink");
    equal(entries.get("bin")?.linkTarget, "usr/bin");
    // One of the two names is the file, the other a hard link to it.
    const kinds = [entries.get("usr/bin/hello"), entries.get("usr/bin/hi")]
      .map((e) => e?.type).sort();
    deepEqual(kinds, ["file", "hardlink"]);

    const fs = await openImageFilesystem(image);
    const usr = fs.lookup(1, "usr");
    const bin = fs.lookup(usr.nodeid, "bin");
    const hello = fs.lookup(bin.nodeid, "hello");
    const hi = fs.lookup(bin.nodeid, "hi");
    equal(hello.attr.size, 10);
    equal(hello.attr.ino, hi.attr.ino, "hard links share one inode");
    equal(hello.attr.nlink, 2);

    // Without a name the one image is taken; a wrong name says what there is.
    equal(
      (await images.resolve(`oci-archive:${archive}`)).digest,
      packed.manifestDigest,
    );
    await rejects(
      images.resolve(`oci-archive:${archive}:v2`),
      /Cannot find the image "v2".*"v1"/,
    );
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("packRootfs() fails on a missing tree and leaves no archive", async () => {
  const work = await Deno.makeTempDir({ prefix: "initx-pack-test-" });
  try {
    const archive = join(work, "image.tar");
    await rejects(
      packRootfs(join(work, "nosuch"), archive),
      /Cannot run "tar --create/,
    );
    deepEqual([...Deno.readDirSync(work)], []);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
