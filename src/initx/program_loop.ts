/**
 * The guest side of the program protocol (`docs/protocol.md`) as IR: the
 * init connects to the host, says hello, then runs each program the host
 * sends, one at a time, until the host closes the control connection.
 *
 * The connect address is pluggable, a `sockaddr` per port: in the guest it
 * is the host's vsock address ({@link vsockAddress}); in unit tests the same
 * loop, compiled as a host executable, connects to Unix sockets
 * ({@link unixAddress}), so the whole protocol runs end to end without a VM.
 *
 * For each request the loop maps the code read-write, reads it, applies
 * the relocations, makes the mapping executable too (`mprotect`, which on
 * aarch64 also brings the instruction cache in line with the new code), sets
 * the clock when asked, connects the stdin and output streams asked for,
 * makes the output pipes, and forks. The child puts the streams on fds 0-2
 * (`/dev/null` for absent ones) and calls the entry; the parent forwards the
 * pipes as output frames with `ppoll` until both are at end of file, waits
 * for the child and replies. Every socket write uses `MSG_NOSIGNAL`, so a
 * host that goes away never kills the init with `SIGPIPE`.
 *
 * The loop expects fds 0, 1 and 2 to be open (the init's console), so that
 * the sockets and pipes it makes never land on them.
 *
 * Syscall numbers come from `src/ir/syscalls.ts`; flags and layouts from
 * the Linux UAPI headers named beside each constant (the same on x86_64 and
 * aarch64 unless noted).
 *
 * ```ts
 * import { buildProgramLoopElf, unixAddress } from "./program_loop.ts";
 * const elf = buildProgramLoopElf({
 *   arch: "x86_64",
 *   address: (port) => unixAddress(`/tmp/initx-test/${port}`),
 * });
 * ```
 *
 * @module
 */

import {
  type Arch,
  compileElf,
  type MethodBuilder,
  type Program,
  ProgramBuilder,
  type Value,
  type Var,
} from "../ir/mod.ts";
import { attachConsole, Errno, exec, type OnError } from "./fragments/mod.ts";
import { DEFAULT_ENV } from "./init.ts";
import {
  ArchCode,
  Cid,
  FrameType,
  Limits,
  Magic,
  OutputFlag,
  Port,
  PROTOCOL_VERSION,
  StdinMode,
} from "./protocol.ts";

// ---- constants (Linux UAPI) ----

/** Address families (`linux/socket.h`). */
const AF_UNIX = 1;
const AF_VSOCK = 40;
/** `struct sockaddr_vm` size (`linux/vm_sockets.h`). */
const SOCKADDR_VM_SIZE = 16;
/** `sun_path` size of `struct sockaddr_un` (`linux/un.h`). */
const UNIX_PATH_MAX = 108;
/** Socket type and flags (`asm-generic/socket.h`, `linux/net.h`). */
const SOCK_STREAM = 1;
const O_CLOEXEC = 0o2000000;
const SOCK_CLOEXEC = O_CLOEXEC;
/** `send` flag: no `SIGPIPE` when the peer is gone (`linux/socket.h`). */
const MSG_NOSIGNAL = 0x4000;
/** `openat` directory fd meaning "the working directory" (`linux/fcntl.h`). */
const AT_FDCWD = -100;
const O_RDWR = 0o2;
/** `fcntl` command: set the fd flags (`asm-generic/fcntl.h`). */
const F_SETFD = 2;
/** `mmap` protections and flags (`asm-generic/mman-common.h`). */
const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const PROT_EXEC = 0x4;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
/** `ppoll` event (`asm-generic/poll.h`) and `struct pollfd` layout. */
const POLLIN = 0x1;
const POLLFD_SIZE = 8;
const POLLFD_EVENTS = 4;
const POLLFD_REVENTS = 6;
/** `ppoll`'s `sigsetsize` on Linux (`sizeof(sigset_t)` in the kernel). */
const KERNEL_SIGSET_SIZE = 8;
/** Signal a cloned child sends its parent on exit (`asm-generic/signal.h`). */
const SIGCHLD = 17;
/** ioctl(2): set a terminal's window size (asm-generic/ioctls.h). */
const TIOCSWINSZ = 0x5414;
/** unshare(2): a new PID namespace for the caller's next child. */
const CLONE_NEWPID = 0x20000000;
/** unshare(2): a mount namespace of the caller's own. */
const CLONE_NEWNS = 0x00020000;
/** mount(2) flags (include/uapi/linux/mount.h). */
const MS_NOSUID = 0x2;
const MS_NODEV = 0x4;
const MS_NOEXEC = 0x8;
const MS_REC = 0x4000;
const MS_PRIVATE = 1 << 18;
/** `wait4` option (`linux/wait.h`). */
const WNOHANG = 1;
/** Clocks (`linux/time.h`). */
const CLOCK_REALTIME = 0;
const CLOCK_MONOTONIC = 1;
/** `struct new_utsname` (`linux/utsname.h`): six 65-byte fields; `machine` is the fifth. */
const UTSNAME_SIZE = 6 * 65;
const UTSNAME_MACHINE = 4 * 65;
/** `"aarch64\0"` and `"x86_"` as little-endian words, to recognise `machine`. */
const MACHINE_AARCH64 = 0x0034_3668_6372_6161n;
const MACHINE_X86 = 0x5f36_3878;
/** Errnos (`asm-generic/errno.h`) a connect is retried on while the host comes up. */
const RETRIED_CONNECT_ERRNOS: readonly number[] = [
  Errno.ENOENT,
  Errno.EINTR,
  Errno.EAGAIN,
  Errno.ENODEV,
  97, // EAFNOSUPPORT: the vsock module is not loaded yet
  99, // EADDRNOTAVAIL
  101, // ENETUNREACH
  104, // ECONNRESET: the host's vsock refused
  110, // ETIMEDOUT
  111, // ECONNREFUSED
  113, // EHOSTUNREACH
];
/** Relocations read at once (4 bytes each): the size of one stack buffer. */
const RELOCATIONS_PER_READ = 1024;
const CHUNK_BUFFER_SIZE = 4 * RELOCATIONS_PER_READ;

