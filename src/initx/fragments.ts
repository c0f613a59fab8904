/**
 * Fragment helpers: the steps of an init program (mount, mkdir, load a
 * module, run a command, power off, ...) as IR appended to a
 * {@link MethodBuilder}, so an init reads like a list of steps.
 *
 * Every fallible helper has one shape: `helper(m, { ...what, onError })`.
 * `onError` names a 64-bit variable that receives the positive errno, a
 * label of the same method to jump to, and optionally a variable that
 * receives a pointer to a NUL-terminated description of the failed step
 * ("mount proc on /proc"). `ignore` lists errnos that count as success
 * (`EEXIST` for a directory that is already there). What happens after a
 * failure is the caller's choice; {@link attempt} turns any helper into one
 * that tolerates failure and yields the errno (0 on success).
 *
 * Strings given as JavaScript strings are embedded in the program, once
 * each; a {@link Value} is a pointer to a NUL-terminated string at run time.
 * Syscall numbers, flags, ioctl numbers and struct layouts come from the
 * Linux UAPI headers named beside each constant; they are the same on
 * x86_64 and aarch64 unless noted.
 *
 * ```ts
 * import { compileElf, ProgramBuilder } from "../ir/mod.ts";
 * import { Errno, mkdir, mount, powerOff } from "./fragments.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   const errno = m.var("errno");
 *   const step = m.var("step");
 *   const onError = { errno, goto: "fail", step };
 *   mkdir(m, { path: "/proc", ignore: [Errno.EEXIST], onError });
 *   mount(m, { source: "proc", target: "/proc", fstype: "proc", onError });
 *   powerOff(m, { onError });
 *   m.label("fail");
 *   m.printf("%s failed: errno %d\n", [step, errno]);
 *   m.return(1);
 * });
 * const elf = compileElf(p.build(), { arch: "x86_64" });
 * ```
 *
 * @module
 */

import type {
  ByteString,
  DataItem,
  DataRef,
  MethodBuilder,
  Operand,
  Program,
  ProgramBuilder,
  Statement,
  Value,
  Var,
} from "../ir/mod.ts";

// ---- constants (Linux UAPI) ----

/**
 * Error numbers (`include/uapi/asm-generic/errno-base.h`, `errno.h`), the
 * same on x86_64 and aarch64.
 *
 * @example
 * ```ts
 * import { Errno } from "./fragments.ts";
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
const AT_FDCWD = -100;
/** Open flags (`asm-generic/fcntl.h`; x86_64 and arm64 agree on these). */
const O_WRONLY = 0o1;
const O_RDWR = 0o2;
const O_CREAT = 0o100;
const O_NOCTTY = 0o400;
const O_TRUNC = 0o1000;
const O_CLOEXEC = 0o2000000;
/** File type bits of a mode (`linux/stat.h`). */
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
/** Signal a cloned child sends its parent on exit (`asm-generic/signal.h`). */
const SIGCHLD = 17;
/** `clock_settime` clock (`linux/time.h`). */
const CLOCK_REALTIME = 0;
/** Make the terminal the controlling one (`asm-generic/ioctls.h`). */
const TIOCSCTTY = 0x540e;
/** `reboot` magic numbers and commands (`linux/reboot.h`). */
const LINUX_REBOOT_MAGIC1 = 0xfee1dead;
const LINUX_REBOOT_MAGIC2 = 0x28121969;
const LINUX_REBOOT_CMD_POWER_OFF = 0x4321fedc;
const LINUX_REBOOT_CMD_RESTART = 0x01234567;
/** Socket family and type (`linux/socket.h`, `asm-generic/socket.h`). */
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = O_CLOEXEC;
/** Socket ioctls (`linux/sockios.h`). */
const SIOCADDRT = 0x890b;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCSIFADDR = 0x8916;
const SIOCSIFNETMASK = 0x891c;
const SIOCSIFMTU = 0x8922;
const SIOCGIFINDEX = 0x8933;
/** Interface flags (`linux/if.h`). */
const IFF_UP = 0x1;
const IFF_RUNNING = 0x40;
/** Route flags (`linux/route.h`). */
const RTF_UP = 0x1;
const RTF_GATEWAY = 0x2;
/**
 * `struct ifreq` (`linux/if.h`): 16-byte name, then a 24-byte union
 * (`ifr_flags` short, `ifr_ifindex`/`ifr_mtu` int, `ifr_addr` sockaddr).
 */
const IFREQ_SIZE = 40;
const IFNAMSIZ = 16;
const IFR_UNION = 16;
/** `struct rtentry` on 64-bit Linux (`linux/route.h`). */
const RTENTRY_SIZE = 120;
const RT_DST = 8;
const RT_GATEWAY = 24;
const RT_GENMASK = 40;
const RT_FLAGS = 56;
const RT_DEV = 88;
/** Bytes read from stdin per `read`. */
const STDIN_CHUNK_SIZE = 4096;
/** Exit status of a child that could not change directory or exec. */
const EXEC_FAILED_STATUS = 127;

// ---- the shape every fragment shares ----

