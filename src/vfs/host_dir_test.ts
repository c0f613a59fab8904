import assert from "node:assert/strict";
import {
  EACCES,
  EBADF,
  EEXIST,
  EINVAL,
  EISDIR,
  ELOOP,
  ENAMETOOLONG,
  ENOENT,
  ENOSYS,
  ENOTDIR,
  ENOTEMPTY,
  ENXIO,
  EOPNOTSUPP,
  EPERM,
  EROFS,
  ESTALE,
  FsError,
} from "./errno.ts";
import {
  type DirEntry,
  FALLOC_FL_KEEP_SIZE,
  type FsContext,
  O_APPEND,
  O_CREAT,
  O_EXCL,
  O_RDONLY,
  O_RDWR,
  O_TRUNC,
  O_WRONLY,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  ROOT_NODE_ID,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  SEEK_DATA,
  SEEK_HOLE,
  W_OK,
} from "./filesystem.ts";
import { HostDirFs } from "./host_dir.ts";

const CTX: FsContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
/** Every errno a refused escape may answer with. */
const REFUSED = [EACCES, EINVAL, ENOENT, ENOTDIR, ESTALE, EPERM, ELOOP];

function text(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function decode(pieces: Uint8Array[]): string {
  return pieces.map((p) => new TextDecoder().decode(p)).join("");
}

function assertErrno(f: () => unknown, errno: number | number[]): void {
  const allowed = Array.isArray(errno) ? errno : [errno];
  assert.throws(
    () => {
      const result = f();
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

/**
 * A temporary directory holding `share/` (the root handed to HostDirFs)
 * and `outside/`, which no call may change. The share has symlinks that
 * point outside in every way.
 */
interface Sandbox {
  base: string;
  share: string;
  outside: string;
  /** Fails the test if anything under `outside/` (or beside the share) changed. */
  assertOutsideUnchanged(): void;
  [Symbol.dispose](): void;
}

function snapshot(dir: string): string {
  const lines: string[] = [];
  const walk = (path: string) => {
    const info = Deno.lstatSync(path);
    let line = `${path} mode=${info.mode?.toString(8)} size=${info.size} ` +
      `nlink=${info.nlink} mtime=${info.mtime?.getTime()} uid=${info.uid}`;
    if (info.isSymlink) line += ` -> ${Deno.readLinkSync(path)}`;
    if (info.isFile) line += ` data=${Deno.readTextFileSync(path)}`;
    lines.push(line);
    if (info.isDirectory) {
      const names = [...Deno.readDirSync(path)].map((e) => e.name).sort();
      for (const name of names) walk(`${path}/${name}`);
    }
  };
  walk(dir);
  return lines.join("\n");
}

function sandbox(): Sandbox {
  const base = Deno.realPathSync(Deno.makeTempDirSync({ prefix: "host_dir_" }));
  const share = `${base}/share`;
  const outside = `${base}/outside`;
  Deno.mkdirSync(`${outside}/dir`, { recursive: true });
  Deno.writeTextFileSync(`${outside}/secret.txt`, "secret");
  Deno.writeTextFileSync(`${outside}/dir/inner.txt`, "outside inner");
  Deno.mkdirSync(`${share}/sub`, { recursive: true });
  Deno.writeTextFileSync(`${share}/file.txt`, "hello");
  Deno.writeTextFileSync(`${share}/sub/inner.txt`, "inner");
  Deno.symlinkSync(`${outside}/secret.txt`, `${share}/abs`);
  Deno.symlinkSync(outside, `${share}/absdir`);
  Deno.symlinkSync("../outside/secret.txt", `${share}/up`);
  Deno.symlinkSync("../..", `${share}/upup`);
  Deno.symlinkSync("../../outside", `${share}/sub/out`);
  const before = snapshot(outside);
  const beside = [...Deno.readDirSync(base)].map((e) => e.name).sort();
  return {
    base,
    share,
    outside,
    assertOutsideUnchanged() {
      assert.equal(snapshot(outside), before);
      assert.deepEqual(
        [...Deno.readDirSync(base)].map((e) => e.name).sort(),
        beside,
      );
    },
    [Symbol.dispose]() {
      Deno.removeSync(base, { recursive: true });
    },
  };
}

function listing(fs: HostDirFs, nodeid: number): DirEntry[] {
  const { fh } = fs.opendir(nodeid, 0);
  try {
    return [...fs.readdir(nodeid, fh, 0)];
  } finally {
    fs.releasedir(nodeid, fh);
  }
}

function readFile(fs: HostDirFs, nodeid: number): string {
  const { fh } = fs.open(nodeid, O_RDONLY);
  try {
    return decode(fs.read(nodeid, fh, 0, 1 << 20));
  } finally {
    fs.release(nodeid, fh);
  }
}

Deno.test("HostDirFs() refuses a root that is not a directory", () => {
  using box = sandbox();
  assert.throws(
    () => new HostDirFs(`${box.share}/file.txt`),
    /Cannot share host directory ".*file\.txt": it is not a directory/,
  );
  assert.throws(
    () => new HostDirFs(`${box.base}/missing`),
    /Cannot share host directory/,
  );
  // A symlink to a directory is resolved once.
  const fs = new HostDirFs(`${box.share}/absdir`, { readOnly: true });
  assert.equal(fs.root, box.outside);
});

Deno.test("HostDirFs reads and writes host files", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  assert.equal(fs.root, box.share);
  const file = fs.lookup(ROOT_NODE_ID, "file.txt");
  assert.equal(file.attr.size, 5);
  assert.equal(file.attr.mode & S_IFMT, S_IFREG);
  assert.equal(file.attr.ino, Deno.lstatSync(`${box.share}/file.txt`).ino);
  assert.equal(readFile(fs, file.nodeid), "hello");

  const { fh } = fs.open(file.nodeid, O_RDWR);
  assert.equal(fs.write(file.nodeid, fh, 0, text("HE")), 2);
  assert.equal(fs.write(file.nodeid, fh, 7, text("!")), 1);
  assert.equal(decode(fs.read(file.nodeid, fh, 1, 3)), "Ell");
  assert.deepEqual(fs.read(file.nodeid, fh, 100, 3).map((p) => p.length), [0]);
  fs.fsync(file.nodeid, fh, false);
  fs.flush(file.nodeid, fh);
  fs.release(file.nodeid, fh);
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "HEllo\0\0!");

  const { fh: append } = fs.open(file.nodeid, O_WRONLY | O_APPEND);
  fs.write(file.nodeid, append, 0, text("+"));
  fs.release(file.nodeid, append);
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "HEllo\0\0!+");

  const { fh: trunc } = fs.open(file.nodeid, O_WRONLY | O_TRUNC);
  fs.release(file.nodeid, trunc);
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "");

  assertErrno(() => fs.read(file.nodeid, 999, 0, 1), EBADF);
  assertErrno(() => fs.open(ROOT_NODE_ID, O_RDONLY), EISDIR);
  assertErrno(() => fs.lookup(ROOT_NODE_ID, "missing"), ENOENT);
  assertErrno(() => fs.lookup(file.nodeid, "x"), ENOTDIR);
  box.assertOutsideUnchanged();
});

