/**
 * The Hypervisor.framework backend against a stand-in library: gcc builds
 * `testdata/fake_hvf.c` (with and without the GIC functions) and the
 * backend opens it in place of the framework, on the main thread and in
 * each vCPU's Worker. The fake logs every call with its thread id and
 * enforces the framework's rules (see its header); the tests read the log
 * for call order and thread affinity, script guests for the exits, and make
 * calls fail for the error mapping. Needs gcc, and fails (does not skip)
 * without it.
 */

import assert from "node:assert/strict";
import type { MmioAccess, VcpuOutcome } from "../hv.ts";
import { HV_RETURN, HV_SYS_REG, HV_VCPU_EXIT, HvfError } from "./ffi.ts";
import { PSCI_FN } from "./exits.ts";
import { HvfHypervisor } from "./system.ts";

const FAKE_SYMBOLS = {
  fake_reset: { parameters: [], result: "void" },
  fake_fail_next: { parameters: ["buffer", "u32"], result: "void" },
  fake_push_exit: {
    parameters: ["u32", "u32", "u64", "u64", "u32", "u64"],
    result: "i32",
  },
  fake_log: { parameters: ["buffer", "usize"], result: "usize" },
  fake_gettid: { parameters: [], result: "i32" },
  fake_reg: { parameters: ["u64", "u32"], result: "u64" },
  fake_exit_layout: { parameters: ["buffer"], result: "void" },
  hv_vcpu_get_reg: { parameters: ["u64", "u32", "buffer"], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

type Fake = Deno.DynamicLibrary<typeof FAKE_SYMBOLS>;

/** `fake_push_exit`'s target for "write no register first". */
const NO_TARGET = 0xffff_ffff;
const EXIT = { CANCELED: 0, EXCEPTION: 1, VTIMER_ACTIVATED: 2 } as const;

/** ESR_EL2 with EC `ec`, IL set and ISS `iss`. */
function esr(ec: number, iss = 0n): bigint {
  return (BigInt(ec) << 26n) | (1n << 25n) | iss;
}

/** A data abort with a valid syndrome: `size` bytes through X`reg`. */
function dataAbort(
  o: { write: boolean; size: 1 | 2 | 4 | 8; reg: number; sf?: boolean },
): bigint {
  const sas = BigInt(Math.log2(o.size));
  return esr(
    0x24,
    (1n << 24n) | (sas << 22n) | (BigInt(o.reg) << 16n) |
      (o.sf ? 1n << 15n : 0n) | (o.write ? 1n << 6n : 0n),
  );
}

const HVC = esr(0x16);
const WFI = esr(0x01);
const WFE = esr(0x01, 1n);

// --- building and loading the fake -----------------------------------------

let built: Promise<{ plain: string; gic: string }> | undefined;

/** Builds the two fakes once per run, in a directory removed at exit. */
function fakes(): Promise<{ plain: string; gic: string }> {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "initx-fake-hvf-" });
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch {
        // Already gone.
      }
    });
    const source = new URL("./testdata/fake_hvf.c", import.meta.url).pathname;
    const plain = `${dir}/fake_hvf.so`;
    const gic = `${dir}/fake_hvf_gic.so`;
    for (
      const [out, defines] of [[plain, []], [gic, ["-DFAKE_GIC"]]] as const
    ) {
      let result;
      try {
        result = await new Deno.Command("gcc", {
          args: [
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-shared",
            "-fPIC",
            "-Wl,-Bsymbolic",
            ...defines,
            "-o",
            out,
            source,
            "-lpthread",
          ],
          stderr: "piped",
        }).output();
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) {
          throw new Error(
            "Cannot build the fake Hypervisor.framework: gcc is not installed; install it (apt-get install -y gcc)",
          );
        }
        throw e;
      }
      if (!result.success) {
        throw new Error(
          `Cannot build the fake Hypervisor.framework: ${
            new TextDecoder().decode(result.stderr)
          }`,
        );
      }
    }
    return { plain, gic };
  })();
  return built;
}

/** One line of the fake's log: the function, the thread and the fields. */
interface Call {
  fn: string;
  tid: number;
  fields: Record<string, string>;
  flags: string[];
}

