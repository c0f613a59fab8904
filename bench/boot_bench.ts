/**
 * initx against QEMU microvm, booting the same kernel and busybox initramfs
 * with the same command line, memory and vCPUs (issue #4), against two QEMU
 * peers: microvm as it comes, and microvm tuned for fast boots as its
 * documentation suggests (issue #10). The rounds alternate: one initx boot,
 * then one boot of each peer.
 *
 * - initx: from `LinuxVm.start()` (the kernel read, the VM created) to the
 *   init's marker line on the console, and to power-off (`done`). The time
 *   in `LinuxVm.start()` itself is the host setup; the bench prints it as
 *   `host setup: N ms of M ms to init (share S)` (medians; goal: a share of
 *   at most 0.10). All initx boots share one `Kvm`, as a program that boots
 *   VM after VM would, so that a boot after the first finds its vCPU thread
 *   ready; round 1 shows the cold start (`INITX_BENCH_COLD=1`: every boot
 *   opens its own);
 * - QEMU: `qemu-system-x86_64 -accel kvm -cpu host -M microvm`, from the
 *   process's spawn to the marker line on its stdout, and to its exit;
 * - QEMU tuned: the same with `-M` {@linkcode QEMU_TUNED_MACHINE}: the
 *   legacy devices QEMU's microvm documentation
 *   (docs/system/i386/microvm.rst, "Running a microvm-based VM") says a KVM
 *   guest can do without turned off (no option ROMs, no RTC, no PIT, no
 *   PIC: the guest keeps time with kvmclock and the TSC-deadline LAPIC
 *   timer, and takes interrupts through microvm's IOAPIC), and no arguments
 *   added to the kernel command line. The ISA serial port stays: it is the
 *   console both peers and initx print the marker on (`console=ttyS0`).
 *   The ratio of initx to this peer is the one with a goal (median at most
 *   0.70x).
 *
 * Then a breakdown run of each, not timed: the same boot, whose init prints
 * kernel log timestamps (read with `dmesg`, so that the slow console does not
 * change them) and the largest gaps between log lines.
 *
 * On an aarch64 host (the arm64 KVM lab, or arm64 hardware) the bench is
 * the same with initx's arm64 machine against one peer,
 * `qemu-system-aarch64 -accel kvm -cpu host -M virt` with the options of
 * `ARM64_QEMU_MACHINE` (`_boot_arm64.ts`), and the goal against it; the
 * peer's command line puts the console on virt's PL011.
 *
 * Run by `deno task bench:boot`, which picks the host or the KVM lab. Needs a
 * /dev/kvm that boots Linux and `qemu-system-x86_64` (`qemu-system-aarch64`
 * on aarch64). Environment:
 * `INITX_BENCH_ROUNDS` (default 3), `INITX_BENCH_CPUS` (default 1),
 * `INITX_BENCH_MEMORY_MIB` (default 256), `INITX_LAB_KERNEL` (default: the
 * kernel of `ensureKernel()`), `INITX_BENCH_QEMU_MACHINE` and
 * `INITX_BENCH_QEMU_TUNED_MACHINE` (the `-M` value of each peer; on aarch64
 * the first names the one peer's).
 *
 * @module
 */

import { requireStaticBusybox } from "../src/initx/busybox_guest.ts";
import { CpioWriter } from "../src/boot/cpio.ts";
import { ensureKernel } from "../src/boot/kernel.ts";
import { cannotBootLinuxReason } from "../src/hv/kvm/host.ts";
import { Kvm } from "../src/hv/kvm/system.ts";
import type { Arch } from "../src/ir/syscalls.ts";
import { defaultCmdline, LinuxVm } from "../src/initx/linux_vm.ts";
import {
  ARM64_BOOT_TIMEOUT_MS,
  ARM64_MILESTONES,
  ARM64_PEER_NOTES,
  ARM64_QEMU,
  ARM64_QEMU_MACHINE,
  arm64QemuCmdline,
} from "./_boot_arm64.ts";