/** Default time the control connect is retried for, in milliseconds. */
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** Default pause between connect attempts, in milliseconds. */
const DEFAULT_CONNECT_RETRY_MS = 50;

// ---- addresses ----

/**
 * A socket address: its family (the `socket()` domain) and its `sockaddr`
 * bytes, family field included.
 *
 * @example
 * ```ts
 * import { type SocketAddress, vsockAddress } from "./program_loop.ts";
 * const address: SocketAddress = vsockAddress(9998);
 * console.assert(address.family === 40);
 * ```
 */
export interface SocketAddress {
  /** Address family, e.g. 40 (`AF_VSOCK`) or 1 (`AF_UNIX`). */
  family: number;
  /** The `sockaddr` bytes passed to `connect`. */
  bytes: Uint8Array;
}

/**
 * A vsock address, `struct sockaddr_vm` (`include/uapi/linux/vm_sockets.h`):
 * u16 family, u16 reserved, u32 port, u32 cid, u8 flags, 3 zero bytes.
 *
 * @example
 * ```ts
 * import { vsockAddress } from "./program_loop.ts";
 * const { bytes } = vsockAddress(9998);
 * console.assert(bytes.length === 16 && bytes[8] === 2); // the host's CID
 * ```
 *
 * @param port The port.
 * @param cid The context ID (default 2, the host).
 * @returns The family and the 16 bytes.
 */
export function vsockAddress(
  port: number,
  cid: number = Cid.HOST,
): SocketAddress {
  for (const [what, value] of [["port", port], ["CID", cid]] as const) {
    if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
      throw new RangeError(
        `Cannot make a vsock address: ${what} ${value} is not a u32`,
      );
    }
  }
  const bytes = new Uint8Array(SOCKADDR_VM_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, AF_VSOCK, true);
  view.setUint32(4, port, true);
  view.setUint32(8, cid, true);
  return { family: AF_VSOCK, bytes };
}

/**
 * A Unix-domain socket address, `struct sockaddr_un` (`include/uapi/linux/un.h`):
 * u16 family and the NUL-terminated path.
 *
 * @example
 * ```ts
 * import { unixAddress } from "./program_loop.ts";
 * const { family, bytes } = unixAddress("/tmp/s");
 * console.assert(family === 1 && bytes.length === 2 + 6 + 1);
 * ```
 *
 * @param path The socket's path, at most 107 bytes.
 * @returns The family and the bytes.
 */
export function unixAddress(path: string): SocketAddress {
  const encoded = new TextEncoder().encode(path);
  if (encoded.length === 0 || encoded.length >= UNIX_PATH_MAX) {
    throw new RangeError(
      `Cannot make a Unix socket address: path "${path}" is not 1 to ${
        UNIX_PATH_MAX - 1
      } bytes`,
    );
  }
  if (encoded.includes(0)) {
    throw new RangeError(
      `Cannot make a Unix socket address: path "${path}" contains a NUL byte`,
    );
  }
  const bytes = new Uint8Array(2 + encoded.length + 1);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(encoded, 2);
  return { family: AF_UNIX, bytes };
}

// ---- the fragment ----

/**
 * Options of {@link serveProgramsFragment}.
 *
 * @example
 * ```ts
 * import { type ServeProgramsOptions, unixAddress } from "./program_loop.ts";
 * const options: ServeProgramsOptions = {
 *   address: (port) => unixAddress(`/run/initx/${port}`),
 *   connectTimeoutMs: 1000,
 * };
 * ```
 */
export interface ServeProgramsOptions {
  /** The address of each port (default: {@link vsockAddress} on the host's CID). */
  address?: (port: number) => SocketAddress;
  /** The ports (default {@link Port}). */
  ports?: { control?: number; stdin?: number; output?: number };
  /** How long the control connect is retried, in milliseconds (default 5000). */
  connectTimeoutMs?: number;
  /** The pause between connect attempts, in milliseconds (default 50). */
  connectRetryMs?: number;
}

const loops = new WeakMap<ProgramBuilder, number>();
const helpers = new WeakSet<ProgramBuilder>();

/** Names of the helper methods, added once per program. */
const READ_FULL = "$initx.read_full";
const SEND_ALL = "$initx.send_all";
const CONNECT = "$initx.connect";
const NOW_MS = "$initx.now_ms";

