/**
 * Pulls from a real registry: Debian's `docker-registry` (the distribution
 * project's registry) started by the test on loopback, plain and with token
 * auth (a token server of the test's own signs RS256 JWTs with a
 * self-signed certificate made by `openssl`, as the Docker registry token
 * specification describes). Images get there by `skopeo copy` from an OCI
 * layout, or by the registry's push API spoken from the test.
 */

import assert from "node:assert/strict";
import { createSign } from "node:crypto";
import { join } from "node:path";
import { hasTool, needTool } from "../../tests/_gate.ts";
import {
  blobsOf,
  bytes,
  makeImage,
  namesIn,
  type TestImage,
  tryEnsureTools,
  withTempDir,
  writeOciLayout,
} from "./image_test_util.ts";
import { ImageStore } from "./store.ts";
import type { TarInput } from "./tar.ts";

const LAYER: TarInput[] = [
  { name: "bin/", kind: "directory" },
  { name: "bin/tool", kind: "file", mode: 0o755, data: bytes("tool\n") },
  { name: "etc/.wh.old", kind: "file" },
];

/** How long the registry may take to start answering. */
const START_TIMEOUT_MS = 15_000;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

interface RunningRegistry {
  host: string;
  stop(): Promise<void>;
}

async function startRegistry(
  dir: string,
  auth?: { realm: string; certPath: string },
): Promise<RunningRegistry> {
  const port = freePort();
  const config = [
    "version: 0.1",
    "log:",
    "  level: error",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${join(dir, "data")}`,
    "http:",
    `  addr: 127.0.0.1:${port}`,
    ...(auth
      ? [
        "auth:",
        "  token:",
        `    realm: ${auth.realm}`,
        "    service: initx-test",
        "    issuer: initx-test-issuer",
        `    rootcertbundle: ${auth.certPath}`,
      ]
      : []),
    "",
  ].join("\n");
  const configPath = join(dir, "config.yml");
  await Deno.writeTextFile(configPath, config);
  const child = new Deno.Command("docker-registry", {
    args: ["serve", configPath],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log = new Response(child.stderr).text();
  const stop = async () => {
    try {
      Deno.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    await log;
  };
  const host = `127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    try {
      const res = await fetch(`http://${host}/v2/`);
      await res.body?.cancel();
      break;
    } catch {
      if (Date.now() - t0 > START_TIMEOUT_MS) {
        await stop();
        throw new Error(
          `Cannot start docker-registry on ${host}: ${(await log).slice(-500)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { host, stop };
}

/** Pushes an image with the registry's push API (distribution-spec "Push"). */
async function push(
  host: string,
  repo: string,
  tag: string,
  image: TestImage,
  token?: string,
): Promise<void> {
  const headers: Record<string, string> = token
    ? { authorization: `Bearer ${token}` }
    : {};
  for (const b of [image.config, ...image.layers]) {
    const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, {
      method: "POST",
      headers,
    });
    await start.body?.cancel();
    assert.equal(start.status, 202, `upload start: ${start.status}`);
    const location = new URL(start.headers.get("location")!, `http://${host}`);
    location.searchParams.set("digest", b.descriptor.digest);
    const put = await fetch(location, {
      method: "PUT",
      headers: { ...headers, "content-type": "application/octet-stream" },
      body: b.data as Uint8Array<ArrayBuffer>,
    });
    await put.body?.cancel();
    assert.equal(put.status, 201, `blob upload: ${put.status}`);
  }
  const res = await fetch(`http://${host}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    headers: {
      ...headers,
      "content-type": image.manifest.descriptor.mediaType,
    },
    body: image.manifest.data as Uint8Array<ArrayBuffer>,
  });
  const text = await res.text();
  assert.equal(res.status, 201, `manifest upload: ${res.status} ${text}`);
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")}: exit ${out.code}: ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
}

async function checkPulled(store: ImageStore, ref: string, image: TestImage) {
  const pulled = await store.resolve(ref, { platform: "linux/amd64" });
  assert.equal(pulled.source, "registry");
  assert.deepEqual(
    pulled.layers.map((l) => l.descriptor.digest),
    image.layers.map((l) => l.descriptor.digest),
  );
  assert.deepEqual(pulled.config.config?.Cmd, ["sh"]);
  const paths: string[] = [];
  for (const l of pulled.layers) {
    for await (const e of l.entries()) paths.push(e.path);
  }
  assert.deepEqual(paths, ["bin", "bin/tool", "etc/.wh.old"]);
  return pulled;
}

async function gate(t: Deno.TestContext): Promise<boolean> {
  await tryEnsureTools({
    "docker-registry": "docker-registry",
    skopeo: "skopeo",
  });
  return needTool(t, "docker-registry", "the registry to pull from");
}

Deno.test("ImageStore.resolve() pulls from a real docker-registry (image put there by skopeo and by the push API)", async (t) => {
  if (!await gate(t)) return;
  await withTempDir(async (dir) => {
    const registry = await startRegistry(dir);
    try {
      const image = await makeImage([LAYER]);
      await push(registry.host, "test/pushed", "v1", image);
      const store = new ImageStore({ dir: join(dir, "cache") });
      await checkPulled(store, `${registry.host}/test/pushed:v1`, image);
      if (needTool(t, "skopeo", "copies an OCI layout into the registry")) {
        const other = await makeImage([LAYER, [{
          name: "extra",
          kind: "file",
        }]]);
        const layout = join(dir, "layout");
        await writeOciLayout(layout, [["v2", other.manifest]], blobsOf(other));
        await run("skopeo", [
          "copy",
          "--dest-tls-verify=false",
          `oci:${layout}:v2`,
          `docker://${registry.host}/test/skopeo:v2`,
        ]);
        const pulled = await store.resolve(`${registry.host}/test/skopeo:v2`);
        assert.equal(pulled.layers.length, 2);
        // The shared layer was not downloaded twice: one blob file per digest.
        const names = await namesIn(join(dir, "cache", "blobs", "sha256"));
        assert.equal(new Set(names).size, names.length);
      }
      await assert.rejects(
        store.resolve(`${registry.host}/test/missing:v1`),
        /Cannot find the image 127\.0\.0\.1:\d+\/test\/missing:v1: the registry has no such manifest/,
      );
    } finally {
      await registry.stop();
    }
  });
});

