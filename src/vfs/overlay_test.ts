import assert from "node:assert/strict";
import {
  E2BIG,
  EBADF,
  EEXIST,
  EINVAL,
  EISDIR,
  ENAMETOOLONG,
  ENODATA,
  ENOENT,
  ENOSPC,
  ENOTDIR,
  ENOTEMPTY,
  ENXIO,
  EOPNOTSUPP,
  EPERM,
  ESTALE,
  FsError,
} from "./errno.ts";
import { CHUNK_BYTES } from "./file_data.ts";
import {
  devMajor,
  devMinor,
  type DirEntry,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type FsContext,
  makeDev,
  O_CREAT,
  O_EXCL,
  O_RDONLY,
  O_RDWR,
  O_TRUNC,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  RENAME_WHITEOUT,
  ROOT_NODE_ID,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_ISGID,
  SEEK_DATA,
  SEEK_HOLE,
  XATTR_CREATE,
  XATTR_REPLACE,
} from "./filesystem.ts";
import type { LayerEntry } from "./layer.ts";
import { OverlayFs, XATTR_SIZE_MAX } from "./overlay.ts";
import { LayerTree } from "./tree.ts";

const BASE = { mode: 0o644, uid: 0, gid: 0, mtimeMs: 1_600_000_000_000 };
const CTX: FsContext = { uid: 1000, gid: 100, pid: 42, umask: 0o022 };
const BIG_BYTES = 3 * CHUNK_BYTES + 100;

function text(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function decode(pieces: Uint8Array[]): string {
  return new TextDecoder().decode(concat(pieces));
}

function concat(pieces: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function bigContents(): Uint8Array {
  const bytes = new Uint8Array(BIG_BYTES);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i % 251) + 1;
  return bytes;
}

/**
 * etc/{hostname,motd}, bin/busybox (xattr) with hard link bin/sh, symlink
 * lib -> usr/lib, usr/lib/libc.so, dev/null, a multi-chunk file big, and
 * a directory full/ with one file.
 */
async function imageTree(): Promise<LayerTree> {
  const layer: LayerEntry[] = [
    { ...BASE, path: "etc", type: "directory", mode: 0o755 },
    { ...BASE, path: "etc/hostname", type: "file", data: text("box\n") },
    { ...BASE, path: "etc/motd", type: "file", data: text("hello\n") },
    {
      ...BASE,
      path: "bin/busybox",
      type: "file",
      mode: 0o755,
      data: text("ELF"),
      xattrs: { "user.origin": text("image") },
    },
    { ...BASE, path: "bin/sh", type: "hardlink", linkTarget: "bin/busybox" },
    { ...BASE, path: "usr/lib/libc.so", type: "file", data: text("libc") },
    { ...BASE, path: "lib", type: "symlink", linkTarget: "usr/lib" },
    {
      ...BASE,
      path: "dev/null",
      type: "char",
      mode: 0o666,
      devMajor: 1,
      devMinor: 3,
    },
    { ...BASE, path: "big", type: "file", data: bigContents() },
    { ...BASE, path: "full/item", type: "file", data: text("x") },
  ];
  const tree = new LayerTree();
  await tree.applyLayer(layer);
  return tree;
}

function assertErrno(f: () => unknown, errno: number | number[]): void {
  const allowed = Array.isArray(errno) ? errno : [errno];
  assert.throws(
    () => {
      const result = f();
      // Generators throw on the first step.
      if (result && typeof result === "object" && Symbol.iterator in result) {
        [...(result as Iterable<unknown>)];
      }
    },
    (e: unknown) => {
      assert.ok(e instanceof FsError, `expected an FsError, got ${e}`);
      assert.ok(
        allowed.includes(e.errno),
        `expected errno ${allowed.join(" or ")}, got ${e.code} (${e.message})`,
      );
      return true;
    },
  );
}

function path(fs: OverlayFs, p: string): number {
  let id = ROOT_NODE_ID;
  for (const name of p.split("/")) id = fs.lookup(id, name).nodeid;
  return id;
}

function readFile(fs: OverlayFs, nodeid: number): string {
  const { fh } = fs.open(nodeid, O_RDONLY);
  try {
    return decode(fs.read(nodeid, fh, 0, 1 << 24));
  } finally {
    fs.release(nodeid, fh);
  }
}

function writeFile(
  fs: OverlayFs,
  nodeid: number,
  offset: number,
  data: Uint8Array,
): number {
  const { fh } = fs.open(nodeid, O_RDWR);
  try {
    return fs.write(nodeid, fh, offset, data);
  } finally {
    fs.release(nodeid, fh);
  }
}

function listing(fs: OverlayFs, nodeid: number): DirEntry[] {
  const { fh } = fs.opendir(nodeid, 0);
  try {
    return [...fs.readdir(nodeid, fh, 0)];
  } finally {
    fs.releasedir(nodeid, fh);
  }
}

function names(fs: OverlayFs, nodeid: number): string[] {
  return listing(fs, nodeid).map((e) => e.name).filter((n) =>
    n !== "." && n !== ".."
  ).sort();
}

Deno.test("OverlayFs.lookup() and getattr() show the tree's inodes", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const etc = fs.lookup(ROOT_NODE_ID, "etc");
  assert.equal(etc.nodeid, tree.lookupPath("etc")!.ino);
  assert.equal(etc.attr.mode, S_IFDIR | 0o755);
  const hostname = fs.lookup(etc.nodeid, "hostname");
  assert.equal(hostname.attr.ino, hostname.nodeid);
  assert.equal(hostname.attr.size, 4);
  assert.equal(hostname.attr.mode, S_IFREG | 0o644);
  assert.equal(hostname.attr.nlink, 1);
  assert.deepEqual(hostname.attr.mtime, { sec: 1_600_000_000, nsec: 0 });
  assert.deepEqual(fs.getattr(hostname.nodeid), hostname.attr);

  const sh = fs.lookup(path(fs, "bin"), "sh");
  assert.equal(sh.nodeid, fs.lookup(path(fs, "bin"), "busybox").nodeid);
  assert.equal(sh.attr.nlink, 2);

  const devNull = fs.getattr(path(fs, "dev/null"));
  assert.equal(devNull.mode, S_IFCHR | 0o666);
  assert.equal(devNull.rdev, makeDev(1, 3));

  assert.equal(fs.getattr(ROOT_NODE_ID).mode & S_IFMT, S_IFDIR);
  assertErrno(() => fs.lookup(etc.nodeid, "missing"), ENOENT);
  assertErrno(() => fs.lookup(hostname.nodeid, "x"), ENOTDIR);
});