const ROUNDS = Number(Deno.env.get("INITX_BENCH_ROUNDS") ?? 3);
const CPUS = Number(Deno.env.get("INITX_BENCH_CPUS") ?? 1);
const MEMORY_MIB = Number(Deno.env.get("INITX_BENCH_MEMORY_MIB") ?? 256);
/** Every initx boot opens its own hypervisor (no thread kept warm). */
const COLD = Deno.env.get("INITX_BENCH_COLD") === "1";
/** The untuned peer's machine type, e.g. `microvm,rtc=off` (default `microvm`). */
const QEMU_MACHINE = Deno.env.get("INITX_BENCH_QEMU_MACHINE") ?? "microvm";
/**
 * The tuned peer's machine type. Each option is one of microvm's own
 * (`qemu-system-x86_64 -M microvm,help` lists them):
 *
 * - `x-option-roms=off`: qboot loads the kernel itself, without the
 *   `linuxboot_dma.bin` option ROM;
 * - `rtc=off`: no MC146818 CMOS RTC, the device whose probe costs the
 *   untuned peer seconds in the lab (`rtc_cmos: broken or not accessible`);
 *   the guest reads the wall clock from kvmclock;
 * - `pit=off`, `pic=off`: no i8254 PIT and no i8259 PIC. Linux needs
 *   neither when the CPU has a TSC-deadline LAPIC timer (QEMU offers it with
 *   `-cpu host` on KVM's in-kernel LAPIC) and an always-running APIC timer,
 *   and kvmclock gives it the TSC frequency without PIT calibration;
 *   interrupts (the serial port's) go through microvm's IOAPIC;
 * - `isa-serial=on`: the default, named to say it stays on purpose;
 * - `auto-kernel-cmdline=off`: QEMU adds nothing to the command line, so
 *   that it is exactly the one initx boots with.
 */
const QEMU_TUNED_MACHINE = Deno.env.get("INITX_BENCH_QEMU_TUNED_MACHINE") ??
  "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on,auto-kernel-cmdline=off";
const MARKER = "INITX-BENCH-UP";
/** Printed by the breakdown init before and after its report. */
const REPORT_BEGIN = "INITX-BENCH-REPORT-BEGIN";
const REPORT_END = "INITX-BENCH-REPORT-END";
/** Kernel log lines worth a timestamp in the x86 breakdown (for grep -E). */
const X86_MILESTONES = [
  "tsc: ",
  "clocksource: Switched",
  "smp: Brought up",
  "ACPI: Interpreter enabled",
  "Unpacking initramfs",
  "Freeing initrd memory",
  "Freeing unused kernel image",
  "Run /init",
];

const encoder = new TextEncoder();

interface BootTimes {
  /** Milliseconds to the marker line. */
  initMs: number;
  /** Milliseconds to the end of the run. */
  endMs: number;
  /** initx only: milliseconds in `LinuxVm.start()` (host-side setup). */
  startMs?: number;
  /** The console, for the breakdown. */
  console: string;
}

function busybox(): Uint8Array {
  return Deno.readFileSync(requireStaticBusybox());
}

/** An initramfs whose /init is a busybox shell script. */
function initramfs(script: string): Uint8Array {
  return new CpioWriter()
    .file("/bin/busybox", busybox(), { mode: 0o755 })
    .file("/init", encoder.encode(`#!/bin/busybox sh\n${script}`), {
      mode: 0o755,
    })
    .dir("/dev")
    .device("/dev/console", { type: "char", major: 5, minor: 1 })
    .bytes();
}

const TIMED_INIT = `/bin/busybox echo ${MARKER}
/bin/busybox poweroff -f
`;

/**
 * An init that prints the marker, then the kernel log's first line, the
 * lines naming one of `milestones`, and the six largest gaps between
 * consecutive lines (gap in seconds, the time it ended at, and the line
 * after the gap), then powers off.
 */
const breakdownInit = (milestones: readonly string[]) =>
  `/bin/busybox echo ${MARKER}
export PATH=/bin
/bin/busybox --install -s /bin
dmesg > /dmesg.txt
echo ${REPORT_BEGIN}
head -n 1 /dmesg.txt | cut -c 1-100
grep -E '${milestones.join("|")}' /dmesg.txt | cut -c 1-100
echo "largest gaps:"
awk '{ t = substr($0, 2, 12) + 0; if (NR > 1) printf "%8.3f s before %s\\n", t - p, substr($0, 1, 90); p = t }' /dmesg.txt | sort -rn | head -n 6
echo "kernel log lines: $(wc -l < /dmesg.txt)"
echo ${REPORT_END}
poweroff -f
`;