/**
 * Serve programs: connect to the host's control port (retrying every 50 ms
 * for up to 5 s while the transport comes up), send the hello, then run each
 * request as `docs/protocol.md` says. A failure of the init's own steps for
 * one program goes into that program's reply and the loop goes on. When the
 * host closes the control connection, or sends a malformed header, the
 * fragment falls through; when the control connect fails for good it jumps
 * to `onError`.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { powerOff } from "./fragments/mod.ts";
 * import { serveProgramsFragment } from "./program_loop.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   serveProgramsFragment(m, { onError });
 *   powerOff(m, { onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options Addresses, ports, connect timing, error handling.
 */
export function serveProgramsFragment(
  m: MethodBuilder,
  options: ServeProgramsOptions & { onError: OnError },
): void {
  for (
    const [what, value] of [
      ["connectTimeoutMs", options.connectTimeoutMs],
      ["connectRetryMs", options.connectRetryMs],
    ] as const
  ) {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= 0)) {
      throw new RangeError(
        `Cannot serve programs: ${what} ${value} is not a non-negative integer`,
      );
    }
  }
  const p = m.program;
  addHelpers(p);
  const n = loops.get(p) ?? 0;
  loops.set(p, n + 1);
  const name = `$initx.serve_programs${n}`;
  const control = options.ports?.control ?? Port.CONTROL;
  p.method(name, (s) => buildServeLoop(s, options));
  const result = m.call(name);
  m.if(m.isNegative(result), () => {
    const { onError } = options;
    m.sub(0, result, { into: onError.errno });
    if (onError.step) {
      m.set(
        onError.step,
        p.string(`connect to the host on port ${control}`, {
          nulTerminated: true,
        }).ptr,
      );
    }
    m.goto(onError.goto);
  });
}

/** `read_full`, `send_all`, `connect` and `now_ms`, once per program. */
function addHelpers(p: ProgramBuilder): void {
  if (helpers.has(p)) return;
  helpers.add(p);

  // read_full(fd, ptr, len): 0 when all was read, 1 at end of file, or -errno.
  p.method(READ_FULL, (m) => {
    const [fd, ptr, len] = m.params("fd", "ptr", "len");
    const done = m.var("done", { init: 0 });
    m.while(m.ltu(done, len), () => {
      const n = m.syscall("read", [fd, m.add(ptr, done), m.sub(len, done)]);
      m.if(m.isZero(n), () => m.return(1));
      m.if(
        m.isNegative(n),
        () => m.if(m.ne(n, -Errno.EINTR), () => m.return(n)),
        () => m.add(done, n, { into: done }),
      );
    });
    m.return(0);
  });

  // send_all(fd, ptr, len): 0 when all was sent, or -errno.
  p.method(SEND_ALL, (m) => {
    const [fd, ptr, len] = m.params("fd", "ptr", "len");
    const done = m.var("done", { init: 0 });
    m.while(m.ltu(done, len), () => {
      const n = m.syscall("sendto", [
        fd,
        m.add(ptr, done),
        m.sub(len, done),
        MSG_NOSIGNAL,
        0,
        0,
      ]);
      m.if(
        m.isNegative(n),
        () => m.if(m.ne(n, -Errno.EINTR), () => m.return(n)),
        () => m.add(done, n, { into: done }),
      );
    });
    m.return(0);
  });

  // connect(family, addr, len): a connected stream socket (close-on-exec), or -errno.
  p.method(CONNECT, (m) => {
    const [family, addr, len] = m.params("family", "addr", "len");
    const fd = m.syscall("socket", [family, SOCK_STREAM | SOCK_CLOEXEC, 0]);
    m.if(m.isNegative(fd), () => m.return(fd));
    const r = m.syscall("connect", [fd, addr, len]);
    m.if(m.isNegative(r), () => {
      m.syscall("close", [fd]);
      m.return(r);
    });
    m.return(fd);
  });

  // now_ms(): CLOCK_MONOTONIC in milliseconds.
  p.method(NOW_MS, (m) => {
    const ts = m.var("ts", { init: m.buffer(16) });
    m.syscall("clock_gettime", [CLOCK_MONOTONIC, ts]);
    const ms = m.mul(m.mem(ts), 1000);
    m.return(m.add(ms, m.udiv(m.mem(ts, { disp: 8 }), 1_000_000)));
  });
}

