import { deepEqual, throws } from "node:assert/strict";
import { disassemble } from "../_objdump_test_util.ts";
import * as x from "./encoder.ts";

/** An encoded form and what objdump (Intel syntax) must print for it; `at` is its offset. */
type Case = [
  name: string,
  bytes: number[],
  expected: string | ((at: number) => string),
];

const hex = (n: number) => `0x${n.toString(16)}`;
const slot = (disp: number): x.MemOperand => ({ base: x.RBP, disp });

const CASES: Case[] = [
  ["mov reg, reg", x.movRegReg(x.RDI, x.RAX), "mov rdi,rax"],
  ["mov r64, r64 (extended)", x.movRegReg(x.R11, x.R9), "mov r11,r9"],
  ["mov r32, imm32", x.movImm(x.RAX, 1n), "mov eax,0x1"],
  [
    "mov r32, imm32 (extended)",
    x.movImm(x.R9, 0xffff_ffffn),
    "mov r9d,0xffffffff",
  ],
  ["mov r/m64, simm32", x.movImm(x.RAX, -1n), "mov rax,0xffffffffffffffff"],
  [
    "mov r/m64, simm32 (extended)",
    x.movImm(x.R10, -0x8000_0000n),
    "mov r10,0xffffffff80000000",
  ],
  [
    "movabs",
    x.movImm(x.RCX, 0x1234_5678_9abc_def0n),
    "movabs rcx,0x123456789abcdef0",
  ],
  [
    "movabs (extended)",
    x.movImm(x.R8, 0x1_0000_0000n),
    "movabs r8,0x100000000",
  ],
  [
    "load 64 disp8",
    x.load(x.RAX, slot(-16), { width: 64 }),
    "mov rax,qword ptr [rbp-0x10]",
  ],
  [
    "load 64 disp32",
    x.load(x.RCX, slot(-0x200), { width: 64 }),
    "mov rcx,qword ptr [rbp-0x200]",
  ],
  [
    "load 64 no disp",
    x.load(x.RAX, { base: x.R11, disp: 0 }, { width: 64 }),
    "mov rax,qword ptr [r11]",
  ],
  [
    "load 64 into r11",
    x.load(x.R11, slot(-8), { width: 64 }),
    "mov r11,qword ptr [rbp-0x8]",
  ],
  [
    "load 32",
    x.load(x.RAX, slot(-8), { width: 32 }),
    "mov eax,dword ptr [rbp-0x8]",
  ],
  [
    "load 32 signed",
    x.load(x.RAX, slot(-8), { width: 32, signed: true }),
    "movsxd rax,dword ptr [rbp-0x8]",
  ],
  [
    "load 16",
    x.load(x.RCX, slot(-8), { width: 16 }),
    "movzx ecx,word ptr [rbp-0x8]",
  ],
  [
    "load 16 signed",
    x.load(x.RCX, slot(-8), { width: 16, signed: true }),
    "movsx rcx,word ptr [rbp-0x8]",
  ],
  [
    "load 8",
    x.load(x.RDI, slot(-8), { width: 8 }),
    "movzx edi,byte ptr [rbp-0x8]",
  ],
  [
    "load 8 signed",
    x.load(x.R9, slot(-8), { width: 8, signed: true }),
    "movsx r9,byte ptr [rbp-0x8]",
  ],
  [
    "load 32 from r11+disp32",
    x.load(x.R10, { base: x.R11, disp: 0x7fff_ffff }, { width: 32 }),
    "mov r10d,dword ptr [r11+0x7fffffff]",
  ],
  [
    "load via rsp",
    x.load(x.RDI, { base: x.RSP, disp: 0 }, { width: 64 }),
    "mov rdi,qword ptr [rsp]",
  ],
  [
    "store 64",
    x.store(slot(-8), x.RAX, { width: 64 }),
    "mov qword ptr [rbp-0x8],rax",
  ],
  [
    "store 32",
    x.store(slot(-8), x.RAX, { width: 32 }),
    "mov dword ptr [rbp-0x8],eax",
  ],
  [
    "store 16",
    x.store(slot(-8), x.RAX, { width: 16 }),
    "mov word ptr [rbp-0x8],ax",
  ],
  [
    "store 8",
    x.store(slot(-8), x.RAX, { width: 8 }),
    "mov byte ptr [rbp-0x8],al",
  ],
  [
    "store 8 from dil",
    x.store({ base: x.R11, disp: -3 }, x.RDI, { width: 8 }),
    "mov byte ptr [r11-0x3],dil",
  ],
  [
    "store 8 from r9b",
    x.store(slot(-8), x.R9, { width: 8 }),
    "mov byte ptr [rbp-0x8],r9b",
  ],
  [
    "store 16 from r10",
    x.store({ base: x.R11, disp: 2 }, x.R10, { width: 16 }),
    "mov word ptr [r11+0x2],r10w",
  ],
  ["lea rip", x.lea(x.RAX, { base: "rip", disp: 0x10 }), "lea rax,[rip+0x10]"],
  ["lea rbp", x.lea(x.R8, slot(-0x40)), "lea r8,[rbp-0x40]"],
  ["lea rsp", x.lea(x.RSI, { base: x.RSP, disp: 8 }), "lea rsi,[rsp+0x8]"],
  [
    "lea base+index*8",
    x.lea(x.RDX, { base: x.RSI, index: x.RDI, scale: 8, disp: 8 }),
    "lea rdx,[rsi+rdi*8+0x8]",
  ],
  ["add", x.alu("add", { dst: x.RAX, src: x.RCX }), "add rax,rcx"],
  ["sub", x.alu("sub", { dst: x.RAX, src: x.RCX }), "sub rax,rcx"],
  ["and", x.alu("and", { dst: x.RAX, src: x.RCX }), "and rax,rcx"],
  ["or", x.alu("or", { dst: x.RAX, src: x.RCX }), "or rax,rcx"],
  ["xor", x.alu("xor", { dst: x.RAX, src: x.RCX }), "xor rax,rcx"],
  ["cmp", x.alu("cmp", { dst: x.RAX, src: x.RCX }), "cmp rax,rcx"],
  ["xor32", x.xor32(x.RDX, x.RDX), "xor edx,edx"],
  ["sub rsp, imm8", x.aluImm("sub", { dst: x.RSP, imm: 16 }), "sub rsp,0x10"],
  [
    "sub rsp, imm32",
    x.aluImm("sub", { dst: x.RSP, imm: 0x1000 }),
    "sub rsp,0x1000",
  ],
  [
    "cmp r64, -1",
    x.aluImm("cmp", { dst: x.RCX, imm: -1 }),
    "cmp rcx,0xffffffffffffffff",
  ],
  ["test", x.test(x.RCX, x.RCX), "test rcx,rcx"],
  ["imul", x.imul(x.RAX, x.RCX), "imul rax,rcx"],
  ["div", x.div(x.RCX, { signed: false }), "div rcx"],
  ["idiv", x.div(x.RCX, { signed: true }), "idiv rcx"],
  ["neg", x.neg(x.RAX), "neg rax"],
  ["cqo", x.cqo(), "cqo"],
  ["shl", x.shiftCl("shl", x.RAX), "shl rax,cl"],
  ["shr", x.shiftCl("shr", x.RAX), "shr rax,cl"],
  ["sar", x.shiftCl("sar", x.RAX), "sar rax,cl"],
  ["push", x.push(x.RBP), "push rbp"],
  ["pop", x.pop(x.RBP), "pop rbp"],
  ["jmp", x.jmp(0x20), (at) => `jmp ${hex(at + 5 + 0x20)}`],
  ["jmp backward", x.jmp(-5), (at) => `jmp ${hex(at)}`],
  ["je", x.jcc("e", 0), (at) => `je ${hex(at + 6)}`],
  ["jne", x.jcc("ne", 0), (at) => `jne ${hex(at + 6)}`],
  ["jl", x.jcc("l", 0), (at) => `jl ${hex(at + 6)}`],
  ["jle", x.jcc("le", 0), (at) => `jle ${hex(at + 6)}`],
  ["jg", x.jcc("g", 0), (at) => `jg ${hex(at + 6)}`],
  ["jge", x.jcc("ge", 0), (at) => `jge ${hex(at + 6)}`],
  ["jb", x.jcc("b", 0), (at) => `jb ${hex(at + 6)}`],
  ["jbe", x.jcc("be", 0), (at) => `jbe ${hex(at + 6)}`],
  ["ja", x.jcc("a", 0), (at) => `ja ${hex(at + 6)}`],
  ["jae", x.jcc("ae", 0), (at) => `jae ${hex(at + 6)}`],
  ["call", x.call(0x100), (at) => `call ${hex(at + 5 + 0x100)}`],
  ["call r11", x.callReg(x.R11), "call r11"],
  ["ret", x.ret(), "ret"],
  ["leave", x.leave(), "leave"],
  ["syscall", x.syscall(), "syscall"],
];

Deno.test("x86_64 encoder forms match objdump", async () => {
  const offsets: number[] = [];
  const bytes: number[] = [];
  for (const [, b] of CASES) {
    offsets.push(bytes.length);
    bytes.push(...b);
  }
  const decoded = await disassemble(new Uint8Array(bytes), "x86_64");
  const actual = decoded.map((d) => `${d.offset}: ${d.text}`);
  const expected = CASES.map(([, , text], i) => {
    const at = offsets[i]!;
    return `${at}: ${typeof text === "string" ? text : text(at)}`;
  });
  deepEqual(actual, expected);
});

Deno.test("movImm() picks the shortest form", () => {
  deepEqual(x.movImm(x.RAX, 0n).length, 5);
  deepEqual(x.movImm(x.RAX, -2n).length, 7);
  deepEqual(x.movImm(x.RAX, 0x1_0000_0000n).length, 10);
});

Deno.test("load() rejects a displacement beyond 32 bits", () => {
  throws(
    () => x.load(x.RAX, { base: x.RBP, disp: 0x8000_0000 }, { width: 64 }),
    {
      name: "RangeError",
      message: "Cannot encode displacement: 2147483648 does not fit in 32 bits",
    },
  );
});