function readLog(fake: Fake): Call[] {
  const buf = new Uint8Array(1 << 16);
  const n = Number(fake.symbols.fake_log(buf, BigInt(buf.length)));
  return new TextDecoder().decode(buf.subarray(0, n)).split("\n")
    .filter((line) => line.length > 0)
    .map((line) => {
      const [fn, ...words] = line.split(" ");
      const fields: Record<string, string> = {};
      const flags: string[] = [];
      for (const w of words) {
        const eq = w.indexOf("=");
        if (eq < 0) flags.push(w);
        else fields[w.slice(0, eq)] = w.slice(eq + 1);
      }
      return { fn: fn!, tid: Number(fields.tid), fields, flags };
    });
}

/** Queues exits for the vCPU made `index`-th. */
function script(
  fake: Fake,
  index: number,
  exits: {
    reason: number;
    syndrome?: bigint;
    ipa?: bigint;
    set?: { reg: number; value: bigint };
  }[],
): void {
  for (const e of exits) {
    assert.equal(
      fake.symbols.fake_push_exit(
        index,
        e.reason,
        e.syndrome ?? 0n,
        e.ipa ?? 0n,
        e.set?.reg ?? NO_TARGET,
        e.set?.value ?? 0n,
      ),
      1,
    );
  }
}

/** Resolves once `ready()` holds; fails after two seconds. */
async function until(ready: () => boolean): Promise<void> {
  const deadline = performance.now() + 2000;
  while (!ready()) {
    if (performance.now() > deadline) assert.fail("timed out waiting");
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** `promise`, or a failure after `ms` (a stop that never ends fails). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not done after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `body` with a fresh fake (`gic`: the variant with the GIC functions)
 * and a hypervisor that opens it; closes both after.
 */
async function withFake(
  options: { gic?: boolean },
  body: (fake: Fake, hvf: HvfHypervisor) => Promise<void>,
): Promise<void> {
  const paths = await fakes();
  const path = options.gic ? paths.gic : paths.plain;
  const fake = Deno.dlopen(path, FAKE_SYMBOLS);
  fake.symbols.fake_reset();
  const hvf = HvfHypervisor.open({ libraryPath: path });
  try {
    await body(fake, hvf);
  } finally {
    hvf.close();
    fake.close();
  }
}

const RAM_BASE = 0x4000_0000n;
const ENTRY = 0x4008_0000n;
const UART = 0x0900_0000n;

// --- tests ------------------------------------------------------------------

Deno.test("HV_VCPU_EXIT matches hv_vcpu_exit_t as the C compiler lays it out", async () => {
  const fake = Deno.dlopen((await fakes()).plain, FAKE_SYMBOLS);
  try {
    const layout = new BigUint64Array(5);
    fake.symbols.fake_exit_layout(layout);
    assert.deepEqual([...layout].map(Number), [
      HV_VCPU_EXIT.size,
      HV_VCPU_EXIT.reason,
      HV_VCPU_EXIT.syndrome,
      HV_VCPU_EXIT.virtualAddress,
      HV_VCPU_EXIT.physicalAddress,
    ]);
  } finally {
    fake.close();
  }
});

Deno.test("a guest's MMIO store and load reach the handlers, and PSCI SYSTEM_OFF ends the run as a shutdown", () =>
  withFake({}, async (fake, hvf) => {
    script(fake, 0, [
      // str w1, [UART]: W1 holds 0xdeadbeef.
      {
        reason: EXIT.EXCEPTION,
        syndrome: dataAbort({ write: true, size: 4, reg: 1 }),
        ipa: UART,
        set: { reg: 1, value: 0x1234_5678_dead_beefn },
      },
      // ldrh w5, [UART + 4]
      {
        reason: EXIT.EXCEPTION,
        syndrome: dataAbort({ write: false, size: 2, reg: 5 }),
        ipa: UART + 4n,
      },
      // hvc #0 with W0 = SYSTEM_OFF
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.SYSTEM_OFF) },
      },
    ]);
    const vm = hvf.createVm();
    const accesses: MmioAccess[] = [];
    let outcome: VcpuOutcome;
    try {
      vm.addMemory(RAM_BASE, 0x10_0000n);
      const vcpu = await vm.startVcpu(0, {
        arm64: { regs: { pc: ENTRY, x0: RAM_BASE + 0x8000n } },
        handlers: {
          mmio(a) {
            accesses.push({ ...a, data: a.data.slice() });
            if (!a.isWrite) a.data.set([0x34, 0x12]);
          },
        },
      });
      outcome = await vcpu.done;
      assert.equal(vcpu.exitCount(), 3);
    } finally {
      await vm.close();
    }

    assert.equal(outcome.kind, "system-event");
    if (outcome.kind !== "system-event") return;
    assert.equal(outcome.event, "shutdown");
    assert.equal(outcome.type, PSCI_FN.SYSTEM_OFF);
    assert.equal(outcome.regs.arch, "aarch64");
    if (outcome.regs.arch !== "aarch64") return;
    // Two MMIO accesses stepped past; the HVC left PC after itself.
    assert.equal(outcome.regs.pc, ENTRY + 8n);
    assert.equal(outcome.regs.x5, 0x1234n);
    assert.equal(outcome.regs.pstate, 0x3c5n);

    assert.deepEqual(accesses, [
      {
        addr: UART,
        isWrite: true,
        data: Uint8Array.of(0xef, 0xbe, 0xad, 0xde),
      },
      { addr: UART + 4n, isWrite: false, data: Uint8Array.of(0, 0) },
    ]);

    const log = readLog(fake);
    const mainTid = fake.symbols.fake_gettid();
    const order = (fn: string) => log.findIndex((c) => c.fn === fn);
    assert.ok(order("hv_vm_create") >= 0);
    assert.ok(order("hv_vm_create") < order("hv_vm_map"));
    assert.ok(order("hv_vm_map") < order("hv_vcpu_create"));
    assert.ok(order("hv_vcpu_destroy") < order("hv_vm_unmap"));
    assert.ok(order("hv_vm_unmap") < order("hv_vm_destroy"));
    // VM-wide calls on the owner's thread, vCPU calls all on one other.
    for (const c of log.filter((c) => c.fn.startsWith("hv_vm_"))) {
      assert.equal(c.tid, mainTid, c.fn);
    }
    const vcpuCalls = log.filter((c) => c.fn.startsWith("hv_vcpu_"));
    const vcpuTid = vcpuCalls[0]!.tid;
    assert.notEqual(vcpuTid, mainTid);
    for (const c of vcpuCalls) assert.equal(c.tid, vcpuTid, c.fn);
    assert.equal(log.filter((c) => c.flags.includes("AFFINITY")).length, 0);
    // The registers the backend set, and where each run began.
    const sysSets = log.filter((c) => c.fn === "hv_vcpu_set_sys_reg");
    assert.ok(
      sysSets.some((c) =>
        Number(c.fields.reg) === HV_SYS_REG.MPIDR_EL1 &&
        c.fields.value === "0x80000000"
      ),
    );
    assert.deepEqual(
      log.filter((c) => c.fn === "hv_vcpu_run").map((c) => c.fields.pc),
      ["0x40080000", "0x40080004", "0x40080008"],
    );
    assert.ok(
      log.some((c) =>
        c.fn === "hv_vcpu_set_reg" && c.fields.reg === "5" &&
        c.fields.value === "0x1234"
      ),
    );
  }));

