/**
 * `deno task bench:boot [--arch x86_64|aarch64]`: runs `bench/boot_bench.ts`
 * (initx against QEMU booting the same kernel to its init: microvm, untuned
 * and tuned for fast boots, on x86_64; virt on aarch64) for the guests of
 * `--arch` (default: this host's). On this host when it is of that
 * architecture and its KVM boots Linux; inside the KVM lab of that
 * architecture otherwise, in one lab run, with QEMU carried into the lab
 * for the peer. A lab run that gets stuck (the lab's kernel locks up, or
 * nothing comes out for a while) is run once more.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { PROJECT_ROOT } from "./lab/lab.ts";
import { type LabArch, parseLabArch } from "./lab/arch.ts";
import { runInLabRetrying } from "./lab/retry.ts";
import { detectKvmHost, type KvmHost } from "../src/hv/kvm/host.ts";

export type { KvmHost, LabArch };

/** Where and how the boot bench runs. */
export type BenchBootPlan =
  | { where: "host"; arch: LabArch; reason: string }
  | {
    where: "lab";
    arch: LabArch;
    reason: string;
    /** Seconds before the lab run is stopped. */
    timeoutSeconds: number;
    /** Seconds without output after which the lab counts as stuck. */
    idleTimeoutSeconds?: number;
  };

/**
 * The lab run's limits per architecture. The arm64 lab emulates every
 * instruction, its nested guests' too: it takes minutes to boot and unpack
 * its initramfs (QEMU's included) before printing anything, and a nested
 * boot may take minutes more without a line.
 */
const LAB_LIMITS: Readonly<
  Record<LabArch, { timeoutSeconds: number; idleTimeoutSeconds?: number }>
> = {
  x86_64: { timeoutSeconds: 600 },
  aarch64: { timeoutSeconds: 2400, idleTimeoutSeconds: 1500 },
};

/** Where {@linkcode benchBootPlan} runs the bench, what it sees. */
export interface BenchBootHost {
  /** This host's architecture (`Deno.build.arch`). */
  arch: string;
  /** This host's KVM. */
  kvm: KvmHost;
}

/**
 * Reads `bench:boot`'s arguments (`--arch x86_64|aarch64`, default the
 * host's) and decides where the bench runs. Throws on an unknown option or
 * architecture.
 *
 * @example
 * ```ts
 * import { benchBootPlan } from "./bench_boot.ts";
 * const plan = benchBootPlan(["--arch", "aarch64"], {
 *   arch: "x86_64",
 *   kvm: { kind: "hardware", canOpen: true, reason: "vmx" },
 * });
 * console.assert(plan.where === "lab" && plan.arch === "aarch64");
 * ```
 */
export function benchBootPlan(
  args: string[],
  host: BenchBootHost,
): BenchBootPlan {
  const { values } = parseArgs({
    args,
    options: { arch: { type: "string" } },
    strict: true,
  });
  const arch = parseLabArch(values.arch ?? host.arch);
  const lab = (reason: string): BenchBootPlan => ({
    where: "lab",
    arch,
    reason,
    ...LAB_LIMITS[arch],
  });
  if (arch !== host.arch) return lab(`${arch} guests on an ${host.arch} host`);
  if (host.kvm.kind === "hardware") {
    return { where: "host", arch, reason: host.kvm.reason };
  }
  return lab(host.kvm.reason);
}

if (import.meta.main) {
  let plan: BenchBootPlan;
  try {
    plan = benchBootPlan(Deno.args, {
      arch: Deno.build.arch,
      kvm: detectKvmHost(),
    });
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    console.error("Usage: deno task bench:boot [--arch x86_64|aarch64]");
    Deno.exit(2);
  }
  const script = ["deno", "run", "-A", "--no-check", "bench/boot_bench.ts"];
  if (plan.where === "host") {
    console.error(
      `bench: ${plan.arch} on this host's /dev/kvm (${plan.reason})`,
    );
    const r = await new Deno.Command(Deno.execPath(), {
      args: script.slice(1),
      cwd: PROJECT_ROOT,
    }).spawn().status;
    Deno.exit(r.code);
  } else {
    console.error(
      `bench: ${plan.arch} inside the ${plan.arch} KVM lab, with QEMU carried for the peer (${plan.reason}; lab timeout ${plan.timeoutSeconds} s)`,
    );
    const r = await runInLabRetrying(script, {
      what: "the boot bench",
      log: (line) => console.error(`bench: ${line}`),
      cwd: PROJECT_ROOT,
      arch: plan.arch,
      peer: true,
      timeoutSeconds: plan.timeoutSeconds,
      idleTimeoutSeconds: plan.idleTimeoutSeconds,
    });
    if (r.error) console.error(`bench: ${r.error}`);
    Deno.exit(r.code);
  }
}
