/**
 * The C library through `Deno.dlopen`: the few calls initx needs to drive KVM
 * (`open`, `ioctl`, `mmap`, ...) and errno, read with `__errno_location` right
 * after a failing call on the same thread (Deno FFI has no errno of its own).
 *
 * Every isolate (the main thread and each vCPU Worker) opens its own copy with
 * {@linkcode libc}: a library handle cannot cross threads.
 *
 * `open` and `ioctl` are variadic in C. On x86_64 and arm64 Linux a fixed
 * `(i32, u64, pointer)` signature passes the third argument in the same
 * register as the variadic call would; this file is Linux-only.
 *
 * @module
 */

/** Linux errno names by number (asm-generic/errno-base.h, errno.h). */
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
};

/** Linux errno numbers by name, for callers that test for one. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSYS: 38,
} as const;

/** The name of an errno value, e.g. `ENOENT`, or `errno 123` if unknown. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/**
 * A failed system call: which call, its errno and the C library's message.
 *
 * @example
 * ```ts
 * import { OsError } from "./libc.ts";
 * const e = new OsError("open /dev/kvm", 2, "No such file or directory");
 * console.log(e.message); // Cannot open /dev/kvm: no such file or directory (ENOENT)
 * ```
 */
export class OsError extends Error {
  /** The call that failed, e.g. `ioctl KVM_CREATE_VM`. */
  readonly call: string;
  /** The errno value. */
  readonly errno: number;
  /** The errno name, e.g. `ENOENT`. */
  readonly code: string;