function base64url(data: Uint8Array | string): string {
  const b = typeof data === "string" ? bytes(data) : data;
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A token server (Docker registry token spec) signing with `keyPem`. */
function tokenServer(keyPem: string, certPem: string) {
  const der = certPem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  const requests: { scopes: string[]; auth: string | null }[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => {
      const url = new URL(req.url);
      const auth = req.headers.get("authorization");
      const scopes = url.searchParams.getAll("scope");
      requests.push({ scopes, auth });
      if (auth !== `Basic ${btoa("alice:s3cret")}`) {
        return Response.json({ details: "who are you" }, { status: 401 });
      }
      const now = Math.floor(Date.now() / 1000);
      const access = scopes.map((s) => {
        const [type, ...rest] = s.split(":");
        const actions = rest.pop()!.split(",");
        return { type, name: rest.join(":"), actions };
      });
      const header = { alg: "RS256", typ: "JWT", x5c: [der] };
      const claims = {
        iss: "initx-test-issuer",
        sub: "alice",
        aud: "initx-test",
        exp: now + 300,
        nbf: now - 60,
        iat: now,
        jti: crypto.randomUUID(),
        access,
      };
      const signing = `${base64url(JSON.stringify(header))}.${
        base64url(JSON.stringify(claims))
      }`;
      const signature = createSign("RSA-SHA256").update(signing).sign(keyPem);
      const token = `${signing}.${base64url(new Uint8Array(signature))}`;
      return Response.json({ token, access_token: token, expires_in: 300 });
    },
  );
  return {
    server,
    requests,
    realm: `http://127.0.0.1:${server.addr.port}/token`,
  };
}

Deno.test("ImageStore.resolve() pulls from a real docker-registry with token auth", async (t) => {
  if (!await gate(t)) return;
  if (!needTool(t, "openssl", "makes the token server's certificate")) return;
  await withTempDir(async (dir) => {
    const keyPath = join(dir, "key.pem");
    const certPath = join(dir, "cert.pem");
    await run("openssl", [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=initx-test-token",
      "-keyout",
      keyPath,
      "-out",
      certPath,
    ]);
    const tokens = tokenServer(
      await Deno.readTextFile(keyPath),
      await Deno.readTextFile(certPath),
    );
    let registry: RunningRegistry | undefined;
    try {
      registry = await startRegistry(dir, { realm: tokens.realm, certPath });
      const image = await makeImage([LAYER]);
      // Push with a push token from the same server.
      const tokenRes = await fetch(
        `${tokens.realm}?service=initx-test&scope=repository:secure/app:pull,push`,
        { headers: { authorization: `Basic ${btoa("alice:s3cret")}` } },
      );
      const { token } = await tokenRes.json();
      await push(registry.host, "secure/app", "v1", image, token);
      // Without credentials the token server says no, and initx says so.
      const store = new ImageStore({ dir: join(dir, "cache") });
      await assert.rejects(
        store.resolve(`${registry.host}/secure/app:v1`, {
          registry: { dockerConfigPath: join(dir, "none.json") },
        }),
        /Cannot get a token from http:\/\/127\.0\.0\.1:\d+ for 127\.0\.0\.1:\d+ \(repository:secure\/app:pull\): HTTP 401/,
      );
      const config = join(dir, "docker-config.json");
      await Deno.writeTextFile(
        config,
        JSON.stringify({
          auths: {
            [`http://${registry.host}`]: { auth: btoa("alice:s3cret") },
          },
        }),
      );
      tokens.requests.length = 0;
      const pulled = await store.resolve(`${registry.host}/secure/app:v1`, {
        registry: { dockerConfigPath: config },
      });
      assert.equal(pulled.digest, image.manifest.descriptor.digest);
      assert.deepEqual(tokens.requests.map((r) => r.scopes), [[
        "repository:secure/app:pull",
      ]]);
      if (hasTool("skopeo")) {
        const layout = join(dir, "layout");
        const other = await makeImage([[{ name: "s", kind: "file" }]]);
        await writeOciLayout(layout, [["v2", other.manifest]], blobsOf(other));
        await run("skopeo", [
          "copy",
          "--dest-tls-verify=false",
          "--dest-creds=alice:s3cret",
          `oci:${layout}:v2`,
          `docker://${registry.host}/secure/skopeo:v2`,
        ]);
        const viaSkopeo = await store.resolve(
          `${registry.host}/secure/skopeo:v2`,
          {
            registry: { dockerConfigPath: config },
          },
        );
        assert.equal(viaSkopeo.digest, other.manifest.descriptor.digest);
      }
    } finally {
      await registry?.stop();
      await tokens.server.shutdown();
    }
  });
});
