import assert from "node:assert/strict";
import { join } from "node:path";
import { needTool } from "../../tests/_gate.ts";
import type { LayerEntry } from "../vfs/layer.ts";
import { bytes, gzipBytes, withTempDir } from "./image_test_util.ts";
import {
  bytesStream,
  normalizeLayerPath,
  readLayer,
  sniffCompression,
} from "./layer.ts";
import { encodeTar } from "./tar.ts";

const TAR = "application/vnd.oci.image.layer.v1.tar";
const TGZ = "application/vnd.oci.image.layer.v1.tar+gzip";

/**
 * The entries of a layer, read both ways: whole (the bytes) and streamed.
 * The two must agree entry for entry, or both fail with the same message.
 */
async function entriesOf(
  blob: Uint8Array,
  mediaType = TAR,
): Promise<LayerEntry[]> {
  const read = async (source: Uint8Array | ReadableStream<Uint8Array>) => {
    const out: LayerEntry[] = [];
    for await (const e of readLayer(source, mediaType)) out.push(e);
    return out;
  };
  const [whole, streamed] = await Promise.allSettled([
    read(blob),
    read(bytesStream(blob)),
  ]);
  if (whole.status === "fulfilled" && streamed.status === "fulfilled") {
    assert.deepEqual(streamed.value, whole.value);
    return whole.value;
  }
  const message = (r: PromiseSettledResult<unknown>) =>
    r.status === "rejected" ? (r.reason as Error).message : "(no error)";
  assert.equal(message(streamed), message(whole), "streamed vs whole");
  throw (whole as PromiseRejectedResult).reason;
}

const LONG = "usr/share/" + "a".repeat(120) + "/" + "b".repeat(150) + ".txt";

Deno.test("readLayer() passes whiteouts, links, long names and devices through as entries", async () => {
  const tar = await encodeTar([
    { name: "./", kind: "directory" },
    {
      name: "etc/",
      kind: "directory",
      mode: 0o755,
      mtimeMs: 1_700_000_000_000,
    },
    { name: "etc/.wh.motd", kind: "file" },
    { name: "var/cache/.wh..wh..opq", kind: "file" },
    {
      name: "etc/hosts",
      kind: "file",
      data: bytes("127.0.0.1 x\n"),
      uid: 1000,
      gid: 100,
    },
    { name: "etc/hosts.link", kind: "hardlink", linkName: "./etc/hosts" },
    { name: "bin/sh", kind: "symlink", linkName: "/bin/busybox" },
    { name: LONG, kind: "file", data: bytes("long"), mode: 0o4755 },
    { name: "long.link", kind: "hardlink", linkName: LONG },
    { name: "dev/null", kind: "char", devMajor: 1, devMinor: 3, mode: 0o666 },
    { name: "dev/sda", kind: "block", devMajor: 8, devMinor: 0 },
    { name: "run/fifo", kind: "fifo" },
  ]);
  const entries = await entriesOf(await gzipBytes(tar), TGZ);
  const byPath = new Map(entries.map((e) => [e.path, e]));
  assert.deepEqual(entries.map((e) => e.path), [
    "etc",
    "etc/.wh.motd",
    "var/cache/.wh..wh..opq",
    "etc/hosts",
    "etc/hosts.link",
    "bin/sh",
    LONG,
    "long.link",
    "dev/null",
    "dev/sda",
    "run/fifo",
  ]);
  assert.equal(byPath.get("etc")!.type, "directory");
  assert.equal(byPath.get("etc")!.mtimeMs, 1_700_000_000_000);
  assert.equal(byPath.get("etc/.wh.motd")!.type, "file");
  const hosts = byPath.get("etc/hosts")!;
  assert.equal(new TextDecoder().decode(hosts.data), "127.0.0.1 x\n");
  assert.equal(hosts.uid, 1000);
  assert.equal(hosts.gid, 100);
  assert.equal(hosts.mode, 0o644);
  assert.deepEqual(
    [
      byPath.get("etc/hosts.link")!.type,
      byPath.get("etc/hosts.link")!.linkTarget,
    ],
    ["hardlink", "etc/hosts"],
  );
  assert.deepEqual(
    [byPath.get("bin/sh")!.type, byPath.get("bin/sh")!.linkTarget],
    ["symlink", "/bin/busybox"],
  );
  assert.equal(byPath.get(LONG)!.mode, 0o4755);
  assert.equal(byPath.get("long.link")!.linkTarget, LONG);
  const dev = byPath.get("dev/null")!;
  assert.deepEqual([dev.type, dev.devMajor, dev.devMinor, dev.mode], [
    "char",
    1,
    3,
    0o666,
  ]);
  assert.deepEqual(
    [byPath.get("dev/sda")!.type, byPath.get("dev/sda")!.devMajor],
    ["block", 8],
  );
  assert.equal(byPath.get("run/fifo")!.type, "fifo");
});

/** A ustar header block, made by hand (pax "ustar Header Block"). */
function ustarHeader(name: string, type: string, size: number): Uint8Array {
  const b = new Uint8Array(512);
  const put = (off: number, text: string) => b.set(bytes(text), off);
  put(0, name);
  put(100, "0000644\0");
  put(108, "0000000\0");
  put(116, "0000000\0");
  put(124, size.toString(8).padStart(11, "0") + "\0");
  put(136, "00000000000\0");
  put(156, type);
  put(257, "ustar\0");
  put(263, "00");
  b.fill(0x20, 148, 156);
  const sum = b.reduce((n, x) => n + x, 0);
  put(148, sum.toString(8).padStart(6, "0") + "\0 ");
  return b;
}