/** The serve method: 0 when the control connection ended, -errno when it never came up. */
function buildServeLoop(m: MethodBuilder, options: ServeProgramsOptions): void {
  const p = m.program;
  const address = options.address ?? ((port: number) => vsockAddress(port));
  const ports = {
    control: options.ports?.control ?? Port.CONTROL,
    stdin: options.ports?.stdin ?? Port.STDIN,
    output: options.ports?.output ?? Port.OUTPUT,
  };
  const addr = (port: number) => {
    const a = address(port);
    return { family: a.family, data: p.bytes(a.bytes) };
  };
  const controlAddr = addr(ports.control);
  const stdinAddr = addr(ports.stdin);
  const outputAddr = addr(ports.output);
  const timeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const retryMs = options.connectRetryMs ?? DEFAULT_CONNECT_RETRY_MS;
  const u32 = (base: Var, disp: number) => m.mem(base, { disp, width: 32 });
  const load32 = (base: Var, disp: number, into: Var) =>
    m.convert(u32(base, disp), { width: 64, into });

  // ---- connect, with retries ----
  const ctrl = m.var("ctrl");
  const deadline = m.add(m.call(NOW_MS), timeoutMs);
  const pause = m.var("pause", { init: m.buffer(16) });
  m.set(m.mem(pause), Math.floor(retryMs / 1000));
  m.set(m.mem(pause, { disp: 8 }), (retryMs % 1000) * 1_000_000);
  m.label("connect");
  m.call(CONNECT, [
    controlAddr.family,
    controlAddr.data.ptr,
    controlAddr.data.len,
  ], { into: ctrl });
  m.if(m.isNegative(ctrl), () => {
    const retried = (i: number): void => {
      const errno = RETRIED_CONNECT_ERRNOS[i];
      if (errno === undefined) {
        m.return(ctrl);
        return;
      }
      m.if(m.eq(ctrl, -errno), () => {
        m.if(m.geu(m.call(NOW_MS), deadline), () => m.return(ctrl));
        m.syscall("nanosleep", [pause, 0]);
        m.goto("connect");
      }, () => retried(i + 1));
    };
    retried(0);
  });

  // ---- hello: the architecture as uname(2) reports it ----
  const uts = m.var("uts", { init: m.buffer(UTSNAME_SIZE) });
  const arch = m.var("arch", { init: 0 });
  m.if(m.isZero(m.syscall("uname", [uts])), () => {
    m.if(
      m.eq(m.mem(uts, { disp: UTSNAME_MACHINE }), MACHINE_AARCH64),
      () => m.set(arch, ArchCode.aarch64),
      () =>
        m.if(
          m.eq(u32(uts, UTSNAME_MACHINE), m.const(MACHINE_X86, 32)),
          () => m.set(arch, ArchCode.x86_64),
        ),
    );
  });
  const hello = m.var("hello", { init: m.buffer(Limits.HELLO_SIZE) });
  m.set(u32(hello, 0), Magic.HELLO);
  m.set(u32(hello, 4), PROTOCOL_VERSION);
  m.set(u32(hello, 8), m.convert(arch, { width: 32 }));
  m.set(u32(hello, 12), 0);
  const base = m.var("base", { init: 0 });
  const total = m.var("total", { init: 0 });
  m.if(
    m.ne(m.call(SEND_ALL, [ctrl, hello, Limits.HELLO_SIZE]), 0),
    () => m.goto("end"),
  );

  // ---- per request: the header ----
  const header = m.var("header", {
    init: m.buffer(Limits.REQUEST_HEADER_SIZE),
  });
  const chunk = m.var("chunk", { init: m.buffer(CHUNK_BUFFER_SIZE) });
  const id = m.var("id");
  const flags = m.var("flags");
  const stdinMode = m.var("stdin_mode");
  const clockNs = m.var("clock_ns");
  const codeSize = m.var("code_size");
  const relocCount = m.var("reloc_count");
  const bssSize = m.var("bss_size");
  const entry = m.var("entry");
  const gerr = m.var("gerr");
  const end = () => m.goto("end");

  m.label("request");
  m.set(base, 0);
  m.if(
    m.ne(m.call(READ_FULL, [ctrl, header, Limits.REQUEST_HEADER_SIZE]), 0),
    end,
  );
  m.if(m.ne(u32(header, 0), m.const(Magic.REQUEST, 32)), end);
  load32(header, 4, id);
  load32(header, 8, flags);
  load32(header, 12, stdinMode);
  load32(header, 24, clockNs);
  load32(header, 28, codeSize);
  load32(header, 32, relocCount);
  load32(header, 36, bssSize);
  load32(header, 40, entry);
  m.if(m.isZero(id), end);
  m.if(
    m.gtu(flags, OutputFlag.STDOUT | OutputFlag.STDERR | OutputFlag.COMBINE),
    end,
  );
  m.if(m.gtu(stdinMode, StdinMode.STREAMED), end);
  m.if(m.geu(clockNs, 1_000_000_000), end);
  m.if(m.isZero(codeSize), end);
  m.if(m.gtu(codeSize, Limits.MAX_CODE_SIZE), end);
  m.if(m.gtu(relocCount, m.udiv(codeSize, 8)), end);
  m.if(m.geu(entry, codeSize), end);

  // ---- the code: map read-write, read, relocate, make executable ----
  m.set(gerr, 0);
  m.add(codeSize, bssSize, { into: total });
  m.syscall("mmap", [
    0,
    total,
    PROT_READ | PROT_WRITE,
    MAP_PRIVATE | MAP_ANONYMOUS,
    -1,
    0,
  ], { into: base });
  m.if(m.isNegative(base), () => {
    m.sub(0, base, { into: gerr });
    m.set(base, 0);
  });
  m.if(
    m.isZero(gerr),
    () => m.if(m.ne(m.call(READ_FULL, [ctrl, base, codeSize]), 0), end),
    () => {
      // Without a mapping, the code is read and dropped to stay in step.
      const left = m.var("discard_left", { init: codeSize });
      const n = m.var("discard_n");
      m.while(m.gtu(left, 0), () => {
        m.set(n, left);
        m.if(m.gtu(n, CHUNK_BUFFER_SIZE), () => m.set(n, CHUNK_BUFFER_SIZE));
        m.if(m.ne(m.call(READ_FULL, [ctrl, chunk, n]), 0), end);
        m.sub(left, n, { into: left });
      });
    },
  );
  const relocLeft = m.var("reloc_left", { init: relocCount });
  const relocN = m.var("reloc_n");
  const cursor = m.var("reloc_cursor");
  const stop = m.var("reloc_stop");
  const offset = m.var("reloc_offset");
  const slot = m.var("reloc_slot");
  m.while(m.gtu(relocLeft, 0), () => {
    m.set(relocN, relocLeft);
    m.if(
      m.gtu(relocN, RELOCATIONS_PER_READ),
      () => m.set(relocN, RELOCATIONS_PER_READ),
    );
    m.if(m.ne(m.call(READ_FULL, [ctrl, chunk, m.mul(relocN, 4)]), 0), end);
    m.set(cursor, chunk);
    m.add(chunk, m.mul(relocN, 4), { into: stop });
    m.while(m.ltu(cursor, stop), () => {
      load32(cursor, 0, offset);
      m.if(
        m.gtu(m.add(offset, 8), codeSize),
        () => m.if(m.isZero(gerr), () => m.set(gerr, Errno.EINVAL)),
        () =>
          m.if(m.isZero(gerr), () => {
            m.add(base, offset, { into: slot });
            m.add(m.mem(slot), base, { into: m.mem(slot) });
          }),
      );
      m.add(cursor, 4, { into: cursor });
    });
    m.sub(relocLeft, relocN, { into: relocLeft });
  });
  m.if(m.isZero(gerr), () => {
    const r = m.syscall("mprotect", [
      base,
      total,
      PROT_READ | PROT_WRITE | PROT_EXEC,
    ]);
    m.if(m.isNegative(r), () => m.sub(0, r, { into: gerr }));
  });

  // ---- the clock (best effort: a failure leaves the guest's clock) ----
  const seconds = m.var("clock_s");
  m.set(seconds, m.mem(header, { disp: 16 }));
  m.if(m.isZero(gerr), () =>
    m.if(m.ne(seconds, 0), () => {
      const ts = m.var("clock_ts", { init: m.buffer(16) });
      m.set(m.mem(ts), seconds);
      m.set(m.mem(ts, { disp: 8 }), clockNs);
      m.syscall("clock_settime", [CLOCK_REALTIME, ts]);
    }));

  // ---- streams and pipes ----
  const stdinFd = m.var("stdin_fd", { init: -1 });
  const outFd = m.var("out_fd", { init: -1 });
  const outR = m.var("out_r", { init: -1 });
  const outW = m.var("out_w", { init: -1 });
  const errR = m.var("err_r", { init: -1 });
  const errW = m.var("err_w", { init: -1 });
  const nullFd = m.var("null_fd", { init: -1 });
  const combine = m.and(flags, OutputFlag.COMBINE);
  const wantOut = m.and(flags, OutputFlag.STDOUT);
  const wantErr = m.var("want_err", { init: 0 });
  m.if(
    m.isZero(combine),
    () => m.and(flags, OutputFlag.STDERR, { into: wantErr }),
  );
  const streamHello = m.var("stream_hello", {
    init: m.buffer(Limits.STREAM_HELLO_SIZE),
  });
  const connectStream = (
    target: { family: number; data: { ptr: Value; len: Value } },
    magic: number,
    into: Var,
  ) =>
    m.if(m.isZero(gerr), () => {
      m.call(CONNECT, [target.family, target.data.ptr, target.data.len], {
        into,
      });
      m.if(m.isNegative(into), () => {
        m.sub(0, into, { into: gerr });
        m.set(into, -1);
      }, () => {
        m.set(u32(streamHello, 0), magic);
        m.set(u32(streamHello, 4), m.convert(id, { width: 32 }));
        const r = m.call(SEND_ALL, [
          into,
          streamHello,
          Limits.STREAM_HELLO_SIZE,
        ]);
        m.if(m.isNegative(r), () => m.sub(0, r, { into: gerr }));
      });
    });
  m.if(
    m.eq(stdinMode, StdinMode.STREAMED),
    () => connectStream(stdinAddr, Magic.STDIN, stdinFd),
  );
  m.if(
    m.ne(m.or(wantOut, wantErr), 0),
    () => connectStream(outputAddr, Magic.OUTPUT, outFd),
  );
  const fds = m.var("pipe_fds", { init: m.buffer(8) });
  const makePipe = (read: Var, write: Var) =>
    m.if(m.isZero(gerr), () => {
      const r = m.syscall("pipe2", [fds, O_CLOEXEC]);
      m.if(m.isNegative(r), () => m.sub(0, r, { into: gerr }), () => {
        m.convert(u32(fds, 0), { width: 64, signed: true, into: read });
        m.convert(u32(fds, 4), { width: 64, signed: true, into: write });
      });
    });
  m.if(m.ne(wantOut, 0), () => makePipe(outR, outW));
  m.if(m.ne(wantErr, 0), () => makePipe(errR, errW));
  const needNull = m.var("need_null", { init: 0 });
  m.if(m.isNegative(stdinFd), () => m.set(needNull, 1));
  m.if(m.isNegative(outW), () => m.set(needNull, 1));
  m.if(
    m.isZero(combine),
    () => m.if(m.isNegative(errW), () => m.set(needNull, 1)),
  );
  m.if(m.isZero(gerr), () =>
    m.if(m.ne(needNull, 0), () => {
      m.syscall("openat", [
        AT_FDCWD,
        p.string("/dev/null", { nulTerminated: true }).ptr,
        O_RDWR | O_CLOEXEC,
        0,
      ], { into: nullFd });
      m.if(m.isNegative(nullFd), () => {
        m.sub(0, nullFd, { into: gerr });
        m.set(nullFd, -1);
      });
    }));
  const closeIfOpen = (fd: Var) =>
    m.if(m.not(m.isNegative(fd)), () => {
      m.syscall("close", [fd]);
      m.set(fd, -1);
    });

  // ---- fork; the child runs the program ----
  const pid = m.var("pid", { init: 0 });
  const status = m.var("status", { init: 0 });
  m.if(m.isZero(gerr), () => {
    m.syscall("clone", [SIGCHLD, 0, 0, 0, 0], { into: pid });
    m.if(m.isNegative(pid), () => m.sub(0, pid, { into: gerr }));
  });
  m.if(m.isZero(gerr), () =>
    m.if(m.isZero(pid), () => {
      m.syscall("close", [ctrl]);
      for (const fd of [outFd, outR, errR]) {
        m.if(m.not(m.isNegative(fd)), () => m.syscall("close", [fd]));
      }
      const fd0 = m.var("child_fd0", { init: nullFd });
      m.if(m.not(m.isNegative(stdinFd)), () => m.set(fd0, stdinFd));
      const fd1 = m.var("child_fd1", { init: nullFd });
      m.if(m.not(m.isNegative(outW)), () => m.set(fd1, outW));
      const fd2 = m.var("child_fd2", { init: nullFd });
      m.if(
        m.ne(combine, 0),
        () => m.set(fd2, fd1),
        () => m.if(m.not(m.isNegative(errW)), () => m.set(fd2, errW)),
      );
      [fd0, fd1, fd2].forEach((fd, target) =>
        m.if(
          m.ne(fd, target),
          () => m.syscall("dup3", [fd, target, 0]),
          () => m.syscall("fcntl", [fd, F_SETFD, 0]),
        )
      );
      for (const fd of [stdinFd, outW, errW, nullFd]) {
        m.if(m.gt(fd, 2), () => m.syscall("close", [fd]));
      }
      const result = m.call(m.add(base, entry));
      m.syscall("exit_group", [m.and(result, 0xff)]);
    }));
  for (const fd of [stdinFd, outW, errW, nullFd]) closeIfOpen(fd);

  // ---- the parent forwards output frames until both pipes end ----
  const frame = m.var("frame", {
    init: m.buffer(Limits.FRAME_HEADER_SIZE + Limits.GUEST_READ_SIZE),
  });
  const pollfds = m.var("pollfds", { init: m.buffer(2 * POLLFD_SIZE) });
  const open = m.var("open");
  const broken = m.var("broken");
  m.if(m.isZero(gerr), () =>
    m.if(m.not(m.isNegative(outFd)), () => {
      m.set(open, 0);
      m.set(broken, 0);
      [outR, errR].forEach((fd, i) => {
        const at = i * POLLFD_SIZE;
        m.set(u32(pollfds, at), m.convert(fd, { width: 32 }));
        m.set(m.mem(pollfds, { disp: at + POLLFD_EVENTS, width: 16 }), POLLIN);
        m.if(m.not(m.isNegative(fd)), () => m.add(open, 1, { into: open }));
      });
      m.while(m.gtu(open, 0), () => {
        m.set(m.mem(pollfds, { disp: POLLFD_REVENTS, width: 16 }), 0);
        m.set(
          m.mem(pollfds, { disp: POLLFD_SIZE + POLLFD_REVENTS, width: 16 }),
          0,
        );
        const ready = m.syscall("ppoll", [
          pollfds,
          2,
          0,
          0,
          KERNEL_SIGSET_SIZE,
        ]);
        m.if(m.isNegative(ready), () =>
          m.if(m.ne(ready, -Errno.EINTR), () => m.goto("forwarded")));
        [FrameType.STDOUT, FrameType.STDERR].forEach((type, i) => {
          const at = i * POLLFD_SIZE;
          const fd = m.convert(u32(pollfds, at), { width: 64, signed: true });
          const revents = m.mem(pollfds, {
            disp: at + POLLFD_REVENTS,
            width: 16,
          });
          m.if(m.not(m.isNegative(fd)), () =>
            m.if(m.ne(revents, 0), () => {
              const n = m.syscall("read", [
                fd,
                m.add(frame, Limits.FRAME_HEADER_SIZE),
                Limits.GUEST_READ_SIZE,
              ]);
              m.if(m.gt(n, 0), () =>
                m.if(m.isZero(broken), () => {
                  m.set(m.mem(frame, { width: 8 }), type);
                  m.set(u32(frame, 1), m.convert(n, { width: 32 }));
                  const sent = m.call(SEND_ALL, [
                    outFd,
                    frame,
                    m.add(n, Limits.FRAME_HEADER_SIZE),
                  ]);
                  // The host stopped reading: drain the pipes, send nothing more.
                  m.if(m.ne(sent, 0), () =>
                    m.set(broken, 1));
                }), () =>
                m.if(m.ne(n, -Errno.EINTR), () =>
                  m.if(m.ne(n, -Errno.EAGAIN), () => {
                    m.set(u32(pollfds, at), m.const(-1, 32));
                    m.sub(open, 1, { into: open });
                  })));
            }));
        });
      });
      m.label("forwarded");
      m.if(m.isZero(broken), () => {
        m.set(m.mem(frame, { width: 8 }), FrameType.END);
        m.set(u32(frame, 1), 0);
        m.call(SEND_ALL, [outFd, frame, Limits.FRAME_HEADER_SIZE]);
      });
    }));
  for (const fd of [outFd, outR, errR]) closeIfOpen(fd);

  // ---- wait for the child, reap orphans, reply ----
  const wstatus = m.var("wstatus", { init: m.buffer(8) });
  m.if(m.isZero(gerr), () => {
    m.label("wait");
    const waited = m.syscall("wait4", [pid, wstatus, 0, 0]);
    m.if(m.eq(waited, -Errno.EINTR), () => m.goto("wait"));
    m.if(m.isNegative(waited), () => m.sub(0, waited, { into: gerr }), () => {
      const raw = m.convert(u32(wstatus, 0), { width: 64 });
      const signal = m.and(raw, 0x7f);
      m.if(
        m.isZero(signal),
        () => m.and(m.shr(raw, 8), 0xff, { into: status }),
        () => m.add(signal, 128, { into: status }),
      );
    });
  });
  m.if(m.ne(base, 0), () => {
    m.syscall("munmap", [base, total]);
    m.set(base, 0);
  });
  m.label("reap");
  m.if(
    m.gt(m.syscall("wait4", [-1, wstatus, WNOHANG, 0]), 0),
    () => m.goto("reap"),
  );
  const reply = m.var("reply", { init: m.buffer(Limits.REPLY_SIZE) });
  m.set(u32(reply, 0), Magic.REPLY);
  m.set(u32(reply, 4), m.convert(id, { width: 32 }));
  m.set(u32(reply, 8), m.convert(status, { width: 32 }));
  m.set(u32(reply, 12), m.convert(gerr, { width: 32 }));
  m.if(m.ne(m.call(SEND_ALL, [ctrl, reply, Limits.REPLY_SIZE]), 0), end);
  m.goto("request");

  // ---- the control connection ended ----
  m.label("end");
  m.if(m.ne(base, 0), () => m.syscall("munmap", [base, total]));
  m.syscall("close", [ctrl]);
  m.return(0);
}

