/**
 * `deno task check`: formatting, lint, type check of every module and test,
 * and `deno doc --lint` of the public API. Exits non-zero on the first failure.
 *
 * @module
 */

const steps: [string, string[]][] = [
  ["format", ["fmt", "--check"]],
  ["lint", ["lint"]],
  ["type check", ["check", "."]],
  ["doc lint", ["doc", "--lint", "mod.ts"]],
  ["publish dry run", ["publish", "--dry-run", "--allow-dirty"]],
];

for (const [name, args] of steps) {
  console.error(`check: ${name}: deno ${args.join(" ")}`);
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!r.success) {
    console.error(`check: ${name} failed`);
    Deno.exit(1);
  }
}
console.error("check: all clean");
