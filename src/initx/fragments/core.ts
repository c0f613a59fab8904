/**
 * What every fragment shares: the errno table and open flags, the
 * {@link OnError}/{@link Fallible} shape of a fallible step, string
 * arguments, and the internal helpers the steps are built from (fresh
 * names, embedded strings, error checks, whole-file writes). The helpers
 * are exported for the sibling modules only; `mod.ts` does not re-export
 * them.
 *
 * @module
 */

import type {
  ByteString,
  MethodBuilder,
  ProgramBuilder,
  Value,
  Var,
} from "../../ir/mod.ts";

/**
 * Error numbers (`include/uapi/asm-generic/errno-base.h`, `errno.h`), the
 * same on x86_64 and aarch64.
 *
 * @example
 * ```ts
 * import { Errno } from "./mod.ts";
 * console.assert(Errno.EEXIST === 17);
 * ```
 */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EINVAL: 22,
  ENOSPC: 28,
  EROFS: 30,
  ENOSYS: 38,
} as const;

/** `openat` directory fd meaning "the working directory" (`linux/fcntl.h`). */
export const AT_FDCWD = -100;
/** `open` flag: write only (`asm-generic/fcntl.h`; x86_64 and arm64 agree on these). */
export const O_WRONLY = 0o1;
/** `open` flag: read and write. */
export const O_RDWR = 0o2;
/** `open` flag: create the file if it is missing. */
export const O_CREAT = 0o100;
/** `open` flag: a terminal does not become the controlling one. */
export const O_NOCTTY = 0o400;
/** `open` flag: truncate the file. */
export const O_TRUNC = 0o1000;
/** `open` flag: close on exec. */
export const O_CLOEXEC = 0o2000000;

/**
 * Where a fragment reports failure.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import type { OnError } from "./mod.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError: OnError = { errno: m.var("errno"), goto: "fail" };
 * });
 * ```
 */
export interface OnError {
  /** A 64-bit variable that receives the positive errno. */
  errno: Var;
  /** A label of the same method, jumped to after a failure. */
  goto: string;
  /** A 64-bit variable that receives a pointer to a NUL-terminated description of the failed step. */
  step?: Var;
}

/**
 * Options every fallible fragment takes.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { Errno, type Fallible } from "./mod.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const options: Fallible = {
 *     onError: { errno: m.var("errno"), goto: "fail" },
 *     ignore: [Errno.EEXIST],
 *   };
 * });
 * ```
 */
export interface Fallible {
  /** Where to report failure. */
  onError: OnError;
  /** Errnos of the fragment's main call that count as success. */
  ignore?: readonly number[];
}

/**
 * A string argument: a JavaScript string (embedded, NUL-terminated) or a
 * pointer to a NUL-terminated string at run time.
 *
 * @example
 * ```ts
 * import type { StringArg } from "./mod.ts";
 * const path: StringArg = "/proc";
 * ```
 */
export type StringArg = string | Value;

/**
 * A list of strings for `argv` or `envp`: JavaScript strings (embedded as a
 * NULL-terminated pointer table) or a pointer to such a table at run time.
 *
 * @example
 * ```ts
 * import type { StringList } from "./mod.ts";
 * const argv: StringList = ["/bin/sh", "-c", "true"];
 * ```
 */
export type StringList = readonly string[] | Value;

const counters = new WeakMap<MethodBuilder, number>();

const strings = new WeakMap<ProgramBuilder, Map<string, ByteString>>();

/** A variable or label name no other fragment of the method uses. */
export function fresh(m: MethodBuilder, what: string): string {
  const n = counters.get(m) ?? 0;
  counters.set(m, n + 1);
  return `$f${n}.${what}`;
}

/** A NUL-terminated string embedded once per program. */
export function cString(p: ProgramBuilder, text: string): ByteString {
  let table = strings.get(p);
  if (table === undefined) {
    table = new Map();
    strings.set(p, table);
  }
  let s = table.get(text);
  if (s === undefined) {
    s = p.string(text, { nulTerminated: true });
    table.set(text, s);
  }
  return s;
}

/** A string argument as a run-time pointer (embedding a JavaScript string). */
export function stringArg(m: MethodBuilder, s: StringArg): Value {
  return typeof s === "string" ? cString(m.program, s).ptr : s;
}

/** What `%s` prints for a string argument. */
export function printable(
  m: MethodBuilder,
  s: StringArg,
): Value | { ptr: Value; len: Value } {
  return typeof s === "string" ? cString(m.program, s) : s;
}

