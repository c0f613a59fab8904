/**
 * Programs on a booted VM (issue #8): the round trip of an empty program,
 * stdout and stdin streaming throughput, and boot-to-first-program time,
 * with their references measured in the same run:
 *
 * - the KVM exit round trip of the C floor (`bench/kvm_exit_floor.c`): the
 *   goal is a median program round trip of at most 30 exit round trips;
 * - a plain pipe between two processes on the same machine
 *   (`head -c N /dev/zero | cat >/dev/null`): the goal is each streaming
 *   direction at least 0.25x its throughput.
 *
 * Run by `deno task bench:exec`, which picks the host or the KVM lab.
 * Environment: `INITX_C_FLOOR` (the C floor's binary), `INITX_BENCH_ROUNDS`
 * (round trips, default 300), `INITX_BENCH_STREAM_MIB` (default 64),
 * `INITX_BENCH_BOOTS` (default 3).
 *
 * @module
 */

import { ProgramBuilder } from "../src/ir/mod.ts";
import { VirtualMachine } from "../src/initx/virtual_machine.ts";
import { cannotBootLinuxReason } from "../src/hv/kvm/host.ts";

const ROUNDS = Number(Deno.env.get("INITX_BENCH_ROUNDS") ?? 300);
const STREAM_MIB = Number(Deno.env.get("INITX_BENCH_STREAM_MIB") ?? 64);
const BOOTS = Number(Deno.env.get("INITX_BENCH_BOOTS") ?? 3);
const IN_LAB = Deno.env.get("INITX_IN_LAB") === "1";
const BOOT_TIMEOUT_MS = IN_LAB ? 180_000 : 30_000;
const CHUNK = 65536;

interface Stats {
  min: number;
  median: number;
  max: number;
  p99: number;
}

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) =>
    s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { min: s[0]!, median: at(0.5), max: s.at(-1)!, p99: at(0.99) };
}

const f = (n: number, digits = 2) => n.toFixed(digits);

function emptyProgram() {
  const p = new ProgramBuilder();
  p.method("main", (m) => m.return(0));
  return p.build();
}

/** Writes `total` bytes to stdout, 64 KiB at a time. */
function writer(total: number) {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const buf = m.buffer(CHUNK);
    const left = m.var("left", { init: total });
    m.while(m.gt(left, 0), () => {
      const w = m.syscall("write", [1, buf, CHUNK]);
      m.if(m.le(w, 0), () => m.return(1));
      m.sub(left, w, { into: left });
    });
    m.return(0);
  });
  return p.build();
}

/** Reads stdin to its end and discards it. */
function reader() {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const buf = m.buffer(CHUNK);
    const n = m.var("n", { init: 1 });
    m.while(m.gt(n, 0), () => {
      m.syscall("read", [0, buf, CHUNK], { into: n });
    });
    m.if(m.isNegative(n), () => m.return(1));
    m.return(0);
  });
  return p.build();
}

/**
 * CPU time (user + system) of the thread or process whose `stat` file this
 * is, in ms (`proc(5)`: fields 14 and 15, in clock ticks of 10 ms).
 */
function cpuMs(statPath: string): number {
  const stat = Deno.readTextFileSync(statPath);
  // The command name (field 2) may hold spaces: count from its ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** The C floor's exit round trip in microseconds (median of 3 runs). */
async function exitFloorUs(): Promise<Stats | undefined> {
  const floor = Deno.env.get("INITX_C_FLOOR");
  if (!floor) return undefined;
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) {
    const out = await new Deno.Command(floor, { args: ["20000"] }).output();
    const text = new TextDecoder().decode(out.stdout);
    const us = /([\d.]+) us\/exit/.exec(text)?.[1];
    if (!out.success || us === undefined) {
      throw new Error(`Cannot run the C floor ${floor}: ${text}`);
    }
    samples.push(Number(us));
  }
  return stats(samples);
}

/** A plain pipe's throughput between two processes, in MB/s. */
async function pipeMBps(mib: number): Promise<Stats> {
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const r = await new Deno.Command("sh", {
      args: ["-c", `head -c ${mib * 1024 * 1024} /dev/zero | cat >/dev/null`],
    }).output();
    if (!r.success) throw new Error("Cannot time the reference pipe");
    samples.push(mib * 1.048576 / ((performance.now() - t0) / 1000));
  }
  return stats(samples);
}

const why = cannotBootLinuxReason();
if (why !== undefined) {
  console.error(`bench:exec: ${why}`);
  Deno.exit(1);
}

const floorBefore = await exitFloorUs();
const pipe = await pipeMBps(STREAM_MIB);

