/**
 * Booting a Linux kernel on a hypervisor VM: the architecture's machine
 * (`machine_x86.ts`: bzImage, ACPI, a 16550 on COM1 and the platform ports;
 * `machine_arm64.ts`: Image, a device tree, a 16550 over MMIO, PSCI), the
 * console UART and the virtio-mmio devices, put together. The run ends in
 * one typed {@linkcode LinuxVmOutcome}: power-off, reboot, panic, triple
 * fault, timeout, or an error.
 *
 * The other vCPUs start before vCPU 0 and wait for the kernel to start them
 * (INIT/SIPI on x86_64, PSCI CPU_ON on arm64). Device exits reach the
 * devices on this thread.
 *
 * @module
 */

import { MIB } from "../boot/layout.ts";
import { Platform } from "../devices/platform.ts";
import { Serial } from "../devices/serial.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { VirtioMmioTransport } from "../devices/virtio/mmio.ts";
import {
  describePc,
  type HvVcpu,
  type HvVm,
  type Hypervisor,
  type IoAccess,
  type MmioAccess,
  type VcpuOutcome,
} from "../hv/hv.ts";
import type { Arch } from "../ir/syscalls.ts";
import { hostGuestArch, type MachinePlan, type UartBus } from "./machine.ts";
import { ARM64_CMDLINE, arm64Machine } from "./machine_arm64.ts";
import { checkKernelImage, X86_CMDLINE, x86Machine } from "./machine_x86.ts";

export { checkKernelImage } from "./machine_x86.ts";

/**
 * The kernel command line initx boots `arch` with (default: this host's
 * guests) when none is given.
 *
 * @example
 * ```ts
 * import { defaultCmdline } from "./linux_vm.ts";
 * console.assert(defaultCmdline("aarch64").startsWith("console=ttyS0"));
 * ```
 */
export function defaultCmdline(arch: Arch = hostGuestArch()): string {
  return arch === "aarch64" ? ARM64_CMDLINE : X86_CMDLINE;
}

/**
 * Default kernel command line of this host's guests: serial console, reboot
 * at once on panic, and fewer things probed at boot (see `machine_x86.ts`
 * and `machine_arm64.ts`).
 */
export const DEFAULT_CMDLINE: string = defaultCmdline();
/** Default guest RAM in MiB. */
export const DEFAULT_MEMORY_MIB = 512;
/**
 * How long the console of a panicking kernel may stay quiet before the VM is
 * stopped (with `panic=-1` the kernel reboots by itself first).
 */
export const PANIC_GRACE_MS = 2000;
/** Console text kept for the result, in characters. */
export const CONSOLE_TAIL_CHARS = 16384;
/** Console text kept with a panic outcome, in characters. */
const PANIC_TAIL_CHARS = 4096;
/** The longest timeout a timer can wait (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
/** Console output is passed on at each newline or after this delay. */
const CONSOLE_FLUSH_MS = 5;
/** Printed by Linux when it panics. */
const PANIC_MARKER = "Kernel panic - not syncing";
/** Printed by the bzImage decompressor when it gives up (then it halts). */
const DECOMPRESSOR_HALT_MARKER = "-- System halted";

/** Options of {@linkcode LinuxVm.start} and {@linkcode bootLinux}. */
export interface LinuxVmOptions {
  /**
   * The kernel, as bytes or a path: a bzImage on x86_64, an arm64 `Image`
   * (plain, gzip'd or an EFI zboot with gzip) on arm64.
   */
  kernel: Uint8Array | string;
  /** An initramfs (`newc` cpio, optionally compressed), as bytes or a path. */
  initrd?: Uint8Array | string;
  /** Kernel command line (default {@linkcode DEFAULT_CMDLINE}). */
  cmdline?: string;
  /** Number of vCPUs, 1..255 (default 1). */
  cpus?: number;
  /** Guest RAM in MiB (default {@linkcode DEFAULT_MEMORY_MIB}). */
  memoryMiB?: number;
  /** Stop the VM after this many milliseconds (default: never). */
  timeoutMs?: number;
  /**
   * Receives the serial console's output, in chunks of whole lines or less.
   * A sink that throws loses that chunk, never the guest: the first error
   * comes back as {@linkcode LinuxVmResult.consoleError}.
   */
  onConsole?: (bytes: Uint8Array) => void;
  /**
   * virtio devices, each behind a virtio-mmio window described to the guest
   * (in the DSDT as `LNRO0005` on x86_64, in the device tree on arm64), in
   * order from window 0, with an edge-triggered interrupt.
   */
  virtioDevices?: readonly VirtioDevice[];
  /**
   * Further empty virtio-mmio windows to describe after the devices' (default
   * 0). Nothing answers there: reads return zeros, so drivers skip them.
   */
  virtioMmioWindows?: number;
  /**
   * Receives a device's report of bad guest data or an internal failure (the
   * device then stops until the guest resets it). Default: ignored.
   */
  onDeviceError?: (message: string) => void;
  /**
   * Hypervisor to create the VM on. Default: `Kvm.open()`, closed again by
   * {@linkcode LinuxVm.close}; a hypervisor given here stays open.
   */
  hypervisor?: Hypervisor;
  /**
   * The guest architecture; default: this host's (KVM and
   * Hypervisor.framework run guests of their host's architecture).
   */
  arch?: Arch;
}

