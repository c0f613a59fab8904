// The KVM backend on arm64, with tiny guests of our own: hand-encoded A64
// instructions at 0x4000_0000 (RAM there, as in initx's arm64 machine),
// MMIO at 0x0900_0000 (no RAM), PSCI through HVC #0. They need an arm64
// host with /dev/kvm: `deno task test` runs this file there, or in the
// arm64 KVM lab. Each instruction's assembly is beside its word, as GNU
// as/objdump for aarch64 read them.
import {
  deepEqual,
  equal,
  match,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import { needKvm } from "../../../tests/_gate.ts";
import type { HvVcpu, MmioAccess, VcpuOutcome } from "../hv.ts";
import type { Kvm } from "./system.ts";

const ON_ARM64 = Deno.build.arch === "aarch64";
const RAM = 0x4000_0000n;
const RAM_BYTES = 0x10_0000n;
const MMIO = 0x0900_0000n;
/** PSCI SYSTEM_OFF (SMC32 id) in W0. */
const SYSTEM_OFF = [
  0x52800100, // mov w0, #0x8
  0x72b08000, // movk w0, #0x8400, lsl #16
  0xd4000002, // hvc #0
] as const;
/** `b .`: spin. */
const SPIN = 0x14000000;
/** Generous: the emulated lab runs a guest instruction in microseconds. */
const DEADLINE_MS = 120_000;

function code(words: readonly number[]): Uint8Array {
  const bytes = new Uint8Array(words.length * 4);
  const view = new DataView(bytes.buffer);
  words.forEach((w, i) => view.setUint32(i * 4, w, true));
  return bytes;
}

function u64(data: Uint8Array): bigint {
  const padded = new Uint8Array(8);
  padded.set(data.subarray(0, 8));
  return new DataView(padded.buffer).getBigUint64(0, true);
}

/** Records MMIO accesses (with the bytes written), answering reads with `read`. */
function recorder(read = 0n) {
  const seen: { addr: bigint; isWrite: boolean; value: bigint }[] = [];
  const mmio = (a: MmioAccess) => {
    if (!a.isWrite) {
      const v = new DataView(a.data.buffer, a.data.byteOffset, a.data.length);
      for (let i = 0; i < a.data.length; i++) {
        v.setUint8(i, Number((read >> BigInt(8 * i)) & 0xffn));
      }
    }
    seen.push({ addr: a.addr, isWrite: a.isWrite, value: u64(a.data) });
  };
  return { seen, mmio };
}

/** Waits for `vcpu`'s outcome; a guest gone astray is stopped, not waited for. */
async function outcomeOf(vcpu: HvVcpu): Promise<VcpuOutcome> {
  const deadline = setTimeout(() => vcpu.stop(), DEADLINE_MS);
  try {
    return await vcpu.done;
  } finally {
    clearTimeout(deadline);
  }
}

async function withVm(t: Deno.TestContext, body: (kvm: Kvm) => Promise<void>) {
  const kvm = await needKvm(t);
  if (!kvm) return;
  try {
    equal(kvm.arch, "aarch64");
    await body(kvm);
  } finally {
    kvm.close();
  }
}

function arm64Test(name: string, fn: (kvm: Kvm) => Promise<void>) {
  Deno.test({ name, ignore: !ON_ARM64, fn: (t) => withVm(t, fn) });
}

arm64Test(
  "a guest stores and loads MMIO words, then powers off with PSCI",
  async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(RAM, RAM_BYTES);
      vm.memory.writeExact(
        RAM,
        code([
          0xd2a12001, // mov x1, #0x9000000
          0x52824682, // mov w2, #0x1234
          0x72b95fc2, // movk w2, #0xcafe, lsl #16
          0xb9000022, // str w2, [x1]
          0xb9400423, // ldr w3, [x1, #4]
          0xd2a80004, // mov x4, #0x40000000
          0xf2820004, // movk x4, #0x1000
          0xb9000083, // str w3, [x4]
          ...SYSTEM_OFF,
          SPIN,
        ]),
      );
      const { seen, mmio } = recorder(0xdead_beefn);
      const vcpu = await vm.startVcpu(0, {
        arm64: { regs: { pc: RAM } },
        handlers: { mmio },
      });
      const outcome = await outcomeOf(vcpu);
      equal(outcome.kind, "system-event", JSON.stringify(outcome, bigints));
      if (outcome.kind !== "system-event") return;
      equal(outcome.event, "shutdown");
      equal(outcome.type, 1); // KVM_SYSTEM_EVENT_SHUTDOWN
      equal(outcome.regs.arch, "aarch64");
      deepEqual(seen, [
        { addr: MMIO, isWrite: true, value: 0xcafe_1234n },
        { addr: MMIO + 4n, isWrite: false, value: 0xdead_beefn },
      ]);
      const stored = new Uint8Array(4);
      vm.memory.readExact(RAM + 0x1000n, stored);
      equal(new DataView(stored.buffer).getUint32(0, true), 0xdead_beef);
    } finally {
      await vm.close();
    }
  },
);