Deno.test("a vCPU call from a thread that does not own the vCPU fails, and stop() ends a spinning guest", () =>
  withFake({}, async (fake, hvf) => {
    const vm = hvf.createVm();
    try {
      vm.addMemory(RAM_BASE, 0x4000n);
      // Nothing scripted: the guest spins in hv_vcpu_run.
      const vcpu = await vm.startVcpu(0, { arm64: { regs: { pc: ENTRY } } });
      const value = new BigUint64Array(1);
      assert.equal(
        fake.symbols.hv_vcpu_get_reg(0n, 31, value),
        HV_RETURN.HV_BAD_ARGUMENT,
      );
      // Stop it once it is inside hv_vcpu_run, so that the kick must end it.
      await until(() => readLog(fake).some((c) => c.fn === "hv_vcpu_run"));
      const outcome = await within(vcpu.stop(), 5000);
      assert.equal(outcome.kind, "stopped");
      if (outcome.kind === "stopped" && outcome.regs.arch === "aarch64") {
        assert.equal(outcome.regs.pc, ENTRY);
      } else assert.fail(`unexpected ${JSON.stringify(outcome.kind)}`);
    } finally {
      await vm.close();
    }
    const log = readLog(fake);
    const mainTid = fake.symbols.fake_gettid();
    const denied = log.filter((c) => c.flags.includes("AFFINITY"));
    assert.equal(denied.length, 1);
    assert.equal(denied[0]!.fn, "hv_vcpu_get_reg");
    assert.equal(denied[0]!.tid, mainTid);
    const kick = log.find((c) => c.fn === "hv_vcpus_exit");
    assert.equal(kick?.tid, mainTid);
    assert.ok(
      log.some((c) => c.fn === "hv_vcpu_run" && c.flags.includes("canceled")),
    );
  }));