/**
 * Where a fragment reports failure.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import type { OnError } from "./fragments.ts";
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
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { Errno, type Fallible } from "./fragments.ts";
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
 * import type { StringArg } from "./fragments.ts";
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
 * import type { StringList } from "./fragments.ts";
 * const argv: StringList = ["/bin/sh", "-c", "true"];
 * ```
 */
export type StringList = readonly string[] | Value;

// ---- internals ----

const counters = new WeakMap<MethodBuilder, number>();
const strings = new WeakMap<ProgramBuilder, Map<string, ByteString>>();

/** A variable or label name no other fragment of the method uses. */
function fresh(m: MethodBuilder, what: string): string {
  const n = counters.get(m) ?? 0;
  counters.set(m, n + 1);
  return `$f${n}.${what}`;
}

/** A NUL-terminated string embedded once per program. */
function cString(p: ProgramBuilder, text: string): ByteString {
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

function stringArg(m: MethodBuilder, s: StringArg): Value {
  return typeof s === "string" ? cString(m.program, s).ptr : s;
}

/** What `%s` prints for a string argument. */
function printable(
  m: MethodBuilder,
  s: StringArg,
): Value | { ptr: Value; len: Value } {
  return typeof s === "string" ? cString(m.program, s) : s;
}

function describe(s: StringArg): string {
  return typeof s === "string" ? s : "(string)";
}

function stringList(m: MethodBuilder, list: StringList): Value {
  if (!Array.isArray(list)) return list as Value;
  const p = m.program;
  return p.pointers([
    ...(list as readonly string[]).map((s) => cString(p, s)),
    null,
  ]);
}

/** Report `result` (a negative errno) as the failure of `step`. */
function fail(
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
function check(
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

function openFile(
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
function writeAll(
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
function writeFile(
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

function zero(m: MethodBuilder, ptr: Var, size: number): void {
  for (let disp = 0; disp < size; disp += 8) m.set(m.mem(ptr, { disp }), 0);
}

// ---- program-level helpers ----

/**
 * Run fragments that may fail and carry on either way: `build` receives an
 * {@link OnError}; the result is a variable holding the errno of the failure
 * (0 when every step succeeded).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { attempt, mkdir } from "./fragments.ts";
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

/**
 * Copy a compiled-independent IR program into the program being built,
 * renaming its methods, data and globals with a prefix, and return the new
 * name of its entry method (call it with `m.call(name, [...])`).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { embedProgram } from "./fragments.ts";
 * const payload = new ProgramBuilder();
 * payload.method("main", (m) => m.return(7));
 * const p = new ProgramBuilder();
 * const entry = embedProgram(p, payload.build(), { prefix: "payload." });
 * p.method("main", (m) => m.return(m.call(entry)));
 * ```
 *
 * @param p The program being built.
 * @param program The program to embed.
 * @param options The prefix for its names (default `"embedded."`).
 * @returns The entry method's new name.
 */
export function embedProgram(
  p: ProgramBuilder,
  program: Program,
  options: { prefix?: string } = {},
): string {
  const prefix = options.prefix ?? "embedded.";
  const rename = <T extends Operand>(o: T): T =>
    o.kind === "data" || o.kind === "global" || o.kind === "method"
      ? { ...o, name: prefix + o.name }
      : o;
  const renameStatement = (s: Statement): Statement => {
    switch (s.kind) {
      case "assign":
      case "convert":
        return { ...s, src: rename(s.src) };
      case "binary":
        return { ...s, a: rename(s.a), b: rename(s.b) };
      case "syscall":
        return { ...s, args: s.args.map(rename) };
      case "call":
        return {
          ...s,
          target: typeof s.target === "string"
            ? prefix + s.target
            : rename(s.target),
          args: s.args.map(rename),
        };
      case "if": {
        const cond = (c: typeof s.cond): typeof s.cond =>
          c.kind === "not"
            ? { kind: "not", cond: cond(c.cond) }
            : { ...c, a: rename(c.a), b: rename(c.b) };
        return {
          ...s,
          cond: cond(s.cond),
          then: s.then.map(renameStatement),
          else: s.else.map(renameStatement),
        };
      }
      case "return":
        return s.value === undefined ? s : { ...s, value: rename(s.value) };
      case "printf":
        return {
          ...s,
          fd: rename(s.fd),
          args: s.args.map((a) =>
            "ptr" in a ? { ptr: rename(a.ptr), len: rename(a.len) } : rename(a)
          ),
        };
      case "label":
      case "goto":
        return s;
      default: {
        const unknown: never = s;
        throw new TypeError(
          `Cannot embed statement: kind "${
            (unknown as Statement).kind
          }" is unknown`,
        );
      }
    }
  };
  for (const item of program.data as DataItem[]) {
    if ("bytes" in item) {
      p.bytes(item.bytes, { name: prefix + item.name });
    } else {
      p.pointers(
        item.pointers.map((t): DataRef | null =>
          t === null ? null : { kind: "data", name: prefix + t }
        ),
        { name: prefix + item.name },
      );
    }
  }
  for (const g of program.globals) p.global(g.size, { name: prefix + g.name });
  for (const method of program.methods) {
    p.method(prefix + method.name, (mb) => {
      mb.method.params.push(...method.params);
      mb.method.buffers.push(...method.buffers);
      mb.method.body.push(...method.body.map(renameStatement));
    });
  }
  return prefix + program.entry;
}

// ---- files and mounts ----

/**
 * Make a directory: `mkdirat(AT_FDCWD, path, mode)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { Errno, mkdir } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   mkdir(m, { path: "/sys", ignore: [Errno.EEXIST], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The path, the mode (default 0755), and error handling.
 */
export function mkdir(
  m: MethodBuilder,
  options: { path: StringArg; mode?: number } & Fallible,
): void {
  const r = m.syscall("mkdirat", [
    AT_FDCWD,
    stringArg(m, options.path),
    options.mode ?? 0o755,
  ]);
  check(m, r, options, `mkdir ${describe(options.path)}`);
}

/**
 * Mount a filesystem: `mount(source, target, fstype, flags, data)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { Errno, mount } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   mount(m, {
 *     source: "devtmpfs",
 *     target: "/dev",
 *     fstype: "devtmpfs",
 *     ignore: [Errno.EBUSY],
 *     onError,
 *   });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Source, target, filesystem type, `MS_*` flags (default 0),
 * filesystem data (default none), and error handling.
 */
export function mount(
  m: MethodBuilder,
  options: {
    source: StringArg;
    target: StringArg;
    fstype: StringArg;
    flags?: number;
    data?: StringArg;
  } & Fallible,
): void {
  const r = m.syscall("mount", [
    stringArg(m, options.source),
    stringArg(m, options.target),
    stringArg(m, options.fstype),
    options.flags ?? 0,
    options.data === undefined ? 0 : stringArg(m, options.data),
  ]);
  check(
    m,
    r,
    options,
    `mount ${describe(options.fstype)} on ${describe(options.target)}`,
  );
}

/**
 * Make a device node or a FIFO: `mknodat(AT_FDCWD, path, type | mode, dev)`
 * with the kernel's `new_encode_dev(major, minor)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { mknod } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   mknod(m, { path: "/dev/null", type: "char", major: 1, minor: 3, mode: 0o666, onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Path, node type, device numbers (default 0), permission
 * bits (default 0600), and error handling.
 */
export function mknod(
  m: MethodBuilder,
  options: {
    path: StringArg;
    type: "char" | "block" | "fifo";
    major?: number;
    minor?: number;
    mode?: number;
  } & Fallible,
): void {
  const type = { char: S_IFCHR, block: S_IFBLK, fifo: S_IFIFO }[options.type];
  const major = options.major ?? 0;
  const minor = options.minor ?? 0;
  const dev = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12);
  const r = m.syscall("mknodat", [
    AT_FDCWD,
    stringArg(m, options.path),
    type | (options.mode ?? 0o600),
    dev >>> 0,
  ]);
  check(m, r, options, `mknod ${describe(options.path)}`);
}

/**
 * Change the root directory and move into it: `chroot(path)`, `chdir("/")`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { chroot } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   chroot(m, { path: "/newroot", onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The new root and error handling.
 */
export function chroot(
  m: MethodBuilder,
  options: { path: StringArg } & Fallible,
): void {
  const r = m.syscall("chroot", [stringArg(m, options.path)]);
  check(m, r, options, `chroot ${describe(options.path)}`);
  const cd = m.syscall("chdir", [cString(m.program, "/").ptr]);
  check(m, cd, { onError: options.onError }, "chdir /");
}

/**
 * Make `newRoot` the root mount, moving the old root to `putOld` (a
 * directory under `newRoot`): `pivot_root(newRoot, putOld)`, `chdir("/")`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { pivotRoot } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   pivotRoot(m, { newRoot: "/newroot", putOld: "/newroot/.old", onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The new root, where the old one goes, error handling.
 */
export function pivotRoot(
  m: MethodBuilder,
  options: { newRoot: StringArg; putOld: StringArg } & Fallible,
): void {
  const r = m.syscall("pivot_root", [
    stringArg(m, options.newRoot),
    stringArg(m, options.putOld),
  ]);
  check(m, r, options, `pivot_root ${describe(options.newRoot)}`);
  const cd = m.syscall("chdir", [cString(m.program, "/").ptr]);
  check(m, cd, { onError: options.onError }, "chdir /");
}

/**
 * Create (or truncate) a file holding the given bytes, embedded in the
 * program.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { writeBinaryFile } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   writeBinaryFile(m, { path: "/etc/motd", bytes: new TextEncoder().encode("hi\n"), onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Path, contents, mode (default 0644), error handling.
 */
export function writeBinaryFile(
  m: MethodBuilder,
  options: { path: StringArg; bytes: Uint8Array; mode?: number } & Fallible,
): void {
  writeFile(m, {
    path: options.path,
    content: options.bytes,
    flags: O_WRONLY | O_CREAT | O_TRUNC,
    mode: options.mode,
  }, options);
}

/**
 * Create (or truncate) a file and copy a file descriptor (stdin by
 * default) into it until end of file.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { createFileFromStdin } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   const copied = createFileFromStdin(m, { path: "input.bin", onError });
 *   m.return(copied);
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Path, mode (default 0644), source fd (default 0), error
 * handling.
 * @returns A variable holding the number of bytes copied.
 */
export function createFileFromStdin(
  m: MethodBuilder,
  options: { path: StringArg; mode?: number; stdin?: Value } & Fallible,
): Var {
  const fd = openFile(m, options.path, O_WRONLY | O_CREAT | O_TRUNC, {
    ...options,
  });
  const buffer = m.var(fresh(m, "chunk"), {
    init: m.buffer(STDIN_CHUNK_SIZE),
  });
  const total = m.var(fresh(m, "total"), { init: 0 });
  const top = fresh(m, "read");
  const end = fresh(m, "eof");
  const closeFd = () => m.syscall("close", [fd]);
  m.label(top);
  const n = m.syscall("read", [options.stdin ?? 0, buffer, STDIN_CHUNK_SIZE]);
  m.if(m.isZero(n), () => m.goto(end));
  m.if(m.isNegative(n), () => {
    m.if(m.eq(n, -Errno.EINTR), () => m.goto(top));
    fail(m, n, options.onError, "read stdin", closeFd);
  });
  writeAll(
    m,
    { fd, ptr: buffer, len: n },
    (r) =>
      fail(m, r, options.onError, `write ${describe(options.path)}`, closeFd),
  );
  m.add(total, n, { into: total });
  m.goto(top);
  m.label(end);
  closeFd();
  return total;
}

/**
 * A line of `/etc/hosts`.
 *
 * @example
 * ```ts
 * import type { HostsEntry } from "./fragments.ts";
 * const entry: HostsEntry = { address: "127.0.0.1", names: ["localhost"] };
 * ```
 */
export interface HostsEntry {
  /** IPv4 or IPv6 address. */
  address: string;
  /** Host names for the address. */
  names: readonly string[];
}

/**
 * The text of a hosts file.
 *
 * @example
 * ```ts
 * import { hostsFile } from "./fragments.ts";
 * console.assert(hostsFile([{ address: "::1", names: ["localhost"] }]) === "::1\tlocalhost\n");
 * ```
 *
 * @param entries The lines.
 * @returns The text.
 */
export function hostsFile(entries: readonly HostsEntry[]): string {
  return entries.map((e) => `${e.address}\t${e.names.join(" ")}\n`).join("");
}

const DEFAULT_HOSTS: readonly HostsEntry[] = [
  { address: "127.0.0.1", names: ["localhost"] },
  { address: "::1", names: ["localhost"] },
];

/**
 * Write `/etc/hosts` (or `path`). Use {@link trySetHosts} where `/etc` may
 * be read-only.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { setHosts } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   setHosts(m, { entries: [{ address: "127.0.0.1", names: ["localhost", "box"] }], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Entries (default: localhost for IPv4 and IPv6), path,
 * error handling.
 */
export function setHosts(
  m: MethodBuilder,
  options: { entries?: readonly HostsEntry[]; path?: StringArg } & Fallible,
): void {
  writeFile(m, {
    path: options.path ?? "/etc/hosts",
    content: new TextEncoder().encode(
      hostsFile(options.entries ?? DEFAULT_HOSTS),
    ),
    flags: O_WRONLY | O_CREAT | O_TRUNC,
  }, options);
}

/**
 * {@link setHosts} that tolerates failure.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { trySetHosts } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   m.return(trySetHosts(m, {}));
 * });
 * ```
 *
 * @param m The method.
 * @param options Entries and path, as for {@link setHosts}.
 * @returns A variable holding the errno of a failure, 0 on success.
 */
export function trySetHosts(
  m: MethodBuilder,
  options: { entries?: readonly HostsEntry[]; path?: StringArg },
): Var {
  return attempt(m, (onError) => setHosts(m, { ...options, onError }));
}

/**
 * Write `/etc/resolv.conf` (or `path`).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { setResolvConf } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   setResolvConf(m, { nameservers: ["10.42.0.1"], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Name servers, search domains, path, error handling.
 */
export function setResolvConf(
  m: MethodBuilder,
  options: {
    nameservers: readonly string[];
    search?: readonly string[];
    path?: StringArg;
  } & Fallible,
): void {
  const search = options.search?.length
    ? `search ${options.search.join(" ")}\n`
    : "";
  const text = search +
    options.nameservers.map((ns) => `nameserver ${ns}\n`).join("");
  writeFile(m, {
    path: options.path ?? "/etc/resolv.conf",
    content: new TextEncoder().encode(text),
    flags: O_WRONLY | O_CREAT | O_TRUNC,
  }, options);
}

/**
 * Write a line to the kernel log through `/dev/kmsg`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { logKmsg } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   logKmsg(m, { message: "initx: hello", onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The message (without newline), the syslog level
 * (default 6, info), the device path (default `/dev/kmsg`), error handling.
 */
export function logKmsg(
  m: MethodBuilder,
  options: { message: string; level?: number; path?: StringArg } & Fallible,
): void {
  writeFile(m, {
    path: options.path ?? "/dev/kmsg",
    content: new TextEncoder().encode(
      `<${options.level ?? 6}>${options.message}\n`,
    ),
    flags: O_WRONLY,
  }, options);
}

/**
 * Mount `binfmt_misc` on `/proc/sys/fs/binfmt_misc` (proc must be mounted).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { Errno, mountBinfmtMisc } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   mountBinfmtMisc(m, { ignore: [Errno.EBUSY], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Error handling.
 */
export function mountBinfmtMisc(m: MethodBuilder, options: Fallible): void {
  mount(m, {
    source: "binfmt_misc",
    target: "/proc/sys/fs/binfmt_misc",
    fstype: "binfmt_misc",
    ...options,
  });
}

/**
 * The line `registerBinfmt` writes to `register`:
 * `:name:M:offset:magic:mask:interpreter:flags`, bytes escaped as `\xHH`.
 *
 * @example
 * ```ts
 * import { binfmtRule } from "./fragments.ts";
 * const rule = binfmtRule({ name: "x", magic: new Uint8Array([0x7f]), interpreter: "/i" });
 * console.assert(rule === ":x:M:0:\\x7f::/i:");
 * ```
 *
 * @param rule The rule.
 * @returns The line.
 */
export function binfmtRule(rule: BinfmtRule): string {
  const escape = (bytes: Uint8Array) =>
    [...bytes].map((b) => `\\x${b.toString(16).padStart(2, "0")}`).join("");
  return `:${rule.name}:M:${rule.offset ?? 0}:${escape(rule.magic)}:${
    rule.mask ? escape(rule.mask) : ""
  }:${rule.interpreter}:${rule.flags ?? ""}`;
}

/**
 * A `binfmt_misc` rule matching magic bytes.
 *
 * @example
 * ```ts
 * import type { BinfmtRule } from "./fragments.ts";
 * const rule: BinfmtRule = { name: "wasm", magic: new Uint8Array([0, 0x61, 0x73, 0x6d]), interpreter: "/usr/bin/wasm", flags: "F" };
 * ```
 */
export interface BinfmtRule {
  /** Rule name (a file under `/proc/sys/fs/binfmt_misc`). */
  name: string;
  /** Bytes to match. */
  magic: Uint8Array;
  /** Mask ANDed with the file's bytes before matching. */
  mask?: Uint8Array;
  /** Offset of the magic in the file (default 0). */
  offset?: number;
  /** Interpreter path. */
  interpreter: string;
  /** Flags such as `F` (open the interpreter now), `P`, `C`, `O`. */
  flags?: string;
}

/**
 * Register a `binfmt_misc` rule (binfmt_misc must be mounted).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { registerBinfmt } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   registerBinfmt(m, { rule: { name: "x", magic: new Uint8Array([1]), interpreter: "/i" }, onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The rule, the register file (default
 * `/proc/sys/fs/binfmt_misc/register`), error handling.
 */
export function registerBinfmt(
  m: MethodBuilder,
  options: { rule: BinfmtRule; register?: StringArg } & Fallible,
): void {
  writeFile(m, {
    path: options.register ?? "/proc/sys/fs/binfmt_misc/register",
    content: new TextEncoder().encode(binfmtRule(options.rule)),
    flags: O_WRONLY,
  }, options);
}

// ---- processes ----

/**
 * A command to run.
 *
 * @example
 * ```ts
 * import type { Command } from "./fragments.ts";
 * const command: Command = { path: "/bin/pwd", argv: ["pwd"], cwd: "/tmp" };
 * ```
 */
export interface Command {
  /** Executable path. */
  path: StringArg;
  /** Arguments, `argv[0]` included. */
  argv: StringList;
  /** Environment (default empty). */
  env?: StringList;
  /** Working directory of the command (default: the caller's). */
  cwd?: StringArg;
}

/**
 * Replace the process: `execve(path, argv, env)`. Returns only on failure,
 * and then jumps to `onError`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { exec } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   exec(m, { path: "/bin/sh", argv: ["sh"], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The command (its `cwd` is applied first) and error
 * handling.
 */
export function exec(
  m: MethodBuilder,
  options: Command & { onError: OnError },
): void {
  if (options.cwd !== undefined) {
    const cd = m.syscall("chdir", [stringArg(m, options.cwd)]);
    check(m, cd, options, `chdir ${describe(options.cwd)}`);
  }
  const r = m.syscall("execve", [
    stringArg(m, options.path),
    stringList(m, options.argv),
    stringList(m, options.env ?? []),
  ]);
  fail(m, r, options.onError, `exec ${describe(options.path)}`);
}

/**
 * Run a command in a child process and wait for it. The child changes to
 * `cwd` and execs; when either fails it prints why to fd 2 and exits with
 * status 127. A failure to fork or wait jumps to `onError`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { forkExecWait } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   const status = forkExecWait(m, { path: "/bin/pwd", argv: ["pwd"], cwd: "/", onError });
 *   m.return(status);
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The command and error handling.
 * @returns A variable holding the exit status, or 128 + the signal number
 * when a signal ended the child.
 */
export function forkExecWait(
  m: MethodBuilder,
  options: Command & { onError: OnError },
): Var {
  const path = describe(options.path);
  const pid = m.syscall("clone", [SIGCHLD, 0, 0, 0, 0]);
  check(m, pid, options, `fork for ${path}`);
  m.if(m.isZero(pid), () => {
    if (options.cwd !== undefined) {
      const cd = m.syscall("chdir", [stringArg(m, options.cwd)]);
      m.if(m.isNegative(cd), () => {
        m.printf("initx: cannot chdir to %s: errno %d\n", [
          printable(m, options.cwd!),
          m.sub(0, cd),
        ], { fd: 2 });
        m.syscall("exit_group", [EXEC_FAILED_STATUS]);
      });
    }
    const r = m.syscall("execve", [
      stringArg(m, options.path),
      stringList(m, options.argv),
      stringList(m, options.env ?? []),
    ]);
    m.printf("initx: cannot exec %s: errno %d\n", [
      printable(m, options.path),
      m.sub(0, r),
    ], { fd: 2 });
    m.syscall("exit_group", [EXEC_FAILED_STATUS]);
  });
  const statusPtr = m.var(fresh(m, "status"), { init: m.buffer(8) });
  const again = fresh(m, "wait");
  m.label(again);
  const waited = m.syscall("wait4", [pid, statusPtr, 0, 0]);
  m.if(m.eq(waited, -Errno.EINTR), () => m.goto(again));
  check(m, waited, { onError: options.onError }, `wait for ${path}`);
  const status = m.convert(m.mem(statusPtr, { width: 32 }), { width: 64 });
  const signal = m.and(status, 0x7f);
  const code = m.var(fresh(m, "code"));
  m.if(
    m.isZero(signal),
    () => m.and(m.shr(status, 8), 0xff, { into: code }),
    () => m.add(signal, 128, { into: code }),
  );
  return code;
}

/**
 * Start a session and make a terminal (`/dev/console` by default) its
 * controlling terminal and fds 0, 1 and 2: `setsid()`, `openat(path)`,
 * `ioctl(TIOCSCTTY)`, `dup3` onto 0-2. `setsid` and `TIOCSCTTY` failures
 * are tolerated: a console that cannot control a session still serves as
 * stdin, stdout and stderr.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { attachConsole } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   attachConsole(m, { onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The terminal's path and error handling.
 */
export function attachConsole(
  m: MethodBuilder,
  options: { path?: StringArg } & Fallible,
): void {
  const path = options.path ?? "/dev/console";
  m.syscall("setsid");
  const fd = m.syscall("openat", [
    AT_FDCWD,
    stringArg(m, path),
    O_RDWR | O_NOCTTY,
    0,
  ]);
  check(m, fd, options, `open ${describe(path)}`);
  m.syscall("ioctl", [fd, TIOCSCTTY, 1]);
  for (const target of [0, 1, 2]) {
    m.if(m.ne(fd, target), () => {
      const r = m.syscall("dup3", [fd, target, 0]);
      check(m, r, { onError: options.onError }, `dup3 console to ${target}`);
    });
  }
  m.if(m.gt(fd, 2), () => m.syscall("close", [fd]));
}

// ---- system ----

/**
 * Set the host name: `sethostname(name, len)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { setHostname } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   setHostname(m, { name: "initx", onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The name and error handling.
 */
export function setHostname(
  m: MethodBuilder,
  options: { name: string } & Fallible,
): void {
  const name = cString(m.program, options.name);
  const r = m.syscall("sethostname", [name.ptr, name.len]);
  check(m, r, options, `sethostname ${options.name}`);
}

/**
 * Set the wall clock: `clock_settime(CLOCK_REALTIME, { seconds, nanoseconds })`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { setClock } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   setClock(m, { seconds: 1_700_000_000, onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Seconds since the epoch, nanoseconds (default 0), error
 * handling.
 */
export function setClock(
  m: MethodBuilder,
  options: { seconds: Value; nanoseconds?: Value } & Fallible,
): void {
  const ts = m.var(fresh(m, "timespec"), { init: m.buffer(16) });
  m.set(m.mem(ts), options.seconds);
  m.set(m.mem(ts, { disp: 8 }), options.nanoseconds ?? 0);
  const r = m.syscall("clock_settime", [CLOCK_REALTIME, ts]);
  check(m, r, options, "clock_settime");
}

/**
 * Load a kernel module from bytes embedded in the program:
 * `init_module(bytes, length, params)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { Errno, loadModule } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   const bytes = new Uint8Array(64); // a .ko file's contents
 *   loadModule(m, { name: "virtio_mmio", bytes, ignore: [Errno.EEXIST], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The module's name (for messages), its `.ko` bytes, module
 * parameters (default none), error handling.
 */
export function loadModule(
  m: MethodBuilder,
  options: { name: string; bytes: Uint8Array; params?: string } & Fallible,
): void {
  const image = m.program.bytes(options.bytes);
  const r = m.syscall("init_module", [
    image.ptr,
    image.len,
    cString(m.program, options.params ?? "").ptr,
  ]);
  check(m, r, options, `load module ${options.name}`);
}

function rebootWith(
  m: MethodBuilder,
  command: number,
  options: Fallible,
  step: string,
): void {
  m.syscall("sync");
  const r = m.syscall("reboot", [
    LINUX_REBOOT_MAGIC1,
    LINUX_REBOOT_MAGIC2,
    command,
    0,
  ]);
  fail(m, r, options.onError, step);
}

/**
 * Sync and power the machine off: `reboot(LINUX_REBOOT_CMD_POWER_OFF)`.
 * Returns only on failure (e.g. `EPERM` outside PID 1's namespace), and
 * then jumps to `onError`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { powerOff } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   powerOff(m, { onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Error handling.
 */
export function powerOff(m: MethodBuilder, options: Fallible): void {
  rebootWith(m, LINUX_REBOOT_CMD_POWER_OFF, options, "power off");
}

/**
 * Sync and restart the machine: `reboot(LINUX_REBOOT_CMD_RESTART)`.
 * Returns only on failure, and then jumps to `onError`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { reboot } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   reboot(m, { onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Error handling.
 */
export function reboot(m: MethodBuilder, options: Fallible): void {
  rebootWith(m, LINUX_REBOOT_CMD_RESTART, options, "reboot");
}

// ---- network (socket ioctls on an AF_INET datagram socket) ----

/** The four bytes of a dotted IPv4 address. */
function parseIpv4(address: string): number[] {
  const parts = address.split(".").map((s) => /^\d{1,3}$/.test(s) ? +s : NaN);
  if (parts.length !== 4 || parts.some((n) => !(n >= 0 && n <= 255))) {
    throw new RangeError(
      `Cannot use "${address}" as an IPv4 address: expected a.b.c.d`,
    );
  }
  return parts;
}

/** A `sockaddr_in` (family, port 0, address) as its first 8 bytes, little-endian. */
function sockaddrIn(bytes: readonly number[]): bigint {
  return bytes.reduce(
    (v, b, i) => v | (BigInt(b) << BigInt(32 + 8 * i)),
    BigInt(AF_INET),
  );
}

/** Pack an interface name into the 16 bytes of `ifr_name`. */
function ifrName(name: string): [bigint, bigint] {
  const bytes = new TextEncoder().encode(name);
  if (bytes.length >= IFNAMSIZ) {
    throw new RangeError(
      `Cannot use "${name}" as an interface name: longer than ${
        IFNAMSIZ - 1
      } bytes`,
    );
  }
  const padded = new Uint8Array(IFNAMSIZ);
  padded.set(bytes);
  const view = new DataView(padded.buffer);
  return [view.getBigUint64(0, true), view.getBigUint64(8, true)];
}

/** Open a socket for interface ioctls; `body` gets it and a cleanup. */
function withSocket(
  m: MethodBuilder,
  options: Fallible,
  body: (fd: Var, closeFd: () => void) => void,
): void {
  const fd = m.syscall("socket", [AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0]);
  check(m, fd, { onError: options.onError }, "socket");
  const closeFd = () => m.syscall("close", [fd]);
  body(fd, closeFd);
  closeFd();
}

/** A zeroed `struct ifreq` naming `name`, in a stack buffer. */
function ifreq(m: MethodBuilder, name: string): Var {
  const ptr = m.var(fresh(m, "ifreq"), { init: m.buffer(IFREQ_SIZE) });
  zero(m, ptr, IFREQ_SIZE);
  const [low, high] = ifrName(name);
  m.set(m.mem(ptr), low);
  m.set(m.mem(ptr, { disp: 8 }), high);
  return ptr;
}

function ioctl(
  m: MethodBuilder,
  call: { fd: Var; request: number; arg: Value; step: string },
  options: Fallible,
  cleanup: () => void,
): void {
  const r = m.syscall("ioctl", [call.fd, call.request, call.arg]);
  check(m, r, options, call.step, cleanup);
}

function bringUp(
  m: MethodBuilder,
  socket: { fd: Var; ifr: Var; name: string },
  options: Fallible,
  cleanup: () => void,
): void {
  const { fd, ifr, name } = socket;
  ioctl(
    m,
    {
      fd,
      request: SIOCGIFFLAGS,
      arg: ifr,
      step: `get flags of ${name}`,
    },
    { onError: options.onError },
    cleanup,
  );
  const flags = m.mem(ifr, { disp: IFR_UNION, width: 16 });
  m.or(flags, IFF_UP | IFF_RUNNING, { into: flags });
  ioctl(
    m,
    {
      fd,
      request: SIOCSIFFLAGS,
      arg: ifr,
      step: `bring up ${name}`,
    },
    { onError: options.onError },
    cleanup,
  );
}

/**
 * Bring the loopback interface up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS`
 * with `IFF_UP | IFF_RUNNING`).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { configureLoopback } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   configureLoopback(m, { onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The interface name (default `lo`) and error handling.
 */
export function configureLoopback(
  m: MethodBuilder,
  options: { name?: string } & Fallible,
): void {
  const name = options.name ?? "lo";
  withSocket(m, options, (fd, closeFd) => {
    bringUp(m, { fd, ifr: ifreq(m, name), name }, options, closeFd);
  });
}

/**
 * Give an interface an IPv4 address and netmask (and MTU), then bring it up:
 * `SIOCSIFADDR`, `SIOCSIFNETMASK`, `SIOCSIFMTU`, `SIOCSIFFLAGS`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { configureInterface } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   configureInterface(m, { name: "eth0", address: "10.42.0.2", prefixLength: 24, onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Interface name, address, prefix length, MTU (default: keep),
 * error handling.
 */
export function configureInterface(
  m: MethodBuilder,
  options: {
    name: string;
    address: string;
    prefixLength: number;
    mtu?: number;
  } & Fallible,
): void {
  const { name, prefixLength } = options;
  if (
    !Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32
  ) {
    throw new RangeError(
      `Cannot use prefix length ${prefixLength}: expected 0 to 32`,
    );
  }
  const address = sockaddrIn(parseIpv4(options.address));
  const maskBits = prefixLength === 0 ? 0 : (~0 << (32 - prefixLength)) >>> 0;
  const netmask = sockaddrIn(
    [24, 16, 8, 0].map((s) => (maskBits >>> s) & 0xff),
  );
  withSocket(m, options, (fd, closeFd) => {
    const ifr = ifreq(m, name);
    const union = m.mem(ifr, { disp: IFR_UNION });
    m.set(union, address);
    ioctl(
      m,
      {
        fd,
        request: SIOCSIFADDR,
        arg: ifr,
        step: `set address of ${name}`,
      },
      options,
      closeFd,
    );
    m.set(union, netmask);
    ioctl(
      m,
      {
        fd,
        request: SIOCSIFNETMASK,
        arg: ifr,
        step: `set netmask of ${name}`,
      },
      options,
      closeFd,
    );
    if (options.mtu !== undefined) {
      m.set(union, 0);
      m.set(m.mem(ifr, { disp: IFR_UNION, width: 32 }), options.mtu);
      ioctl(
        m,
        {
          fd,
          request: SIOCSIFMTU,
          arg: ifr,
          step: `set MTU of ${name}`,
        },
        options,
        closeFd,
      );
    }
    m.set(union, 0);
    bringUp(m, { fd, ifr, name }, options, closeFd);
  });
}

/**
 * Add a default IPv4 route through a gateway: `SIOCADDRT` with a
 * `struct rtentry` (destination and mask 0.0.0.0, `RTF_UP | RTF_GATEWAY`).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { addDefaultRoute, Errno } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   addDefaultRoute(m, { gateway: "10.42.0.1", ignore: [Errno.EEXIST], onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Gateway, device (default: the kernel picks), error handling.
 */
export function addDefaultRoute(
  m: MethodBuilder,
  options: { gateway: string; device?: string } & Fallible,
): void {
  const gateway = sockaddrIn(parseIpv4(options.gateway));
  withSocket(m, options, (fd, closeFd) => {
    const rt = m.var(fresh(m, "rtentry"), { init: m.buffer(RTENTRY_SIZE) });
    zero(m, rt, RTENTRY_SIZE);
    m.set(m.mem(rt, { disp: RT_DST, width: 16 }), AF_INET);
    m.set(m.mem(rt, { disp: RT_GATEWAY }), gateway);
    m.set(m.mem(rt, { disp: RT_GENMASK, width: 16 }), AF_INET);
    m.set(m.mem(rt, { disp: RT_FLAGS, width: 16 }), RTF_UP | RTF_GATEWAY);
    if (options.device !== undefined) {
      m.set(m.mem(rt, { disp: RT_DEV }), cString(m.program, options.device));
    }
    ioctl(
      m,
      {
        fd,
        request: SIOCADDRT,
        arg: rt,
        step: `add default route via ${options.gateway}`,
      },
      options,
      closeFd,
    );
  });
}

/**
 * The index of a network interface: `SIOCGIFINDEX`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { getInterfaceIndex } from "./fragments.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   m.return(getInterfaceIndex(m, { name: "lo", onError }));
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The interface name and error handling.
 * @returns A variable holding the index.
 */
export function getInterfaceIndex(
  m: MethodBuilder,
  options: { name: string } & Fallible,
): Var {
  const index = m.var(fresh(m, "ifindex"));
  withSocket(m, options, (fd, closeFd) => {
    const ifr = ifreq(m, options.name);
    ioctl(
      m,
      {
        fd,
        request: SIOCGIFINDEX,
        arg: ifr,
        step: `get index of ${options.name}`,
      },
      options,
      closeFd,
    );
    m.convert(m.mem(ifr, { disp: IFR_UNION, width: 32 }), {
      width: 64,
      into: index,
    });
  });
  return index;
}
