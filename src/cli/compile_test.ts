import { deepEqual, equal, match } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { compileCommand } from "./compile.ts";
import { HOST_ARCH, withTempDir } from "../../tests/_util.ts";

const HELLO = fileURLToPath(
  new URL("../../examples/hello.ts", import.meta.url),
);
const IR = new URL("../ir/mod.ts", import.meta.url).href;

/** Run the command, capturing what it prints. */
async function compile(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { log, error } = console;
  let stdout = "";
  let stderr = "";
  console.log = (...parts: unknown[]) => stdout += parts.join(" ") + "\n";
  console.error = (...parts: unknown[]) => stderr += parts.join(" ") + "\n";
  try {
    const code = await compileCommand(args);
    return { code, stdout, stderr };
  } finally {
    console.log = log;
    console.error = error;
  }
}

Deno.test("compileCommand() compiles examples/hello.ts to a runnable executable for each architecture", async () => {
  await withTempDir(async (dir) => {
    for (const arch of ["x86_64", "aarch64"] as const) {
      const out = `${dir}/hello-${arch}`;
      const result = await compile([HELLO, "--arch", arch, "-o", out]);
      equal(result.code, 0, result.stderr);
      match(
        result.stdout,
        new RegExp(`^Wrote .*hello-${arch}: \\d+ bytes, ${arch}\\n$`),
      );
      equal((await Deno.stat(out)).mode! & 0o777, 0o755);
      const native = arch === HOST_ARCH;
      const command = native ? out : `/usr/bin/qemu-${arch}-static`;
      if (!native && !(await Deno.stat(command).catch(() => null))) continue;
      const run = await new Deno.Command(command, {
        args: native ? [] : [out],
        stdout: "piped",
      }).output();
      deepEqual(
        { arch, code: run.code, stdout: new TextDecoder().decode(run.stdout) },
        { arch, code: 0, stdout: "hello from initx\n" },
      );
    }
  });
});

Deno.test("compileCommand() reports a missing file", async () => {
  deepEqual(await compile(["/nonexistent/prog.ts", "--arch", "x86_64"]), {
    code: 1,
    stdout: "",
    stderr: "Cannot compile /nonexistent/prog.ts: file not found\n",
  });
});

Deno.test("compileCommand() reports a module without program", async () => {
  await withTempDir(async (dir) => {
    const source = `${dir}/empty.ts`;
    await Deno.writeTextFile(source, "export const other = 1;\n");
    deepEqual(await compile([source, "-o", `${dir}/out`]), {
      code: 1,
      stdout: "",
      stderr:
        `Cannot compile ${source}: the module does not export "program"\n`,
    });
    await Deno.writeTextFile(`${dir}/wrong.ts`, "export const program = 1;\n");
    match(
      (await compile([`${dir}/wrong.ts`, "-o", `${dir}/out`])).stderr,
      /export "program" is not an IR program/,
    );
  });
});

Deno.test("compileCommand() reports a CompileError", async () => {
  await withTempDir(async (dir) => {
    const source = `${dir}/bad.ts`;
    await Deno.writeTextFile(
      source,
      `import { ProgramBuilder } from "${IR}";
const p = new ProgramBuilder();
p.method("main", (m) => { m.call("missing"); });
export const program = p.build();
`,
    );
    const result = await compile([
      source,
      "--arch",
      "aarch64",
      "-o",
      `${dir}/out`,
    ]);
    equal(result.code, 1);
    match(
      result.stderr,
      new RegExp(
        `^Cannot compile ${source}: Cannot compile method "main": .*missing`,
      ),
    );
  });
});

Deno.test("compileCommand() rejects bad usage with exit code 2", async () => {
  equal((await compile([])).code, 2);
  equal((await compile([HELLO, "--arch", "riscv64"])).code, 2);
  match(
    (await compile([HELLO, "--arch", "riscv64"])).stderr,
    /architecture "riscv64" is not supported/,
  );
  equal((await compile([HELLO, "--frobnicate"])).code, 2);
});
