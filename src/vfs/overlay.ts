/**
 * A VM's writable view of an image: a {@linkcode LayerTree} as the
 * read-only lower layer and a copy-on-write upper layer in memory. Nothing
 * the guest does reaches the tree: an inode is copied up (its metadata, a
 * directory's entry map, an xattr map) the first time the VM touches it,
 * and file contents are copied chunk by chunk on the first write to each
 * chunk ({@linkcode FileData}). New inodes get numbers past the tree's.
 *
 * Everything the guest makes the host hold is accounted against
 * `maxBytes` (file data, xattrs, symlink targets, directory entries and a
 * fixed cost per inode); past it, writes fail with ENOSPC. Copy-ups of the
 * image's own inodes are accounted but never refused: they are bounded by
 * the image.
 *
 * The guest's kernel checks permissions (virtio-fs mounts use
 * `default_permissions`), so this filesystem does not.
 *
 * @module
 */

import {
  E2BIG,
  EBADF,
  EEXIST,
  EFBIG,
  EINVAL,
  EIO,
  EISDIR,
  EMLINK,
  ENAMETOOLONG,
  ENFILE,
  ENODATA,
  ENOENT,
  ENOSPC,
  ENOTDIR,
  ENOTEMPTY,
  EOPNOTSUPP,
  EPERM,
  ERANGE,
  FsError,
} from "./errno.ts";
import { FileData } from "./file_data.ts";
import {
  type Attr,
  type AttrChanges,
  checkName,
  type CreateResult,
  type DirEntry,
  type Entry,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  type Filesystem,
  type FsContext,
  now,
  O_EXCL,
  O_TRUNC,
  type OpenResult,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  ROOT_NODE_ID,
  S_IALLUGO,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  S_ISGID,
  SEEK_DATA,
  SEEK_HOLE,
  type StatFs,
  SYMLINK_MAX,
  type Timespec,
  XATTR_CREATE,
  XATTR_REPLACE,
} from "./filesystem.ts";
import type { LayerTree } from "./tree.ts";

/** Default of {@linkcode OverlayFsOptions.maxBytes}: 1 GiB. */
export const DEFAULT_MAX_BYTES = 1024 * 1024 * 1024;
/** Default of {@linkcode OverlayFsOptions.maxNodes}. */
export const DEFAULT_MAX_NODES = 1_000_000;
/** Largest file size, in bytes (contents are sparse: holes cost nothing). */
export const MAX_FILE_BYTES = 2 ** 50;
/** Open file and directory handles at most. */
export const MAX_HANDLES = 65536;
/** Hard links of one inode at most. */
export const MAX_LINKS = 65000;
/** Largest xattr value (XATTR_SIZE_MAX, include/uapi/linux/limits.h). */
export const XATTR_SIZE_MAX = 65536;
/** Longest xattr name (XATTR_NAME_MAX). */
export const XATTR_NAME_MAX = 255;
/** Accounted bytes of one inode. */
const INODE_COST_BYTES = 256;
/** Accounted bytes of one directory entry, plus its name. */
const ENTRY_COST_BYTES = 64;
const BLOCK_BYTES = 4096;
const DIR_SIZE_BYTES = 4096;

/** Options of {@linkcode OverlayFs}. */
export interface OverlayFsOptions {
  /** Bytes the upper layer may hold. Default {@linkcode DEFAULT_MAX_BYTES}. */
  maxBytes?: number;
  /** Inodes the VM may create. Default {@linkcode DEFAULT_MAX_NODES}. */
  maxNodes?: number;
  /**
   * How long the guest may cache names and attributes, in seconds. Only the
   * guest changes this filesystem, so long is safe. Default 60.
   */
  cacheTimeoutSeconds?: number;
}

/** An inode as the VM sees it (copied up from the tree, or new). */
interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  rdev: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
  xattrs: Map<string, Uint8Array>;
  /** Accounted bytes of xattrs. */
  xattrBytes: number;
  /** Unchanged image contents of a regular file (shared, never written). */
  lower?: Uint8Array;
  /** Contents once written. */
  data?: FileData;
  target?: string;
  entries?: Map<string, number>;
  parent: number;
  nlookup: number;
  opens: number;
  /** Whether the VM created it (counts against maxNodes). */
  created: boolean;
}

