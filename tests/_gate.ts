/**
 * Gates for tests that need something outside the project (a tool, `/dev/kvm`).
 * In CI (`CI=true`) a missing requirement fails the test with a clear message;
 * elsewhere the test is skipped, loudly.
 *
 * @module
 */

import { which } from "../tasks/_packages.ts";

/** True when running under CI. */
export const IN_CI = Deno.env.get("CI") === "true";

/** Whether `name` is an executable on PATH. */
export function hasTool(name: string): boolean {
  return which(name) !== undefined;
}

/**
 * Returns true when `ok`; otherwise fails in CI or warns and returns false so
 * the caller returns early (a loud skip).
 */
export function need(t: Deno.TestContext, ok: boolean, why: string): boolean {
  if (ok) return true;
  if (IN_CI) throw new Error(`Cannot run "${t.name}" in CI: ${why}`);
  console.warn(`SKIPPED "${t.name}": ${why}`);
  return false;
}

/** {@linkcode need} for a command-line tool on PATH. */
export function needTool(
  t: Deno.TestContext,
  tool: string,
  why: string,
): boolean {
  return need(t, hasTool(tool), `"${tool}" is not installed: ${why}`);
}

/**
 * Opens KVM for a test: the `Kvm` or, when `/dev/kvm` cannot be opened, a
 * failure in CI and a loud skip elsewhere (undefined).
 */
export async function needKvm(
  t: Deno.TestContext,
): Promise<import("../src/hv/kvm/system.ts").Kvm | undefined> {
  const { Kvm } = await import("../src/hv/kvm/system.ts");
  try {
    return Kvm.open();
  } catch (e) {
    need(
      t,
      false,
      `${
        (e as Error).message
      } (run it through "deno task test", which uses the KVM lab on such hosts)`,
    );
    return undefined;
  }
}
