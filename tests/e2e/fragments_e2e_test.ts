// Fragment helpers that only make sense inside a Linux guest (hostname,
// loopback, mounts, clock, /etc files, routes, device nodes, binfmt_misc,
// chroot), run by initx's init as an embedded IR program on the default
// kernel; a busybox child reports what it sees.
import { equal, ok } from "node:assert/strict";
import {
  type MethodBuilder,
  ProgramBuilder,
  type Var,
} from "../../src/ir/mod.ts";
import {
  addDefaultRoute,
  chroot,
  configureInterface,
  configureLoopback,
  Errno,
  forkExecWait,
  getInterfaceIndex,
  mkdir,
  mknod,
  mount,
  mountBinfmtMisc,
  pivotRoot,
  registerBinfmt,
  setClock,
  setHostname,
  setHosts,
  setResolvConf,
  writeBinaryFile,
} from "../../src/initx/fragments/mod.ts";
import { buildInitElf, EXIT_STATUS_PREFIX } from "../../src/initx/init.ts";
import {
  busyboxApplets,
  findStaticBusybox,
  loadInitModules,
} from "../../src/initx/busybox_guest.ts";
import { CpioWriter } from "../../src/boot/cpio.ts";
import { bootLinux } from "../../src/initx/linux_vm.ts";
import { ensureKernel } from "../../src/boot/kernel.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import { need } from "../_gate.ts";

/** The error handling every step of a guest program shares. */
interface OnError {
  errno: Var;
  goto: string;
  step: Var;
}

/**
 * Boots the default kernel with an init that loads `modules` and runs the
 * program `body` builds (its result is the exit status), and returns the
 * console once the guest has powered off; undefined when this host cannot
 * boot Linux (outside CI).
 */
async function bootProgram(
  t: Deno.TestContext,
  body: (m: MethodBuilder, onError: OnError) => Var,
  modules: string[] = [],
): Promise<string | undefined> {
  const why = cannotBootLinuxReason();
  if (!need(t, why === undefined, why ?? "")) return undefined;
  const busybox = findStaticBusybox();
  if (
    !need(t, busybox !== undefined, "busybox (busybox-static) is not installed")
  ) return undefined;
  const kernel = await ensureKernel();
  if (modules.length > 0 && !kernel.modules) {
    throw new Error(`Kernel ${kernel.version} has no modules`);
  }
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const onError = {
      errno: m.var("errno"),
      goto: "fail",
      step: m.var("step"),
    };
    m.return(body(m, onError));
    m.label("fail");
    m.printf("step failed: %s: errno %d\n", [onError.step, onError.errno]);
    m.return(99);
  });
  const init = buildInitElf({
    program: p.build(),
    modules: modules.length > 0
      ? await loadInitModules(kernel.modules!, modules)
      : [],
  }, { arch: "x86_64" });
  const cpio = new CpioWriter();
  cpio.file("init", init, { mode: 0o755 });
  cpio.file("bin/busybox", await Deno.readFile(busybox!), { mode: 0o755 });
  for (const a of await busyboxApplets(busybox!)) {
    if (a !== "busybox") cpio.symlink(`bin/${a}`, "busybox");
  }
  cpio.dir("tmp");
  const result = await bootLinux({
    kernel: kernel.image,
    initrd: cpio.bytes(),
    memoryMiB: 256,
    timeoutMs: 120_000,
  });
  const text = result.console.replaceAll("\r", "");
  equal(result.outcome.kind, "power-off", text.slice(-3000));
  return text;
}

function expectLines(text: string, wanted: string[]) {
  for (const want of [...wanted, `${EXIT_STATUS_PREFIX}0`]) {
    ok(text.includes(want), `missing "${want}" in:\n${text.slice(-3000)}`);
  }
}

const CLOCK = 1_800_000_000;
const REPORT = [
  "echo host=$(hostname)",
  "echo loflags=$(cat /sys/class/net/lo/flags)",
  "grep -q ' /mnt tmpfs ' /proc/mounts && echo mnt=tmpfs",
  "grep -q localhost /etc/hosts && echo hosts=ok",
  "grep nameserver /etc/resolv.conf",
  "echo clock=$(date +%s)",
].join("; ");