async function bootInitx(
  kernel: Uint8Array,
  initrd: Uint8Array,
  cmdline: string,
  hypervisor: Kvm | undefined,
): Promise<BootTimes> {
  let text = "";
  let initMs: number | undefined;
  const decoder = new TextDecoder();
  const t0 = performance.now();
  const vm = await deadline(
    LinuxVm.start({
      kernel,
      initrd,
      cmdline,
      cpus: CPUS,
      memoryMiB: MEMORY_MIB,
      timeoutMs: BOOT_TIMEOUT_MS,
      hypervisor,
      arch: BENCH.arch,
      onConsole: (bytes) => {
        text += decoder.decode(bytes, { stream: true });
        if (initMs === undefined && text.includes(MARKER)) {
          initMs = performance.now() - t0;
        }
      },
    }),
    () => "LinuxVm.start() did not return",
  );
  const startMs = performance.now() - t0;
  try {
    const result = await deadline(
      vm.done,
      () => `initx run did not end; console:\n${vm.consoleText().slice(-2000)}`,
    );
    const endMs = performance.now() - t0;
    if (result.outcome.kind !== "power-off" || initMs === undefined) {
      throw new Error(
        `initx boot ended with ${result.outcome.kind}:\n${result.console}`,
      );
    }
    return { initMs, endMs, startMs, console: result.console };
  } finally {
    await deadline(vm.close(), () => "LinuxVm.close() did not return");
  }
}

/** A QEMU peer: its name in the report and its machine type. */
interface QemuPeer {
  name: string;
  /** The `-M` value. */
  machine: string;
  /** The environment variable that sets `machine`. */
  env: string;
  /** Its kernel command line made of initx's; default: initx's as it is. */
  cmdline?: (initx: string) => string;
}

const UNTUNED: QemuPeer = {
  name: "QEMU",
  machine: QEMU_MACHINE,
  env: "INITX_BENCH_QEMU_MACHINE",
};
const TUNED: QemuPeer = {
  name: "QEMU tuned",
  machine: QEMU_TUNED_MACHINE,
  env: "INITX_BENCH_QEMU_TUNED_MACHINE",
};
/** The one arm64 peer: QEMU's virt board, with the goal against it. */
const VIRT: QemuPeer = {
  name: "QEMU",
  machine: Deno.env.get("INITX_BENCH_QEMU_MACHINE") ?? ARM64_QEMU_MACHINE,
  env: "INITX_BENCH_QEMU_MACHINE",
  cmdline: arm64QemuCmdline,
};

/** What the bench of one architecture boots, against what. */
interface Bench {
  /** The guest architecture: the host's. */
  arch: Arch;
  /** The QEMU every peer runs. */
  qemu: string;
  /** The peers in the order each round boots them, after initx. */
  peers: readonly QemuPeer[];
  /** The peer of the goal ratio. */
  goal: QemuPeer;
  /** initx's kernel command line (the peers' are made of it). */
  cmdline: string;
  /** Kernel log lines the breakdown picks. */
  milestones: readonly string[];
  /** A boot that takes longer than this has failed. */
  bootTimeoutMs: number;
  /** Lines the header adds on the peers. */
  notes: readonly string[];
  /** Why this host cannot boot Linux guests, or undefined. */
  cannotBoot: () => string | undefined;
}

const BENCH: Bench = Deno.build.arch === "aarch64"
  ? {
    arch: "aarch64",
    qemu: ARM64_QEMU,
    peers: [VIRT],
    goal: VIRT,
    cmdline: defaultCmdline("aarch64"),
    milestones: ARM64_MILESTONES,
    bootTimeoutMs: ARM64_BOOT_TIMEOUT_MS,
    notes: ARM64_PEER_NOTES,
    cannotBoot: () => cannotBootLinuxReason(),
  }
  : {
    arch: "x86_64",
    qemu: "qemu-system-x86_64",
    peers: [UNTUNED, TUNED],
    goal: TUNED,
    cmdline: defaultCmdline("x86_64"),
    milestones: X86_MILESTONES,
    bootTimeoutMs: 60_000,
    notes: [],
    cannotBoot: () => cannotBootLinuxReason(),
  };
