/**
 * An image's root filesystem: its layers applied in order into one
 * {@linkcode LayerTree}, under a copy-on-write {@linkcode OverlayFs} of its
 * own. The image layer (`src/image/`) sits above this one, so images are
 * taken by shape: anything with layers that stream {@linkcode LayerEntry}s.
 *
 * @module
 */

import type { LayerEntry } from "./layer.ts";
import { OverlayFs, type OverlayFsOptions } from "./overlay.ts";
import { LayerTree } from "./tree.ts";

/**
 * What {@linkcode openImageFilesystem} needs of an image: its layers,
 * lowest first.
 *
 * @example
 * ```ts
 * import type { LayeredImage } from "./image_fs.ts";
 * const empty: LayeredImage = { layers: [] };
 * ```
 */
export interface LayeredImage {
  /** The layers, lowest first; each streams its entries. */
  layers: readonly { entries(): AsyncIterable<LayerEntry> }[];
}

/** Options of {@linkcode openImageFilesystem}. */
export interface ImageFilesystemOptions extends OverlayFsOptions {
  /** Called after each layer is applied (1-based index, total). */
  onLayer?: (applied: number, total: number) => void;
}

/**
 * Applies every layer of `image` into a fresh tree and opens a writable
 * overlay on it. Throws with the layer's number when a layer cannot be
 * read or applied.
 *
 * @example
 * ```ts
 * import { openImageFilesystem } from "./image_fs.ts";
 * const fs = await openImageFilesystem({
 *   layers: [{
 *     async *entries() {
 *       yield { path: "hello", type: "file" as const, mode: 0o644, uid: 0,
 *         gid: 0, mtimeMs: 0, data: new TextEncoder().encode("hi\n") };
 *     },
 *   }],
 * });
 * console.log(fs.lookup(1, "hello").attr.size); // 3
 * ```
 */
export async function openImageFilesystem(
  image: LayeredImage,
  options: ImageFilesystemOptions = {},
): Promise<OverlayFs> {
  const tree = new LayerTree();
  const total = image.layers.length;
  for (const [i, layer] of image.layers.entries()) {
    try {
      await tree.applyLayer(layer.entries());
    } catch (e) {
      throw new Error(
        `Cannot build the image's filesystem: layer ${i + 1} of ${total}: ${
          e instanceof Error ? e.message : String(e)
        }`,
        { cause: e },
      );
    }
    options.onLayer?.(i + 1, total);
  }
  return new OverlayFs(tree, options);
}
