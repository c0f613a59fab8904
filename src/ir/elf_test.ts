import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { writeElf } from "./elf.ts";
import { generate } from "./_codegen.ts";
import { program } from "../../examples/hello.ts";
import { expectRun } from "./_run_test_util.ts";
import { compileElf, ProgramBuilder } from "./mod.ts";
import { withTempDir } from "../../tests/_util.ts";

Deno.test("writeElf() writes a header readelf accepts", async () => {
  await withTempDir(async (dir) => {
    for (
      const [arch, machine] of [["x86_64", "Advanced Micro Devices X86-64"], [
        "aarch64",
        "AArch64",
      ]] as const
    ) {
      const path = `${dir}/${arch}`;
      await Deno.writeFile(path, compileElf(program, { arch }));
      const output = await new Deno.Command("readelf", {
        args: ["-h", "-l", "-W", path],
      }).output();
      const text = new TextDecoder().decode(output.stdout);
      equal(output.success, true, new TextDecoder().decode(output.stderr));
      equal(new TextDecoder().decode(output.stderr), "");
      const field = (name: string) =>
        new RegExp(`${name}:\\s+(.*)`).exec(text)?.[1]?.trim();
      equal(field("Type"), "EXEC (Executable file)");
      equal(field("Machine"), machine);
      equal(field("Entry point address"), "0x400100");
      ok(
        /LOAD\s+0x000000 0x0000000000400000 0x0000000000400000 0x[0-9a-f]+ 0x[0-9a-f]+ RWE 0x10000/
          .test(text),
        text,
      );
      ok(/GNU_STACK .* RW /.test(text), text);
    }
  });
});

Deno.test("writeElf() rebases relocations to the load address", () => {
  const code = new Uint8Array(16);
  new DataView(code.buffer).setBigUint64(8, 4n, true);
  const elf = writeElf(
    { code, relocations: [8], bssSize: 32, entryOffset: 0 },
    { arch: "x86_64" },
  );
  const view = new DataView(elf.buffer);
  equal(view.getBigUint64(0x100 + 8, true), 0x400104n);
  deepEqual([
    view.getBigUint64(64 + 32, true),
    view.getBigUint64(64 + 40, true),
  ], [0x110n, 0x130n]);
});

Deno.test("writeElf() output runs at any 64 KiB aligned base address", async () => {
  const p = new ProgramBuilder();
  const sh = p.string("/bin/sh", { nulTerminated: true });
  const argv = p.pointers([
    sh,
    p.string("-c", { nulTerminated: true }),
    p.string("echo relocated", { nulTerminated: true }),
    null,
  ]);
  p.method("main", (m) => {
    m.syscall("execve", [sh, argv, 0]);
    m.return(1);
  });
  await withTempDir(async (dir) => {
    for (const baseAddress of [0x10000n, 0x7000_0000n]) {
      const generated = generate(p.build(), { arch: "x86_64", start: true });
      const path = `${dir}/at-${baseAddress}`;
      await Deno.writeFile(
        path,
        writeElf({ ...generated, entryOffset: generated.startOffset! }, {
          arch: "x86_64",
          baseAddress,
        }),
        {
          mode: 0o755,
        },
      );
      const output = await new Deno.Command(path).output();
      deepEqual({
        stdout: new TextDecoder().decode(output.stdout),
        code: output.code,
      }, { stdout: "relocated\n", code: 0 });
    }
  });
});

Deno.test("writeElf() rejects a base address that is not 64 KiB aligned", () => {
  throws(
    () =>
      writeElf({
        code: new Uint8Array(1),
        relocations: [],
        bssSize: 0,
        entryOffset: 0,
      }, { arch: "aarch64", baseAddress: 0x1000n }),
    { message: "Cannot write ELF: base address 0x1000 is not 64 KiB aligned" },
  );
});

Deno.test("examples/hello.ts prints hello and exits 0", async () => {
  await expectRun(program, { stdout: "hello from initx\n", code: 0 });
});

Deno.test("compileElf() programs run as PID 1", async () => {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    m.printf("pid %d\n", [m.syscall("getpid")]);
    m.return(5);
  });
  await withTempDir(async (dir) => {
    const path = `${dir}/init`;
    await Deno.writeFile(path, compileElf(p.build(), { arch: "x86_64" }), {
      mode: 0o755,
    });
    const output = await new Deno.Command("unshare", {
      args: ["--pid", "--fork", path],
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    if (/Operation not permitted|not found/.test(stderr)) {
      console.warn(
        `\n!!! SKIPPING the PID 1 check: unshare --pid needs CAP_SYS_ADMIN (${stderr.trim()})\n`,
      );
      return;
    }
    deepEqual({
      stdout: new TextDecoder().decode(output.stdout),
      code: output.code,
    }, { stdout: "pid 1\n", code: 5 });
  });
});