/** The peers in the order each round boots them, after initx. */
const PEERS: readonly QemuPeer[] = BENCH.peers;
/** A boot that takes longer than this has failed. */
const BOOT_TIMEOUT_MS = BENCH.bootTimeoutMs;
/**
 * A run that has not ended this long after its timeout is stuck (in the
 * stop path): the bench says so instead of waiting for the lab's timeout.
 */
const STUCK_MS = BOOT_TIMEOUT_MS + 15_000;

/** What a QEMU peer boots: the same for every peer and for initx. */
interface BootInputs {
  kernelPath: string;
  initrdPath: string;
  cmdline: string;
}

async function bootQemu(
  peer: QemuPeer,
  { kernelPath, initrdPath, cmdline }: BootInputs,
): Promise<BootTimes> {
  let text = "";
  let initMs: number | undefined;
  const decoder = new TextDecoder();
  const t0 = performance.now();
  const append = peer.cmdline?.(cmdline) ?? cmdline;
  const child = new Deno.Command(BENCH.qemu, {
    args: [
      ...["-accel", "kvm", "-cpu", "host", "-M", peer.machine],
      ...["-nodefaults", "-no-user-config", "-nographic"],
      ...["-serial", "stdio", "-no-reboot"],
      ...["-m", String(MEMORY_MIB), "-smp", String(CPUS)],
      ...["-kernel", kernelPath, "-initrd", initrdPath, "-append", append],
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }, BOOT_TIMEOUT_MS);
  const stderr = new Response(child.stderr).text();
  const reading = (async () => {
    for await (const chunk of child.stdout) {
      text += decoder.decode(chunk, { stream: true });
      if (initMs === undefined && text.includes(MARKER)) {
        initMs = performance.now() - t0;
      }
    }
  })();
  await deadline(reading, () => `${peer.name}'s stdout did not close`);
  const status = await deadline(
    child.status,
    () => `${peer.name} did not exit`,
  );
  const endMs = performance.now() - t0;
  clearTimeout(timer);
  if (!status.success || initMs === undefined) {
    throw new Error(
      `Cannot boot ${peer.name} (-M ${peer.machine}; ${peer.env} overrides it): QEMU exited with ${status.code}${
        initMs === undefined ? " before the marker line" : ""
      }:\n${text.slice(-4000)}\n${await stderr}`,
    );
  }
  return { initMs, endMs, console: text };
}

/** `promise`, or a rejection naming what is stuck after {@linkcode STUCK_MS}. */
async function deadline<T>(
  promise: Promise<T>,
  what: () => string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Stuck after ${STUCK_MS} ms: ${what()}`)),
      STUCK_MS,
    );
  });
  try {
    return await Promise.race([promise, stuck]);
  } finally {
    clearTimeout(timer);
  }
}

/** `min x / median y / max z s`; a `share` is printed as a plain fraction. */
function stats(xs: number[], unit: "s" | "x" | "share"): string {
  const s = [...xs].sort((a, b) => a - b);
  const f = (x: number) =>
    unit === "s"
      ? `${(x / 1000).toFixed(2)} s`
      : unit === "x"
      ? `${x.toFixed(2)}x`
      : x.toFixed(3);
  return `min ${f(s[0]!)} / median ${f(s[Math.floor(s.length / 2)]!)} / max ${
    f(s.at(-1)!)
  }`;
}

function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}

/**
 * `host setup: N ms of M ms to init (share S)`: the medians of the time in
 * `LinuxVm.start()` and of the boot to init, and the median of the per-round
 * share of the one in the other (goal: at most 0.10).
 */
function hostSetupLine(runs: BootTimes[]): string {
  const setup = median(runs.map((a) => a.startMs!));
  const init = median(runs.map((a) => a.initMs));
  const share = median(runs.map((a) => a.startMs! / a.initMs));
  return `host setup: ${setup.toFixed(0)} ms of ${
    init.toFixed(0)
  } ms to init (share ${share.toFixed(2)}; goal: at most 0.10)`;
}

/** The breakdown init's report, out of a console. */
function report(console: string): string {
  const text = console.replaceAll("\r", "");
  const begin = text.indexOf(REPORT_BEGIN);
  const end = text.indexOf(REPORT_END);
  if (begin < 0 || end < begin) return "(no report on the console)";
  return text.slice(begin + REPORT_BEGIN.length, end).trim().split("\n")
    .map((l) => `  ${l}`).join("\n");
}

/** The kernel's timestamp of "Run /init" in a report, in milliseconds. */
function runInitMs(reportText: string): number | undefined {
  const m = /\[\s*(\d+\.\d+)\] Run \/init/.exec(reportText);
  return m ? Number(m[1]) * 1000 : undefined;
}

/**
 * The summary: boot to init and to the end, min/median/max of initx, of
 * each peer and of initx's ratio to each peer, round by round (the goal's
 * peer last), and the host setup's share.
 */
function summaryLines(
  initx: BootTimes[],
  peers: ReadonlyMap<QemuPeer, BootTimes[]>,
): string[] {
  const shares = initx.map((a) => a.startMs! / a.initMs);
  /** initx's time over the peer's, round by round. */
  const ratios = (peer: QemuPeer, of: (t: BootTimes) => number) =>
    initx.map((a, i) => of(a) / of(peers.get(peer)![i]!));
  const toInit = (t: BootTimes) => t.initMs;
  const toEnd = (t: BootTimes) => t.endMs;
  /** Names padded to one width, so that the figures line up. */
  const label = (names: string[]) => {
    const width = Math.max(...names.map((n) => n.length)) + 1;
    return (n: string) => `${n}:`.padEnd(width);
  };
  const initLabel = label(["initx", ...PEERS.map((p) => p.name)]);
  const endLabel = label([
    "initx (power-off)",
    ...PEERS.map((p) => `${p.name} (exit)`),
  ]);
  const medianInit = (times: BootTimes[]) =>
    (median(times.map(toInit)) / 1000).toFixed(2);
  const goal = BENCH.goal;
  const others = PEERS.filter((p) => p !== goal);
  return [
    `boot to init, ${initLabel("initx")} ${stats(initx.map(toInit), "s")}`,
    ...PEERS.map((peer) =>
      `boot to init, ${initLabel(peer.name)} ${
        stats(peers.get(peer)!.map(toInit), "s")
      }`
    ),
    ...others.map((peer) =>
      `boot to init, initx/${peer.name} per round: ${
        stats(ratios(peer, toInit), "x")
      }`
    ),
    `ratio initx / ${goal.name}, boot to init (per round): ${
      stats(ratios(goal, toInit), "x")
    } (goal: median at most 0.70x)`,
    `boot to end, ${endLabel("initx (power-off)")} ${
      stats(initx.map(toEnd), "s")
    }`,
    ...PEERS.map((peer) =>
      `boot to end, ${endLabel(`${peer.name} (exit)`)} ${
        stats(peers.get(peer)!.map(toEnd), "s")
      }`
    ),
    ...others.map((peer) =>
      `boot to end, initx/${peer.name} per round: ${
        stats(ratios(peer, toEnd), "x")
      }`
    ),
    `ratio initx / ${goal.name}, boot to end (per round): ${
      stats(ratios(goal, toEnd), "x")
    }`,
    `initx LinuxVm.start() (host-side setup, inside boot to init): ${
      stats(initx.map((a) => a.startMs!), "s")
    }`,
    `host setup share of boot to init, per round: ${stats(shares, "share")}`,
    hostSetupLine(initx),
    `boot to init: initx ${medianInit(initx)} s, ${
      PEERS.map((peer) =>
        `${peer.name} ${medianInit(peers.get(peer)!)} s (ratio ${
          median(ratios(peer, toInit)).toFixed(2)
        }x${peer === goal ? "; goal: at most 0.70x" : ""})`
      ).join(", ")
    }`,
  ];
}

/**
 * The header's command-line lines: one when every peer boots initx's own,
 * else initx's and each peer's.
 */
function commandLines(cmdline: string): string[] {
  const own = PEERS.map((p) => p.cmdline?.(cmdline) ?? cmdline);
  if (own.every((c) => c === cmdline)) {
    const who = PEERS.length === 2 ? "both peers" : "the peers";
    return [`command line (initx and ${who}): ${cmdline}`];
  }
  return [
    `command line (initx): ${cmdline}`,
    ...PEERS.map((p, i) => `command line (${p.name}): ${own[i]}`),
  ];
}

const reason = BENCH.cannotBoot();
if (reason !== undefined) {
  console.error(reason);
  Deno.exit(1);
}
const kernelPath = Deno.env.get("INITX_LAB_KERNEL") ??
  (await ensureKernel()).image;
const kernel = await Deno.readFile(kernelPath);
const dir = await Deno.makeTempDir({ prefix: "initx-boot-bench-" });
const hypervisor = COLD ? undefined : Kvm.open();
try {
  const timedInitrd = initramfs(TIMED_INIT);
  const breakdownInitrd = initramfs(breakdownInit(BENCH.milestones));
  const timedPath = `${dir}/timed.cpio`;
  const breakdownPath = `${dir}/breakdown.cpio`;
  await Deno.writeFile(timedPath, timedInitrd);
  await Deno.writeFile(breakdownPath, breakdownInitrd);
  const cmdline = BENCH.cmdline;
  const timed: BootInputs = { kernelPath, initrdPath: timedPath, cmdline };
  console.log(`kernel ${kernelPath}, ${CPUS} vCPU, ${MEMORY_MIB} MiB`);
  for (const line of commandLines(cmdline)) console.log(line);
  for (const peer of PEERS) {
    console.log(`${peer.name}: -accel kvm -cpu host -M ${peer.machine}`);
  }
  for (const note of BENCH.notes) console.log(note);
  console.log(
    `initx: ${
      COLD
        ? "each boot opens its own hypervisor"
        : "one hypervisor for all boots"
    }`,
  );

  const initx: BootTimes[] = [];
  /** Per peer, one entry per round. */
  const peers = new Map<QemuPeer, BootTimes[]>(PEERS.map((p) => [p, []]));
  for (let i = 0; i < ROUNDS; i++) {
    const a = await bootInitx(kernel, timedInitrd, cmdline, hypervisor);
    initx.push(a);
    const parts = [
      `initx init ${a.initMs.toFixed(0)} ms (host setup ${
        a.startMs!.toFixed(0)
      } ms), end ${a.endMs.toFixed(0)} ms`,
    ];
    for (const peer of PEERS) {
      const b = await bootQemu(peer, timed);
      peers.get(peer)!.push(b);
      parts.push(
        `${peer.name} init ${b.initMs.toFixed(0)} ms, exit ${
          b.endMs.toFixed(0)
        } ms`,
      );
    }
    console.log(`round ${i + 1}: ${parts.join("; ")}`);
  }

  // Breakdown: printk timestamps, read after the boot with dmesg.
  const bcmd = `${cmdline} printk.time=1`;
  const breakdowns: [string, BootTimes][] = [
    ["initx", await bootInitx(kernel, breakdownInitrd, bcmd, hypervisor)],
  ];
  for (const peer of PEERS) {
    breakdowns.push([
      peer.name,
      await bootQemu(peer, {
        kernelPath,
        initrdPath: breakdownPath,
        cmdline: bcmd,
      }),
    ]);
  }
  for (const [name, b] of breakdowns) {
    const r = report(b.console);
    const runInit = runInitMs(r);
    const parts = [`marker at ${b.initMs.toFixed(0)} ms`];
    if (b.startMs !== undefined) {
      parts.push(`LinuxVm.start() ${b.startMs.toFixed(0)} ms`);
    }
    if (runInit !== undefined) {
      const before = b.initMs - (b.startMs ?? 0) - runInit;
      parts.push(
        `kernel clock at "Run /init" ${runInit.toFixed(0)} ms`,
        `so ~${before.toFixed(0)} ms of ${
          name === "initx" ? "" : "QEMU start-up, firmware, "
        }decompression and early setup before the kernel's clock starts, plus init's first line`,
      );
    }
    console.log(`\nbreakdown, ${name} (${parts.join("; ")}):\n${r}`);
  }

  console.log(`\n${summaryLines(initx, peers).join("\n")}`);
} finally {
  hypervisor?.close();
  await Deno.remove(dir, { recursive: true });
}
