import { equal } from "node:assert/strict";
import { isKnownSyscall, syscallNumber } from "./syscalls.ts";

Deno.test("syscallNumber() maps names per architecture", () => {
  const cases: [string, number, number | undefined][] = [
    ["write", 1, 64],
    ["openat", 257, 56],
    ["mmap", 9, 222],
    ["clone", 56, 220],
    ["execve", 59, 221],
    ["wait4", 61, 260],
    ["exit", 60, 93],
    ["exit_group", 231, 94],
    ["getpid", 39, 172],
    ["mount", 165, 40],
    ["init_module", 175, 105],
    ["finit_module", 313, 273],
    ["reboot", 169, 142],
    ["clock_settime", 227, 112],
    ["open", 2, undefined],
  ];
  for (const [name, x86, arm] of cases) {
    equal(syscallNumber(name, "x86_64"), x86, name);
    equal(syscallNumber(name, "aarch64"), arm, name);
  }
});

Deno.test("syscallNumber() returns undefined for an unknown name", () => {
  equal(syscallNumber("frobnicate", "x86_64"), undefined);
  equal(syscallNumber("toString", "x86_64"), undefined);
  equal(isKnownSyscall("toString"), false);
});
