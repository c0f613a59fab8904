/**
 * `deno task kernel`: provisions the kernel initx boots (fetching and caching
 * it when needed) and prints where it is, one `key=value` per line:
 *
 * ```
 * image=/root/.cache/initx/kernels/debian/.../boot/vmlinuz-6.1.0-57-cloud-amd64
 * config=...
 * modules=.../lib/modules/6.1.0-57-cloud-amd64
 * version=6.1.0-57-cloud-amd64
 * arch=x86_64
 * source=debian
 * ```
 *
 * Flags: `--kernel PATH`, `--modules DIR`, `--source debian|alpine`,
 * `--cache DIR`, `--refresh`, `--json`. Environment: `INITX_KERNEL`,
 * `INITX_MODULES`, `INITX_KERNEL_SOURCE`, `INITX_CACHE`,
 * `INITX_ALPINE_MIRROR`, `INITX_ALPINE_BRANCH`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ensureKernel } from "../src/boot/kernel.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    kernel: { type: "string" },
    modules: { type: "string" },
    source: { type: "string" },
    cache: { type: "string" },
    refresh: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
  },
});

if (
  values.source !== undefined && values.source !== "debian" &&
  values.source !== "alpine"
) {
  console.error(
    `Cannot provision the kernel: unknown source '${values.source}' (use debian or alpine)`,
  );
  Deno.exit(2);
}

try {
  const kernel = await ensureKernel({
    kernel: values.kernel,
    modules: values.modules,
    source: values.source,
    cacheDir: values.cache,
    refresh: values.refresh,
  });
  if (values.json) {
    console.log(JSON.stringify(kernel, null, 2));
  } else {
    for (const [key, value] of Object.entries(kernel)) {
      if (value !== undefined) console.log(`${key}=${value}`);
    }
  }
} catch (error) {
  console.error(`initx: ${(error as Error).message}`);
  Deno.exit(1);
}
