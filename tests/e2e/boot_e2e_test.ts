// End-to-end boots of a real Linux kernel through initx's own layers. They
// need /dev/kvm with hardware virtualization: run them in the KVM lab on
// hosts without it, e.g.
//   deno task lab --timeout 300 -- deno test -A --no-check tests/e2e/boot_e2e_test.ts
// One booted guest serves several checks: each boot costs 10-15 s in the lab.
import { requireStaticBusybox } from "../../src/initx/busybox_guest.ts";
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { CpioWriter } from "../../src/boot/cpio.ts";
import { ensureKernel } from "../../src/boot/kernel.ts";
import { bootLinux, type LinuxVmResult } from "../../src/initx/linux_vm.ts";
import { bootCommand } from "../../src/cli/boot.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import type { Kvm } from "../../src/hv/kvm/system.ts";
import { need, needKvm } from "../_gate.ts";
import { withTempDir } from "../_util.ts";

const MARKER = "INITX-E2E-MARKER";
const MEMORY_MIB = 256;

/**
 * {@linkcode needKvm} for a KVM that can boot Linux: a paravirtual KVM such
 * as kvm_pvm opens but cannot run these guests.
 */
async function needLinuxKvm(t: Deno.TestContext): Promise<Kvm | undefined> {
  const kvm = await needKvm(t);
  if (!kvm) return undefined;
  const reason = cannotBootLinuxReason();
  if (reason === undefined) return kvm;
  kvm.close();
  need(t, false, reason);
  return undefined;
}

async function kernelPath(): Promise<string> {
  return Deno.env.get("INITX_LAB_KERNEL") ?? (await ensureKernel()).image;
}

function busybox(): Uint8Array {
  return Deno.readFileSync(requireStaticBusybox());
}

/** An initramfs whose /init is a busybox shell script. */
function initramfs(script: string): Uint8Array {
  return new CpioWriter()
    .file("/bin/busybox", busybox(), { mode: 0o755 })
    .file("/init", new TextEncoder().encode(`#!/bin/busybox sh\n${script}`), {
      mode: 0o755,
    })
    .dir("/proc")
    .dir("/sys")
    .dir("/dev")
    .device("/dev/console", { type: "char", major: 5, minor: 1 })
    .bytes();
}

const REPORT_SCRIPT = `
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo ${MARKER}
echo "nproc=$(nproc)"
echo "cpuinfo=$(grep -c ^processor /proc/cpuinfo)"
grep MemTotal /proc/meminfo
echo "acpi=$(ls /sys/bus/acpi/devices/ | tr '\\n' ' ')"
echo "kmsg-lines=$(dmesg | wc -l)"
dmesg | grep -E 'WARNING|XSAVE|Unhandled|x86/fpu' | sed 's/^/kmsg: /'
poweroff -f
`;

let reportRun: Promise<LinuxVmResult> | undefined;
/** The host's kernel log lines from before the report boot, if readable. */
let hostLogBefore: Set<string> | undefined;

/**
 * Boots {@linkcode REPORT_SCRIPT} with 2 vCPUs on `kvm`, once for the tests
 * that read its report.
 */
function reportBoot(kvm: Kvm): Promise<LinuxVmResult> {
  if (!reportRun) {
    const log = hostKernelLog();
    hostLogBefore = log && new Set(log);
  }
  reportRun ??= (async () =>
    bootLinux({
      kernel: await kernelPath(),
      initrd: initramfs(REPORT_SCRIPT),
      cpus: 2,
      memoryMiB: MEMORY_MIB,
      virtioMmioWindows: 2,
      timeoutMs: 120_000,
      hypervisor: kvm,
    }))();
  return reportRun;
}

Deno.test("bootLinux() boots busybox to power-off with 2 vCPUs, RAM and ACPI devices", async (t) => {
  const fdsBefore = kvmFds();
  const kvm = await needLinuxKvm(t);
  if (!kvm) return;
  let result: LinuxVmResult;
  try {
    result = await reportBoot(kvm);
  } finally {
    kvm.close();
  }
  const text = result.console;
  console.log(`booted to power-off in ${result.elapsedMs.toFixed(0)} ms`);
  equal(result.outcome.kind, "power-off", text);
  ok(text.includes(MARKER), text);
  match(text, /nproc=2\b/);
  match(text, /cpuinfo=2\b/);
  const kib = Number(/MemTotal:\s+(\d+) kB/.exec(text)?.[1]);
  ok(
    kib > MEMORY_MIB * 1024 * 0.8 && kib <= MEMORY_MIB * 1024,
    `MemTotal ${kib} kB for ${MEMORY_MIB} MiB`,
  );
  match(text, /acpi=.*LNRO0005:00.*LNRO0005:01/);
  // /dev/kvm, the VM and its vCPU fds are all closed again.
  deepEqual(
    kvmFds(),
    fdsBefore,
    "KVM file descriptors left open after the VM ended",
  );
});

