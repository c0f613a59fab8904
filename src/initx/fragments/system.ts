/**
 * System steps: host name, wall clock, kernel modules, power off and
 * reboot.
 *
 * @module
 */

import type { MethodBuilder, Value } from "../../ir/mod.ts";
import { check, cString, fail, type Fallible, fresh } from "./core.ts";

/** `clock_settime` clock (`linux/time.h`). */
const CLOCK_REALTIME = 0;
/** `reboot` magic numbers and commands (`linux/reboot.h`). */
const LINUX_REBOOT_MAGIC1 = 0xfee1dead;
const LINUX_REBOOT_MAGIC2 = 0x28121969;
const LINUX_REBOOT_CMD_POWER_OFF = 0x4321fedc;
const LINUX_REBOOT_CMD_RESTART = 0x01234567;

/**
 * Set the host name: `sethostname(name, len)`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { setHostname } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { setClock } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { Errno, loadModule } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { powerOff } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { reboot } from "./mod.ts";
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
