// Hypervisor tests with tiny guests of our own; they need /dev/kvm (run by
// `deno task test` on the host, or inside the KVM lab where the host has none).
import { deepEqual, equal, ok } from "node:assert/strict";
import { needKvm } from "../../../tests/_gate.ts";
import type { IoAccess, MmioAccess, Segment, X86Sregs } from "../hv.ts";
import type { Kvm } from "./system.ts";

function realModeSeg(selector = 0, type = 3): Segment {
  return {
    base: BigInt(selector) << 4n,
    limit: 0xffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 0,
    g: 0,
    avl: 0,
  };
}

const REAL_MODE: Partial<X86Sregs> = {
  cs: realModeSeg(0, 0xb),
  ds: realModeSeg(),
  es: realModeSeg(),
  ss: realModeSeg(),
};

const PML4 = 0x2000n;
const MMIO_RESULT = 0x3000_0000n;

/** Identity-maps the first GiB with 2 MiB pages and returns long-mode sregs. */
function longMode(
  mem: {
    writeExact(a: bigint, b: Uint8Array): void;
    setU64(a: bigint, v: bigint): void;
  },
): Partial<X86Sregs> {
  mem.setU64(PML4, 0x3000n | 3n); // PML4[0] -> PDPT, present + writable
  mem.setU64(0x3000n, 0x4000n | 3n); // PDPT[0] -> PD
  for (let i = 0n; i < 512n; i++) {
    mem.setU64(0x4000n + i * 8n, (i << 21n) | 0x83n); // 2 MiB pages
  }
  // GDT: null, 64-bit code (0x08), data (0x10).
  mem.setU64(0x500n, 0n);
  mem.setU64(0x508n, 0x00af9b000000ffffn);
  mem.setU64(0x510n, 0x00cf93000000ffffn);
  const code: Segment = {
    base: 0n,
    limit: 0xffffffff,
    selector: 0x08,
    type: 0xb,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 1,
    g: 1,
    avl: 0,
  };
  const data: Segment = { ...code, selector: 0x10, type: 0x3, l: 0, db: 1 };
  return {
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    gdt: { base: 0x500n, limit: 23 },
    idt: { base: 0n, limit: 0 },
    cr0: 0x8000_0011n, // PG | ET | PE
    cr3: PML4,
    cr4: 0x20n, // PAE
    efer: 0x500n, // LMA | LME
  };
}

async function withVm(t: Deno.TestContext, body: (kvm: Kvm) => Promise<void>) {
  const kvm = await needKvm(t);
  if (!kvm) return;
  try {
    await body(kvm);
  } finally {
    kvm.close();
  }
}

Deno.test("a real-mode guest writes to an I/O port and halts", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(0n, 0x10000n);
      // mov al, 0x42; out 0x10, al; hlt
      vm.memory.writeExact(
        0x1000n,
        new Uint8Array([0xb0, 0x42, 0xe6, 0x10, 0xf4]),
      );
      const seen: IoAccess[] = [];
      const vcpu = await vm.startVcpu(0, {
        regs: { rip: 0x1000n },
        sregs: REAL_MODE,
        handlers: { io: (a) => seen.push({ ...a, data: a.data.slice() }) },
      });
      const outcome = await vcpu.done;
      equal(outcome.kind, "hlt");
      deepEqual(seen, [{
        port: 0x10,
        size: 1,
        direction: "out",
        data: new Uint8Array([0x42]),
      }]);
    } finally {
      await vm.close();
    }
  }));

Deno.test("a long-mode guest computes a sum and reports it through MMIO", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(0n, 0x100000n);
      const sregs = longMode(vm.memory);
      vm.memory.writeExact(
        0x10000n,
        new Uint8Array([
          0x31,
          0xc0, // xor eax, eax
          0xb9,
          0x64,
          0x00,
          0x00,
          0x00, // mov ecx, 100
          0x48,
          0x01,
          0xc8, // add rax, rcx
          0xff,
          0xc9, // dec ecx
          0x75,
          0xf9, // jnz -7
          0xbb,
          0x00,
          0x00,
          0x00,
          0x30, // mov ebx, 0x30000000
          0x48,
          0x89,
          0x03, // mov [rbx], rax
          0x48,
          0x8b,
          0x13, // mov rdx, [rbx]
          0xf4, // hlt
        ]),
      );
      const writes: MmioAccess[] = [];
      const vcpu = await vm.startVcpu(0, {
        regs: { rip: 0x10000n, rsp: 0x8000n },
        sregs,
        handlers: {
          mmio: (a) => {
            if (a.isWrite) writes.push({ ...a, data: a.data.slice() });
            else {new DataView(a.data.buffer, a.data.byteOffset).setBigUint64(
                0,
                0x1122334455667788n,
                true,
              );}
          },
        },
      });
      const outcome = await vcpu.done;
      equal(outcome.kind, "hlt");
      equal(writes.length, 1);
      equal(writes[0]!.addr, MMIO_RESULT);
      equal(new DataView(writes[0]!.data.buffer).getBigUint64(0, true), 5050n);
      if (outcome.kind !== "hlt") return;
      equal(outcome.regs.arch, "x86_64");
      if (outcome.regs.arch !== "x86_64") return;
      equal(outcome.regs.rax, 5050n);
      equal(outcome.regs.rdx, 0x1122334455667788n);
    } finally {
      await vm.close();
    }
  }));

