/**
 * Containers (issue #9): `initx run busybox -- true` end to end, cold (a new
 * `initx` process each time), against the boot-to-init time of a bare VM
 * measured in the same run; and filesystem work inside a container against
 * the same work on the host's own disk, in the same run:
 *
 * - reading a 256 MiB file: one on a read-write volume (a host directory
 *   shared over virtio-fs) and one written into the container's own
 *   copy-on-write layer, each read with `cat FILE >/dev/null`, vs `cat` of
 *   the same host file (page cache warm on both sides);
 * - creating, stat-ing and deleting 10,000 files with the image's busybox
 *   `sh` (redirections, `ls -l`, `rm`), vs the host's busybox running the
 *   same script in a host temporary directory.
 *
 * Goals: `run -- true` median at most 1.5x boot-to-init; the large read at
 * least 0.25x the host's. Run by `deno task bench:run` (host KVM or the lab).
 * Environment: `INITX_BENCH_RUNS` (cold runs, default 3),
 * `INITX_BENCH_READ_MIB` (default 256), `INITX_BENCH_FILES` (default 10000).
 *
 * @module
 */

import { join } from "node:path";
import { cannotBootLinuxReason } from "../src/hv/kvm/host.ts";
import { ImageStore } from "../src/image/store.ts";
import { parseReference } from "../src/image/reference.ts";
import { ExitError } from "../src/initx/errors.ts";
import { buildExecProgram } from "../src/initx/program_loop.ts";
import { VirtualMachine } from "../src/initx/virtual_machine.ts";
import { HostDirFs } from "../src/vfs/host_dir.ts";
import { openImageFilesystem } from "../src/vfs/image_fs.ts";

const RUNS = Number(Deno.env.get("INITX_BENCH_RUNS") ?? 3);
const READ_MIB = Number(Deno.env.get("INITX_BENCH_READ_MIB") ?? 256);
const FILES = Number(Deno.env.get("INITX_BENCH_FILES") ?? 10_000);
const IN_LAB = Deno.env.get("INITX_IN_LAB") === "1";
const BOOT_TIMEOUT_MS = IN_LAB ? 180_000 : 30_000;
const ROOT = new URL("..", import.meta.url).pathname;

interface Stats {
  min: number;
  median: number;
  max: number;
}

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  return { min: s[0]!, median: s[Math.floor(s.length / 2)]!, max: s.at(-1)! };
}

const f = (n: number, digits = 2) => n.toFixed(digits);
const benchStart = performance.now();
/** A progress line on stderr: the lab counts a silent run as stuck. */
const progress = (what: string, ms?: number) =>
  console.error(
    `bench:run: ${what}${ms === undefined ? "" : ` in ${f(ms / 1000)} s`} (${
      f((performance.now() - benchStart) / 1000, 0)
    } s in)`,
  );
const line = (label: string, s: Stats, unit: string, digits = 2) =>
  `${label}: min ${f(s.min, digits)} / median ${f(s.median, digits)} / max ${
    f(s.max, digits)
  } ${unit}`;

const why = cannotBootLinuxReason();
if (why !== undefined) {
  console.error(`bench:run: ${why}`);
  Deno.exit(1);
}

/** A shell script run by busybox `sh` in the guest and on the host alike. */
const FILES_SCRIPT = {
  create: `i=0; while [ $i -lt ${FILES} ]; do : > f$i; i=$((i+1)); done`,
  stat: `ls -l . > /dev/null`,
  remove: `rm -f f*`,
};

async function timeHost(args: string[], cwd?: string): Promise<number> {
  const t0 = performance.now();
  const r = await new Deno.Command(args[0]!, {
    args: args.slice(1),
    cwd,
    stdout: "null",
    stderr: "inherit",
  }).output();
  if (!r.success) throw new Error(`${args.join(" ")} failed (${r.code})`);
  return performance.now() - t0;
}

// The image, cached before anything is timed.
const images = new ImageStore();
const image = await images.resolve(parseReference("busybox"), {
  reachable: () => Promise.resolve(false),
});

// 1. Cold `initx run busybox -- true` vs boot to init of a bare VM.
const bootMs: number[] = [];
const runMs: number[] = [];
for (let i = 0; i < RUNS; i++) {
  let t0 = performance.now();
  {
    await using vm = await VirtualMachine.create({ memoryMiB: 256 });
    await vm.boot({ timeoutMs: BOOT_TIMEOUT_MS });
    bootMs.push(performance.now() - t0);
  }
  progress(`boot to init ${i + 1}/${RUNS}`, bootMs.at(-1));
  t0 = performance.now();
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--no-check",
      join(ROOT, "mod.ts"),
      "run",
      "--memory",
      "256",
      "busybox",
      "--",
      "true",
    ],
    env: { INITX_OFFLINE: "1" },
    stdout: "null",
    stderr: "inherit",
  }).output();
  if (!r.success) {
    throw new Error(`initx run busybox -- true failed (${r.code})`);
  }
  runMs.push(performance.now() - t0);
  progress(`initx run busybox -- true ${i + 1}/${RUNS}`, runMs.at(-1));
}

// 2. Filesystem work inside one container VM, and the same on the host.
const hostDir = await Deno.makeTempDir({ prefix: "initx-bench-run-" });
const shared = join(hostDir, "shared");
const scratch = join(hostDir, "scratch");
await Deno.mkdir(shared);
await Deno.mkdir(scratch);
const bigFile = join(shared, "big");
{
  const chunk = new Uint8Array(1024 * 1024);
  for (let i = 0; i < chunk.length; i += 65536) {
    crypto.getRandomValues(chunk.subarray(i, i + 65536));
  }
  using file = await Deno.open(bigFile, { write: true, create: true });
  for (let i = 0; i < READ_MIB; i++) await file.write(chunk);
}
const hostBusybox = ["/bin/busybox", "/usr/bin/busybox"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});
if (hostBusybox === undefined) {
  throw new Error("bench:run needs busybox on the host");
}

