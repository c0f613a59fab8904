import { deepEqual, equal, throws } from "node:assert/strict";
import { disassemble } from "../_objdump_test_util.ts";
import * as a from "./encoder.ts";

/** Encoded words and what objdump must print for each; `at` is the first word's offset. */
type Case = [
  name: string,
  words: number | number[],
  expected: string | string[] | ((at: number) => string),
];

const hex = (n: number) => `0x${n.toString(16)}`;
const X9 = 9;
const X10 = 10;
const X11 = 11;
const X17 = 17;

const CASES: Case[] = [
  ["movz", a.movz(0, 1, { shift: 0 }), "mov x0,#0x1"],
  ["movz lsl 16", a.movz(X9, 0x1234, { shift: 16 }), "mov x9,#0x12340000"],
  ["movk lsl 16", a.movk(X9, 0x5678, { shift: 16 }), "movk x9,#0x5678,lsl #16"],
  ["movk lsl 48", a.movk(X9, 0xabcd, { shift: 48 }), "movk x9,#0xabcd,lsl #48"],
  ["movn", a.movn(X9, 0, { shift: 0 }), "mov x9,#0xffffffffffffffff"],
  ["movImm 64-bit", a.movImm(X10, 0x1234_5678_9abc_def0n), [
    "mov x10,#0xdef0",
    "movk x10,#0x9abc,lsl #16",
    "movk x10,#0x5678,lsl #32",
    "movk x10,#0x1234,lsl #48",
  ]],
  ["movImm negative", a.movImm(X10, -0x1_2345n), [
    "mov x10,#0xffffffffffffdcbb",
    "movk x10,#0xfffe,lsl #16",
  ]],
  ["movImm negative wide", a.movImm(X10, -0x1234_5678_9an), [
    "mov x10,#0xffffffffffff8766",
    "movk x10,#0xcba9,lsl #16",
    "movk x10,#0xffed,lsl #32",
  ]],
  ["movImm zero", a.movImm(X10, 0n), ["mov x10,#0x0"]],
  ["mov x29, sp", a.addImm(a.FP, { rn: a.SP, imm12: 0 }), "mov x29,sp"],
  ["mov sp, x29", a.addImm(a.SP, { rn: a.FP, imm12: 0 }), "mov sp,x29"],
  ["add imm", a.addImm(1, { rn: a.SP, imm12: 8 }), "add x1,sp,#0x8"],
  [
    "add imm lsl 12",
    a.addImm(X17, { rn: a.SP, imm12: 3, shift12: true }),
    "add x17,sp,#0x3,lsl #12",
  ],
  ["sub imm", a.subImm(a.SP, { rn: a.SP, imm12: 16 }), "sub sp,sp,#0x10"],
  [
    "sub imm lsl 12",
    a.subImm(a.SP, { rn: a.SP, imm12: 1, shift12: true }),
    "sub sp,sp,#0x1,lsl #12",
  ],
  ["add", a.shifted("add", { rd: X9, rn: X9, rm: X10 }), "add x9,x9,x10"],
  [
    "add lsl 3",
    a.shifted("add", { rd: 2, rn: 1, rm: 0, lsl: 3 }),
    "add x2,x1,x0,lsl #3",
  ],
  ["sub", a.shifted("sub", { rd: X9, rn: X9, rm: X10 }), "sub x9,x9,x10"],
  ["and", a.shifted("and", { rd: X9, rn: X9, rm: X10 }), "and x9,x9,x10"],
  ["orr", a.shifted("orr", { rd: X9, rn: X9, rm: X10 }), "orr x9,x9,x10"],
  ["eor", a.shifted("eor", { rd: X9, rn: X9, rm: X10 }), "eor x9,x9,x10"],
  ["mov reg", a.movReg(0, X9), "mov x0,x9"],
  ["cmp", a.cmp(X9, X10), "cmp x9,x10"],
  ["mul", a.mul({ rd: X9, rn: X9, rm: X10 }), "mul x9,x9,x10"],
  ["msub", a.msub({ rd: X9, rn: X11, rm: X10, ra: X9 }), "msub x9,x11,x10,x9"],
  ["udiv", a.twoSource("udiv", { rd: X9, rn: X9, rm: X10 }), "udiv x9,x9,x10"],
  [
    "sdiv",
    a.twoSource("sdiv", { rd: X11, rn: X9, rm: X10 }),
    "sdiv x11,x9,x10",
  ],
  ["lslv", a.twoSource("lslv", { rd: X9, rn: X9, rm: X10 }), "lsl x9,x9,x10"],
  ["lsrv", a.twoSource("lsrv", { rd: X9, rn: X9, rm: X10 }), "lsr x9,x9,x10"],
  ["asrv", a.twoSource("asrv", { rd: X9, rn: X9, rm: X10 }), "asr x9,x9,x10"],
  ["ldr x", a.load(X9, a.SP, { offset: 8, width: 64 }), "ldr x9,[sp,#8]"],
  [
    "ldr x max",
    a.load(X9, a.SP, { offset: 32760, width: 64 }),
    "ldr x9,[sp,#32760]",
  ],
  ["ldr w", a.load(X9, a.SP, { offset: 8, width: 32 }), "ldr w9,[sp,#8]"],
  ["ldrh", a.load(X9, a.SP, { offset: 8, width: 16 }), "ldrh w9,[sp,#8]"],
  ["ldrb", a.load(X9, a.SP, { offset: 4095, width: 8 }), "ldrb w9,[sp,#4095]"],
  [
    "ldrsw",
    a.load(X9, a.SP, { offset: 8, width: 32, signed: true }),
    "ldrsw x9,[sp,#8]",
  ],
  [
    "ldrsh",
    a.load(X9, a.SP, { offset: 8, width: 16, signed: true }),
    "ldrsh x9,[sp,#8]",
  ],
  [
    "ldrsb",
    a.load(X9, a.SP, { offset: 8, width: 8, signed: true }),
    "ldrsb x9,[sp,#8]",
  ],
  [
    "ldr x signed is ldr",
    a.load(X9, X17, { offset: 0, width: 64, signed: true }),
    "ldr x9,[x17]",
  ],
  ["ldur x", a.load(X9, X17, { offset: -8, width: 64 }), "ldur x9,[x17,#-8]"],
  [
    "ldur w (unaligned)",
    a.load(X9, X17, { offset: 3, width: 32 }),
    "ldur w9,[x17,#3]",
  ],
  [
    "ldurh",
    a.load(X9, X17, { offset: -256, width: 16 }),
    "ldurh w9,[x17,#-256]",
  ],
  ["ldurb", a.load(X9, X17, { offset: -1, width: 8 }), "ldurb w9,[x17,#-1]"],
  [
    "ldursw",
    a.load(X9, X17, { offset: -4, width: 32, signed: true }),
    "ldursw x9,[x17,#-4]",
  ],
  [
    "ldursh",
    a.load(X9, X17, { offset: 1, width: 16, signed: true }),
    "ldursh x9,[x17,#1]",
  ],
  [
    "ldursb",
    a.load(X9, X17, { offset: -2, width: 8, signed: true }),
    "ldursb x9,[x17,#-2]",
  ],
  ["str x", a.store(X9, a.SP, { offset: 16, width: 64 }), "str x9,[sp,#16]"],
  ["str w", a.store(X9, a.SP, { offset: 16, width: 32 }), "str w9,[sp,#16]"],
  ["strh", a.store(X9, a.SP, { offset: 16, width: 16 }), "strh w9,[sp,#16]"],
  ["strb", a.store(X9, a.SP, { offset: 16, width: 8 }), "strb w9,[sp,#16]"],
  ["stur x", a.store(X9, X17, { offset: -8, width: 64 }), "stur x9,[x17,#-8]"],
  ["stur w", a.store(X9, X17, { offset: 1, width: 32 }), "stur w9,[x17,#1]"],
  ["sturh", a.store(X9, X17, { offset: -2, width: 16 }), "sturh w9,[x17,#-2]"],
  ["sturb", a.store(X9, X17, { offset: -3, width: 8 }), "sturb w9,[x17,#-3]"],
  [
    "stp pre",
    a.stpPre({ rt: a.FP, rt2: a.LR, rn: a.SP, offset: -16 }),
    "stp x29,x30,[sp,#-16]!",
  ],
  [
    "ldp post",
    a.ldpPost({ rt: a.FP, rt2: a.LR, rn: a.SP, offset: 16 }),
    "ldp x29,x30,[sp],#16",
  ],
  ["b", a.b(8), (at) => `b ${hex(at + 8)}`],
  ["b backward", a.b(-4), (at) => `b ${hex(at - 4)}`],
  ["bl", a.bl(0x100), (at) => `bl ${hex(at + 0x100)}`],
  ["b.eq", a.bCond("eq", 8), (at) => `b.eq ${hex(at + 8)}`],
  ["b.ne", a.bCond("ne", 8), (at) => `b.ne ${hex(at + 8)}`],
  ["b.lt", a.bCond("lt", 8), (at) => `b.lt ${hex(at + 8)}`],
  ["b.le", a.bCond("le", 8), (at) => `b.le ${hex(at + 8)}`],
  ["b.gt", a.bCond("gt", 8), (at) => `b.gt ${hex(at + 8)}`],
  ["b.ge", a.bCond("ge", -8), (at) => `b.ge ${hex(at - 8)}`],
  // objdump prints LO/HS under their other names, CC/CS.
  ["b.lo", a.bCond("lo", 8), (at) => `b.cc ${hex(at + 8)}`],
  ["b.hs", a.bCond("hs", 8), (at) => `b.cs ${hex(at + 8)}`],
  ["b.hi", a.bCond("hi", 8), (at) => `b.hi ${hex(at + 8)}`],
  ["b.ls", a.bCond("ls", 8), (at) => `b.ls ${hex(at + 8)}`],
  ["blr", a.blr(16), "blr x16"],
  ["ret", a.ret(), "ret"],
  ["svc", a.svc(), "svc #0x0"],
  ["adr forward", a.adr(X9, 0x1235), (at) => `adr x9,${hex(at + 0x1235)}`],
  ["adr backward", a.adr(X9, -8), (at) => `adr x9,${hex(at - 8)}`],
];

