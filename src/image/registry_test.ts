import assert from "node:assert/strict";
import { join } from "node:path";
import {
  blobsOf,
  bytes,
  makeImage,
  makeIndex,
  namesIn,
  type TestBlob,
  withTempDir,
} from "./image_test_util.ts";
import { parseChallenge } from "./registry.ts";
import { type ImageProgress, ImageStore } from "./store.ts";
import type { TarInput } from "./tar.ts";

const LAYER: TarInput[] = [
  { name: "bin/", kind: "directory" },
  {
    name: "bin/app",
    kind: "file",
    mode: 0o755,
    data: bytes("app".repeat(1000)),
  },
];

/** How the fake registry misbehaves. */
type Fault = "none" | "corrupt-blob" | "truncate-blob" | "lying-manifest";

interface FakeRegistry {
  host: string;
  requests: { path: string; auth: string | null }[];
  tokenRequests: { scope: string | null; auth: string | null }[];
  blobRequests: { auth: string | null }[];
  fault: Fault;
  close(): Promise<void>;
}

/**
 * A registry speaking the distribution API on loopback, with bearer-token
 * auth (token server on the same host) or basic auth, and blobs behind a
 * redirect to another origin (as registries redirect to object storage).
 */
function fakeRegistry(
  repo: string,
  tags: Record<string, TestBlob>,
  blobs: TestBlob[],
  auth: "bearer" | "basic",
): FakeRegistry {
  const byDigest = new Map(blobs.map((b) => [b.descriptor.digest, b]));
  const state: FakeRegistry = {
    host: "",
    requests: [],
    tokenRequests: [],
    blobRequests: [],
    fault: "none",
    close: async () => {},
  };
  const storage = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => {
      state.blobRequests.push({ auth: req.headers.get("authorization") });
      const digest = new URL(req.url).pathname.slice(1);
      const b = byDigest.get(digest);
      if (!b) return new Response("no", { status: 404 });
      let data = b.data;
      if (
        state.fault === "corrupt-blob" &&
        b.descriptor.mediaType.includes("layer")
      ) {
        data = data.slice();
        data[data.length - 1] = data[data.length - 1]! ^ 0xff;
      }
      if (
        state.fault === "truncate-blob" &&
        b.descriptor.mediaType.includes("layer")
      ) {
        data = data.subarray(0, data.length - 100);
      }
      return new Response(data as Uint8Array<ArrayBuffer>);
    },
  );
  // "localhost" vs "127.0.0.1": another origin for the redirect.
  const storageUrl = `http://localhost:${storage.addr.port}`;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => {
      const url = new URL(req.url);
      const got = req.headers.get("authorization");
      if (url.pathname === "/token") {
        state.tokenRequests.push({
          scope: url.searchParams.get("scope"),
          auth: got,
        });
        if (got !== `Basic ${btoa("alice:s3cret")}`) {
          return new Response("{}", { status: 401 });
        }
        return Response.json({ token: "T0KEN", expires_in: 300 });
      }
      state.requests.push({ path: url.pathname, auth: got });
      const ok = auth === "bearer"
        ? got === "Bearer T0KEN"
        : got === `Basic ${btoa("alice:s3cret")}`;
      if (!ok) {
        const challenge = auth === "bearer"
          ? `Bearer realm="http://${state.host}/token",service="fake",scope="repository:${repo}:pull"`
          : `Basic realm="fake"`;
        return Response.json(
          {
            errors: [{
              code: "UNAUTHORIZED",
              message: "authentication required",
            }],
          },
          { status: 401, headers: { "www-authenticate": challenge } },
        );
      }
      const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
      if (!m || m[1] !== repo) {
        return Response.json({
          errors: [{ code: "NAME_UNKNOWN", message: "no such repo" }],
        }, {
          status: 404,
        });
      }
      const [, , kind, ref] = m;
      if (kind === "manifests") {
        const b = tags[ref!] ?? byDigest.get(ref!);
        if (!b) {
          return Response.json({
            errors: [{ code: "MANIFEST_UNKNOWN", message: "unknown" }],
          }, {
            status: 404,
          });
        }
        const digest = state.fault === "lying-manifest"
          ? `sha256:${"0".repeat(64)}`
          : b.descriptor.digest;
        return new Response(b.data as Uint8Array<ArrayBuffer>, {
          headers: {
            "content-type": b.descriptor.mediaType,
            "docker-content-digest": digest,
          },
        });
      }
      return new Response(null, {
        status: 307,
        headers: { location: `${storageUrl}/${ref}` },
      });
    },
  );
  state.host = `127.0.0.1:${server.addr.port}`;
  state.close = async () => {
    await server.shutdown();
    await storage.shutdown();
  };
  return state;
}

