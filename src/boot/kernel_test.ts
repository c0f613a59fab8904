import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import {
  bzImageVersion,
  ensureKernel,
  type EnsureKernelOptions,
  isKernelImage,
} from "./kernel.ts";
import { indexModules, resolveModules } from "./modules.ts";
import { gzip, withTempDir } from "../../tests/_util.ts";
import {
  signedIndex,
  type TestApk,
  testApk,
  testSigningKey,
} from "./_alpine_test_util.ts";

const encoder = new TextEncoder();

/** A 1 KiB stand-in for a bzImage: "HdrS" and a kernel_version string. */
function fakeBzImage(version: string): Uint8Array {
  const image = new Uint8Array(0x400);
  image.set(encoder.encode("HdrS"), 0x202);
  image.set([0x00, 0x01], 0x20e); // string at 0x100 + 0x200
  image.set(encoder.encode(`${version} (test@initx) #1 SMP\0`), 0x300);
  return image;
}

/** The mirror's signing key, trusted through `alpineKeys`. */
const KEY = testSigningKey("test@initx-1.rsa.pub");
const TEST_KEYS = { [KEY.name]: KEY.publicPem };

/** Builds a linux-virt .apk like Alpine's, signed by KEY, and its index record. */
async function fakeApk(version: string, release: string): Promise<TestApk> {
  return await testApk({
    name: "linux-virt",
    version,
    key: KEY,
    files: {
      "boot": "dir",
      "boot/vmlinuz-virt": fakeBzImage(release),
      "boot/config-virt": encoder.encode("CONFIG_VIRTIO_MMIO=y\n"),
      "lib/modules/": "dir",
      [`lib/modules/${release}/kernel/fs/fuse/fuse.ko.gz`]: await gzip(
        encoder.encode("not really ELF"),
      ),
      [`lib/modules/${release}/modules.builtin`]: encoder.encode(""),
    },
  });
}

/**
 * Serves a fake Alpine mirror on 127.0.0.1 with an index signed by KEY;
 * counts requests per path. `serve` may change the .apk it sends.
 */