// ---- programs for tests and for VirtualMachine.spawn ----

/**
 * Options of {@link buildProgramLoop} and {@link buildProgramLoopElf}.
 *
 * @example
 * ```ts
 * import { type ProgramLoopOptions, unixAddress } from "./program_loop.ts";
 * const options: ProgramLoopOptions = { address: (port) => unixAddress(`/tmp/x/${port}`) };
 * ```
 */
export type ProgramLoopOptions = ServeProgramsOptions;

/**
 * A program that only serves programs: it returns 0 when the host closes
 * the control connection, or prints `initx: <step> failed: errno N` to fd 2
 * and returns 1 when it cannot connect. Run as a host process, it is the
 * guest side of the unit tests.
 *
 * @example
 * ```ts
 * import { buildProgramLoop, unixAddress } from "./program_loop.ts";
 * const program = buildProgramLoop({ address: (port) => unixAddress(`/tmp/x/${port}`) });
 * console.assert(program.entry === "main");
 * ```
 *
 * @param options Addresses, ports, connect timing.
 * @returns The IR program.
 */
export function buildProgramLoop(options: ProgramLoopOptions = {}): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const errno = m.var("errno", { init: 0 });
    const step = m.var("step", { init: 0 });
    serveProgramsFragment(m, {
      ...options,
      onError: { errno, goto: "fail", step },
    });
    m.return(0);
    m.label("fail");
    m.printf("initx: %s failed: errno %d\n", [step, errno], { fd: 2 });
    m.return(1);
  });
  return p.build();
}