/**
 * MSRs the host's KVM may report as unhandled for a guest it gives no vPMU:
 * AMD's legacy PerfEvtSel0-3/PerfCtr0-3 (0xc0010000-0xc0010007). Linux probes
 * them on every AMD CPU of family 6 or later (arch/x86/events/amd/core.c,
 * `check_hw_exists()` in arch/x86/events/core.c writes a counter to see if it
 * sticks); no CPUID bit tells it there is no PMU there. KVM ignores the write.
 */
const UNAVOIDABLE_MSRS = /^0xc001000[0-7]$/;

/** The host's kernel log, or undefined when this process may not read it. */
function hostKernelLog(): string[] | undefined {
  try {
    const r = new Deno.Command("dmesg", { stdout: "piped", stderr: "null" })
      .outputSync();
    return r.success
      ? new TextDecoder().decode(r.stdout).split("\n")
      : undefined;
  } catch {
    return undefined;
  }
}

Deno.test("bootLinux() boots with a clean kernel log: no WARNING, XSAVE consistency problem or unhandled MSR", async (t) => {
  const kvm = await needLinuxKvm(t);
  if (!kvm) return;
  let result: LinuxVmResult;
  try {
    result = await reportBoot(kvm);
  } finally {
    kvm.close();
  }
  const text = result.console;
  equal(result.outcome.kind, "power-off", text);
  // The guest's whole log (dmesg reads the ring buffer, whatever `quiet`
  // kept off the console).
  const lines = Number(/kmsg-lines=(\d+)/.exec(text)?.[1]);
  ok(lines > 50, `dmesg gave ${lines} lines:\n${text}`);
  const kmsg = text.split("\n").filter((l) => l.startsWith("kmsg: "));
  for (const l of kmsg.filter((l) => l.includes("x86/fpu"))) console.log(l);
  deepEqual(
    kmsg.filter((l) =>
      /WARNING|XSAVE consistency|XSAVE disabled|Unhandled/.test(l)
    ),
    [],
    text,
  );
  // The host's KVM logs the MSRs a guest touches that it does not handle
  // ("kvm [TID]: vcpuN, guest rIP: ... Unhandled WRMSR(0x...) = ..."; in the
  // KVM lab that is the lab's own kernel). Lines new since the boot began.
  const host = hostKernelLog();
  const before = hostLogBefore;
  if (host === undefined || before === undefined) {
    console.log("host kernel log not readable: unhandled MSRs not checked");
    return;
  }
  const ours = host.filter((l) =>
    !before.has(l) && /kvm \[\d+\]: .*Unhandled (RD|WR)MSR/.test(l)
  );
  for (const l of ours) console.log(`host: ${l}`);
  deepEqual(
    ours.filter((l) =>
      !UNAVOIDABLE_MSRS.test(/MSR\((0x[0-9a-f]+)\)/.exec(l)?.[1] ?? "")
    ),
    [],
  );
});

/** Open fds of this process that are KVM objects (`/dev/kvm`, `kvm-vm`, `kvm-vcpu:N`). */
function kvmFds(): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      if (target.includes("kvm")) out.push(`${e.name} -> ${target}`);
    } catch {
      // closed while we looked
    }
  }
  return out.sort();
}

Deno.test("bootLinux() reports a panic with the console tail when there is no init", async (t) => {
  const kvm = await needLinuxKvm(t);
  if (!kvm) return;
  let result: LinuxVmResult;
  try {
    result = await bootLinux({
      kernel: await kernelPath(),
      memoryMiB: 128,
      timeoutMs: 120_000,
      hypervisor: kvm,
    });
  } finally {
    kvm.close();
  }
  equal(result.outcome.kind, "panic", result.console);
  if (result.outcome.kind === "panic") {
    match(result.outcome.tail, /Kernel panic - not syncing/);
  }
});

Deno.test("initx boot streams the console and exits 0 on power-off", async (t) => {
  const kvm = await needLinuxKvm(t);
  if (!kvm) return;
  kvm.close();
  await withTempDir(async (dir) => {
    const initrd = `${dir}/initrd.cpio`;
    await Deno.writeFile(
      initrd,
      initramfs(`/bin/busybox echo ${MARKER}\n/bin/busybox poweroff -f\n`),
    );
    const chunks: Uint8Array[] = [];
    const code = await bootCommand([
      "--kernel",
      await kernelPath(),
      "--initrd",
      initrd,
      "--memory",
      "128",
      "--timeout",
      "120",
    ], { out: (b) => chunks.push(b.slice()) });
    const text = new TextDecoder().decode(
      new Uint8Array(chunks.flatMap((c) => [...c])),
    );
    equal(code, 0, text);
    ok(text.includes(MARKER), text);
  });
});

Deno.test("bootLinux() stops a guest that is still booting at the timeout", async (t) => {
  const kvm = await needLinuxKvm(t);
  if (!kvm) return;
  let result: LinuxVmResult;
  try {
    result = await bootLinux({
      kernel: await kernelPath(),
      cpus: 2,
      memoryMiB: 128,
      timeoutMs: 1000,
      hypervisor: kvm,
    });
  } finally {
    kvm.close();
  }
  equal(result.outcome.kind, "timeout", result.console);
});
