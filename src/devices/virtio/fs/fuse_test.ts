/**
 * Checks fuse.ts against the host's own `<linux/fuse.h>`: a C program
 * generated from fuse.ts's data prints `sizeof`/`offsetof` of every layout
 * and the value of every constant; gcc compiles it and the output must match.
 * Needs gcc and linux-libc-dev, and fails (does not skip) without them.
 */

import assert from "node:assert/strict";
import * as fuse from "./fuse.ts";
import {
  ALL_FUSE_STRUCTS,
  decode,
  encode,
  FATTR,
  FOPEN,
  FUSE_COMPAT_SETXATTR_IN_SIZE,
  FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH,
  fuse_in_header,
  fuse_init_out,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_READ_BUFFER,
  fuse_mkdir_in,
  fuse_out_header,
  FUSE_ROOT_ID,
  FUSE_SERVER_MINOR_VERSION,
  FuseInitFlag,
  FuseOpcode,
  opcodeName,
  type StructLayout,
} from "./fuse.ts";

const INSTALL_HINT =
  "install gcc and linux-libc-dev (apt-get install -y gcc linux-libc-dev)";

const SCALAR_WIDTH = { u16: 2, u32: 4, i32: 4, u64: 8 } as const;

/** One value compared between fuse.ts and `<linux/fuse.h>`. */
interface Check {
  /** What is compared, e.g. `offsetof(struct fuse_attr, ino)`. */
  readonly name: string;
  /** A C expression giving the header's value. */
  readonly c: string;
  /** fuse.ts's value. */
  readonly expected: number;
  /** `atLeast`: the header's value may be larger than fuse.ts's. */
  readonly relation?: "atLeast";
}

function layoutChecks(layout: StructLayout): Check[] {
  const struct = `struct ${layout.name}`;
  const checks: Check[] = [
    {
      name: `sizeof(${struct})`,
      c: `sizeof(${struct})`,
      expected: layout.size,
    },
  ];
  const fields = Object.entries(layout.fields);
  fields.forEach(([field, [offset, type]], i) => {
    const member = `((${struct} *)0)->${field}`;
    const offsetOf = `offsetof(${struct}, ${field})`;
    const memberSize = `sizeof(${member})`;
    const end = fields[i + 1]?.[1][0] ?? layout.size;
    if (type === "struct" || type === "bytes") {
      if (offset === layout.size) {
        // A flexible array (fuse_dirent.name): it has no sizeof.
        checks.push({ name: offsetOf, c: offsetOf, expected: offset });
      } else if (type === "bytes" && end === layout.size) {
        // Reserved space at the end (`unused`, `spare`): newer headers
        // carve new fields out of its front, so it may start later than
        // fuse.ts says, but it still ends the struct.
        checks.push(
          {
            name: offsetOf,
            c: offsetOf,
            expected: offset,
            relation: "atLeast",
          },
          {
            name: `${offsetOf} + ${memberSize}`,
            c: `${offsetOf} + ${memberSize}`,
            expected: end,
          },
        );
      } else {
        checks.push(
          { name: offsetOf, c: offsetOf, expected: offset },
          { name: memberSize, c: memberSize, expected: end - offset },
        );
      }
    } else {
      checks.push(
        { name: offsetOf, c: offsetOf, expected: offset },
        { name: memberSize, c: memberSize, expected: SCALAR_WIDTH[type] },
        {
          name: `is_signed(${member})`,
          c: `(__typeof__(${member}))-1 < 0`,
          expected: type === "i32" ? 1 : 0,
        },
      );
    }
  });
  return checks;
}

function constantChecks(
  prefix: string,
  table: Readonly<Record<string, number>>,
): Check[] {
  return Object.entries(table).map(([name, value]) => ({
    name: prefix + name,
    c: prefix + name,
    expected: value,
  }));
}

