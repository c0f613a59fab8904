import assert from "node:assert/strict";
import {
  type ImageIndex,
  MEDIA_TYPES,
  parseManifestOrIndex,
  parsePlatform,
  platformMatches,
  selectPlatform,
} from "./oci.ts";

const d = (
  c: string,
  platform: ImageIndex["manifests"][number]["platform"],
) => ({
  mediaType: MEDIA_TYPES.ociManifest,
  digest: `sha256:${c.repeat(64)}`,
  size: 1,
  platform,
});

Deno.test("selectPlatform() picks the host's or the asked platform, never attestations", () => {
  const index: ImageIndex = {
    schemaVersion: 2,
    manifests: [
      d("1", { os: "unknown", architecture: "unknown" }),
      d("2", { os: "linux", architecture: "amd64" }),
      d("3", { os: "linux", architecture: "arm", variant: "v6" }),
      d("4", { os: "linux", architecture: "arm", variant: "v7" }),
      d("5", { os: "linux", architecture: "arm64", variant: "v8" }),
    ],
  };
  assert.equal(
    selectPlatform(index, parsePlatform("linux/amd64")).digest[7],
    "2",
  );
  assert.equal(
    selectPlatform(index, parsePlatform("linux/arm/v7")).digest[7],
    "4",
  );
  assert.equal(
    selectPlatform(index, parsePlatform("linux/arm64")).digest[7],
    "5",
  );
  assert.equal(
    selectPlatform(index, parsePlatform("linux/aarch64")).digest[7],
    "5",
  );
  assert.throws(
    () => selectPlatform(index, parsePlatform("linux/riscv64")),
    /Cannot find a manifest for linux\/riscv64: the image offers linux\/amd64, linux\/arm\/v6, linux\/arm\/v7, linux\/arm64\/v8/,
  );
});

Deno.test("platformMatches() treats a missing arm64 variant as v8", () => {
  assert.ok(
    platformMatches(
      { os: "linux", architecture: "arm64" },
      parsePlatform("linux/arm64/v8"),
    ),
  );
  assert.ok(
    !platformMatches(
      { os: "linux", architecture: "arm64" },
      parsePlatform("linux/arm64/v9"),
    ),
  );
  assert.throws(() => parsePlatform("linux"), /expected OS\/ARCH\[\/VARIANT\]/);
});

Deno.test("parseManifestOrIndex() tells manifests from indexes and refuses schema 1", () => {
  const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
  assert.equal(
    parseManifestOrIndex(
      enc({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.dockerManifestList,
        manifests: [],
      }),
    ).kind,
    "index",
  );
  assert.equal(
    parseManifestOrIndex(enc({ schemaVersion: 2, config: {}, layers: [] }))
      .kind,
    "manifest",
  );
  assert.throws(
    () => parseManifestOrIndex(enc({ schemaVersion: 1 })),
    /schema 1/,
  );
  assert.throws(
    () => parseManifestOrIndex(new TextEncoder().encode("{")),
    /Cannot parse the manifest/,
  );
});