/** How a Linux VM's run ended. A closed union: switch on `kind`. */
export type LinuxVmOutcome =
  /** The guest powered off (ACPI S5). */
  | { kind: "power-off" }
  /** The guest asked for a reboot; initx ends the VM instead. */
  | { kind: "reboot" }
  /** The kernel panicked; `tail` is the end of the console. */
  | { kind: "panic"; tail: string }
  /** A vCPU triple-faulted. */
  | { kind: "triple-fault" }
  /** `timeoutMs` passed. */
  | { kind: "timeout" }
  /** The host called {@linkcode LinuxVm.stop}. */
  | { kind: "stopped" }
  /** KVM or a device could not go on; `message` says why. */
  | { kind: "error"; message: string };

/** The result of a run. */
export interface LinuxVmResult {
  /** How it ended. */
  outcome: LinuxVmOutcome;
  /** The last {@linkcode CONSOLE_TAIL_CHARS} characters of the console. */
  console: string;
  /** Milliseconds from the start of vCPU 0 to the end of the run. */
  elapsedMs: number;
  /**
   * The first error `onConsole` threw, when it threw: the chunks it threw
   * on were lost (later ones still reached it, and the guest ran on).
   */
  consoleError?: Error;
}

/**
 * A Linux guest running on its own VM.
 *
 * @example
 * ```ts ignore
 * import { LinuxVm } from "./linux_vm.ts";
 * const vm = await LinuxVm.start({
 *   kernel: "/boot/vmlinuz",
 *   initrd: "initrd.cpio",
 *   onConsole: (b) => Deno.stdout.writeSync(b),
 * });
 * try {
 *   const { outcome } = await vm.done;
 *   console.log(outcome.kind); // "power-off"
 * } finally {
 *   await vm.close();
 * }
 * ```
 */
