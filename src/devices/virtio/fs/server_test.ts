import assert from "node:assert/strict";
import {
  EINVAL,
  EIO,
  ENOENT,
  ENOSYS,
  ENOTEMPTY,
  ERANGE,
} from "../../../vfs/errno.ts";
import {
  type Filesystem,
  RENAME_NOREPLACE,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  SEEK_DATA,
} from "../../../vfs/filesystem.ts";
import { LayerTree, OverlayFs } from "../../../vfs/mod.ts";
import type { LayerEntry } from "../../../vfs/layer.ts";
import { FuseInitFlag, FuseOpcode as Op } from "./fuse.ts";
import { FUSE_MAX_IO_BYTES, FUSE_MAX_PAGES, FuseServer } from "./server.ts";
import {
  call,
  cstr,
  fields,
  initRequest,
  joinReply,
  type Reply,
  request,
} from "./_fuse_test_util.ts";

const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array) => new TextDecoder().decode(b);

async function image(): Promise<OverlayFs> {
  const base = { mode: 0o755, uid: 0, gid: 0, mtimeMs: 1_700_000_000_000 };
  const entries: LayerEntry[] = [
    { ...base, path: "etc", type: "directory" },
    {
      ...base,
      path: "etc/hostname",
      type: "file",
      mode: 0o644,
      data: text("box\n"),
    },
    { ...base, path: "bin", type: "directory" },
    {
      ...base,
      path: "bin/busybox",
      type: "file",
      data: text("\x7fELF"),
      xattrs: { "user.kind": text("elf") },
    },
    { ...base, path: "bin/sh", type: "symlink", linkTarget: "busybox" },
    { ...base, path: "data", type: "directory" },
    ...Array.from({ length: 40 }, (_, i): LayerEntry => ({
      ...base,
      path: `data/file-${String(i).padStart(2, "0")}`,
      type: "file",
      mode: 0o644,
      data: text(`n${i}`),
    })),
  ];
  const tree = new LayerTree();
  await tree.applyLayer(entries);
  return new OverlayFs(tree);
}

async function started(fs?: Filesystem) {
  const server = new FuseServer(fs ?? await image());
  const init = call(server, initRequest());
  assert.equal(init.error, 0);
  return server;
}

function lookup(server: FuseServer, parent: number, name: string): Reply {
  return call(server, request(Op.LOOKUP, parent, [cstr(name)]));
}

/** node ID and attr fields of a fuse_entry_out at `at`. */
function entryOf(r: Reply, at = 0) {
  const v = r.view;
  return {
    nodeid: Number(v.getBigUint64(at, true)),
    ino: Number(v.getBigUint64(at + 40, true)),
    size: Number(v.getBigUint64(at + 48, true)),
    mode: v.getUint32(at + 40 + 60, true),
    nlink: v.getUint32(at + 40 + 64, true),
    uid: v.getUint32(at + 40 + 68, true),
  };
}

function open(server: FuseServer, nodeid: number, flags = 0): number {
  const r = call(
    server,
    request(Op.OPEN, nodeid, [fields([4, flags], [4, 0])]),
  );
  assert.equal(r.error, 0);
  return Number(r.view.getBigUint64(0, true));
}

function read(
  server: FuseServer,
  nodeid: number,
  fh: number,
  offset: number,
  size: number,
  capacity?: number,
): Reply {
  return call(
    server,
    request(Op.READ, nodeid, [
      fields([8, fh], [8, offset], [4, size], [4, 0], [8, 0], [4, 0], [4, 0]),
    ]),
    capacity,
  );
}