/** Every check of fuse.ts's data. */
function allChecks(): Check[] {
  return [
    ...ALL_FUSE_STRUCTS.flatMap(layoutChecks),
    ...constantChecks("FUSE_", FuseOpcode),
    ...constantChecks("FUSE_", FuseInitFlag),
    ...constantChecks("FATTR_", FATTR),
    ...constantChecks("FOPEN_", FOPEN),
    ...constantChecks("", {
      FUSE_KERNEL_VERSION,
      FUSE_ROOT_ID,
      FUSE_MIN_READ_BUFFER,
      FUSE_COMPAT_SETXATTR_IN_SIZE,
      FUSE_GETATTR_FH,
      FUSE_FSYNC_FDATASYNC,
    }),
    // The header must know every request and field the server speaks.
    {
      name: "FUSE_KERNEL_MINOR_VERSION",
      c: "FUSE_KERNEL_MINOR_VERSION",
      expected: FUSE_SERVER_MINOR_VERSION,
      relation: "atLeast",
    },
  ];
}

function probeSource(checks: readonly Check[]): string {
  const lines = checks.map((check) =>
    `  printf("%s\\t%lld\\n", ${JSON.stringify(check.name)}, ` +
    `(long long)(${check.c}));`
  );
  return [
    "#include <linux/fuse.h>",
    "#include <stddef.h>",
    "#include <stdio.h>",
    "",
    "int main(void) {",
    ...lines,
    "  return 0;",
    "}",
    "",
  ].join("\n");
}