/** A string argument as step descriptions name it. */
export function describe(s: StringArg): string {
  return typeof s === "string" ? s : "(string)";
}

/** A string list as a run-time pointer table (embedding JavaScript strings). */
export function stringList(m: MethodBuilder, list: StringList): Value {
  if (!Array.isArray(list)) return list as Value;
  const p = m.program;
  return p.pointers([
    ...(list as readonly string[]).map((s) => cString(p, s)),
    null,
  ]);
}

/** Report `result` (a negative errno) as the failure of `step`. */
export function fail(
  m: MethodBuilder,
  result: Value,
  onError: OnError,
  step: string,
  cleanup?: () => void,
): void {
  m.sub(0, result, { into: onError.errno });
  if (onError.step) m.set(onError.step, cString(m.program, step).ptr);
  cleanup?.();
  m.goto(onError.goto);
}

/** Fail when `result` is negative, unless its errno is ignored. */
export function check(
  m: MethodBuilder,
  result: Var,
  options: Fallible,
  step: string,
  cleanup?: () => void,
): void {
  const ignore = options.ignore ?? [];
  const unlessIgnored = (i: number): void => {
    const errno = ignore[i];
    if (errno === undefined) {
      fail(m, result, options.onError, step, cleanup);
      return;
    }
    m.if(m.ne(result, -errno), () => unlessIgnored(i + 1));
  };
  m.if(m.isNegative(result), () => unlessIgnored(0));
}

/** `openat(AT_FDCWD, path, flags | O_CLOEXEC, mode)`, failing the step on error. */
export function openFile(
  m: MethodBuilder,
  path: StringArg,
  flags: number,
  options: Fallible & { mode?: number },
): Var {
  const fd = m.syscall("openat", [
    AT_FDCWD,
    stringArg(m, path),
    flags | O_CLOEXEC,
    options.mode ?? 0o644,
  ]);
  check(m, fd, { onError: options.onError }, `open ${describe(path)}`);
  return fd;
}

/** Write `len` bytes at `ptr` to `fd`, retrying short and interrupted writes. */
export function writeAll(
  m: MethodBuilder,
  target: { fd: Value; ptr: Value; len: Value },
  onFailure: (result: Var) => void,
): void {
  const done = m.var(fresh(m, "done"), { init: 0 });
  m.while(m.ltu(done, target.len), () => {
    const n = m.syscall("write", [
      target.fd,
      m.add(target.ptr, done),
      m.sub(target.len, done),
    ]);
    m.if(
      m.isNegative(n),
      () => m.if(m.ne(n, -Errno.EINTR), () => onFailure(n)),
      () => m.add(done, n, { into: done }),
    );
  });
}

/** Open `path` with `flags`, write `content` whole, close. */
export function writeFile(
  m: MethodBuilder,
  file: { path: StringArg; content: Uint8Array; flags: number; mode?: number },
  options: Fallible,
): void {
  const fd = openFile(m, file.path, file.flags, {
    ...options,
    mode: file.mode,
  });
  const data = m.program.bytes(file.content);
  writeAll(
    m,
    { fd, ptr: data.ptr, len: data.len },
    (n) =>
      fail(
        m,
        n,
        options.onError,
        `write ${describe(file.path)}`,
        () => m.syscall("close", [fd]),
      ),
  );
  m.syscall("close", [fd]);
}

/** Zero `size` bytes (a multiple of 8) at `ptr`. */
export function zero(m: MethodBuilder, ptr: Var, size: number): void {
  for (let disp = 0; disp < size; disp += 8) m.set(m.mem(ptr, { disp }), 0);
}

/**
 * Run fragments that may fail and carry on either way: `build` receives an
 * {@link OnError}; the result is a variable holding the errno of the failure
 * (0 when every step succeeded).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { attempt, mkdir } from "./mod.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const errno = attempt(m, (onError) => mkdir(m, { path: "/tmp/x", onError }));
 *   m.return(errno);
 * });
 * ```
 *
 * @param m The method.
 * @param build Appends the fragments, reporting failure to its argument.
 * @returns The errno variable.
 */
export function attempt(
  m: MethodBuilder,
  build: (onError: OnError) => void,
): Var {
  const errno = m.var(fresh(m, "errno"), { init: 0 });
  const done = fresh(m, "attempted");
  build({ errno, goto: done });
  m.label(done);
  return errno;
}
