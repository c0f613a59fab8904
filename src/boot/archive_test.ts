import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import {
  extractDeb,
  extractTar,
  gunzip,
  gzipMemberEnd,
  readAr,
  readTar,
} from "./archive.ts";
import { concat, gzip, withTempDir } from "../../tests/_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Runs a host tool; returns false (skipping loudly, failing in CI) if it is missing. */
async function tool(command: string, args: string[], cwd: string) {
  try {
    const out = await new Deno.Command(command, { args, cwd }).output();
    ok(out.success, `${command} failed: ${decoder.decode(out.stderr)}`);
    return true;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    if (Deno.env.get("CI") === "true") {
      throw new Error(`Cannot run archive test: '${command}' is not installed`);
    }
    console.warn(`SKIPPED: archive test needs '${command}'`);
    return false;
  }
}

/** Fills `dir/src` with a file, a long-named file, a symlink and a hard link. */
async function sampleTree(dir: string): Promise<string> {
  // 224 bytes: GNU long name, pax path, or ustar prefix + name (133 + 90).
  const long = "d".repeat(60) + "/" + "e".repeat(70) + "/" + "f".repeat(90);
  await Deno.mkdir(join(dir, "src/boot"), { recursive: true });
  await Deno.mkdir(join(dir, "src", long, ".."), { recursive: true });
  await Deno.writeTextFile(join(dir, "src/boot/vmlinuz"), "kernel");
  await Deno.chmod(join(dir, "src/boot/vmlinuz"), 0o600);
  await Deno.writeTextFile(join(dir, "src", long), "long");
  await Deno.symlink("boot/vmlinuz", join(dir, "src/link"));
  await Deno.link(join(dir, "src/boot/vmlinuz"), join(dir, "src/hard"));
  return long;
}

for (const format of ["gnu", "pax", "ustar"]) {
  Deno.test(`readTar() reads GNU tar --format=${format} output`, async () => {
    await withTempDir(async (dir) => {
      const long = await sampleTree(dir);
      const args = [`--format=${format}`, "-cf", "../a.tar", "."];
      if (!(await tool("tar", args, join(dir, "src")))) return;
      const entries = readTar(await Deno.readFile(join(dir, "a.tar")));
      const byPath = new Map(entries.map((e) => [e.path, e]));
      const kernel = byPath.get("boot/vmlinuz");
      equal(kernel?.type, "file");
      equal(kernel?.mode, 0o600);
      equal(byPath.get("boot")?.type, "directory");
      equal(byPath.get("link")?.type, "symlink");
      equal(byPath.get("link")?.linkTarget, "boot/vmlinuz");
      // hard links: whichever of the two names tar met second links to the first
      const hard = entries.filter((e) => e.type === "hardlink");
      equal(hard.length, 1);
      equal(decoder.decode(byPath.get(long)?.data), "long");

      const out = join(dir, "out");
      await extractTar(entries, out);
      equal(await Deno.readTextFile(join(out, "boot/vmlinuz")), "kernel");
      equal((await Deno.stat(join(out, "boot/vmlinuz"))).mode! & 0o777, 0o600);
      equal(await Deno.readLink(join(out, "link")), "boot/vmlinuz");
      equal(await Deno.readTextFile(join(out, "hard")), "kernel");
      equal(await Deno.readTextFile(join(out, long)), "long");
    });
  });
}

Deno.test("readTar() rejects a corrupt header", () => {
  const block = new Uint8Array(512);
  block.set(encoder.encode("file"), 0);
  block.set(encoder.encode("0000001"), 148);
  throws(() => readTar(block), /Cannot read tar archive: bad header checksum/);
});

Deno.test("extractTar() refuses paths leaving the destination", async () => {
  await withTempDir(async (dir) => {
    const entry = (path: string, type: "file" | "symlink", link = "") => ({
      path,
      type,
      mode: 0o644,
      data: new Uint8Array(0),
      linkTarget: link,
    });
    await rejects(
      extractTar([entry("a/../../x", "file")], dir),
      /Cannot extract 'a\/\.\.\/\.\.\/x': the path leaves the destination directory/,
    );
    await rejects(
      extractTar([entry("up", "symlink", ".."), entry("up/x", "file")], dir),
      /Cannot extract 'up\/x': the path goes through a symlink/,
    );
  });
});

Deno.test("gunzip() reads concatenated gzip members", async () => {
  const joined = concat([
    await gzip(encoder.encode("hello ")),
    await gzip(encoder.encode("world")),
  ]);
  equal(decoder.decode(await gunzip(joined)), "hello world");
});

