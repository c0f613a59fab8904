/**
 * The FUSE server of virtio-fs: it turns one request (a `fuse_in_header`
 * and its arguments, as the guest's FUSE driver put it on a virtqueue) into
 * calls on a {@linkcode Filesystem} and encodes the reply.
 *
 * Requests are hostile input. Every length is checked before it is read; a
 * request too short for its opcode, a name without its NUL, or a size past
 * the limits answers EINVAL; an opcode not served answers ENOSYS; anything
 * before INIT answers EIO. A filesystem failure answers its errno; a bug in
 * the filesystem (any other exception) answers EIO and is reported through
 * `onError`, so nothing the guest sends can throw out of
 * {@linkcode FuseServer.handle}.
 *
 * Under virtio-fs the driver pairs each reply with its request by the
 * descriptor chain, not by `unique`, so even a request too short to carry a
 * header gets an (EINVAL) answer.
 *
 * @module
 */

import {
  EINVAL,
  EIO,
  ENOSYS,
  EPROTO,
  ERANGE,
  FsError,
} from "../../../vfs/errno.ts";
import type {
  Attr,
  AttrChanges,
  Entry,
  Filesystem,
  FsContext,
  OpenResult,
  Timespec,
} from "../../../vfs/filesystem.ts";
import { S_IFMT, SEEK_DATA, SEEK_HOLE } from "../../../vfs/filesystem.ts";
import {
  FATTR,
  FOPEN,
  fuse_attr,
  fuse_attr_out,
  fuse_batch_forget_in,
  FUSE_COMPAT_SETXATTR_IN_SIZE,
  fuse_create_in,
  fuse_dirent,
  fuse_entry_out,
  fuse_fallocate_in,
  fuse_forget_one,
  FUSE_FSYNC_FDATASYNC,
  fuse_fsync_in,
  fuse_getxattr_in,
  fuse_in_header,
  fuse_init_out,
  FUSE_KERNEL_VERSION,
  fuse_kstatfs,
  fuse_link_in,
  fuse_lseek_in,
  fuse_mkdir_in,
  fuse_mknod_in,
  fuse_open_in,
  fuse_open_out,
  fuse_out_header,
  fuse_read_in,
  fuse_release_in,
  fuse_rename2_in,
  fuse_rename_in,
  FUSE_SERVER_MINOR_VERSION,
  fuse_setattr_in,
  fuse_write_in,
  FuseInitFlag,
  FuseOpcode,
  opcodeName,
} from "./fuse.ts";

/** Largest READ or WRITE payload the server offers (`max_write`, 256 pages). */
export const FUSE_MAX_IO_BYTES = 1024 * 1024;
/** Pages per request offered with FUSE_MAX_PAGES (256 is the kernel's limit). */
export const FUSE_MAX_PAGES = FUSE_MAX_IO_BYTES / 4096;
/** Largest extended attribute value or name list answered (XATTR_SIZE_MAX). */
export const FUSE_MAX_XATTR_BYTES = 64 * 1024;
/** Largest request accepted: a full WRITE with its headers and some slack. */
export const FUSE_MAX_REQUEST_BYTES = FUSE_MAX_IO_BYTES + 4096;

/** INIT flags the server takes when the kernel offers them. */
const SERVER_INIT_FLAGS = FuseInitFlag.ASYNC_READ |
  FuseInitFlag.ATOMIC_O_TRUNC | FuseInitFlag.BIG_WRITES |
  FuseInitFlag.AUTO_INVAL_DATA | FuseInitFlag.DO_READDIRPLUS |
  FuseInitFlag.READDIRPLUS_AUTO | FuseInitFlag.PARALLEL_DIROPS |
  FuseInitFlag.MAX_PAGES | FuseInitFlag.CACHE_SYMLINKS;

const IN_HEADER = fuse_in_header.size;
const OUT_HEADER = fuse_out_header.size;

