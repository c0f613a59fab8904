import { equal, ok } from "node:assert/strict";
import { parseVolume, runCommand } from "./run.ts";
import { cannotBootLinuxReason } from "../hv/kvm/host.ts";

function capture() {
  const lines: string[] = [];
  return { err: (l: string) => lines.push(l), text: () => lines.join("\n") };
}

Deno.test("runCommand() needs an image", async () => {
  const c = capture();
  equal(await runCommand([], { err: c.err }), 2);
  ok(c.text().includes("an image is needed"), c.text());
});

Deno.test("runCommand() refuses a bad --pull and an unknown flag", async () => {
  const unknown = capture();
  equal(await runCommand(["--privileged", "busybox"], { err: unknown.err }), 2);
  ok(unknown.text().includes("--privileged"), unknown.text());
  const c = capture();
  equal(
    await runCommand(["--pull", "sometimes", "busybox"], { err: c.err }),
    2,
  );
  ok(c.text().includes('--pull "sometimes"'), c.text());
});

Deno.test("parseVolume() reads HOST:GUEST[:ro|:rw] and refuses the rest", () => {
  const v = parseVolume("/srv/data:/data:ro");
  equal(v.host, "/srv/data");
  equal(v.guest, "/data");
  equal(v.readOnly, true);
  equal(parseVolume("/a:/b/c:rw").readOnly, false);
  equal(parseVolume("/a:/b").readOnly, false);
  for (
    const bad of [
      "/a",
      "/a:",
      ":/b",
      "/a:/b:rx",
      "/a:b",
      "/a:/",
      "/a:/b/../c",
      "/a:/b//c",
      "/a:/b:ro:x",
    ]
  ) {
    let message = "";
    try {
      parseVolume(bad);
    } catch (e) {
      message = (e as Error).message;
    }
    ok(message.includes("--volume"), `${bad}: ${message}`);
  }
});

Deno.test("runCommand() rejects a bad --cpus", async () => {
  const c = capture();
  equal(
    await runCommand(["--cpus", "0", "busybox", "--", "true"], {
      err: c.err,
    }),
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
