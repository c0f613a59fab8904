/**
 * The inode-based filesystem interface the FUSE server (virtio-fs) calls,
 * and the POSIX numbers it speaks: file type bits, open, rename, xattr,
 * access, fallocate and lseek flags (Linux values, `include/uapi/linux/stat.h`,
 * `fcntl.h`, `fs.h`, `falloc.h`, `xattr.h`).
 *
 * A filesystem names its inodes by node IDs: positive integers it hands out
 * in {@linkcode Entry} results, 1 being the root. Every operation that
 * returns an Entry counts one lookup of that node; {@linkcode Filesystem.forget}
 * gives lookups back. A node may disappear once it has no lookups, no links
 * and no open handles. Failures are thrown as {@linkcode FsError} with a Linux
 * errno.
 *
 * Methods are synchronous: the server answers requests in order on the
 * owner's thread, each one bounded (at most 1 MiB of data), so an in-memory
 * tree answers without touching the event loop and a host directory uses
 * Deno's synchronous file calls.
 *
 * @module
 */

import { EINVAL, ENAMETOOLONG, FsError } from "./errno.ts";

// File type bits of st_mode (include/uapi/linux/stat.h).

/** Mask of the file type bits of a mode. */
export const S_IFMT = 0o170000;
/** Socket. */
export const S_IFSOCK = 0o140000;
/** Symbolic link. */
export const S_IFLNK = 0o120000;
/** Regular file. */
export const S_IFREG = 0o100000;
/** Block device. */
export const S_IFBLK = 0o060000;
/** Directory. */
export const S_IFDIR = 0o040000;
/** Character device. */
export const S_IFCHR = 0o020000;
/** FIFO (named pipe). */
export const S_IFIFO = 0o010000;
/** Permission, setuid, setgid and sticky bits of a mode. */
export const S_IALLUGO = 0o7777;
/** Set-user-ID bit. */
export const S_ISUID = 0o4000;
/** Set-group-ID bit. */
export const S_ISGID = 0o2000;

// open(2) flags (include/uapi/asm-generic/fcntl.h; the same on x86_64).

/** Mask of the access mode of open flags. */
export const O_ACCMODE = 3;
/** Open for reading only. */
export const O_RDONLY = 0;
/** Open for writing only. */
export const O_WRONLY = 1;
/** Open for reading and writing. */
export const O_RDWR = 2;
/** Create the file if it does not exist. */
export const O_CREAT = 0o100;
/** With O_CREAT: fail if the file exists. */
export const O_EXCL = 0o200;
/** Truncate a regular file to length 0. */
export const O_TRUNC = 0o1000;
/** Writes go to the end of the file. */
export const O_APPEND = 0o2000;

/** rename2 flag: fail with EEXIST if the new name exists (include/uapi/linux/fs.h). */
export const RENAME_NOREPLACE = 1;
/** rename2 flag: swap the two names atomically. */
export const RENAME_EXCHANGE = 2;
/** rename2 flag: leave an overlayfs whiteout at the old name (not supported here). */
export const RENAME_WHITEOUT = 4;

/** setxattr flag: fail with EEXIST if the attribute exists (include/uapi/linux/xattr.h). */
export const XATTR_CREATE = 1;
/** setxattr flag: fail with ENODATA if the attribute does not exist. */
export const XATTR_REPLACE = 2;

/** access(2) mask: write permission (include/uapi/linux/fcntl.h uses unistd's W_OK). */
export const W_OK = 2;

/** fallocate mode: do not change the file size (include/uapi/linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 1;
/** fallocate mode: deallocate the range (with KEEP_SIZE). */
export const FALLOC_FL_PUNCH_HOLE = 2;
/** fallocate mode: zero the range. */
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** lseek whence: the next data at or after the offset (include/uapi/linux/fs.h). */
export const SEEK_DATA = 3;
/** lseek whence: the next hole at or after the offset. */
export const SEEK_HOLE = 4;

/** Longest name of one directory entry, in UTF-8 bytes (NAME_MAX). */
export const NAME_MAX = 255;
/** Longest symlink target, in bytes (PATH_MAX, NUL excluded). */
export const SYMLINK_MAX = 4095;
/** Node ID of the root directory (FUSE_ROOT_ID). */
export const ROOT_NODE_ID = 1;

/**
 * A point in time as seconds and nanoseconds since the epoch.
 *
 * @example
 * ```ts
 * import type { Timespec } from "./filesystem.ts";
 * const t: Timespec = { sec: 1700000000, nsec: 500 };
 * ```
 */
