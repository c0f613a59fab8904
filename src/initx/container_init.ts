/**
 * The container init: initx's init with one more step before its program
 * loop. It mounts the image's filesystem from virtio-fs (tag `rootfs`),
 * makes it the root (`MS_MOVE` onto `/`, then `chroot`: the initramfs itself
 * cannot be pivoted away), mounts proc, sys, dev, devpts, `/dev/shm` and
 * `/tmp` there, mounts the shares, raises the read-ahead of every virtio-fs
 * mount (`read_ahead.ts`), sets the hostname and `/etc/hosts`, and brings
 * loopback up.
 * Then it serves programs as the plain init does (`docs/protocol.md`): the
 * container's command is one of them, run with the image's environment,
 * working directory and user.
 *
 * @module
 */

import type { MethodBuilder, Program } from "../ir/mod.ts";
import {
  configureLoopback,
  Errno,
  mkdir,
  mount,
  type OnError,
  setHostname,
  trySetHosts,
} from "./fragments/mod.ts";
import { buildInitProgram, type InitModule } from "./init.ts";
import type { ServeProgramsOptions } from "./program_loop.ts";
import { raiseReadAhead } from "./read_ahead.ts";

/** The virtio-fs tag of the container's root filesystem. */
export const CONTAINER_ROOT_TAG = "rootfs";
/** Where the root filesystem is mounted before it becomes `/`. */
const NEW_ROOT = "/newroot";

/** Mount flags (`include/uapi/linux/mount.h`). */
const MS_RDONLY = 0x1;
const MS_NOSUID = 0x2;
const MS_NODEV = 0x4;
const MS_NOEXEC = 0x8;
const MS_MOVE = 0x2000;

/**
 * A virtio-fs share mounted in the container (a volume).
 *
 * @example
 * ```ts
 * import type { ContainerShare } from "./container_init.ts";
 * const share: ContainerShare = { tag: "share0", path: "/data", readOnly: true };
 * ```
 */
export interface ContainerShare {
  /** The device's virtio-fs tag. */
  tag: string;
  /** Where it is mounted: an absolute, normalized path other than `/`. */
  path: string;
  /** Mount it read-only (`MS_RDONLY`). */
  readOnly?: boolean;
}

/**
 * Configuration of {@linkcode buildContainerInitProgram}.
 *
 * @example
 * ```ts
 * import type { ContainerInitConfig } from "./container_init.ts";
 * const config: ContainerInitConfig = { hostname: "box", serve: {} };
 * ```
 */
export interface ContainerInitConfig {
  /** Kernel modules, loaded in this order (virtio-mmio, virtiofs, vsock, ...). */
  modules?: readonly InitModule[];
  /** The init's console (default `/dev/console`). */
  console?: string;
  /** The virtio-fs tag of the root (default {@linkcode CONTAINER_ROOT_TAG}). */
  rootTag?: string;
  /** The container's hostname (default `initx`). */
  hostname?: string;
  /** More virtio-fs shares, mounted inside the new root after it is `/`. */
  shares?: readonly ContainerShare[];
  /** How the program loop reaches the host (default: vsock). */
  serve: ServeProgramsOptions;
}

/**
 * Build the container init.
 *
 * @example
 * ```ts
 * import { buildContainerInitProgram } from "./container_init.ts";
 * const program = buildContainerInitProgram({ serve: {} });
 * console.assert(program.entry === "main");
 * ```
 *
 * @param config Modules, console, root tag, hostname and the program loop.
 * @returns The IR program.
 */
export function buildContainerInitProgram(
  config: ContainerInitConfig,
): Program {
  return buildInitProgram({
    modules: config.modules,
    console: config.console,
    serve: config.serve,
    setup: (m, onError) =>
      enterContainerRoot(m, {
        tag: config.rootTag ?? CONTAINER_ROOT_TAG,
        hostname: config.hostname ?? "initx",
        shares: config.shares,
        onError,
      }),
  });
}

/**
 * Mounts the virtio-fs root, makes it `/` and prepares it for a container.
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../ir/mod.ts";
 * import { enterContainerRoot } from "./container_init.ts";
 * new ProgramBuilder().method("main", (m) => {
 *   const onError = { errno: m.var("errno"), goto: "fail" };
 *   enterContainerRoot(m, { tag: "rootfs", hostname: "box", onError });
 *   m.label("fail");
 * });
 * ```
 *
 * @param m The method.
 * @param options The virtio-fs tag, the hostname and error handling.
 */