Deno.test("OverlayFs.readdir() lists . and .. first and continues from an offset", async () => {
  const fs = new OverlayFs(await imageTree());
  const etc = path(fs, "etc");
  const all = listing(fs, etc);
  assert.deepEqual(all.map((e) => e.name), [".", "..", "hostname", "motd"]);
  assert.deepEqual(all.map((e) => e.offset), [1, 2, 3, 4]);
  assert.equal(all[0]!.ino, etc);
  assert.equal(all[1]!.ino, ROOT_NODE_ID);
  assert.equal(all[0]!.type, S_IFDIR);
  assert.equal(all[2]!.type, S_IFREG);

  const rootList = listing(fs, ROOT_NODE_ID);
  assert.equal(rootList[1]!.name, "..");
  assert.equal(rootList[1]!.ino, ROOT_NODE_ID);
  assert.equal(rootList.find((e) => e.name === "lib")?.type, S_IFLNK);

  // A reader whose buffer fills after two entries continues later.
  const { fh } = fs.opendir(ROOT_NODE_ID, 0);
  const first: DirEntry[] = [];
  for (const e of fs.readdir(ROOT_NODE_ID, fh, 0)) {
    first.push(e);
    if (first.length === 3) break;
  }
  const rest = [...fs.readdir(ROOT_NODE_ID, fh, first.at(-1)!.offset)];
  assert.deepEqual([...first, ...rest], rootList);
  assert.deepEqual([...fs.readdir(ROOT_NODE_ID, fh, rootList.length)], []);
  fs.releasedir(ROOT_NODE_ID, fh);

  assertErrno(() => fs.readdir(ROOT_NODE_ID, fh, 0), EBADF);
  assertErrno(() => fs.opendir(path(fs, "etc/motd"), 0), ENOTDIR);
  const other = fs.opendir(etc, 0).fh;
  assertErrno(() => fs.readdir(ROOT_NODE_ID, other, 0), EBADF);
});

Deno.test("OverlayFs.read() reads a lower file in pieces", async () => {
  const fs = new OverlayFs(await imageTree());
  const motd = path(fs, "etc/motd");
  const { fh, keepCache } = fs.open(motd, O_RDONLY);
  assert.equal(keepCache, true);
  assert.equal(decode(fs.read(motd, fh, 0, 3)), "hel");
  assert.equal(decode(fs.read(motd, fh, 3, 100)), "lo\n");
  assert.deepEqual(fs.read(motd, fh, 6, 10), []);
  assert.deepEqual(fs.read(motd, fh, 100, 10), []);
  fs.release(motd, fh);

  const big = path(fs, "big");
  assert.deepEqual(concat(fs.read(big, 0, 0, BIG_BYTES)), bigContents());
  assertErrno(() => fs.read(path(fs, "etc"), 0, 0, 1), EISDIR);
  assertErrno(() => fs.open(path(fs, "etc"), O_RDONLY), EISDIR);
  assertErrno(() => fs.open(path(fs, "lib"), O_RDONLY), EINVAL);
});

Deno.test("OverlayFs.write() copies up without changing the tree", async () => {
  const tree = await imageTree();
  const vm1 = new OverlayFs(tree);
  const vm2 = new OverlayFs(tree);
  const hostname = path(vm1, "etc/hostname");
  assert.equal(writeFile(vm1, hostname, 0, text("vm1")), 3);
  assert.equal(readFile(vm1, hostname), "vm1\n");
  assert.equal(vm1.getattr(hostname).size, 4);
  assert.equal(writeFile(vm1, hostname, 6, text("!")), 1);
  assert.equal(readFile(vm1, hostname), "vm1\n\0\0!");

  // Only the chunk written is copied; the rest stays the image's.
  const big = path(vm1, "big");
  writeFile(vm1, big, CHUNK_BYTES + 5, text("XY"));
  const expected = bigContents();
  expected.set(text("XY"), CHUNK_BYTES + 5);
  assert.deepEqual(concat(vm1.read(big, 0, 0, BIG_BYTES)), expected);
  assert.ok(vm1.usedBytes >= CHUNK_BYTES);
  assert.ok(vm1.usedBytes < 2 * CHUNK_BYTES);

  assert.equal(
    new TextDecoder().decode(tree.lookupPath("etc/hostname")!.data),
    "box\n",
  );
  assert.deepEqual(tree.lookupPath("big")!.data, bigContents());
  assert.equal(readFile(vm2, path(vm2, "etc/hostname")), "box\n");
  assert.deepEqual(
    concat(vm2.read(path(vm2, "big"), 0, 0, BIG_BYTES)),
    bigContents(),
  );
  assert.equal(vm2.getattr(path(vm2, "etc/hostname")).size, 4);

  // Both names of a hard link see the write.
  const busybox = path(vm1, "bin/busybox");
  writeFile(vm1, busybox, 0, text("elf"));
  assert.equal(readFile(vm1, path(vm1, "bin/sh")), "elf");
  assert.equal(readFile(vm2, path(vm2, "bin/sh")), "ELF");
});

