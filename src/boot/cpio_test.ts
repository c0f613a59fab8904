import { deepEqual, ok, throws } from "node:assert/strict";
import { CpioWriter } from "./cpio.ts";
import { gunzip } from "./archive.ts";
import { needTool } from "../../tests/_gate.ts";
import { withTempDir } from "../../tests/_util.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function runCpio(
  args: string[],
  input: Uint8Array,
  cwd: string,
): Promise<string> {
  const child = new Deno.Command("cpio", {
    args,
    cwd,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(input);
  await writer.close();
  const { success, stdout, stderr } = await child.output();
  const text = decoder.decode(stdout) + decoder.decode(stderr);
  ok(success, `cpio ${args.join(" ")} failed: ${text}`);
  return text;
}

function sample(): CpioWriter {
  return new CpioWriter()
    .file("/init", encoder.encode("#!/bin/sh\necho hi\n"), { mode: 0o755 })
    .dir("/tmp", { mode: 0o1777 })
    .file("etc/hostname", encoder.encode("vm\n"))
    .file("lib/modules/odd.ko", new Uint8Array([1, 2, 3, 4, 5]))
    .symlink("/bin/sh", "busybox")
    .device("/dev/console", { type: "char", major: 5, minor: 1 })
    .device("/dev/vda", { type: "block", major: 254, minor: 0, mode: 0o660 });
}

Deno.test("CpioWriter.bytes() round-trips through cpio -idv", async (t) => {
  if (!needTool(t, "cpio", "it reads the archive back")) return;
  const archive = sample().bytes();
  await withTempDir(async (dir) => {
    const listing = await runCpio(["-t", "--quiet"], archive, dir);
    deepEqual(listing.trim().split("\n"), [
      "init",
      "tmp",
      "etc",
      "etc/hostname",
      "lib",
      "lib/modules",
      "lib/modules/odd.ko",
      "bin",
      "bin/sh",
      "dev",
      "dev/console",
      "dev/vda",
    ]);
    const verbose = await runCpio(["-tv", "--quiet"], archive, dir);
    ok(/^crw-------.*\b5,\s*1\b.*dev\/console$/m.test(verbose), verbose);
    ok(/^brw-rw----.*\b254,\s*0\b.*dev\/vda$/m.test(verbose), verbose);
    ok(/^lrwxrwxrwx.*bin\/sh -> busybox$/m.test(verbose), verbose);

    await runCpio(["-idv", "--quiet", "--no-absolute-filenames"], archive, dir);
    deepEqual(
      await Deno.readTextFile(`${dir}/init`),
      "#!/bin/sh\necho hi\n",
    );
    deepEqual((await Deno.stat(`${dir}/init`)).mode! & 0o7777, 0o755);
    deepEqual((await Deno.stat(`${dir}/tmp`)).mode! & 0o7777, 0o1777);
    deepEqual((await Deno.stat(`${dir}/etc`)).isDirectory, true);
    deepEqual(await Deno.readTextFile(`${dir}/etc/hostname`), "vm\n");
    deepEqual(
      await Deno.readFile(`${dir}/lib/modules/odd.ko`),
      new Uint8Array([1, 2, 3, 4, 5]),
    );
    deepEqual(await Deno.readLink(`${dir}/bin/sh`), "busybox");
    if (Deno.uid() === 0) {
      const console = await Deno.lstat(`${dir}/dev/console`);
      deepEqual(console.isCharDevice, true);
      deepEqual(console.rdev, (5 << 8) | 1);
      deepEqual((await Deno.lstat(`${dir}/dev/vda`)).isBlockDevice, true);
    }
  });
});

Deno.test("CpioWriter.gzip() compresses the same bytes", async () => {
  const writer = sample();
  deepEqual(await gunzip(await writer.gzip()), writer.bytes());
});

Deno.test("CpioWriter.bytes() is reproducible and 4-byte aligned", () => {
  const a = sample().bytes();
  deepEqual(a, sample().bytes());
  deepEqual(a.length % 4, 0);
  const text = decoder.decode(a);
  // Every header starts at a 4-byte boundary with mtime 0 and uid/gid 0.
  let count = 0;
  for (const match of text.matchAll(/070701/g)) {
    deepEqual(match.index % 4, 0);
    const header = text.slice(match.index, match.index + 110);
    deepEqual(header.slice(22, 38), "0000000000000000"); // uid, gid
    deepEqual(header.slice(46, 54), "00000000"); // mtime
    count++;
  }
  deepEqual(count, 13); // 12 entries + trailer
  ok(text.includes("TRAILER!!!\0"));
});

Deno.test("CpioWriter.dir() replaces an implicit parent in place", () => {
  const writer = new CpioWriter()
    .file("a/b", new Uint8Array(0))
    .dir("a", { mode: 0o700 });
  deepEqual(writer.size, 2);
  const text = decoder.decode(writer.bytes());
  const first = text.indexOf("070701");
  deepEqual(
    text.slice(first + 14, first + 22),
    (0o40700).toString(16).padStart(8, "0"),
  );
  deepEqual(text.slice(first + 110, first + 112), "a\0");
});

Deno.test("CpioWriter rejects duplicates, '..' and files used as directories", () => {
  const writer = new CpioWriter().file("x", new Uint8Array(0));
  throws(
    () => writer.file("/x", new Uint8Array(0)),
    /Cannot add 'x' to the cpio archive: the path is already present/,
  );
  throws(() => writer.dir("a/../b"), /without '\.\.'/);
  throws(() => writer.dir("/"), /Cannot add '\/'/);
  throws(
    () => writer.file("x/y", new Uint8Array(0)),
    /Cannot add entries below 'x' to the cpio archive: it is not a directory/,
  );
});