function readdir(
  server: FuseServer,
  nodeid: number,
  plus: boolean,
  offset: number,
  size: number,
) {
  const opened = call(
    server,
    request(Op.OPENDIR, nodeid, [fields([4, 0], [4, 0])]),
  );
  assert.equal(opened.error, 0);
  const fh = Number(opened.view.getBigUint64(0, true));
  const r = call(
    server,
    request(plus ? Op.READDIRPLUS : Op.READDIR, nodeid, [
      fields([8, fh], [8, offset], [4, size], [4, 0], [8, 0], [4, 0], [4, 0]),
    ]),
  );
  assert.equal(r.error, 0);
  const out: {
    name: string;
    ino: number;
    off: number;
    type: number;
    nodeid?: number;
  }[] = [];
  let at = 0;
  while (at < r.body.length) {
    let nodeid: number | undefined;
    if (plus) {
      nodeid = Number(r.view.getBigUint64(at, true));
      at += 128;
    }
    const namelen = r.view.getUint32(at + 16, true);
    out.push({
      ino: Number(r.view.getBigUint64(at, true)),
      off: Number(r.view.getBigUint64(at + 8, true)),
      type: r.view.getUint32(at + 20, true),
      name: decode(r.body.subarray(at + 24, at + 24 + namelen)),
      nodeid,
    });
    at += (24 + namelen + 7) & ~7;
  }
  call(
    server,
    request(Op.RELEASEDIR, nodeid, [fields([8, fh], [4, 0], [4, 0], [8, 0])]),
  );
  return out;
}

Deno.test("FuseServer answers EIO before INIT and nothing to FORGET", async () => {
  const server = new FuseServer(await image());
  assert.equal(
    call(server, request(Op.GETATTR, 1, [new Uint8Array(16)])).error,
    -EIO,
  );
  assert.equal(
    server.handle(request(Op.FORGET, 1, [fields([8, 1])]), 4096),
    undefined,
  );
  assert.equal(server.initialized, false);
});

Deno.test("FuseServer INIT answers 7.31 with the flags it takes of those offered", async () => {
  const server = new FuseServer(await image());
  const r = call(
    server,
    initRequest(
      FuseInitFlag.ASYNC_READ | FuseInitFlag.POSIX_LOCKS |
        FuseInitFlag.MAX_PAGES,
    ),
  );
  assert.equal(r.error, 0);
  assert.equal(r.len, 16 + 64);
  assert.equal(r.view.getUint32(0, true), 7);
  assert.equal(r.view.getUint32(4, true), 31);
  assert.equal(r.view.getUint32(8, true), 128 * 1024, "max_readahead echoed");
  assert.equal(
    r.view.getUint32(12, true),
    FuseInitFlag.ASYNC_READ | FuseInitFlag.MAX_PAGES,
  );
  assert.equal(r.view.getUint32(20, true), FUSE_MAX_IO_BYTES);
  assert.equal(r.view.getUint16(28, true), FUSE_MAX_PAGES);
  assert.equal(server.initialized, true);
});

Deno.test("FuseServer INIT from a newer major answers its own major only; an old one EPROTO", async () => {
  const server = new FuseServer(await image());
  const newer = request(Op.INIT, 0, [fields([4, 8], [4, 0], [4, 0], [4, 0])]);
  const r = call(server, newer);
  assert.equal(r.error, 0);
  assert.equal(r.len, 24);
  assert.equal(r.view.getUint32(0, true), 7);
  assert.equal(server.initialized, false);
  const older = request(Op.INIT, 0, [fields([4, 6], [4, 0], [4, 0], [4, 0])]);
  assert.equal(call(server, older).error, -71);
});

Deno.test("FuseServer LOOKUP, GETATTR, READLINK and READ serve the image", async () => {
  const server = await started();
  const etc = entryOf(lookup(server, 1, "etc"));
  assert.equal(etc.mode & S_IFMT, S_IFDIR);
  const hostname = lookup(server, etc.nodeid, "hostname");
  assert.equal(hostname.error, 0);
  const e = entryOf(hostname);
  assert.equal(e.mode, S_IFREG | 0o644);
  assert.equal(e.size, 4);
  assert.equal(hostname.len, 16 + 128);
  const attr = call(
    server,
    request(Op.GETATTR, e.nodeid, [new Uint8Array(16)]),
  );
  assert.equal(attr.len, 16 + 104);
  assert.equal(Number(attr.view.getBigUint64(16 + 8, true)), 4);
  assert.equal(
    Number(attr.view.getBigUint64(16 + 32, true)),
    1_700_000_000,
    "mtime",
  );
  const fh = open(server, e.nodeid);
  const data = read(server, e.nodeid, fh, 0, 4096);
  assert.equal(decode(data.body), "box\n");
  assert.equal(data.len, 16 + 4);
  assert.equal(decode(read(server, e.nodeid, fh, 1, 2).body), "ox");
  assert.equal(read(server, e.nodeid, fh, 100, 10).body.length, 0);
  assert.equal(
    decode(read(server, e.nodeid, fh, 0, 4096, 16 + 3).body),
    "box",
    "clamped to the room given",
  );
  const bin = entryOf(lookup(server, 1, "bin")).nodeid;
  const sh = entryOf(lookup(server, bin, "sh"));
  assert.equal(sh.mode & S_IFMT, S_IFLNK);
  assert.equal(
    decode(call(server, request(Op.READLINK, sh.nodeid)).body),
    "busybox",
  );
  assert.equal(lookup(server, 1, "missing").error, -ENOENT);
  assert.equal(lookup(server, 1, "..").error, -EINVAL);
});

