/**
 * An image's filesystem as an in-memory inode tree: the union of its layers,
 * applied in order with OCI whiteout semantics (OCI image spec,
 * `layer.md`, "Whiteouts"):
 *
 * - `DIR/.wh.NAME` deletes `DIR/NAME` of lower layers;
 * - `DIR/.wh..wh..opq` makes `DIR` opaque: what lower layers put in it is
 *   gone;
 * - whiteouts only hide lower layers: what the same layer adds stays, in
 *   whatever order the tar lists the two;
 * - other `.wh..wh.*` names are aufs bookkeeping and are skipped.
 *
 * A path whose parent is missing gets implicit parent directories (0755,
 * root); a symlink among the parents is followed inside the tree, as
 * containerd's applier does; an entry replaces what was at its path, except
 * that a directory over a directory merges. Hard links share one inode.
 *
 * The tree is the read-only lower layer of every VM's
 * {@linkcode OverlayFs}: once one is made from it, {@linkcode LayerTree.freeze}
 * has been called and no more layers can be applied.
 *
 * @module
 */

import {
  makeDev,
  S_IALLUGO,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  type Timespec,
  timespecFromMs,
} from "./filesystem.ts";
import type { LayerEntry, LayerEntryType } from "./layer.ts";

/** Prefix of a whiteout file name (OCI image spec, layer.md). */
export const WHITEOUT_PREFIX = ".wh.";
/** Name of the opaque-directory marker. */
export const WHITEOUT_OPAQUE = ".wh..wh..opq";
/** Symlinks followed at most while resolving one entry's parents. */
const MAX_SYMLINK_HOPS = 40;
/** Mode of an implicit parent directory. */
const IMPLICIT_DIR_MODE = 0o755;

/**
 * One inode of a {@linkcode LayerTree}. Read it, never change it: it is
 * shared by every VM made from the tree.
 *
 * @example
 * ```ts
 * import { LayerTree } from "./tree.ts";
 * const tree = new LayerTree();
 * console.log(tree.node(1)?.entries?.size); // 0: an empty root
 * ```
 */
export interface TreeNode {
  /** Inode number (the root is 1). */
  readonly ino: number;
  /** File type and permission bits. */
  mode: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Modification time (also shown as access and change time). */
  mtime: Timespec;
  /** Hard links (directories: 2 + subdirectories). */
  nlink: number;
  /** Device number of a device node ({@linkcode makeDev} encoding). */
  rdev: number;
  /** Extended attributes. */
  xattrs: Map<string, Uint8Array>;
  /** A regular file's contents (the layer's bytes, not a copy). */
  data?: Uint8Array;
  /** A symlink's target. */
  target?: string;
  /** A directory's entries: name to inode number. */
  entries?: Map<string, number>;
  /** A directory's parent inode (the root's is itself). */
  parent: number;
}

/**
 * The union of an image's layers.
 *
 * @example
 * ```ts
 * import { LayerTree } from "./tree.ts";
 * const text = (s: string) => new TextEncoder().encode(s);
 * const base = { mode: 0o644, uid: 0, gid: 0, mtimeMs: 0 };
 * const tree = new LayerTree();
 * await tree.applyLayer([
 *   { ...base, path: "etc/motd", type: "file", data: text("hi\n") },
 *   { ...base, path: "etc/issue", type: "file", data: text("Debian\n") },
 * ]);
 * await tree.applyLayer([
 *   { ...base, path: "etc/.wh.motd", type: "file", data: new Uint8Array() },
 * ]);
 * console.log([...tree.list("etc")]); // ["issue"]
 * ```
 */
export class LayerTree {
  #nodes = new Map<number, TreeNode>();
  #nextIno = 2;
  #frozen = false;
  #applying = false;
  #dataBytes = 0;

