/**
 * The FUSE protocol's numbers and struct layouts, written once as data, from
 * `include/uapi/linux/fuse.h` (the kernel's FUSE ABI; everything is
 * little-endian on the machines virtio-fs runs on). `fuse_test.ts` checks
 * every size, offset, opcode and flag here against the host's own
 * `<linux/fuse.h>`.
 *
 * A request is a `fuse_in_header` (its `len` counts the whole request)
 * followed by the opcode's arguments; names are NUL-terminated. A reply is a
 * `fuse_out_header` (`len` counts the whole reply, `error` is 0 or a
 * negated errno) followed by the opcode's result.
 *
 * @module
 */

// ---- version (fuse.h "Version negotiation") ----

/** Major protocol version (FUSE_KERNEL_VERSION). */
export const FUSE_KERNEL_VERSION = 7;
/**
 * Minor version this server speaks. Linux 6.1 offers 7.37 and then uses the
 * smaller of the two; 7.31 has every request and field served here.
 */
export const FUSE_SERVER_MINOR_VERSION = 31;
/** Node ID of the root (FUSE_ROOT_ID). */
export const FUSE_ROOT_ID = 1;
/** The smallest read buffer a FUSE server may ask for (FUSE_MIN_READ_BUFFER). */
export const FUSE_MIN_READ_BUFFER = 8192;
/** `fuse_setxattr_in` size without FUSE_SETXATTR_EXT (FUSE_COMPAT_SETXATTR_IN_SIZE). */
export const FUSE_COMPAT_SETXATTR_IN_SIZE = 8;

// ---- opcodes (enum fuse_opcode) ----

/** The request opcodes (`enum fuse_opcode`). */
export const FuseOpcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
} as const;

// ---- INIT flags (fuse_init_in/out.flags) ----

/** INIT flags (`FUSE_ASYNC_READ` ...), as numbers (bits 0-31). */
export const FuseInitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  FILE_OPS: 1 << 2,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8,
  SPLICE_READ: 1 << 9,
  FLOCK_LOCKS: 1 << 10,
  HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  MAP_ALIGNMENT: 1 << 26,
  SUBMOUNTS: 1 << 27,
  HANDLE_KILLPRIV_V2: 1 << 28,
  SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30,
} as const;

// ---- other flags ----

/** `fuse_setattr_in.valid` bits (`FATTR_*`). */
export const FATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** `fuse_open_out.open_flags` bits (`FOPEN_*`). */
export const FOPEN = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
} as const;

/** `fuse_getattr_in.getattr_flags`: `fh` is valid (FUSE_GETATTR_FH). */
export const FUSE_GETATTR_FH = 1 << 0;
/** `fuse_fsync_in.fsync_flags`: data only (FUSE_FSYNC_FDATASYNC). */
export const FUSE_FSYNC_FDATASYNC = 1 << 0;

// ---- struct layouts ----

/** The C type of a struct field, as far as encoding cares. */
export type FieldType = "u16" | "u32" | "i32" | "u64" | "bytes" | "struct";

/** Field name to `[offset, type]`. */
export type FieldSpec = Record<string, readonly [number, FieldType]>;

/** A C struct: its name in fuse.h, `sizeof`, and fields. */
export interface StructLayout<S extends FieldSpec = FieldSpec> {
  /** The C name, e.g. `fuse_in_header`. */
  readonly name: string;
  /** `sizeof` the struct. */
  readonly size: number;
  /** Fields by their C name. */
  readonly fields: S;
}

/** The scalar fields of a layout as values: u64 as bigint, others number. */
export type StructValues<S extends FieldSpec> = {
  -readonly [
    K in keyof S as S[K][1] extends "bytes" | "struct" ? never : K
  ]: S[K][1] extends "u64" ? bigint : number;
};

function struct<const S extends FieldSpec>(
  name: string,
  size: number,
  fields: S,
): StructLayout<S> {
  return { name, size, fields };
}

/** `struct fuse_in_header`: every request starts with it. */
export const fuse_in_header = struct("fuse_in_header", 40, {
  len: [0, "u32"],
  opcode: [4, "u32"],
  unique: [8, "u64"],
  nodeid: [16, "u64"],
  uid: [24, "u32"],
  gid: [28, "u32"],
  pid: [32, "u32"],
  total_extlen: [36, "u16"],
  padding: [38, "u16"],
});

/** `struct fuse_out_header`: every reply starts with it. */
export const fuse_out_header = struct("fuse_out_header", 16, {
  len: [0, "u32"],
  error: [4, "i32"],
  unique: [8, "u64"],
});