/** Options of {@linkcode FuseServer}. */
export interface FuseServerOptions {
  /**
   * Called with an exception a filesystem threw that was not an
   * {@linkcode FsError} (the guest got EIO). Default: ignored.
   */
  onError?: (error: unknown, opcode: string) => void;
}

/**
 * Answers FUSE requests from a {@linkcode Filesystem}. One server serves one
 * guest session (INIT to DESTROY, or until {@linkcode FuseServer.reset}).
 *
 * @example
 * ```ts
 * import { FuseServer } from "./server.ts";
 * import { LayerTree, OverlayFs } from "../../../vfs/mod.ts";
 * const server = new FuseServer(new OverlayFs(new LayerTree()));
 * const request = new Uint8Array(40); // GETATTR before INIT
 * const view = new DataView(request.buffer);
 * view.setUint32(0, 40, true);
 * view.setUint32(4, 3, true);
 * const reply = server.handle(request, 4096)!;
 * console.log(new DataView(reply[0].buffer).getInt32(4, true)); // -5 (EIO)
 * ```
 */
export class FuseServer {
  readonly #fs: Filesystem;
  readonly #onError: (error: unknown, opcode: string) => void;
  #initialized = false;
  #requests = 0;
  #errors = 0;

  /** A server over `filesystem`, waiting for INIT. */
  constructor(filesystem: Filesystem, options: FuseServerOptions = {}) {
    this.#fs = filesystem;
    this.#onError = options.onError ?? (() => {});
  }

  /** Whether INIT was answered (and no DESTROY or reset came since). */
  get initialized(): boolean {
    return this.#initialized;
  }

  /** Requests handled so far. */
  get requests(): number {
    return this.#requests;
  }

  /** Requests answered with an error so far. */
  get errors(): number {
    return this.#errors;
  }

  /**
   * Forgets the session (the device was reset): the filesystem drops its
   * lookups and handles, and the next request must be INIT.
   */
  reset(): void {
    if (this.#initialized) this.#destroy();
  }

  /**
   * Answers one request. Returns the reply as pieces to be written in order
   * (the first holds the `fuse_out_header`, whose `len` counts them all;
   * READ's data may be views into the filesystem, valid until its next
   * call), or undefined for requests without a reply (FORGET, BATCH_FORGET,
   * INTERRUPT). `capacity` is the room the guest gave for the reply; READ,
   * READDIR and the xattr requests never answer more than it, and a reply
   * that cannot fit becomes ERANGE. Never throws.
   */
  handle(request: Uint8Array, capacity: number): Uint8Array[] | undefined {
    this.#requests++;
    if (request.length < IN_HEADER) return this.#error(0n, EINVAL);
    const view = new DataView(
      request.buffer,
      request.byteOffset,
      request.byteLength,
    );
    const len = view.getUint32(0, true);
    const opcode = view.getUint32(4, true);
    const unique = view.getBigUint64(8, true);
    if (len < IN_HEADER || len > request.length) {
      return this.#error(unique, EINVAL);
    }
    if (!this.#initialized && opcode !== FuseOpcode.INIT) {
      if (isNoReply(opcode)) return undefined;
      return this.#error(unique, EIO);
    }
    try {
      const request_: Request = {
        opcode,
        unique,
        nodeid: toSafeNumber(view.getBigUint64(16, true)),
        ctx: {
          uid: view.getUint32(24, true),
          gid: view.getUint32(28, true),
          pid: view.getUint32(32, true),
          umask: 0,
        },
        body: new DataView(
          request.buffer,
          request.byteOffset + IN_HEADER,
          len - IN_HEADER,
        ),
        capacity: Math.max(0, capacity - OUT_HEADER),
      };
      const reply = this.#dispatch(request_);
      if (reply === undefined) return undefined;
      let total = OUT_HEADER;
      for (const piece of reply) total += piece.length;
      if (total > capacity) return this.#error(unique, ERANGE);
      const header = new Uint8Array(OUT_HEADER);
      const out = new DataView(header.buffer);
      out.setUint32(0, total, true);
      out.setBigUint64(8, unique, true);
      return [header, ...reply];
    } catch (e) {
      if (isNoReply(opcode)) return undefined;
      if (e instanceof FsError) return this.#error(unique, e.errno);
      if (e instanceof RangeError && e.message.startsWith(BAD_REQUEST)) {
        return this.#error(unique, EINVAL);
      }
      this.#onError(e, opcodeName(opcode));
      return this.#error(unique, EIO);
    }
  }

  #error(unique: bigint, errno: number): Uint8Array[] {
    this.#errors++;
    const header = new Uint8Array(OUT_HEADER);
    const out = new DataView(header.buffer);
    out.setUint32(0, OUT_HEADER, true);
    out.setInt32(4, -errno, true);
    out.setBigUint64(8, unique, true);
    return [header];
  }

