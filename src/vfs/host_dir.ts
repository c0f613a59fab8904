/**
 * A host directory shared with the guest (`--volume HOST:GUEST[:ro]`),
 * confined to its root.
 *
 * Deno has no `openat` or `O_NOFOLLOW`, so confinement rests on these
 * rules, each checked on every request:
 *
 * - the server never follows a symlink: the guest resolves symlinks in its
 *   own namespace, and a symlink node only answers readlink and getattr;
 * - a node is a path relative to the root plus the (dev, ino, file type)
 *   found when it was looked up; before a path is used, its parent
 *   directory's `realPath` must equal the path itself (no symlink and no
 *   `..` on the way, still under the root) and `lstat` of it must give the
 *   same (dev, ino, file type), else the request fails (ESTALE). The type
 *   matters: a file replaced by a symlink may get the freed inode number;
 * - names are single components (no `/`, `.`, `..`, NUL);
 * - calls that follow a final symlink (chmod, chown, utime, truncate,
 *   open) run only after `lstat` showed a regular file or directory, and an
 *   opened file's `fstat` must match the node, so a symlink swapped in by a
 *   host process between the checks is caught;
 * - new files are made with O_EXCL, which never follows a symlink;
 * - only regular files are opened (a host FIFO or device node would block
 *   or reach host devices); mknod makes only regular files;
 * - renames update the paths of every node below the renamed one.
 *
 * What remains is a race with *host* processes changing the directory
 * between a check and the call that follows it; the guest's own requests
 * are answered one at a time and cannot race each other.
 *
 * Read-only shares refuse every change with EROFS. Extended attributes are
 * not offered (Deno has no xattr calls): ENOSYS, which the guest kernel
 * remembers. Owners and modes are the host's.
 *
 * @module
 */

import {
  EACCES,
  EAGAIN,
  EBADF,
  EEXIST,
  EFBIG,
  EINVAL,
  EISDIR,
  ENAMETOOLONG,
  ENFILE,
  ENOENT,
  ENOSYS,
  ENOTDIR,
  ENXIO,
  EOPNOTSUPP,
  EPERM,
  EROFS,
  errnoOf,
  ESTALE,
  FsError,
} from "./errno.ts";
import {
  type Attr,
  type AttrChanges,
  checkName,
  type CreateResult,
  type DirEntry,
  type Entry,
  FALLOC_FL_KEEP_SIZE,
  type Filesystem,
  type FsContext,
  O_ACCMODE,
  O_APPEND,
  O_EXCL,
  O_RDONLY,
  O_TRUNC,
  O_WRONLY,
  type OpenResult,
  RENAME_NOREPLACE,
  ROOT_NODE_ID,
  S_IALLUGO,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  SEEK_DATA,
  SEEK_HOLE,
  type StatFs,
  SYMLINK_MAX,
  type Timespec,
  timespecFromMs,
  W_OK,
} from "./filesystem.ts";

/** Open handles of one share at most (host file descriptors). */
export const MAX_HOST_HANDLES = 1024;
/** Largest read, in bytes (FUSE reads are at most 1 MiB). */
const MAX_READ_BYTES = 1024 * 1024;
/** Largest file offset accepted, in bytes. */
const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

/** Options of {@linkcode HostDirFs}. */
export interface HostDirFsOptions {
  /** Refuse every change with EROFS. Default false. */
  readOnly?: boolean;
  /**
   * How long the guest may cache names and attributes, in seconds. The
   * host may change the directory behind the guest's back, so keep it
   * short. Default 1.
   */
  cacheTimeoutSeconds?: number;
}

interface Node {
  nodeid: number;
  /** Path relative to the root ("" for the root). */
  rel: string;
  dev: number;
  ino: number;
  /** File type bits (S_IFMT) of the mode. */
  type: number;
  nlookup: number;
}

interface FileHandle {
  nodeid: number;
  file?: Deno.FsFile;
  /** Directory handles: the listing taken at offset 0. */
  listing?: string[];
  dir: boolean;
}