arm64Test(
  "registers and system registers given at start reach the guest and its outcome",
  async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(RAM, RAM_BYTES);
      const program = [
        0xf90000a0, // str x0, [x5]
        0xf90004a1, // str x1, [x5, #8]
        0xf90008a2, // str x2, [x5, #16]
        0xf9000ca3, // str x3, [x5, #24]
        0xd538d086, // mrs x6, tpidr_el1
        0xf90010a6, // str x6, [x5, #32]
        0xd5384106, // mrs x6, sp_el0
        0xf90014a6, // str x6, [x5, #40]
        0xd5384026, // mrs x6, elr_el1
        0xf90018a6, // str x6, [x5, #48]
        0xd5384006, // mrs x6, spsr_el1
        0xf9001ca6, // str x6, [x5, #56]
        0x910003e6, // mov x6, sp
        0xf90020a6, // str x6, [x5, #64]
        ...SYSTEM_OFF,
        SPIN,
      ];
      const entry = RAM + 0x2000n;
      vm.memory.writeExact(entry, code(program));
      const { seen, mmio } = recorder();
      const vcpu = await vm.startVcpu(0, {
        arm64: {
          regs: {
            x0: 0x1111_0000_0000_0001n,
            x1: 0x2222n,
            x2: 0x3333n,
            x3: 0xffff_ffff_ffff_fff4n,
            x4: 0x4444n,
            x5: MMIO,
            x30: 0x3030n,
            sp: RAM + 0x8000n,
            pc: entry,
          },
          sysRegs: {
            tpidr_el1: 0x7777n,
            sp_el0: RAM + 0x9000n,
            elr_el1: 0x4000_1234n,
            spsr_el1: 0x3c4n,
          },
        },
        handlers: { mmio },
      });
      const outcome = await outcomeOf(vcpu);
      equal(outcome.kind, "system-event", JSON.stringify(outcome, bigints));
      if (outcome.kind !== "system-event") return;
      deepEqual(seen.map((s) => s.value), [
        0x1111_0000_0000_0001n,
        0x2222n,
        0x3333n,
        0xffff_ffff_ffff_fff4n,
        0x7777n,
        RAM + 0x9000n,
        0x4000_1234n,
        0x3c4n,
        RAM + 0x8000n,
      ]);
      deepEqual(
        seen.map((s) => s.addr),
        seen.map((_, i) => MMIO + 8n * BigInt(i)),
      );
      const regs = outcome.regs;
      equal(regs.arch, "aarch64");
      if (regs.arch !== "aarch64") return;
      // KVM's PSCI wrote its results to x0-x3 (SYSTEM_OFF has none: zeros);
      // the other registers are as the guest left them.
      equal(regs.x1, 0n);
      equal(regs.x4, 0x4444n);
      equal(regs.x5, MMIO);
      equal(regs.x6, RAM + 0x8000n);
      equal(regs.x30, 0x3030n);
      equal(regs.sp, RAM + 0x8000n);
      // HVC's return address is the next instruction.
      equal(regs.pc, entry + BigInt(4 * (program.length - 1)));
      equal(regs.pstate & 0xfn, 0x5n, "EL1h");
      equal(regs.pstate & 0x3c0n, 0x3c0n, "D, A, I and F masked");
    } finally {
      await vm.close();
    }
  },
);

