/**
 * Helpers that tests across the tree share: a temporary directory for the
 * length of a call, the host's architecture, and small byte-array helpers
 * (concatenation, gzip, alignment). Gates on tools and KVM are in
 * `tests/_gate.ts`.
 *
 * @module
 */

import type { Arch } from "../src/ir/mod.ts";

/** The host's architecture, in initx's (and the kernel's) spelling. */
export const HOST_ARCH: Arch = Deno.build.arch;

/**
 * Runs `fn` with a new empty temporary directory and removes the directory
 * (with whatever `fn` left in it) when `fn` settles.
 *
 * @example
 * ```ts
 * import { withTempDir } from "./_util.ts";
 * const text = await withTempDir(async (dir) => {
 *   await Deno.writeTextFile(`${dir}/a`, "hi");
 *   return await Deno.readTextFile(`${dir}/a`);
 * });
 * console.assert(text === "hi");
 * ```
 */
export async function withTempDir<T>(
  fn: (dir: string) => Promise<T>,
  options: { prefix?: string } = {},
): Promise<T> {
  const dir = await Deno.makeTempDir({
    prefix: options.prefix ?? "initx-test-",
  });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The bytes of `parts`, one after the other, in a new array.
 *
 * @example
 * ```ts
 * import { concat } from "./_util.ts";
 * concat([Uint8Array.of(1), Uint8Array.of(2, 3)]); // Uint8Array [1, 2, 3]
 * ```
 */
export function concat(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * `bytes` compressed as one gzip member (Web `CompressionStream`).
 *
 * @example
 * ```ts
 * import { gzip } from "./_util.ts";
 * const member = await gzip(new TextEncoder().encode("hi"));
 * console.assert(member[0] === 0x1f && member[1] === 0x8b);
 * ```
 */
export async function gzip(
  bytes: Uint8Array,
): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return await new Response(stream).bytes();
}

/**
 * `value` rounded up to a multiple of `alignment`, for laying out test data
 * (tar blocks, ELF sections). Throws a RangeError unless both are
 * non-negative integers and `alignment` is positive.
 *
 * @example
 * ```ts
 * import { alignUp } from "./_util.ts";
 * alignUp(13, 8); // 16
 * alignUp(512, 512); // 512
 * ```
 */
export function alignUp(value: number, alignment: number): number {
  if (
    !Number.isSafeInteger(value) || value < 0 ||
    !Number.isSafeInteger(alignment) || alignment <= 0
  ) {
    throw new RangeError(
      `Cannot align ${value} to ${alignment}: both must be non-negative integers, the alignment positive`,
    );
  }
  return Math.ceil(value / alignment) * alignment;
}