/**
 * {@link buildProgramLoop} compiled to a static ELF executable.
 *
 * @example
 * ```ts
 * import { buildProgramLoopElf, unixAddress } from "./program_loop.ts";
 * const elf = buildProgramLoopElf({ arch: "aarch64", address: (port) => unixAddress(`/tmp/x/${port}`) });
 * console.assert(elf[0] === 0x7f);
 * ```
 *
 * @param options The architecture, and the loop's options.
 * @returns The executable's bytes.
 */
export function buildProgramLoopElf(
  options: ProgramLoopOptions & { arch: Arch },
): Uint8Array {
  const { arch, ...loop } = options;
  return compileElf(buildProgramLoop(loop), { arch });
}

/**
 * A program whose entry replaces the process with a command: `execve(path,
 * argv, env)`, after changing to `cwd` when given. When that fails it writes
 * `initx: cannot exec PATH: errno N` (or `cannot chdir DIR`) to fd 2 and
 * returns 127. `VirtualMachine.spawn` sends it to run a guest executable.
 *
 * @example
 * ```ts
 * import { compile } from "../ir/mod.ts";
 * import { buildExecProgram } from "./program_loop.ts";
 * const program = buildExecProgram("/bin/echo", ["echo", "hi"]);
 * const compiled = compile(program, { arch: "x86_64" });
 * console.assert(compiled.code.length > 0);
 * ```
 *
 * @param path The executable's path.
 * @param argv The arguments, `argv[0]` included.
 * @param options The environment (default {@link DEFAULT_ENV}, with a
 * standard `PATH`), the working directory (default: the init's, `/`), and
 * the user and group to run as (default: the init's, root), and a terminal
 * (`tty`, e.g. `/dev/hvc0`) to make the command's controlling terminal and
 * stdin, stdout and stderr, in a session of its own, sized `ttySize`; with `pidNamespace`
 * the command runs as PID 1 of a new PID namespace (with its own `/proc`)
 * and this program waits for it and returns its status (128 + N after
 * signal N).
 * @returns The IR program.
 */