Deno.test("FuseServer READDIR lists in pieces that continue by offset", async () => {
  const server = await started();
  const data = entryOf(lookup(server, 1, "data")).nodeid;
  const seen: string[] = [];
  let offset = 0;
  for (let rounds = 0; rounds < 100; rounds++) {
    const part = readdir(server, data, false, offset, 256);
    if (part.length === 0) break;
    assert.ok(part.length < 42, "a 256-byte buffer holds only some entries");
    seen.push(...part.map((d) => d.name));
    offset = part.at(-1)!.off;
  }
  assert.deepEqual(seen.slice(0, 2), [".", ".."]);
  assert.equal(seen.length, 42);
  assert.equal(new Set(seen).size, 42);
  assert.ok(seen.includes("file-39"));
});

Deno.test("FuseServer READDIRPLUS carries entries, node ID 0 for . and ..", async () => {
  const server = await started();
  const bin = entryOf(lookup(server, 1, "bin")).nodeid;
  const list = readdir(server, bin, true, 0, 4096);
  assert.deepEqual(list.map((d) => d.name).sort(), [
    ".",
    "..",
    "busybox",
    "sh",
  ]);
  for (const d of list) {
    if (d.name === "." || d.name === "..") assert.equal(d.nodeid, 0);
    else assert.equal(d.nodeid, entryOf(lookup(server, bin, d.name)).nodeid);
  }
  const sh = list.find((d) => d.name === "sh")!;
  assert.equal(sh.type, S_IFLNK >> 12);
});

Deno.test("FuseServer CREATE, WRITE, SETATTR, RENAME2, LINK, SYMLINK, UNLINK, MKDIR, RMDIR", async () => {
  const server = await started();
  const created = call(
    server,
    request(Op.CREATE, 1, [
      fields([4, 0o102], [4, S_IFREG | 0o600], [4, 0o022], [4, 0]),
      cstr("new.txt"),
    ]),
  );
  assert.equal(created.error, 0);
  assert.equal(created.len, 16 + 128 + 16);
  const node = entryOf(created).nodeid;
  const fh = Number(created.view.getBigUint64(128, true));
  const payload = text("hello, world");
  const w = call(
    server,
    request(Op.WRITE, node, [
      fields([8, fh], [8, 0], [4, payload.length], [4, 0], [8, 0], [4, 0], [
        4,
        0,
      ]),
      payload,
    ]),
  );
  assert.equal(w.error, 0);
  assert.equal(w.view.getUint32(0, true), payload.length);
  assert.equal(decode(read(server, node, fh, 7, 100).body), "world");
  const truncate = new Uint8Array(88);
  const tv = new DataView(truncate.buffer);
  tv.setUint32(0, 1 << 3 | 1 << 0, true); // SIZE | MODE
  tv.setBigUint64(16, 5n, true);
  tv.setUint32(68, 0o640, true);
  const set = call(server, request(Op.SETATTR, node, [truncate]));
  assert.equal(set.error, 0);
  assert.equal(Number(set.view.getBigUint64(16 + 8, true)), 5);
  assert.equal(set.view.getUint32(16 + 60, true), S_IFREG | 0o640);
  const mkdir = call(
    server,
    request(Op.MKDIR, 1, [fields([4, 0o755], [4, 0o022]), cstr("d")]),
  );
  assert.equal(mkdir.error, 0);
  const d = entryOf(mkdir).nodeid;
  const rename = call(
    server,
    request(Op.RENAME2, 1, [
      fields([8, d], [4, RENAME_NOREPLACE], [4, 0]),
      cstr("new.txt"),
      cstr("moved"),
    ]),
  );
  assert.equal(rename.error, 0);
  assert.equal(lookup(server, 1, "new.txt").error, -ENOENT);
  assert.equal(entryOf(lookup(server, d, "moved")).nodeid, node);
  const link = call(
    server,
    request(Op.LINK, 1, [fields([8, node]), cstr("hard")]),
  );
  assert.equal(link.error, 0);
  assert.equal(entryOf(link).nlink, 2);
  const symlink = call(
    server,
    request(Op.SYMLINK, 1, [cstr("soft"), cstr("d/moved")]),
  );
  assert.equal(symlink.error, 0);
  assert.equal(
    decode(call(server, request(Op.READLINK, entryOf(symlink).nodeid)).body),
    "d/moved",
  );
  assert.equal(
    call(server, request(Op.RMDIR, 1, [cstr("d")])).error,
    -ENOTEMPTY,
  );
  assert.equal(call(server, request(Op.UNLINK, d, [cstr("moved")])).error, 0);
  assert.equal(call(server, request(Op.RMDIR, 1, [cstr("d")])).error, 0);
  assert.equal(
    decode(
      read(server, entryOf(lookup(server, 1, "hard")).nodeid, fh, 0, 100).body,
    ),
    "hello",
  );
});