  #destroy(): void {
    this.#initialized = false;
    try {
      this.#fs.destroy();
    } catch (e) {
      this.#onError(e, "DESTROY");
    }
  }

  #dispatch(r: Request): Uint8Array[] | undefined {
    const fs = this.#fs;
    const body = r.body;
    switch (r.opcode) {
      case FuseOpcode.INIT:
        return this.#init(body);
      case FuseOpcode.DESTROY:
        this.#destroy();
        return [];
      case FuseOpcode.LOOKUP:
        return this.#entry(fs.lookup(r.nodeid, nameAt(body, 0)));
      case FuseOpcode.FORGET:
        need(body, 8);
        fs.forget(r.nodeid, toSafeNumber(body.getBigUint64(0, true)));
        return undefined;
      case FuseOpcode.BATCH_FORGET:
        return this.#batchForget(body);
      case FuseOpcode.GETATTR:
        // The fuse_getattr_in that may follow (FUSE_GETATTR_FH and a
        // handle) changes nothing: attributes belong to the node.
        return this.#attr(fs.getattr(r.nodeid));
      case FuseOpcode.SETATTR:
        return this.#setattr(r);
      case FuseOpcode.READLINK:
        return [encoder.encode(fs.readlink(r.nodeid))];
      case FuseOpcode.SYMLINK: {
        const [name, end] = nameWithEnd(body, 0);
        const target = nameAt(body, end, true);
        return this.#entry(fs.symlink(r.ctx, r.nodeid, name, target));
      }
      case FuseOpcode.MKNOD: {
        need(body, fuse_mknod_in.size);
        const mode = body.getUint32(0, true);
        const rdev = body.getUint32(4, true);
        const ctx = { ...r.ctx, umask: body.getUint32(8, true) };
        const name = nameAt(body, fuse_mknod_in.size);
        return this.#entry(fs.mknod(ctx, r.nodeid, name, mode, rdev));
      }
      case FuseOpcode.MKDIR: {
        need(body, fuse_mkdir_in.size);
        const mode = body.getUint32(0, true) & 0o7777;
        const ctx = { ...r.ctx, umask: body.getUint32(4, true) };
        const name = nameAt(body, fuse_mkdir_in.size);
        return this.#entry(fs.mkdir(ctx, r.nodeid, name, mode));
      }
      case FuseOpcode.UNLINK:
        fs.unlink(r.nodeid, nameAt(body, 0));
        return [];
      case FuseOpcode.RMDIR:
        fs.rmdir(r.nodeid, nameAt(body, 0));
        return [];
      case FuseOpcode.RENAME: {
        need(body, fuse_rename_in.size);
        const newdir = toSafeNumber(body.getBigUint64(0, true));
        const [name, end] = nameWithEnd(body, fuse_rename_in.size);
        fs.rename(r.nodeid, name, newdir, nameAt(body, end), 0);
        return [];
      }
      case FuseOpcode.RENAME2: {
        need(body, fuse_rename2_in.size);
        const newdir = toSafeNumber(body.getBigUint64(0, true));
        const flags = body.getUint32(8, true);
        const [name, end] = nameWithEnd(body, fuse_rename2_in.size);
        fs.rename(r.nodeid, name, newdir, nameAt(body, end), flags);
        return [];
      }
      case FuseOpcode.LINK: {
        need(body, fuse_link_in.size);
        const old = toSafeNumber(body.getBigUint64(0, true));
        const name = nameAt(body, fuse_link_in.size);
        return this.#entry(fs.link(old, r.nodeid, name));
      }
      case FuseOpcode.OPEN: {
        need(body, fuse_open_in.size);
        return [openOut(fs.open(r.nodeid, body.getUint32(0, true)))];
      }
      case FuseOpcode.OPENDIR: {
        need(body, fuse_open_in.size);
        return [openOut(fs.opendir(r.nodeid, body.getUint32(0, true)))];
      }
      case FuseOpcode.READ: {
        need(body, fuse_read_in.size);
        const fh = toSafeNumber(body.getBigUint64(0, true));
        const offset = toSafeNumber(body.getBigUint64(8, true));
        const size = Math.min(
          body.getUint32(16, true),
          FUSE_MAX_IO_BYTES,
          r.capacity,
        );
        return trimPieces(fs.read(r.nodeid, fh, offset, size), size);
      }
      case FuseOpcode.WRITE:
        return this.#write(r);
      case FuseOpcode.STATFS:
        return [statfsOut(fs.statfs(r.nodeid))];
      case FuseOpcode.RELEASE: {
        need(body, fuse_release_in.size);
        fs.release(r.nodeid, toSafeNumber(body.getBigUint64(0, true)));
        return [];
      }
      case FuseOpcode.RELEASEDIR: {
        need(body, fuse_release_in.size);
        fs.releasedir(r.nodeid, toSafeNumber(body.getBigUint64(0, true)));
        return [];
      }
      case FuseOpcode.FLUSH: {
        need(body, 8);
        fs.flush(r.nodeid, toSafeNumber(body.getBigUint64(0, true)));
        return [];
      }
      case FuseOpcode.FSYNC:
      case FuseOpcode.FSYNCDIR: {
        need(body, fuse_fsync_in.size);
        const fh = toSafeNumber(body.getBigUint64(0, true));
        const datasync = (body.getUint32(8, true) & FUSE_FSYNC_FDATASYNC) !== 0;
        if (r.opcode === FuseOpcode.FSYNC) fs.fsync(r.nodeid, fh, datasync);
        else fs.fsyncdir(r.nodeid, fh, datasync);
        return [];
      }
      case FuseOpcode.SETXATTR: {
        // Without FUSE_SETXATTR_EXT (not taken) the kernel sends 8 bytes.
        need(body, FUSE_COMPAT_SETXATTR_IN_SIZE);
        const size = body.getUint32(0, true);
        const flags = body.getUint32(4, true);
        const [name, end] = nameWithEnd(body, FUSE_COMPAT_SETXATTR_IN_SIZE);
        if (size > FUSE_MAX_XATTR_BYTES) throw new FsError(ERANGE);
        need(body, end + size);
        const value = bytesOf(body, end, size).slice();
        fs.setxattr(r.nodeid, name, value, flags);
        return [];
      }
      case FuseOpcode.GETXATTR: {
        need(body, fuse_getxattr_in.size);
        const size = body.getUint32(0, true);
        const name = nameAt(body, fuse_getxattr_in.size);
        return sizedAnswer(
          fs.getxattr(r.nodeid, name).slice(),
          size,
          r.capacity,
        );
      }
      case FuseOpcode.LISTXATTR: {
        need(body, fuse_getxattr_in.size);
        const size = body.getUint32(0, true);
        const names = fs.listxattr(r.nodeid);
        const list = encoder.encode(names.map((n) => n + "\0").join(""));
        return sizedAnswer(list, size, r.capacity);
      }
      case FuseOpcode.REMOVEXATTR:
        fs.removexattr(r.nodeid, nameAt(body, 0));
        return [];
      case FuseOpcode.READDIR:
      case FuseOpcode.READDIRPLUS:
        return this.#readdir(r, r.opcode === FuseOpcode.READDIRPLUS);
      case FuseOpcode.ACCESS:
        need(body, 8);
        fs.access(r.nodeid, body.getUint32(0, true));
        return [];
      case FuseOpcode.CREATE: {
        need(body, fuse_create_in.size);
        const flags = body.getUint32(0, true);
        const mode = body.getUint32(4, true);
        const ctx = { ...r.ctx, umask: body.getUint32(8, true) };
        const name = nameAt(body, fuse_create_in.size);
        const created = fs.create(ctx, r.nodeid, name, mode, flags);
        return [...this.#entry(created.entry), openOut(created)];
      }
      case FuseOpcode.FALLOCATE: {
        need(body, fuse_fallocate_in.size);
        fs.fallocate(
          r.nodeid,
          toSafeNumber(body.getBigUint64(0, true)),
          toSafeNumber(body.getBigUint64(8, true)),
          toSafeNumber(body.getBigUint64(16, true)),
          body.getUint32(24, true),
        );
        return [];
      }
      case FuseOpcode.LSEEK: {
        need(body, fuse_lseek_in.size);
        const whence = body.getUint32(16, true);
        if (whence !== SEEK_DATA && whence !== SEEK_HOLE) {
          throw new FsError(EINVAL);
        }
        const offset = fs.lseek(
          r.nodeid,
          toSafeNumber(body.getBigUint64(0, true)),
          toSafeNumber(body.getBigUint64(8, true)),
          whence,
        );
        const out = new Uint8Array(8);
        new DataView(out.buffer).setBigUint64(0, BigInt(offset), true);
        return [out];
      }
      case FuseOpcode.INTERRUPT:
        // Requests are answered in order before the next is read: by the
        // time an INTERRUPT arrives its target has its answer.
        return undefined;
      default:
        throw new FsError(ENOSYS);
    }
  }

  #init(body: DataView): Uint8Array[] {
    // Kernels before 7.36 send 16 bytes; later ones add flags2.
    need(body, 16);
    const major = body.getUint32(0, true);
    const minor = body.getUint32(4, true);
    const maxReadahead = body.getUint32(8, true);
    const flags = body.getUint32(12, true);
    const out = new Uint8Array(fuse_init_out.size);
    const view = new DataView(out.buffer);
    view.setUint32(0, FUSE_KERNEL_VERSION, true);
    view.setUint32(4, FUSE_SERVER_MINOR_VERSION, true);
    if (major > FUSE_KERNEL_VERSION) {
      // The kernel retries INIT with our major (fuse.h "Version negotiation").
      return [out.subarray(0, 8)];
    }
    if (major < FUSE_KERNEL_VERSION || minor < 12) throw new FsError(EPROTO);
    if (this.#initialized) this.#destroy();
    view.setUint32(8, maxReadahead, true);
    view.setUint32(12, flags & SERVER_INIT_FLAGS, true);
    view.setUint16(16, 64, true); // max_background
    view.setUint16(18, 48, true); // congestion_threshold
    view.setUint32(20, FUSE_MAX_IO_BYTES, true); // max_write
    view.setUint32(24, 1, true); // time_gran: nanoseconds
    view.setUint16(28, FUSE_MAX_PAGES, true);
    this.#initialized = true;
    return [out];
  }

  #batchForget(body: DataView): undefined {
    need(body, fuse_batch_forget_in.size);
    const count = body.getUint32(0, true);
    // A count the body cannot hold is bad data: forget what is there.
    const there = Math.floor(
      (body.byteLength - fuse_batch_forget_in.size) / fuse_forget_one.size,
    );
    const n = Math.min(count, there);
    for (let i = 0; i < n; i++) {
      const at = fuse_batch_forget_in.size + i * fuse_forget_one.size;
      this.#fs.forget(
        toSafeNumber(body.getBigUint64(at, true)),
        toSafeNumber(body.getBigUint64(at + 8, true)),
      );
    }
    return undefined;
  }

  #setattr(r: Request): Uint8Array[] {
    const body = r.body;
    need(body, fuse_setattr_in.size);
    const valid = body.getUint32(0, true);
    const changes: AttrChanges = {};
    if (valid & FATTR.MODE) changes.mode = body.getUint32(68, true) & 0o7777;
    if (valid & FATTR.UID) changes.uid = body.getUint32(76, true);
    if (valid & FATTR.GID) changes.gid = body.getUint32(80, true);
    if (valid & FATTR.SIZE) {
      changes.size = toSafeNumber(body.getBigUint64(16, true));
    }
    if (valid & FATTR.ATIME_NOW) changes.atime = "now";
    else if (valid & FATTR.ATIME) changes.atime = timeAt(body, 32, 56);
    if (valid & FATTR.MTIME_NOW) changes.mtime = "now";
    else if (valid & FATTR.MTIME) changes.mtime = timeAt(body, 40, 60);
    if (valid & FATTR.CTIME) changes.ctime = timeAt(body, 48, 64);
    const fh = valid & FATTR.FH
      ? toSafeNumber(body.getBigUint64(8, true))
      : undefined;
    return this.#attr(this.#fs.setattr(r.nodeid, changes, fh));
  }

  #write(r: Request): Uint8Array[] {
    const body = r.body;
    need(body, fuse_write_in.size);
    const fh = toSafeNumber(body.getBigUint64(0, true));
    const offset = toSafeNumber(body.getBigUint64(8, true));
    const size = body.getUint32(16, true);
    if (size > FUSE_MAX_IO_BYTES) badRequest("write larger than max_write");
    need(body, fuse_write_in.size + size);
    const data = bytesOf(body, fuse_write_in.size, size);
    const written = this.#fs.write(r.nodeid, fh, offset, data);
    const out = new Uint8Array(8);
    new DataView(out.buffer).setUint32(0, written, true);
    return [out];
  }

  #readdir(r: Request, plus: boolean): Uint8Array[] {
    const body = r.body;
    need(body, fuse_read_in.size);
    const fh = toSafeNumber(body.getBigUint64(0, true));
    const offset = toSafeNumber(body.getBigUint64(8, true));
    const size = Math.min(
      body.getUint32(16, true),
      FUSE_MAX_IO_BYTES,
      r.capacity,
    );
    const out = new Uint8Array(size);
    const view = new DataView(out.buffer);
    let used = 0;
    for (const dirent of this.#fs.readdir(r.nodeid, fh, offset)) {
      const name = encoder.encode(dirent.name);
      const direntSize = align8(fuse_dirent.size + name.length);
      const need_ = plus ? fuse_entry_out.size + direntSize : direntSize;
      if (used + need_ > size) break;
      let at = used;
      let ino = dirent.ino;
      if (plus) {
        // "." and ".." carry no entry (node ID 0: the kernel takes no
        // lookup); every other name is looked up, counting one lookup the
        // kernel keeps or forgets.
        if (dirent.name !== "." && dirent.name !== "..") {
          let entry: Entry;
          try {
            entry = this.#fs.lookup(r.nodeid, dirent.name);
          } catch (e) {
            if (e instanceof FsError) continue; // gone since it was listed
            throw e;
          }
          putEntry(view, at, entry, this.#fs.cacheTimeoutSeconds);
          ino = entry.attr.ino;
        } else {
          view.setBigUint64(at + 40, BigInt(dirent.ino), true);
          view.setUint32(at + 40 + 60, dirent.type & S_IFMT, true);
        }
        at += fuse_entry_out.size;
      }
      view.setBigUint64(at, BigInt(ino), true);
      view.setBigUint64(at + 8, BigInt(dirent.offset), true);
      view.setUint32(at + 16, name.length, true);
      view.setUint32(at + 20, (dirent.type & S_IFMT) >>> 12, true);
      out.set(name, at + fuse_dirent.size);
      used += need_;
    }
    return [out.subarray(0, used)];
  }

  #entry(entry: Entry): Uint8Array[] {
    const out = new Uint8Array(fuse_entry_out.size);
    putEntry(new DataView(out.buffer), 0, entry, this.#fs.cacheTimeoutSeconds);
    return [out];
  }

  #attr(attr: Attr): Uint8Array[] {
    const out = new Uint8Array(fuse_attr_out.size);
    const view = new DataView(out.buffer);
    const [sec, nsec] = splitSeconds(this.#fs.cacheTimeoutSeconds);
    view.setBigUint64(0, sec, true);
    view.setUint32(8, nsec, true);
    putAttr(view, 16, attr);
    return [out];
  }
}

