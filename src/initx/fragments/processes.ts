/**
 * Process steps: `execve`, fork-exec-wait of a command, and the console
 * as controlling terminal and fds 0-2.
 *
 * @module
 */

import type { MethodBuilder, Var } from "../../ir/mod.ts";
import {
  AT_FDCWD,
  check,
  describe,
  Errno,
  fail,
  type Fallible,
  fresh,
  O_NOCTTY,
  O_RDWR,
  type OnError,
  printable,
  type StringArg,
  stringArg,
  type StringList,
  stringList,
} from "./core.ts";

/** Signal a cloned child sends its parent on exit (`asm-generic/signal.h`). */
const SIGCHLD = 17;
/** Make the terminal the controlling one (`asm-generic/ioctls.h`). */
const TIOCSCTTY = 0x540e;
/** Exit status of a child that could not change directory or exec. */
const EXEC_FAILED_STATUS = 127;

/**
 * A command to run.
 *
 * @example
 * ```ts
 * import type { Command } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { exec } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { forkExecWait } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { attachConsole } from "./mod.ts";
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