Deno.test("FuseServer xattrs: size query, value, ERANGE, list, remove", async () => {
  const server = await started();
  const bin = entryOf(lookup(server, 1, "bin")).nodeid;
  const bb = entryOf(lookup(server, bin, "busybox")).nodeid;
  const get = (size: number) =>
    call(
      server,
      request(Op.GETXATTR, bb, [fields([4, size], [4, 0]), cstr("user.kind")]),
    );
  assert.equal(get(0).view.getUint32(0, true), 3);
  assert.equal(decode(get(64).body), "elf");
  assert.equal(get(2).error, -ERANGE);
  const value = text("v1");
  assert.equal(
    call(
      server,
      request(Op.SETXATTR, bb, [
        fields([4, value.length], [4, 0]),
        cstr("user.more"),
        value,
      ]),
    ).error,
    0,
  );
  const list = call(
    server,
    request(Op.LISTXATTR, bb, [fields([4, 4096], [4, 0])]),
  );
  assert.deepEqual(decode(list.body).split("\0").filter(Boolean).sort(), [
    "user.kind",
    "user.more",
  ]);
  assert.equal(
    call(server, request(Op.REMOVEXATTR, bb, [cstr("user.more")])).error,
    0,
  );
  assert.equal(
    call(
      server,
      request(Op.GETXATTR, bb, [fields([4, 64], [4, 0]), cstr("user.more")]),
    ).error,
    -61,
  );
});

Deno.test("FuseServer STATFS, LSEEK, ACCESS, FLUSH, FSYNC, unknown opcodes and DESTROY", async () => {
  const server = await started();
  const statfs = call(server, request(Op.STATFS, 1));
  assert.equal(statfs.len, 16 + 80);
  assert.ok(statfs.view.getUint32(40, true) > 0, "bsize");
  const etc = entryOf(lookup(server, 1, "etc")).nodeid;
  const host = entryOf(lookup(server, etc, "hostname")).nodeid;
  const fh = open(server, host);
  const seek = (whence: number) =>
    call(
      server,
      request(Op.LSEEK, host, [fields([8, fh], [8, 1], [4, whence], [4, 0])]),
    );
  assert.equal(seek(SEEK_DATA).error, 0);
  assert.equal(Number(seek(SEEK_DATA).view.getBigUint64(0, true)), 1);
  assert.equal(seek(0).error, -EINVAL, "SEEK_SET is the kernel's business");
  assert.equal(
    call(server, request(Op.ACCESS, host, [fields([4, 4], [4, 0])])).error,
    0,
  );
  assert.equal(
    call(
      server,
      request(Op.FLUSH, host, [fields([8, fh], [4, 0], [4, 0], [8, 0])]),
    ).error,
    0,
  );
  assert.equal(
    call(server, request(Op.FSYNC, host, [fields([8, fh], [4, 1], [4, 0])]))
      .error,
    0,
  );
  for (
    const opcode of [
      Op.GETLK,
      Op.IOCTL,
      Op.SYNCFS,
      Op.COPY_FILE_RANGE,
      7,
      99,
      0xffffffff,
    ]
  ) {
    const r = call(server, request(opcode, 1, [new Uint8Array(64)], 77n));
    assert.equal(r.error, -ENOSYS, `opcode ${opcode}`);
    assert.equal(r.unique, 77n);
  }
  assert.equal(call(server, request(Op.DESTROY, 0)).error, 0);
  assert.equal(server.initialized, false);
  assert.equal(lookup(server, 1, "etc").error, -EIO);
  assert.equal(call(server, initRequest()).error, 0, "a new session may start");
  assert.equal(lookup(server, 1, "etc").error, 0);
});

