// `initx run` on a larger, real root filesystem: a Debian minbase made by
// debootstrap and packed as an OCI archive on the host
// (tasks/_debian_fixture.ts). `deno task test` builds it, carries it into
// the KVM lab when the tests run there, and names it in INITX_DEBIAN_IMAGE.
// The image cache is a temporary one; no registry is asked.
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { need } from "../_gate.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import { ImageStore } from "../../src/image/store.ts";

/** The variable that names the image (an OCI archive). */
const IMAGE_ENV = "INITX_DEBIAN_IMAGE";
/**
 * Fewest lines `dpkg -l` may print: a bookworm minbase prints 93 (five
 * header lines and 88 packages); the margin allows for a release with a
 * few packages fewer.
 */
const MIN_DPKG_LINES = 80;
/** Guest RAM in MiB: dpkg and apt read their databases into memory. */
const MEMORY_MIB = "1024";

const cacheDir = await Deno.makeTempDir({ prefix: "initx-debian-e2e-" });
const images = new ImageStore({ dir: join(cacheDir, "images") });
// The store holds a copy of the layer: in the lab, memory the later tests need.
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(cacheDir, { recursive: true });
  } catch {
    // already gone
  }
});

interface Ran {
  code: number;
  out: string;
  errOut: string;
  messages: string;
}

/** The image's path; the test fails, never skips, without one. */
function debianImage(): string {
  const path = Deno.env.get(IMAGE_ENV);
  if (!path) {
    throw new Error(
      `Cannot run the Debian tests: ${IMAGE_ENV} is not set; run them through "deno task test", which builds the Debian minbase image (tasks/_debian_fixture.ts) and sets it, or logs why it could not`,
    );
  }
  try {
    Deno.statSync(path);
  } catch (e) {
    throw new Error(
      `Cannot run the Debian tests: ${IMAGE_ENV} names "${path}": ${
        (e as Error).message
      }`,
    );
  }
  return path;
}

async function initxRun(args: string[]): Promise<Ran> {
  const { runCommand } = await import("../../src/cli/run.ts");
  const decoder = new TextDecoder();
  let out = "";
  let errOut = "";
  const messages: string[] = [];
  const code = await runCommand(
    [
      "--boot-timeout",
      "180",
      "--memory",
      MEMORY_MIB,
      `oci-archive:${debianImage()}`,
      "--",
      ...args,
    ],
    {
      out: (b) => out += decoder.decode(b, { stream: true }),
      errOut: (b) => errOut += decoder.decode(b, { stream: true }),
      err: (l) => messages.push(l),
      images,
      offline: true,
    },
  );
  return { code, out, errOut, messages: messages.join("\n") };
}

function canBoot(t: Deno.TestContext): boolean {
  debianImage();
  const why = cannotBootLinuxReason();
  return need(t, why === undefined, why ?? "");
}

Deno.test("initx run on a Debian minbase: dpkg -l lists its packages", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun(["sh", "-c", "dpkg -l | wc -l"]);
  const why = r.messages + r.errOut;
  equal(r.code, 0, why);
  match(r.out, /^\d+\n$/, why);
  ok(
    Number(r.out) >= MIN_DPKG_LINES,
    `dpkg -l printed ${r.out.trim()} lines, fewer than ${MIN_DPKG_LINES}: ${why}`,
  );
});

Deno.test("initx run on a Debian minbase: apt-get runs", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun(["apt-get", "--version"]);
  const why = r.messages + r.errOut;
  equal(r.code, 0, why);
  ok(r.out.startsWith("apt "), `apt-get --version printed: ${r.out}${why}`);
});
