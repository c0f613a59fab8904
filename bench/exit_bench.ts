/**
 * The KVM exit round trip through initx's own vCPU path, against the C floor
 * (`bench/kvm_exit_floor.c`) in the same run. The guest loops on
 * `out 0x10, al; inc al; jmp`, so every iteration is one `KVM_EXIT_IO`.
 *
 * Two initx paths are measured:
 * - sink: port 0x10 is a sink port, handled on the vCPU's own thread (the
 *   path of every exit that needs no reply, such as a debug port);
 * - handler: port 0x10 goes to a handler on the owning thread, with a
 *   round trip through the shared control block.
 *
 * Run by `deno task bench:exit`, which picks the host or the KVM lab and
 * builds the C floor. `INITX_C_FLOOR` is the C floor's binary. Needs /dev/kvm.
 *
 * @module
 */

import { Kvm } from "../src/hv/kvm/system.ts";
import type { Segment } from "../src/hv/hv.ts";

const ROUNDS = Number(Deno.env.get("INITX_BENCH_ROUNDS") ?? 5);
const WINDOW_MS = Number(Deno.env.get("INITX_BENCH_WINDOW_MS") ?? 1500);
const GUEST = new Uint8Array([0xe6, 0x10, 0xfe, 0xc0, 0xeb, 0xfa]); // out 0x10,al; inc al; jmp -6

function seg(type: number): Segment {
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

/** Microseconds per exit through initx's vCPU path, in steady state. */
async function initxRound(kvm: Kvm, path: "sink" | "handler"): Promise<number> {
  const vm = kvm.createVm();
  try {
    vm.addMemory(0n, 0x200000n);
    vm.memory.writeExact(0x1000n, GUEST);
    let handled = 0;
    const vcpu = await vm.startVcpu(0, {
      regs: { rip: 0x1000n },
      sregs: { cs: seg(0xb), ds: seg(3), es: seg(3), ss: seg(3) },
      sinkPorts: path === "sink" ? [0x10] : [],
      handlers: { io: () => handled++ },
    });
    // Warm up, then time a window of steady-state exits.
    await new Promise((r) => setTimeout(r, 300));
    const c0 = vcpu.exitCount();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, WINDOW_MS));
    const c1 = vcpu.exitCount();
    const t1 = performance.now();
    await vcpu.stop();
    if (path === "handler" && handled === 0) {
      throw new Error("the handler saw no exit");
    }
    return ((t1 - t0) * 1000) / (c1 - c0);
  } finally {
    await vm.close();
  }
}

/** Milliseconds from `stop()` to the vCPU leaving a guest that spins (`jmp $`). */
async function stopLatency(kvm: Kvm): Promise<number> {
  const vm = kvm.createVm();
  try {
    vm.addMemory(0n, 0x10000n);
    vm.memory.writeExact(0x1000n, new Uint8Array([0xeb, 0xfe]));
    const vcpu = await vm.startVcpu(0, {
      regs: { rip: 0x1000n },
      sregs: { cs: seg(0xb), ds: seg(3), es: seg(3), ss: seg(3) },
    });
    await new Promise((r) => setTimeout(r, 200));
    const requestedAt = performance.timeOrigin + performance.now();
    const outcome = await vcpu.stop();
    if (outcome.kind !== "stopped") {
      throw new Error(`Cannot stop the guest: ${outcome.kind}`);
    }
    return outcome.atMs - requestedAt;
  } finally {
    await vm.close();
  }
}

async function cRound(binary: string, exits: number): Promise<number> {
  const out = await new Deno.Command(binary, {
    args: [String(exits)],
    stdout: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const m = text.match(/([\d.]+) us\/exit/);
  if (!out.success || !m) {
    throw new Error(`Cannot run the C floor ${binary}: ${text}`);
  }
  return Number(m[1]);
}

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0]!, median: s[Math.floor(s.length / 2)]!, max: s.at(-1)! };
}
const fmt = (x: number) => x.toFixed(2);

const floor = Deno.env.get("INITX_C_FLOOR");
const kvm = Kvm.open();
const c: number[] = [];
const sink: number[] = [];
const handler: number[] = [];
const stops: number[] = [];
for (let i = 0; i < ROUNDS; i++) {
  stops.push(await stopLatency(kvm));
  sink.push(await initxRound(kvm, "sink"));
  handler.push(await initxRound(kvm, "handler"));
  // Size the C run to about the same window as the initx runs.
  if (floor) {
    c.push(
      await cRound(
        floor,
        Math.max(2000, Math.round(WINDOW_MS * 1000 / sink.at(-1)!)),
      ),
    );
  }
}
kvm.close();

const s = stats(sink), h = stats(handler);
console.log(
  `initx sink path:    min ${fmt(s.min)} / median ${fmt(s.median)} / max ${
    fmt(s.max)
  } us/exit (${ROUNDS} rounds)`,
);
console.log(
  `initx handler path: min ${fmt(h.min)} / median ${fmt(h.median)} / max ${
    fmt(h.max)
  } us/exit`,
);
if (c.length > 0) {
  const f = stats(c);
  const ratios = sink.map((x, i) => x / c[i]!);
  const r = stats(ratios);
  const hr = stats(handler.map((x, i) => x / c[i]!));
  console.log(
    `C floor:            min ${fmt(f.min)} / median ${fmt(f.median)} / max ${
      fmt(f.max)
    } us/exit`,
  );
  console.log(
    `ratio initx sink / C (per round): min ${fmt(r.min)} / median ${
      fmt(r.median)
    } / max ${fmt(r.max)}x`,
  );
  console.log(
    `ratio initx handler / C (per round): min ${fmt(hr.min)} / median ${
      fmt(hr.median)
    } / max ${fmt(hr.max)}x`,
  );
} else {
  console.log("C floor: not measured (no C compiler)");
}
const st = stats(stops);
console.log(
  `stop a spinning vCPU: min ${fmt(st.min)} / median ${fmt(st.median)} / max ${
    fmt(st.max)
  } ms (goal: under 100 ms)`,
);
console.log(`exit round trip: ${fmt(s.median)} us/exit`);