Deno.test("HostDirFs makes, renames and removes host entries", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const made = fs.create(
    CTX,
    ROOT_NODE_ID,
    "new.txt",
    0o600,
    O_CREAT | O_EXCL | O_RDWR,
  );
  fs.write(made.entry.nodeid, made.fh, 0, text("abc"));
  fs.release(made.entry.nodeid, made.fh);
  assert.equal(Deno.readTextFileSync(`${box.share}/new.txt`), "abc");
  assert.equal(Deno.lstatSync(`${box.share}/new.txt`).mode! & 0o7777, 0o600);
  assertErrno(
    () => fs.create(CTX, ROOT_NODE_ID, "new.txt", 0o600, O_CREAT | O_EXCL),
    EEXIST,
  );
  assertErrno(
    () => fs.create(CTX, ROOT_NODE_ID, "sub", 0o600, O_CREAT),
    EISDIR,
  );
  const reopened = fs.create(
    CTX,
    ROOT_NODE_ID,
    "new.txt",
    0o600,
    O_CREAT | O_RDWR | O_TRUNC,
  );
  assert.equal(reopened.entry.nodeid, made.entry.nodeid);
  fs.release(reopened.entry.nodeid, reopened.fh);
  assert.equal(Deno.readTextFileSync(`${box.share}/new.txt`), "");

  const dir = fs.mkdir(CTX, ROOT_NODE_ID, "d", 0o700);
  assert.equal(dir.attr.mode, S_IFDIR | 0o700);
  assert.ok(Deno.lstatSync(`${box.share}/d`).isDirectory);
  assertErrno(() => fs.mkdir(CTX, ROOT_NODE_ID, "d", 0o700), EEXIST);

  const node = fs.mknod(CTX, dir.nodeid, "empty", S_IFREG | 0o600, 0);
  assert.equal(node.attr.size, 0);
  assert.ok(Deno.lstatSync(`${box.share}/d/empty`).isFile);
  assertErrno(
    () => fs.mknod(CTX, dir.nodeid, "tty", S_IFCHR | 0o600, 0x501),
    EPERM,
  );

  fs.rename(ROOT_NODE_ID, "new.txt", dir.nodeid, "moved.txt", 0);
  assert.equal(Deno.readTextFileSync(`${box.share}/d/moved.txt`), "");
  assert.throws(
    () => Deno.lstatSync(`${box.share}/new.txt`),
    Deno.errors.NotFound,
  );
  // The node followed the rename.
  assert.equal(
    fs.getattr(made.entry.nodeid).ino,
    Deno.lstatSync(`${box.share}/d/moved.txt`).ino,
  );
  const sub = fs.lookup(ROOT_NODE_ID, "sub");
  const inner = fs.lookup(sub.nodeid, "inner.txt");
  fs.rename(ROOT_NODE_ID, "sub", dir.nodeid, "sub2", 0);
  assert.equal(readFile(fs, inner.nodeid), "inner");
  assert.deepEqual(
    listing(fs, sub.nodeid).map((e) => e.name).sort(),
    [".", "..", "inner.txt", "out"],
  );

  assertErrno(
    () =>
      fs.rename(dir.nodeid, "sub2", dir.nodeid, "moved.txt", RENAME_NOREPLACE),
    EEXIST,
  );
  assertErrno(() => fs.rename(ROOT_NODE_ID, "d", sub.nodeid, "x", 0), EINVAL);
  assertErrno(() => fs.rename(ROOT_NODE_ID, "d", dir.nodeid, "x", 0), EINVAL);
  assertErrno(
    () =>
      fs.rename(ROOT_NODE_ID, "file.txt", ROOT_NODE_ID, "x", RENAME_EXCHANGE),
    EINVAL,
  );
  assertErrno(
    () => fs.rename(ROOT_NODE_ID, "missing", ROOT_NODE_ID, "x", 0),
    ENOENT,
  );
  assert.ok(Deno.lstatSync(`${box.share}/d/sub2`).isDirectory);

  const link = fs.link(inner.nodeid, ROOT_NODE_ID, "hard.txt");
  assert.equal(link.attr.nlink, 2);
  assert.equal(
    Deno.lstatSync(`${box.share}/hard.txt`).ino,
    Deno.lstatSync(`${box.share}/d/sub2/inner.txt`).ino,
  );
  assertErrno(() => fs.link(dir.nodeid, ROOT_NODE_ID, "dirlink"), EPERM);
  assertErrno(() => fs.link(inner.nodeid, ROOT_NODE_ID, "file.txt"), EEXIST);

  const sym = fs.symlink(CTX, ROOT_NODE_ID, "sym", "d/sub2/inner.txt");
  assert.equal(sym.attr.mode & S_IFMT, S_IFLNK);
  assert.equal(Deno.readLinkSync(`${box.share}/sym`), "d/sub2/inner.txt");
  assert.equal(fs.readlink(sym.nodeid), "d/sub2/inner.txt");
  assertErrno(() => fs.readlink(inner.nodeid), EINVAL);
  assertErrno(() => fs.symlink(CTX, ROOT_NODE_ID, "empty", ""), ENOENT);
  assertErrno(
    () => fs.symlink(CTX, ROOT_NODE_ID, "long", "x".repeat(4096)),
    ENAMETOOLONG,
  );

  assertErrno(() => fs.unlink(ROOT_NODE_ID, "d"), EISDIR);
  assertErrno(() => fs.rmdir(ROOT_NODE_ID, "d"), ENOTEMPTY);
  assertErrno(() => fs.rmdir(ROOT_NODE_ID, "file.txt"), ENOTDIR);
  fs.unlink(ROOT_NODE_ID, "hard.txt");
  fs.unlink(ROOT_NODE_ID, "sym");
  fs.unlink(dir.nodeid, "moved.txt");
  fs.unlink(dir.nodeid, "empty");
  fs.unlink(sub.nodeid, "inner.txt");
  fs.unlink(sub.nodeid, "out");
  fs.rmdir(dir.nodeid, "sub2");
  fs.rmdir(ROOT_NODE_ID, "d");
  assert.deepEqual(
    [...Deno.readDirSync(box.share)].map((e) => e.name).sort(),
    ["abs", "absdir", "file.txt", "up", "upup"],
  );
  assertErrno(() => fs.getattr(dir.nodeid), [ENOENT, ESTALE]);
  box.assertOutsideUnchanged();
});