/**
 * `node:fs`'s `statfsSync` (Deno has no statfs), loaded when the first
 * share is made rather than at start-up: loading `node:fs` costs about a
 * third of the module's import time, which every `initx` command pays.
 */
let statfsSync: typeof import("node:fs").statfsSync | undefined;
let statfsLoading: Promise<void> | undefined;

function loadStatfs(): Promise<void> {
  return statfsLoading ??= import("node:fs").then((fs) => {
    statfsSync = fs.statfsSync;
  });
}

/**
 * A filesystem backed by a host directory, confined to it.
 *
 * @example
 * ```ts
 * import { HostDirFs } from "./host_dir.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/hello.txt`, "hi\n");
 * const fs = new HostDirFs(dir, { readOnly: true });
 * const entry = fs.lookup(1, "hello.txt");
 * console.log(entry.attr.size); // 3
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class HostDirFs implements Filesystem {
  /** How long the guest may cache names and attributes, in seconds. */
  readonly cacheTimeoutSeconds: number;
  /** Whether every change is refused. */
  readonly readOnly: boolean;
  /** The root, as its canonical host path. */
  readonly root: string;
  /**
   * Resolves once `statfs()` can answer (it loads `node:fs`, a few ms);
   * until then `statfs()` fails with EAGAIN. A VM's guest asks long after.
   */
  readonly ready: Promise<void>;

  #nodes = new Map<number, Node>();
  #byIdentity = new Map<string, number>();
  #nextNodeId = ROOT_NODE_ID + 1;
  #handles = new Map<number, FileHandle>();
  #nextFh = 1;
  #scratch = new Uint8Array(0);

  /**
   * Shares directory `root`; throws an Error when it is not a directory
   * (symlinks to one are resolved once, here).
   */
  constructor(root: string, options: HostDirFsOptions = {}) {
    let real: string;
    let info: Deno.FileInfo;
    try {
      real = Deno.realPathSync(root);
      info = Deno.lstatSync(real);
    } catch (e) {
      throw new Error(
        `Cannot share host directory ${JSON.stringify(root)}: ${
          e instanceof Error ? e.message : String(e)
        }`,
      );
    }
    if (!info.isDirectory) {
      throw new Error(
        `Cannot share host directory ${
          JSON.stringify(root)
        }: it is not a directory`,
      );
    }
    this.root = real;
    this.readOnly = options.readOnly ?? false;
    this.cacheTimeoutSeconds = options.cacheTimeoutSeconds ?? 1;
    const node: Node = {
      nodeid: ROOT_NODE_ID,
      rel: "",
      dev: info.dev,
      ino: info.ino ?? 0,
      type: S_IFDIR,
      nlookup: 1,
    };
    this.#nodes.set(ROOT_NODE_ID, node);
    this.#byIdentity.set(identity(node), ROOT_NODE_ID);
    this.ready = loadStatfs();
  }

  lookup(parent: number, name: string): Entry {
    return this.#guard(() => {
      checkName(name);
      const dir = this.#resolveDir(parent);
      const rel = join(dir.node.rel, name);
      const info = Deno.lstatSync(this.#abs(rel));
      return this.#entry(rel, info);
    });
  }

  forget(nodeid: number, count: number): void {
    const node = this.#nodes.get(nodeid);
    if (node === undefined || nodeid === ROOT_NODE_ID) return;
    node.nlookup -= count;
    if (node.nlookup <= 0) this.#dropNode(node);
  }

  getattr(nodeid: number): Attr {
    return this.#guard(() => attrOf(this.#resolve(nodeid).info));
  }

  setattr(nodeid: number, changes: AttrChanges, fh?: number): Attr {
    return this.#guard(() => {
      this.#writable();
      const { path, info } = this.#resolve(nodeid);
      const type = info.mode! & S_IFMT;
      if (type !== S_IFREG && type !== S_IFDIR) throw new FsError(EOPNOTSUPP);
      if (changes.size !== undefined) {
        if (type === S_IFDIR) throw new FsError(EISDIR);
        if (changes.size < 0) throw new FsError(EINVAL);
        if (changes.size > MAX_OFFSET) throw new FsError(EFBIG);
        const file = fh === undefined
          ? undefined
          : this.#fileHandle(nodeid, fh);
        if (file) file.truncateSync(changes.size);
        else Deno.truncateSync(path, changes.size);
      }
      if (changes.mode !== undefined) {
        Deno.chmodSync(path, changes.mode & S_IALLUGO);
      }
      if (changes.uid !== undefined || changes.gid !== undefined) {
        Deno.chownSync(path, changes.uid ?? null, changes.gid ?? null);
      }
      if (changes.atime !== undefined || changes.mtime !== undefined) {
        const seconds = (t: Timespec | "now" | undefined, old: Date | null) =>
          t === "now"
            ? Date.now() / 1000
            : t === undefined
            ? (old?.getTime() ?? 0) / 1000
            : t.sec + t.nsec / 1e9;
        Deno.utimeSync(
          path,
          seconds(changes.atime, info.atime),
          seconds(changes.mtime, info.mtime),
        );
      }
      return attrOf(Deno.lstatSync(path));
    });
  }

  readlink(nodeid: number): string {
    return this.#guard(() => {
      const { path, info } = this.#resolve(nodeid);
      if (!info.isSymlink) throw new FsError(EINVAL);
      return Deno.readLinkSync(path);
    });
  }

  symlink(
    _ctx: FsContext,
    parent: number,
    name: string,
    target: string,
  ): Entry {
    return this.#guard(() => {
      this.#writable();
      checkName(name);
      if (target === "" || target.includes("\0")) throw new FsError(ENOENT);
      if (target.length > SYMLINK_MAX) throw new FsError(ENAMETOOLONG);
      const rel = join(this.#resolveDir(parent).node.rel, name);
      const path = this.#abs(rel);
      Deno.symlinkSync(target, path);
      return this.#entry(rel, Deno.lstatSync(path));
    });
  }

  mknod(
    _ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    _rdev: number,
  ): Entry {
    return this.#guard(() => {
      this.#writable();
      checkName(name);
      const type = mode & S_IFMT;
      if (type !== 0 && type !== S_IFREG) throw new FsError(EPERM);
      const rel = join(this.#resolveDir(parent).node.rel, name);
      const path = this.#abs(rel);
      Deno.openSync(path, {
        write: true,
        createNew: true,
        mode: mode & S_IALLUGO,
      }).close();
      return this.#entry(rel, Deno.lstatSync(path));
    });
  }

  mkdir(_ctx: FsContext, parent: number, name: string, mode: number): Entry {
    return this.#guard(() => {
      this.#writable();
      checkName(name);
      const rel = join(this.#resolveDir(parent).node.rel, name);
      const path = this.#abs(rel);
      Deno.mkdirSync(path, { mode: mode & S_IALLUGO });
      return this.#entry(rel, Deno.lstatSync(path));
    });
  }

  unlink(parent: number, name: string): void {
    this.#guard(() => {
      this.#writable();
      checkName(name);
      const path = this.#abs(join(this.#resolveDir(parent).node.rel, name));
      if (Deno.lstatSync(path).isDirectory) throw new FsError(EISDIR);
      Deno.removeSync(path);
    });
  }

  rmdir(parent: number, name: string): void {
    this.#guard(() => {
      this.#writable();
      checkName(name);
      const path = this.#abs(join(this.#resolveDir(parent).node.rel, name));
      if (!Deno.lstatSync(path).isDirectory) throw new FsError(ENOTDIR);
      Deno.removeSync(path);
    });
  }

  rename(
    parent: number,
    name: string,
    newParent: number,
    newName: string,
    flags: number,
  ): void {
    this.#guard(() => {
      this.#writable();
      if ((flags & ~RENAME_NOREPLACE) !== 0) throw new FsError(EINVAL);
      checkName(name);
      checkName(newName);
      const fromRel = join(this.#resolveDir(parent).node.rel, name);
      const toRel = join(this.#resolveDir(newParent).node.rel, newName);
      const from = this.#abs(fromRel);
      const to = this.#abs(toRel);
      const moved = Deno.lstatSync(from);
      if (flags & RENAME_NOREPLACE) {
        if (exists(to)) throw new FsError(EEXIST);
      }
      if (moved.isDirectory && (toRel + "/").startsWith(fromRel + "/")) {
        throw new FsError(EINVAL);
      }
      Deno.renameSync(from, to);
      this.#renamed(fromRel, toRel);
    });
  }

  link(nodeid: number, newParent: number, newName: string): Entry {
    return this.#guard(() => {
      this.#writable();
      checkName(newName);
      const { path, info } = this.#resolve(nodeid);
      if (info.isDirectory) throw new FsError(EPERM);
      const rel = join(this.#resolveDir(newParent).node.rel, newName);
      const to = this.#abs(rel);
      Deno.linkSync(path, to);
      return this.#entry(rel, Deno.lstatSync(to));
    });
  }

  open(nodeid: number, flags: number): OpenResult {
    return this.#guard(() => {
      const { path, info, node } = this.#resolve(nodeid);
      if (info.isDirectory) throw new FsError(EISDIR);
      if (!info.isFile) throw new FsError(EACCES);
      const file = this.#openFile(path, flags, info);
      return { fh: this.#newHandle({ nodeid: node.nodeid, file, dir: false }) };
    });
  }

  read(nodeid: number, fh: number, offset: number, size: number): Uint8Array[] {
    return this.#guard(() => {
      const file = this.#fileHandle(nodeid, fh);
      const want = Math.min(size, MAX_READ_BYTES);
      if (want <= 0 || offset > MAX_OFFSET) return [];
      if (this.#scratch.length < want) this.#scratch = new Uint8Array(want);
      file.seekSync(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < want) {
        const n = file.readSync(this.#scratch.subarray(done, want));
        if (n === null || n === 0) break;
        done += n;
      }
      return [this.#scratch.subarray(0, done)];
    });
  }

  write(nodeid: number, fh: number, offset: number, data: Uint8Array): number {
    return this.#guard(() => {
      this.#writable();
      const file = this.#fileHandle(nodeid, fh);
      if (offset + data.length > MAX_OFFSET) throw new FsError(EFBIG);
      file.seekSync(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < data.length) {
        const n = file.writeSync(data.subarray(done));
        if (n <= 0) break;
        done += n;
      }
      return done;
    });
  }

  statfs(_nodeid: number): StatFs {
    return this.#guard(() => {
      if (statfsSync === undefined) throw new FsError(EAGAIN);
      const s = statfsSync(this.root);
      return {
        blocks: Number(s.blocks),
        bfree: Number(s.bfree),
        bavail: Number(s.bavail),
        files: Number(s.files),
        ffree: Number(s.ffree),
        bsize: Number(s.bsize),
        namelen: 255,
        frsize: Number(s.bsize),
      };
    });
  }

  release(_nodeid: number, fh: number): void {
    const handle = this.#handles.get(fh);
    if (handle === undefined || handle.dir) return;
    this.#handles.delete(fh);
    try {
      handle.file?.close();
    } catch {
      // Already closed: nothing to give back.
    }
  }

  flush(nodeid: number, fh: number): void {
    this.#guard(() => void this.#fileHandle(nodeid, fh));
  }

  fsync(nodeid: number, fh: number, datasync: boolean): void {
    this.#guard(() => {
      const file = this.#fileHandle(nodeid, fh);
      if (datasync) file.syncDataSync();
      else file.syncSync();
    });
  }

  setxattr(
    _nodeid: number,
    _name: string,
    _value: Uint8Array,
    _flags: number,
  ): void {
    this.#writable();
    throw new FsError(ENOSYS);
  }

  getxattr(_nodeid: number, _name: string): Uint8Array {
    throw new FsError(ENOSYS);
  }

  listxattr(_nodeid: number): string[] {
    throw new FsError(ENOSYS);
  }

  removexattr(_nodeid: number, _name: string): void {
    this.#writable();
    throw new FsError(ENOSYS);
  }

  opendir(nodeid: number, _flags: number): OpenResult {
    return this.#guard(() => {
      const { node } = this.#resolveDir(nodeid);
      return { fh: this.#newHandle({ nodeid: node.nodeid, dir: true }) };
    });
  }

  *readdir(nodeid: number, fh: number, offset: number): Iterable<DirEntry> {
    const handle = this.#handles.get(fh);
    if (handle === undefined || !handle.dir || handle.nodeid !== nodeid) {
      throw new FsError(EBADF);
    }
    const { node, info } = this.#guard(() => this.#resolveDir(nodeid));
    if (offset === 0 || handle.listing === undefined) {
      handle.listing = this.#guard(() =>
        [...Deno.readDirSync(this.#abs(node.rel))].map((e) => e.name)
      );
    }
    const listing = handle.listing;
    for (let i = Math.max(0, offset); i < listing.length + 2; i++) {
      if (i === 0) {
        yield { name: ".", ino: info.ino ?? 0, type: S_IFDIR, offset: 1 };
        continue;
      }
      if (i === 1) {
        const up = node.rel === "" ? info : this.#lstatOrUndefined(
          this.#abs(dirname(node.rel)),
        );
        yield { name: "..", ino: up?.ino ?? 0, type: S_IFDIR, offset: 2 };
        continue;
      }
      const name = listing[i - 2]!;
      const child = this.#lstatOrUndefined(this.#abs(join(node.rel, name)));
      if (child === undefined) continue;
      yield {
        name,
        ino: child.ino ?? 0,
        type: child.mode! & S_IFMT,
        offset: i + 1,
      };
    }
  }

  releasedir(_nodeid: number, fh: number): void {
    const handle = this.#handles.get(fh);
    if (handle?.dir) this.#handles.delete(fh);
  }

  fsyncdir(nodeid: number, _fh: number, _datasync: boolean): void {
    this.#guard(() => void this.#resolveDir(nodeid));
  }

  access(nodeid: number, mask: number): void {
    this.#guard(() => {
      this.#resolve(nodeid);
      if ((mask & W_OK) && this.readOnly) throw new FsError(EROFS);
    });
  }

  create(
    _ctx: FsContext,
    parent: number,
    name: string,
    mode: number,
    flags: number,
  ): CreateResult {
    return this.#guard(() => {
      this.#writable();
      checkName(name);
      if (this.#handles.size >= MAX_HOST_HANDLES) throw new FsError(ENFILE);
      const rel = join(this.#resolveDir(parent).node.rel, name);
      const path = this.#abs(rel);
      const existing = this.#lstatOrUndefined(path);
      let file: Deno.FsFile;
      if (existing !== undefined) {
        if (flags & O_EXCL) throw new FsError(EEXIST);
        if (existing.isDirectory) throw new FsError(EISDIR);
        if (!existing.isFile) throw new FsError(EEXIST);
        file = this.#openFile(path, flags, existing);
      } else {
        const access = flags & O_ACCMODE;
        file = Deno.openSync(path, {
          read: access !== O_WRONLY,
          write: true,
          createNew: true,
          mode: mode & S_IALLUGO,
        });
      }
      try {
        const entry = this.#entry(rel, file.statSync());
        const fh = this.#newHandle({ nodeid: entry.nodeid, file, dir: false });
        return { entry, fh };
      } catch (e) {
        file.close();
        throw e;
      }
    });
  }

  fallocate(
    nodeid: number,
    fh: number,
    offset: number,
    length: number,
    mode: number,
  ): void {
    this.#guard(() => {
      this.#writable();
      const file = this.#fileHandle(nodeid, fh);
      if (offset < 0 || length <= 0) throw new FsError(EINVAL);
      if (offset + length > MAX_OFFSET) throw new FsError(EFBIG);
      if (mode === FALLOC_FL_KEEP_SIZE) return;
      if (mode !== 0) throw new FsError(EOPNOTSUPP);
      if (file.statSync().size < offset + length) {
        file.truncateSync(offset + length);
      }
    });
  }

  lseek(nodeid: number, fh: number, offset: number, whence: number): number {
    return this.#guard(() => {
      const size = this.#fileHandle(nodeid, fh).statSync().size;
      if (whence !== SEEK_DATA && whence !== SEEK_HOLE) {
        throw new FsError(EINVAL);
      }
      if (offset >= size) throw new FsError(ENXIO);
      return whence === SEEK_DATA ? offset : size;
    });
  }

  destroy(): void {
    for (const handle of this.#handles.values()) {
      try {
        handle.file?.close();
      } catch {
        // Already closed.
      }
    }
    this.#handles.clear();
    for (const node of [...this.#nodes.values()]) {
      if (node.nodeid !== ROOT_NODE_ID) this.#dropNode(node);
    }
  }

  // ---- confinement ----

  #abs(rel: string): string {
    return rel === "" ? this.root : `${this.root}/${rel}`;
  }

  /**
   * The node's path and its fresh lstat, after checking that the parent's
   * canonical path is the path itself and that the node is still the same
   * inode of the same type.
   */
  #resolve(nodeid: number): { node: Node; path: string; info: Deno.FileInfo } {
    const node = this.#nodes.get(nodeid);
    if (node === undefined) throw new FsError(ENOENT);
    if (node.rel !== "") this.#checkDirPath(dirname(node.rel));
    const path = this.#abs(node.rel);
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(path);
    } catch (e) {
      throw new FsError(errnoOf(e) === ENOENT ? ESTALE : errnoOf(e));
    }
    if (
      info.dev !== node.dev || (info.ino ?? 0) !== node.ino ||
      (info.mode! & S_IFMT) !== node.type
    ) {
      throw new FsError(ESTALE);
    }
    return { node, path, info };
  }

  #resolveDir(
    nodeid: number,
  ): { node: Node; path: string; info: Deno.FileInfo } {
    const resolved = this.#resolve(nodeid);
    if (!resolved.info.isDirectory) throw new FsError(ENOTDIR);
    if (resolved.node.rel !== "") this.#checkDirPath(resolved.node.rel);
    return resolved;
  }

  /** EACCES unless directory `rel` has no symlink or `..` on the way. */
  #checkDirPath(rel: string): void {
    const path = this.#abs(rel);
    let real: string;
    try {
      real = Deno.realPathSync(path);
    } catch (e) {
      throw new FsError(errnoOf(e) === ENOENT ? ESTALE : errnoOf(e));
    }
    if (real !== path) {
      throw new FsError(
        EACCES,
        `Cannot use ${JSON.stringify(rel)}: it leads outside the share`,
      );
    }
  }

  #openFile(path: string, flags: number, info: Deno.FileInfo): Deno.FsFile {
    const access = flags & O_ACCMODE;
    const writes = access !== O_RDONLY || (flags & O_TRUNC) !== 0;
    if (writes && this.readOnly) throw new FsError(EROFS);
    if (this.#handles.size >= MAX_HOST_HANDLES) throw new FsError(ENFILE);
    const file = Deno.openSync(path, {
      read: access !== O_WRONLY,
      write: access !== O_RDONLY || (flags & O_TRUNC) !== 0,
      append: (flags & O_APPEND) !== 0 && access !== O_RDONLY,
    });
    try {
      const opened = file.statSync();
      if (
        opened.dev !== info.dev || opened.ino !== info.ino || !opened.isFile
      ) {
        throw new FsError(ESTALE);
      }
      if (flags & O_TRUNC) file.truncateSync(0);
      return file;
    } catch (e) {
      file.close();
      throw e;
    }
  }

  #fileHandle(nodeid: number, fh: number): Deno.FsFile {
    const handle = this.#handles.get(fh);
    if (
      handle === undefined || handle.dir || handle.nodeid !== nodeid ||
      handle.file === undefined
    ) {
      throw new FsError(EBADF);
    }
    return handle.file;
  }

  #newHandle(handle: FileHandle): number {
    if (this.#handles.size >= MAX_HOST_HANDLES) {
      handle.file?.close();
      throw new FsError(ENFILE);
    }
    const fh = this.#nextFh++;
    this.#handles.set(fh, handle);
    return fh;
  }

  #entry(rel: string, info: Deno.FileInfo): Entry {
    const found: Node = {
      nodeid: this.#nextNodeId,
      rel,
      dev: info.dev,
      ino: info.ino ?? 0,
      type: info.mode! & S_IFMT,
      nlookup: 0,
    };
    const key = identity(found);
    const nodeid = this.#byIdentity.get(key);
    let node = nodeid === undefined ? undefined : this.#nodes.get(nodeid);
    if (node === undefined) {
      node = found;
      this.#nextNodeId++;
      this.#nodes.set(node.nodeid, node);
      this.#byIdentity.set(key, node.nodeid);
    } else if (node.nodeid !== ROOT_NODE_ID) {
      node.rel = rel;
    }
    node.nlookup++;
    return { nodeid: node.nodeid, attr: attrOf(info) };
  }

  #dropNode(node: Node): void {
    this.#nodes.delete(node.nodeid);
    const key = identity(node);
    if (this.#byIdentity.get(key) === node.nodeid) this.#byIdentity.delete(key);
  }

  /** Moves the paths of `fromRel` and everything below it to `toRel`. */
  #renamed(fromRel: string, toRel: string): void {
    const prefix = fromRel + "/";
    for (const node of this.#nodes.values()) {
      if (node.rel === fromRel) node.rel = toRel;
      else if (node.rel.startsWith(prefix)) {
        node.rel = toRel + node.rel.slice(fromRel.length);
      }
    }
  }

  #lstatOrUndefined(path: string): Deno.FileInfo | undefined {
    try {
      return Deno.lstatSync(path);
    } catch {
      return undefined;
    }
  }

  #writable(): void {
    if (this.readOnly) throw new FsError(EROFS);
  }

  /** Runs `f`, turning host errors into FsErrors. */
  #guard<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof FsError) throw e;
      throw new FsError(errnoOf(e), e instanceof Error ? e.message : String(e));
    }
  }
}

/** The key of `#byIdentity`: a node's inode and file type. */
function identity(node: Node): string {
  return `${node.dev}:${node.ino}:${node.type}`;
}

function join(rel: string, name: string): string {
  return rel === "" ? name : `${rel}/${name}`;
}

function dirname(rel: string): string {
  const at = rel.lastIndexOf("/");
  return at < 0 ? "" : rel.slice(0, at);
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function time(date: Date | null): Timespec {
  return timespecFromMs(date?.getTime() ?? 0);
}

function attrOf(info: Deno.FileInfo): Attr {
  return {
    ino: info.ino ?? 0,
    size: info.size,
    blocks: info.blocks ?? 0,
    atime: time(info.atime),
    mtime: time(info.mtime),
    ctime: time(info.ctime ?? info.mtime),
    mode: info.mode ??
      (info.isDirectory
        ? S_IFDIR | 0o755
        : info.isSymlink
        ? S_IFLNK | 0o777
        : S_IFREG | 0o644),
    nlink: info.nlink ?? 1,
    uid: info.uid ?? 0,
    gid: info.gid ?? 0,
    rdev: info.rdev ?? 0,
    blksize: info.blksize ?? 4096,
  };
}