Deno.test("HV_DENIED from hv_vm_create is the entitlement error", () =>
  withFake({}, async (fake, hvf) => {
    fake.symbols.fake_fail_next(
      new TextEncoder().encode("hv_vm_create\0"),
      HV_RETURN.HV_DENIED,
    );
    const e = (() => {
      try {
        hvf.createVm();
      } catch (e) {
        return e;
      }
      assert.fail("createVm() succeeded");
    })();
    assert.ok(e instanceof HvfError);
    assert.equal(e.fn, "hv_vm_create");
    assert.equal(e.codeName, "HV_DENIED");
    assert.match(
      e.message,
      /^Cannot create a Hypervisor\.framework VM: hv_vm_create returned HV_DENIED \(0xfae94007\); the deno binary must be signed with the com\.apple\.security\.hypervisor entitlement: codesign --sign - --force --entitlements hvf\.entitlements /,
    );
    assert.ok(e.message.includes(Deno.execPath()));
    // Nothing was made: the next attempt works.
    const vm = hvf.createVm();
    await vm.close();
  }));

Deno.test("a failing framework call is an HvfError naming the function and its hv_return_t", () =>
  withFake({}, async (fake, hvf) => {
    const vm = hvf.createVm();
    try {
      fake.symbols.fake_fail_next(
        new TextEncoder().encode("hv_vm_map\0"),
        HV_RETURN.HV_BAD_ARGUMENT,
      );
      assert.throws(() => vm.addMemory(RAM_BASE, 0x4000n), {
        name: "HvfError",
        fn: "hv_vm_map",
        codeName: "HV_BAD_ARGUMENT",
        message:
          "Cannot map guest memory: hv_vm_map returned HV_BAD_ARGUMENT (0xfae94003)",
      });
      // Not a 16 KiB multiple: refused before the framework is asked.
      assert.throws(
        () => vm.addMemory(RAM_BASE, 0x1000n),
        /base and size must be multiples of 16 KiB/,
      );
      assert.equal(vm.memory.size, 0n);
      fake.symbols.fake_fail_next(
        new TextEncoder().encode("hv_vcpu_create\0"),
        HV_RETURN.HV_NO_RESOURCES,
      );
      const vcpu = await vm.startVcpu(0, {});
      const outcome = await vcpu.done;
      assert.deepEqual(outcome, {
        kind: "error",
        message:
          "Cannot create a vCPU: hv_vcpu_create returned HV_NO_RESOURCES (0xfae94005)",
      });
    } finally {
      await vm.close();
    }
    assert.equal(
      readLog(fake).filter((c) => c.fn === "hv_vm_map").length,
      1,
    );
  }));

Deno.test("the framework allows one VM per process", () =>
  withFake({}, async (_fake, hvf) => {
    const vm = hvf.createVm();
    assert.throws(() => hvf.createVm(), /allows one per process/);
    await vm.close();
    const again = hvf.createVm();
    await again.close();
  }));

Deno.test("x86_64 registers are refused, arm64 ones taken", () =>
  withFake({}, async (_fake, hvf) => {
    const vm = hvf.createVm();
    try {
      await assert.rejects(
        vm.startVcpu(0, { regs: { rip: 0x1000n } }),
        /given x86_64 registers, and a Hypervisor\.framework VM is arm64/,
      );
    } finally {
      await vm.close();
    }
  }));

Deno.test("without hv_gic_create the GIC is a missing capability, not a crash", () =>
  withFake({}, async (_fake, hvf) => {
    assert.equal(hvf.hasGic, false);
    assert.throws(
      () => hvf.createVm({ irqchip: true }),
      /no hv_gic_create \(it needs macOS 15 or later\)/,
    );
    const vm = hvf.createVm();
    try {
      assert.throws(() => vm.setIrqLine(1, 1), /the VM has no GIC/);
    } finally {
      await vm.close();
    }
  }));