Deno.test("HostDirFs.setattr() truncates, chmods and sets times on the host", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const file = fs.lookup(ROOT_NODE_ID, "file.txt").nodeid;
  assert.equal(fs.setattr(file, { size: 2 }).size, 2);
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "he");
  assert.equal(fs.setattr(file, { size: 4 }).size, 4);
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "he\0\0");
  const attr = fs.setattr(file, {
    mode: 0o600,
    atime: { sec: 1_000_000, nsec: 0 },
    mtime: { sec: 2_000_000, nsec: 0 },
  });
  assert.equal(attr.mode, S_IFREG | 0o600);
  assert.equal(attr.mtime.sec, 2_000_000);
  assert.equal(
    Deno.lstatSync(`${box.share}/file.txt`).mtime?.getTime(),
    2_000_000_000,
  );

  // Through a handle, the handle must be the node's.
  const { fh } = fs.open(file, O_RDWR);
  assert.equal(fs.setattr(file, { size: 1 }, fh).size, 1);
  const inner =
    fs.lookup(fs.lookup(ROOT_NODE_ID, "sub").nodeid, "inner.txt").nodeid;
  assertErrno(() => fs.setattr(inner, { size: 0 }, fh), EBADF);
  assert.equal(Deno.readTextFileSync(`${box.share}/sub/inner.txt`), "inner");
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "h");
  fs.release(file, fh);

  assertErrno(() => fs.setattr(ROOT_NODE_ID, { size: 0 }), EISDIR);
  assertErrno(() => fs.setattr(file, { size: -1 }), EINVAL);
});