export class LinuxVm {
  #vm: HvVm;
  #ownedHypervisor: Hypervisor | undefined;
  #vcpus: HvVcpu[] = [];
  #console: ConsoleLog;
  #serial: Serial;
  #uart: UartBus;
  #platform: Platform | undefined;
  #mmioDevices: {
    base: bigint;
    end: bigint;
    transport: VirtioMmioTransport;
  }[] = [];
  #startedAt = 0;
  #ended = false;
  #ending: Promise<void> | undefined;
  #closed = false;
  #panicked = false;
  #timeoutTimer: ReturnType<typeof setTimeout> | undefined;
  #panicTimer: ReturnType<typeof setTimeout> | undefined;
  #resolve!: (r: LinuxVmResult) => void;
  /** Resolves when the run ends; it never rejects. */
  readonly done: Promise<LinuxVmResult>;

  private constructor(
    vm: HvVm,
    plan: MachinePlan,
    options: {
      ownedHypervisor?: Hypervisor;
      onConsole?: LinuxVmOptions["onConsole"];
    },
  ) {
    this.#vm = vm;
    this.#uart = plan.uart.bus;
    this.#ownedHypervisor = options.ownedHypervisor;
    this.done = new Promise((r) => this.#resolve = r);
    this.#console = new ConsoleLog({
      onConsole: options.onConsole,
      onText: (recent) => this.#watch(recent),
    });
    this.#serial = new Serial({
      trigger: () => this.#pulseIrq(plan.uart.irq),
      out: (bytes) => this.#console.push(bytes),
    });
    if (plan.platformPorts) {
      this.#platform = new Platform({
        powerOff: () => this.#end({ kind: "power-off" }),
        reset: () => this.#end({ kind: "reboot" }),
      });
    }
  }

  /**
   * Loads the kernel (and initrd), creates the VM and starts its vCPUs.
   * Throws `Cannot load kernel: ...` (`Cannot load arm64 kernel: ...`) for
   * an image that is not a complete 64-bit bzImage (arm64 Image) and
   * `Cannot read ...` for a file that cannot be read; these checks run
   * before any hypervisor is opened.
   */
  static async start(options: LinuxVmOptions): Promise<LinuxVm> {
    const arch = options.arch ?? hostGuestArch();
    const kernel = await readInput("kernel", options.kernel);
    if (arch === "x86_64") checkKernelImage(kernel);
    const initrd = options.initrd === undefined
      ? undefined
      : await readInput("initrd", options.initrd);
    const cpus = options.cpus ?? 1;
    const memoryMiB = options.memoryMiB ?? DEFAULT_MEMORY_MIB;
    if (!Number.isInteger(memoryMiB) || memoryMiB < 16) {
      throw new RangeError(
        `Cannot boot Linux: memory of ${memoryMiB} MiB is not an integer of at least 16`,
      );
    }
    const timeoutMs = options.timeoutMs;
    if (
      timeoutMs !== undefined &&
      !(timeoutMs > 0 && timeoutMs <= MAX_TIMEOUT_MS)
    ) {
      throw new RangeError(
        `Cannot boot Linux: timeout of ${timeoutMs} ms is not between 0 and ${MAX_TIMEOUT_MS} ms`,
      );
    }
    const memoryBytes = BigInt(memoryMiB) * MIB;
    const devices = options.virtioDevices ?? [];
    const machine = {
      kernel,
      initrd,
      cmdline: options.cmdline ?? defaultCmdline(arch),
      cpus,
      memoryBytes,
      windows: devices.length + (options.virtioMmioWindows ?? 0),
    };
    const plan = arch === "aarch64"
      ? await arm64Machine(machine)
      : x86Machine(machine);

    let hypervisor = options.hypervisor;
    let owned: Hypervisor | undefined;
    if (hypervisor === undefined) {
      const { Kvm } = await import("../hv/kvm/system.ts");
      hypervisor = owned = Kvm.open();
    }
    let vm: HvVm;
    try {
      vm = hypervisor.createVm({ irqchip: true });
    } finally {
      // A hypervisor of our own serves this VM only: closed now, it holds
      // nothing back for later VMs, and the VM lives on through its own
      // handle.
      owned?.close();
    }
    const linux = new LinuxVm(vm, plan, {
      ownedHypervisor: owned,
      onConsole: options.onConsole,
    });
    const handlers = {
      io: (a: IoAccess) => linux.#io(a),
      mmio: (a: MmioAccess) => linux.#mmio(a),
    };
    let others: Promise<void>[] = [];
    try {
      // The other vCPUs first, all at once, so that their threads get ready
      // in parallel and while guest memory is filled below. They wait for
      // vCPU 0's kernel to start them (in the in-kernel LAPIC for INIT/SIPI
      // on x86_64, powered off until PSCI CPU_ON on arm64), so they must all
      // exist before vCPU 0 runs.
      others = Array.from({ length: cpus - 1 }, async (_, i) => {
        const id = cpus - 1 - i;
        const vcpu = await vm.startVcpu(id, {
          ...plan.secondaryVcpu(id),
          handlers,
        });
        linux.#vcpus.push(vcpu);
        vcpu.done.then((o) => linux.#vcpuEnded(id, o));
      });
      for (const r of plan.ram) vm.addMemory(r.base, r.size);
      for (const w of plan.writes) vm.memory.writeExact(w.addr, w.bytes);
      devices.forEach((device, i) => {
        const w = plan.windows[i]!;
        const transport = new VirtioMmioTransport(device, {
          memory: () => vm.memory,
          interrupt: () => linux.#pulseIrq(w.irq),
          onError: (message) => {
            try {
              options.onDeviceError?.(message);
            } catch {
              // A failing report sink must not stop the guest.
            }
          },
        });
        linux.#mmioDevices.push({
          base: w.base,
          end: w.base + w.size,
          transport,
        });
      });
      await Promise.all(others);
      // A vCPU that already failed ended the run: start no more.
      if (!linux.#ended) {
        linux.#startedAt = performance.now();
        const vcpu = await vm.startVcpu(0, { ...plan.bootVcpu, handlers });
        linux.#vcpus.push(vcpu);
        vcpu.done.then((o) => linux.#vcpuEnded(0, o));
      }
    } catch (e) {
      await linux.close();
      // Starts still under way fail once the VM is closed: nothing to report.
      await Promise.allSettled(others);
      throw e;
    }
    if (options.timeoutMs !== undefined && !linux.#ended) {
      linux.#timeoutTimer = setTimeout(
        () => linux.#end({ kind: "timeout" }),
        options.timeoutMs,
      );
    }
    return linux;
  }

  /** vCPU exits to userspace so far, summed over the vCPUs (a diagnostic). */
  exitCount(): number {
    return this.#vcpus.reduce((n, v) => n + v.exitCount(), 0);
  }

  /** The console's last {@linkcode CONSOLE_TAIL_CHARS} characters so far. */
  consoleText(): string {
    return this.#console.text();
  }

  /** The first error `onConsole` threw so far, or undefined. */
  get consoleError(): Error | undefined {
    return this.#console.error;
  }

  /** Ends the run (outcome `stopped` unless it already ended). */
  stop(): Promise<LinuxVmResult> {
    this.#end({ kind: "stopped" });
    return this.done;
  }

  /** Stops the run if needed and frees the VM, its threads and fds. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#end({ kind: "stopped" });
    await this.#ending;
    await this.#vm.close();
    this.#ownedHypervisor?.close();
  }

  #io(a: IoAccess): void {
    const value = a.data[0] ?? 0;
    const uart = this.#uart;
    if (
      uart.kind === "port" && a.port >= uart.base && a.port < uart.base + 8
    ) {
      const offset = a.port - uart.base;
      if (a.direction === "in") a.data[0] = this.#serial.read(offset);
      else this.#serial.write(offset, value);
    } else if (this.#platform?.handles(a.port)) {
      if (a.direction === "in") a.data.fill(this.#platform.read(a.port));
      else this.#platform.write(a.port, value);
    }
    // Anything else: reads stay all ones, writes are dropped.
  }

  #mmio(a: MmioAccess): void {
    const uart = this.#uart;
    if (
      uart.kind === "mmio" && a.addr >= uart.base && a.addr < uart.base + 8n
    ) {
      // Byte-wide registers (reg-io-width 1): a wider access reaches the
      // register at its address, the other bytes read as zero.
      const offset = Number(a.addr - uart.base);
      if (a.isWrite) this.#serial.write(offset, a.data[0] ?? 0);
      else a.data[0] = this.#serial.read(offset);
      return;
    }
    for (const d of this.#mmioDevices) {
      if (a.addr >= d.base && a.addr < d.end) {
        const offset = Number(a.addr - d.base);
        if (a.isWrite) d.transport.write(offset, a.data);
        else d.transport.read(offset, a.data);
        return;
      }
    }
    // Anything else: reads stay zeros, writes are dropped.
  }

  #pulseIrq(gsi: number): void {
    if (this.#ended) return;
    this.#vm.setIrqLine(gsi, 1);
    this.#vm.setIrqLine(gsi, 0);
  }

  #watch(recent: string): void {
    if (!this.#panicked && recent.includes(PANIC_MARKER)) {
      this.#panicked = true;
    }
    if (this.#ended) return;
    if (this.#panicked) {
      // The panic report may take a while over a slow console: wait until it
      // has been quiet for the grace period, unless the kernel reboots first.
      if (this.#panicTimer !== undefined) clearTimeout(this.#panicTimer);
      this.#panicTimer = setTimeout(
        () => this.#end({ kind: "reboot" }),
        PANIC_GRACE_MS,
      );
    }
    if (recent.includes(DECOMPRESSOR_HALT_MARKER)) {
      this.#end({
        kind: "error",
        message:
          "Cannot boot Linux: the kernel's decompressor stopped (see the console)",
      });
    }
  }

  #vcpuEnded(id: number, o: VcpuOutcome): void {
    switch (o.kind) {
      case "stopped":
        // Only the host stops vCPUs, and it ends the run when it does.
        return;
      case "system-event":
        if (o.event === "shutdown") return this.#end({ kind: "power-off" });
        if (o.event === "reset") return this.#end({ kind: "reboot" });
        if (o.event === "crash") {
          this.#panicked = true;
          return this.#end({ kind: "reboot" });
        }
        return this.#end({
          kind: "error",
          message: `vCPU ${id} reported system event type ${o.type}`,
        });
      case "shutdown":
        return this.#end({ kind: "triple-fault" });
      case "hlt":
        return this.#end({
          kind: "error",
          message: `vCPU ${id} halted at ${
            describePc(o.regs)
          } with no interrupt controller to wake it`,
        });
      case "internal-error":
        return this.#end({
          kind: "error",
          message:
            `KVM internal error (suberror ${o.suberror}) on vCPU ${id} at ${
              describePc(o.regs)
            }`,
        });
      case "fail-entry":
        return this.#end({
          kind: "error",
          message: `vCPU ${id} could not enter the guest (hardware reason 0x${
            o.reason.toString(16)
          })`,
        });
      case "unsupported":
        return this.#end({
          kind: "error",
          message:
            `vCPU ${id} stopped on unhandled KVM exit reason ${o.exitReason} at ${
              describePc(o.regs)
            }`,
        });
      case "error":
        return this.#end({ kind: "error", message: o.message });
      default: {
        const never: never = o;
        throw new Error(`Unknown vCPU outcome ${JSON.stringify(never)}`);
      }
    }
  }

  /** Ends the run once: the first outcome wins. */
  #end(outcome: LinuxVmOutcome): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#ending = this.#finish(outcome);
  }

  async #finish(outcome: LinuxVmOutcome): Promise<void> {
    const elapsedMs = performance.now() - this.#startedAt;
    clearTimeout(this.#timeoutTimer);
    clearTimeout(this.#panicTimer);
    // Text that came with the exit that ends the run may hold the panic.
    this.#console.flush();
    await Promise.all(this.#vcpus.map((v) => v.stop()));
    this.#console.flush();
    const text = this.#console.text();
    const ended = this.#panicked &&
        (outcome.kind === "reboot" || outcome.kind === "triple-fault")
      ? { kind: "panic" as const, tail: text.slice(-PANIC_TAIL_CHARS) }
      : outcome;
    const consoleError = this.#console.error;
    this.#resolve({
      outcome: ended,
      console: text,
      elapsedMs,
      ...(consoleError === undefined ? {} : { consoleError }),
    });
  }
}