async function fakeMirror(
  version: string,
  release: string,
  options: { serve?: (apk: Uint8Array) => Uint8Array } = {},
) {
  const { apk, record } = await fakeApk(version, release);
  const index = await signedIndex(
    `C:Q1abc=\nP:linux-lts\nV:6.12.1-r0\n\n${record}`,
    KEY,
  );
  const served = options.serve?.(apk) ?? apk;
  const hits = new Map<string, number>();
  const base = "/alpine/latest-stable/main/x86_64";
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (request) => {
      const path = new URL(request.url).pathname;
      hits.set(path, (hits.get(path) ?? 0) + 1);
      if (path === `${base}/APKINDEX.tar.gz`) return new Response(index);
      if (path === `${base}/linux-virt-${version}.apk`) {
        return new Response(served as Uint8Array<ArrayBuffer>);
      }
      return new Response("not found", { status: 404 });
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}/alpine`,
    hits: (file: string) => hits.get(`${base}/${file}`) ?? 0,
    close: () => server.shutdown(),
  };
}

/** The names in `dir`, sorted (empty when it does not exist). */
async function namesIn(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.name);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return names.sort();
}

Deno.test("isKernelImage() and bzImageVersion() read the setup header", () => {
  const image = fakeBzImage("6.6.1-0-virt");
  ok(isKernelImage(image, "x86_64"));
  ok(!isKernelImage(image, "aarch64"));
  ok(!isKernelImage(new Uint8Array(0x400), "x86_64"));
  equal(bzImageVersion(image), "6.6.1-0-virt");
  equal(bzImageVersion(new Uint8Array(16)), undefined);
  const arm = new Uint8Array(0x40);
  arm.set(encoder.encode("ARM\x64"), 0x38);
  ok(isKernelImage(arm, "aarch64"));
});

Deno.test("ensureKernel() finds config and modules next to an explicit kernel", async () => {
  await withTempDir(async (dir) => {
    const release = "6.6.1-0-virt";
    await Deno.mkdir(join(dir, "boot"));
    await Deno.mkdir(join(dir, "lib/modules", release, "kernel"), {
      recursive: true,
    });
    await Deno.writeFile(join(dir, "boot/vmlinuz-virt"), fakeBzImage(release));
    await Deno.writeTextFile(join(dir, "boot/config-virt"), "CONFIG_X=y\n");
    const found = await ensureKernel({
      kernel: join(dir, "boot/vmlinuz-virt"),
    });
    deepEqual(found, {
      image: join(dir, "boot/vmlinuz-virt"),
      config: join(dir, "boot/config-virt"),
      modules: join(dir, "lib/modules", release),
      version: release,
      arch: "x86_64",
      source: "path",
      package: undefined,
    });
    // `modules` may name the root above lib/modules, or the version dir.
    for (const modules of [dir, join(dir, "lib/modules", release)]) {
      const info = await ensureKernel({
        kernel: join(dir, "boot/vmlinuz-virt"),
        modules,
      });
      equal(info.modules, join(dir, "lib/modules", release));
    }
    await rejects(
      ensureKernel({ kernel: join(dir, "boot/vmlinuz-virt"), modules: "/" }),
      /Cannot use modules '\/': no lib\/modules\/<version> directory there/,
    );
    await rejects(
      ensureKernel({ kernel: join(dir, "boot/config-virt") }),
      /Cannot use kernel '.*config-virt': not a bzImage \(no 'HdrS' magic at offset 0x202\)/,
    );
    await rejects(
      ensureKernel({ kernel: join(dir, "missing") }),
      /Cannot use kernel '.*missing': /,
    );
  });
});

Deno.test("ensureKernel() fetches Alpine linux-virt from a mirror and caches it", async () => {
  const mirror = await fakeMirror("6.6.1-r0", "6.6.1-0-virt");
  try {
    await withTempDir(async (cacheDir) => {
      const messages: string[] = [];
      const options: EnsureKernelOptions = {
        source: "alpine",
        alpineMirror: mirror.url + "/",
        alpineKeys: TEST_KEYS,
        arch: "x86_64",
        cacheDir,
        onProgress: (m) => messages.push(m),
      };
      const info = await ensureKernel(options);
      const entry = join(
        cacheDir,
        "kernels/alpine/linux-virt_6.6.1-r0_x86_64",
      );
      deepEqual(info, {
        image: join(entry, "boot/vmlinuz-virt"),
        config: join(entry, "boot/config-virt"),
        modules: join(entry, "lib/modules/6.6.1-0-virt"),
        version: "6.6.1-0-virt",
        arch: "x86_64",
        source: "alpine",
        package: "linux-virt_6.6.1-r0_x86_64",
      });
      ok(
        messages.some((m) =>
          m.startsWith("fetching kernel linux-virt-6.6.1-r0.apk")
        ),
      );
      deepEqual([...(await indexModules(info.modules!)).keys()], ["fuse"]);
      // no signature or metadata files, no temp dirs left behind
      deepEqual(await namesIn(entry), ["boot", "kernel.json", "lib"]);
      deepEqual(await namesIn(join(cacheDir, "kernels")), ["alpine"]);
      equal(mirror.hits("APKINDEX.tar.gz"), 1);
      equal(mirror.hits("linux-virt-6.6.1-r0.apk"), 1);

      // Reuse within a day: no requests at all.
      deepEqual(await ensureKernel(options), info);
      equal(mirror.hits("APKINDEX.tar.gz"), 1);

      // refresh: asks the index again, reuses the entry.
      deepEqual(await ensureKernel({ ...options, refresh: true }), info);
      equal(mirror.hits("APKINDEX.tar.gz"), 2);
      equal(mirror.hits("linux-virt-6.6.1-r0.apk"), 1);

      // A damaged entry is fetched again.
      await Deno.writeFile(info.image, new Uint8Array(16));
      deepEqual(await ensureKernel({ ...options, refresh: true }), info);
      equal(mirror.hits("linux-virt-6.6.1-r0.apk"), 2);
      ok(messages.some((m) => m.includes("is damaged, fetching it again")));

      // Mirror unreachable: the cached kernel is used.
      await mirror.close();
      messages.length = 0;
      deepEqual(await ensureKernel({ ...options, refresh: true }), info);
      ok(messages.some((m) => m.startsWith("cannot reach ")), `${messages}`);
    });
  } finally {
    await mirror.close();
  }
});

Deno.test("ensureKernel() reports Alpine download failures clearly", async () => {
  const mirror = await fakeMirror("6.6.1-r0", "6.6.1-0-virt");
  try {
    await withTempDir(async (cacheDir) => {
      await rejects(
        ensureKernel({
          source: "alpine",
          alpineMirror: mirror.url,
          alpineBranch: "v0.0",
          alpineKeys: TEST_KEYS,
          arch: "x86_64",
          cacheDir,
          onProgress: () => {},
        }),
        /Cannot download the Alpine package index from http:\/\/127\.0\.0\.1:\d+\/alpine\/v0\.0\/main\/x86_64\/APKINDEX\.tar\.gz: HTTP 404/,
      );
    });
  } finally {
    await mirror.close();
  }
});

Deno.test("ensureKernel() refuses an Alpine package that does not match the signed index, and caches nothing", async () => {
  // The mirror flips one byte of the kernel package's data member.
  const mirror = await fakeMirror("6.6.1-r0", "6.6.1-0-virt", {
    serve: (apk) => {
      const bad = apk.slice();
      bad[bad.length - 20] = bad[bad.length - 20]! ^ 0xff;
      return bad;
    },
  });
  try {
    await withTempDir(async (cacheDir) => {
      await rejects(
        ensureKernel({
          source: "alpine",
          alpineMirror: mirror.url,
          alpineKeys: TEST_KEYS,
          arch: "x86_64",
          cacheDir,
          onProgress: () => {},
        }),
        /^Error: Cannot verify package linux-virt-6\.6\.1-r0\.apk: its data has SHA-256 [0-9a-f]{64}, its signed control says [0-9a-f]{64}$/,
      );
      equal(mirror.hits("linux-virt-6.6.1-r0.apk"), 1);
      // No entry, no pointer to one, no temp dir left behind.
      deepEqual(await namesIn(join(cacheDir, "kernels")), []);
    });
  } finally {
    await mirror.close();
  }
});

Deno.test("ensureKernel() refuses an Alpine index that no trusted key signed, even with a cached kernel", async () => {
  const mirror = await fakeMirror("6.6.1-r0", "6.6.1-0-virt");
  try {
    await withTempDir(async (cacheDir) => {
      const options: EnsureKernelOptions = {
        source: "alpine",
        alpineMirror: mirror.url,
        arch: "x86_64",
        cacheDir,
        onProgress: () => {},
      };
      // Alpine's own keys (the default) did not sign the test mirror.
      await rejects(
        ensureKernel(options),
        new RegExp(
          `^Error: Cannot verify the Alpine package index ${mirror.url}/latest-stable/main/x86_64/APKINDEX\\.tar\\.gz: it is not signed by a trusted key \\(signed by: test@initx-1\\.rsa\\.pub\\)$`,
        ),
      );
      equal(mirror.hits("linux-virt-6.6.1-r0.apk"), 0);
      // A kernel cached from a trusted index is no way around it.
      await ensureKernel({ ...options, alpineKeys: TEST_KEYS });
      await rejects(
        ensureKernel({ ...options, refresh: true }),
        /it is not signed by a trusted key/,
      );
    });
  } finally {
    await mirror.close();
  }
});

Deno.test("ensureKernel() says what to do when apt-get is missing", async () => {
  const path = Deno.env.get("PATH") ?? "";
  Deno.env.set("PATH", "/nonexistent");
  try {
    await withTempDir(async (cacheDir) => {
      await rejects(
        ensureKernel({ source: "debian", cacheDir, onProgress: () => {} }),
        {
          message:
            "Cannot fetch the default kernel: apt-get is not available on this host; pass --kernel PATH or set INITX_KERNEL_SOURCE=alpine",
        },
      );
    });
  } finally {
    Deno.env.set("PATH", path);
  }
  await rejects(
    ensureKernel({ source: "gentoo" as "debian", cacheDir: "/nonexistent" }),
    /Cannot fetch a kernel: unknown source 'gentoo'/,
  );
});

async function haveApt(): Promise<boolean> {
  try {
    await new Deno.Command("apt-get", { args: ["--version"], stdout: "null" })
      .output();
    return true;
  } catch {
    console.warn("SKIPPED: Debian kernel provisioning needs apt-get");
    return false;
  }
}

Deno.test("ensureKernel() provisions Debian's cloud kernel with apt-get", async () => {
  if (!(await haveApt())) return;
  await withTempDir(async (cacheDir) => {
    const messages: string[] = [];
    const options: EnsureKernelOptions = {
      source: "debian",
      cacheDir,
      onProgress: (m) => messages.push(m),
    };
    const info = await ensureKernel(options);
    equal(info.source, "debian");
    match(info.package ?? "", /^linux-image-\d.*-cloud-(amd64|arm64)_/);
    match(info.image, /\/boot\/vmlinuz-/);
    ok(info.config?.includes("/boot/config-"));
    ok(info.image.startsWith(join(cacheDir, "kernels/debian/")));
    ok(messages.some((m) => m.startsWith("fetching kernel linux-image-")));
    const head = await Deno.readFile(info.image);
    ok(isKernelImage(head, info.arch));
    if (info.arch === "x86_64") equal(bzImageVersion(head), info.version);

    const order = (await resolveModules(info.modules!, [
      "virtio_mmio",
      "vmw_vsock_virtio_transport",
      "virtiofs",
      "kvm_amd",
    ])).map((m) => m.name);
    ok(order.indexOf("virtio_ring") < order.indexOf("virtio_mmio"), `${order}`);
    ok(order.indexOf("vsock") < order.indexOf("vmw_vsock_virtio_transport"));
    ok(order.indexOf("kvm") < order.indexOf("kvm_amd"), `${order}`);

    messages.length = 0;
    deepEqual(await ensureKernel(options), info);
    deepEqual(await ensureKernel({ ...options, refresh: true }), info);
    deepEqual(messages, [], "reuse must not fetch again");
  });
});
