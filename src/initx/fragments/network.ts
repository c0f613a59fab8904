/**
 * Network steps, as socket ioctls on an `AF_INET` datagram socket:
 * loopback up, an interface's address, netmask and MTU, a default route,
 * an interface's index.
 *
 * @module
 */

import type { MethodBuilder, Value, Var } from "../../ir/mod.ts";
import {
  check,
  cString,
  type Fallible,
  fresh,
  O_CLOEXEC,
  zero,
} from "./core.ts";

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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { configureLoopback } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { configureInterface } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { addDefaultRoute, Errno } from "./mod.ts";
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
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { getInterfaceIndex } from "./mod.ts";
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
