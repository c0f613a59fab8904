import assert from "node:assert/strict";
import { COMMANDS } from "./main.ts";

/** Runs `initx ARGS` in a child process; the CLI prints help on stdout. */
async function initx(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--no-check",
      new URL("../../mod.ts", import.meta.url).pathname,
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/** Each subcommand's help, as a user would ask for it. */
const HELP: Record<string, string[]> = {
  boot: ["boot", "--help"],
  run: ["run", "--help"],
  pull: ["pull", "--help"],
  images: ["images", "--help"],
  cache: ["cache", "prune", "--help"],
  compile: ["compile", "--help"],
  kernel: ["kernel", "fetch", "--help"],
};

Deno.test("every initx subcommand answers --help with its usage and status 0", async () => {
  assert.deepEqual(Object.keys(HELP).sort(), Object.keys(COMMANDS).sort());
  for (const [name, args] of Object.entries(HELP)) {
    const r = await initx(args);
    assert.equal(r.code, 0, `${name}: ${r.stderr}`);
    // Help goes to stdout or, beside a command's own output, to stderr.
    assert.match(
      r.stdout || r.stderr,
      new RegExp(`^Usage: initx ${name}`),
      name,
    );
  }
  const top = await initx(["--help"]);
  assert.equal(top.code, 0);
  assert.match(top.stdout, /^Usage: initx <command>/);
});

Deno.test("initx kernel fetch: an unknown option or arch is a usage error, not a crash", async () => {
  const bogus = await initx(["kernel", "fetch", "--bogus"]);
  assert.equal(bogus.code, 2);
  assert.match(bogus.stderr, /Unknown option '--bogus'/);
  assert.doesNotMatch(bogus.stderr, /Uncaught/);
  const arch = await initx(["kernel", "fetch", "--arch", "mips"]);
  assert.equal(arch.code, 2);
  assert.match(arch.stderr, /--arch must be x86_64 or aarch64, not "mips"/);
});
