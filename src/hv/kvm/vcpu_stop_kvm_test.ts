// Stopping vCPUs: the SIGUSR2 kick that interrupts `KVM_RUN` must never kill
// the process, however the stops, the guests' own exits and the closes of VMs
// interleave, and the kick's listener must not keep a finished program alive.
// Needs /dev/kvm (run by `deno task test`, or inside the KVM lab).
//
// Run as a program (`deno run -A vcpu_stop_kvm_test.ts`), this file is the
// child of the last test: it uses vCPUs, closes them, takes a late SIGUSR2 and
// then just ends.
import { equal, ok, rejects } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { needKvm } from "../../../tests/_gate.ts";
import type { Segment, X86Sregs } from "../hv.ts";
import { Kvm } from "./system.ts";

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

/** `jmp $`: never exits, so only a kick gets the vCPU out of `KVM_RUN`. */
const SPIN = { at: 0x1000n, code: new Uint8Array([0xeb, 0xfe]) };
/** `out 0x10, al; inc al; jmp -6`: one port exit per iteration. */
const PORT_LOOP = {
  at: 0x1100n,
  code: new Uint8Array([0xe6, 0x10, 0xfe, 0xc0, 0xeb, 0xfa]),
};
/** Where the guest that halts by itself after a countdown lives. */
const COUNTDOWN_AT = 0x1200n;

/** `mov cx, n; loop $; hlt`: halts on its own after `n` iterations. */
function countdown(n: number): Uint8Array {
  return new Uint8Array([0xb9, n & 0xff, n >> 8, 0xe2, 0xfe, 0xf4]);
}

/** Rejects if `p` has not settled within `ms`: a guard against hangs only. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(`Cannot finish ${what}: still waiting after ${ms} ms`),
        ),
      ms,
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The guests that share a VM with the spinner, one per round in turn. */
const PARTNERS = ["served port loop", "sunk port loop", "countdown"] as const;

/**
 * One VM with a spinner and a partner (a port loop served by a handler on
 * this thread, a port loop on a sink port, or a countdown that may halt by
 * itself just as it is stopped), stopped one of several ways; round `i` picks
 * the partner, the way and the timing.
 */
async function round(kvm: Kvm, i: number): Promise<void> {
  const vm = kvm.createVm();
  let closed = false;
  try {
    vm.addMemory(0n, 0x10000n);
    vm.memory.writeExact(SPIN.at, SPIN.code);
    vm.memory.writeExact(PORT_LOOP.at, PORT_LOOP.code);
    // 0 to 1.5k iterations: some halt before the stop, some just after.
    vm.memory.writeExact(COUNTDOWN_AT, countdown((i % 16) * 100));
    const partner = PARTNERS[i % PARTNERS.length]!;
    const [spin, other] = await Promise.all([
      vm.startVcpu(0, { regs: { rip: SPIN.at }, sregs: REAL_MODE }),
      partner === "countdown"
        ? vm.startVcpu(1, { regs: { rip: COUNTDOWN_AT }, sregs: REAL_MODE })
        : vm.startVcpu(1, {
          regs: { rip: PORT_LOOP.at },
          sregs: REAL_MODE,
          sinkPorts: partner === "sunk port loop" ? [0x10] : [],
          handlers: { io: () => {} },
        }),
    ]);
    const both = [spin, other];
    if (i % 4 === 1) await sleep(0);
    if (i % 4 === 2) await sleep(1);
    let late: Promise<void> | undefined;
    switch (i % 5) {
      case 0: // one after the other
        for (const v of both) await v.stop();
        break;
      case 1: // both at once, twice over
        await Promise.all([...both, ...both].map((v) => v.stop()));
        break;
      case 2: // only by closing the VM
        break;
      case 3: // the partner first, the spinner once the partner has ended
        await other.stop();
        await spin.stop();
        break;
      case 4: // while a third vCPU is still starting
        late = rejects(
          vm.startVcpu(2, { regs: { rip: SPIN.at }, sregs: REAL_MODE }),
          /the VM was closed meanwhile/,
        );
        break;
    }
    closed = true;
    await within(vm.close(), 60_000, `closing the VM of round ${i}`);
    await late;
    const [s, o] = await Promise.all([spin.done, other.done]);
    const what = `round ${i} (${partner}): ${s.kind}, ${o.kind}`;
    equal(s.kind, "stopped", what);
    if (partner === "countdown") {
      ok(o.kind === "stopped" || o.kind === "hlt", what);
    } else equal(o.kind, "stopped", what);
    // A stop after the end changes nothing (and kicks no thread).
    equal((await other.stop()).kind, o.kind, what);
  } finally {
    if (!closed) await vm.close();
  }
}

/**
 * Rounds of stops, one VM at a time as in `bench:exit`: each round ends with
 * no vCPU left, right when the kick's listener used to be removed.
 */
const ROUNDS = 300;

Deno.test("hundreds of vCPUs started, kicked and closed in quick succession leave the process alive", async (t) => {
  const kvm = await needKvm(t);
  if (!kvm) return;
  try {
    for (let i = 0; i < ROUNDS; i++) await round(kvm, i);
  } finally {
    kvm.close();
  }
});

Deno.test("a program that used vCPUs survives a late kick and exits by itself", async (t) => {
  const kvm = await needKvm(t);
  if (!kvm) return;
  kvm.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", fileURLToPath(import.meta.url)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A hang guard only: the child needs a second or two.
  let hung = false;
  const hang = setTimeout(() => {
    hung = true;
    child.kill("SIGKILL");
  }, 60_000);
  try {
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    ok(!hung, `the child had not ended after 60 s: ${stdout}${stderr}`);
    equal(out.signal, null, `the child was killed: ${stderr}`);
    equal(out.code, 0, stderr);
    ok(stdout.includes("survived the late kick"), stdout + stderr);
  } finally {
    clearTimeout(hang);
  }
});

/** The child: uses vCPUs, then receives a SIGUSR2 nobody waits for, then ends. */
async function child(): Promise<void> {
  const kvm = Kvm.open();
  for (let i = 0; i < 10; i++) await round(kvm, i);
  kvm.close();
  // A kick delivered after every vCPU has ended must not kill the process.
  Deno.kill(Deno.pid, "SIGUSR2");
  await sleep(100);
  console.log("survived the late kick");
  // No Deno.exit(): the program must end because nothing is left to do.
}

if (import.meta.main) await child();