/**
 * Boots a kernel and waits for the run to end, then frees the VM.
 * Input errors (a file that cannot be read, an image that is not a complete
 * bzImage, bad sizes) reject; everything after the start resolves.
 *
 * @example
 * ```ts ignore
 * import { bootLinux } from "./linux_vm.ts";
 * const { outcome, elapsedMs } = await bootLinux({
 *   kernel: "/boot/vmlinuz",
 *   initrd: "initrd.cpio",
 *   cpus: 2,
 *   timeoutMs: 60_000,
 * });
 * console.log(outcome.kind, elapsedMs);
 * ```
 */
export async function bootLinux(
  options: LinuxVmOptions,
): Promise<LinuxVmResult> {
  const vm = await LinuxVm.start(options);
  try {
    return await vm.done;
  } finally {
    await vm.close();
  }
}

async function readInput(
  what: "kernel" | "initrd",
  input: Uint8Array | string,
): Promise<Uint8Array> {
  if (typeof input !== "string") return input;
  try {
    return await Deno.readFile(input);
  } catch (e) {
    throw new Error(
      `Cannot read ${what} '${input}': ${(e as Error).message}`,
      { cause: e },
    );
  }
}

/**
 * The serial console's output: batched for `onConsole` (each line, or what
 * has come after {@linkcode CONSOLE_FLUSH_MS}), decoded, and kept as a tail.
 * The first error `onConsole` throws is kept in `error`.
 */