const root = await openImageFilesystem(image);
const volume = new HostDirFs(shared, { readOnly: false });
const vm = await VirtualMachine.create({
  memoryMiB: 1024,
  root,
  shares: [{ path: "/data", filesystem: volume, readOnly: false }],
});
async function timeGuest(script: string): Promise<number> {
  const t0 = performance.now();
  try {
    await vm.runWithStreamingOutput(
      buildExecProgram("/bin/sh", ["sh", "-c", script], {
        env: ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
        cwd: "/",
      }),
      {
        stderr: new WritableStream({
          write: (b) => void Deno.stderr.writeSync(b),
        }),
      },
    );
  } catch (e) {
    if (e instanceof ExitError) {
      throw new Error(`guest: ${script}: exit ${e.code}`);
    }
    throw e;
  }
  return performance.now() - t0;
}
const empty = { guest: [] as number[], host: [] as number[] };
const reads = {
  volume: [] as number[],
  overlay: [] as number[],
  host: [] as number[],
};
const files = {
  create: { guest: [] as number[], host: [] as number[] },
  stat: { guest: [] as number[], host: [] as number[] },
  remove: { guest: [] as number[], host: [] as number[] },
};
try {
  await vm.boot({ timeoutMs: BOOT_TIMEOUT_MS });
  progress("container VM booted");
  // Written in 1 MiB blocks: one FUSE WRITE each (max_write).
  await timeGuest(
    `dd if=/dev/zero of=/root/big bs=1048576 count=${READ_MIB} 2>/dev/null && mkdir /root/files`,
  );
  progress(`wrote ${READ_MIB} MiB into the layer`);
  for (let i = 0; i < RUNS; i++) {
    // What a guest command costs when it does nothing, to read the rest by.
    empty.guest.push(await timeGuest("true"));
    empty.host.push(await timeHost([hostBusybox, "sh", "-c", "true"]));
    reads.host.push(await timeHost(["cat", bigFile]));
    reads.volume.push(await timeGuest("cat /data/big > /dev/null"));
    progress(`read ${READ_MIB} MiB from the volume`, reads.volume.at(-1));
    reads.overlay.push(await timeGuest("cat /root/big > /dev/null"));
    progress(`read ${READ_MIB} MiB from the layer`, reads.overlay.at(-1));
    for (const step of ["create", "stat", "remove"] as const) {
      files[step].guest.push(
        await timeGuest(`cd /root/files && ${FILES_SCRIPT[step]}`),
      );
      progress(`${FILES} files, ${step}`, files[step].guest.at(-1));
      files[step].host.push(
        await timeHost([hostBusybox, "sh", "-c", FILES_SCRIPT[step]], scratch),
      );
    }
  }
} finally {
  await vm.close();
  await Deno.remove(hostDir, { recursive: true });
}

const boot = stats(bootMs);
const run = stats(runMs);
const mbps = (ms: number[]) =>
  stats(ms.map((t) => (READ_MIB * 1.048576) / (t / 1000)));
const hostRead = mbps(reads.host);
const volumeRead = mbps(reads.volume);
const overlayRead = mbps(reads.overlay);
const out = [
  `where: ${
    IN_LAB
      ? "inside the KVM lab (nested KVM on an emulated CPU)"
      : "this host's KVM"
  }`,
  line(
    `boot to init, bare VM (${RUNS})`,
    stats(bootMs.map((x) => x / 1000)),
    "s",
  ),
  line(
    `initx run busybox -- true, cold process (${RUNS})`,
    stats(runMs.map((x) => x / 1000)),
    "s",
  ),
  `ratio run / boot-to-init: ${f(run.min / boot.min)} / ${
    f(run.median / boot.median)
  } / ${f(run.max / boot.max)} (min / median / max; goal median <= 1.5)`,
  line(`empty command in the guest (${RUNS})`, stats(empty.guest), "ms", 1),
  line(`empty command on the host (busybox sh)`, stats(empty.host), "ms", 1),
  line(`read ${READ_MIB} MiB on the host (cat)`, hostRead, "MB/s", 0),
  line(
    `read ${READ_MIB} MiB in the guest, volume (virtio-fs, host dir)`,
    volumeRead,
    "MB/s",
    0,
  ),
  line(
    `read ${READ_MIB} MiB in the guest, container layer (virtio-fs, overlay)`,
    overlayRead,
    "MB/s",
    0,
  ),
  `ratio guest / host read (medians): volume ${
    f(volumeRead.median / hostRead.median, 3)
  }, layer ${f(overlayRead.median / hostRead.median, 3)} (goal >= 0.25)`,
];
for (const step of ["create", "stat", "remove"] as const) {
  const g = stats(files[step].guest);
  const h = stats(files[step].host);
  out.push(
    `${FILES} files, ${step}: guest ${f(g.min, 0)} / ${f(g.median, 0)} / ${
      f(g.max, 0)
    } ms; host ${f(h.min, 0)} / ${f(h.median, 0)} / ${
      f(h.max, 0)
    } ms; ratio (medians) ${f(g.median / h.median, 1)}x`,
  );
}
console.log(out.join("\n"));