/** A decoded request header and its body. */
interface Request {
  opcode: number;
  unique: bigint;
  nodeid: number;
  ctx: FsContext;
  body: DataView;
  /** Room for the reply after its header. */
  capacity: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });
const BAD_REQUEST = "Bad FUSE request: ";

function badRequest(what: string): never {
  throw new RangeError(BAD_REQUEST + what);
}

function isNoReply(opcode: number): boolean {
  return opcode === FuseOpcode.FORGET || opcode === FuseOpcode.BATCH_FORGET ||
    opcode === FuseOpcode.INTERRUPT;
}

function need(body: DataView, bytes: number): void {
  if (body.byteLength < bytes) {
    badRequest(`${body.byteLength} bytes of arguments, ${bytes} needed`);
  }
}

/** A u64 as a number; past 2^53 it names nothing real (EINVAL). */
function toSafeNumber(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) badRequest("u64 past 2^53");
  return Number(value);
}

function bytesOf(body: DataView, at: number, length: number): Uint8Array {
  return new Uint8Array(body.buffer, body.byteOffset + at, length);
}

/** The NUL-terminated UTF-8 string at `at`, and the offset after its NUL. */
function nameWithEnd(
  body: DataView,
  at: number,
  long = false,
): [string, number] {
  const bytes = new Uint8Array(
    body.buffer,
    body.byteOffset + Math.min(at, body.byteLength),
    Math.max(0, body.byteLength - at),
  );
  const nul = bytes.indexOf(0);
  if (nul < 0) badRequest("a name without its NUL");
  if (nul > (long ? 4096 : 1024)) throw new FsError(EINVAL);
  let text: string;
  try {
    text = decoder.decode(bytes.subarray(0, nul));
  } catch {
    throw new FsError(EINVAL, "Cannot use a name that is not UTF-8");
  }
  return [text, at + nul + 1];
}