async function dockerConfig(dir: string, host: string): Promise<string> {
  const path = join(dir, "docker-config.json");
  await Deno.writeTextFile(
    path,
    JSON.stringify({ auths: { [host]: { auth: btoa("alice:s3cret") } } }),
  );
  return path;
}

async function setup(auth: "bearer" | "basic" = "bearer") {
  const amd = await makeImage([LAYER]);
  const arm = await makeImage([LAYER, [{ name: "arm", kind: "file" }]], {
    platform: { os: "linux", architecture: "arm64", variant: "v8" },
  });
  const index = makeIndex([
    [amd, { os: "linux", architecture: "amd64" }],
    [arm, { os: "linux", architecture: "arm64", variant: "v8" }],
  ]);
  const registry = fakeRegistry(
    "team/app",
    { "1.0": index, single: amd.manifest },
    [...blobsOf(amd), ...blobsOf(arm), index],
    auth,
  );
  return { amd, arm, registry };
}

Deno.test("ImageStore.resolve() pulls through the bearer challenge, picks the platform and keeps credentials off redirects", async () => {
  const { arm, registry } = await setup();
  try {
    await withTempDir(async (dir) => {
      const store = new ImageStore({ dir: join(dir, "cache") });
      const events: ImageProgress[] = [];
      const options = {
        platform: "linux/arm64",
        registry: { dockerConfigPath: await dockerConfig(dir, registry.host) },
        onProgress: (e: ImageProgress) => events.push(e),
      };
      const image = await store.resolve(
        `${registry.host}/team/app:1.0`,
        options,
      );
      assert.equal(image.source, "registry");
      assert.equal(image.digest, arm.manifest.descriptor.digest);
      assert.equal(image.layers.length, 2);
      // One token, asked with the Docker config's user and password.
      assert.deepEqual(registry.tokenRequests, [{
        scope: "repository:team/app:pull",
        auth: `Basic ${btoa("alice:s3cret")}`,
      }]);
      // The redirected blob downloads carried no credentials.
      assert.ok(registry.blobRequests.length >= 3);
      assert.ok(registry.blobRequests.every((r) => r.auth === null));
      const done = events.filter((e) => e.kind === "download" && e.done);
      assert.equal(done.length, 3); // config and two layers
      const paths: string[] = [];
      for (const l of image.layers) {
        for await (const e of l.entries()) paths.push(e.path);
      }
      assert.deepEqual(paths, ["bin", "bin/app", "arm"]);
      // Cached: no request at all the second time.
      const before = registry.requests.length;
      const again = await store.resolve(
        `${registry.host}/team/app:1.0`,
        options,
      );
      assert.equal(again.source, "cache");
      assert.equal(registry.requests.length, before);
      // The same layer of another image is not downloaded again.
      const blobsBefore = registry.blobRequests.length;
      const amd = await store.resolve(`${registry.host}/team/app:single`, {
        ...options,
        platform: "linux/amd64",
      });
      assert.equal(
        amd.layers[0]!.descriptor.digest,
        image.layers[0]!.descriptor.digest,
      );
      assert.equal(registry.blobRequests.length, blobsBefore + 1); // its config only
      // By digest.
      const byDigest = await store.resolve(
        `${registry.host}/team/app@${arm.manifest.descriptor.digest}`,
        options,
      );
      assert.equal(byDigest.digest, arm.manifest.descriptor.digest);
    });
  } finally {
    await registry.close();
  }
});

