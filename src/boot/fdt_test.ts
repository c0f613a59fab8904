import assert from "node:assert/strict";
import { decompile, dtc } from "./_dtc_test_util.ts";
import { needTool } from "../../tests/_gate.ts";
import {
  bytes,
  empty,
  encodeFdt,
  FDT_BEGIN_NODE,
  FDT_END,
  FDT_END_NODE,
  FDT_LAST_COMP_VERSION,
  FDT_MAGIC,
  FDT_PROP,
  FDT_VERSION,
  node,
  phandle,
  str,
  strList,
  u32,
  u32List,
  u64,
  u64List,
} from "./fdt.ts";

const decoder = new TextDecoder();

const WHY =
  "FDT output is checked by decompiling it (apt-get install device-tree-compiler)";

function header(dtb: Uint8Array): number[] {
  const view = new DataView(dtb.buffer, dtb.byteOffset, dtb.length);
  return Array.from({ length: 10 }, (_, i) => view.getUint32(i * 4));
}

/** A tree that uses every kind of value. */
function sampleTree() {
  return node("", {
    "#address-cells": u32(2),
    "#size-cells": u32(2),
    compatible: strList("initx,test", "linux,dummy-virt"),
    "interrupt-parent": phandle(1),
  }, [
    node("memory@40000000", {
      device_type: str("memory"),
      reg: u64List(0x4000_0000n, 0x800_0000n),
    }),
    node("intc@8000000", {
      compatible: str("arm,gic-v3"),
      "#address-cells": u32(0),
      "#interrupt-cells": u32(3),
      "interrupt-controller": empty(),
      reg: u64List(0x800_0000n, 0x1_0000n),
      phandle: u32(1),
    }),
    node("misc", {
      odd: bytes(Uint8Array.of(1, 2, 3, 4, 5)),
      big: u64(0x1_2345_6789n),
      cells: u32List(0, 16, 1),
      "dma-coherent": empty(),
    }, [node("leaf", { compatible: str("x,y") })]),
  ]);
}

Deno.test("u32(), u64(), u32List(), u64List() encode big-endian cells", () => {
  assert.deepEqual(u32(0x01020304), Uint8Array.of(1, 2, 3, 4));
  assert.deepEqual(
    u64(0x0102030405060708n),
    Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8),
  );
  assert.deepEqual(u32List(1, 2), Uint8Array.of(0, 0, 0, 1, 0, 0, 0, 2));
  assert.deepEqual(
    u64List(1n, 0x1_0000_0000n),
    Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0),
  );
  assert.deepEqual(u32List(), new Uint8Array(0));
  assert.throws(
    () => u32(-1),
    /Cannot encode devicetree: value -1 is not a u32/,
  );
  assert.throws(() => u32(2 ** 32), /not a u32/);
  assert.throws(() => u32(1.5), /not a u32/);
  assert.throws(() => u64(-1n), /not a u64/);
  assert.throws(() => u64(1n << 64n), /not a u64/);
});

Deno.test("str(), strList(), empty(), bytes(), phandle() encode DTS value kinds", () => {
  assert.deepEqual(str("cpu"), Uint8Array.of(0x63, 0x70, 0x75, 0));
  assert.deepEqual(strList("a", "bc"), Uint8Array.of(0x61, 0, 0x62, 0x63, 0));
  assert.deepEqual(str(""), Uint8Array.of(0));
  assert.deepEqual(empty(), new Uint8Array(0));
  const source = Uint8Array.of(9, 8);
  const copy = bytes(source);
  source[0] = 0;
  assert.deepEqual(copy, Uint8Array.of(9, 8));
  assert.deepEqual(phandle(7), Uint8Array.of(0, 0, 0, 7));
  assert.throws(() => str("a\0b"), /string "a\\u0000b" contains a NUL/);
  assert.throws(() => phandle(0), /phandle 0 is reserved/);
  assert.throws(() => phandle(0xffff_ffff), /phandle 4294967295 is reserved/);
});