function nameAt(body: DataView, at: number, long = false): string {
  return nameWithEnd(body, at, long)[0];
}

function timeAt(body: DataView, secAt: number, nsecAt: number): Timespec {
  const sec = body.getBigInt64(secAt, true);
  return {
    sec: Number(sec),
    nsec: Math.min(999_999_999, body.getUint32(nsecAt, true)),
  };
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

function splitSeconds(seconds: number): [bigint, number] {
  const s = Math.max(0, Number.isFinite(seconds) ? seconds : 0);
  const whole = Math.floor(s);
  return [BigInt(whole), Math.min(999_999_999, Math.round((s - whole) * 1e9))];
}

function putEntry(
  view: DataView,
  at: number,
  entry: Entry,
  timeout: number,
): void {
  const [sec, nsec] = splitSeconds(timeout);
  view.setBigUint64(at, BigInt(entry.nodeid), true);
  view.setBigUint64(at + 8, 0n, true); // generation: node IDs are never reused
  view.setBigUint64(at + 16, sec, true);
  view.setBigUint64(at + 24, sec, true);
  view.setUint32(at + 32, nsec, true);
  view.setUint32(at + 36, nsec, true);
  putAttr(view, at + 40, entry.attr);
}

function putAttr(view: DataView, at: number, attr: Attr): void {
  const f = fuse_attr.fields;
  view.setBigUint64(at + f.ino[0], u64(attr.ino), true);
  view.setBigUint64(at + f.size[0], u64(attr.size), true);
  view.setBigUint64(at + f.blocks[0], u64(attr.blocks), true);
  view.setBigInt64(at + f.atime[0], BigInt(Math.trunc(attr.atime.sec)), true);
  view.setBigInt64(at + f.mtime[0], BigInt(Math.trunc(attr.mtime.sec)), true);
  view.setBigInt64(at + f.ctime[0], BigInt(Math.trunc(attr.ctime.sec)), true);
  view.setUint32(at + f.atimensec[0], attr.atime.nsec, true);
  view.setUint32(at + f.mtimensec[0], attr.mtime.nsec, true);
  view.setUint32(at + f.ctimensec[0], attr.ctime.nsec, true);
  view.setUint32(at + f.mode[0], attr.mode, true);
  view.setUint32(at + f.nlink[0], attr.nlink, true);
  view.setUint32(at + f.uid[0], attr.uid, true);
  view.setUint32(at + f.gid[0], attr.gid, true);
  view.setUint32(at + f.rdev[0], attr.rdev, true);
  view.setUint32(at + f.blksize[0], attr.blksize, true);
  view.setUint32(at + f.flags[0], 0, true);
}

function u64(n: number): bigint {
  return BigInt(Math.max(0, Math.trunc(n)));
}

function openOut(opened: OpenResult): Uint8Array {
  const out = new Uint8Array(fuse_open_out.size);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(opened.fh), true);
  view.setUint32(
    8,
    (opened.keepCache ? FOPEN.KEEP_CACHE : 0) |
      (opened.directIo ? FOPEN.DIRECT_IO : 0),
    true,
  );
  return out;
}