  /** Builds the error; `text` is the C library's `strerror` message. */
  constructor(call: string, errno: number, text: string) {
    const name = errnoName(errno);
    const lower = text.length > 0
      ? text[0]!.toLowerCase() + text.slice(1)
      : name;
    super(`Cannot ${call}: ${lower} (${name})`);
    this.name = "OsError";
    this.call = call;
    this.errno = errno;
    this.code = name;
  }
}

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "pointer"], result: "i32" },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  gettid: { parameters: [], result: "i32" },
  tgkill: { parameters: ["i32", "i32", "i32"], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type LibcSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** `open` flags (asm-generic/fcntl.h). */
export const O_RDWR = 0o2;
/** Close the descriptor on exec. */
export const O_CLOEXEC = 0o2000000;
/** `mmap` protection: readable. */
export const PROT_READ = 1;
/** `mmap` protection: writable. */
export const PROT_WRITE = 2;
/** `mmap` flag: shared with the kernel object behind the fd. */
export const MAP_SHARED = 0x01;
/** `mmap` flag: private copy-on-write. */
export const MAP_PRIVATE = 0x02;
/** `mmap` flag: no file behind the mapping. */
export const MAP_ANONYMOUS = 0x20;
/** `mmap` flag: do not reserve swap for the mapping. */
export const MAP_NORESERVE = 0x4000;
/** `madvise` advice: drop the pages (anonymous memory reads back as zero). */
export const MADV_DONTNEED = 4;
/** `eventfd` flag: close on exec. */
export const EFD_CLOEXEC = 0o2000000;
/** `eventfd` flag: non-blocking reads. */
export const EFD_NONBLOCK = 0o4000;
/** Signal number of SIGUSR2 on x86_64 and arm64 Linux (SIGUSR1 would wake Deno's inspector). */
export const SIGUSR2 = 12;

/**
 * One isolate's handle on the C library. Methods throw {@linkcode OsError}
 * with the call's name when the call fails.
 */
export class Libc {
  /** The raw symbols, for calls whose failure the caller inspects itself. */
  readonly unsafeSymbols: LibcSymbols;

  /** Opens `libc.so.6`. */
  constructor() {
    if (Deno.build.os !== "linux") {
      throw new Error(
        `Cannot load the C library: initx's KVM backend needs Linux, not ${Deno.build.os}`,
      );
    }
    this.unsafeSymbols = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  }

  /** The calling thread's current errno. */
  errno(): number {
    const p = this.unsafeSymbols.__errno_location();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  }

  /** The C library's message for an errno value. */
  strerror(errno: number): string {
    const p = this.unsafeSymbols.strerror(errno);
    return p === null ? "" : Deno.UnsafePointerView.getCString(p);
  }

  /** Builds the {@linkcode OsError} for the errno of a call that just failed. */
  lastError(call: string): OsError {
    const errno = this.errno();
    return new OsError(call, errno, this.strerror(errno));
  }

  /** `open(2)`; returns the fd. */
  open(path: string, flags: number, mode = 0): number {
    const fd = this.unsafeSymbols.open(cString(path), flags, mode);
    if (fd < 0) throw this.lastError(`open ${path}`);
    return fd;
  }

  /** `close(2)`. */
  close(fd: number): void {
    if (this.unsafeSymbols.close(fd) < 0) {
      throw this.lastError(`close fd ${fd}`);
    }
  }

  /**
   * `ioctl(2)` with a pointer or integer argument; returns the non-negative
   * result. `name` is used in the error (`ioctl KVM_CREATE_VM`).
   */
  ioctl(
    fd: number,
    request: bigint,
    arg: Deno.PointerValue | bigint | number,
    name: string,
  ): number {
    const ptr = typeof arg === "bigint" || typeof arg === "number"
      ? Deno.UnsafePointer.create(BigInt(arg))
      : arg;
    const r = this.unsafeSymbols.ioctl(fd, request, ptr);
    if (r < 0) throw this.lastError(`ioctl ${name}`);
    return r;
  }

  /** `mmap(2)`; returns the mapping's address. */
  mmap(
    length: number | bigint,
    prot: number,
    flags: number,
    fd = -1,
    offset = 0n,
  ): Deno.PointerObject {
    const p = this.unsafeSymbols.mmap(
      null,
      BigInt(length),
      prot,
      flags,
      fd,
      offset,
    );
    // MAP_FAILED is (void *)-1.
    if (p === null || Deno.UnsafePointer.value(p) === 0xffff_ffff_ffff_ffffn) {
      throw this.lastError(`mmap ${length} bytes`);
    }
    return p;
  }

  /** `munmap(2)`. */
  munmap(addr: Deno.PointerObject, length: number | bigint): void {
    if (this.unsafeSymbols.munmap(addr, BigInt(length)) < 0) {
      throw this.lastError(`munmap ${length} bytes`);
    }
  }

  /** `madvise(2)`. */
  madvise(addr: Deno.PointerObject, length: number | bigint, advice: number) {
    if (this.unsafeSymbols.madvise(addr, BigInt(length), advice) < 0) {
      throw this.lastError(`madvise ${length} bytes`);
    }
  }

  /** `eventfd(2)`; returns the fd. */
  eventfd(initial: number, flags: number): number {
    const fd = this.unsafeSymbols.eventfd(initial, flags);
    if (fd < 0) throw this.lastError("eventfd");
    return fd;
  }

  /** `read(2)`; returns the count read (0 at end of file). */
  read(fd: number, buf: Uint8Array): number {
    const n = this.unsafeSymbols.read(fd, buf, BigInt(buf.byteLength));
    if (n < 0n) throw this.lastError(`read fd ${fd}`);
    return Number(n);
  }

  /** `write(2)`; returns the count written. */
  write(fd: number, buf: Uint8Array): number {
    const n = this.unsafeSymbols.write(fd, buf, BigInt(buf.byteLength));
    if (n < 0n) throw this.lastError(`write fd ${fd}`);
    return Number(n);
  }

  /**
   * `poll(2)` on `fds` for `events`; returns the `revents` of each, after at
   * most `timeoutMs` (-1 waits for ever).
   */
  poll(fds: { fd: number; events: number }[], timeoutMs: number): number[] {
    const buf = new Uint8Array(8 * fds.length);
    const view = new DataView(buf.buffer);
    fds.forEach((f, i) => {
      view.setInt32(8 * i, f.fd, true);
      view.setInt16(8 * i + 4, f.events, true);
    });
    const r = this.unsafeSymbols.poll(buf, BigInt(fds.length), timeoutMs);
    if (r < 0) throw this.lastError("poll");
    return fds.map((_, i) => view.getInt16(8 * i + 6, true));
  }

  /** `getpid(2)`. */
  getpid(): number {
    return this.unsafeSymbols.getpid();
  }

  /** `gettid(2)`: the calling thread's id, for {@linkcode Libc.tgkill}. */
  gettid(): number {
    return this.unsafeSymbols.gettid();
  }

  /** `tgkill(2)`: sends `signal` to one thread of a process. */
  tgkill(pid: number, tid: number, signal: number): void {
    if (this.unsafeSymbols.tgkill(pid, tid, signal) < 0) {
      throw this.lastError(`tgkill thread ${tid}`);
    }
  }
}

let shared: Libc | undefined;

/** This isolate's C library handle, opened on first use. */
export function libc(): Libc {
  shared ??= new Libc();
  return shared;
}

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s` for passing to C. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(encoder.encode(s).length + 1);
  encoder.encodeInto(s, bytes);
  return bytes;
}
