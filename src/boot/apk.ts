/**
 * Alpine packages (`.apk`, format v2) and their index, checked before use:
 * the index against Alpine's signing keys, each package against the index.
 *
 * Primer: `APKINDEX.tar.gz` is two gzip members. The first holds a tar
 * segment with one file per signature, `.SIGN.<type>.<key name>`: an RSA
 * PKCS #1 v1.5 signature of the second member's compressed bytes, over
 * SHA-1 for type `RSA` (SHA-256 for `RSA256`, SHA-512 for `RSA512`). The
 * second member holds `DESCRIPTION` and `APKINDEX`: records separated by
 * blank lines, one `K:value` field a line; `P` is a package's name, `V` its
 * version, `S` the size of its `.apk` in bytes and `C` its identity, `Q1`
 * and the base64 SHA-1 of the package's control member.
 *
 * A `.apk` is three gzip members that decompress to one tar stream:
 * signatures, control (`.PKGINFO`, whose `datahash` line is the hex SHA-256
 * of the third member's compressed bytes) and data (the package's files).
 * A control member that matches the signed index's `C` and a data member
 * that matches that control's `datahash` make the package the one Alpine
 * signed, so the package's own signature member is not needed; it is not
 * read, and nothing from it is unpacked.
 *
 * References: apk-tools' `apk-v2(5)` manual page; the index signing of
 * Alpine's `abuild-sign`.
 *
 * @module
 */

import { createHash, createPublicKey, verify } from "node:crypto";
import { gunzip, gzipMemberEnd, readTar } from "./archive.ts";

/** One package of an `APKINDEX`. */
export interface ApkIndexEntry {
  /** `P:`, the package name. */
  name: string;
  /** `V:`, its version (`6.6.1-r0`). */
  version: string;
  /** `C:`, `Q1` and the base64 SHA-1 of its control member, if given. */
  checksum: string | undefined;
  /** `S:`, the size of its `.apk` in bytes, if given. */
  size: number | undefined;
}

/** Options of {@linkcode readSignedApkIndex}. */
export interface ReadSignedApkIndexOptions {
  /** Trusted public keys (PEM) by key file name, e.g. `ALPINE_KEYS`. */
  keys: Readonly<Record<string, string>>;
  /** Where the index came from, for error messages (a URL). */
  source: string;
}

/** Hash of each signature type (`.SIGN.<type>.<key name>`). */
const SIGNATURE_HASHES: Readonly<Record<string, string>> = {
  RSA: "sha1",
  RSA256: "sha256",
  RSA512: "sha512",
};
/** Prefix of a `C:` checksum that is a SHA-1 (apk-tools' `Q1`). */
const SHA1_CHECKSUM_PREFIX = "Q1";

const decoder = new TextDecoder();

/**
 * Checks the signature of an `APKINDEX.tar.gz` against `options.keys` and
 * returns its packages. Throws `Cannot verify the Alpine package index
 * <source>: ...` when no signature by a trusted key matches the index.
 *
 * @example
 * ```ts ignore
 * import { ALPINE_KEYS } from "./alpine_keys.ts";
 * import { readSignedApkIndex } from "./apk.ts";
 * const url = "https://mirror.example/alpine/latest-stable/main/x86_64/APKINDEX.tar.gz";
 * const archive = await (await fetch(url)).bytes();
 * const packages = await readSignedApkIndex(archive, { keys: ALPINE_KEYS, source: url });
 * console.log(packages.find((p) => p.name === "linux-virt")?.version);
 * ```
 */
export async function readSignedApkIndex(
  archive: Uint8Array,
  options: ReadSignedApkIndexOptions,
): Promise<ApkIndexEntry[]> {
  const fail = (detail: string): never => {
    throw new Error(
      `Cannot verify the Alpine package index ${options.source}: ${detail}`,
    );
  };
  let signatures: { key: string; hash: string; signature: Uint8Array }[];
  let signed: Uint8Array;
  try {
    const end = gzipMemberEnd(archive);
    signed = archive.subarray(end);
    signatures = readTar(await gunzip(archive.subarray(0, end)))
      .flatMap((e) => {
        const m = /^\.SIGN\.([A-Z0-9]+)\.(.+)$/.exec(e.path);
        const hash = m && SIGNATURE_HASHES[m[1]!];
        return m && hash && e.type === "file"
          ? [{ key: m[2]!, hash, signature: e.data }]
          : [];
      });
  } catch (error) {
    return fail((error as Error).message);
  }
  if (signatures.length === 0) fail("it carries no RSA signature");
  const trusted = signatures.filter((s) => Object.hasOwn(options.keys, s.key));
  if (trusted.length === 0) {
    fail(
      `it is not signed by a trusted key (signed by: ${
        signatures.map((s) => s.key).join(", ")
      })`,
    );
  }
  const good = trusted.some((s) => {
    let key;
    try {
      key = createPublicKey(options.keys[s.key]!);
    } catch (error) {
      return fail(
        `the trusted key ${s.key} cannot be read (${(error as Error).message})`,
      );
    }
    return verify(s.hash, signed, key, s.signature);
  });
  if (!good) {
    fail(
      `its signature by ${
        trusted.map((s) => s.key).join(", ")
      } does not match its contents`,
    );
  }
  let index: string | undefined;
  try {
    const entry = readTar(await gunzip(signed)).find((e) =>
      e.path === "APKINDEX"
    );
    index = entry && decoder.decode(entry.data);
  } catch (error) {
    return fail((error as Error).message);
  }
  if (index === undefined) fail("it holds no APKINDEX file");
  return parseApkIndex(index!);
}