Deno.test("OverlayFs.create() makes a file owned by the caller and opens existing ones", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const etc = path(fs, "etc");
  const made = fs.create(CTX, etc, "new", 0o640, O_CREAT | O_RDWR | O_EXCL);
  assert.ok(made.entry.nodeid >= tree.nextIno);
  assert.equal(made.entry.attr.mode, S_IFREG | 0o640);
  assert.equal(made.entry.attr.uid, 1000);
  assert.equal(made.entry.attr.gid, 100);
  assert.equal(made.entry.attr.size, 0);
  assert.equal(fs.write(made.entry.nodeid, made.fh, 0, text("data")), 4);
  fs.release(made.entry.nodeid, made.fh);
  assert.equal(readFile(fs, fs.lookup(etc, "new").nodeid), "data");
  assert.deepEqual(names(fs, etc), ["hostname", "motd", "new"]);
  assert.deepEqual(tree.list("etc").sort(), ["hostname", "motd"]);

  assertErrno(
    () => fs.create(CTX, etc, "motd", 0o644, O_CREAT | O_EXCL),
    EEXIST,
  );
  assertErrno(
    () => fs.create(CTX, ROOT_NODE_ID, "etc", 0o644, O_CREAT),
    EISDIR,
  );
  const again = fs.create(CTX, etc, "motd", 0o600, O_CREAT | O_RDWR | O_TRUNC);
  assert.equal(again.entry.nodeid, path(fs, "etc/motd"));
  assert.equal(again.entry.attr.mode, S_IFREG | 0o644);
  assert.equal(fs.getattr(again.entry.nodeid).size, 0);
  assert.equal(tree.lookupPath("etc/motd")!.data!.length, 6);
});

Deno.test("OverlayFs.mknod() makes device nodes, FIFOs and empty files", async () => {
  const fs = new OverlayFs(await imageTree());
  const dev = path(fs, "dev");
  const tty = fs.mknod(CTX, dev, "tty", S_IFCHR | 0o620, makeDev(5, 0));
  assert.equal(tty.attr.mode, S_IFCHR | 0o620);
  assert.equal(devMajor(tty.attr.rdev), 5);
  assert.equal(devMinor(tty.attr.rdev), 0);
  const fifo = fs.mknod(CTX, dev, "fifo", S_IFIFO | 0o600, 0);
  assert.equal(fifo.attr.mode, S_IFIFO | 0o600);
  const plain = fs.mknod(CTX, dev, "plain", 0o644, 0);
  assert.equal(plain.attr.mode, S_IFREG | 0o644);
  assert.equal(readFile(fs, plain.nodeid), "");
  assertErrno(() => fs.mknod(CTX, dev, "d", S_IFDIR | 0o755, 0), EINVAL);
  assertErrno(() => fs.mknod(CTX, dev, "null", S_IFCHR | 0o666, 0), EEXIST);
});

Deno.test("OverlayFs.mkdir() and rmdir() keep link counts; rmdir refuses a non-empty directory", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const rootLinks = fs.getattr(ROOT_NODE_ID).nlink;
  const d = fs.mkdir(CTX, ROOT_NODE_ID, "d", 0o750);
  assert.equal(d.attr.mode, S_IFDIR | 0o750);
  assert.equal(d.attr.nlink, 2);
  assert.equal(fs.getattr(ROOT_NODE_ID).nlink, rootLinks + 1);
  const sub = fs.mkdir(CTX, d.nodeid, "sub", 0o755);
  assert.deepEqual(listing(fs, sub.nodeid).slice(0, 2).map((e) => e.ino), [
    sub.nodeid,
    d.nodeid,
  ]);
  assertErrno(() => fs.mkdir(CTX, ROOT_NODE_ID, "d", 0o755), EEXIST);
  assertErrno(() => fs.mkdir(CTX, path(fs, "etc/motd"), "x", 0o755), ENOTDIR);

  assertErrno(() => fs.rmdir(ROOT_NODE_ID, "d"), ENOTEMPTY);
  assertErrno(() => fs.rmdir(ROOT_NODE_ID, "full"), ENOTEMPTY);
  assertErrno(() => fs.rmdir(path(fs, "etc"), "motd"), ENOTDIR);
  assertErrno(() => fs.rmdir(ROOT_NODE_ID, "missing"), ENOENT);
  fs.rmdir(d.nodeid, "sub");
  assert.equal(fs.getattr(d.nodeid).nlink, 2);
  fs.rmdir(ROOT_NODE_ID, "d");
  assert.equal(fs.getattr(ROOT_NODE_ID).nlink, rootLinks);
  assertErrno(() => fs.lookup(ROOT_NODE_ID, "d"), ENOENT);

  fs.unlink(path(fs, "full"), "item");
  fs.rmdir(ROOT_NODE_ID, "full");
  assertErrno(() => fs.lookup(ROOT_NODE_ID, "full"), ENOENT);
  assert.deepEqual(tree.list("full"), ["item"]);
});

