/**
 * OCI images for initx: references, the image cache, registries, OCI
 * layouts and archives, `docker save` archives, layers as
 * {@linkcode LayerEntry} streams, and the offline default `busybox` image.
 *
 * @example
 * ```ts ignore
 * import { ImageStore } from "./mod.ts";
 * const image = await new ImageStore().resolve("busybox");
 * for (const layer of image.layers) {
 *   for await (const entry of layer.entries()) console.log(entry.type, entry.path);
 * }
 * ```
 *
 * @module
 */

export type { LayerEntry, LayerEntryType } from "../vfs/layer.ts";
export * from "./archive.ts";
export * from "./blob_store.ts";
export * from "./default_image.ts";
export * from "./docker_config.ts";
export * from "./layer.ts";
export * from "./oci.ts";
export * from "./reference.ts";
export * from "./registry.ts";
export * from "./store.ts";