interface Handle {
  nodeid: number;
  dir: boolean;
  /** A directory listing taken at offset 0: [name, ino]. */
  listing?: [string, number][];
}

const EMPTY = new Uint8Array(0);

/**
 * The copy-on-write filesystem of one VM over a {@linkcode LayerTree}.
 * Making one freezes the tree.
 *
 * @example
 * ```ts
 * import { LayerTree, OverlayFs } from "./mod.ts";
 * const tree = new LayerTree();
 * await tree.applyLayer([{ path: "etc/hostname", type: "file", mode: 0o644,
 *   uid: 0, gid: 0, mtimeMs: 0, data: new TextEncoder().encode("box\n") }]);
 * const fs = new OverlayFs(tree);
 * const etc = fs.lookup(1, "etc");
 * const file = fs.lookup(etc.nodeid, "hostname");
 * const { fh } = fs.open(file.nodeid, 2);
 * fs.write(file.nodeid, fh, 0, new TextEncoder().encode("vm1\n"));
 * console.log(new TextDecoder().decode(tree.lookupPath("etc/hostname")!.data)); // box
 * ```
 */
export class OverlayFs implements Filesystem {
  /** How long the guest may cache names and attributes, in seconds. */
  readonly cacheTimeoutSeconds: number;

  #tree: LayerTree;
  #nodes = new Map<number, Inode>();
  #nextIno: number;
  #handles = new Map<number, Handle>();
  #nextFh = 1;
  #maxBytes: number;
  #maxNodes: number;
  #usedBytes = 0;
  #createdNodes = 0;

  /** Makes the VM's view of `tree` and freezes the tree. */
  constructor(tree: LayerTree, options: OverlayFsOptions = {}) {
    tree.freeze();
    this.#tree = tree;
    this.#nextIno = tree.nextIno;
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
    this.#maxNodes = options.maxNodes ?? DEFAULT_MAX_NODES;
    this.cacheTimeoutSeconds = options.cacheTimeoutSeconds ?? 60;
    this.#node(ROOT_NODE_ID);
  }

  /** Bytes the upper layer holds (what counts against `maxBytes`). */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /** Inodes the VM has touched or made. */
  get nodeCount(): number {
    return this.#nodes.size;
  }

  /** Open handles. */
  get handleCount(): number {
    return this.#handles.size;
  }

  lookup(parent: number, name: string): Entry {
    checkName(name);
    const dir = this.#dir(parent);
    const ino = dir.entries!.get(name);
    if (ino === undefined) throw new FsError(ENOENT);
    return this.#entry(this.#node(ino));
  }

  forget(nodeid: number, count: number): void {
    const node = this.#nodes.get(nodeid);
    if (node === undefined) return;
    node.nlookup = Math.max(0, node.nlookup - count);
    this.#maybeDrop(node);
  }