Deno.test("OverlayFs.mkdir() in a setgid directory inherits its group and setgid bit", async () => {
  const fs = new OverlayFs(await imageTree());
  const shared = fs.mkdir(CTX, ROOT_NODE_ID, "shared", 0o2775);
  fs.setattr(shared.nodeid, { gid: 500 });
  const inner = fs.mkdir({ ...CTX, gid: 7 }, shared.nodeid, "inner", 0o755);
  assert.equal(inner.attr.gid, 500);
  assert.equal(inner.attr.mode & S_ISGID, S_ISGID);
  const file = fs.create({ ...CTX, gid: 7 }, shared.nodeid, "f", 0o644, 0);
  assert.equal(file.entry.attr.gid, 500);
  assert.equal(file.entry.attr.mode & S_ISGID, 0);
});

Deno.test("OverlayFs.unlink() hides a lower file from this VM only", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const bin = path(fs, "bin");
  const busybox = fs.lookup(bin, "busybox").nodeid;
  fs.unlink(bin, "sh");
  assert.equal(fs.getattr(busybox).nlink, 1);
  assertErrno(() => fs.lookup(bin, "sh"), ENOENT);
  assertErrno(() => fs.unlink(bin, "sh"), ENOENT);
  assertErrno(() => fs.unlink(ROOT_NODE_ID, "etc"), EISDIR);
  assert.deepEqual(names(fs, bin), ["busybox"]);
  assert.deepEqual(tree.list("bin").sort(), ["busybox", "sh"]);
  assert.equal(tree.lookupPath("bin/sh")!.nlink, 2);
  const vm2 = new OverlayFs(tree);
  assert.equal(readFile(vm2, path(vm2, "bin/sh")), "ELF");
});

Deno.test("OverlayFs.rename() moves, replaces and updates directory links", async () => {
  const fs = new OverlayFs(await imageTree());
  const etc = path(fs, "etc");
  const motd = fs.lookup(etc, "motd").nodeid;
  fs.rename(etc, "motd", etc, "motd.old", 0);
  assertErrno(() => fs.lookup(etc, "motd"), ENOENT);
  assert.equal(fs.lookup(etc, "motd.old").nodeid, motd);

  // Replacing a file drops the old one.
  const hostname = fs.lookup(etc, "hostname").nodeid;
  fs.rename(etc, "motd.old", etc, "hostname", 0);
  assert.equal(fs.lookup(etc, "hostname").nodeid, motd);
  assert.deepEqual(names(fs, etc), ["hostname"]);
  fs.forget(hostname, 1);
  assertErrno(() => fs.getattr(hostname), [ENOENT, ESTALE]);

  // A directory moved to another parent.
  const rootLinks = fs.getattr(ROOT_NODE_ID).nlink;
  const usr = path(fs, "usr");
  const usrLinks = fs.getattr(usr).nlink;
  fs.rename(ROOT_NODE_ID, "etc", usr, "etc", 0);
  assert.equal(fs.getattr(ROOT_NODE_ID).nlink, rootLinks - 1);
  assert.equal(fs.getattr(usr).nlink, usrLinks + 1);
  assert.equal(listing(fs, etc)[1]!.ino, usr);
  assert.equal(fs.lookup(usr, "etc").nodeid, etc);

  // A directory over an empty directory.
  const empty = fs.mkdir(CTX, ROOT_NODE_ID, "empty", 0o755).nodeid;
  fs.rename(usr, "etc", ROOT_NODE_ID, "empty", 0);
  assert.equal(fs.lookup(ROOT_NODE_ID, "empty").nodeid, etc);
  assert.equal(fs.getattr(ROOT_NODE_ID).nlink, rootLinks);
  assert.equal(fs.getattr(empty).nlink, 0);
  fs.forget(empty, 1);
  assertErrno(() => fs.getattr(empty), [ENOENT, ESTALE]);
});

Deno.test("OverlayFs.rename() refuses what rename(2) refuses", async () => {
  const fs = new OverlayFs(await imageTree());
  const etc = path(fs, "etc");
  const usr = path(fs, "usr");
  assertErrno(
    () => fs.rename(etc, "motd", etc, "hostname", RENAME_NOREPLACE),
    EEXIST,
  );
  assert.equal(readFile(fs, path(fs, "etc/hostname")), "box\n");
  assertErrno(() => fs.rename(ROOT_NODE_ID, "usr", usr, "lib", 0), EINVAL);
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "usr", path(fs, "usr/lib"), "x", 0),
    EINVAL,
  );
  assertErrno(() => fs.rename(ROOT_NODE_ID, "usr", usr, "x", 0), EINVAL);
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "etc", ROOT_NODE_ID, "full", 0),
    ENOTEMPTY,
  );
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "etc", ROOT_NODE_ID, "big", 0),
    ENOTDIR,
  );
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "big", ROOT_NODE_ID, "etc", 0),
    EISDIR,
  );
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "nope", ROOT_NODE_ID, "x", 0),
    ENOENT,
  );
  assertErrno(
    () =>
      fs.rename(
        ROOT_NODE_ID,
        "big",
        ROOT_NODE_ID,
        "x",
        RENAME_NOREPLACE | RENAME_EXCHANGE,
      ),
    EINVAL,
  );
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "big", ROOT_NODE_ID, "x", RENAME_WHITEOUT),
    EINVAL,
  );
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "big", path(fs, "etc/motd"), "x", 0),
    ENOTDIR,
  );
  assert.deepEqual(names(fs, usr), ["lib"]);
  assert.deepEqual(names(fs, etc), ["hostname", "motd"]);
});