Deno.test("HostDirFs.readdir() lists . and .. first and continues from an offset", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const all = listing(fs, ROOT_NODE_ID);
  assert.deepEqual(all.slice(0, 2).map((e) => e.name), [".", ".."]);
  const rootIno = Deno.lstatSync(box.share).ino;
  // The root's ".." is itself, never the host directory above it.
  assert.deepEqual(all.slice(0, 2).map((e) => e.ino), [rootIno, rootIno]);
  assert.deepEqual(
    all.slice(2).map((e) => e.name).sort(),
    ["abs", "absdir", "file.txt", "sub", "up", "upup"],
  );
  assert.deepEqual(all.map((e) => e.offset), all.map((_, i) => i + 1));
  assert.equal(all.find((e) => e.name === "abs")?.type, S_IFLNK);
  assert.equal(all.find((e) => e.name === "sub")?.type, S_IFDIR);

  const { fh } = fs.opendir(ROOT_NODE_ID, 0);
  const first: DirEntry[] = [];
  for (const e of fs.readdir(ROOT_NODE_ID, fh, 0)) {
    first.push(e);
    if (first.length === 4) break;
  }
  const rest = [...fs.readdir(ROOT_NODE_ID, fh, first.at(-1)!.offset)];
  assert.deepEqual([...first, ...rest], all);
  fs.releasedir(ROOT_NODE_ID, fh);
  assertErrno(() => fs.readdir(ROOT_NODE_ID, fh, 0), EBADF);

  const sub = fs.lookup(ROOT_NODE_ID, "sub").nodeid;
  assert.equal(listing(fs, sub)[1]!.ino, rootIno);
  assertErrno(
    () => fs.opendir(fs.lookup(ROOT_NODE_ID, "file.txt").nodeid, 0),
    ENOTDIR,
  );
});

