/**
 * File steps: directories, files written from embedded bytes or from
 * stdin, `/etc/hosts`, `/etc/resolv.conf`, the kernel log and
 * `binfmt_misc` rules.
 *
 * @module
 */

import type { MethodBuilder, Value, Var } from "../../ir/mod.ts";
import {
  AT_FDCWD,
  attempt,
  check,
  describe,
  Errno,
  fail,
  type Fallible,
  fresh,
  O_CREAT,
  O_TRUNC,
  O_WRONLY,
  openFile,
  type StringArg,
  stringArg,
  writeAll,
  writeFile,
} from "./core.ts";

/** Bytes read from stdin per `read`. */
const STDIN_CHUNK_SIZE = 4096;

/**
 * Make a directory: `mkdirat(AT_FDCWD, path, mode)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { Errno, mkdir } from "./mod.ts";
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
 * Create (or truncate) a file holding the given bytes, embedded in the
 * program.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { writeBinaryFile } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { createFileFromStdin } from "./mod.ts";
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
 * import type { HostsEntry } from "./mod.ts";
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
 * import { hostsFile } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { setHosts } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { trySetHosts } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { setResolvConf } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { logKmsg } from "./mod.ts";
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
 * The line `registerBinfmt` writes to `register`:
 * `:name:M:offset:magic:mask:interpreter:flags`, bytes escaped as `\xHH`.
 *
 * @example
 * ```ts
 * import { binfmtRule } from "./mod.ts";
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
 * import type { BinfmtRule } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { registerBinfmt } from "./mod.ts";
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