Deno.test("OverlayFs.rename() with RENAME_EXCHANGE swaps two names", async () => {
  const fs = new OverlayFs(await imageTree());
  const etc = path(fs, "etc");
  const motd = fs.lookup(etc, "motd").nodeid;
  const hostname = fs.lookup(etc, "hostname").nodeid;
  fs.rename(etc, "motd", etc, "hostname", RENAME_EXCHANGE);
  assert.equal(fs.lookup(etc, "motd").nodeid, hostname);
  assert.equal(fs.lookup(etc, "hostname").nodeid, motd);
  assert.equal(readFile(fs, motd), "hello\n");

  // A directory and a file in different parents.
  const usr = path(fs, "usr");
  const rootLinks = fs.getattr(ROOT_NODE_ID).nlink;
  const usrLinks = fs.getattr(usr).nlink;
  fs.rename(ROOT_NODE_ID, "etc", usr, "lib", RENAME_EXCHANGE);
  const lib = fs.lookup(ROOT_NODE_ID, "etc");
  assert.equal(lib.attr.mode & S_IFMT, S_IFDIR);
  assert.deepEqual(names(fs, lib.nodeid), ["libc.so"]);
  assert.equal(listing(fs, lib.nodeid)[1]!.ino, ROOT_NODE_ID);
  assert.equal(fs.lookup(usr, "lib").nodeid, etc);
  assert.equal(listing(fs, etc)[1]!.ino, usr);
  assert.equal(fs.getattr(ROOT_NODE_ID).nlink, rootLinks);
  assert.equal(fs.getattr(usr).nlink, usrLinks);

  // A file swapped with a directory moves a subdirectory link.
  fs.rename(ROOT_NODE_ID, "big", usr, "lib", RENAME_EXCHANGE);
  assert.equal(fs.getattr(ROOT_NODE_ID).nlink, rootLinks + 1);
  assert.equal(fs.getattr(usr).nlink, usrLinks - 1);
  assert.equal(fs.lookup(ROOT_NODE_ID, "big").nodeid, etc);

  assertErrno(
    () => fs.rename(usr, "lib", ROOT_NODE_ID, "missing", RENAME_EXCHANGE),
    ENOENT,
  );
  // A directory swapped into its own subtree.
  fs.mkdir(CTX, etc, "inner", 0o755);
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "big", etc, "inner", RENAME_EXCHANGE),
    EINVAL,
  );
});

Deno.test("OverlayFs.link() adds a name for the same inode", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const motd = path(fs, "etc/motd");
  const link = fs.link(motd, ROOT_NODE_ID, "motd2");
  assert.equal(link.nodeid, motd);
  assert.equal(link.attr.nlink, 2);
  writeFile(fs, motd, 0, text("HELLO"));
  assert.equal(
    readFile(fs, fs.lookup(ROOT_NODE_ID, "motd2").nodeid),
    "HELLO\n",
  );
  fs.unlink(path(fs, "etc"), "motd");
  assert.equal(fs.getattr(motd).nlink, 1);
  assert.equal(readFile(fs, motd), "HELLO\n");
  assert.equal(tree.lookupPath("etc/motd")!.nlink, 1);
  assert.equal(tree.lookupPath("motd2"), undefined);

  assertErrno(() => fs.link(path(fs, "etc"), ROOT_NODE_ID, "etc2"), EPERM);
  assertErrno(() => fs.link(motd, ROOT_NODE_ID, "big"), EEXIST);
  assertErrno(() => fs.link(motd, motd, "x"), ENOTDIR);
});

Deno.test("OverlayFs.symlink() and readlink() keep the target", async () => {
  const fs = new OverlayFs(await imageTree());
  assert.equal(fs.readlink(path(fs, "lib")), "usr/lib");
  const link = fs.symlink(CTX, ROOT_NODE_ID, "escape", "../../etc/shadow");
  assert.equal(link.attr.mode, S_IFLNK | 0o777);
  assert.equal(link.attr.size, "../../etc/shadow".length);
  assert.equal(link.attr.uid, 1000);
  assert.equal(fs.readlink(link.nodeid), "../../etc/shadow");
  const wide = fs.symlink(CTX, ROOT_NODE_ID, "wide", "é");
  assert.equal(wide.attr.size, 2);
  assertErrno(() => fs.readlink(path(fs, "etc/motd")), EINVAL);
  assertErrno(() => fs.symlink(CTX, ROOT_NODE_ID, "empty", ""), ENOENT);
  assertErrno(
    () => fs.symlink(CTX, ROOT_NODE_ID, "long", "x".repeat(4096)),
    ENAMETOOLONG,
  );
  assertErrno(() => fs.symlink(CTX, ROOT_NODE_ID, "lib", "x"), EEXIST);
});