Deno.test("HostDirFs fallocate(), lseek(), statfs() and xattr calls", async () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  await fs.ready;
  const file = fs.lookup(ROOT_NODE_ID, "file.txt").nodeid;
  const { fh } = fs.open(file, O_RDWR);
  fs.fallocate(file, fh, 0, 100, 0);
  assert.equal(Deno.lstatSync(`${box.share}/file.txt`).size, 100);
  fs.fallocate(file, fh, 0, 200, FALLOC_FL_KEEP_SIZE);
  assert.equal(Deno.lstatSync(`${box.share}/file.txt`).size, 100);
  assertErrno(() => fs.fallocate(file, fh, 0, 0, 0), EINVAL);
  assertErrno(() => fs.fallocate(file, fh, 0, 1, 0x10), EOPNOTSUPP);
  assert.equal(fs.lseek(file, fh, 10, SEEK_DATA), 10);
  assert.equal(fs.lseek(file, fh, 10, SEEK_HOLE), 100);
  assertErrno(() => fs.lseek(file, fh, 100, SEEK_DATA), ENXIO);
  assertErrno(() => fs.lseek(file, fh, 0, 0), EINVAL);
  fs.release(file, fh);

  const stat = fs.statfs(ROOT_NODE_ID);
  assert.ok(stat.blocks > 0);
  assert.equal(stat.namelen, 255);

  assertErrno(() => fs.setxattr(file, "user.x", text("x"), 0), ENOSYS);
  assertErrno(() => fs.getxattr(file, "user.x"), ENOSYS);
  assertErrno(() => fs.listxattr(file), ENOSYS);
  assertErrno(() => fs.removexattr(file, "user.x"), ENOSYS);
  fs.access(file, W_OK);
});

Deno.test("HostDirFs with readOnly refuses every change with EROFS", () => {
  using box = sandbox();
  const before = snapshot(box.share);
  const fs = new HostDirFs(box.share, { readOnly: true });
  const file = fs.lookup(ROOT_NODE_ID, "file.txt").nodeid;
  const sub = fs.lookup(ROOT_NODE_ID, "sub").nodeid;
  assert.equal(readFile(fs, file), "hello");
  const { fh } = fs.open(file, O_RDONLY);
  const changes: [string, () => unknown][] = [
    ["open O_WRONLY", () => fs.open(file, O_WRONLY)],
    ["open O_RDWR", () => fs.open(file, O_RDWR)],
    ["open O_TRUNC", () => fs.open(file, O_RDONLY | O_TRUNC)],
    ["write", () => fs.write(file, fh, 0, text("x"))],
    ["setattr size", () => fs.setattr(file, { size: 0 })],
    ["setattr mode", () => fs.setattr(file, { mode: 0o777 })],
    ["setattr times", () => fs.setattr(file, { mtime: "now" })],
    ["create", () => fs.create(CTX, ROOT_NODE_ID, "n", 0o644, O_CREAT)],
    [
      "create existing",
      () => fs.create(CTX, ROOT_NODE_ID, "file.txt", 0o644, O_CREAT | O_TRUNC),
    ],
    ["mknod", () => fs.mknod(CTX, ROOT_NODE_ID, "n", 0o644, 0)],
    ["mkdir", () => fs.mkdir(CTX, ROOT_NODE_ID, "n", 0o755)],
    ["symlink", () => fs.symlink(CTX, ROOT_NODE_ID, "n", "file.txt")],
    ["link", () => fs.link(file, ROOT_NODE_ID, "n")],
    ["unlink", () => fs.unlink(ROOT_NODE_ID, "file.txt")],
    ["rmdir", () => fs.rmdir(ROOT_NODE_ID, "sub")],
    ["rename", () => fs.rename(ROOT_NODE_ID, "file.txt", sub, "moved", 0)],
    ["fallocate", () => fs.fallocate(file, fh, 0, 100, 0)],
    ["setxattr", () => fs.setxattr(file, "user.x", text("x"), 0)],
    ["removexattr", () => fs.removexattr(file, "user.x")],
    ["access W_OK", () => fs.access(file, W_OK)],
  ];
  for (const [what, change] of changes) {
    try {
      change();
      assert.fail(`${what} was allowed`);
    } catch (e) {
      assert.ok(e instanceof FsError, `${what}: ${e}`);
      assert.equal(e.errno, EROFS, `${what}: ${e.message}`);
    }
  }
  fs.release(file, fh);
  fs.access(file, 4);
  assert.equal(snapshot(box.share), before);
  box.assertOutsideUnchanged();
});

