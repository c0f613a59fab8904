/**
 * The image subcommands: `initx pull IMAGE` puts an image into the cache,
 * `initx images` lists the cache, `initx cache prune` removes blobs no
 * cached image uses (`--all` forgets every image first).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { ImageStore } from "../image/store.ts";
import { parseReference } from "../image/reference.ts";
import { progressPrinter } from "./_args.ts";

/** Where the subcommands print and which cache they use (tests pass their own). */
export interface ImageCommandOptions {
  /** The image cache; default the user's. */
  images?: ImageStore;
  /** Standard output lines. */
  out?: (line: string) => void;
  /** Standard error lines. */
  err?: (line: string) => void;
  /**
   * Never ask a registry (default: `INITX_OFFLINE=1`); only the default
   * image can then be made.
   */
  offline?: boolean;
}

const PULL_USAGE = `Usage: initx pull [--platform OS/ARCH] IMAGE

Puts IMAGE into the image cache: from its registry (asked again even when
cached), an OCI layout (oci:DIR), an OCI archive (oci-archive:FILE) or a
docker save archive (docker-archive:FILE). With no registry in reach,
"busybox" is built from the host's busybox-static.`;

/**
 * `initx pull`: resolves an image into the cache and prints its digest.
 *
 * @example
 * ```ts ignore
 * import { pullCommand } from "./images.ts";
 * Deno.exit(await pullCommand(["busybox"]));
 * ```
 */
export async function pullCommand(
  args: string[],
  options: ImageCommandOptions = {},
): Promise<number> {
  const out = options.out ?? ((line: string) => console.log(line));
  const err = options.err ?? ((line: string) => console.error(line));
  let values: { platform?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      options: {
        platform: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    err(`initx pull: ${(e as Error).message}\n${PULL_USAGE}`);
    return 2;
  }
  if (values.help) {
    err(PULL_USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    err(`initx pull: one image is needed\n${PULL_USAGE}`);
    return 2;
  }
  const progress = progressPrinter("initx pull", err);
  try {
    const store = options.images ?? new ImageStore();
    const ref = parseReference(positionals[0]!);
    const offline = options.offline ?? Deno.env.get("INITX_OFFLINE") === "1";
    const image = await store.resolve(ref, {
      platform: values.platform,
      pull: ref.kind === "registry" && !offline ? "always" : "missing",
      onProgress: progress.event,
      reachable: offline ? () => Promise.resolve(false) : undefined,
    });
    progress.done();
    const size = image.manifest.layers.reduce((n, l) => n + l.size, 0);
    out(
      `${image.reference} ${image.digest} (${
        formatBytes(size)
      }, ${image.source})`,
    );
    return 0;
  } catch (e) {
    progress.done();
    err(`initx pull: ${(e as Error).message}`);
    return 1;
  }
}

/**
 * `initx images`: one line per cached image (name, platform, size, digest).
 *
 * @example
 * ```ts ignore
 * import { imagesCommand } from "./images.ts";
 * Deno.exit(await imagesCommand([]));
 * ```
 */
export async function imagesCommand(
  args: string[],
  options: ImageCommandOptions = {},
): Promise<number> {
  const out = options.out ?? ((line: string) => console.log(line));
  const err = options.err ?? ((line: string) => console.error(line));
  if (args.includes("-h") || args.includes("--help")) {
    err("Usage: initx images\n\nLists the images in the cache.");
    return 0;
  }
  if (args.length > 0) {
    err(`initx images: unexpected "${args[0]}"\nUsage: initx images`);
    return 2;
  }
  try {
    const images = await (options.images ?? new ImageStore()).list();
    const rows = images.map((i) => [
      i.name,
      `${i.platform.os}/${i.platform.architecture}`,
      formatBytes(i.size),
      i.digest.slice(0, 19),
      i.builtFrom ? `built from ${i.builtFrom}` : "",
    ]);
    const header = ["IMAGE", "PLATFORM", "SIZE", "DIGEST", ""];
    const all = [header, ...rows];
    const widths = header.map((_, c) =>
      Math.max(...all.map((r) => r[c]!.length))
    );
    for (const r of all) {
      out(r.map((cell, c) => cell.padEnd(widths[c]!)).join("  ").trimEnd());
    }
    return 0;
  } catch (e) {
    err(`initx images: ${(e as Error).message}`);
    return 1;
  }
}

const CACHE_USAGE = `Usage: initx cache prune [--all]

Removes cached blobs no image uses and stale partial downloads; with --all,
forgets every cached image first.`;

/**
 * `initx cache prune [--all]`.
 *
 * @example
 * ```ts ignore
 * import { cacheCommand } from "./images.ts";
 * Deno.exit(await cacheCommand(["prune"]));
 * ```
 */
export async function cacheCommand(
  args: string[],
  options: ImageCommandOptions = {},
): Promise<number> {
  const out = options.out ?? ((line: string) => console.log(line));
  const err = options.err ?? ((line: string) => console.error(line));
  const [verb, ...rest] = args;
  if (
    verb === "-h" || verb === "--help" ||
    (verb === "prune" && rest.some((a) => a === "-h" || a === "--help"))
  ) {
    err(CACHE_USAGE);
    return 0;
  }
  if (verb !== "prune" || rest.some((a) => a !== "--all")) {
    err(CACHE_USAGE);
    return 2;
  }
  try {
    const store = options.images ?? new ImageStore();
    let forgotten = 0;
    if (rest.includes("--all")) {
      for (const image of await store.list()) {
        if (await store.remove(image.reference, { platform: image.platform })) {
          forgotten++;
        }
      }
    }
    const { removed, bytes } = await store.prune();
    out(
      `${
        forgotten > 0 ? `forgot ${forgotten} images, ` : ""
      }removed ${removed} files (${formatBytes(bytes)})`,
    );
    return 0;
  } catch (e) {
    err(`initx cache: ${(e as Error).message}`);
    return 1;
  }
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}
