/**
 * Mount steps: mounting filesystems, device nodes, `chroot` and
 * `pivot_root`.
 *
 * @module
 */

import type { MethodBuilder } from "../../ir/mod.ts";
import {
  AT_FDCWD,
  check,
  cString,
  describe,
  type Fallible,
  type StringArg,
  stringArg,
} from "./core.ts";

/** File type bits of a mode (`linux/stat.h`). */
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/**
 * Mount a filesystem: `mount(source, target, fstype, flags, data)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { Errno, mount } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { mknod } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { chroot } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { pivotRoot } from "./mod.ts";
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
 * Mount `binfmt_misc` on `/proc/sys/fs/binfmt_misc` (proc must be mounted).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { Errno, mountBinfmtMisc } from "./mod.ts";
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