export function enterContainerRoot(
  m: MethodBuilder,
  options: {
    tag: string;
    hostname: string;
    shares?: readonly ContainerShare[];
    onError: OnError;
  },
): void {
  const { onError } = options;
  for (const share of options.shares ?? []) checkSharePath(share.path);
  const p = m.program;
  mkdir(m, { path: NEW_ROOT, ignore: [Errno.EEXIST], onError });
  mount(m, {
    source: options.tag,
    target: NEW_ROOT,
    fstype: "virtiofs",
    onError,
  });
  // switch_root: move the new root's mount onto "/" and chroot into it.
  const chdir = m.syscall("chdir", [
    p.string(NEW_ROOT, { nulTerminated: true }).ptr,
  ]);
  fail(m, chdir, onError, `chdir ${NEW_ROOT}`);
  const dot = p.string(".", { nulTerminated: true }).ptr;
  const moved = m.syscall("mount", [
    dot,
    p.string("/", { nulTerminated: true }).ptr,
    0,
    MS_MOVE,
    0,
  ]);
  fail(m, moved, onError, `move ${NEW_ROOT} onto /`);
  const chrooted = m.syscall("chroot", [dot]);
  fail(m, chrooted, onError, "chroot into the container's root");
  const home = m.syscall("chdir", [p.string("/", { nulTerminated: true }).ptr]);
  fail(m, home, onError, "chdir /");

  const mounts = [
    {
      source: "proc",
      target: "/proc",
      fstype: "proc",
      flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
    },
    {
      source: "sysfs",
      target: "/sys",
      fstype: "sysfs",
      flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
    },
    {
      source: "devtmpfs",
      target: "/dev",
      fstype: "devtmpfs",
      flags: MS_NOSUID,
    },
    {
      source: "devpts",
      target: "/dev/pts",
      fstype: "devpts",
      flags: MS_NOSUID | MS_NOEXEC,
      data: "newinstance,ptmxmode=0666,mode=0620",
    },
    {
      source: "tmpfs",
      target: "/dev/shm",
      fstype: "tmpfs",
      flags: MS_NOSUID | MS_NODEV,
      data: "mode=1777",
    },
    {
      source: "tmpfs",
      target: "/tmp",
      fstype: "tmpfs",
      flags: MS_NOSUID | MS_NODEV,
      data: "mode=1777",
    },
  ];
  for (const spec of mounts) {
    mkdir(m, { path: spec.target, ignore: [Errno.EEXIST], onError });
    mount(m, { ...spec, ignore: [Errno.EBUSY], onError });
  }
  // Needs /sys, mounted just above.
  raiseReadAhead(m, "/");
  for (const share of options.shares ?? []) {
    // mkdir -p: every parent, then the mount point.
    const parts = share.path.split("/").slice(1);
    for (let i = 1; i <= parts.length; i++) {
      mkdir(m, {
        path: "/" + parts.slice(0, i).join("/"),
        ignore: [Errno.EEXIST],
        onError,
      });
    }
    mount(m, {
      source: share.tag,
      target: share.path,
      fstype: "virtiofs",
      flags: share.readOnly ? MS_RDONLY : 0,
      onError,
    });
    raiseReadAhead(m, share.path);
  }
  setHostname(m, { name: options.hostname, onError });
  // An image whose /etc is missing or read-only still runs.
  trySetHosts(m, {});
  configureLoopback(m, { onError });
}

/** Throws unless `path` is absolute, normalized and not `/`. */
function checkSharePath(path: string): void {
  const parts = path.split("/");
  if (
    parts[0] !== "" || parts.length < 2 ||
    parts.slice(1).some((p) => p === "" || p === "." || p === "..")
  ) {
    throw new Error(
      `Cannot mount a share at ${
        JSON.stringify(path)
      }: the path must be absolute and normalized, and not /`,
    );
  }
}

/** Jumps to `onError` with the errno of a failed raw syscall `result`. */
function fail(
  m: MethodBuilder,
  result: ReturnType<MethodBuilder["syscall"]>,
  onError: OnError,
  step: string,
): void {
  m.if(m.isNegative(result), () => {
    m.sub(0, result, { into: onError.errno });
    if (onError.step) {
      m.set(
        onError.step,
        m.program.string(step, { nulTerminated: true }).ptr,
      );
    }
    m.goto(onError.goto);
  });
}