export interface Timespec {
  /** Whole seconds since the epoch. */
  sec: number;
  /** Nanoseconds, 0 to 999,999,999. */
  nsec: number;
}

/**
 * What `stat` says about a node.
 *
 * @example
 * ```ts
 * import { type Attr, S_IFREG } from "./filesystem.ts";
 * const t = { sec: 0, nsec: 0 };
 * const attr: Attr = {
 *   ino: 2, size: 3, blocks: 1, atime: t, mtime: t, ctime: t,
 *   mode: S_IFREG | 0o644, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096,
 * };
 * ```
 */
export interface Attr {
  /** Inode number as `st_ino` shows it. */
  ino: number;
  /** Size in bytes (a symlink: its target's length). */
  size: number;
  /** 512-byte blocks allocated. */
  blocks: number;
  /** Last access. */
  atime: Timespec;
  /** Last modification of the contents. */
  mtime: Timespec;
  /** Last change of the inode. */
  ctime: Timespec;
  /** File type and permission bits. */
  mode: number;
  /** Hard links. */
  nlink: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** A device node's number, encoded as {@linkcode makeDev} does. */
  rdev: number;
  /** Preferred I/O size. */
  blksize: number;
}

/**
 * A node found or made in a directory: its node ID and attributes. Each
 * Entry returned counts one lookup.
 *
 * @example
 * ```ts
 * import type { Attr, Entry } from "./filesystem.ts";
 * function idOf(entry: Entry): number {
 *   return entry.nodeid;
 * }
 * ```
 */
export interface Entry {
  /** The node ID later requests use. */
  nodeid: number;
  /** The node's attributes. */
  attr: Attr;
}

/**
 * Changes of {@linkcode Filesystem.setattr}; absent fields stay.
 *
 * @example
 * ```ts
 * import type { AttrChanges } from "./filesystem.ts";
 * const chmod: AttrChanges = { mode: 0o600 };
 * const touch: AttrChanges = { atime: "now", mtime: "now" };
 * ```
 */
export interface AttrChanges {
  /** New permission bits (the type bits are ignored). */
  mode?: number;
  /** New owner. */
  uid?: number;
  /** New group. */
  gid?: number;
  /** New size (truncate or extend with zeros). */
  size?: number;
  /** New access time, or the current time. */
  atime?: Timespec | "now";
  /** New modification time, or the current time. */
  mtime?: Timespec | "now";
  /** New change time. */
  ctime?: Timespec;
}

/**
 * The caller of an operation that makes a node (from `fuse_in_header`).
 *
 * @example
 * ```ts
 * import type { FsContext } from "./filesystem.ts";
 * const root: FsContext = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
 * ```
 */
export interface FsContext {
  /** Effective user ID: the owner of a new node. */
  uid: number;
  /** Effective group ID: the group of a new node (unless setgid applies). */
  gid: number;
  /** Process ID of the caller. */
  pid: number;
  /** The caller's umask (already applied to modes by the guest kernel). */
  umask: number;
}

/**
 * A file or directory handle made by open, opendir or create.
 *
 * @example
 * ```ts
 * import type { OpenResult } from "./filesystem.ts";
 * const opened: OpenResult = { fh: 7, keepCache: true };
 * ```
 */
export interface OpenResult {
  /** The handle later requests name. */
  fh: number;
  /** The guest may keep its page cache of the file (FOPEN_KEEP_CACHE). */
  keepCache?: boolean;
  /** The guest must bypass its page cache (FOPEN_DIRECT_IO). */
  directIo?: boolean;
}

/**
 * What {@linkcode Filesystem.create} returns: the new entry and its handle.
 *
 * @example
 * ```ts
 * import type { CreateResult } from "./filesystem.ts";
 * function handleOf(result: CreateResult): number {
 *   return result.fh;
 * }
 * ```
 */
export interface CreateResult extends OpenResult {
  /** The created (or opened) node. */
  entry: Entry;
}

/**
 * One directory entry of {@linkcode Filesystem.readdir}.
 *
 * @example
 * ```ts
 * import { type DirEntry, S_IFDIR } from "./filesystem.ts";
 * const dot: DirEntry = { name: ".", ino: 1, type: S_IFDIR, offset: 1 };
 * ```
 */
export interface DirEntry {
  /** The name (may be "." and ".."). */
  name: string;
  /** Inode number as `d_ino` shows it. */
  ino: number;
  /** File type bits (`mode & S_IFMT`). */
  type: number;
  /** The cookie that continues the listing after this entry. */
  offset: number;
}