class ConsoleLog {
  #error: Error | undefined;
  #pending: number[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #decoder = new TextDecoder();
  #tail = "";
  #onConsole: ((bytes: Uint8Array) => void) | undefined;
  #onText: (recent: string) => void;

  constructor(
    options: {
      onConsole?: (bytes: Uint8Array) => void;
      onText: (recent: string) => void;
    },
  ) {
    this.#onConsole = options.onConsole;
    this.#onText = options.onText;
  }

  push(bytes: Uint8Array): void {
    for (const b of bytes) this.#pending.push(b);
    if (bytes.includes(0x0a)) this.flush();
    else {
      this.#timer ??= setTimeout(() => this.flush(), CONSOLE_FLUSH_MS);
    }
  }

  flush(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending.length === 0) return;
    const bytes = new Uint8Array(this.#pending);
    this.#pending = [];
    try {
      this.#onConsole?.(bytes);
    } catch (e) {
      // A failing console sink must not stop the guest; the caller hears of
      // it in the result.
      this.#error ??= e instanceof Error ? e : new Error(String(e));
    }
    const text = this.#decoder.decode(bytes, { stream: true });
    // Markers may straddle two flushes: look at the new text with some before.
    const recent = this.#tail.slice(-64) + text;
    this.#tail = (this.#tail + text).slice(-CONSOLE_TAIL_CHARS);
    this.#onText(recent);
  }

  text(): string {
    return this.#tail;
  }

  get error(): Error | undefined {
    return this.#error;
  }
}
