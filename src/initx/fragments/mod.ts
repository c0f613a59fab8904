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
 * import { compileElf, ProgramBuilder } from "../../ir/mod.ts";
 * import { Errno, mkdir, mount, powerOff } from "./mod.ts";
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

export {
  attempt,
  Errno,
  type Fallible,
  type OnError,
  type StringArg,
  type StringList,
} from "./core.ts";
export { embedProgram } from "./embed.ts";
export {
  type BinfmtRule,
  binfmtRule,
  createFileFromStdin,
  type HostsEntry,
  hostsFile,
  logKmsg,
  mkdir,
  registerBinfmt,
  setHosts,
  setResolvConf,
  trySetHosts,
  writeBinaryFile,
} from "./files.ts";
export { chroot, mknod, mount, mountBinfmtMisc, pivotRoot } from "./mounts.ts";
export {
  attachConsole,
  type Command,
  exec,
  forkExecWait,
} from "./processes.ts";
export {
  loadModule,
  powerOff,
  reboot,
  setClock,
  setHostname,
} from "./system.ts";
export {
  addDefaultRoute,
  configureInterface,
  configureLoopback,
  getInterfaceIndex,
} from "./network.ts";