/**
 * What `statfs` says about a filesystem.
 *
 * @example
 * ```ts
 * import type { StatFs } from "./filesystem.ts";
 * const s: StatFs = { blocks: 1024, bfree: 512, bavail: 512, files: 100,
 *   ffree: 50, bsize: 4096, namelen: 255, frsize: 4096 };
 * ```
 */
export interface StatFs {
  /** Total blocks of `frsize` bytes. */
  blocks: number;
  /** Free blocks. */
  bfree: number;
  /** Free blocks for unprivileged users. */
  bavail: number;
  /** Total inodes. */
  files: number;
  /** Free inodes. */
  ffree: number;
  /** Block size. */
  bsize: number;
  /** Longest name. */
  namelen: number;
  /** Fragment size. */
  frsize: number;
}

/**
 * An inode-based filesystem as FUSE sees it. Node IDs and handles are
 * positive integers; names are single path components (no `/`, not `.` or
 * `..`). Every method throws {@linkcode FsError} on failure.
 *
 * @example
 * ```ts
 * import { LayerTree, OverlayFs, type Filesystem } from "./mod.ts";
 * const tree = new LayerTree();
 * await tree.applyLayer([{ path: "hello", type: "file", mode: 0o644,
 *   uid: 0, gid: 0, mtimeMs: 0, data: new TextEncoder().encode("hi\n") }]);
 * const fs: Filesystem = new OverlayFs(tree);
 * const entry = fs.lookup(1, "hello");
 * console.log(entry.attr.size); // 3
 * ```
 */
export interface Filesystem {
  /** How long the guest may cache names and attributes, in seconds. */
  readonly cacheTimeoutSeconds: number;
  /** Finds `name` in directory `parent` (counts a lookup). */
  lookup(parent: number, name: string): Entry;
  /** Gives back `count` lookups of `nodeid`. Never throws. */
  forget(nodeid: number, count: number): void;
  /** The attributes of `nodeid`. */
  getattr(nodeid: number): Attr;
  /** Changes attributes (chmod, chown, truncate, utimes); `fh` when through a handle. */
  setattr(nodeid: number, changes: AttrChanges, fh?: number): Attr;
  /** A symlink's target. */
  readlink(nodeid: number): string;
  /** Makes symlink `name` in `parent` pointing at `target`. */
  symlink(ctx: FsContext, parent: number, name: string, target: string): Entry;
  /** Makes a device node, FIFO, socket or empty regular file. */
  mknod(
    ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    rdev: number,
  ): Entry;
  /** Makes a directory. */
  mkdir(ctx: FsContext, parent: number, name: string, mode: number): Entry;
  /** Removes a non-directory entry. */
  unlink(parent: number, name: string): void;
  /** Removes an empty directory. */
  rmdir(parent: number, name: string): void;
  /** Renames `parent/name` to `newParent/newName`; `flags` are RENAME_*. */
  rename(
    parent: number,
    name: string,
    newParent: number,
    newName: string,
    flags: number,
  ): void;
  /** Makes hard link `newParent/newName` to `nodeid`. */
  link(nodeid: number, newParent: number, newName: string): Entry;
  /** Opens a regular file; `flags` are open(2) flags. */
  open(nodeid: number, flags: number): OpenResult;
  /**
   * Reads up to `size` bytes at `offset`; fewer at the end of the file. The
   * pieces are views the caller copies out before calling again.
   */
  read(nodeid: number, fh: number, offset: number, size: number): Uint8Array[];
  /** Writes `data` at `offset`; returns the bytes written. */
  write(nodeid: number, fh: number, offset: number, data: Uint8Array): number;
  /** Filesystem statistics. */
  statfs(nodeid: number): StatFs;
  /** Closes a file handle. Never throws for an unknown handle. */
  release(nodeid: number, fh: number): void;
  /** A `close()` of one descriptor of the handle. */
  flush(nodeid: number, fh: number): void;
  /** Flushes a file to stable storage. */
  fsync(nodeid: number, fh: number, datasync: boolean): void;
  /** Sets an extended attribute; `flags` are XATTR_CREATE/XATTR_REPLACE. */
  setxattr(
    nodeid: number,
    name: string,
    value: Uint8Array,
    flags: number,
  ): void;
  /** An extended attribute's value (ENODATA if absent). */
  getxattr(nodeid: number, name: string): Uint8Array;
  /** The names of the extended attributes. */
  listxattr(nodeid: number): string[];
  /** Removes an extended attribute (ENODATA if absent). */
  removexattr(nodeid: number, name: string): void;
  /** Opens a directory for listing. */
  opendir(nodeid: number, flags: number): OpenResult;
  /**
   * Entries from cookie `offset` on (0: from the start, "." and ".."
   * first). The caller stops iterating when its buffer is full and
   * continues later with the last entry's `offset`.
   */
  readdir(nodeid: number, fh: number, offset: number): Iterable<DirEntry>;
  /** Closes a directory handle. Never throws for an unknown handle. */
  releasedir(nodeid: number, fh: number): void;
  /** Flushes a directory to stable storage. */
  fsyncdir(nodeid: number, fh: number, datasync: boolean): void;
  /** Checks access; `mask` is access(2)'s (F_OK 0, X_OK 1, W_OK 2, R_OK 4). */
  access(nodeid: number, mask: number): void;
  /** Creates and opens a regular file (or opens it, without O_EXCL). */
  create(
    ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    flags: number,
  ): CreateResult;
  /** Allocates, punches or zeroes a range; `mode` is FALLOC_FL_*. */
  fallocate(
    nodeid: number,
    fh: number,
    offset: number,
    length: number,
    mode: number,
  ): void;
  /** SEEK_DATA / SEEK_HOLE (other whences are the guest's business). */
  lseek(nodeid: number, fh: number, offset: number, whence: number): number;
  /** The guest's session ended: drop lookups and handles, keep contents. */
  destroy(): void;
}