/** `struct fuse_attr`. */
export const fuse_attr = struct("fuse_attr", 88, {
  ino: [0, "u64"],
  size: [8, "u64"],
  blocks: [16, "u64"],
  atime: [24, "u64"],
  mtime: [32, "u64"],
  ctime: [40, "u64"],
  atimensec: [48, "u32"],
  mtimensec: [52, "u32"],
  ctimensec: [56, "u32"],
  mode: [60, "u32"],
  nlink: [64, "u32"],
  uid: [68, "u32"],
  gid: [72, "u32"],
  rdev: [76, "u32"],
  blksize: [80, "u32"],
  flags: [84, "u32"],
});

/** `struct fuse_kstatfs`. */
export const fuse_kstatfs = struct("fuse_kstatfs", 80, {
  blocks: [0, "u64"],
  bfree: [8, "u64"],
  bavail: [16, "u64"],
  files: [24, "u64"],
  ffree: [32, "u64"],
  bsize: [40, "u32"],
  namelen: [44, "u32"],
  frsize: [48, "u32"],
  padding: [52, "u32"],
  spare: [56, "bytes"],
});

/** `struct fuse_entry_out`: LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE. */
export const fuse_entry_out = struct("fuse_entry_out", 128, {
  nodeid: [0, "u64"],
  generation: [8, "u64"],
  entry_valid: [16, "u64"],
  attr_valid: [24, "u64"],
  entry_valid_nsec: [32, "u32"],
  attr_valid_nsec: [36, "u32"],
  attr: [40, "struct"],
});

/** `struct fuse_forget_in`. */
export const fuse_forget_in = struct("fuse_forget_in", 8, {
  nlookup: [0, "u64"],
});

/** `struct fuse_forget_one`: one node of BATCH_FORGET. */
export const fuse_forget_one = struct("fuse_forget_one", 16, {
  nodeid: [0, "u64"],
  nlookup: [8, "u64"],
});

/** `struct fuse_batch_forget_in`. */
export const fuse_batch_forget_in = struct("fuse_batch_forget_in", 8, {
  count: [0, "u32"],
  dummy: [4, "u32"],
});

/** `struct fuse_getattr_in`. */
export const fuse_getattr_in = struct("fuse_getattr_in", 16, {
  getattr_flags: [0, "u32"],
  dummy: [4, "u32"],
  fh: [8, "u64"],
});

/** `struct fuse_attr_out`: GETATTR, SETATTR. */
export const fuse_attr_out = struct("fuse_attr_out", 104, {
  attr_valid: [0, "u64"],
  attr_valid_nsec: [8, "u32"],
  dummy: [12, "u32"],
  attr: [16, "struct"],
});

/** `struct fuse_mknod_in`. */
export const fuse_mknod_in = struct("fuse_mknod_in", 16, {
  mode: [0, "u32"],
  rdev: [4, "u32"],
  umask: [8, "u32"],
  padding: [12, "u32"],
});

/** `struct fuse_mkdir_in`. */
export const fuse_mkdir_in = struct("fuse_mkdir_in", 8, {
  mode: [0, "u32"],
  umask: [4, "u32"],
});

/** `struct fuse_rename_in`. */
export const fuse_rename_in = struct("fuse_rename_in", 8, {
  newdir: [0, "u64"],
});

/** `struct fuse_rename2_in`. */
export const fuse_rename2_in = struct("fuse_rename2_in", 16, {
  newdir: [0, "u64"],
  flags: [8, "u32"],
  padding: [12, "u32"],
});

/** `struct fuse_link_in`. */
export const fuse_link_in = struct("fuse_link_in", 8, {
  oldnodeid: [0, "u64"],
});

/** `struct fuse_setattr_in`. */
export const fuse_setattr_in = struct("fuse_setattr_in", 88, {
  valid: [0, "u32"],
  padding: [4, "u32"],
  fh: [8, "u64"],
  size: [16, "u64"],
  lock_owner: [24, "u64"],
  atime: [32, "u64"],
  mtime: [40, "u64"],
  ctime: [48, "u64"],
  atimensec: [56, "u32"],
  mtimensec: [60, "u32"],
  ctimensec: [64, "u32"],
  mode: [68, "u32"],
  unused4: [72, "u32"],
  uid: [76, "u32"],
  gid: [80, "u32"],
  unused5: [84, "u32"],
});

/** `struct fuse_open_in`: OPEN, OPENDIR. */
export const fuse_open_in = struct("fuse_open_in", 8, {
  flags: [0, "u32"],
  open_flags: [4, "u32"],
});

/** `struct fuse_create_in`. */
export const fuse_create_in = struct("fuse_create_in", 16, {
  flags: [0, "u32"],
  mode: [4, "u32"],
  umask: [8, "u32"],
  open_flags: [12, "u32"],
});

