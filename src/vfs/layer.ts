/**
 * One entry of an image layer, as the image layer (`src/image/`) reads it
 * from a layer's tar stream and the filesystem layer (`src/vfs/`) applies
 * it. Whiteouts (`.wh.NAME`, `.wh..wh..opq`) arrive as plain entries with
 * those names; applying them is the filesystem's business.
 *
 * @module
 */

/** The kinds of layer entries. */
export type LayerEntryType =
  | "file"
  | "directory"
  | "symlink"
  | "hardlink"
  | "char"
  | "block"
  | "fifo";

/**
 * A file, directory, link or device node of a layer.
 *
 * @example
 * ```ts
 * import type { LayerEntry } from "./layer.ts";
 * const entry: LayerEntry = {
 *   path: "etc/hostname",
 *   type: "file",
 *   mode: 0o644,
 *   uid: 0,
 *   gid: 0,
 *   mtimeMs: 0,
 *   data: new TextEncoder().encode("box\n"),
 * };
 * ```
 */
export interface LayerEntry {
  /** Path relative to the root, normalized, without a leading `/` or `..`. */
  path: string;
  /** What the entry is. */
  type: LayerEntryType;
  /** Permission bits, setuid/setgid/sticky included (`0o7777`). */
  mode: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Modification time, in milliseconds since the epoch. */
  mtimeMs: number;
  /** A file's contents. */
  data?: Uint8Array;
  /** A symlink's target, or a hard link's target path (relative, normalized). */
  linkTarget?: string;
  /** A device node's major number. */
  devMajor?: number;
  /** A device node's minor number. */
  devMinor?: number;
  /** Extended attributes (PAX `SCHILY.xattr.*`), when the layer has them. */
  xattrs?: Record<string, Uint8Array>;
}
