import assert from "node:assert/strict";
import {
  devMajor,
  devMinor,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
} from "./filesystem.ts";
import type { LayerEntry } from "./layer.ts";
import { OverlayFs } from "./overlay.ts";
import { LayerTree } from "./tree.ts";

const BASE = { mode: 0o644, uid: 0, gid: 0, mtimeMs: 0 };

function text(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function file(path: string, contents: string): LayerEntry {
  return { ...BASE, path, type: "file", data: text(contents) };
}

function dir(path: string, mode = 0o755): LayerEntry {
  return { ...BASE, path, type: "directory", mode };
}

function whiteout(path: string): LayerEntry {
  return { ...BASE, path, type: "file", data: new Uint8Array(0) };
}

function contentsOf(tree: LayerTree, path: string): string {
  const node = tree.lookupPath(path);
  assert.ok(node?.data, `${path} is a regular file`);
  return new TextDecoder().decode(node.data);
}

async function treeOf(...layers: LayerEntry[][]): Promise<LayerTree> {
  const tree = new LayerTree();
  for (const layer of layers) await tree.applyLayer(layer);
  return tree;
}

Deno.test("LayerTree starts as an empty root directory", () => {
  const tree = new LayerTree();
  const root = tree.node(1);
  assert.equal(root?.mode, S_IFDIR | 0o755);
  assert.equal(root?.nlink, 2);
  assert.equal(root?.parent, 1);
  assert.deepEqual(tree.list(""), []);
  assert.equal(tree.nodeCount, 1);
  assert.equal(tree.frozen, false);
});

Deno.test("applyLayer() stacks layers: upper files replace lower ones, directories merge", async () => {
  const tree = await treeOf(
    [dir("etc"), file("etc/hostname", "lower\n"), file("etc/motd", "hi\n")],
    [dir("etc", 0o700), file("etc/hostname", "upper\n"), file("etc/new", "")],
  );
  assert.deepEqual(tree.list("etc").sort(), ["hostname", "motd", "new"]);
  assert.equal(contentsOf(tree, "etc/hostname"), "upper\n");
  assert.equal(contentsOf(tree, "etc/motd"), "hi\n");
  assert.equal(tree.lookupPath("etc")?.mode, S_IFDIR | 0o700);
  assert.equal(tree.dataBytes, "upper\n".length + "hi\n".length);
});

Deno.test("applyLayer() makes missing parents implicit 0755 root directories", async () => {
  const tree = await treeOf([
    { ...file("usr/lib/x", "x"), uid: 5, mtimeMs: 2000 },
  ]);
  const usr = tree.lookupPath("usr");
  assert.equal(usr?.mode, S_IFDIR | 0o755);
  assert.equal(usr?.uid, 0);
  assert.equal(tree.node(1)?.nlink, 3);
  assert.equal(tree.lookupPath("usr/lib")?.parent, usr?.ino);
  assert.equal(tree.lookupPath("usr/lib/x")?.uid, 5);
});

Deno.test("applyLayer() replaces a lower directory by a file and a file by a directory", async () => {
  const tree = await treeOf(
    [dir("a"), file("a/inner", "1"), file("b", "2")],
    [file("a", "now a file"), dir("b")],
  );
  assert.equal(tree.lookupPath("a")!.mode & S_IFMT, S_IFREG);
  assert.equal(tree.lookupPath("b")!.mode & S_IFMT, S_IFDIR);
  assert.equal(tree.lookupPath("a/inner"), undefined);
  assert.equal(tree.node(1)?.nlink, 3);
  assert.equal(tree.dataBytes, "now a file".length);
  // Root, a, b.
  assert.equal(tree.nodeCount, 3);
});

Deno.test("applyLayer() removes a lower file for a whiteout", async () => {
  const tree = await treeOf(
    [file("etc/motd", "hi\n"), file("etc/issue", "Debian\n")],
    [whiteout("etc/.wh.motd")],
  );
  assert.deepEqual(tree.list("etc"), ["issue"]);
  assert.equal(tree.lookupPath("etc/motd"), undefined);
  assert.equal(tree.dataBytes, "Debian\n".length);
});

Deno.test("applyLayer() removes a lower directory tree for a whiteout", async () => {
  const tree = await treeOf(
    [dir("var"), dir("var/cache"), file("var/cache/a", "a")],
    [whiteout("var/.wh.cache")],
  );
  assert.deepEqual(tree.list("var"), []);
  assert.equal(tree.lookupPath("var")?.nlink, 2);
  // Root and var.
  assert.equal(tree.nodeCount, 2);
  assert.equal(tree.dataBytes, 0);
});

Deno.test("applyLayer() keeps what the same layer adds, before or after its whiteout", async () => {
  const tree = await treeOf(
    [file("a", "lower a"), file("b", "lower b")],
    [
      file("a", "upper a"),
      whiteout(".wh.a"),
      whiteout(".wh.b"),
      file("b", "upper b"),
    ],
  );
  assert.equal(contentsOf(tree, "a"), "upper a");
  assert.equal(contentsOf(tree, "b"), "upper b");
});

Deno.test("applyLayer() ignores a whiteout of a missing name and never adds the whiteout", async () => {
  const tree = await treeOf([file("a", "a")], [whiteout(".wh.nothing")]);
  assert.deepEqual(tree.list(""), ["a"]);
});

Deno.test("applyLayer() hides lower contents of an opaque directory", async () => {
  const tree = await treeOf(
    [dir("d"), file("d/old", "1"), dir("d/sub"), file("d/sub/deep", "2")],
    [
      file("d/early", "3"),
      whiteout("d/.wh..wh..opq"),
      file("d/late", "4"),
    ],
  );
  assert.deepEqual(tree.list("d").sort(), ["early", "late"]);
  assert.equal(tree.lookupPath("d")?.nlink, 2);
  assert.equal(tree.dataBytes, 2);
});

Deno.test("applyLayer() makes an opaque directory hide lower contents of merged subdirectories", async () => {
  const tree = await treeOf(
    [dir("d"), dir("d/sub"), file("d/sub/lower", "1")],
    [dir("d/sub"), file("d/sub/upper", "2"), whiteout("d/.wh..wh..opq")],
  );
  assert.deepEqual(tree.list("d"), ["sub"]);
  assert.deepEqual(tree.list("d/sub"), ["upper"]);
});

Deno.test("applyLayer() skips other .wh..wh. names", async () => {
  const tree = await treeOf(
    [file("a", "a")],
    [whiteout(".wh..wh.plnk"), whiteout(".wh..wh.aufs")],
  );
  assert.deepEqual(tree.list(""), ["a"]);
});

Deno.test("applyLayer() makes a hard link share the target's inode", async () => {
  const tree = await treeOf([
    file("bin/busybox", "ELF"),
    { ...BASE, path: "bin/sh", type: "hardlink", linkTarget: "bin/busybox" },
  ]);
  const target = tree.lookupPath("bin/busybox")!;
  const link = tree.lookupPath("bin/sh")!;
  assert.equal(link, target);
  assert.equal(target.nlink, 2);
  assert.equal(tree.dataBytes, 3);

  await tree.applyLayer([whiteout("bin/.wh.busybox")]);
  assert.equal(tree.lookupPath("bin/sh")?.nlink, 1);
  assert.equal(contentsOf(tree, "bin/sh"), "ELF");
  assert.equal(tree.dataBytes, 3);
});

Deno.test("applyLayer() keeps a hard link's target when the link replaces the directory holding it", async () => {
  const tree = await treeOf([
    dir("a"),
    file("a/f", "data"),
    { ...BASE, path: "a", type: "hardlink", linkTarget: "a/f" },
  ]);
  const node = tree.lookupPath("a");
  assert.ok(node, "the link names a live inode");
  assert.equal(tree.node(node.ino), node);
  assert.equal(node.nlink, 1);
  assert.equal(contentsOf(tree, "a"), "data");
  assert.equal(tree.dataBytes, 4);
});

Deno.test("applyLayer() rejects a hard link to a missing target or a directory", async () => {
  const tree = new LayerTree();
  await assert.rejects(
    tree.applyLayer([
      file("kept", "k"),
      { ...BASE, path: "x", type: "hardlink", linkTarget: "missing" },
    ]),
    /Cannot apply hard link "x": target "missing" does not exist/,
  );
  assert.deepEqual(tree.list(""), ["kept"]);
  await assert.rejects(
    tree.applyLayer([
      dir("d"),
      { ...BASE, path: "y", type: "hardlink", linkTarget: "d" },
    ]),
    /is a directory/,
  );
  await assert.rejects(
    tree.applyLayer([
      { ...BASE, path: "z", type: "hardlink", linkTarget: "../kept" },
    ]),
    /not a normalized relative path/,
  );
  assert.equal(tree.lookupPath("z"), undefined);
});

Deno.test("applyLayer() rejects a path with a .. component and keeps earlier entries", async () => {
  const tree = new LayerTree();
  await assert.rejects(
    tree.applyLayer([file("ok", "1"), file("a/../../escape", "2")]),
    /Cannot apply layer entry "a\/\.\.\/\.\.\/escape": the path has a "\.\." component/,
  );
  assert.deepEqual(tree.list(""), ["ok"]);
  await assert.rejects(tree.applyLayer([file("..", "x")]), /"\.\."/);
  assert.deepEqual(tree.list(""), ["ok"]);
});

Deno.test("applyLayer() keeps a symlink's target and follows symlinked parents inside the tree", async () => {
  const tree = await treeOf(
    [
      dir("usr"),
      dir("usr/lib"),
      { ...BASE, path: "lib", type: "symlink", linkTarget: "usr/lib" },
      { ...BASE, path: "up", type: "symlink", linkTarget: "../../../usr" },
      { ...BASE, path: "abs", type: "symlink", linkTarget: "/etc" },
    ],
    [file("lib/libc.so", "c"), file("up/x", "x"), file("abs/passwd", "p")],
  );
  const lib = tree.lookupPath("lib")!;
  assert.equal(lib.mode & S_IFMT, S_IFLNK);
  assert.equal(lib.target, "usr/lib");
  assert.deepEqual(tree.list("usr/lib"), ["libc.so"]);
  // `..` stops at the root; absolute targets start there.
  assert.deepEqual(tree.list("usr").sort(), ["lib", "x"]);
  assert.deepEqual(tree.list("etc"), ["passwd"]);
});

Deno.test("applyLayer() stops at a symlink loop among parents", async () => {
  const tree = await treeOf([
    { ...BASE, path: "loop", type: "symlink", linkTarget: "loop" },
  ]);
  await assert.rejects(
    tree.applyLayer([file("loop/x", "x")]),
    /more than 40 symlinks/,
  );
});

Deno.test("applyLayer() keeps modes, owners, times and device numbers", async () => {
  const tree = await treeOf([
    {
      ...BASE,
      path: "usr/bin/sudo",
      type: "file",
      mode: 0o104755,
      uid: 0,
      gid: 50,
      mtimeMs: 1_700_000_000_250.5,
      data: text("x"),
    },
    { ...BASE, path: "tmp", type: "directory", mode: 0o1777, uid: 7 },
    {
      ...BASE,
      path: "dev/null",
      type: "char",
      mode: 0o666,
      devMajor: 1,
      devMinor: 3,
    },
    {
      ...BASE,
      path: "dev/sda",
      type: "block",
      mode: 0o660,
      devMajor: 8,
      devMinor: 300,
    },
    { ...BASE, path: "run/fifo", type: "fifo", mode: 0o600 },
    { ...BASE, path: "", type: "directory", mode: 0o700, uid: 3 },
  ]);
  const sudo = tree.lookupPath("usr/bin/sudo")!;
  // Type bits come from the entry type; only 0o7777 of the mode is kept.
  assert.equal(sudo.mode, S_IFREG | 0o4755);
  assert.equal(sudo.gid, 50);
  assert.deepEqual(sudo.mtime, { sec: 1_700_000_000, nsec: 250_500_000 });
  assert.equal(tree.lookupPath("tmp")?.mode, S_IFDIR | 0o1777);
  assert.equal(tree.lookupPath("tmp")?.uid, 7);
  const devNull = tree.lookupPath("dev/null")!;
  assert.equal(devNull.mode, S_IFCHR | 0o666);
  assert.equal(devMajor(devNull.rdev), 1);
  assert.equal(devMinor(devNull.rdev), 3);
  const sda = tree.lookupPath("dev/sda")!;
  assert.equal(sda.mode, S_IFBLK | 0o660);
  assert.equal(devMajor(sda.rdev), 8);
  assert.equal(devMinor(sda.rdev), 300);
  assert.equal(tree.lookupPath("run/fifo")?.mode, S_IFIFO | 0o600);
  // A root entry sets the root's metadata.
  assert.equal(tree.node(1)?.mode, S_IFDIR | 0o700);
  assert.equal(tree.node(1)?.uid, 3);
});

Deno.test("applyLayer() keeps extended attributes, and a merged directory takes the upper ones", async () => {
  const cap = new Uint8Array([1, 0, 0, 2]);
  const tree = await treeOf(
    [
      { ...file("bin/ping", "p"), xattrs: { "security.capability": cap } },
      { ...dir("d"), xattrs: { "user.a": text("1") } },
    ],
    [{ ...dir("d"), xattrs: { "user.b": text("2") } }],
  );
  const ping = tree.lookupPath("bin/ping")!;
  assert.deepEqual([...ping.xattrs.keys()], ["security.capability"]);
  assert.deepEqual(ping.xattrs.get("security.capability"), cap);
  assert.deepEqual([...tree.lookupPath("d")!.xattrs.keys()], ["user.b"]);
  assert.deepEqual(tree.lookupPath("bin")!.xattrs.size, 0);
});

Deno.test("applyLayer() accepts an async iterable", async () => {
  async function* entries(): AsyncGenerator<LayerEntry> {
    yield file("a", "1");
    yield file("b", "2");
  }
  const tree = new LayerTree();
  await tree.applyLayer(entries());
  assert.deepEqual(tree.list("").sort(), ["a", "b"]);
});

Deno.test("applyLayer() rejects a second layer while one is being applied", async () => {
  const tree = new LayerTree();
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  async function* slow(): AsyncGenerator<LayerEntry> {
    yield file("a", "1");
    await gate;
  }
  const first = tree.applyLayer(slow());
  await assert.rejects(
    tree.applyLayer([file("b", "2")]),
    /another layer is being applied/,
  );
  release();
  await first;
  assert.deepEqual(tree.list(""), ["a"]);
});

Deno.test("applyLayer() is rejected after freeze(), and OverlayFs freezes the tree", async () => {
  const tree = await treeOf([file("a", "1")]);
  tree.freeze();
  assert.equal(tree.frozen, true);
  await assert.rejects(
    tree.applyLayer([file("b", "2")]),
    /Cannot apply a layer: the tree is frozen/,
  );
  assert.deepEqual(tree.list(""), ["a"]);

  const other = await treeOf([file("a", "1")]);
  new OverlayFs(other);
  assert.equal(other.frozen, true);
  await assert.rejects(other.applyLayer([file("b", "2")]), /frozen/);
});
