import { equal, match } from "node:assert/strict";
import { bootCommand, describeOutcome } from "./boot.ts";
import { main } from "./main.ts";

async function run(args: string[]): Promise<{ code: number; err: string }> {
  const lines: string[] = [];
  const code = await bootCommand(args, {
    out: () => {},
    err: (l) => lines.push(l),
  });
  return { code, err: lines.join("\n") };
}

Deno.test("bootCommand() rejects bad arguments with status 2", async () => {
  let r = await run(["--cpus", "zero"]);
  equal(r.code, 2);
  match(r.err, /--cpus "zero" is not a positive integer/);
  r = await run(["--memory=-5"]);
  equal(r.code, 2);
  match(r.err, /--memory "-5" is not a positive integer/);
  r = await run(["--timeout", "soon"]);
  equal(r.code, 2);
  r = await run(["--bogus"]);
  equal(r.code, 2);
  match(r.err, /Usage: initx boot/);
});

Deno.test("bootCommand() --help prints usage and succeeds", async () => {
  const r = await run(["--help"]);
  equal(r.code, 0);
  match(r.err, /--kernel PATH/);
});

Deno.test("describeOutcome() gives one sentence per outcome", () => {
  equal(describeOutcome({ kind: "power-off" }), "the guest powered off");
  match(
    describeOutcome({ kind: "error", message: "KVM internal error" }),
    /could not run: KVM internal error/,
  );
});

Deno.test("main() rejects unknown and unbuilt commands", async () => {
  const error = console.error;
  console.error = () => {};
  try {
    equal(await main(["frobnicate"]), 2);
    equal(await main(["compile"]), 2);
    equal(await main([]), 2);
  } finally {
    console.error = error;
  }
});
