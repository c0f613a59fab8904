import { deepEqual, equal, rejects, throws } from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { alignUp, concat, gzip, HOST_ARCH, withTempDir } from "./_util.ts";

Deno.test("withTempDir() gives an empty directory, returns fn's value and removes the directory", async () => {
  let seen = "";
  const value = await withTempDir(async (dir) => {
    seen = dir;
    deepEqual([...Deno.readDirSync(dir)], []);
    await Deno.mkdir(`${dir}/a/b`, { recursive: true });
    await Deno.writeTextFile(`${dir}/a/b/c`, "x");
    return 42;
  });
  equal(value, 42);
  throws(() => Deno.statSync(seen), Deno.errors.NotFound);
});

Deno.test("withTempDir() removes the directory when fn throws, and passes the error on", async () => {
  let seen = "";
  await rejects(
    withTempDir((dir) => {
      seen = dir;
      return Promise.reject(new Error("boom"));
    }, { prefix: "initx-util-" }),
    /boom/,
  );
  equal(seen.split("/").at(-1)?.startsWith("initx-util-"), true);
  throws(() => Deno.statSync(seen), Deno.errors.NotFound);
});

Deno.test("HOST_ARCH is the architecture Deno runs on", () => {
  equal(HOST_ARCH, Deno.build.arch);
});

Deno.test("concat() joins arrays in order", () => {
  deepEqual(
    [...concat([Uint8Array.of(1), new Uint8Array(0), Uint8Array.of(2, 3)])],
    [1, 2, 3],
  );
  equal(concat([]).length, 0);
});

Deno.test("gzip() makes one member that zlib decompresses back", async () => {
  const data = new TextEncoder().encode("hello ".repeat(100));
  const member = await gzip(data);
  deepEqual([...member.subarray(0, 2)], [0x1f, 0x8b]);
  deepEqual(new Uint8Array(gunzipSync(member)), data);
});

Deno.test("alignUp() rounds up to the alignment and rejects bad input", () => {
  deepEqual(
    [0, 1, 7, 8, 9, 513].map((n) => alignUp(n, 8)),
    [0, 8, 8, 8, 16, 520],
  );
  equal(alignUp(1024, 512), 1024);
  throws(() => alignUp(1, 0), RangeError);
  throws(() => alignUp(-1, 4), RangeError);
  throws(() => alignUp(1.5, 4), RangeError);
});
