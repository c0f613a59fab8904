import { equal, ok } from "node:assert/strict";
import { runCommand } from "./run.ts";
import { cannotBootLinuxReason } from "../hv/kvm/host.ts";

function capture() {
  const lines: string[] = [];
  return { err: (l: string) => lines.push(l), text: () => lines.join("\n") };
}

Deno.test("runCommand() rejects an unknown image", async () => {
  const c = capture();
  equal(await runCommand(["alpine", "--", "true"], { err: c.err }), 2);
  ok(c.text().includes('image "alpine" is not available'), c.text());
});

Deno.test("runCommand() needs a command", async () => {
  const c = capture();
  equal(await runCommand(["busybox"], { err: c.err }), 2);
  ok(c.text().includes("an image and a command are needed"), c.text());
});

Deno.test("runCommand() rejects a bad --cpus", async () => {
  const c = capture();
  equal(
    await runCommand(["busybox", "--cpus", "0", "--", "true"], { err: c.err }),
    2,
  );
  ok(c.text().includes('--cpus "0" is not a positive integer'), c.text());
});

Deno.test("runCommand() on a host that cannot boot Linux says why in one sentence", async () => {
  const why = cannotBootLinuxReason();
  if (why === undefined) return; // a hardware host boots it: the e2e tests cover that
  const c = capture();
  equal(await runCommand(["busybox", "--", "true"], { err: c.err }), 1);
  equal(c.text(), `initx run: ${why}`);
});