arm64Test("a guest that spins forever is stopped by the host", async (kvm) => {
  const vm = kvm.createVm();
  try {
    vm.addMemory(RAM, RAM_BYTES);
    vm.memory.writeExact(RAM, code([SPIN]));
    const vcpu = await vm.startVcpu(0, { arm64: { regs: { pc: RAM } } });
    await new Promise((r) => setTimeout(r, 200));
    const requestedAt = performance.timeOrigin + performance.now();
    const outcome = await vcpu.stop();
    equal(outcome.kind, "stopped");
    if (outcome.kind !== "stopped") return;
    ok(outcome.atMs >= requestedAt);
    equal(outcome.regs.arch, "aarch64");
    if (outcome.regs.arch === "aarch64") equal(outcome.regs.pc, RAM);
  } finally {
    await vm.close();
  }
});

arm64Test(
  "with a GIC, vCPU 0 powers vCPU 1 on with PSCI CPU_ON",
  async (kvm) => {
    const vm = kvm.createVm({ irqchip: true });
    try {
      vm.addMemory(RAM, RAM_BYTES);
      // vCPU 0: CPU_ON(MPIDR 1, 0x4000_0100, context 0x77), report the result,
      // wait for vCPU 1's flag at 0x4000_2000, power the system off.
      vm.memory.writeExact(
        RAM,
        code([
          0x52800060, // mov w0, #0x3
          0x72b88000, // movk w0, #0xc400, lsl #16
          0xd2800021, // mov x1, #0x1
          0xd2802002, // mov x2, #0x100
          0xf2a80002, // movk x2, #0x4000, lsl #16
          0xd2800ee3, // mov x3, #0x77
          0xd4000002, // hvc #0
          0xd2a12005, // mov x5, #0x9000000
          0xf90000a0, // str x0, [x5]
          0xd2840006, // mov x6, #0x2000
          0xf2a80006, // movk x6, #0x4000, lsl #16
          0xf94000c7, // 1: ldr x7, [x6]
          0xb4ffffe7, // cbz x7, 1b
          ...SYSTEM_OFF,
          SPIN,
        ]),
      );
      // vCPU 1: report its context id and MPIDR, raise the flag, spin.
      vm.memory.writeExact(
        RAM + 0x100n,
        code([
          0xd2a12005, // mov x5, #0x9000000
          0xf90004a0, // str x0, [x5, #8]
          0xd53800a1, // mrs x1, mpidr_el1
          0xf90008a1, // str x1, [x5, #16]
          0xd2840006, // mov x6, #0x2000
          0xf2a80006, // movk x6, #0x4000, lsl #16
          0xd2800027, // mov x7, #0x1
          0xf90000c7, // str x7, [x6]
          SPIN,
        ]),
      );
      const { seen, mmio } = recorder();
      // Secondaries first: vCPU 0's start initializes the GIC.
      const second = await vm.startVcpu(1, {
        arm64: { poweredOff: true },
        handlers: { mmio },
      });
      const boot = await vm.startVcpu(0, {
        arm64: { regs: { pc: RAM } },
        handlers: { mmio },
      });
      const outcome = await outcomeOf(boot);
      equal(outcome.kind, "system-event", JSON.stringify(outcome, bigints));
      if (outcome.kind === "system-event") equal(outcome.event, "shutdown");
      // SYSTEM_OFF powered vCPU 1 off as well: it sleeps in KVM_RUN.
      equal((await second.stop()).kind, "stopped");
      const byAddr = new Map(seen.map((s) => [s.addr, s.value]));
      equal(byAddr.get(MMIO), 0n, "CPU_ON returned PSCI_RET_SUCCESS");
      equal(byAddr.get(MMIO + 8n), 0x77n, "the context id reached vCPU 1's x0");
      equal(
        byAddr.get(MMIO + 16n)! & 0xff_ffffn,
        1n,
        "vCPU 1's MPIDR affinity",
      );
    } finally {
      await vm.close();
    }
  },
);

