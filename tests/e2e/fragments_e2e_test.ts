// Fragment helpers that only make sense inside a Linux guest (hostname,
// loopback, mounts, clock, /etc files), run by initx's init as an embedded IR
// program on the default kernel; a busybox child reports what it sees.
import { equal, ok } from "node:assert/strict";
import { ProgramBuilder } from "../../src/ir/mod.ts";
import {
  configureLoopback,
  Errno,
  forkExecWait,
  mkdir,
  mount,
  setClock,
  setHostname,
  setHosts,
  setResolvConf,
} from "../../src/initx/fragments.ts";
import { buildInitElf, EXIT_STATUS_PREFIX } from "../../src/initx/init.ts";
import {
  busyboxApplets,
  findStaticBusybox,
} from "../../src/initx/busybox_guest.ts";
import { CpioWriter } from "../../src/boot/cpio.ts";
import { bootLinux } from "../../src/initx/linux_vm.ts";
import { ensureKernel } from "../../src/boot/kernel.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import { need } from "../_gate.ts";

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
  const why = cannotBootLinuxReason();
  if (!need(t, why === undefined, why ?? "")) return;
  const busybox = findStaticBusybox();
  if (
    !need(t, busybox !== undefined, "busybox (busybox-static) is not installed")
  ) return;

  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const errno = m.var("errno");
    const step = m.var("step");
    const onError = { errno, goto: "fail", step };
    setHostname(m, { name: "initx-guest", onError });
    configureLoopback(m, { onError });
    mkdir(m, { path: "/mnt", ignore: [Errno.EEXIST], onError });
    mount(m, { source: "tmpfs", target: "/mnt", fstype: "tmpfs", onError });
    mkdir(m, { path: "/etc", ignore: [Errno.EEXIST], onError });
    setHosts(m, { onError });
    setResolvConf(m, { nameservers: ["10.42.0.1"], onError });
    setClock(m, { seconds: CLOCK, onError });
    const status = forkExecWait(m, {
      path: "/bin/busybox",
      argv: ["sh", "-c", REPORT],
      onError,
    });
    m.return(status);
    m.label("fail");
    m.printf("step failed: %s: errno %d\n", [step, errno]);
    m.return(99);
  });
  const cpio = new CpioWriter();
  cpio.file("init", buildInitElf({ program: p.build() }, { arch: "x86_64" }), {
    mode: 0o755,
  });
  cpio.file("bin/busybox", await Deno.readFile(busybox!), { mode: 0o755 });
  for (const a of await busyboxApplets(busybox!)) {
    if (a !== "busybox") cpio.symlink(`bin/${a}`, "busybox");
  }
  const kernel = Deno.env.get("INITX_LAB_KERNEL") ??
    (await ensureKernel()).image;
  const result = await bootLinux({
    kernel,
    initrd: cpio.bytes(),
    memoryMiB: 256,
    timeoutMs: 120_000,
  });
  const text = result.console.replaceAll("\r", "");
  equal(result.outcome.kind, "power-off", text.slice(-3000));
  for (
    const want of [
      "host=initx-guest",
      "loflags=0x9",
      "mnt=tmpfs",
      "hosts=ok",
      "nameserver 10.42.0.1",
      `${EXIT_STATUS_PREFIX}0`,
    ]
  ) {
    ok(text.includes(want), `missing "${want}" in:\n${text.slice(-3000)}`);
  }
  const clock = Number(text.match(/clock=(\d+)/)?.[1]);
  ok(clock >= CLOCK && clock < CLOCK + 600, `clock=${clock}`);
});