Deno.test("HostDirFs refuses names that are not one path component", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const sub = fs.lookup(ROOT_NODE_ID, "sub").nodeid;
  const file = fs.lookup(ROOT_NODE_ID, "file.txt").nodeid;
  const bad: [string, number][] = [
    ["..", EINVAL],
    [".", EINVAL],
    ["", EINVAL],
    ["../outside", EINVAL],
    ["../../etc", EINVAL],
    ["x/../..", EINVAL],
    ["a\0b", EINVAL],
    ["x".repeat(256), ENAMETOOLONG],
  ];
  for (const [name, errno] of bad) {
    assertErrno(() => fs.lookup(ROOT_NODE_ID, name), errno);
    assertErrno(() => fs.lookup(sub, name), errno);
    assertErrno(() => fs.create(CTX, sub, name, 0o644, O_CREAT), errno);
    assertErrno(() => fs.mkdir(CTX, sub, name, 0o755), errno);
    assertErrno(() => fs.mknod(CTX, sub, name, 0o644, 0), errno);
    assertErrno(() => fs.symlink(CTX, sub, name, "x"), errno);
    assertErrno(() => fs.link(file, sub, name), errno);
    assertErrno(() => fs.unlink(sub, name), errno);
    assertErrno(() => fs.rmdir(sub, name), errno);
    assertErrno(() => fs.rename(ROOT_NODE_ID, "file.txt", sub, name, 0), errno);
    assertErrno(() => fs.rename(sub, name, ROOT_NODE_ID, "x", 0), errno);
    box.assertOutsideUnchanged();
  }
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "hello");
});