/** The header's value of every check, by name: compiled and run with gcc. */
async function probeHeader(
  checks: readonly Check[],
): Promise<Map<string, number>> {
  const dir = await Deno.makeTempDir({ prefix: "initx-fuse-" });
  try {
    const source = `${dir}/probe.c`;
    const program = `${dir}/probe`;
    await Deno.writeTextFile(source, probeSource(checks));
    let compiled;
    try {
      compiled = await new Deno.Command("gcc", {
        args: ["-std=gnu11", "-Wall", "-o", program, source],
        env: { LC_ALL: "C" }, // English diagnostics, matched below
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        throw new Error(
          `Cannot check fuse.ts against <linux/fuse.h>: gcc is not installed; ${INSTALL_HINT}`,
        );
      }
      throw error;
    }
    const diagnostics = new TextDecoder().decode(compiled.stderr);
    if (!compiled.success) {
      if (/fuse\.h: No such file/.test(diagnostics)) {
        throw new Error(
          `Cannot check fuse.ts against <linux/fuse.h>: the header is not installed; ${INSTALL_HINT}`,
        );
      }
      throw new Error(
        `Cannot compile the <linux/fuse.h> probe: gcc failed (a name in fuse.ts may be missing from the host's header):\n${diagnostics}`,
      );
    }
    const ran = await new Deno.Command(program, {
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.ok(ran.success, `probe exited with code ${ran.code}`);
    const values = new Map<string, number>();
    for (const line of new TextDecoder().decode(ran.stdout).split("\n")) {
      if (line === "") continue;
      const [name = "", value = ""] = line.split("\t");
      values.set(name, Number(value));
    }
    return values;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Where fuse.ts and the header disagree, one line each. */
async function mismatches(checks: readonly Check[]): Promise<string[]> {
  const values = await probeHeader(checks);
  assert.equal(values.size, checks.length, "check names must be unique");
  return checks.flatMap((check) => {
    const actual = values.get(check.name);
    const agrees = check.relation === "atLeast"
      ? actual !== undefined && actual >= check.expected
      : actual === check.expected;
    if (agrees) return [];
    const wanted = check.relation === "atLeast"
      ? `at least ${check.expected}`
      : `${check.expected}`;
    return [
      `${check.name} is ${actual} in <linux/fuse.h>, fuse.ts expects ${wanted}`,
    ];
  });
}

Deno.test("fuse.ts layouts and constants match the host's <linux/fuse.h>", async () => {
  assert.deepEqual(await mismatches(allChecks()), []);
});

Deno.test("the <linux/fuse.h> check reports wrong offsets, sizes, types and values", async () => {
  const wrongAttr = {
    name: "fuse_attr",
    size: 80,
    fields: { ino: [8, "u64"], mode: [60, "i32"], flags: [84, "u16"] },
  } as const satisfies StructLayout;
  const wrongEntryOut = {
    name: "fuse_entry_out",
    size: 120,
    fields: { attr: [40, "struct"] },
  } as const satisfies StructLayout;
  const wrongInitOut = {
    name: "fuse_init_out",
    size: 64,
    fields: { flags2: [32, "u32"], unused: [40, "bytes"] },
  } as const satisfies StructLayout;
  const found = await mismatches([
    ...layoutChecks(wrongAttr),
    ...layoutChecks(wrongEntryOut),
    ...layoutChecks(wrongInitOut),
    ...constantChecks("FUSE_", { LOOKUP: 2 }),
  ]);
  assert.deepEqual(found, [
    "sizeof(struct fuse_attr) is 88 in <linux/fuse.h>, fuse.ts expects 80",
    "offsetof(struct fuse_attr, ino) is 0 in <linux/fuse.h>, fuse.ts expects 8",
    "is_signed(((struct fuse_attr *)0)->mode) is 0 in <linux/fuse.h>, fuse.ts expects 1",
    "sizeof(((struct fuse_attr *)0)->flags) is 4 in <linux/fuse.h>, fuse.ts expects 2",
    "sizeof(struct fuse_entry_out) is 128 in <linux/fuse.h>, fuse.ts expects 120",
    "sizeof(((struct fuse_entry_out *)0)->attr) is 88 in <linux/fuse.h>, fuse.ts expects 80",
    "offsetof(struct fuse_init_out, unused) is 36 in <linux/fuse.h>, fuse.ts expects at least 40",
    "FUSE_LOOKUP is 1 in <linux/fuse.h>, fuse.ts expects 2",
  ]);
});

Deno.test("fuse.ts layouts: fields in order, inside the struct, not overlapping", () => {
  for (const layout of ALL_FUSE_STRUCTS) {
    assert.equal(layout.size % 8, 0, `${layout.name}: size not 64-bit padded`);
    let end = 0;
    for (const [field, [offset, type]] of Object.entries(layout.fields)) {
      const where = `${layout.name}.${field}`;
      assert.ok(offset >= end, `${where}: at ${offset}, overlaps up to ${end}`);
      end = offset +
        (type === "struct" || type === "bytes" ? 0 : SCALAR_WIDTH[type]);
      assert.ok(end <= layout.size, `${where}: ends past ${layout.size}`);
    }
  }
});

Deno.test("ALL_FUSE_STRUCTS lists every layout fuse.ts exports, once", () => {
  const exported = Object.values(fuse).filter((value) =>
    typeof value === "object" && value !== null && "fields" in value
  );
  assert.equal(new Set(ALL_FUSE_STRUCTS).size, ALL_FUSE_STRUCTS.length);
  assert.deepEqual(new Set(exported), new Set(ALL_FUSE_STRUCTS));
});

Deno.test("decode() reads little-endian u16, u32, i32 and u64 fields at base", () => {
  const bytes = new Uint8Array([
    0xee,
    0xee,
    0xee, // before base
    0x28,
    0x00,
    0x00,
    0x00, // len
    0x1a,
    0x00,
    0x00,
    0x00, // opcode
    0x08,
    0x07,
    0x06,
    0x05,
    0x04,
    0x03,
    0x02,
    0x81, // unique
    0x01,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00, // nodeid
    0xe8,
    0x03,
    0x00,
    0x00, // uid
    0xff,
    0xff,
    0xff,
    0xff, // gid
    0x2a,
    0x00,
    0x00,
    0x00, // pid
    0x02,
    0x01, // total_extlen
    0xfe,
    0xff, // padding
  ]);
  assert.deepEqual(decode(fuse_in_header, new DataView(bytes.buffer), 3), {
    len: 40,
    opcode: FuseOpcode.INIT,
    unique: 0x8102030405060708n,
    nodeid: 1n,
    uid: 1000,
    gid: 0xffffffff,
    pid: 42,
    total_extlen: 0x0102,
    padding: 0xfffe,
  });
  const error = new Uint8Array([
    16,
    0,
    0,
    0,
    0xfe,
    0xff,
    0xff,
    0xff,
    7,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
  assert.deepEqual(decode(fuse_out_header, new DataView(error.buffer)), {
    len: 16,
    error: -2,
    unique: 7n,
  });
});

Deno.test("decode() leaves out struct and bytes fields", () => {
  const bytes = new Uint8Array(fuse_init_out.size);
  const values = decode(fuse_init_out, new DataView(bytes.buffer));
  assert.deepEqual(Object.keys(values), [
    "major",
    "minor",
    "max_readahead",
    "flags",
    "max_background",
    "congestion_threshold",
    "max_write",
    "time_gran",
    "max_pages",
    "map_alignment",
    "flags2",
  ]);
});

Deno.test("encode() then decode() round-trips every scalar type at an unaligned base", () => {
  const init = {
    major: 7,
    minor: 31,
    max_readahead: 0x20000,
    flags: FuseInitFlag.ASYNC_READ | FuseInitFlag.INIT_EXT,
    max_background: 0xffff,
    congestion_threshold: 12,
    max_write: 0xffffffff,
    time_gran: 1,
    max_pages: 256,
    map_alignment: 0,
    flags2: 0,
  };
  const header = { len: 16, error: -0x80000000, unique: 0xffffffffffffffffn };
  const bytes = new Uint8Array(5 + fuse_init_out.size);
  const view = new DataView(bytes.buffer);
  encode(fuse_init_out, init, view, 5);
  assert.deepEqual(decode(fuse_init_out, view, 5), init);
  encode(fuse_out_header, header, view, 1);
  assert.deepEqual(decode(fuse_out_header, view, 1), header);
  assert.deepEqual([...bytes.subarray(5, 9)], [0, 0, 0, 0x80]); // error, LE
});

Deno.test("encode() truncates numbers to the field's width", () => {
  const bytes = new Uint8Array(fuse_in_header.size);
  const view = new DataView(bytes.buffer);
  encode(fuse_in_header, {
    len: 2 ** 32 + 5,
    opcode: -1,
    unique: -1n,
    nodeid: 2n ** 64n + 3n,
    total_extlen: 0x12345,
    padding: -1,
  }, view);
  const values = decode(fuse_in_header, view);
  assert.equal(values.len, 5);
  assert.equal(values.opcode, 0xffffffff);
  assert.equal(values.unique, 2n ** 64n - 1n);
  assert.equal(values.nodeid, 3n);
  assert.equal(values.total_extlen, 0x2345);
  assert.equal(values.padding, 0xffff);

  encode(fuse_out_header, { error: 0xffffffff }, view);
  assert.equal(decode(fuse_out_header, view).error, -1);
  encode(fuse_out_header, { error: 2 ** 31 }, view);
  assert.equal(decode(fuse_out_header, view).error, -(2 ** 31));
});

Deno.test("encode() writes only the fields it is given", () => {
  const bytes = new Uint8Array(fuse_out_header.size).fill(0xaa);
  const view = new DataView(bytes.buffer);
  encode(fuse_out_header, { error: 0, len: undefined }, view);
  assert.deepEqual([...bytes], [
    0xaa,
    0xaa,
    0xaa,
    0xaa,
    0,
    0,
    0,
    0,
    0xaa,
    0xaa,
    0xaa,
    0xaa,
    0xaa,
    0xaa,
    0xaa,
    0xaa,
  ]);
  // A name the layout does not have is ignored.
  const loose: StructLayout = fuse_mkdir_in;
  encode(loose, { nonexistent: 1 }, view);
  assert.ok(bytes.every((byte, i) => byte === (i >= 4 && i < 8 ? 0 : 0xaa)));
});

Deno.test("opcodeName() names every opcode and numbers the rest", () => {
  for (const [name, opcode] of Object.entries(FuseOpcode)) {
    assert.equal(opcodeName(opcode), name);
  }
  assert.equal(opcodeName(26), "INIT");
  assert.equal(opcodeName(0), "opcode 0");
  assert.equal(opcodeName(7), "opcode 7");
  assert.equal(opcodeName(99), "opcode 99");
  assert.equal(opcodeName(4096), "opcode 4096");
});
