/**
 * `deno task bench:lab`: what the KVM lab costs every end-to-end run.
 *
 * - cold: from `runInLab()` to the command's start with the base initramfs
 *   rebuilt (the kernel stays cached);
 * - warm: the same with the cached base initramfs;
 * - nested boot: inside one lab run, QEMU microvm with KVM boots the lab's
 *   kernel with a busybox initramfs to its first line.
 *
 * Each figure is min / median / max over `INITX_BENCH_ROUNDS` (default 3).
 * A lab run that gets stuck (the lab's kernel locks up, or nothing comes out
 * for a while) is run once more.
 *
 * @module
 */

import { labCacheDir, PROJECT_ROOT } from "./lab/lab.ts";
import { runInLabRetrying } from "./lab/retry.ts";

const ROUNDS = Number(Deno.env.get("INITX_BENCH_ROUNDS") ?? 3);
const quiet = () => {};
const log = (line: string) => console.error(`bench: ${line}`);

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const f = (x: number) => (x / 1000).toFixed(2);
  return `min ${f(s[0]!)} / median ${f(s[Math.floor(s.length / 2)]!)} / max ${
    f(s.at(-1)!)
  } s`;
}

async function dropBase() {
  for await (const e of Deno.readDir(labCacheDir())) {
    if (e.name.startsWith("base-") && e.name.endsWith(".cpio")) {
      await Deno.remove(`${labCacheDir()}/${e.name}`);
    }
  }
}

/** `cold`: the base initramfs is rebuilt before the run (and before a retry). */
async function startTime(cold: boolean): Promise<number> {
  const r = await runInLabRetrying(["true"], {
    what: `a ${cold ? "cold" : "warm"} lab start`,
    log,
    onAttempt: cold ? dropBase : undefined,
    output: quiet,
    progress: quiet,
    timeoutSeconds: 300,
  });
  if (r.code !== 0 || r.startMs === undefined) {
    throw new Error(`Cannot start the lab: ${r.error}`);
  }
  return r.startMs;
}

const cold: number[] = [];
const warm: number[] = [];
for (let i = 0; i < ROUNDS; i++) {
  cold.push(await startTime(true));
  warm.push(await startTime(false));
}
console.log(
  `lab start to command, cold (base initramfs rebuilt): ${stats(cold)}`,
);
console.log(`lab start to command, warm (cached initramfs): ${stats(warm)}`);

// The nested peer boot, timed inside the lab by its own clock.
const script = `
set -e
mkdir -p /tmp/peer/bin && cp /bin/busybox /tmp/peer/bin/busybox
printf '#!/bin/busybox sh\\n/bin/busybox echo PEER-UP\\n/bin/busybox poweroff -f\\n' > /tmp/peer/init
chmod +x /tmp/peer/init
(cd /tmp/peer && find . | cpio -o -H newc 2>/dev/null > /tmp/peer.cpio)
for i in $(seq ${ROUNDS}); do
  s=$(awk '{print int($1 * 1000)}' /proc/uptime)
  qemu-system-x86_64 -accel kvm -cpu host -m 256 -M microvm -nodefaults -no-user-config -nographic \\
    -serial stdio -no-reboot -kernel "$INITX_LAB_KERNEL" -initrd /tmp/peer.cpio \\
    -append "console=ttyS0 reboot=k panic=-1 quiet" </dev/null | grep -q PEER-UP
  e=$(awk '{print int($1 * 1000)}' /proc/uptime)
  echo "nested-boot-ms $((e - s))"
done
`;
let text = "";
const r = await runInLabRetrying(["sh", "-c", script], {
  what: "the nested boots",
  log,
  onAttempt: () => {
    text = "";
  },
  cwd: PROJECT_ROOT,
  output: (b) => text += new TextDecoder().decode(b),
  progress: quiet,
  timeoutSeconds: 600,
});
const nested = [...text.matchAll(/nested-boot-ms (\d+)/g)].map((m) =>
  Number(m[1])
);
if (r.code !== 0 || nested.length === 0) {
  console.error(text);
  throw new Error(
    `Cannot time the nested boot: ${r.error ?? `exit ${r.code}`}`,
  );
}
console.log(
  `nested QEMU microvm boot to first line, inside the lab: ${stats(nested)}`,
);