/** `struct fuse_open_out`: OPEN, OPENDIR, CREATE. */
export const fuse_open_out = struct("fuse_open_out", 16, {
  fh: [0, "u64"],
  open_flags: [8, "u32"],
  padding: [12, "u32"],
});

/** `struct fuse_release_in`: RELEASE, RELEASEDIR. */
export const fuse_release_in = struct("fuse_release_in", 24, {
  fh: [0, "u64"],
  flags: [8, "u32"],
  release_flags: [12, "u32"],
  lock_owner: [16, "u64"],
});

/** `struct fuse_flush_in`. */
export const fuse_flush_in = struct("fuse_flush_in", 24, {
  fh: [0, "u64"],
  unused: [8, "u32"],
  padding: [12, "u32"],
  lock_owner: [16, "u64"],
});

/** `struct fuse_read_in`: READ, READDIR, READDIRPLUS. */
export const fuse_read_in = struct("fuse_read_in", 40, {
  fh: [0, "u64"],
  offset: [8, "u64"],
  size: [16, "u32"],
  read_flags: [20, "u32"],
  lock_owner: [24, "u64"],
  flags: [32, "u32"],
  padding: [36, "u32"],
});

/** `struct fuse_write_in`; the data follows it. */
export const fuse_write_in = struct("fuse_write_in", 40, {
  fh: [0, "u64"],
  offset: [8, "u64"],
  size: [16, "u32"],
  write_flags: [20, "u32"],
  lock_owner: [24, "u64"],
  flags: [32, "u32"],
  padding: [36, "u32"],
});

/** `struct fuse_write_out`. */
export const fuse_write_out = struct("fuse_write_out", 8, {
  size: [0, "u32"],
  padding: [4, "u32"],
});

/** `struct fuse_statfs_out`. */
export const fuse_statfs_out = struct("fuse_statfs_out", 80, {
  st: [0, "struct"],
});

/** `struct fuse_fsync_in`: FSYNC, FSYNCDIR. */
export const fuse_fsync_in = struct("fuse_fsync_in", 16, {
  fh: [0, "u64"],
  fsync_flags: [8, "u32"],
  padding: [12, "u32"],
});

/**
 * `struct fuse_setxattr_in`. Without FUSE_SETXATTR_EXT (not offered) only
 * its first {@linkcode FUSE_COMPAT_SETXATTR_IN_SIZE} bytes are sent.
 */
export const fuse_setxattr_in = struct("fuse_setxattr_in", 16, {
  size: [0, "u32"],
  flags: [4, "u32"],
  setxattr_flags: [8, "u32"],
  padding: [12, "u32"],
});

/** `struct fuse_getxattr_in`: GETXATTR, LISTXATTR. */
export const fuse_getxattr_in = struct("fuse_getxattr_in", 8, {
  size: [0, "u32"],
  padding: [4, "u32"],
});

/** `struct fuse_getxattr_out`: the size answer when the request's size is 0. */
export const fuse_getxattr_out = struct("fuse_getxattr_out", 8, {
  size: [0, "u32"],
  padding: [4, "u32"],
});

/** `struct fuse_access_in`. */
export const fuse_access_in = struct("fuse_access_in", 8, {
  mask: [0, "u32"],
  padding: [4, "u32"],
});

/** `struct fuse_init_in` (kernels before 7.36 send only the first 16 bytes). */
export const fuse_init_in = struct("fuse_init_in", 64, {
  major: [0, "u32"],
  minor: [4, "u32"],
  max_readahead: [8, "u32"],
  flags: [12, "u32"],
  flags2: [16, "u32"],
  unused: [20, "bytes"],
});

/** `struct fuse_init_out`. */
export const fuse_init_out = struct("fuse_init_out", 64, {
  major: [0, "u32"],
  minor: [4, "u32"],
  max_readahead: [8, "u32"],
  flags: [12, "u32"],
  max_background: [16, "u16"],
  congestion_threshold: [18, "u16"],
  max_write: [20, "u32"],
  time_gran: [24, "u32"],
  max_pages: [28, "u16"],
  map_alignment: [30, "u16"],
  flags2: [32, "u32"],
  unused: [36, "bytes"],
});

/** `struct fuse_dirent`; the name follows, padded to 8 bytes. */
export const fuse_dirent = struct("fuse_dirent", 24, {
  ino: [0, "u64"],
  off: [8, "u64"],
  namelen: [16, "u32"],
  type: [20, "u32"],
  name: [24, "bytes"],
});

/** `struct fuse_direntplus`: an entry_out, then a dirent. */
export const fuse_direntplus = struct("fuse_direntplus", 152, {
  entry_out: [0, "struct"],
  dirent: [128, "struct"],
});

/** `struct fuse_fallocate_in`. */
export const fuse_fallocate_in = struct("fuse_fallocate_in", 32, {
  fh: [0, "u64"],
  offset: [8, "u64"],
  length: [16, "u64"],
  mode: [24, "u32"],
  padding: [28, "u32"],
});