Deno.test("HostDirFs never follows a symlink that leads outside the share", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const secretIno = Deno.lstatSync(`${box.outside}/secret.txt`).ino;
  const outsideIno = Deno.lstatSync(box.outside).ino;
  const sub = fs.lookup(ROOT_NODE_ID, "sub").nodeid;
  const file = fs.lookup(ROOT_NODE_ID, "file.txt").nodeid;
  const links = ["abs", "absdir", "up", "upup"].map((name) =>
    fs.lookup(ROOT_NODE_ID, name)
  );
  links.push(fs.lookup(sub, "out"));
  for (const link of links) {
    // The entry is the symlink itself, never what it points at.
    assert.equal(link.attr.mode & S_IFMT, S_IFLNK);
    assert.notEqual(link.attr.ino, secretIno);
    assert.notEqual(link.attr.ino, outsideIno);
    const id = link.nodeid;
    const attempts: (() => unknown)[] = [
      () => fs.open(id, O_RDONLY),
      () => fs.open(id, O_RDWR | O_TRUNC),
      () => fs.read(id, 1, 0, 100),
      () => fs.setattr(id, { size: 0 }),
      () => fs.setattr(id, { mode: 0o777 }),
      () => fs.setattr(id, { mtime: { sec: 1, nsec: 0 } }),
      () => fs.lookup(id, "secret.txt"),
      () => fs.lookup(id, "outside"),
      () => fs.lookup(id, "dir"),
      () => fs.opendir(id, 0),
      () => fs.readdir(id, 1, 0),
      () => fs.create(CTX, id, "planted", 0o644, O_CREAT | O_RDWR),
      () => fs.create(CTX, id, "secret.txt", 0o644, O_CREAT | O_TRUNC),
      () => fs.mkdir(CTX, id, "planted", 0o755),
      () => fs.mknod(CTX, id, "planted", 0o644, 0),
      () => fs.symlink(CTX, id, "planted", "x"),
      () => fs.unlink(id, "secret.txt"),
      () => fs.rmdir(id, "dir"),
      () => fs.rename(ROOT_NODE_ID, "file.txt", id, "planted", 0),
      () => fs.rename(id, "secret.txt", ROOT_NODE_ID, "stolen", 0),
      () => fs.link(file, id, "planted"),
      () => fs.fallocate(id, 1, 0, 100, 0),
    ];
    for (const attempt of attempts) {
      assertErrno(attempt, [...REFUSED, EBADF, EOPNOTSUPP]);
      box.assertOutsideUnchanged();
    }
    assert.equal(fs.getattr(id).mode & S_IFMT, S_IFLNK);
  }
  assert.equal(fs.readlink(links[0]!.nodeid), `${box.outside}/secret.txt`);
  assert.equal(fs.readlink(links[3]!.nodeid), "../..");

  // Replacing names that are symlinks touches the links, not their targets.
  assertErrno(
    () =>
      fs.create(CTX, ROOT_NODE_ID, "abs", 0o644, O_CREAT | O_TRUNC | O_RDWR),
    EEXIST,
  );
  assertErrno(
    () => fs.create(CTX, ROOT_NODE_ID, "up", 0o644, O_CREAT | O_EXCL | O_RDWR),
    EEXIST,
  );
  assertErrno(() => fs.mknod(CTX, ROOT_NODE_ID, "abs", 0o644, 0), EEXIST);
  assertErrno(() => fs.mkdir(CTX, ROOT_NODE_ID, "absdir", 0o755), EEXIST);
  assertErrno(() => fs.rmdir(ROOT_NODE_ID, "absdir"), ENOTDIR);
  box.assertOutsideUnchanged();
  const hard = fs.link(links[0]!.nodeid, ROOT_NODE_ID, "abs2");
  assert.equal(hard.attr.mode & S_IFMT, S_IFLNK);
  assert.ok(Deno.lstatSync(`${box.share}/abs2`).isSymlink);
  fs.rename(ROOT_NODE_ID, "up", sub, "up", 0);
  fs.rename(ROOT_NODE_ID, "file.txt", ROOT_NODE_ID, "abs", 0);
  assert.ok(Deno.lstatSync(`${box.share}/abs`).isFile);
  fs.unlink(ROOT_NODE_ID, "abs2");
  fs.unlink(sub, "up");
  fs.unlink(ROOT_NODE_ID, "upup");
  box.assertOutsideUnchanged();

  // A symlink the guest makes is stored, never followed.
  const planted = fs.symlink(
    CTX,
    ROOT_NODE_ID,
    "planted",
    `${box.outside}/secret.txt`,
  );
  assertErrno(() => fs.open(planted.nodeid, O_RDWR), REFUSED);
  assertErrno(() => fs.setattr(planted.nodeid, { size: 0 }), [
    ...REFUSED,
    EOPNOTSUPP,
  ]);
  box.assertOutsideUnchanged();
});

Deno.test("HostDirFs refuses node IDs and handles it never handed out", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const file = fs.lookup(ROOT_NODE_ID, "file.txt");
  const { fh } = fs.open(file.nodeid, O_RDWR);
  for (
    const id of [0, -1, 2.5, file.nodeid + 1, 999_999, Number.MAX_SAFE_INTEGER]
  ) {
    const attempts: (() => unknown)[] = [
      () => fs.getattr(id),
      () => fs.lookup(id, "secret.txt"),
      () => fs.setattr(id, { size: 0 }),
      () => fs.readlink(id),
      () => fs.open(id, O_RDWR),
      () => fs.opendir(id, 0),
      () => fs.read(id, fh, 0, 10),
      () => fs.write(id, fh, 0, text("x")),
      () => fs.create(CTX, id, "x", 0o644, O_CREAT),
      () => fs.mkdir(CTX, id, "x", 0o755),
      () => fs.symlink(CTX, id, "x", "y"),
      () => fs.unlink(id, "secret.txt"),
      () => fs.rmdir(id, "dir"),
      () => fs.rename(ROOT_NODE_ID, "file.txt", id, "x", 0),
      () => fs.rename(id, "secret.txt", ROOT_NODE_ID, "x", 0),
      () => fs.link(id, ROOT_NODE_ID, "x"),
      () => fs.link(file.nodeid, id, "x"),
      () => fs.access(id, 0),
      () => fs.fsyncdir(id, 0, false),
    ];
    for (const attempt of attempts) {
      assertErrno(attempt, [ENOENT, ESTALE, EBADF]);
    }
    box.assertOutsideUnchanged();
  }
  assertErrno(() => fs.read(file.nodeid, fh + 1, 0, 1), EBADF);
  fs.release(file.nodeid, 12345);
  fs.releasedir(file.nodeid, 12345);
  fs.release(file.nodeid, fh);
  assert.equal(Deno.readTextFileSync(`${box.share}/file.txt`), "hello");
  assert.deepEqual(
    [...Deno.readDirSync(box.share)].map((e) => e.name).sort(),
    ["abs", "absdir", "file.txt", "sub", "up", "upup"],
  );
});