Deno.test("OverlayFs.setattr() truncates, extends, changes modes, owners and times", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const motd = path(fs, "etc/motd");
  assert.equal(fs.setattr(motd, { size: 2 }).size, 2);
  assert.equal(readFile(fs, motd), "he");
  assert.equal(fs.setattr(motd, { size: 5 }).size, 5);
  assert.equal(readFile(fs, motd), "he\0\0\0");
  assert.equal(
    new TextDecoder().decode(tree.lookupPath("etc/motd")!.data),
    "hello\n",
  );

  const big = path(fs, "big");
  fs.setattr(big, { size: CHUNK_BYTES + 1 });
  fs.setattr(big, { size: BIG_BYTES });
  const expected = new Uint8Array(BIG_BYTES);
  expected.set(bigContents().subarray(0, CHUNK_BYTES + 1));
  assert.deepEqual(concat(fs.read(big, 0, 0, BIG_BYTES)), expected);

  const attr = fs.setattr(motd, {
    mode: S_IFDIR | 0o4700,
    uid: 7,
    gid: 8,
    atime: { sec: 10, nsec: 1 },
    mtime: { sec: 20, nsec: 2 },
  });
  assert.equal(attr.mode, S_IFREG | 0o4700);
  assert.equal(attr.uid, 7);
  assert.equal(attr.gid, 8);
  assert.deepEqual(attr.atime, { sec: 10, nsec: 1 });
  assert.deepEqual(attr.mtime, { sec: 20, nsec: 2 });
  assert.ok(attr.ctime.sec > 1_600_000_000);
  const touched = fs.setattr(motd, { mtime: "now" });
  assert.ok(touched.mtime.sec >= attr.ctime.sec);

  assert.equal(tree.lookupPath("etc/motd")!.mode, S_IFREG | 0o644);
  assert.equal(tree.lookupPath("etc/motd")!.uid, 0);
  assertErrno(() => fs.setattr(path(fs, "etc"), { size: 0 }), EISDIR);
  assertErrno(() => fs.setattr(path(fs, "lib"), { size: 0 }), EINVAL);
  assertErrno(() => fs.setattr(motd, { size: -1 }), EINVAL);
  assert.equal(
    fs.setattr(path(fs, "etc"), { mode: 0o700 }).mode,
    S_IFDIR | 0o700,
  );
});

Deno.test("OverlayFs xattr calls set, get, list and remove per VM", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const busybox = path(fs, "bin/busybox");
  assert.deepEqual(fs.listxattr(busybox), ["user.origin"]);
  assert.equal(
    new TextDecoder().decode(fs.getxattr(busybox, "user.origin")),
    "image",
  );

  const value = text("v1");
  fs.setxattr(busybox, "user.new", value, XATTR_CREATE);
  value[0] = 0;
  assert.equal(
    new TextDecoder().decode(fs.getxattr(busybox, "user.new")),
    "v1",
  );
  assertErrno(
    () => fs.setxattr(busybox, "user.new", text("x"), XATTR_CREATE),
    EEXIST,
  );
  assertErrno(
    () => fs.setxattr(busybox, "user.none", text("x"), XATTR_REPLACE),
    ENODATA,
  );
  fs.setxattr(busybox, "user.new", text("v2"), XATTR_REPLACE);
  assert.equal(
    new TextDecoder().decode(fs.getxattr(busybox, "user.new")),
    "v2",
  );
  assert.deepEqual(fs.listxattr(busybox).sort(), ["user.new", "user.origin"]);

  fs.removexattr(busybox, "user.origin");
  assertErrno(() => fs.getxattr(busybox, "user.origin"), ENODATA);
  assertErrno(() => fs.removexattr(busybox, "user.origin"), ENODATA);
  assert.deepEqual(fs.listxattr(busybox), ["user.new"]);
  // The hard link is the same inode.
  assert.deepEqual(fs.listxattr(path(fs, "bin/sh")), ["user.new"]);

  assertErrno(
    () =>
      fs.setxattr(busybox, "user.big", new Uint8Array(XATTR_SIZE_MAX + 1), 0),
    E2BIG,
  );
  assertErrno(() => fs.setxattr(busybox, "", text("x"), 0), EINVAL);
  assertErrno(() => fs.getxattr(path(fs, "etc"), "user.x"), ENODATA);

  assert.deepEqual([...tree.lookupPath("bin/busybox")!.xattrs.keys()], [
    "user.origin",
  ]);
  const vm2 = new OverlayFs(tree);
  assert.deepEqual(vm2.listxattr(path(vm2, "bin/busybox")), ["user.origin"]);
});