Deno.test("irqchip makes the GIC after the VM and before any vCPU, and setIrqLine drives SPIs", () =>
  withFake({ gic: true }, async (fake, hvf) => {
    assert.equal(hvf.hasGic, true);
    const vm = hvf.createVm({ irqchip: true });
    try {
      vm.addMemory(RAM_BASE, 0x4000n);
      const vcpu = await vm.startVcpu(0, { arm64: { regs: { pc: ENTRY } } });
      vm.setIrqLine(1, 1);
      vm.setIrqLine(1, 0);
      await vcpu.stop();
    } finally {
      await vm.close();
    }
    const log = readLog(fake);
    assert.deepEqual(
      log.filter((c) =>
        c.fn.startsWith("hv_gic_") || c.fn === "hv_vm_create" ||
        c.fn === "hv_vcpu_create"
      ).map((
        c,
      ) => [c.fn, c.fields.base ?? c.fields.intid ?? "", c.fields.level ?? ""]),
      [
        ["hv_vm_create", "", ""],
        ["hv_gic_config_create", "", ""],
        ["hv_gic_config_set_distributor_base", "0x8000000", ""],
        ["hv_gic_config_set_redistributor_base", "0x80a0000", ""],
        ["hv_gic_create", "", ""],
        ["hv_vcpu_create", "", ""],
        ["hv_gic_set_spi", "33", "1"],
        ["hv_gic_set_spi", "33", "0"],
      ],
    );
    assert.ok(
      log.every((c) => c.fields.ret === undefined || c.fields.ret === "0x0"),
    );
  }));

Deno.test("PSCI CPU_ON powers on a secondary vCPU at its entry point with its context id", () =>
  withFake({}, async (fake, hvf) => {
    const SECONDARY_ENTRY = 0x4010_0000n;
    const CONTEXT = 0xc0ffeen;
    // vCPU 1 is made first (index 0 in the fake): it waits for CPU_ON, then
    // spins. vCPU 0, the boot vCPU, is made second (index 1).
    script(fake, 1, [
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.CPU_ON_64) },
      },
      // wfe, while the guest clears X2 for AFFINITY_INFO's level 0.
      { reason: EXIT.EXCEPTION, syndrome: WFE, set: { reg: 2, value: 0n } },
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.AFFINITY_INFO_64) },
      },
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.CPU_ON_64) },
      },
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.VERSION) },
      },
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.SYSTEM_OFF) },
      },
    ]);
    const vm = hvf.createVm();
    let secondary: VcpuOutcome;
    let boot: VcpuOutcome;
    try {
      vm.addMemory(RAM_BASE, 0x4000n);
      const ap = await vm.startVcpu(1, { arm64: { poweredOff: true } });
      const bsp = await vm.startVcpu(0, {
        arm64: {
          regs: {
            pc: ENTRY,
            x1: 0x8000_0001n, // vCPU 1's MPIDR
            x2: SECONDARY_ENTRY,
            x3: CONTEXT,
          },
        },
      });
      boot = await bsp.done;
      // The secondary (index 0 in the fake) runs the empty guest: it spins.
      await until(() =>
        readLog(fake).some((c) =>
          c.fn === "hv_vcpu_run" && c.fields.vcpu === "0"
        )
      );
      secondary = await within(ap.stop(), 5000);
    } finally {
      await vm.close();
    }
    assert.equal(boot.kind, "system-event");
    assert.equal(secondary.kind, "stopped");
    if (secondary.kind !== "stopped" || secondary.regs.arch !== "aarch64") {
      return;
    }
    assert.equal(secondary.regs.pc, SECONDARY_ENTRY);
    assert.equal(secondary.regs.x0, CONTEXT);
    assert.equal(secondary.regs.pstate, 0x3c5n);

    const log = readLog(fake);
    // The boot vCPU's X0 after each call: SUCCESS, ON, ALREADY_ON, 0.2.
    const results = log.filter((c) =>
      c.fn === "hv_vcpu_set_reg" && c.fields.vcpu === "1" &&
      c.fields.reg === "0"
    ).map((c) => BigInt(c.fields.value!));
    assert.deepEqual(results, [0n, 0n, 2n ** 64n - 4n, 2n]);
    // The secondary first ran after the CPU_ON, where it said.
    const firstRun = log.find((c) =>
      c.fn === "hv_vcpu_run" && c.fields.vcpu === "0"
    );
    assert.equal(firstRun?.fields.pc, "0x40100000");
    assert.ok(
      log.indexOf(firstRun!) >
        log.findIndex((c) => c.fn === "hv_vcpu_run" && c.fields.vcpu === "1"),
    );
  }));