Deno.test("HostDirFs refuses a node whose path a host process redirected outside", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const sub = fs.lookup(ROOT_NODE_ID, "sub").nodeid;
  const inner = fs.lookup(sub, "inner.txt").nodeid;
  const file = fs.lookup(ROOT_NODE_ID, "file.txt").nodeid;
  // The host moves sub/ out and leaves a symlink to where it went: the
  // same inodes, now reached through a symlink.
  Deno.renameSync(`${box.share}/sub`, `${box.outside}/moved`);
  Deno.symlinkSync(`${box.outside}/moved`, `${box.share}/sub`);
  // And replaces file.txt by a symlink to a file outside (ext4 and tmpfs
  // give it the inode number just freed).
  Deno.removeSync(`${box.share}/file.txt`);
  Deno.symlinkSync(`${box.outside}/secret.txt`, `${box.share}/file.txt`);
  const before = snapshot(box.outside);
  const attempts: (() => unknown)[] = [
    () => fs.open(inner, O_RDWR),
    () => fs.open(inner, O_RDONLY),
    () => fs.getattr(inner),
    () => fs.setattr(inner, { size: 0 }),
    () => fs.setattr(inner, { mode: 0o777 }),
    () => fs.link(inner, ROOT_NODE_ID, "stolen"),
    () => fs.lookup(sub, "inner.txt"),
    () => fs.opendir(sub, 0),
    () => fs.create(CTX, sub, "planted", 0o644, O_CREAT | O_RDWR),
    () => fs.mkdir(CTX, sub, "planted", 0o755),
    () => fs.unlink(sub, "inner.txt"),
    () => fs.rename(sub, "inner.txt", ROOT_NODE_ID, "stolen", 0),
    () => fs.rename(ROOT_NODE_ID, "abs", sub, "planted", 0),
    () => fs.open(file, O_RDWR | O_TRUNC),
    () => fs.setattr(file, { size: 0 }),
    () => fs.setattr(file, { mode: 0o777 }),
    () => fs.link(file, ROOT_NODE_ID, "stolen"),
  ];
  for (const attempt of attempts) {
    assertErrno(attempt, REFUSED);
    assert.equal(snapshot(box.outside), before);
  }
  assert.equal(
    Deno.readTextFileSync(`${box.outside}/moved/inner.txt`),
    "inner",
  );
  assert.equal(Deno.readTextFileSync(`${box.outside}/secret.txt`), "secret");
  assert.throws(
    () => Deno.lstatSync(`${box.share}/stolen`),
    Deno.errors.NotFound,
  );
});

Deno.test("HostDirFs.forget() and destroy() drop nodes but never the root", () => {
  using box = sandbox();
  const fs = new HostDirFs(box.share);
  const a = fs.lookup(ROOT_NODE_ID, "file.txt");
  const b = fs.lookup(ROOT_NODE_ID, "file.txt");
  assert.equal(a.nodeid, b.nodeid);
  fs.forget(a.nodeid, 1);
  assert.equal(fs.getattr(a.nodeid).size, 5);
  fs.forget(a.nodeid, 1);
  assertErrno(() => fs.getattr(a.nodeid), [ENOENT, ESTALE]);
  fs.forget(ROOT_NODE_ID, 100);
  assert.equal(fs.getattr(ROOT_NODE_ID).mode & S_IFMT, S_IFDIR);

  const c = fs.lookup(ROOT_NODE_ID, "file.txt");
  const { fh } = fs.open(c.nodeid, O_RDONLY);
  fs.destroy();
  assertErrno(() => fs.read(c.nodeid, fh, 0, 1), EBADF);
  assertErrno(() => fs.getattr(c.nodeid), [ENOENT, ESTALE]);
  assert.equal(fs.lookup(ROOT_NODE_ID, "file.txt").attr.size, 5);
});