  getattr(nodeid: number): Attr {
    return attrOf(this.#get(nodeid));
  }

  setattr(nodeid: number, changes: AttrChanges): Attr {
    const node = this.#get(nodeid);
    const t = now();
    if (changes.size !== undefined) {
      const type = node.mode & S_IFMT;
      if (type === S_IFDIR) throw new FsError(EISDIR);
      if (type !== S_IFREG) throw new FsError(EINVAL);
      if (changes.size < 0) throw new FsError(EINVAL);
      if (changes.size > MAX_FILE_BYTES) throw new FsError(EFBIG);
      if (changes.size !== sizeOf(node)) {
        this.#data(node).truncate(changes.size);
        node.mtime = t;
      }
    }
    if (changes.mode !== undefined) {
      node.mode = (node.mode & S_IFMT) | (changes.mode & S_IALLUGO);
    }
    if (changes.uid !== undefined) node.uid = changes.uid;
    if (changes.gid !== undefined) node.gid = changes.gid;
    if (changes.atime !== undefined) {
      node.atime = changes.atime === "now" ? t : changes.atime;
    }
    if (changes.mtime !== undefined) {
      node.mtime = changes.mtime === "now" ? t : changes.mtime;
    }
    node.ctime = changes.ctime ?? t;
    return attrOf(node);
  }

  readlink(nodeid: number): string {
    const node = this.#get(nodeid);
    if (node.target === undefined) throw new FsError(EINVAL);
    return node.target;
  }

  symlink(ctx: FsContext, parent: number, name: string, target: string): Entry {
    if (target === "") throw new FsError(ENOENT);
    if (target.length > SYMLINK_MAX) throw new FsError(ENAMETOOLONG);
    return this.#make(ctx, parent, name, S_IFLNK | 0o777, (node) => {
      this.#reserve(target.length);
      node.target = target;
    });
  }

  mknod(
    ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    rdev: number,
  ): Entry {
    let type = mode & S_IFMT;
    if (type === 0) type = S_IFREG;
    if (
      type !== S_IFREG && type !== S_IFCHR && type !== S_IFBLK &&
      type !== S_IFIFO && type !== S_IFSOCK
    ) {
      throw new FsError(EINVAL);
    }
    return this.#make(ctx, parent, name, type | (mode & S_IALLUGO), (node) => {
      if (type === S_IFCHR || type === S_IFBLK) node.rdev = rdev >>> 0;
      if (type === S_IFREG) node.lower = EMPTY;
    });
  }

  mkdir(ctx: FsContext, parent: number, name: string, mode: number): Entry {
    return this.#make(ctx, parent, name, S_IFDIR | (mode & S_IALLUGO), (n) => {
      n.entries = new Map();
      n.nlink = 2;
      n.parent = parent;
      this.#get(parent).nlink++;
    });
  }

  unlink(parent: number, name: string): void {
    checkName(name);
    const dir = this.#dir(parent);
    const node = this.#child(dir, name);
    if ((node.mode & S_IFMT) === S_IFDIR) throw new FsError(EISDIR);
    this.#removeEntry(dir, name);
    node.nlink--;
    node.ctime = now();
    this.#maybeDrop(node);
  }

  rmdir(parent: number, name: string): void {
    checkName(name);
    const dir = this.#dir(parent);
    const node = this.#child(dir, name);
    if ((node.mode & S_IFMT) !== S_IFDIR) throw new FsError(ENOTDIR);
    if (node.entries!.size > 0) throw new FsError(ENOTEMPTY);
    this.#removeEntry(dir, name);
    dir.nlink--;
    node.nlink = 0;
    this.#maybeDrop(node);
  }

  rename(
    parent: number,
    name: string,
    newParent: number,
    newName: string,
    flags: number,
  ): void {
    if (
      (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) !== 0 ||
      flags === (RENAME_NOREPLACE | RENAME_EXCHANGE)
    ) {
      throw new FsError(EINVAL);
    }
    checkName(name);
    checkName(newName);
    const from = this.#dir(parent);
    const to = this.#dir(newParent);
    const node = this.#child(from, name);
    const otherIno = to.entries!.get(newName);
    const other = otherIno === undefined ? undefined : this.#node(otherIno);
    const isDir = (n: Inode) => (n.mode & S_IFMT) === S_IFDIR;
    const t = now();
    if (flags & RENAME_EXCHANGE) {
      if (other === undefined) throw new FsError(ENOENT);
      if (other === node) return;
      if (isDir(node)) this.#checkNotInside(node, to);
      if (isDir(other)) this.#checkNotInside(other, from);
      from.entries!.set(name, other.ino);
      to.entries!.set(newName, node.ino);
      if (from !== to) {
        this.#moveDir(node, from, to);
        this.#moveDir(other, to, from);
      }
      node.ctime = other.ctime = t;
      from.mtime =
        from.ctime =
        to.mtime =
        to.ctime =
          t;
      return;
    }
    if (other === node) return;
    if (isDir(node)) this.#checkNotInside(node, to);
    if (other !== undefined) {
      if (flags & RENAME_NOREPLACE) throw new FsError(EEXIST);
      if (isDir(node) && !isDir(other)) throw new FsError(ENOTDIR);
      if (!isDir(node) && isDir(other)) throw new FsError(EISDIR);
      if (isDir(other) && other.entries!.size > 0) {
        throw new FsError(ENOTEMPTY);
      }
    }
    if (other !== undefined) {
      this.#removeEntry(to, newName);
      if (isDir(other)) {
        to.nlink--;
        other.nlink = 0;
      } else {
        other.nlink--;
      }
      other.ctime = t;
      this.#maybeDrop(other);
    }
    this.#removeEntry(from, name);
    this.#addEntry(to, newName, node.ino, true);
    if (from !== to) this.#moveDir(node, from, to);
    node.ctime = t;
    to.mtime = to.ctime = t;
  }

  link(nodeid: number, newParent: number, newName: string): Entry {
    checkName(newName);
    const node = this.#get(nodeid);
    if ((node.mode & S_IFMT) === S_IFDIR) throw new FsError(EPERM);
    const dir = this.#dir(newParent);
    if (dir.entries!.has(newName)) throw new FsError(EEXIST);
    if (node.nlink >= MAX_LINKS) throw new FsError(EMLINK);
    this.#addEntry(dir, newName, node.ino, false);
    node.nlink++;
    node.ctime = now();
    return this.#entry(node);
  }

  open(nodeid: number, flags: number): OpenResult {
    const node = this.#get(nodeid);
    return this.#open(node, flags);
  }

  read(
    nodeid: number,
    _fh: number,
    offset: number,
    size: number,
  ): Uint8Array[] {
    const node = this.#file(nodeid);
    if (node.data) return node.data.read(offset, size);
    const lower = node.lower ?? EMPTY;
    if (offset >= lower.length || size <= 0) return [];
    return [lower.subarray(offset, Math.min(lower.length, offset + size))];
  }

  write(nodeid: number, _fh: number, offset: number, data: Uint8Array): number {
    const node = this.#file(nodeid);
    if (offset < 0) throw new FsError(EINVAL);
    if (offset + data.length > MAX_FILE_BYTES) throw new FsError(EFBIG);
    const n = this.#data(node).write(offset, data);
    node.mtime = node.ctime = now();
    return n;
  }

  statfs(_nodeid: number): StatFs {
    const blocks = Math.floor(this.#maxBytes / BLOCK_BYTES);
    const free = Math.max(
      0,
      Math.floor((this.#maxBytes - this.#usedBytes) / BLOCK_BYTES),
    );
    return {
      blocks,
      bfree: free,
      bavail: free,
      files: this.#maxNodes,
      ffree: Math.max(0, this.#maxNodes - this.#createdNodes),
      bsize: BLOCK_BYTES,
      namelen: 255,
      frsize: BLOCK_BYTES,
    };
  }

  release(_nodeid: number, fh: number): void {
    this.#close(fh);
  }

  flush(nodeid: number, _fh: number): void {
    this.#get(nodeid);
  }

  fsync(nodeid: number, _fh: number, _datasync: boolean): void {
    this.#get(nodeid);
  }

  setxattr(
    nodeid: number,
    name: string,
    value: Uint8Array,
    flags: number,
  ): void {
    checkXattrName(name);
    if (value.length > XATTR_SIZE_MAX) throw new FsError(E2BIG);
    const node = this.#get(nodeid);
    const old = node.xattrs.get(name);
    if ((flags & XATTR_CREATE) && old !== undefined) {
      throw new FsError(EEXIST);
    }
    if ((flags & XATTR_REPLACE) && old === undefined) {
      throw new FsError(ENODATA);
    }
    const cost = name.length + value.length;
    const oldCost = old === undefined ? 0 : name.length + old.length;
    this.#reserve(cost - oldCost);
    node.xattrBytes += cost - oldCost;
    node.xattrs.set(name, value.slice());
    node.ctime = now();
  }

  getxattr(nodeid: number, name: string): Uint8Array {
    checkXattrName(name);
    const value = this.#get(nodeid).xattrs.get(name);
    if (value === undefined) throw new FsError(ENODATA);
    return value;
  }

  listxattr(nodeid: number): string[] {
    return [...this.#get(nodeid).xattrs.keys()];
  }

  removexattr(nodeid: number, name: string): void {
    checkXattrName(name);
    const node = this.#get(nodeid);
    const old = node.xattrs.get(name);
    if (old === undefined) throw new FsError(ENODATA);
    node.xattrs.delete(name);
    const cost = name.length + old.length;
    node.xattrBytes -= cost;
    this.#release(cost);
    node.ctime = now();
  }

  opendir(nodeid: number, _flags: number): OpenResult {
    const node = this.#get(nodeid);
    if ((node.mode & S_IFMT) !== S_IFDIR) throw new FsError(ENOTDIR);
    return { fh: this.#newHandle({ nodeid, dir: true }), keepCache: false };
  }

  *readdir(nodeid: number, fh: number, offset: number): Iterable<DirEntry> {
    const handle = this.#handles.get(fh);
    if (handle === undefined || !handle.dir || handle.nodeid !== nodeid) {
      throw new FsError(EBADF);
    }
    if (offset === 0 || handle.listing === undefined) {
      const dir = this.#dir(nodeid);
      handle.listing = [
        [".", dir.ino],
        ["..", dir.parent],
        ...dir.entries!,
      ];
    }
    const listing = handle.listing;
    for (let i = Math.max(0, offset); i < listing.length; i++) {
      const [name, ino] = listing[i]!;
      const type = this.#nodes.get(ino)?.mode ?? this.#tree.node(ino)?.mode;
      if (type === undefined) continue;
      yield { name, ino, type: type & S_IFMT, offset: i + 1 };
    }
  }

  releasedir(_nodeid: number, fh: number): void {
    this.#close(fh);
  }

  fsyncdir(nodeid: number, _fh: number, _datasync: boolean): void {
    this.#get(nodeid);
  }

  access(nodeid: number, _mask: number): void {
    this.#get(nodeid);
  }

  create(
    ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    flags: number,
  ): CreateResult {
    checkName(name);
    const dir = this.#dir(parent);
    const ino = dir.entries!.get(name);
    if (ino !== undefined) {
      if (flags & O_EXCL) throw new FsError(EEXIST);
      const node = this.#node(ino);
      if ((node.mode & S_IFMT) === S_IFDIR) throw new FsError(EISDIR);
      const opened = this.#open(node, flags);
      return { ...opened, entry: this.#entry(node) };
    }
    if (this.#handles.size >= MAX_HANDLES) throw new FsError(ENFILE);
    const entry = this.#make(
      ctx,
      parent,
      name,
      S_IFREG | (mode & S_IALLUGO),
      (node) => {
        node.lower = EMPTY;
      },
    );
    const opened = this.#open(this.#get(entry.nodeid), flags & ~O_TRUNC);
    return { ...opened, entry };
  }

  fallocate(
    nodeid: number,
    _fh: number,
    offset: number,
    length: number,
    mode: number,
  ): void {
    const node = this.#file(nodeid);
    if (offset < 0 || length <= 0) throw new FsError(EINVAL);
    const end = offset + length;
    if (end > MAX_FILE_BYTES) throw new FsError(EFBIG);
    const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0;
    const grow = () => {
      if (!keepSize && end > sizeOf(node)) this.#data(node).truncate(end);
    };
    switch (mode & ~FALLOC_FL_KEEP_SIZE) {
      case 0:
        grow();
        break;
      case FALLOC_FL_PUNCH_HOLE:
        if (!keepSize) throw new FsError(EOPNOTSUPP);
        this.#data(node).zeroRange(offset, length);
        break;
      case FALLOC_FL_ZERO_RANGE:
        this.#data(node).zeroRange(offset, length);
        grow();
        break;
      default:
        throw new FsError(EOPNOTSUPP);
    }
    node.mtime = node.ctime = now();
  }

  lseek(nodeid: number, _fh: number, offset: number, whence: number): number {
    const node = this.#file(nodeid);
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) {
      throw new FsError(EINVAL);
    }
    const data = node.data ?? FileData.fromShared(node.lower ?? EMPTY);
    return whence === SEEK_DATA ? data.seekData(offset) : data.seekHole(offset);
  }

  destroy(): void {
    this.#handles.clear();
    for (const node of [...this.#nodes.values()]) {
      node.opens = 0;
      node.nlookup = 0;
      this.#maybeDrop(node);
    }
  }

  // ---- inodes ----

  /** A node the VM knows by ID (never copies up: IDs come from entries). */
  #get(nodeid: number): Inode {
    const node = this.#nodes.get(nodeid);
    if (node === undefined) throw new FsError(ENOENT);
    return node;
  }

  /** The VM's node `ino`, copied up from the tree on first use. */
  #node(ino: number): Inode {
    const known = this.#nodes.get(ino);
    if (known !== undefined) return known;
    const lower = this.#tree.node(ino);
    if (lower === undefined) {
      throw new FsError(EIO, `Cannot copy up inode ${ino}: not in the tree`);
    }
    let xattrBytes = 0;
    for (const [k, v] of lower.xattrs) xattrBytes += k.length + v.length;
    const node: Inode = {
      ino,
      mode: lower.mode,
      uid: lower.uid,
      gid: lower.gid,
      nlink: lower.nlink,
      rdev: lower.rdev,
      atime: lower.mtime,
      mtime: lower.mtime,
      ctime: lower.mtime,
      xattrs: new Map(lower.xattrs),
      xattrBytes,
      lower: lower.data,
      target: lower.target,
      entries: lower.entries ? new Map(lower.entries) : undefined,
      parent: lower.parent,
      nlookup: 0,
      opens: 0,
      created: false,
    };
    let cost = INODE_COST_BYTES + xattrBytes + (node.target?.length ?? 0);
    for (const name of node.entries?.keys() ?? []) {
      cost += ENTRY_COST_BYTES + name.length;
    }
    this.#reserve(cost, true);
    this.#nodes.set(ino, node);
    return node;
  }

  #dir(nodeid: number): Inode {
    const node = this.#get(nodeid);
    if (node.entries === undefined) throw new FsError(ENOTDIR);
    return node;
  }

  #file(nodeid: number): Inode {
    const node = this.#get(nodeid);
    const type = node.mode & S_IFMT;
    if (type === S_IFDIR) throw new FsError(EISDIR);
    if (type !== S_IFREG) throw new FsError(EINVAL);
    return node;
  }

  #child(dir: Inode, name: string): Inode {
    const ino = dir.entries!.get(name);
    if (ino === undefined) throw new FsError(ENOENT);
    return this.#node(ino);
  }

  #entry(node: Inode): Entry {
    node.nlookup++;
    return { nodeid: node.ino, attr: attrOf(node) };
  }

  #data(node: Inode): FileData {
    if (node.data === undefined) {
      node.data = FileData.fromShared(
        node.lower ?? EMPTY,
        (bytes) => bytes < 0 ? this.#release(-bytes) : this.#reserve(bytes),
      );
      node.lower = undefined;
    }
    return node.data;
  }

  /** Makes a new inode named `name` in `parent`; `init` fills in its kind. */
  #make(
    ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    init: (node: Inode) => void,
  ): Entry {
    checkName(name);
    const dir = this.#dir(parent);
    if (dir.entries!.has(name)) throw new FsError(EEXIST);
    if (this.#createdNodes >= this.#maxNodes) throw new FsError(ENOSPC);
    const t = now();
    const inheritGid = (dir.mode & S_ISGID) !== 0;
    let finalMode = mode;
    if (inheritGid && (mode & S_IFMT) === S_IFDIR) finalMode |= S_ISGID;
    const node: Inode = {
      ino: this.#nextIno,
      mode: finalMode,
      uid: ctx.uid,
      gid: inheritGid ? dir.gid : ctx.gid,
      nlink: 1,
      rdev: 0,
      atime: t,
      mtime: t,
      ctime: t,
      xattrs: new Map(),
      xattrBytes: 0,
      parent,
      nlookup: 0,
      opens: 0,
      created: true,
    };
    this.#reserve(INODE_COST_BYTES);
    try {
      init(node);
      this.#addEntry(dir, name, node.ino, false);
    } catch (e) {
      this.#release(INODE_COST_BYTES + (node.target?.length ?? 0));
      if ((mode & S_IFMT) === S_IFDIR && node.entries) dir.nlink--;
      throw e;
    }
    this.#nextIno++;
    this.#createdNodes++;
    this.#nodes.set(node.ino, node);
    return this.#entry(node);
  }

  #addEntry(dir: Inode, name: string, ino: number, force: boolean): void {
    this.#reserve(ENTRY_COST_BYTES + name.length, force);
    dir.entries!.set(name, ino);
    dir.mtime = dir.ctime = now();
  }

  #removeEntry(dir: Inode, name: string): void {
    if (dir.entries!.delete(name)) {
      this.#release(ENTRY_COST_BYTES + name.length);
      dir.mtime = dir.ctime = now();
    }
  }

  /** Updates parent links after directory `node` moved from `from` to `to`. */
  #moveDir(node: Inode, from: Inode, to: Inode): void {
    if ((node.mode & S_IFMT) !== S_IFDIR) return;
    node.parent = to.ino;
    from.nlink--;
    to.nlink++;
  }

  /** EINVAL when `dir` is `node` or inside it (a directory into itself). */
  #checkNotInside(node: Inode, dir: Inode): void {
    let at = dir;
    for (let depth = 0; depth < 1_000_000; depth++) {
      if (at.ino === node.ino) throw new FsError(EINVAL);
      if (at.ino === ROOT_NODE_ID) return;
      at = this.#node(at.parent);
    }
    throw new FsError(EIO);
  }

  #open(node: Inode, flags: number): OpenResult {
    const type = node.mode & S_IFMT;
    if (type === S_IFDIR) throw new FsError(EISDIR);
    if (type !== S_IFREG) throw new FsError(EINVAL);
    if (this.#handles.size >= MAX_HANDLES) throw new FsError(ENFILE);
    if ((flags & O_TRUNC) && sizeOf(node) > 0) {
      this.#data(node).truncate(0);
      node.mtime = node.ctime = now();
    }
    node.opens++;
    return {
      fh: this.#newHandle({ nodeid: node.ino, dir: false }),
      keepCache: true,
    };
  }

  #newHandle(handle: Handle): number {
    if (this.#handles.size >= MAX_HANDLES) throw new FsError(ENFILE);
    const fh = this.#nextFh++;
    this.#handles.set(fh, handle);
    return fh;
  }

  #close(fh: number): void {
    const handle = this.#handles.get(fh);
    if (handle === undefined) return;
    this.#handles.delete(fh);
    const node = this.#nodes.get(handle.nodeid);
    if (node === undefined || handle.dir) return;
    node.opens = Math.max(0, node.opens - 1);
    this.#maybeDrop(node);
  }

  /** Frees a node nobody can reach any more. */
  #maybeDrop(node: Inode): void {
    if (
      node.nlink > 0 || node.nlookup > 0 || node.opens > 0 ||
      node.ino === ROOT_NODE_ID
    ) return;
    this.#nodes.delete(node.ino);
    node.data?.release();
    let cost = INODE_COST_BYTES + node.xattrBytes + (node.target?.length ?? 0);
    for (const name of node.entries?.keys() ?? []) {
      cost += ENTRY_COST_BYTES + name.length;
    }
    this.#release(cost);
    if (node.created) this.#createdNodes--;
  }

  #reserve(bytes: number, force = false): void {
    if (bytes <= 0) {
      this.#release(-bytes);
      return;
    }
    if (!force && this.#usedBytes + bytes > this.#maxBytes) {
      throw new FsError(ENOSPC);
    }
    this.#usedBytes += bytes;
  }

  #release(bytes: number): void {
    this.#usedBytes = Math.max(0, this.#usedBytes - bytes);
  }
}

function checkXattrName(name: string): void {
  if (name === "") throw new FsError(EINVAL);
  if (name.length > XATTR_NAME_MAX) throw new FsError(ERANGE);
}

function sizeOf(node: Inode): number {
  if (node.data) return node.data.size;
  if (node.lower) return node.lower.length;
  if (node.target !== undefined) {
    return new TextEncoder().encode(node.target).length;
  }
  if (node.entries) return DIR_SIZE_BYTES;
  return 0;
}

function attrOf(node: Inode): Attr {
  const stored = node.data?.storedBytes ?? node.lower?.length ??
    (node.entries ? DIR_SIZE_BYTES : 0);
  return {
    ino: node.ino,
    size: sizeOf(node),
    blocks: Math.ceil(stored / 512),
    atime: node.atime,
    mtime: node.mtime,
    ctime: node.ctime,
    mode: node.mode,
    nlink: node.nlink,
    uid: node.uid,
    gid: node.gid,
    rdev: node.rdev,
    blksize: BLOCK_BYTES,
  };
}
