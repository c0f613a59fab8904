/**
 * Linux errno values a filesystem answers with, and {@linkcode FsError}, the
 * one error type filesystem operations throw. The numbers are Linux's
 * (`include/uapi/asm-generic/errno-base.h` and `errno.h`), the same on
 * x86_64 and arm64; FUSE sends them negated in `fuse_out_header.error`.
 *
 * @module
 */

/** Operation not permitted. */
export const EPERM = 1;
/** No such file or directory. */
export const ENOENT = 2;
/** I/O error. */
export const EIO = 5;
/** No such device or address (lseek SEEK_DATA/SEEK_HOLE past the end). */
export const ENXIO = 6;
/** Argument list too long (an xattr value over 64 KiB). */
export const E2BIG = 7;
/** Bad file handle. */
export const EBADF = 9;
/** Try again (a resource is not ready yet). */
export const EAGAIN = 11;
/** Out of memory. */
export const ENOMEM = 12;
/** Permission denied. */
export const EACCES = 13;
/** Device or resource busy. */
export const EBUSY = 16;
/** File exists. */
export const EEXIST = 17;
/** Cross-device link. */
export const EXDEV = 18;
/** Not a directory. */
export const ENOTDIR = 20;
/** Is a directory. */
export const EISDIR = 21;
/** Invalid argument. */
export const EINVAL = 22;
/** Too many open files in the system. */
export const ENFILE = 23;
/** File too large. */
export const EFBIG = 27;
/** No space left on device. */
export const ENOSPC = 28;
/** Read-only file system. */
export const EROFS = 30;
/** Too many links. */
export const EMLINK = 31;
/** Result too large (an xattr buffer too small). */
export const ERANGE = 34;
/** File name too long. */
export const ENAMETOOLONG = 36;
/** Function not implemented. */
export const ENOSYS = 38;
/** Directory not empty. */
export const ENOTEMPTY = 39;
/** Too many levels of symbolic links. */
export const ELOOP = 40;
/** No data available (xattr not found, `ENOATTR`). */
export const ENODATA = 61;
/** Protocol error. */
export const EPROTO = 71;
/** Value too large for defined data type. */
export const EOVERFLOW = 75;
/** Operation not supported. */
export const EOPNOTSUPP = 95;
/** Stale file handle. */
export const ESTALE = 116;

const NAMES: Record<number, string> = {
  [EPERM]: "EPERM",
  [ENOENT]: "ENOENT",
  [EIO]: "EIO",
  [ENXIO]: "ENXIO",
  [E2BIG]: "E2BIG",
  [EBADF]: "EBADF",
  [ENOMEM]: "ENOMEM",
  [EACCES]: "EACCES",
  [EBUSY]: "EBUSY",
  [EEXIST]: "EEXIST",
  [EXDEV]: "EXDEV",
  [ENOTDIR]: "ENOTDIR",
  [EISDIR]: "EISDIR",
  [EINVAL]: "EINVAL",
  [ENFILE]: "ENFILE",
  [EFBIG]: "EFBIG",
  [ENOSPC]: "ENOSPC",
  [EROFS]: "EROFS",
  [EMLINK]: "EMLINK",
  [ERANGE]: "ERANGE",
  [ENAMETOOLONG]: "ENAMETOOLONG",
  [ENOSYS]: "ENOSYS",
  [ENOTEMPTY]: "ENOTEMPTY",
  [ELOOP]: "ELOOP",
  [ENODATA]: "ENODATA",
  [EPROTO]: "EPROTO",
  [EOVERFLOW]: "EOVERFLOW",
  [EOPNOTSUPP]: "EOPNOTSUPP",
  [ESTALE]: "ESTALE",
};

const BY_NAME: Record<string, number> = Object.fromEntries(
  Object.entries(NAMES).map(([n, name]) => [name, Number(n)]),
);

/**
 * The symbolic name of `errno` (`"ENOENT"`), or `"errno N"` when unknown.
 *
 * @example
 * ```ts
 * import { errnoName } from "./errno.ts";
 * console.log(errnoName(2)); // ENOENT
 * ```
 */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? `errno ${errno}`;
}

/**
 * A filesystem operation failed with `errno`. Every filesystem method throws
 * only this for expected failures; the FUSE server sends `-errno` back.
 *
 * @example
 * ```ts
 * import { ENOENT, FsError } from "./errno.ts";
 * const e = new FsError(ENOENT, "Cannot look up \"x\": no such entry");
 * console.log(e.errno, e.code); // 2 ENOENT
 * ```
 */
export class FsError extends Error {
  /** Always "FsError". */
  override name = "FsError";
  /** The Linux errno value, positive. */
  readonly errno: number;

  /** Builds the error; the message defaults to the errno's name. */
  constructor(errno: number, message?: string) {
    super(message ?? errnoName(errno));
    this.errno = errno;
  }

  /** The errno's symbolic name, e.g. `"ENOENT"`. */
  get code(): string {
    return errnoName(this.errno);
  }
}

/**
 * The errno for an error a Deno file API threw: its `code` (`"ENOENT"`)
 * when it is one listed here, a best guess from the error class otherwise,
 * and EIO when nothing fits. FsErrors keep their errno.
 *
 * @example
 * ```ts
 * import { errnoOf } from "./errno.ts";
 * try {
 *   Deno.lstatSync("/nonexistent");
 * } catch (e) {
 *   console.log(errnoOf(e)); // 2
 * }
 * ```
 */
export function errnoOf(error: unknown): number {
  if (error instanceof FsError) return error.errno;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && code in BY_NAME) return BY_NAME[code]!;
  if (error instanceof Deno.errors.NotFound) return ENOENT;
  if (error instanceof Deno.errors.PermissionDenied) return EACCES;
  if (error instanceof Deno.errors.AlreadyExists) return EEXIST;
  if (error instanceof Deno.errors.NotADirectory) return ENOTDIR;
  if (error instanceof Deno.errors.IsADirectory) return EISDIR;
  if (error instanceof Deno.errors.FilesystemLoop) return ELOOP;
  if (error instanceof Deno.errors.NotSupported) return EOPNOTSUPP;
  return EIO;
}
