/**
 * Test helpers: `dtc` (Debian's device-tree-compiler) on a blob, and its
 * decompiled text in a form that does not depend on dtc's version.
 *
 * @module
 */

import assert from "node:assert/strict";

const decoder = new TextDecoder();

/** Runs `dtc` on a blob given on stdin; returns its output and warnings. */
export async function dtc(
  args: string[],
  input: Uint8Array,
): Promise<
  { success: boolean; output: Uint8Array; stdout: string; stderr: string }
> {
  const child = new Deno.Command("dtc", {
    args: [...args, "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(input);
  await writer.close();
  const out = await child.output();
  return {
    success: out.success,
    output: out.stdout,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/**
 * DTS text in a form that does not depend on the dtc version: one trimmed
 * line per statement, hex without leading zeros, string lists as `"a", "b"`.
 */
export function normalizeDts(text: string): string[] {
  return text
    .replace(/0x0*([0-9a-f]+)/g, "0x$1")
    .replaceAll("\\0", '", "')
    .split("\n")
    .map((line) => line.trim().replace(/\s+/g, " "))
    .filter((line) => line !== "");
}

/** Decompiles with `dtc -I dtb -O dts`, failing on any warning. */
export async function decompile(dtb: Uint8Array): Promise<string[]> {
  const r = await dtc(["-I", "dtb", "-O", "dts"], dtb);
  assert.ok(r.success, `dtc -I dtb -O dts failed:\n${r.stderr}`);
  assert.equal(r.stderr, "", "dtc -I dtb -O dts printed warnings");
  return normalizeDts(r.stdout);
}