arm64Test(
  "setIrqLine() needs the GIC, initialized by vCPU 0's start",
  async (kvm) => {
    const plain = kvm.createVm();
    try {
      throws(() => plain.setIrqLine(1, 1), /the VM has no GIC/);
    } finally {
      await plain.close();
    }
    const vm = kvm.createVm({ irqchip: true });
    try {
      vm.addMemory(RAM, RAM_BYTES);
      vm.memory.writeExact(RAM, code([SPIN]));
      throws(
        () => vm.setIrqLine(1, 1),
        /the GIC is initialized when vCPU 0 starts, and it has not/,
      );
      const vcpu = await vm.startVcpu(0, { arm64: { regs: { pc: RAM } } });
      vm.setIrqLine(1, 1);
      vm.setIrqLine(1, 0);
      vm.setIrqLine(47, 1);
      throws(() => vm.setIrqLine(988, 1), /a GICv3 SPI is 0 to 987/);
      equal((await vcpu.stop()).kind, "stopped");
    } finally {
      await vm.close();
    }
  },
);

arm64Test(
  "a vCPU started after vCPU 0, or with x86 registers, is refused",
  async (kvm) => {
    const vm = kvm.createVm({ irqchip: true });
    try {
      vm.addMemory(RAM, RAM_BYTES);
      vm.memory.writeExact(RAM, code([SPIN]));
      await rejects(
        vm.startVcpu(0, { regs: { rip: 0x1000n } }),
        /Cannot start vCPU 0: it was given x86_64 registers, and this KVM VM is arm64/,
      );
      const boot = await vm.startVcpu(0, { arm64: { regs: { pc: RAM } } });
      await rejects(
        vm.startVcpu(1, { arm64: { poweredOff: true } }),
        /Cannot start vCPU 1: vCPU 0 has started, and an arm64 VM's vCPUs must all start before it/,
      );
      equal((await boot.stop()).kind, "stopped");
    } finally {
      await vm.close();
    }
  },
);

arm64Test(
  "stop() and close() end vCPUs still waiting at the gate",
  async (kvm) => {
    const vm = kvm.createVm({ irqchip: true });
    vm.addMemory(RAM, RAM_BYTES);
    const first = await vm.startVcpu(2, { arm64: { poweredOff: true } });
    const second = await vm.startVcpu(1, { arm64: { poweredOff: true } });
    const outcome = await first.stop();
    equal(outcome.kind, "stopped");
    equal(outcome.kind === "stopped" && outcome.regs.arch, "aarch64");
    // vCPU 0 never started: close() opens no gate but stops what waits there.
    await vm.close();
    equal((await second.done).kind, "stopped");
  },
);

arm64Test(
  "an MMIO access KVM cannot decode ends the run with a clear error",
  async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(RAM, RAM_BYTES);
      vm.memory.writeExact(
        RAM,
        code([
          0xd2a12005, // mov x5, #0x9000000
          0xa90008a1, // stp x1, x2, [x5]
          SPIN,
        ]),
      );
      // Should a kernel inject an abort into the guest instead, its vector
      // (VBAR_EL1 + 0x200: synchronous, current EL, SP_ELx) reports ESR_EL1.
      const vbar = RAM + 0x800n;
      vm.memory.writeExact(
        vbar + 0x200n,
        code([
          0xd2a12005, // mov x5, #0x9000000
          0xd5385201, // mrs x1, esr_el1
          0xf90080a1, // str x1, [x5, #256]
          ...SYSTEM_OFF,
          SPIN,
        ]),
      );
      const { seen, mmio } = recorder();
      const vcpu = await vm.startVcpu(0, {
        arm64: { regs: { pc: RAM }, sysRegs: { vbar_el1: vbar } },
        handlers: { mmio },
      });
      const outcome = await outcomeOf(vcpu);
      if (outcome.kind === "error") {
        match(outcome.message, /KVM_RUN failed with ENOSYS at pc 0x40000004/);
        match(outcome.message, /a data abort without a valid syndrome/);
      } else {
        equal(outcome.kind, "system-event", JSON.stringify(outcome, bigints));
        equal(seen.at(-1)?.addr, MMIO + 0x100n);
      }
    } finally {
      await vm.close();
    }
  },
);

function bigints(_key: string, value: unknown) {
  return typeof value === "bigint" ? `0x${value.toString(16)}` : value;
}