Deno.test("gzipMemberEnd() finds where each of several gzip members ends", async () => {
  const a = await gzip(encoder.encode("hello ".repeat(1000)));
  const b = await gzip(crypto.getRandomValues(new Uint8Array(5000)));
  const c = await gzip(new Uint8Array(0));
  const joined = concat([a, b, c]);
  equal(gzipMemberEnd(joined), a.length);
  equal(gzipMemberEnd(joined, a.length), a.length + b.length);
  equal(gzipMemberEnd(joined, a.length + b.length), joined.length);
});

Deno.test("gzipMemberEnd() skips the optional header fields", async () => {
  const plain = await gzip(encoder.encode("payload"));
  const FHCRC = 0x02, FEXTRA = 0x04, FNAME = 0x08, FCOMMENT = 0x10;
  const header = Uint8Array.of(
    0x1f,
    0x8b,
    8,
    FHCRC | FEXTRA | FNAME | FCOMMENT,
    ...plain.subarray(4, 10),
  );
  const fields = concat([
    header,
    Uint8Array.of(3, 0, 0xaa, 0xbb, 0xcc), // XLEN 3 and the extra field
    encoder.encode("name.tar\0comment\0"),
  ]);
  const crc16 = crc32(fields) & 0xffff; // FHCRC: the CRC-32's low half
  const member = concat([
    fields,
    Uint8Array.of(crc16 & 0xff, crc16 >> 8),
    plain.subarray(10),
  ]);
  equal(decoder.decode(await gunzip(member)), "payload");
  const tail = encoder.encode("next");
  equal(gzipMemberEnd(concat([member, tail])), member.length);
});

Deno.test("gzipMemberEnd() rejects data that is not a whole gzip member", async () => {
  const member = await gzip(encoder.encode("hello ".repeat(1000)));
  throws(
    () => gzipMemberEnd(encoder.encode("not gzip at all")),
    /^Error: Cannot read gzip member at offset 0: no gzip header$/,
  );
  throws(
    () => gzipMemberEnd(concat([member, encoder.encode("xy")]), member.length),
    new RegExp(
      `Cannot read gzip member at offset ${member.length}: no gzip header`,
    ),
  );
  throws(
    () => gzipMemberEnd(member.subarray(0, member.length - 4)),
    /Cannot read gzip member at offset 0: the member is truncated/,
  );
  throws(
    () => gzipMemberEnd(member.subarray(0, member.length / 2)),
    /Cannot read gzip member at offset 0: the compressed data is damaged/,
  );
  throws(
    () =>
      gzipMemberEnd(Uint8Array.of(0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3, 0x61)),
    /the header runs past the end/,
  );
});

Deno.test("readAr() reads binutils ar output", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "debian-binary"), "2.0\n");
    await Deno.writeTextFile(join(dir, "odd"), "abc");
    if (!(await tool("ar", ["rc", "x.a", "debian-binary", "odd"], dir))) {
      return;
    }
    const members = readAr(await Deno.readFile(join(dir, "x.a")));
    deepEqual(
      members.map((m) => [m.name, decoder.decode(m.data)]),
      [["debian-binary", "2.0\n"], ["odd", "abc"]],
    );
  });
  throws(() => readAr(encoder.encode("nope")), /'!<arch>' magic is missing/);
});

Deno.test("extractDeb() unpacks a package with data.tar.gz", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "root/boot"), { recursive: true });
    await Deno.writeTextFile(join(dir, "root/boot/vmlinuz-1"), "kernel");
    await Deno.writeTextFile(join(dir, "debian-binary"), "2.0\n");
    if (
      !(await tool("tar", ["-czf", "../data.tar.gz", "."], join(dir, "root")))
    ) return;
    if (
      !(await tool("ar", ["rc", "p.deb", "debian-binary", "data.tar.gz"], dir))
    ) return;
    await extractDeb(await Deno.readFile(join(dir, "p.deb")), join(dir, "out"));
    equal(await Deno.readTextFile(join(dir, "out/boot/vmlinuz-1")), "kernel");
  });
});

Deno.test("extractDeb() unpacks Debian's cloud kernel package (data.tar.xz)", async () => {
  const deb = "/tmp/k/linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb";
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(Deno.env.get("INITX_TEST_DEB") ?? deb);
  } catch {
    console.warn(
      "SKIPPED: no Debian kernel .deb to unpack (set INITX_TEST_DEB=<path>)",
    );
    return;
  }
  await withTempDir(async (dir) => {
    await extractDeb(bytes, dir);
    const boot = [];
    for await (const e of Deno.readDir(join(dir, "boot"))) boot.push(e.name);
    ok(boot.some((name) => name.startsWith("vmlinuz-")), `boot/: ${boot}`);
  });
});