  /** An empty tree: a root directory (0755, root, time 0). */
  constructor() {
    this.#nodes.set(1, {
      ino: 1,
      mode: S_IFDIR | IMPLICIT_DIR_MODE,
      uid: 0,
      gid: 0,
      mtime: { sec: 0, nsec: 0 },
      nlink: 2,
      rdev: 0,
      xattrs: new Map(),
      entries: new Map(),
      parent: 1,
    });
  }

  /** Whether layers can no longer be applied. */
  get frozen(): boolean {
    return this.#frozen;
  }

  /** Inodes in the tree. */
  get nodeCount(): number {
    return this.#nodes.size;
  }

  /** One more than the largest inode number handed out. */
  get nextIno(): number {
    return this.#nextIno;
  }

  /** Bytes of regular file contents in the tree (hard links counted once). */
  get dataBytes(): number {
    return this.#dataBytes;
  }

  /** The inode `ino`, if it exists. */
  node(ino: number): Readonly<TreeNode> | undefined {
    return this.#nodes.get(ino);
  }

  /**
   * The names in directory `path` (relative to the root, no symlinks
   * followed); empty if it is not a directory.
   */
  list(path: string): string[] {
    const node = this.lookupPath(path);
    return node?.entries ? [...node.entries.keys()] : [];
  }

  /** The inode at `path` (relative, no symlinks followed), if any. */
  lookupPath(path: string): Readonly<TreeNode> | undefined {
    let node = this.#nodes.get(1);
    for (const name of splitPath(path)) {
      const ino = node?.entries?.get(name);
      node = ino === undefined ? undefined : this.#nodes.get(ino);
      if (node === undefined) return undefined;
    }
    return node;
  }

  /**
   * Ends layer application; {@linkcode OverlayFs} calls it, since VMs share
   * the tree.
   */
  freeze(): void {
    this.#frozen = true;
  }

  /**
   * Applies one layer's entries on top of the tree. Throws on an entry that
   * breaks the {@linkcode LayerEntry} contract (a `..` component, a hard
   * link to a missing file or a directory), when the tree is frozen, or
   * when another application is still running; entries before the bad one
   * stay applied.
   */
  async applyLayer(
    entries: Iterable<LayerEntry> | AsyncIterable<LayerEntry>,
  ): Promise<void> {
    if (this.#frozen) {
      throw new Error(
        "Cannot apply a layer: the tree is frozen (a VM filesystem uses it)",
      );
    }
    if (this.#applying) {
      throw new Error("Cannot apply a layer: another layer is being applied");
    }
    this.#applying = true;
    try {
      const layer = new Set<string>();
      for await (const entry of entries) this.#apply(entry, layer);
    } finally {
      this.#applying = false;
    }
  }

  #apply(entry: LayerEntry, layer: Set<string>): void {
    const parts = splitPath(entry.path);
    if (parts.includes("..")) {
      throw new Error(
        `Cannot apply layer entry ${
          JSON.stringify(entry.path)
        }: the path has a ".." component`,
      );
    }
    const mtime = timespecFromMs(entry.mtimeMs);
    if (parts.length === 0) {
      if (entry.type === "directory") this.#setMetadata(this.#root(), entry);
      return;
    }
    const name = parts[parts.length - 1]!;
    if (name === WHITEOUT_OPAQUE) {
      const { node, path } = this.#directory(parts.slice(0, -1), mtime, layer);
      this.#prune(node, path, layer);
      return;
    }
    if (name.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) return;
    if (name.startsWith(WHITEOUT_PREFIX)) {
      const hidden = name.slice(WHITEOUT_PREFIX.length);
      const dir = this.#findDirectory(parts.slice(0, -1));
      if (dir === undefined || hidden === "" || hidden === ".") return;
      const ino = dir.node.entries!.get(hidden);
      if (ino === undefined) return;
      const path = joinPath(dir.path, hidden);
      const child = this.#nodes.get(ino)!;
      if (layer.has(path)) this.#prune(child, path, layer);
      else this.#removeEntry(dir.node, hidden);
      return;
    }
    const { node: parent, path: parentPath } = this.#directory(
      parts.slice(0, -1),
      mtime,
      layer,
    );
    const path = joinPath(parentPath, name);
    layer.add(path);
    const existingIno = parent.entries!.get(name);
    const existing = existingIno === undefined
      ? undefined
      : this.#nodes.get(existingIno);
    if (entry.type === "hardlink") {
      this.#hardLink(entry, parent, name);
      return;
    }
    if (entry.type === "directory" && existing && isDir(existing)) {
      this.#setMetadata(existing, entry);
      return;
    }
    if (existing) this.#removeEntry(parent, name);
    const node = this.#newNode(entry, parent.ino);
    parent.entries!.set(name, node.ino);
    if (isDir(node)) parent.nlink++;
  }

  #hardLink(entry: LayerEntry, parent: TreeNode, name: string): void {
    const where = `Cannot apply hard link ${JSON.stringify(entry.path)}`;
    const targetParts = splitPath(entry.linkTarget ?? "");
    if (targetParts.length === 0 || targetParts.includes("..")) {
      throw new Error(
        `${where}: target ${
          JSON.stringify(entry.linkTarget)
        } is not a normalized relative path`,
      );
    }
    const dir = this.#findDirectory(targetParts.slice(0, -1));
    const targetIno = dir?.node.entries?.get(targetParts.at(-1)!);
    const target = targetIno === undefined
      ? undefined
      : this.#nodes.get(targetIno);
    if (target === undefined) {
      throw new Error(
        `${where}: target ${JSON.stringify(entry.linkTarget)} does not exist`,
      );
    }
    if (isDir(target)) {
      throw new Error(
        `${where}: target ${JSON.stringify(entry.linkTarget)} is a directory`,
      );
    }
    if (parent.entries!.get(name) === target.ino) return;
    // Count the link first: the entry it replaces may hold the target.
    target.nlink++;
    if (parent.entries!.has(name)) this.#removeEntry(parent, name);
    parent.entries!.set(name, target.ino);
  }

  #newNode(entry: LayerEntry, parent: number): TreeNode {
    const node: TreeNode = {
      ino: this.#nextIno++,
      mode: typeBits(entry.type) | (entry.mode & S_IALLUGO),
      uid: entry.uid,
      gid: entry.gid,
      mtime: timespecFromMs(entry.mtimeMs),
      nlink: 1,
      rdev: 0,
      xattrs: xattrMap(entry.xattrs),
      parent,
    };
    switch (entry.type) {
      case "file":
        node.data = entry.data ?? new Uint8Array(0);
        this.#dataBytes += node.data.length;
        break;
      case "directory":
        node.entries = new Map();
        node.nlink = 2;
        break;
      case "symlink":
        node.target = entry.linkTarget ?? "";
        break;
      case "char":
      case "block":
        node.rdev = makeDev(entry.devMajor ?? 0, entry.devMinor ?? 0);
        break;
    }
    this.#nodes.set(node.ino, node);
    return node;
  }

  #setMetadata(node: TreeNode, entry: LayerEntry): void {
    node.mode = (node.mode & S_IFMT) | (entry.mode & S_IALLUGO);
    node.uid = entry.uid;
    node.gid = entry.gid;
    node.mtime = timespecFromMs(entry.mtimeMs);
    node.xattrs = xattrMap(entry.xattrs);
  }

  #root(): TreeNode {
    return this.#nodes.get(1)!;
  }

  /**
   * The directory at `parts`, following symlinks inside the tree and making
   * missing (or non-directory) components implicit directories; every
   * directory passed through counts as part of the layer.
   */
  #directory(
    parts: string[],
    mtime: Timespec,
    layer: Set<string>,
    hops = { count: 0 },
  ): { node: TreeNode; path: string[] } {
    let node = this.#root();
    let path: string[] = [];
    for (const name of parts) {
      const ino = node.entries!.get(name);
      let child = ino === undefined ? undefined : this.#nodes.get(ino);
      if (child && (child.mode & S_IFMT) === S_IFLNK) {
        if (++hops.count > MAX_SYMLINK_HOPS) {
          throw new Error(
            `Cannot resolve layer path ${
              JSON.stringify(parts.join("/"))
            }: more than ${MAX_SYMLINK_HOPS} symlinks`,
          );
        }
        const resolved = this.#directory(
          resolveTarget(path, child.target ?? ""),
          mtime,
          layer,
          hops,
        );
        node = resolved.node;
        path = resolved.path;
        continue;
      }
      if (child === undefined || !isDir(child)) {
        if (child) this.#removeEntry(node, name);
        child = this.#newNode({
          path: name,
          type: "directory",
          mode: IMPLICIT_DIR_MODE,
          uid: 0,
          gid: 0,
          mtimeMs: mtime.sec * 1000 + mtime.nsec / 1e6,
        }, node.ino);
        node.entries!.set(name, child.ino);
        node.nlink++;
      }
      path = [...path, name];
      layer.add(path.join("/"));
      node = child;
    }
    return { node, path };
  }

  /** Like #directory, without making anything; undefined when it is missing. */
  #findDirectory(
    parts: string[],
    hops = { count: 0 },
  ): { node: TreeNode; path: string[] } | undefined {
    let node = this.#root();
    let path: string[] = [];
    for (const name of parts) {
      const ino = node.entries!.get(name);
      const child = ino === undefined ? undefined : this.#nodes.get(ino);
      if (child === undefined) return undefined;
      if ((child.mode & S_IFMT) === S_IFLNK) {
        if (++hops.count > MAX_SYMLINK_HOPS) return undefined;
        const resolved = this.#findDirectory(
          resolveTarget(path, child.target ?? ""),
          hops,
        );
        if (resolved === undefined) return undefined;
        ({ node, path } = resolved);
        continue;
      }
      if (!isDir(child)) return undefined;
      path = [...path, name];
      node = child;
    }
    return { node, path };
  }

  /** Removes from `dir` (at `path`) everything the current layer did not add. */
  #prune(dir: TreeNode, path: string[] | string, layer: Set<string>): void {
    if (!isDir(dir)) return;
    const base = typeof path === "string" ? path : path.join("/");
    for (const [name, ino] of [...dir.entries!]) {
      const childPath = base === "" ? name : `${base}/${name}`;
      if (!layer.has(childPath)) this.#removeEntry(dir, name);
      else this.#prune(this.#nodes.get(ino)!, childPath, layer);
    }
  }

  #removeEntry(dir: TreeNode, name: string): void {
    const ino = dir.entries!.get(name);
    if (ino === undefined) return;
    dir.entries!.delete(name);
    const node = this.#nodes.get(ino);
    if (node === undefined) return;
    if (isDir(node)) {
      dir.nlink--;
      this.#dropTree(node);
    } else if (--node.nlink === 0) {
      this.#nodes.delete(ino);
      this.#dataBytes -= node.data?.length ?? 0;
    }
  }

  #dropTree(dir: TreeNode): void {
    for (const name of [...dir.entries!.keys()]) this.#removeEntry(dir, name);
    this.#nodes.delete(dir.ino);
  }
}

function isDir(node: TreeNode): boolean {
  return (node.mode & S_IFMT) === S_IFDIR;
}

function typeBits(type: LayerEntryType): number {
  switch (type) {
    case "file":
    case "hardlink":
      return S_IFREG;
    case "directory":
      return S_IFDIR;
    case "symlink":
      return S_IFLNK;
    case "char":
      return S_IFCHR;
    case "block":
      return S_IFBLK;
    case "fifo":
      return S_IFIFO;
  }
}

function xattrMap(
  xattrs: Record<string, Uint8Array> | undefined,
): Map<string, Uint8Array> {
  return new Map(Object.entries(xattrs ?? {}));
}

/** A path's components without empty and "." ones. */
function splitPath(path: string): string[] {
  return path.split("/").filter((p) => p !== "" && p !== ".");
}

function joinPath(parent: string[], name: string): string {
  return parent.length === 0 ? name : `${parent.join("/")}/${name}`;
}

/**
 * The components a symlink in directory `base` with `target` points at,
 * confined to the root: absolute targets start at the root, and `..` stops
 * there.
 */
function resolveTarget(base: string[], target: string): string[] {
  const out = target.startsWith("/") ? [] : [...base];
  for (const part of target.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return out;
}