Deno.test("FuseServer answers malformed requests with EINVAL and a correct length", async () => {
  const server = await started();
  const cases: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["short header", new Uint8Array(39)],
    [
      "len past the buffer",
      (() => {
        const r = request(Op.LOOKUP, 1, [cstr("etc")]);
        new DataView(r.buffer).setUint32(0, r.length + 1, true);
        return r;
      })(),
    ],
    [
      "len under a header",
      (() => {
        const r = request(Op.LOOKUP, 1, [cstr("etc")]);
        new DataView(r.buffer).setUint32(0, 12, true);
        return r;
      })(),
    ],
    ["name without NUL", request(Op.LOOKUP, 1, [text("etc")])],
    ["short READ", request(Op.READ, 2, [new Uint8Array(39)])],
    [
      "WRITE size past its data",
      request(Op.WRITE, 2, [
        fields([8, 1], [8, 0], [4, 100], [4, 0], [8, 0], [4, 0], [4, 0]),
        text("x"),
      ]),
    ],
    [
      "WRITE over max_write",
      request(Op.WRITE, 2, [
        fields([8, 1], [8, 0], [4, FUSE_MAX_IO_BYTES + 1], [4, 0], [8, 0], [
          4,
          0,
        ], [4, 0]),
      ]),
    ],
    ["node ID past 2^53", request(Op.GETATTR, 0, [new Uint8Array(16)])],
    [
      "SETXATTR value past its data",
      request(Op.SETXATTR, 1, [
        fields([4, 50], [4, 0]),
        cstr("user.x"),
        text("ab"),
      ]),
    ],
    [
      "RENAME without a second name",
      request(Op.RENAME, 1, [fields([8, 1]), cstr("etc")]),
    ],
    ["non-UTF-8 name", request(Op.LOOKUP, 1, [Uint8Array.of(0xff, 0xfe, 0)])],
  ];
  new DataView(cases[8]![1].buffer).setBigUint64(16, 1n << 60n, true);
  for (const [what, req] of cases) {
    const pieces = server.handle(req, 4096);
    assert.ok(pieces, what);
    const r = joinReply(pieces);
    assert.equal(r.error, -EINVAL, what);
    assert.equal(r.len, 16, what);
  }
  assert.equal(
    server.handle(
      request(Op.BATCH_FORGET, 0, [
        fields([4, 1_000_000], [4, 0]),
        fields([8, 2], [8, 1]),
      ]),
      4096,
    ),
    undefined,
  );
  assert.equal(lookup(server, 1, "etc").error, 0, "still serving");
});

Deno.test("FuseServer turns a reply that cannot fit into ERANGE and a filesystem bug into EIO", async () => {
  const errors: string[] = [];
  const fs = await image();
  const broken = new Proxy(fs, {
    get(target, key) {
      if (key === "statfs") {
        return () => {
          throw new TypeError("bug");
        };
      }
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const server = new FuseServer(broken, {
    onError: (e, op) => void errors.push(`${op}: ${(e as Error).message}`),
  });
  call(server, initRequest());
  assert.equal(call(server, request(Op.STATFS, 1)).error, -EIO);
  assert.deepEqual(errors, ["STATFS: bug"]);
  const pieces = server.handle(request(Op.LOOKUP, 1, [cstr("etc")]), 100);
  assert.equal(joinReply(pieces!).error, -ERANGE);
});