function statfsOut(s: ReturnType<Filesystem["statfs"]>): Uint8Array {
  const out = new Uint8Array(fuse_kstatfs.size);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, u64(s.blocks), true);
  view.setBigUint64(8, u64(s.bfree), true);
  view.setBigUint64(16, u64(s.bavail), true);
  view.setBigUint64(24, u64(s.files), true);
  view.setBigUint64(32, u64(s.ffree), true);
  view.setUint32(40, s.bsize, true);
  view.setUint32(44, s.namelen, true);
  view.setUint32(48, s.frsize, true);
  return out;
}

/**
 * The answer of GETXATTR and LISTXATTR: the size alone when the guest asks
 * with size 0, the bytes when they fit in `size`, ERANGE otherwise.
 */
function sizedAnswer(
  value: Uint8Array,
  size: number,
  capacity: number,
): Uint8Array[] {
  if (value.length > FUSE_MAX_XATTR_BYTES) throw new FsError(ERANGE);
  if (size === 0) {
    const out = new Uint8Array(8);
    new DataView(out.buffer).setUint32(0, value.length, true);
    return [out];
  }
  if (value.length > size || value.length > capacity) {
    throw new FsError(ERANGE);
  }
  return [value];
}

/** The first `limit` bytes of a read's pieces (a filesystem may give more). */
function trimPieces(pieces: Uint8Array[], limit: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let left = limit;
  for (const piece of pieces) {
    if (left === 0) break;
    out.push(piece.length <= left ? piece : piece.subarray(0, left));
    left -= Math.min(piece.length, left);
  }
  return out;
}