/**
 * Encodes a device number like the kernel's `new_encode_dev()`, the form of
 * `rdev` in FUSE: minor bits 0-7 and 20-31, major bits 8-19.
 *
 * @example
 * ```ts
 * import { devMajor, devMinor, makeDev } from "./filesystem.ts";
 * const dev = makeDev(1, 3); // /dev/null
 * console.log(devMajor(dev), devMinor(dev)); // 1 3
 * ```
 */
export function makeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) |
    ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * The major number of a device number made by {@linkcode makeDev}.
 *
 * @example
 * ```ts
 * import { devMajor, makeDev } from "./filesystem.ts";
 * console.log(devMajor(makeDev(136, 0))); // 136
 * ```
 */
export function devMajor(dev: number): number {
  return (dev >>> 8) & 0xfff;
}

/**
 * The minor number of a device number made by {@linkcode makeDev}.
 *
 * @example
 * ```ts
 * import { devMinor, makeDev } from "./filesystem.ts";
 * console.log(devMinor(makeDev(4, 300))); // 300
 * ```
 */
export function devMinor(dev: number): number {
  return ((dev & 0xff) | ((dev >>> 12) & 0xfff00)) >>> 0;
}

/**
 * Throws {@linkcode FsError} unless `name` is one path component: not
 * empty, not `.` or `..`, without `/` or NUL (EINVAL), at most
 * {@linkcode NAME_MAX} UTF-8 bytes (ENAMETOOLONG).
 *
 * @example
 * ```ts
 * import { checkName } from "./filesystem.ts";
 * checkName("passwd");
 * try {
 *   checkName("..");
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot use name "..": ...
 * }
 * ```
 */
export function checkName(name: string): void {
  if (
    name === "" || name === "." || name === ".." || name.includes("/") ||
    name.includes("\0")
  ) {
    throw new FsError(
      EINVAL,
      `Cannot use name ${JSON.stringify(name)}: not a single path component`,
    );
  }
  if (name.length > NAME_MAX / 3 && utf8Length(name) > NAME_MAX) {
    throw new FsError(
      ENAMETOOLONG,
      `Cannot use name ${
        JSON.stringify(name.slice(0, 32))
      }...: longer than ${NAME_MAX} bytes`,
    );
  }
}

const encoder = new TextEncoder();

function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/**
 * The current time as a {@linkcode Timespec}.
 *
 * @example
 * ```ts
 * import { now } from "./filesystem.ts";
 * console.log(now().sec > 0); // true
 * ```
 */
export function now(): Timespec {
  const ms = Date.now();
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1_000_000 };
}

/**
 * Milliseconds since the epoch (possibly fractional) as a
 * {@linkcode Timespec}.
 *
 * @example
 * ```ts
 * import { timespecFromMs } from "./filesystem.ts";
 * console.log(timespecFromMs(1500)); // { sec: 1, nsec: 500000000 }
 * ```
 */
export function timespecFromMs(ms: number): Timespec {
  if (!Number.isFinite(ms)) return { sec: 0, nsec: 0 };
  const sec = Math.floor(ms / 1000);
  const nsec = Math.min(999_999_999, Math.round((ms - sec * 1000) * 1e6));
  return { sec, nsec };
}
