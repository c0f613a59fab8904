/**
 * The filesystems virtio-fs serves: the {@linkcode Filesystem} interface,
 * an image's layers as a {@linkcode LayerTree} under a copy-on-write
 * {@linkcode OverlayFs}, and host directory shares ({@linkcode HostDirFs}).
 *
 * @module
 */

export * from "./errno.ts";
export * from "./filesystem.ts";
export * from "./host_dir.ts";
export * from "./image_fs.ts";
export type { LayerEntry, LayerEntryType } from "./layer.ts";
export * from "./overlay.ts";
export * from "./tree.ts";
