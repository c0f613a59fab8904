// Unit tests of the lab payload's library lookup: readelf's output, and the
// NEEDED closure over a fake unpacked root. Nothing is fetched or booted.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import {
  type ElfDeps,
  type LabFile,
  libraryClosure,
  parseReadelf,
  readElfDeps,
} from "./payload.ts";
import { needTool } from "../../tests/_gate.ts";
import { withTempDir } from "../../tests/_util.ts";

// What `readelf -d -l -W` prints for an aarch64 executable (shortened).
const READELF_EXECUTABLE = `
Elf file type is DYN (Position-Independent Executable file)
Program Headers:
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  PHDR           0x000040 0x0000000000000040 0x0000000000000040 0x0002a0 0x0002a0 R   0x8
  INTERP         0x0002a8 0x00000000000002a8 0x00000000000002a8 0x00001b 0x00001b R   0x1
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]

Dynamic section at offset 0x50b6a08 contains 34 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libdl.so.2]
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [not.needed.so]
 0x000000000000001e (FLAGS)              BIND_NOW
`;

Deno.test("parseReadelf() reads the program interpreter and the NEEDED libraries in order", () => {
  deepEqual(parseReadelf(READELF_EXECUTABLE), {
    interpreter: "/lib/ld-linux-aarch64.so.1",
    needed: ["libdl.so.2", "libgcc_s.so.1", "libc.so.6"],
  });
});

Deno.test("parseReadelf() of a static file finds nothing to carry", () => {
  deepEqual(
    parseReadelf(
      "\nElf file type is EXEC (Executable file)\n\nThere is no dynamic section in this file.\n",
    ),
    { needed: [] },
  );
});

Deno.test("readElfDeps() reads this deno's interpreter and libc with the host's readelf", async (t) => {
  if (!needTool(t, "readelf", "binutils reads the NEEDED entries")) return;
  const deps = await readElfDeps(Deno.execPath());
  ok(deps.interpreter?.includes("ld-linux"), String(deps.interpreter));
  ok(deps.needed.includes("libc.so.6"), deps.needed.join(", "));
});

const DIRS = ["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"];

/** Lays out a fake arm64 root under `dir` and returns its readelf answers. */
async function fakeRoot(dir: string): Promise<Map<string, ElfDeps>> {
  const write = async (path: string) => {
    await Deno.mkdir(join(dir, path, ".."), { recursive: true });
    await Deno.writeTextFile(join(dir, path), path);
  };
  await write("lib/aarch64-linux-gnu/ld-linux-aarch64.so.1");
  await write("lib/aarch64-linux-gnu/libc.so.6");
  await write("lib/aarch64-linux-gnu/libm.so.6");
  await write("usr/lib/aarch64-linux-gnu/libx.so.1.2");
  await write("usr/lib/aarch64-linux-gnu/liby.so.3");
  await write("unrelated/libz.so.1");
  await Deno.symlink(
    "aarch64-linux-gnu/ld-linux-aarch64.so.1",
    join(dir, "lib/ld-linux-aarch64.so.1"),
  );
  await Deno.symlink(
    "libx.so.1.2",
    join(dir, "usr/lib/aarch64-linux-gnu/libx.so.1"),
  );
  // An absolute link means the same path inside the root, not on the host.
  await Deno.symlink(
    "/usr/lib/aarch64-linux-gnu/liby.so.3",
    join(dir, "lib/aarch64-linux-gnu/liby.so.3"),
  );
  const lib = (p: string) => join(dir, p);
  return new Map<string, ElfDeps>([
    [lib("bin/app"), {
      interpreter: "/lib/ld-linux-aarch64.so.1",
      needed: ["libx.so.1", "libc.so.6"],
    }],
    [lib("lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"), { needed: [] }],
    [lib("lib/aarch64-linux-gnu/libc.so.6"), {
      needed: ["ld-linux-aarch64.so.1"],
    }],
    [lib("usr/lib/aarch64-linux-gnu/libx.so.1.2"), {
      needed: ["libm.so.6", "liby.so.3", "libc.so.6"],
    }],
    [lib("lib/aarch64-linux-gnu/libm.so.6"), { needed: ["libc.so.6"] }],
    [lib("usr/lib/aarch64-linux-gnu/liby.so.3"), { needed: [] }],
  ]);
}

function reader(deps: Map<string, ElfDeps>, calls: string[] = []) {
  return (path: string) => {
    calls.push(path);
    const d = deps.get(path);
    if (d === undefined) throw new Error(`the fake root has no ${path}`);
    return Promise.resolve(d);
  };
}

function byLabPath(files: LabFile[]): Record<string, string> {
  return Object.fromEntries(
    files.map((f) => [f.lab, "host" in f ? `file` : `-> ${f.symlink}`]),
  );
}

Deno.test("libraryClosure() carries the interpreter and every NEEDED library, links as links", async () => {
  await withTempDir(async (dir) => {
    const deps = await fakeRoot(dir);
    const calls: string[] = [];
    const files = await libraryClosure(join(dir, "bin/app"), {
      root: dir,
      libraryDirs: DIRS,
      readDeps: reader(deps, calls),
    });
    deepEqual(byLabPath(files), {
      "lib/ld-linux-aarch64.so.1": "-> aarch64-linux-gnu/ld-linux-aarch64.so.1",
      "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1": "file",
      "usr/lib/aarch64-linux-gnu/libx.so.1": "-> libx.so.1.2",
      "usr/lib/aarch64-linux-gnu/libx.so.1.2": "file",
      "lib/aarch64-linux-gnu/libc.so.6": "file",
      "lib/aarch64-linux-gnu/libm.so.6": "file",
      "lib/aarch64-linux-gnu/liby.so.3":
        "-> /usr/lib/aarch64-linux-gnu/liby.so.3",
      "usr/lib/aarch64-linux-gnu/liby.so.3": "file",
    });
    for (const f of files) {
      if ("host" in f) equal(f.host, join(dir, f.lab));
    }
    // ld.so is reached as the interpreter and as libc's NEEDED: read once.
    equal(new Set(calls).size, calls.length, calls.join("\n"));
  });
});

Deno.test("libraryClosure() names a NEEDED library that none of the folders holds", async () => {
  await withTempDir(async (dir) => {
    const deps = await fakeRoot(dir);
    deps.set(join(dir, "lib/aarch64-linux-gnu/libm.so.6"), {
      needed: ["libz.so.1"],
    });
    await rejects(
      libraryClosure(join(dir, "bin/app"), {
        root: dir,
        libraryDirs: DIRS,
        readDeps: reader(deps),
      }),
      /libm\.so\.6's libraries into the KVM lab: libz\.so\.1 is in none of lib\/aarch64-linux-gnu, usr\/lib\/aarch64-linux-gnu/,
    );
  });
});

Deno.test("libraryClosure() stops at a loop of symbolic links", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "lib/aarch64-linux-gnu"), { recursive: true });
    await Deno.symlink("libb.so", join(dir, "lib/aarch64-linux-gnu/liba.so"));
    await Deno.symlink("liba.so", join(dir, "lib/aarch64-linux-gnu/libb.so"));
    await rejects(
      libraryClosure(join(dir, "app"), {
        root: dir,
        libraryDirs: DIRS,
        readDeps: () => Promise.resolve({ needed: ["liba.so"] }),
      }),
      /liba\.so is a loop of symbolic links/,
    );
  });
});