/**
 * Reads the packages of an `APKINDEX` file (not the archive: its text).
 * Records without a name or version are left out.
 *
 * @example
 * ```ts
 * import { parseApkIndex } from "./apk.ts";
 * const [p] = parseApkIndex("C:Q1abc=\nP:linux-virt\nV:6.6.1-r0\nS:42\n\n");
 * console.log(p); // { name: "linux-virt", version: "6.6.1-r0", checksum: "Q1abc=", size: 42 }
 * ```
 */
export function parseApkIndex(text: string): ApkIndexEntry[] {
  const entries: ApkIndexEntry[] = [];
  for (const record of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of record.split("\n")) {
      if (line[1] === ":") fields.set(line[0] ?? "", line.slice(2));
    }
    const name = fields.get("P");
    const version = fields.get("V");
    if (name === undefined || version === undefined) continue;
    const size = fields.has("S") ? Number(fields.get("S")) : undefined;
    entries.push({
      name,
      version,
      checksum: fields.get("C"),
      size: size !== undefined && Number.isSafeInteger(size) ? size : undefined,
    });
  }
  return entries;
}

/**
 * Checks a downloaded `.apk` against its entry of a signed index (size,
 * control checksum, then the control's `datahash`) and returns its data
 * member: gzip-compressed tar of the package's files, the only part to
 * unpack. Throws `Cannot verify package <name>-<version>.apk: ...` on any
 * mismatch.
 *
 * @example
 * ```ts ignore
 * import { verifiedApkData } from "./apk.ts";
 * import { gunzip, readTar } from "./archive.ts";
 * const data = await verifiedApkData(apk, entry); // entry: from readSignedApkIndex
 * const files = readTar(await gunzip(data));
 * ```
 */
export async function verifiedApkData(
  apk: Uint8Array,
  entry: ApkIndexEntry,
): Promise<Uint8Array> {
  const fail = (detail: string): never => {
    throw new Error(
      `Cannot verify package ${entry.name}-${entry.version}.apk: ${detail}`,
    );
  };
  if (entry.checksum?.startsWith(SHA1_CHECKSUM_PREFIX) !== true) {
    fail(
      `the signed index gives no SHA-1 checksum for it (C:${
        entry.checksum ?? ""
      })`,
    );
  }
  if (entry.size !== undefined && apk.length !== entry.size) {
    fail(
      `it is ${apk.length} bytes, the signed index says ${entry.size} bytes`,
    );
  }
  let control: Uint8Array;
  let data: Uint8Array;
  let info: string | undefined;
  try {
    const controlStart = gzipMemberEnd(apk);
    const controlEnd = gzipMemberEnd(apk, controlStart);
    control = apk.subarray(controlStart, controlEnd);
    data = apk.subarray(controlEnd);
    const found = readTar(await gunzip(control)).find((e) =>
      e.path === ".PKGINFO"
    );
    info = found && decoder.decode(found.data);
  } catch (error) {
    return fail((error as Error).message);
  }
  const checksum = SHA1_CHECKSUM_PREFIX +
    createHash("sha1").update(control).digest("base64");
  if (checksum !== entry.checksum) {
    fail(
      `its control checksum is ${checksum}, the signed index says ${entry.checksum}`,
    );
  }
  if (info === undefined) fail("its control member has no .PKGINFO");
  const expected = /^datahash = ([0-9a-f]{64})$/m.exec(info!)?.[1];
  if (expected === undefined) fail("its .PKGINFO has no datahash");
  const actual = createHash("sha256").update(data).digest("hex");
  if (actual !== expected) {
    fail(
      `its data has SHA-256 ${actual}, its signed control says ${expected}`,
    );
  }
  return data;
}