Deno.test("encodeFdt() lays out header, reservations, structure and strings byte for byte", () => {
  const dtb = encodeFdt(node("", { a: u32(1) }, [node("b")]));
  const struct = [
    FDT_BEGIN_NODE,
    0, // "" padded to 4
    FDT_PROP,
    4, // len
    0, // nameoff of "a"
    1, // value
    FDT_BEGIN_NODE,
    0x62000000, // "b\0" padded to 4
    FDT_END_NODE,
    FDT_END_NODE,
    FDT_END,
  ];
  const expected = new Uint8Array(40 + 16 + struct.length * 4 + 2);
  const view = new DataView(expected.buffer);
  [
    FDT_MAGIC,
    expected.length, // totalsize
    56, // off_dt_struct
    56 + struct.length * 4, // off_dt_strings
    40, // off_mem_rsvmap
    17,
    16,
    0, // boot_cpuid_phys
    2, // size_dt_strings
    struct.length * 4, // size_dt_struct
  ].forEach((v, i) => view.setUint32(i * 4, v));
  struct.forEach((v, i) => view.setUint32(56 + i * 4, v));
  expected.set([0x61, 0], 56 + struct.length * 4);
  assert.deepEqual(dtb, expected);
});

Deno.test("encodeFdt() writes version 17, aligned blocks and the reservations", () => {
  const dtb = encodeFdt(sampleTree(), {
    reservations: [
      { address: 0x1000n, size: 0x2000n },
      { address: 0x1_0000_0000n, size: 0x10n },
    ],
    bootCpuidPhys: 3,
  });
  const [
    magic,
    totalsize,
    offStruct,
    offStrings,
    offRsvmap,
    version,
    lastComp,
    bootCpuid,
    sizeStrings,
    sizeStruct,
  ] = header(dtb);
  assert.equal(magic, FDT_MAGIC);
  assert.equal(version, FDT_VERSION);
  assert.equal(version, 17);
  assert.equal(lastComp, FDT_LAST_COMP_VERSION);
  assert.equal(lastComp, 16);
  assert.equal(bootCpuid, 3);
  assert.equal(totalsize, dtb.length);
  assert.equal(offRsvmap! % 8, 0);
  assert.equal(offStruct! % 4, 0);
  assert.equal(offStruct, offRsvmap! + 3 * 16);
  assert.equal(offStrings, offStruct! + sizeStruct!);
  assert.equal(offStrings! + sizeStrings!, totalsize);
  const view = new DataView(dtb.buffer);
  assert.equal(view.getBigUint64(offRsvmap!), 0x1000n);
  assert.equal(view.getBigUint64(offRsvmap! + 8), 0x2000n);
  assert.equal(view.getBigUint64(offRsvmap! + 16), 0x1_0000_0000n);
  assert.equal(view.getBigUint64(offRsvmap! + 32), 0n);
  assert.equal(view.getBigUint64(offRsvmap! + 40), 0n);
  assert.equal(view.getUint32(offStrings! - 4), FDT_END);
});

Deno.test("encodeFdt() stores each property name once in the strings block", () => {
  const dtb = encodeFdt(sampleTree());
  const [, , , offStrings, , , , , sizeStrings] = header(dtb);
  const names = decoder.decode(
    dtb.subarray(offStrings!, offStrings! + sizeStrings!),
  ).split("\0");
  assert.equal(names.pop(), ""); // after the last NUL
  // "compatible", "reg", "#address-cells" and "phandle" appear in several nodes.
  assert.deepEqual(names, [...new Set(names)]);
  for (const name of ["compatible", "reg", "#address-cells", "phandle"]) {
    assert.ok(names.includes(name), `strings block lacks "${name}"`);
  }
});