export function buildExecProgram(
  path: string,
  argv: readonly string[],
  options: {
    env?: readonly string[];
    cwd?: string;
    uid?: number;
    gid?: number;
    tty?: string;
    ttySize?: { columns: number; rows: number };
    pidNamespace?: boolean;
  } = {},
): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const errno = m.var("errno", { init: 0 });
    const step = m.var("step", { init: 0 });
    const failed = (r: ReturnType<MethodBuilder["syscall"]>, what: string) =>
      m.if(m.isNegative(r), () => {
        m.sub(0, r, { into: errno });
        m.set(step, p.string(what, { nulTerminated: true }).ptr);
        m.goto("fail");
      });
    if (options.pidNamespace) {
      // The command is PID 1 of a PID namespace of its own (and sees only
      // its own processes in a proc of its own); this process waits for it
      // and reports its status.
      failed(
        m.syscall("unshare", [CLONE_NEWPID | CLONE_NEWNS]),
        "unshare a PID namespace",
      );
      const pid = m.syscall("clone", [SIGCHLD, 0, 0, 0, 0]);
      failed(pid, "fork the namespace's PID 1");
      m.if(m.isZero(pid), () => {
        const root = p.string("/", { nulTerminated: true }).ptr;
        failed(
          m.syscall("mount", [0, root, 0, MS_REC | MS_PRIVATE, 0]),
          "make / private",
        );
        const proc = p.string("proc", { nulTerminated: true }).ptr;
        const target = p.string("/proc", { nulTerminated: true }).ptr;
        failed(
          m.syscall("mount", [
            proc,
            target,
            proc,
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            0,
          ]),
          "mount the namespace's /proc",
        );
      }, () => {
        const statusPtr = m.var("nsStatus", { init: m.buffer(8) });
        m.label("nsWait");
        const waited = m.syscall("wait4", [pid, statusPtr, 0, 0]);
        m.if(m.eq(waited, -Errno.EINTR), () => m.goto("nsWait"));
        failed(waited, "wait for the namespace's PID 1");
        const status = m.convert(m.mem(statusPtr, { width: 32 }), {
          width: 64,
        });
        const signal = m.and(status, 0x7f);
        m.if(
          m.isZero(signal),
          () => m.return(m.and(m.shr(status, 8), 0xff)),
          () => m.return(m.add(signal, 128)),
        );
      });
    }
    if (options.tty !== undefined) {
      // A session of its own with the terminal as its controlling tty and
      // stdio: job control and Ctrl-C work as on a login terminal.
      m.set(
        step,
        p.string(`attach ${options.tty}`, { nulTerminated: true }).ptr,
      );
      attachConsole(m, { path: options.tty, onError: { errno, goto: "fail" } });
      if (options.ttySize !== undefined) {
        // struct winsize { rows, columns, xpixel, ypixel } (u16 each); a
        // terminal that cannot be sized still works.
        const size = new Uint8Array(8);
        const view = new DataView(size.buffer);
        view.setUint16(0, options.ttySize.rows, true);
        view.setUint16(2, options.ttySize.columns, true);
        m.syscall("ioctl", [0, TIOCSWINSZ, p.bytes(size).ptr]);
      }
    }
    // Group first: after setuid the process may no longer change it.
    if (options.gid !== undefined || options.uid !== undefined) {
      failed(m.syscall("setgroups", [0, 0]), "setgroups");
    }
    if (options.gid !== undefined) {
      failed(m.syscall("setgid", [options.gid]), `setgid ${options.gid}`);
    }
    if (options.uid !== undefined) {
      failed(m.syscall("setuid", [options.uid]), `setuid ${options.uid}`);
    }
    exec(m, {
      path,
      argv,
      env: options.env ?? DEFAULT_ENV,
      cwd: options.cwd,
      onError: { errno, goto: "fail", step },
    });
    m.label("fail");
    m.printf("initx: cannot %s: errno %d\n", [step, errno], { fd: 2 });
    m.return(127);
  });
  return p.build();
}