function paxRecord(key: string, value: Uint8Array): Uint8Array {
  const body = [...bytes(` ${key}=`), ...value, 0x0a];
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len++;
  return new Uint8Array([...bytes(String(len)), ...body]);
}

function padded(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.length / 512) * 512);
  out.set(data);
  return out;
}

Deno.test("readLayer() keeps binary xattrs (SCHILY.xattr.*) byte for byte", async () => {
  const capability = new Uint8Array([1, 0, 0, 2, 0x20, 0, 0, 0, 0xff, 0x80]);
  const records = new Uint8Array([
    ...paxRecord("SCHILY.xattr.security.capability", capability),
    ...paxRecord("SCHILY.xattr.user.note", bytes("hi there")),
  ]);
  const data = bytes("ping");
  const tar = new Uint8Array([
    ...ustarHeader("PaxHeaders/ping", "x", records.length),
    ...padded(records),
    ...ustarHeader("bin/ping", "0", data.length),
    ...padded(data),
    ...ustarHeader("bin/other", "0", 0),
    ...new Uint8Array(1024),
  ]);
  const [ping, other] = await entriesOf(tar);
  assert.equal(ping!.path, "bin/ping");
  assert.deepEqual(ping!.xattrs?.["security.capability"], capability);
  assert.deepEqual(ping!.xattrs?.["user.note"], bytes("hi there"));
  assert.equal(new TextDecoder().decode(ping!.data), "ping");
  assert.equal(other!.xattrs, undefined, "PAX records apply to one member");
});

Deno.test("readLayer() reads what GNU tar writes: long names, hard links, symlinks", async (t) => {
  if (!needTool(t, "tar", "GNU tar writes the reference archives")) return;
  await withTempDir(async (dir) => {
    const root = join(dir, "root");
    const deep = join(root, "d".repeat(90), "e".repeat(90));
    await Deno.mkdir(deep, { recursive: true });
    await Deno.writeTextFile(join(deep, "f".repeat(100)), "deep");
    await Deno.symlink("f".repeat(100), join(deep, "link"));
    await Deno.link(join(deep, "f".repeat(100)), join(root, "hard"));
    for (const format of ["gnu", "pax"]) {
      const out = join(dir, `${format}.tar`);
      const r = await new Deno.Command("tar", {
        args: [`--format=${format}`, "-C", root, "-cf", out, "."],
      }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      const entries = await entriesOf(await Deno.readFile(out));
      const file = entries.find((e) => e.path.endsWith("f".repeat(100)));
      const hard = entries.find((e) =>
        e.path.endsWith("hard") || e.path === "hard"
      );
      assert.ok(file && hard, `${format}: ${entries.map((e) => e.path)}`);
      // GNU tar archives one of the two names as the file, the other as a link.
      const [asFile, asLink] = file.type === "file"
        ? [file, hard]
        : [hard, file];
      assert.equal(new TextDecoder().decode(asFile.data), "deep");
      assert.equal(asLink.type, "hardlink");
      assert.equal(asLink.linkTarget, asFile.path);
      const link = entries.find((e) => e.path.endsWith("/link"))!;
      assert.equal(link.linkTarget, "f".repeat(100));
      assert.ok(file.path.length > 255, `${format}: a name over 255 bytes`);
    }
  });
});

Deno.test("readLayer() reads zstd layers", async (t) => {
  if (!needTool(t, "zstd", "the zstd command makes the compressed layer")) {
    return;
  }
  const tar = await encodeTar([{ name: "a", kind: "file", data: bytes("z") }]);
  const child = new Deno.Command("zstd", {
    args: ["-q", "-c"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(tar);
  await w.close();
  const out = await child.output();
  assert.equal(sniffCompression(out.stdout), "zstd");
  const [a] = await entriesOf(
    out.stdout,
    "application/vnd.oci.image.layer.v1.tar+zstd",
  );
  assert.equal(new TextDecoder().decode(a!.data), "z");
});

Deno.test("readLayer() fails clearly on truncated, corrupt or escaping layers", async () => {
  const tar = await encodeTar([
    { name: "big", kind: "file", data: new Uint8Array(5000).fill(7) },
  ]);
  await assert.rejects(
    entriesOf(tar.subarray(0, 2048)),
    /Cannot read the layer \(tar\): tar archive is truncated/,
  );
  const gz = await gzipBytes(tar);
  await assert.rejects(
    entriesOf(gz.subarray(0, gz.length - 8), TGZ),
    /Cannot read the layer \(gzip\)/,
  );
  const bad = tar.slice();
  bad[0] = bad[0]! ^ 0x01; // breaks the header checksum
  await assert.rejects(entriesOf(bad), /Cannot read the layer \(tar\)/);
  const escape = await encodeTar([
    { name: "../../etc/passwd", kind: "file", data: bytes("x") },
  ]);
  await assert.rejects(entriesOf(escape), /its path leaves the root/);
  const escapeLink = await encodeTar([
    { name: "a", kind: "hardlink", linkName: "../outside" },
  ]);
  await assert.rejects(entriesOf(escapeLink), /its path leaves the root/);
  await assert.rejects(
    entriesOf(tar, "application/vnd.oci.image.layer.v1.tar+encrypted"),
    /unsupported media type .*encrypted/,
  );
});

Deno.test("normalizeLayerPath() drops ./ and empty parts and refuses ..", () => {
  assert.equal(normalizeLayerPath("./usr//bin/"), "usr/bin");
  assert.equal(normalizeLayerPath("/etc/./passwd"), "etc/passwd");
  assert.equal(normalizeLayerPath("./"), "");
  assert.throws(() => normalizeLayerPath("a/../../b"), /leaves the root/);
});