Deno.test("encodeFdt() output decompiles with dtc to the expected tree", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  const dtb = encodeFdt(sampleTree(), {
    reservations: [{ address: 0x1000n, size: 0x2000n }],
  });
  assert.deepEqual(await decompile(dtb), [
    "/dts-v1/;",
    "/memreserve/ 0x1000 0x2000;",
    "/ {",
    "#address-cells = <0x2>;",
    "#size-cells = <0x2>;",
    'compatible = "initx,test", "linux,dummy-virt";',
    "interrupt-parent = <0x1>;",
    "memory@40000000 {",
    'device_type = "memory";',
    "reg = <0x0 0x40000000 0x0 0x8000000>;",
    "};",
    "intc@8000000 {",
    'compatible = "arm,gic-v3";',
    "#address-cells = <0x0>;",
    "#interrupt-cells = <0x3>;",
    "interrupt-controller;",
    "reg = <0x0 0x8000000 0x0 0x10000>;",
    "phandle = <0x1>;",
    "};",
    "misc {",
    "odd = [01 02 03 04 05];",
    "big = <0x1 0x23456789>;",
    "cells = <0x0 0x10 0x1>;",
    "dma-coherent;",
    "leaf {",
    'compatible = "x,y";',
    "};",
    "};",
    "};",
  ]);
});

Deno.test("encodeFdt() output survives a dtc dtb-to-dtb round trip without warnings", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  const dtb = encodeFdt(sampleTree());
  const r = await dtc(["-I", "dtb", "-O", "dtb"], dtb);
  assert.ok(r.success, `dtc -I dtb -O dtb failed:\n${r.stderr}`);
  assert.equal(r.stderr, "", "dtc -I dtb -O dtb printed warnings");
  assert.deepEqual(await decompile(r.output), await decompile(dtb));
});

Deno.test("encodeFdt() rejects names outside the spec, duplicates and oversize blobs", () => {
  assert.throws(
    () => encodeFdt(node("root")),
    /Cannot encode devicetree: the root node must be named "" \(got "root"\)/,
  );
  for (
    const bad of ["", "1cpu", "cpu@", "a/b", "a b", "x".repeat(32), "c@1@2"]
  ) {
    assert.throws(
      () => encodeFdt(node("", {}, [node(bad)])),
      /node name .* under "\/" is not node-name\[@unit-address\]/,
      `node name ${JSON.stringify(bad)}`,
    );
  }
  // Unit-address length is not limited; a 31-character node-name is fine.
  encodeFdt(node("", {}, [node(`${"x".repeat(31)}@${"f".repeat(40)}`)]));
  assert.throws(
    () => encodeFdt(node("", {}, [node("a", {}, [node("b"), node("b")])])),
    /"\/a" has two children named "b"/,
  );
  for (const bad of ["", "a b", "é", "p".repeat(32)]) {
    assert.throws(
      () => encodeFdt(node("", {}, [node("a", { [bad]: empty() })])),
      /property name .* in "\/a" is not 1-31 of/,
      `property name ${JSON.stringify(bad)}`,
    );
  }
  assert.throws(
    () =>
      encodeFdt(node(""), { reservations: [{ address: 0x1000n, size: 0n }] }),
    /memory reservation at 0x1000 has size 0/,
  );
  const small = encodeFdt(node("", { a: u32(1) }));
  assert.throws(
    () => encodeFdt(node("", { a: u32(1) }), { maxBytes: small.length - 1 }),
    new RegExp(
      `blob of ${small.length} bytes exceeds the limit of ${
        small.length - 1
      } bytes`,
    ),
  );
  assert.equal(
    encodeFdt(node("", { a: u32(1) }), { maxBytes: small.length }).length,
    small.length,
  );
});

Deno.test("encodeFdt() pads odd-length names and values to 4 bytes", () => {
  const dtb = encodeFdt(
    node("", {}, [node("abc", { p: bytes(Uint8Array.of(7)) })]),
  );
  const [, , offStruct, , , , , , , sizeStruct] = header(dtb);
  const view = new DataView(dtb.buffer);
  // BEGIN_NODE "" | BEGIN_NODE "abc\0" | PROP len=1 nameoff value+pad | END_NODE x2 | END
  const words = Array.from(
    { length: sizeStruct! / 4 },
    (_, i) => view.getUint32(offStruct! + i * 4),
  );
  assert.deepEqual(words, [
    FDT_BEGIN_NODE,
    0,
    FDT_BEGIN_NODE,
    0x61626300,
    FDT_PROP,
    1,
    0,
    0x07000000,
    FDT_END_NODE,
    FDT_END_NODE,
    FDT_END,
  ]);
});