const bootSamples: number[] = [];
for (let i = 0; i < BOOTS; i++) {
  const t0 = performance.now();
  await using vm = await VirtualMachine.create({ memoryMiB: 256 });
  await vm.boot({ timeoutMs: BOOT_TIMEOUT_MS });
  await vm.run(emptyProgram());
  bootSamples.push(performance.now() - t0);
}

await using vm = await VirtualMachine.create({ memoryMiB: 256 });
await vm.boot({ timeoutMs: BOOT_TIMEOUT_MS });
const empty = emptyProgram();
for (let i = 0; i < 20; i++) await vm.run(empty);
const rtt: number[] = [];
const exits0 = vm.exitCount();
const cpu0 = {
  main: cpuMs("/proc/thread-self/stat"),
  all: cpuMs("/proc/self/stat"),
};
const wall0 = performance.now();
for (let i = 0; i < ROUNDS; i++) {
  const t0 = performance.now();
  await vm.run(empty);
  rtt.push((performance.now() - t0) * 1000);
}
const wallPerProgram = (performance.now() - wall0) / ROUNDS;
const mainCpuPerProgram = (cpuMs("/proc/thread-self/stat") - cpu0.main) /
  ROUNDS;
const allCpuPerProgram = (cpuMs("/proc/self/stat") - cpu0.all) / ROUNDS;
const exitsPerProgram = (vm.exitCount() - exits0) / ROUNDS;

const bytes = STREAM_MIB * 1024 * 1024;
const outSamples: number[] = [];
const inSamples: number[] = [];
for (let i = 0; i < 3; i++) {
  let t0 = performance.now();
  let got = 0;
  await vm.runWithStreamingOutput(writer(bytes), {
    stdout: new WritableStream({ write: (c) => void (got += c.length) }),
  });
  if (got !== bytes) throw new Error(`stdout stream lost bytes: ${got}`);
  outSamples.push(bytes / 1e6 / ((performance.now() - t0) / 1000));

  let sent = 0;
  const chunk = new Uint8Array(256 * 1024);
  const stdin = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent >= bytes) return c.close();
      sent += chunk.length;
      c.enqueue(chunk.slice());
    },
  });
  t0 = performance.now();
  await vm.runWithStreamingOutput(reader(), { stdin });
  inSamples.push(bytes / 1e6 / ((performance.now() - t0) / 1000));
}
const floorAfter = await exitFloorUs();

const r = stats(rtt);
const out = stats(outSamples);
const inn = stats(inSamples);
const boot = stats(bootSamples);
console.log(`where: ${IN_LAB ? "inside the KVM lab" : "this host's KVM"}`);
console.log(
  `program round trip (${ROUNDS}): min ${f(r.min / 1000)} / median ${
    f(r.median / 1000)
  } / p99 ${f(r.p99 / 1000)} / max ${f(r.max / 1000)} ms`,
);
console.log(
  `userspace exits per program round trip: ${f(exitsPerProgram, 1)}`,
);
console.log(
  `host CPU per program round trip: main thread ${
    f(mainCpuPerProgram, 2)
  } ms, whole process (vCPU threads and the guest's own time included) ${
    f(allCpuPerProgram, 2)
  } ms, of ${f(wallPerProgram, 2)} ms wall`,
);
const floors = [floorBefore, floorAfter].filter((x) => x !== undefined);
if (floors.length > 0) {
  const floor = stats(floors.map((x) => x!.median)).median;
  console.log(
    `KVM exit round trip, C floor (same run, before and after): ${
      floors.map((x) => f(x!.median)).join(" / ")
    } us`,
  );
  console.log(
    `ratio program round trip / exit round trip: min ${
      f(r.min / floor, 1)
    } / median ${f(r.median / floor, 1)} / p99 ${
      f(r.p99 / floor, 1)
    } (goal: median <= 30)`,
  );
} else console.log("C floor: not measured (no INITX_C_FLOOR)");
console.log(
  `stdout stream (${STREAM_MIB} MiB x3): min ${f(out.min)} / median ${
    f(out.median)
  } / max ${f(out.max)} MB/s`,
);
console.log(
  `stdin stream (${STREAM_MIB} MiB x3): min ${f(inn.min)} / median ${
    f(inn.median)
  } / max ${f(inn.max)} MB/s`,
);
console.log(
  `plain pipe (same run): min ${f(pipe.min)} / median ${f(pipe.median)} / max ${
    f(pipe.max)
  } MB/s`,
);
console.log(
  `ratio stdout / pipe: ${f(out.median / pipe.median, 3)}, stdin / pipe: ${
    f(inn.median / pipe.median, 3)
  } (medians; goal >= 0.25 each)`,
);
console.log(
  `boot to first program (${BOOTS}): min ${f(boot.min / 1000)} / median ${
    f(boot.median / 1000)
  } / max ${f(boot.max / 1000)} s`,
);