Deno.test("aarch64 encoder forms match objdump", async () => {
  const words: number[] = [];
  const expected: string[] = [];
  // Start at 0x100 so backward branches stay at positive addresses.
  for (let i = 0; i < 64; i++) words.push(a.ret());
  for (const [, w, text] of CASES) {
    const at = words.length * 4;
    const list = Array.isArray(w) ? w : [w];
    words.push(...list);
    const texts = typeof text === "function"
      ? [text(at)]
      : Array.isArray(text)
      ? text
      : [text];
    texts.forEach((t, i) => expected.push(`${at + 4 * i}: ${t}`));
  }
  const bytes = new Uint8Array(words.length * 4);
  const view = new DataView(bytes.buffer);
  words.forEach((w, i) => view.setUint32(i * 4, w, true));
  const decoded = await disassemble(bytes, "aarch64");
  deepEqual(decoded.slice(64).map((d) => `${d.offset}: ${d.text}`), expected);
});

Deno.test("movImm() uses one instruction per non-trivial halfword", () => {
  equal(a.movImm(0, 0xffffn).length, 1);
  equal(a.movImm(0, 0x1_0000_ffffn).length, 2);
  equal(a.movImm(0, -1n).length, 1);
});

Deno.test("branches reject offsets out of range", () => {
  throws(() => a.bCond("eq", 1 << 20), {
    message: "Cannot encode branch: offset 1048576 is out of range",
  });
  throws(() => a.b(2), {
    message: "Cannot encode branch: offset 2 is not a multiple of 4",
  });
  throws(() => a.load(0, a.SP, { offset: -300, width: 64 }), {
    message: "Cannot encode load offset: -300",
  });
});
