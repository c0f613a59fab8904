// Unit tests of the lab payload's library lookup: readelf's output, the
// NEEDED closure over a fake unpacked root, and the Debian packages of the
// arm64 QEMU peer out of apt-cache's answer. Nothing is fetched or booted.
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import {
  type ElfDeps,
  labCarriesPeer,
  type LabFile,
  libraryClosure,
  packageClosure,
  parseAptDepends,
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

// What `apt-cache depends --recurse --no-recommends ... qemu-system-arm:arm64`
// prints on Debian 12 with arm64 as a foreign architecture (shortened, the
// relations of interest kept: a virtual package and its provider, an OR
// group, a Multi-Arch: foreign dependency resolved below it, a cycle).
const APT_DEPENDS = `qemu-system-arm:arm64
  Depends: libc6:arm64
  Depends: libglib2.0-0:arm64
  Depends: libibverbs1:arm64
  Depends: qemu-system-common:arm64
  Depends: <qemu-system-data:arm64>
    qemu-system-data
libc6:arm64
  Depends: libgcc-s1:arm64
libglib2.0-0:arm64
  Depends: libc6:arm64
  Depends: libffi8:arm64
libibverbs1:arm64
  Depends: <adduser:arm64>
    adduser
  Depends: libc6:arm64
  Depends: libnl-3-200:arm64
qemu-system-common:arm64
  Depends: libasound2:arm64
  Depends: libc6:arm64
libgcc-s1:arm64
  Depends: gcc-12-base:arm64
  Depends: libc6:arm64
libffi8:arm64
  Depends: libc6:arm64
libnl-3-200:arm64
  Depends: libc6:arm64
libpam0g:arm64
  Depends: libaudit1:arm64
 |Depends: <debconf:arm64>
    debconf
  Depends: <debconf-2.0:arm64>
    cdebconf:arm64
  PreDepends: libpam-modules-bin
    libpam-modules-bin:arm64
libasound2:arm64
  Depends: <libasound2-data:arm64>
    libasound2-data
  Depends: libc6:arm64
gcc-12-base:arm64
qemu-system-data
<adduser:arm64>
<qemu-system-data:arm64>
`;

Deno.test("parseAptDepends() reads each package's dependencies: a virtual one by its provider", () => {
  const graph = parseAptDepends(APT_DEPENDS);
  deepEqual(graph.get("qemu-system-arm:arm64"), [
    "libc6:arm64",
    "libglib2.0-0:arm64",
    "libibverbs1:arm64",
    "qemu-system-common:arm64",
    "qemu-system-data",
  ]);
  deepEqual(graph.get("libibverbs1:arm64"), [
    "adduser",
    "libc6:arm64",
    "libnl-3-200:arm64",
  ]);
  deepEqual(graph.get("gcc-12-base:arm64"), []);
  // A virtual package with nothing below it depends on nothing.
  deepEqual(graph.get("<adduser:arm64>"), []);
});

Deno.test("parseAptDepends() takes the first of alternatives and PreDepends as they are named", () => {
  // "debconf | debconf-2.0": the first, and not cdebconf, which provides
  // the second; the PreDepends is the package named, not the line below it.
  deepEqual(parseAptDepends(APT_DEPENDS).get("libpam0g:arm64"), [
    "libaudit1:arm64",
    "debconf",
    "libpam-modules-bin",
  ]);
});

Deno.test("parseAptDepends() leaves out relations other than Depends and PreDepends", () => {
  const graph = parseAptDepends(
    "a:arm64\n  Depends: b:arm64\n  Recommends: c:arm64\n  Suggests: d:arm64\n" +
      " |Breaks: e:arm64\n  Breaks: f:arm64\n  PreDepends: g:arm64\n",
  );
  deepEqual(graph.get("a:arm64"), ["b:arm64", "g:arm64"]);
});

Deno.test("packageClosure() follows the arm64 packages only, skips what it is told, sorted after the root", () => {
  const debs = packageClosure(
    parseAptDepends(APT_DEPENDS),
    "qemu-system-arm:arm64",
    { arch: "arm64", skip: ["qemu-system-common:arm64"] },
  );
  deepEqual(debs, [
    "qemu-system-arm:arm64",
    "gcc-12-base:arm64",
    "libc6:arm64",
    "libffi8:arm64",
    "libgcc-s1:arm64",
    "libglib2.0-0:arm64",
    "libibverbs1:arm64",
    "libnl-3-200:arm64",
  ]);
  // Without the skip, the helpers' libraries come along.
  ok(
    packageClosure(parseAptDepends(APT_DEPENDS), "qemu-system-arm:arm64", {
      arch: "arm64",
    }).includes("libasound2:arm64"),
  );
});

Deno.test("packageClosure() ends on a cycle and names a package apt-cache did not print", () => {
  const graph = new Map([
    ["a:arm64", ["b:arm64"]],
    ["b:arm64", ["a:arm64", "c:arm64"]],
  ]);
  deepEqual(packageClosure(graph, "a:arm64", { arch: "arm64" }), [
    "a:arm64",
    "b:arm64",
    "c:arm64",
  ]);
  throws(
    () => packageClosure(graph, "qemu:arm64", { arch: "arm64" }),
    /Cannot list the packages qemu:arm64 needs: apt-cache depends printed nothing for it/,
  );
});

Deno.test("labCarriesPeer(): the x86_64 lab carries QEMU unless told, the aarch64 one only when asked", () => {
  equal(labCarriesPeer("x86_64"), true);
  equal(labCarriesPeer("aarch64"), false);
});