Deno.test("a fired virtual timer raises the IRQ input until the guest stops it, then is unmasked", () =>
  withFake({}, async (fake, hvf) => {
    const CNTV_CTL = HV_SYS_REG.CNTV_CTL_EL0;
    script(fake, 0, [
      // ENABLE | ISTATUS: the timer fires.
      {
        reason: EXIT.VTIMER_ACTIVATED,
        set: { reg: CNTV_CTL, value: 5n },
      },
      // The guest's handler disables the timer, then waits (WFE).
      {
        reason: EXIT.EXCEPTION,
        syndrome: WFE,
        set: { reg: CNTV_CTL, value: 0n },
      },
      {
        reason: EXIT.EXCEPTION,
        syndrome: HVC,
        set: { reg: 0, value: BigInt(PSCI_FN.SYSTEM_RESET) },
      },
    ]);
    const vm = hvf.createVm();
    let outcome: VcpuOutcome;
    try {
      vm.addMemory(RAM_BASE, 0x4000n);
      const vcpu = await vm.startVcpu(0, { arm64: { regs: { pc: ENTRY } } });
      outcome = await vcpu.done;
    } finally {
      await vm.close();
    }
    assert.equal(outcome.kind, "system-event");
    if (outcome.kind === "system-event") assert.equal(outcome.event, "reset");
    const log = readLog(fake).filter((c) =>
      c.fn === "hv_vcpu_run" || c.fn === "hv_vcpu_set_pending_interrupt" ||
      c.fn === "hv_vcpu_set_vtimer_mask"
    ).map((c) =>
      c.fn === "hv_vcpu_run"
        ? "run"
        : `${c.fn} ${c.fields.pending ?? c.fields.masked}`
    );
    assert.deepEqual(log, [
      "run",
      "hv_vcpu_set_pending_interrupt 1",
      "run",
      "hv_vcpu_set_pending_interrupt 0",
      "hv_vcpu_set_vtimer_mask 0",
      "run",
    ]);
  }));

Deno.test("WFI with nothing to wake the guest ends the run as hlt, an unhandled trap as unsupported", () =>
  withFake({}, async (fake, hvf) => {
    const SYS64 = esr(0x18, 0x30_0000n);
    script(fake, 0, [{ reason: EXIT.EXCEPTION, syndrome: WFI }]);
    script(fake, 1, [{ reason: EXIT.EXCEPTION, syndrome: SYS64 }]);
    const vm = hvf.createVm();
    let halted: VcpuOutcome;
    let trapped: VcpuOutcome;
    try {
      vm.addMemory(RAM_BASE, 0x4000n);
      halted = await (await vm.startVcpu(0, {
        arm64: { regs: { pc: ENTRY } },
      })).done;
      trapped = await (await vm.startVcpu(1, {
        arm64: { regs: { pc: ENTRY } },
      })).done;
    } finally {
      await vm.close();
    }
    assert.equal(halted.kind, "hlt");
    if (halted.kind === "hlt" && halted.regs.arch === "aarch64") {
      assert.equal(halted.regs.pc, ENTRY + 4n);
    }
    assert.equal(trapped.kind, "unsupported");
    if (trapped.kind === "unsupported") {
      assert.equal(trapped.exitReason, EXIT.EXCEPTION);
      assert.equal(trapped.syndrome, SYS64);
    }
  }));

Deno.test("a powered-off vCPU nobody powers on never runs, and close() stops it", () =>
  withFake({}, async (fake, hvf) => {
    const vm = hvf.createVm();
    let outcome: Promise<VcpuOutcome>;
    try {
      vm.addMemory(RAM_BASE, 0x4000n);
      const vcpu = await vm.startVcpu(2, { arm64: { poweredOff: true } });
      outcome = vcpu.done;
    } finally {
      await within(vm.close(), 5000);
    }
    assert.equal((await outcome).kind, "stopped");
    const log = readLog(fake);
    assert.ok(log.some((c) => c.fn === "hv_vcpu_create"));
    assert.ok(log.some((c) => c.fn === "hv_vcpu_destroy"));
    assert.equal(log.filter((c) => c.fn === "hv_vcpu_run").length, 0);
    // vCPU 2's default MPIDR: Aff0 = 2.
    assert.ok(log.some((c) =>
      c.fn === "hv_vcpu_set_sys_reg" &&
      Number(c.fields.reg) === HV_SYS_REG.MPIDR_EL1 &&
      c.fields.value === "0x80000002"
    ));
  }));
