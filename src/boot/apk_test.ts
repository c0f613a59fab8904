import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { ALPINE_KEYS } from "./alpine_keys.ts";
import {
  type ApkIndexEntry,
  parseApkIndex,
  readSignedApkIndex,
  verifiedApkData,
} from "./apk.ts";
import { gunzip, gzipMemberEnd, readTar } from "./archive.ts";
import {
  signatureMember,
  signedIndex,
  testApk,
  testSigningKey,
  ustar,
} from "./_alpine_test_util.ts";
import { concat, gzip } from "../../tests/_util.ts";

const encoder = new TextEncoder();
const KEY = testSigningKey("test@initx-1.rsa.pub");
const OTHER = testSigningKey("intruder.rsa.pub");
const keys = { [KEY.name]: KEY.publicPem };
const source = "http://127.0.0.1/alpine/x/APKINDEX.tar.gz";

const INDEX = "C:Q1abc=\nP:linux-lts\nV:6.12.1-r0\nS:10\n\n" +
  "C:Q1def=\nP:linux-virt\nV:6.6.1-r0\nA:x86_64\nS:20\n\n";

Deno.test("ALPINE_KEYS holds Alpine's x86_64 and aarch64 RSA keys, readable", () => {
  deepEqual(
    Object.keys(ALPINE_KEYS).map((n) =>
      /-([0-9a-f]{8})\.rsa\.pub$/.exec(n)?.[1]
    )
      .sort(),
    ["4a6a0840", "5261cecb", "58199dcc", "6165ee59", "616ae350"],
  );
  for (const [name, pem] of Object.entries(ALPINE_KEYS)) {
    ok(name.startsWith("alpine-devel@lists.alpinelinux.org-"), name);
    const key = createPublicKey(pem);
    equal(key.asymmetricKeyType, "rsa", name);
    ok((key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048, name);
  }
});

Deno.test("parseApkIndex() reads name, version, checksum and size", () => {
  deepEqual(parseApkIndex(INDEX + "P:no-version\n\nV:1\n"), [
    { name: "linux-lts", version: "6.12.1-r0", checksum: "Q1abc=", size: 10 },
    { name: "linux-virt", version: "6.6.1-r0", checksum: "Q1def=", size: 20 },
  ]);
  deepEqual(parseApkIndex("P:a\nV:1\nS:lots\n"), [
    { name: "a", version: "1", checksum: undefined, size: undefined },
  ]);
});

Deno.test("readSignedApkIndex() accepts an index signed by a trusted key, RSA or RSA256", async () => {
  for (const type of ["RSA", "RSA256"] as const) {
    const entries = await readSignedApkIndex(
      await signedIndex(INDEX, KEY, type),
      { keys, source },
    );
    deepEqual(entries.map((e) => e.name), ["linux-lts", "linux-virt"], type);
  }
});

Deno.test("readSignedApkIndex() accepts an index with one trusted signature among others", async () => {
  const index = await signedIndex(INDEX, KEY);
  const end = gzipMemberEnd(index);
  const body = index.subarray(end);
  const signatures = [
    ...readTar(await gunzip(await signatureMember(body, OTHER))),
    ...readTar(await gunzip(index.subarray(0, end))),
  ];
  const member = await gzip(
    ustar(Object.fromEntries(signatures.map((e) => [e.path, e.data])), {
      endMarker: false,
    }),
  );
  const entries = await readSignedApkIndex(concat([member, body]), {
    keys,
    source,
  });
  equal(entries.length, 2);
});

Deno.test("readSignedApkIndex() rejects an index no trusted key signed", async () => {
  await rejects(
    readSignedApkIndex(await signedIndex(INDEX, OTHER), { keys, source }),
    {
      message:
        `Cannot verify the Alpine package index ${source}: it is not signed by a trusted key (signed by: intruder.rsa.pub)`,
    },
  );
  // A signature that claims a trusted key's name but was made by another.
  const forged = await signedIndex(INDEX, { ...OTHER, name: KEY.name });
  await rejects(readSignedApkIndex(forged, { keys, source }), {
    message:
      `Cannot verify the Alpine package index ${source}: its signature by ${KEY.name} does not match its contents`,
  });
});

Deno.test("readSignedApkIndex() rejects an index changed after signing", async () => {
  const index = await signedIndex(INDEX, KEY);
  const end = gzipMemberEnd(index);
  const other = await gzip(encoder.encode("tampered"));
  await rejects(
    readSignedApkIndex(concat([index.subarray(0, end), other]), {
      keys,
      source,
    }),
    /its signature by test@initx-1\.rsa\.pub does not match its contents/,
  );
});

Deno.test("readSignedApkIndex() rejects archives without signatures or not gzip", async () => {
  const body = (await signedIndex(INDEX, KEY)).subarray(
    gzipMemberEnd(await signedIndex(INDEX, KEY)),
  );
  const unsigned = await gzip(
    ustar({ ".PKGINFO": encoder.encode("x") }, { endMarker: false }),
  );
  await rejects(
    readSignedApkIndex(concat([unsigned, body]), { keys, source }),
    {
      message:
        `Cannot verify the Alpine package index ${source}: it carries no RSA signature`,
    },
  );
  await rejects(
    readSignedApkIndex(encoder.encode("<html>404</html>"), { keys, source }),
    {
      message:
        `Cannot verify the Alpine package index ${source}: Cannot read gzip member at offset 0: no gzip header`,
    },
  );
});

async function sample() {
  const made = await testApk({
    name: "linux-virt",
    version: "6.6.1-r0",
    files: { "boot": "dir", "boot/vmlinuz-virt": encoder.encode("kernel") },
    key: KEY,
  });
  const [entry] = parseApkIndex(made.record);
  return { ...made, entry: entry! };
}

Deno.test("verifiedApkData() returns the data member of a package that matches the index", async () => {
  const { apk, entry } = await sample();
  const data = await verifiedApkData(apk, entry);
  const files = readTar(await gunzip(data));
  deepEqual(files.map((f) => f.path), ["boot", "boot/vmlinuz-virt"]);
});

Deno.test("verifiedApkData() rejects a package whose size, control or data differ from what was signed", async () => {
  const { apk, entry } = await sample();
  const name = "Cannot verify package linux-virt-6.6.1-r0.apk";
  await rejects(verifiedApkData(apk.subarray(0, apk.length - 1), entry), {
    message: `${name}: it is ${
      apk.length - 1
    } bytes, the signed index says ${apk.length} bytes`,
  });

  // Another package's control (with its own, consistent datahash).
  const other = await testApk({
    name: "linux-virt",
    version: "6.6.1-r0",
    files: { "boot/vmlinuz-virt": encoder.encode("evil") },
    key: KEY,
  });
  await rejects(
    verifiedApkData(other.apk, { ...entry, size: undefined }),
    new RegExp(
      `^Error: ${name}: its control checksum is Q1\\S+, the signed index says ${
        entry.checksum!.replace(/[+/=]/g, "\\$&")
      }$`,
    ),
  );

  // The signed control with other data.
  const controlStart = gzipMemberEnd(apk);
  const controlEnd = gzipMemberEnd(apk, controlStart);
  const swapped = concat([
    apk.subarray(0, controlEnd),
    other.apk.subarray(gzipMemberEnd(other.apk, gzipMemberEnd(other.apk))),
  ]);
  await rejects(
    verifiedApkData(swapped, { ...entry, size: undefined }),
    new RegExp(
      `^Error: ${name}: its data has SHA-256 [0-9a-f]{64}, its signed control says [0-9a-f]{64}$`,
    ),
  );
});

Deno.test("verifiedApkData() rejects an index entry without a SHA-1 checksum", async () => {
  const { apk, entry } = await sample();
  const bad: ApkIndexEntry = { ...entry, checksum: undefined };
  await rejects(verifiedApkData(apk, bad), {
    message:
      "Cannot verify package linux-virt-6.6.1-r0.apk: the signed index gives no SHA-1 checksum for it (C:)",
  });
});

Deno.test("verifiedApkData() leaves files in the signature member out", async () => {
  const { apk, entry } = await sample();
  // Whatever the unsigned signature member holds is not part of the result.
  const end = gzipMemberEnd(apk);
  const planted = await gzip(
    ustar({
      ".SIGN.RSA.x": encoder.encode("sig"),
      "boot/vmlinuz-virt": encoder.encode("planted"),
    }, { endMarker: false }),
  );
  const changed = concat([planted, apk.subarray(end)]);
  const data = await verifiedApkData(changed, { ...entry, size: undefined });
  const kernel = readTar(await gunzip(data)).find((f) =>
    f.path === "boot/vmlinuz-virt"
  );
  equal(new TextDecoder().decode(kernel?.data), "kernel");
});
