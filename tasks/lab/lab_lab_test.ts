// The KVM lab itself: these boot it (a few seconds each) under QEMU. They are
// the lab tier of tasks/test.ts (`*_lab_test.ts`): run on the host after the
// unit tests, never inside the lab.
import { equal, ok } from "node:assert/strict";
import { runInLab } from "./lab.ts";
import { needTool } from "../../tests/_gate.ts";
import { withTempDir } from "../../tests/_util.ts";

function collect() {
  let text = "";
  const decoder = new TextDecoder();
  return {
    output: (b: Uint8Array) => text += decoder.decode(b, { stream: true }),
    text: () => text,
  };
}
const quiet = () => {};

Deno.test("runInLab() gives the command a /dev/kvm and its output", async (t) => {
  if (!needTool(t, "qemu-system-x86_64", "the lab runs under QEMU")) return;
  const out = collect();
  const r = await runInLab(["sh", "-c", "test -c /dev/kvm && echo ok"], {
    output: out.output,
    progress: quiet,
    timeoutSeconds: 120,
  });
  equal(r.error, undefined);
  equal(r.code, 0);
  equal(out.text(), "ok\n");
});

Deno.test("runInLab() returns the command's exit status, output without a final newline, and files from /out", async (t) => {
  if (!needTool(t, "qemu-system-x86_64", "the lab runs under QEMU")) return;
  await withTempDir(async (dir) => {
    const out = collect();
    const r = await runInLab(
      [
        "sh",
        "-c",
        "mkdir -p /out/a && echo back > /out/a/f && printf no-newline && exit 7",
      ],
      { output: out.output, progress: quiet, outDir: dir, timeoutSeconds: 120 },
    );
    equal(r.code, 7);
    equal(out.text(), "no-newline");
    equal(await Deno.readTextFile(`${dir}/a/f`), "back\n");
  });
});

Deno.test("runInLab() stops a command that runs past its timeout and leaves no QEMU", async (t) => {
  if (!needTool(t, "qemu-system-x86_64", "the lab runs under QEMU")) return;
  const r = await runInLab(["sleep", "600"], {
    output: quiet,
    progress: quiet,
    timeoutSeconds: 20,
  });
  equal(r.code, 124);
  ok(r.error?.startsWith("Lab command timed out after 20 s"), r.error);
  // The lab's QEMU is gone (not even a zombie) once the call resolves.
  ok(r.qemuPid !== undefined);
  let alive = true;
  try {
    Deno.statSync(`/proc/${r.qemuPid}`);
  } catch {
    alive = false;
  }
  equal(alive, false, `QEMU pid ${r.qemuPid} is still there`);
});

Deno.test("runInLab() ends a run at once when the lab's kernel reports a soft lockup", async (t) => {
  if (!needTool(t, "qemu-system-x86_64", "the lab runs under QEMU")) return;
  // The command prints what the lab kernel's watchdog would, then waits.
  const line =
    "[   68.881133] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [worker-15:164]";
  const r = await runInLab(["sh", "-c", `echo '${line}'; sleep 600`], {
    output: quiet,
    progress: quiet,
    timeoutSeconds: 120,
  });
  equal(r.code, 125);
  equal(r.labFault, line);
  ok(r.error?.startsWith("The KVM lab got stuck"), r.error);
});

Deno.test("runInLab() ends a run that prints nothing for idleTimeoutSeconds", async (t) => {
  if (!needTool(t, "qemu-system-x86_64", "the lab runs under QEMU")) return;
  const r = await runInLab(["sleep", "600"], {
    output: quiet,
    progress: quiet,
    timeoutSeconds: 120,
    idleTimeoutSeconds: 15,
  });
  equal(r.code, 125);
  equal(r.labFault, "no output for 15 s");
});