Deno.test("ImageStore.resolve() fails clearly without credentials and for unknown names", async () => {
  const { registry } = await setup();
  try {
    await withTempDir(async (dir) => {
      const store = new ImageStore({ dir });
      await assert.rejects(
        store.resolve(`${registry.host}/team/app:1.0`, {
          registry: { dockerConfigPath: join(dir, "none.json") },
        }),
        /Cannot get a token from http:\/\/127\.0\.0\.1:\d+ for 127\.0\.0\.1:\d+ \(repository:team\/app:pull\): HTTP 401/,
      );
      await assert.rejects(
        store.resolve(`${registry.host}/team/app:nope`, {
          registry: {
            dockerConfigPath: await dockerConfig(dir, registry.host),
          },
        }),
        /Cannot find the image 127\.0\.0\.1:\d+\/team\/app:nope: the registry has no such manifest \(MANIFEST_UNKNOWN: unknown\)/,
      );
    });
  } finally {
    await registry.close();
  }
});

Deno.test("ImageStore.resolve() speaks basic auth", async () => {
  const { amd, registry } = await setup("basic");
  try {
    await withTempDir(async (dir) => {
      const store = new ImageStore({ dir });
      await assert.rejects(
        store.resolve(`${registry.host}/team/app:single`, {
          registry: { dockerConfigPath: join(dir, "none.json") },
        }),
        /it wants a user name and password and the Docker config has none for it \(run "docker login/,
      );
      const image = await store.resolve(`${registry.host}/team/app:single`, {
        registry: { dockerConfigPath: await dockerConfig(dir, registry.host) },
      });
      assert.equal(image.digest, amd.manifest.descriptor.digest);
    });
  } finally {
    await registry.close();
  }
});

for (
  const [fault, label, error] of [
    [
      "corrupt-blob",
      "a corrupt layer",
      /its content has the digest sha256:[0-9a-f]+ \(corrupt download/,
    ],
    [
      "truncate-blob",
      "a truncated layer",
      /got \d+ of \d+ bytes \(the download was cut short\)/,
    ],
    [
      "lying-manifest",
      "a manifest with a wrong digest",
      /Cannot use the manifest of .*: its content has the digest sha256:[0-9a-f]+, not sha256:0+/,
    ],
  ] as const
) {
  Deno.test(`ImageStore.resolve() refuses ${label} and leaves the cache clean`, async () => {
    const { amd, registry } = await setup();
    registry.fault = fault;
    try {
      await withTempDir(async (dir) => {
        const cache = join(dir, "cache");
        const store = new ImageStore({ dir: cache });
        await assert.rejects(
          store.resolve(`${registry.host}/team/app:single`, {
            registry: {
              dockerConfigPath: await dockerConfig(dir, registry.host),
            },
          }),
          error,
        );
        const layer = amd.layers[0]!.descriptor.digest.slice(7);
        assert.ok(
          !(await namesIn(join(cache, "blobs", "sha256"))).includes(layer),
        );
        assert.deepEqual(await namesIn(join(cache, "tmp")), []);
        assert.deepEqual(await store.list(), []);
        // Once the registry behaves, the pull works.
        registry.fault = "none";
        const image = await store.resolve(`${registry.host}/team/app:single`, {
          registry: {
            dockerConfigPath: await dockerConfig(dir, registry.host),
          },
        });
        assert.equal(image.digest, amd.manifest.descriptor.digest);
      });
    } finally {
      await registry.close();
    }
  });
}

Deno.test("parseChallenge() reads quoted parameters with commas", () => {
  assert.deepEqual(
    parseChallenge(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"',
    ),
    {
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:a/b:pull,push",
      },
    },
  );
  assert.deepEqual(parseChallenge('Basic realm="x"'), {
    scheme: "basic",
    params: { realm: "x" },
  });
  assert.equal(parseChallenge(null), undefined);
});
