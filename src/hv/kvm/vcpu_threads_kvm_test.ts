// vCPU threads taken ahead and reused: the pool on its own (no /dev/kvm
// needed), then threads that serve the vCPUs of one VM after another and the
// boot vCPU's thread taken while the other vCPUs start (need /dev/kvm). The
// VMs are made by hand, on a pool the test can see.
import { equal, ok } from "node:assert/strict";
import { libc, O_CLOEXEC, O_RDWR } from "../../../ffi/libc.ts";
import { KVM } from "../../../ffi/kvm.ts";
import { needKvm } from "../../../tests/_gate.ts";
import type { IoAccess, Segment, X86Sregs } from "../hv.ts";
import { KVM_DEVICE } from "./system.ts";
import { VcpuThreadPool } from "./vcpu.ts";
import { KvmVm } from "./vm.ts";

function realModeSeg(type: number): Segment {
  return {
    base: 0n,
    limit: 0xffff,
    selector: 0,
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
  cs: realModeSeg(0xb),
  ds: realModeSeg(3),
  es: realModeSeg(3),
  ss: realModeSeg(3),
};

/** `mov al, 0x42; out 0x10, al; hlt`. */
const OUT_HLT = new Uint8Array([0xb0, 0x42, 0xe6, 0x10, 0xf4]);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("VcpuThreadPool.take() starts a thread only when none is idle", () => {
  const threads = new VcpuThreadPool();
  const taken: Worker[] = [];
  try {
    const first = threads.take();
    equal(threads.started, 1);
    threads.give(first);
    equal(threads.idleCount, 1);
    equal(threads.take(), first, "the idle thread comes back first");
    equal(threads.started, 1);
    taken.push(first, threads.take());
    equal(threads.started, 2);
  } finally {
    for (const w of taken) threads.give(w);
    equal(threads.idleCount, 2);
    threads.close();
    equal(threads.idleCount, 0);
  }
});

Deno.test("VcpuThreadPool.close() ends the idle threads and those given back later", () => {
  const threads = new VcpuThreadPool();
  const late = threads.take();
  threads.give(threads.take());
  threads.close();
  equal(threads.idleCount, 0);
  threads.give(late);
  equal(threads.idleCount, 0);
});

Deno.test("VcpuThreadPool ends a thread left idle for its idle time", async () => {
  const threads = new VcpuThreadPool({ idleMs: 20 });
  try {
    threads.give(threads.take());
    equal(threads.idleCount, 1);
    await sleep(200);
    equal(threads.idleCount, 0);
  } finally {
    threads.close();
  }
});

Deno.test("a vCPU thread serves the vCPUs of one VM after another", async (t) => {
  if (!await haveKvm(t)) return;
  const threads = new VcpuThreadPool();
  try {
    for (let round = 0; round < 3; round++) {
      const vm = new KvmVm(createVmFd(), { mmapSize: vcpuMmapSize(), threads });
      try {
        vm.addMemory(0n, 0x10000n);
        vm.memory.writeExact(0x1000n, OUT_HLT);
        const seen: number[] = [];
        const vcpu = await vm.startVcpu(0, {
          regs: { rip: 0x1000n },
          sregs: REAL_MODE,
          handlers: { io: (a: IoAccess) => seen.push(a.port, a.data[0]!) },
        });
        const outcome = await vcpu.done;
        equal(outcome.kind, "hlt", `round ${round}: ${outcome.kind}`);
        equal(seen.join(","), "16,66", `round ${round}`);
      } finally {
        await vm.close();
      }
    }
    equal(threads.started, 1, "one thread for the three VMs");
    equal(threads.idleCount, 1);
  } finally {
    threads.close();
  }
});

Deno.test("vCPUs started before the boot vCPU leave it a thread taken ahead", async (t) => {
  if (!await haveKvm(t)) return;
  const threads = new VcpuThreadPool();
  const vm = new KvmVm(createVmFd(), { mmapSize: vcpuMmapSize(), threads });
  try {
    equal(threads.started, 1, "the VM takes the first thread at once");
    vm.addMemory(0n, 0x10000n);
    vm.memory.writeExact(0x1000n, OUT_HLT);
    const init = { regs: { rip: 0x1000n }, sregs: REAL_MODE };
    const others = [2, 1].map((id) => vm.startVcpu(id, init));
    equal(threads.started, 3, "each one takes the next thread ahead");
    const boot = vm.startVcpu(0, init);
    equal(threads.started, 3, "the boot vCPU takes none further");
    const vcpus = await Promise.all([...others, boot]);
    const outcomes = await Promise.all(vcpus.map((v) => v.done));
    ok(
      outcomes.every((o) => o.kind === "hlt"),
      outcomes.map((o) => o.kind).join(", "),
    );
    await vm.close();
    equal(threads.idleCount, 3, "the three threads wait for the next VM");
  } finally {
    await vm.close();
    threads.close();
  }
});

/** Whether `/dev/kvm` opens (else a loud skip, or a failure in CI). */
async function haveKvm(t: Deno.TestContext): Promise<boolean> {
  const kvm = await needKvm(t);
  kvm?.close();
  return kvm !== undefined;
}

/** `KVM_CREATE_VM` on a `/dev/kvm` fd of the test's own. */
function createVmFd(): number {
  const c = libc();
  const sys = c.open(KVM_DEVICE, O_RDWR | O_CLOEXEC);
  try {
    return c.ioctl(sys, KVM.CREATE_VM, 0, "KVM_CREATE_VM");
  } finally {
    c.close(sys);
  }
}

function vcpuMmapSize(): number {
  const c = libc();
  const sys = c.open(KVM_DEVICE, O_RDWR | O_CLOEXEC);
  try {
    return c.ioctl(sys, KVM.GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  } finally {
    c.close(sys);
  }
}
