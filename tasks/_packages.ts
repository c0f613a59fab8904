/**
 * Debian packages the project's tasks need on the host, installed with
 * apt-get when missing (CI and fresh machines start without them).
 *
 * @module
 */

import { join } from "node:path";
import { findStaticBusybox } from "../src/initx/busybox_guest.ts";

/** Whether `name` is an executable on PATH. */
export function which(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    const p = join(dir, name);
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** Commands the tests use and the Debian package of each. */
export const TEST_TOOLS: Record<string, string> = {
  "qemu-system-x86_64": "qemu-system-x86",
  "cpio": "cpio",
  "iasl": "acpica-tools",
  "dtc": "device-tree-compiler",
  "objdump": "binutils",
  "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu",
  "qemu-aarch64-static": "qemu-user-static",
  "cc": "gcc",
  "xz": "xz-utils",
  "zstd": "zstd",
  // Not a command: the arm64 uapi headers ffi/kvm_test.ts compiles against.
  "/usr/aarch64-linux-gnu/include/asm/kvm.h": "linux-libc-dev-arm64-cross",
};

/** Whether `path` (absolute) is a file. */
function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * Installs the packages behind any missing command of `tools` (a key that
 * starts with `/` names a file instead of a command), and busybox-static
 * when `busybox` is wanted, with one apt-get call.
 */
export async function ensurePackages(
  tools: Record<string, string>,
  progress: (line: string) => void = (l) => console.error(l),
): Promise<void> {
  const missing = new Set(
    Object.entries(tools).filter(([cmd]) =>
      cmd.startsWith("/") ? !isFile(cmd) : which(cmd) === undefined
    ).map((
      [, pkg],
    ) => pkg),
  );
  if ("busybox" in tools && findStaticBusybox() === undefined) {
    missing.add("busybox-static");
  }
  if (missing.size === 0) return;
  const list = [...missing].join(" ");
  if (which("apt-get") === undefined) {
    throw new Error(
      `Cannot install ${list}: apt-get is not available; install them by hand`,
    );
  }
  progress(`setup: installing ${list} with apt-get`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  for (
    const args of [["update", "-qq"], ["install", "-y", "-qq", ...missing]]
  ) {
    const r = await new Deno.Command("apt-get", {
      args,
      env,
      stdout: "null",
      stderr: "inherit",
    }).output();
    if (!r.success) {
      throw new Error(`Cannot install ${list}: apt-get ${args[0]} failed`);
    }
  }
}