Deno.test("fragment helpers set hostname, loopback, mounts, clock and /etc files in a guest", async (t) => {
  const text = await bootProgram(t, (m, onError) => {
    setHostname(m, { name: "initx-guest", onError });
    configureLoopback(m, { onError });
    mkdir(m, { path: "/mnt", ignore: [Errno.EEXIST], onError });
    mount(m, { source: "tmpfs", target: "/mnt", fstype: "tmpfs", onError });
    mkdir(m, { path: "/etc", ignore: [Errno.EEXIST], onError });
    setHosts(m, { onError });
    setResolvConf(m, { nameservers: ["10.42.0.1"], onError });
    setClock(m, { seconds: CLOCK, onError });
    return forkExecWait(m, {
      path: "/bin/busybox",
      argv: ["sh", "-c", REPORT],
      onError,
    });
  });
  if (text === undefined) return;
  expectLines(text, [
    "host=initx-guest",
    "loflags=0x9",
    "mnt=tmpfs",
    "hosts=ok",
    "nameserver 10.42.0.1",
  ]);
  const clock = Number(text.match(/clock=(\d+)/)?.[1]);
  ok(clock >= CLOCK && clock < CLOCK + 600, `clock=${clock}`);
});

Deno.test("fragment helpers for containers: interface index and address, route, mknod, binfmt_misc, chroot, pivot_root", async (t) => {
  const text = await bootProgram(t, (m, onError) => {
    const index = getInterfaceIndex(m, { name: "lo", onError });
    m.printf("loindex=%d\n", [index]);
    configureInterface(m, {
      name: "lo",
      address: "127.0.0.1",
      prefixLength: 8,
      onError,
    });
    addDefaultRoute(m, { gateway: "127.0.0.1", device: "lo", onError });
    mknod(m, {
      path: "/dev/initx-null",
      type: "char",
      major: 1,
      minor: 3,
      mode: 0o666,
      onError,
    });
    mountBinfmtMisc(m, { onError });
    registerBinfmt(m, {
      rule: {
        name: "initx",
        magic: new TextEncoder().encode("#!initx"),
        interpreter: "/bin/sh",
      },
      onError,
    });
    writeBinaryFile(m, {
      path: "/tmp/hello.initx",
      bytes: new TextEncoder().encode("#!initx\necho binfmt=ok\n"),
      mode: 0o755,
      onError,
    });
    const report = [
      "[ -c /dev/initx-null ] && echo mknod=$(stat -c %t,%T /dev/initx-null)",
      "ip route | grep -q '^default via 127.0.0.1 dev lo' && echo route=ok",
      "/tmp/hello.initx",
    ].join("; ");
    forkExecWait(m, {
      path: "/bin/busybox",
      argv: ["sh", "-c", report],
      onError,
    });
    // chroot into a tmpfs; then pivot_root from there into a second tmpfs
    // (the initramfs itself cannot be pivoted away, a mount can).
    mkdir(m, { path: "/newroot", ignore: [Errno.EEXIST], onError });
    mount(m, { source: "tmpfs", target: "/newroot", fstype: "tmpfs", onError });
    mkdir(m, { path: "/newroot/inner", onError });
    mount(m, {
      source: "tmpfs",
      target: "/newroot/inner",
      fstype: "tmpfs",
      onError,
    });
    mkdir(m, { path: "/newroot/inner/old", onError });
    const copy =
      "cp /bin/busybox /newroot/busybox && cp /bin/busybox /newroot/inner/busybox";
    forkExecWait(m, {
      path: "/bin/busybox",
      argv: ["sh", "-c", copy],
      onError,
    });
    chroot(m, { path: "/newroot", onError });
    forkExecWait(m, {
      path: "/busybox",
      argv: ["sh", "-c", "echo chroot=$(/busybox ls /)"],
      onError,
    });
    pivotRoot(m, { newRoot: "/inner", putOld: "/inner/old", onError });
    return forkExecWait(m, {
      path: "/busybox",
      argv: ["sh", "-c", "echo pivot=$(/busybox ls /) old=$(/busybox ls /old)"],
      onError,
    });
  }, ["binfmt_misc"]);
  if (text === undefined) return;
  expectLines(text, [
    "loindex=1",
    "mknod=1,3",
    "route=ok",
    "binfmt=ok",
    "chroot=busybox",
  ]);
});