/** `struct fuse_lseek_in`. */
export const fuse_lseek_in = struct("fuse_lseek_in", 24, {
  fh: [0, "u64"],
  offset: [8, "u64"],
  whence: [16, "u32"],
  padding: [20, "u32"],
});

/** `struct fuse_lseek_out`. */
export const fuse_lseek_out = struct("fuse_lseek_out", 8, {
  offset: [0, "u64"],
});

/** Every layout, for the test against `<linux/fuse.h>`. */
export const ALL_FUSE_STRUCTS: readonly StructLayout[] = [
  fuse_in_header,
  fuse_out_header,
  fuse_attr,
  fuse_kstatfs,
  fuse_entry_out,
  fuse_forget_in,
  fuse_forget_one,
  fuse_batch_forget_in,
  fuse_getattr_in,
  fuse_attr_out,
  fuse_mknod_in,
  fuse_mkdir_in,
  fuse_rename_in,
  fuse_rename2_in,
  fuse_link_in,
  fuse_setattr_in,
  fuse_open_in,
  fuse_create_in,
  fuse_open_out,
  fuse_release_in,
  fuse_flush_in,
  fuse_read_in,
  fuse_write_in,
  fuse_write_out,
  fuse_statfs_out,
  fuse_fsync_in,
  fuse_setxattr_in,
  fuse_getxattr_in,
  fuse_getxattr_out,
  fuse_access_in,
  fuse_init_in,
  fuse_init_out,
  fuse_dirent,
  fuse_direntplus,
  fuse_fallocate_in,
  fuse_lseek_in,
  fuse_lseek_out,
];

/**
 * Reads the scalar fields of `layout` at `base`. The caller has checked
 * that `layout.size` bytes are there.
 *
 * @example
 * ```ts
 * import { decode, fuse_mkdir_in } from "./fuse.ts";
 * const bytes = new Uint8Array([0xed, 0x41, 0, 0, 0x12, 0, 0, 0]);
 * const args = decode(fuse_mkdir_in, new DataView(bytes.buffer));
 * console.log(args.mode.toString(8), args.umask.toString(8)); // 40755 22
 * ```
 */
export function decode<S extends FieldSpec>(
  layout: StructLayout<S>,
  view: DataView,
  base = 0,
): StructValues<S> {
  const out: Record<string, number | bigint> = {};
  for (const [name, [offset, type]] of Object.entries(layout.fields)) {
    const at = base + offset;
    switch (type) {
      case "u16":
        out[name] = view.getUint16(at, true);
        break;
      case "u32":
        out[name] = view.getUint32(at, true);
        break;
      case "i32":
        out[name] = view.getInt32(at, true);
        break;
      case "u64":
        out[name] = view.getBigUint64(at, true);
        break;
    }
  }
  return out as StructValues<S>;
}

/**
 * Writes the given scalar fields of `layout` at `base` (others untouched).
 * Numbers are truncated to the field's width.
 *
 * @example
 * ```ts
 * import { encode, fuse_out_header } from "./fuse.ts";
 * const bytes = new Uint8Array(fuse_out_header.size);
 * encode(fuse_out_header, { len: 16, error: -2, unique: 7n },
 *   new DataView(bytes.buffer));
 * console.log(bytes[4]); // 254
 * ```
 */
export function encode<S extends FieldSpec>(
  layout: StructLayout<S>,
  values: Partial<StructValues<S>>,
  view: DataView,
  base = 0,
): void {
  const fields = layout.fields as FieldSpec;
  for (const [name, value] of Object.entries(values)) {
    const field = fields[name];
    if (field === undefined || value === undefined) continue;
    const at = base + field[0];
    switch (field[1]) {
      case "u16":
        view.setUint16(at, Number(value) & 0xffff, true);
        break;
      case "u32":
        view.setUint32(at, Number(value) >>> 0, true);
        break;
      case "i32":
        view.setInt32(at, Number(value) | 0, true);
        break;
      case "u64":
        view.setBigUint64(
          at,
          BigInt.asUintN(64, BigInt(value as number | bigint)),
          true,
        );
        break;
    }
  }
}

/**
 * The name of an opcode for messages (`"LOOKUP"`, `"opcode 99"`).
 *
 * @example
 * ```ts
 * import { opcodeName } from "./fuse.ts";
 * console.log(opcodeName(26)); // INIT
 * ```
 */
export function opcodeName(opcode: number): string {
  return OPCODE_NAMES.get(opcode) ?? `opcode ${opcode}`;
}

const OPCODE_NAMES = new Map<number, string>(
  Object.entries(FuseOpcode).map(([name, value]) => [value, name]),
);
