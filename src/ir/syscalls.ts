/**
 * Linux system call numbers by name, for each architecture initx compiles
 * for. x86_64 numbers come from `arch/x86/entry/syscalls/syscall_64.tbl`;
 * aarch64 uses the generic table, `include/uapi/asm-generic/unistd.h`.
 * `null` marks a call the architecture does not have (aarch64 has no `open`,
 * `fork`, `pipe`, ...: use `openat`, `clone`, `pipe2`).
 *
 * @module
 */

/**
 * Architectures initx compiles for.
 *
 * @example
 * ```ts
 * import type { Arch } from "./syscalls.ts";
 * const arch: Arch = "aarch64";
 * ```
 */
export type Arch = "x86_64" | "aarch64";

/** `[x86_64, aarch64]` numbers. */
const SYSCALLS: Readonly<Record<string, readonly [number, number | null]>> = {
  read: [0, 63],
  write: [1, 64],
  open: [2, null],
  close: [3, 57],
  stat: [4, null],
  fstat: [5, 80],
  lstat: [6, null],
  poll: [7, null],
  lseek: [8, 62],
  mmap: [9, 222],
  mprotect: [10, 226],
  munmap: [11, 215],
  brk: [12, 214],
  rt_sigaction: [13, 134],
  rt_sigprocmask: [14, 135],
  rt_sigreturn: [15, 139],
  ioctl: [16, 29],
  pread64: [17, 67],
  pwrite64: [18, 68],
  readv: [19, 65],
  writev: [20, 66],
  access: [21, null],
  pipe: [22, null],
  sched_yield: [24, 124],
  dup: [32, 23],
  dup2: [33, null],
  nanosleep: [35, 101],
  getpid: [39, 172],
  sendfile: [40, 71],
  socket: [41, 198],
  connect: [42, 203],
  accept: [43, 202],
  sendto: [44, 206],
  recvfrom: [45, 207],
  sendmsg: [46, 211],
  recvmsg: [47, 212],
  shutdown: [48, 210],
  bind: [49, 200],
  listen: [50, 201],
  setsockopt: [54, 208],
  getsockopt: [55, 209],
  clone: [56, 220],
  fork: [57, null],
  execve: [59, 221],
  exit: [60, 93],
  wait4: [61, 260],
  kill: [62, 129],
  uname: [63, 160],
  fcntl: [72, 25],
  flock: [73, 32],
  fsync: [74, 82],
  ftruncate: [77, 46],
  getcwd: [79, 17],
  chdir: [80, 49],
  fchdir: [81, 50],
  mkdir: [83, null],
  rmdir: [84, null],
  unlink: [87, null],
  umask: [95, 166],
  gettimeofday: [96, 169],
  getuid: [102, 174],
  getgid: [104, 176],
  setuid: [105, 146],
  setgid: [106, 144],
  setgroups: [116, 159],
  geteuid: [107, 175],
  getegid: [108, 177],
  setpgid: [109, 154],
  getppid: [110, 173],
  setsid: [112, 157],
  pivot_root: [155, 41],
  prctl: [157, 167],
  chroot: [161, 51],
  sync: [162, 81],
  mount: [165, 40],
  umount2: [166, 39],
  reboot: [169, 142],
  sethostname: [170, 161],
  setdomainname: [171, 162],
  init_module: [175, 105],
  delete_module: [176, 106],
  gettid: [186, 178],
  futex: [202, 98],
  getdents64: [217, 61],
  set_tid_address: [218, 96],
  clock_settime: [227, 112],
  clock_gettime: [228, 113],
  exit_group: [231, 94],
  epoll_ctl: [233, 21],
  tgkill: [234, 131],
  waitid: [247, 95],
  openat: [257, 56],
  mkdirat: [258, 34],
  mknodat: [259, 33],
  fchownat: [260, 54],
  newfstatat: [262, 79],
  unlinkat: [263, 35],
  linkat: [265, 37],
  symlinkat: [266, 36],
  readlinkat: [267, 78],
  fchmodat: [268, 53],
  faccessat: [269, 48],
  pselect6: [270, 72],
  ppoll: [271, 73],
  unshare: [272, 97],
  splice: [275, 76],
  epoll_pwait: [281, 22],
  accept4: [288, 242],
  eventfd2: [290, 19],
  epoll_create1: [291, 20],
  dup3: [292, 24],
  pipe2: [293, 59],
  setns: [308, 268],
  finit_module: [313, 273],
  renameat2: [316, 276],
  getrandom: [318, 278],
  memfd_create: [319, 279],
  statx: [332, 291],
  clone3: [435, 435],
};

/**
 * The number of a system call on an architecture, or `undefined` when the
 * name is unknown or the architecture lacks the call.
 *
 * @example
 * ```ts
 * import { syscallNumber } from "./syscalls.ts";
 * console.assert(syscallNumber("write", "x86_64") === 1);
 * console.assert(syscallNumber("write", "aarch64") === 64);
 * ```
 *
 * @param name The call's name as in the kernel's tables, e.g. `"openat"`.
 * @param arch The target architecture.
 * @returns The number, or `undefined`.
 */
export function syscallNumber(name: string, arch: Arch): number | undefined {
  if (!Object.hasOwn(SYSCALLS, name)) return undefined;
  const numbers = SYSCALLS[name];
  if (numbers === undefined) return undefined;
  const number = arch === "x86_64" ? numbers[0] : numbers[1];
  return number ?? undefined;
}

/**
 * Whether a name is a system call known to initx on some architecture.
 *
 * @example
 * ```ts
 * import { isKnownSyscall } from "./syscalls.ts";
 * console.assert(isKnownSyscall("mount"));
 * console.assert(!isKnownSyscall("frobnicate"));
 * ```
 *
 * @param name The call's name.
 * @returns `true` when the name is in the table.
 */
export function isKnownSyscall(name: string): boolean {
  return Object.hasOwn(SYSCALLS, name);
}