Deno.test("two vCPUs in two Workers run at once", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(0n, 0x10000n);
      // Each vCPU raises its own flag, then waits for the other's: neither can
      // finish unless both run.
      const program = (mine: number, theirs: number, id: number) =>
        new Uint8Array([
          0xc6,
          0x06,
          mine & 0xff,
          mine >> 8,
          0x01, // mov byte [mine], 1
          0x80,
          0x3e,
          theirs & 0xff,
          theirs >> 8,
          0x01, // cmp byte [theirs], 1
          0x75,
          0xf9, // jne -7
          0xb0,
          id,
          0xe6,
          0x10, // mov al, id; out 0x10, al
          0xf4, // hlt
        ]);
      vm.memory.writeExact(0x1000n, program(0x800, 0x801, 0));
      vm.memory.writeExact(0x1100n, program(0x801, 0x800, 1));
      const ids: number[] = [];
      const io = (a: IoAccess) => ids.push(a.data[0]!);
      const a = await vm.startVcpu(0, {
        regs: { rip: 0x1000n },
        sregs: REAL_MODE,
        handlers: { io },
      });
      const b = await vm.startVcpu(1, {
        regs: { rip: 0x1100n },
        sregs: REAL_MODE,
        handlers: { io },
      });
      // Two vCPUs that cannot run at once would wait for each other forever:
      // stop them after a generous deadline so the test fails instead.
      const deadline = setTimeout(() => {
        a.stop();
        b.stop();
      }, 60_000);
      const [oa, ob] = await Promise.all([a.done, b.done]);
      clearTimeout(deadline);
      equal(oa.kind, "hlt");
      equal(ob.kind, "hlt");
      deepEqual(ids.sort(), [0, 1]);
    } finally {
      await vm.close();
    }
  }));

Deno.test("a guest that spins forever is stopped by the host", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(0n, 0x10000n);
      vm.memory.writeExact(0x1000n, new Uint8Array([0xeb, 0xfe])); // jmp $
      const vcpu = await vm.startVcpu(0, {
        regs: { rip: 0x1000n },
        sregs: REAL_MODE,
      });
      await new Promise((r) => setTimeout(r, 200));
      const requestedAt = performance.timeOrigin + performance.now();
      const outcome = await vcpu.stop();
      equal(outcome.kind, "stopped");
      if (outcome.kind !== "stopped") return;
      // It left the guest after the request (its latency is in bench:exit).
      ok(outcome.atMs >= requestedAt);
      equal(outcome.regs.arch, "x86_64");
      if (outcome.regs.arch !== "x86_64") return;
      equal(outcome.regs.rip, 0x1000n);
    } finally {
      await vm.close();
    }
  }));

Deno.test("a triple-faulting guest ends as a typed shutdown", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(0n, 0x100000n);
      const sregs = longMode(vm.memory);
      vm.memory.writeExact(0x10000n, new Uint8Array([0x0f, 0x0b])); // ud2 with no IDT
      const vcpu = await vm.startVcpu(0, { regs: { rip: 0x10000n }, sregs });
      equal((await vcpu.done).kind, "shutdown");
    } finally {
      await vm.close();
    }
  }));

Deno.test("a handler that throws ends the run as an error, not a hang", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      vm.addMemory(0n, 0x10000n);
      vm.memory.writeExact(0x1000n, new Uint8Array([0xe6, 0x10, 0xeb, 0xfc])); // out 0x10, al; jmp -4
      const vcpu = await vm.startVcpu(0, {
        regs: { rip: 0x1000n },
        sregs: REAL_MODE,
        handlers: {
          io: () => {
            throw new Error("device exploded");
          },
        },
      });
      const outcome = await vcpu.done;
      equal(outcome.kind, "error");
      if (outcome.kind === "error") {
        ok(outcome.message.includes("device exploded"), outcome.message);
      }
    } finally {
      await vm.close();
    }
  }));

Deno.test("KVM_CREATE_VCPU with an impossible id fails with EINVAL", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      const vcpu = await vm.startVcpu(1 << 20, { regs: { rip: 0n } });
      const outcome = await vcpu.done;
      equal(outcome.kind, "error");
      if (outcome.kind === "error") {
        ok(
          outcome.message.includes("KVM_CREATE_VCPU") &&
            outcome.message.includes("EINVAL"),
          outcome.message,
        );
      }
    } finally {
      await vm.close();
      await vm.close(); // twice is fine
    }
  }));

Deno.test("the in-kernel irqchip and PIT can be created and a line raised", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm({ irqchip: true });
    try {
      vm.setIrqLine(4, 1);
      vm.setIrqLine(4, 0);
      ok(kvm.supportedCpuid().byteLength > 8);
    } finally {
      await vm.close();
    }
  }));

Deno.test("an x86_64 KVM VM refuses arm64 registers", (t) =>
  withVm(t, async (kvm) => {
    const vm = kvm.createVm();
    try {
      let message = "";
      try {
        await vm.startVcpu(0, { arm64: { regs: { pc: 0x1000n } } });
      } catch (e) {
        message = e instanceof Error ? e.message : String(e);
      }
      equal(
        message,
        "Cannot start vCPU 0: it was given arm64 registers, and this KVM VM is x86_64",
      );
    } finally {
      await vm.close();
    }
  }));
