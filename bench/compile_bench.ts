/**
 * Compile speed and size of initx programs: the init program with a
 * realistic configuration (goal: under 20 ms per architecture, under 64 KiB
 * of code not counting embedded module bytes), and a program of a few
 * hundred statements.
 *
 * Run with `deno bench -A bench/compile_bench.ts`.
 *
 * @module
 */

import { type Arch, compile, ProgramBuilder } from "../src/ir/mod.ts";
import {
  buildInitElf,
  buildInitProgram,
  type InitConfig,
} from "../src/initx/init.ts";

const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];

/** Three modules of dummy bytes, sized like virtio_mmio, vsock and virtio_console. */
const MODULES = [
  { name: "virtio_mmio", bytes: new Uint8Array(60_000).fill(1) },
  { name: "vsock", bytes: new Uint8Array(120_000).fill(2) },
  { name: "virtio_console", bytes: new Uint8Array(90_000).fill(3), params: "" },
];
const MODULE_BYTES = MODULES.reduce((n, m) => n + m.bytes.length, 0);

const INIT_CONFIG: InitConfig = {
  modules: MODULES,
  marker: "initx: init ready",
  run: {
    path: "/bin/sh",
    argv: ["sh", "-c", "echo hello; uname -a"],
    env: ["PATH=/usr/bin:/bin", "HOME=/root", "TERM=linux"],
    cwd: "/root",
  },
};

function initCodeSize(arch: Arch): number {
  return compile(buildInitProgram(INIT_CONFIG), { arch }).code.length -
    MODULE_BYTES;
}

console.log(
  `init code size: ${initCodeSize("x86_64")} bytes (x86_64), ${
    initCodeSize("aarch64")
  } bytes (aarch64), excluding ${MODULE_BYTES} bytes of modules`,
);

function manyStatements() {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const x = m.var("x", { init: 0 });
    for (let i = 0; i < 200; i++) {
      m.if(
        m.lt(x, i),
        () => m.add(x, i, { into: x }),
        () => m.xor(x, 3, { into: x }),
      );
    }
    m.printf("%d\n", [x]);
  });
  return p.build();
}
const MANY_STATEMENTS = manyStatements();

for (const arch of ARCHES) {
  Deno.bench({
    name: `buildInitElf() with 3 modules (${arch})`,
    group: "init",
    fn: () => {
      buildInitElf(INIT_CONFIG, { arch });
    },
  });
  Deno.bench({
    name: `compile() 200 if statements (${arch})`,
    group: "statements",
    fn: () => {
      compile(MANY_STATEMENTS, { arch });
    },
  });
}