Deno.test("OverlayFs.fallocate() allocates, keeps the size, punches and zeroes", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  const motd = path(fs, "etc/motd");
  const { fh } = fs.open(motd, O_RDWR);
  fs.fallocate(motd, fh, 0, 10, 0);
  assert.equal(fs.getattr(motd).size, 10);
  fs.fallocate(motd, fh, 0, 100, FALLOC_FL_KEEP_SIZE);
  assert.equal(fs.getattr(motd).size, 10);
  fs.fallocate(motd, fh, 1, 2, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  assert.equal(decode(fs.read(motd, fh, 0, 100)), "h\0\0lo\n\0\0\0\0");
  fs.fallocate(motd, fh, 4, 20, FALLOC_FL_ZERO_RANGE);
  assert.equal(fs.getattr(motd).size, 24);
  assert.equal(decode(fs.read(motd, fh, 0, 100)), "h\0\0l" + "\0".repeat(20));
  fs.fallocate(motd, fh, 0, 30, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
  assert.equal(fs.getattr(motd).size, 24);
  assert.equal(decode(fs.read(motd, fh, 0, 100)), "\0".repeat(24));

  assertErrno(
    () => fs.fallocate(motd, fh, 0, 1, FALLOC_FL_PUNCH_HOLE),
    EOPNOTSUPP,
  );
  assertErrno(() => fs.fallocate(motd, fh, 0, 0, 0), EINVAL);
  assertErrno(() => fs.fallocate(motd, fh, 0, 1, 0x40), EOPNOTSUPP);
  assertErrno(() => fs.fallocate(path(fs, "etc"), fh, 0, 1, 0), EISDIR);
  fs.release(motd, fh);
  assert.equal(
    new TextDecoder().decode(tree.lookupPath("etc/motd")!.data),
    "hello\n",
  );
});

Deno.test("OverlayFs.lseek() finds data and holes", async () => {
  const fs = new OverlayFs(await imageTree());
  const big = path(fs, "big");
  assert.equal(fs.lseek(big, 0, 0, SEEK_DATA), 0);
  assert.equal(fs.lseek(big, 0, 10, SEEK_HOLE), BIG_BYTES);
  assertErrno(() => fs.lseek(big, 0, BIG_BYTES, SEEK_DATA), ENXIO);
  assertErrno(() => fs.lseek(big, 0, BIG_BYTES, SEEK_HOLE), ENXIO);

  const sparse = fs.create(CTX, ROOT_NODE_ID, "sparse", 0o644, O_RDWR);
  const id = sparse.entry.nodeid;
  fs.write(id, sparse.fh, 0, text("a"));
  fs.write(id, sparse.fh, 3 * CHUNK_BYTES, text("b"));
  fs.setattr(id, { size: 5 * CHUNK_BYTES });
  assert.equal(fs.lseek(id, sparse.fh, 0, SEEK_DATA), 0);
  assert.equal(fs.lseek(id, sparse.fh, 0, SEEK_HOLE), CHUNK_BYTES);
  assert.equal(
    fs.lseek(id, sparse.fh, CHUNK_BYTES, SEEK_DATA),
    3 * CHUNK_BYTES,
  );
  assert.equal(
    fs.lseek(id, sparse.fh, 3 * CHUNK_BYTES, SEEK_HOLE),
    4 * CHUNK_BYTES,
  );
  assertErrno(() => fs.lseek(id, sparse.fh, 4 * CHUNK_BYTES, SEEK_DATA), ENXIO);
  assert.equal(
    fs.lseek(id, sparse.fh, 4 * CHUNK_BYTES + 1, SEEK_HOLE),
    4 * CHUNK_BYTES + 1,
  );
  assertErrno(() => fs.lseek(id, sparse.fh, 0, 0), EINVAL);
  assertErrno(() => fs.lseek(path(fs, "etc"), 0, 0, SEEK_DATA), EISDIR);
});

Deno.test("OverlayFs refuses writes past maxBytes with ENOSPC and frees space again", async () => {
  const fs = new OverlayFs(await imageTree(), { maxBytes: 4 * CHUNK_BYTES });
  const made = fs.create(CTX, ROOT_NODE_ID, "fill", 0o644, O_RDWR);
  const id = made.entry.nodeid;
  const chunk = new Uint8Array(CHUNK_BYTES).fill(1);
  let written = 0;
  let refused: FsError | undefined;
  for (let i = 0; i < 10 && refused === undefined; i++) {
    try {
      const n = fs.write(id, made.fh, written, chunk);
      written += n;
      if (n < chunk.length) break;
    } catch (e) {
      if (!(e instanceof FsError)) throw e;
      refused = e;
    }
  }
  assert.equal(refused?.errno, ENOSPC);
  assert.ok(written < 4 * CHUNK_BYTES, `wrote ${written}`);
  assert.ok(fs.usedBytes <= 4 * CHUNK_BYTES);
  assert.equal(
    fs.statfs(ROOT_NODE_ID).bfree,
    Math.floor((4 * CHUNK_BYTES - fs.usedBytes) / 4096),
  );
  assertErrno(
    () => fs.setxattr(id, "user.x", new Uint8Array(CHUNK_BYTES), 0),
    ENOSPC,
  );
  // Holes cost nothing.
  fs.setattr(id, { size: 1024 * 1024 * 1024 });

  fs.release(id, made.fh);
  fs.unlink(ROOT_NODE_ID, "fill");
  fs.forget(id, 1);
  assert.ok(fs.usedBytes < CHUNK_BYTES, `still ${fs.usedBytes} bytes`);
  const again = fs.create(CTX, ROOT_NODE_ID, "again", 0o644, O_RDWR);
  assert.equal(fs.write(again.entry.nodeid, again.fh, 0, chunk), CHUNK_BYTES);
});

Deno.test("OverlayFs refuses new inodes past maxNodes with ENOSPC", async () => {
  const fs = new OverlayFs(await imageTree(), { maxNodes: 2 });
  const a = fs.mkdir(CTX, ROOT_NODE_ID, "a", 0o755);
  fs.mknod(CTX, ROOT_NODE_ID, "b", 0o644, 0);
  assertErrno(() => fs.symlink(CTX, ROOT_NODE_ID, "c", "x"), ENOSPC);
  assert.equal(fs.statfs(ROOT_NODE_ID).ffree, 0);
  fs.rmdir(ROOT_NODE_ID, "a");
  // Still looked up: it still counts.
  assertErrno(() => fs.symlink(CTX, ROOT_NODE_ID, "c", "x"), ENOSPC);
  fs.forget(a.nodeid, 1);
  fs.symlink(CTX, ROOT_NODE_ID, "c", "x");
});

Deno.test("OverlayFs.forget() keeps a node ID valid while it is looked up or open", async () => {
  const fs = new OverlayFs(await imageTree());
  const made = fs.create(CTX, ROOT_NODE_ID, "tmp", 0o600, O_RDWR);
  const id = made.entry.nodeid;
  fs.write(id, made.fh, 0, text("still here"));
  assert.equal(fs.lookup(ROOT_NODE_ID, "tmp").nodeid, id);
  fs.unlink(ROOT_NODE_ID, "tmp");
  assert.equal(fs.getattr(id).nlink, 0);
  assert.equal(decode(fs.read(id, made.fh, 0, 100)), "still here");
  fs.forget(id, 1);
  assert.equal(fs.getattr(id).size, 10);
  fs.forget(id, 1);
  // Still open.
  assert.equal(fs.getattr(id).size, 10);
  fs.release(id, made.fh);
  assertErrno(() => fs.getattr(id), [ENOENT, ESTALE]);
  assertErrno(() => fs.open(id, O_RDONLY), [ENOENT, ESTALE]);

  // A linked node outlives its lookups.
  const motd = path(fs, "etc/motd");
  fs.forget(motd, 100);
  assert.equal(fs.getattr(motd).size, 6);
  fs.forget(987654, 1);
});

Deno.test("OverlayFs answers unknown node IDs with ENOENT or ESTALE", async () => {
  const tree = await imageTree();
  const fs = new OverlayFs(tree);
  // In the tree but never handed out, and never in the tree at all.
  const unseen = tree.lookupPath("etc/motd")!.ino;
  for (const id of [unseen, 999_999, 0, -1]) {
    const calls: [string, () => unknown][] = [
      ["getattr", () => fs.getattr(id)],
      ["lookup", () => fs.lookup(id, "x")],
      ["setattr", () => fs.setattr(id, { mode: 0o777 })],
      ["readlink", () => fs.readlink(id)],
      ["open", () => fs.open(id, O_RDONLY)],
      ["opendir", () => fs.opendir(id, 0)],
      ["read", () => fs.read(id, 1, 0, 1)],
      ["write", () => fs.write(id, 1, 0, text("x"))],
      ["mkdir", () => fs.mkdir(CTX, id, "x", 0o755)],
      ["create", () => fs.create(CTX, id, "x", 0o644, 0)],
      ["unlink", () => fs.unlink(id, "x")],
      ["rename", () => fs.rename(id, "x", ROOT_NODE_ID, "y", 0)],
      ["link", () => fs.link(id, ROOT_NODE_ID, "y")],
      ["setxattr", () => fs.setxattr(id, "user.x", text("x"), 0)],
      ["listxattr", () => fs.listxattr(id)],
      ["access", () => fs.access(id, 0)],
    ];
    for (const [, call] of calls) assertErrno(call, [ENOENT, ESTALE]);
  }
  assert.equal(
    new TextDecoder().decode(tree.lookupPath("etc/motd")!.data),
    "hello\n",
  );
  fs.release(1, 12345);
  fs.releasedir(1, 12345);
});

Deno.test("OverlayFs refuses names that are not one path component", async () => {
  const fs = new OverlayFs(await imageTree());
  const etc = path(fs, "etc");
  const motd = path(fs, "etc/motd");
  const bad: [string, number][] = [
    ["..", EINVAL],
    [".", EINVAL],
    ["", EINVAL],
    ["a/b", EINVAL],
    ["../etc", EINVAL],
    ["a\0b", EINVAL],
    ["x".repeat(256), ENAMETOOLONG],
    ["é".repeat(128), ENAMETOOLONG],
  ];
  for (const [name, errno] of bad) {
    assertErrno(() => fs.lookup(etc, name), errno);
    assertErrno(() => fs.create(CTX, etc, name, 0o644, 0), errno);
    assertErrno(() => fs.mkdir(CTX, etc, name, 0o755), errno);
    assertErrno(() => fs.mknod(CTX, etc, name, 0o644, 0), errno);
    assertErrno(() => fs.symlink(CTX, etc, name, "t"), errno);
    assertErrno(() => fs.unlink(etc, name), errno);
    assertErrno(() => fs.rmdir(etc, name), errno);
    assertErrno(() => fs.rename(etc, "motd", etc, name, 0), errno);
    assertErrno(() => fs.rename(etc, name, etc, "x", 0), errno);
    assertErrno(() => fs.link(motd, etc, name), errno);
  }
  // A 255-byte name is fine.
  fs.mkdir(CTX, etc, "x".repeat(255), 0o755);
  assert.deepEqual(names(fs, etc), ["hostname", "motd", "x".repeat(255)]);
});

Deno.test("OverlayFs.destroy() drops handles and lookups, keeps contents", async () => {
  const fs = new OverlayFs(await imageTree());
  const made = fs.create(CTX, ROOT_NODE_ID, "kept", 0o644, O_RDWR);
  fs.write(made.entry.nodeid, made.fh, 0, text("kept"));
  const gone = fs.create(CTX, ROOT_NODE_ID, "gone", 0o644, O_RDWR);
  fs.unlink(ROOT_NODE_ID, "gone");
  fs.opendir(ROOT_NODE_ID, 0);
  assert.equal(fs.handleCount, 3);
  fs.destroy();
  assert.equal(fs.handleCount, 0);
  assertErrno(() => fs.getattr(gone.entry.nodeid), [ENOENT, ESTALE]);
  assert.equal(readFile(fs, fs.lookup(ROOT_NODE_ID, "kept").nodeid), "kept");
});
