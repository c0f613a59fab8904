import { need } from "../../tests/_gate.ts";
import { HOST_ARCH, withTempDir } from "../../tests/_util.ts";
/**
 * The init program: its ELF and its steps, and (as root, with `unshare`)
 * whole runs as PID 1 of a fresh PID and mount namespace, where powering
 * off ends the namespace with SIGINT instead of the machine.
 */

import { deepEqual, equal, ok, throws } from "node:assert/strict";
import {
  type Arch,
  compile,
  ProgramBuilder,
  type Statement,
} from "../ir/mod.ts";
import {
  buildInitElf,
  buildInitProgram,
  DEFAULT_MARKER,
  type InitConfig,
} from "./init.ts";
import { buildExecProgram, unixAddress } from "./program_loop.ts";
import { unixStreamTransport, VsockProgramServer } from "./program_server.ts";

const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];
const ELF_MACHINE: Record<Arch, number> = { x86_64: 62, aarch64: 183 };
const CODE_BUDGET_BYTES = 64 * 1024;
const RUN: InitConfig["run"] = { path: "/bin/true", argv: ["true"] };

function syscalls(statements: Statement[]): string[] {
  return statements.flatMap((s) =>
    s.kind === "syscall"
      ? [s.name]
      : s.kind === "if"
      ? [...syscalls(s.then), ...syscalls(s.else)]
      : []
  );
}

function mainSyscalls(config: InitConfig): string[] {
  const main = buildInitProgram(config).methods.find((m) => m.name === "main");
  return syscalls(main!.body);
}

Deno.test("buildInitElf() writes a small static ELF for each architecture", () => {
  for (const arch of ARCHES) {
    const elf = buildInitElf({ run: RUN }, { arch });
    const view = new DataView(elf.buffer, elf.byteOffset);
    deepEqual([...elf.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], arch);
    equal(elf[4], 2, `${arch}: ELFCLASS64`);
    equal(view.getUint16(16, true), 2, `${arch}: ET_EXEC`);
    equal(view.getUint16(18, true), ELF_MACHINE[arch]);
    ok(elf.length < CODE_BUDGET_BYTES, `${arch}: ${elf.length} bytes`);
  }
});

Deno.test("buildInitProgram() embeds module bytes once, outside the code budget", () => {
  const modules = [1, 2, 3].map((i) => ({
    name: `dummy${i}`,
    bytes: new Uint8Array(100_000).fill(i),
  }));
  for (const arch of ARCHES) {
    const bare = compile(buildInitProgram({ run: RUN }), { arch }).code.length;
    const loaded =
      compile(buildInitProgram({ run: RUN, modules }), { arch }).code.length;
    ok(loaded - bare >= 300_000 && loaded - bare < 301_000, `${arch}`);
  }
});

Deno.test("buildInitProgram() mounts, loads modules in order, attaches the console, runs, powers off", () => {
  const modules = ["a", "b"].map((name) => ({
    name,
    bytes: new Uint8Array(8),
  }));
  const calls = mainSyscalls({ run: RUN, modules });
  const steps = calls.filter((c) =>
    [
      "mkdirat",
      "mount",
      "init_module",
      "setsid",
      "clone",
      "execve",
      "wait4",
      "reboot",
    ].includes(c)
  );
  deepEqual(steps, [
    ...Array(4).fill(["mkdirat", "mount"]).flat(),
    "init_module",
    "init_module",
    "setsid",
    "clone",
    "execve",
    "wait4",
    "reboot", // power off after the command
    "reboot", // power off after a failure
  ]);
  const program = buildInitProgram({ run: RUN, modules });
  const moduleData = program.data.filter((d) =>
    "bytes" in d && d.bytes.length === 8 && d.bytes.every((b) => b === 0)
  );
  equal(moduleData.length, 2);
});

Deno.test("buildInitProgram() follows onFailure", () => {
  const reboots = (config: InitConfig) =>
    mainSyscalls(config).filter((c) => c === "reboot").length;
  equal(reboots({ run: RUN }), 2);
  equal(reboots({ run: RUN, onFailure: "reboot" }), 2);
  equal(reboots({ run: RUN, onFailure: "panic" }), 1);
});

Deno.test("buildInitProgram() rejects both a command and a program", () => {
  const payload = new ProgramBuilder();
  payload.method("main", (m) => m.return(0));
  throws(() => buildInitProgram({ run: RUN, program: payload.build() }), {
    name: "TypeError",
    message:
      "Cannot build the init program: give either run or program, not both",
  });
});

Deno.test("buildInitProgram() rejects serve with a command or a program", () => {
  const payload = new ProgramBuilder();
  payload.method("main", (m) => m.return(0));
  for (const config of [{ run: RUN }, { program: payload.build() }]) {
    throws(() => buildInitProgram({ ...config, serve: {} }), {
      name: "TypeError",
      message:
        "Cannot build the init program: serve runs the host's programs, give no run or program with it",
    });
  }
});

Deno.test("buildInitProgram() with serve attaches the console, serves, then powers off", () => {
  const calls = mainSyscalls({ serve: {} }).filter((c) =>
    ["setsid", "reboot", "clone", "execve"].includes(c)
  );
  deepEqual(calls, ["setsid", "reboot", "reboot"]);
  const program = buildInitProgram({ serve: {} });
  const main = program.methods.find((m) => m.name === "main")!;
  ok(
    main.body.some((s) => s.kind === "call" && s.target !== "main"),
    "main calls the serve loop",
  );
  for (const arch of ARCHES) {
    const elf = buildInitElf({ serve: {} }, { arch });
    ok(elf.length < CODE_BUDGET_BYTES, `${arch}: ${elf.length} bytes`);
  }
});

// ---- whole runs as PID 1 of a namespace ----

function canUnshare(): boolean {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
  try {
    return Deno.statSync("/usr/bin/unshare").isFile;
  } catch {
    return false;
  }
}

const unshareAvailable = canUnshare();

/**
 * Run an init as PID 1 of new PID and mount namespaces. The shell refuses
 * to exec it unless it is PID 1 there: powering off outside a child PID
 * namespace would power off this machine.
 */
async function runAsPid1(
  config: InitConfig,
  arch: Arch,
): Promise<{ output: string; signal: Deno.Signal | null; code: number }> {
  return await withTempDir(async (dir) => {
    const path = `${dir}/init`;
    await Deno.writeFile(path, buildInitElf(config, { arch }), { mode: 0o755 });
    const emulator = arch === HOST_ARCH ? "" : `qemu-${arch}-static `;
    const output = await new Deno.Command("/usr/bin/unshare", {
      args: [
        "--pid",
        "--fork",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        `test $$ = 1 || exit 99; exec ${emulator}${path}`,
      ],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).output();
    const decoder = new TextDecoder();
    return {
      output: decoder.decode(output.stdout) + decoder.decode(output.stderr),
      signal: output.signal,
      code: output.code,
    };
  });
}

// The namespace has no console of ours: the init's stdout pipe stands in.
const CONSOLE = "/proc/self/fd/1";

Deno.test({
  name: "init runs the command as PID 1, prints its status and powers off",
  fn: async (t) => {
    if (
      !need(
        t,
        unshareAvailable,
        "running an init as PID 1 needs root and /usr/bin/unshare",
      )
    ) return;
    for (const arch of ARCHES) {
      const result = await runAsPid1({
        console: CONSOLE,
        marker: "marker line",
        run: {
          path: "/bin/sh",
          argv: [
            "sh",
            "-c",
            'echo "$GREETING from $(pwd)"; test -d /dev/shm; exit 3',
          ],
          env: ["GREETING=hello"],
          cwd: "/tmp",
        },
      }, arch);
      deepEqual({ arch, ...result }, {
        arch,
        output: "marker line\nhello from /tmp\ninitx: exit status 3\n",
        signal: "SIGINT", // how a PID namespace reports power off
        code: 130,
      });
    }
  },
});

Deno.test({
  name: "init runs an embedded IR program as PID 1",
  fn: async (t) => {
    if (
      !need(
        t,
        unshareAvailable,
        "running an init as PID 1 needs root and /usr/bin/unshare",
      )
    ) return;
    const payload = new ProgramBuilder();
    payload.method("main", (m) => {
      const [argc] = m.params("argc");
      m.printf("payload pid %d argc %d\n", [m.syscall("getpid"), argc]);
      m.return(9);
    });
    for (const arch of ARCHES) {
      const result = await runAsPid1(
        { console: CONSOLE, program: payload.build() },
        arch,
      );
      equal(
        result.output,
        `${DEFAULT_MARKER}\npayload pid 1 argc 1\ninitx: exit status 9\n`,
        arch,
      );
      equal(result.signal, "SIGINT");
    }
  },
});

Deno.test({
  name: "init names the failed step and errno, then powers off or panics",
  fn: async (t) => {
    if (
      !need(
        t,
        unshareAvailable,
        "running an init as PID 1 needs root and /usr/bin/unshare",
      )
    ) return;
    for (const arch of ARCHES) {
      const config = { console: "/nonexistent/console", run: RUN };
      const powered = await runAsPid1(config, arch);
      deepEqual({ arch, ...powered }, {
        arch,
        output: "initx: open /nonexistent/console failed: errno 2\n",
        signal: "SIGINT",
        code: 130,
      });
      const panicked = await runAsPid1({ ...config, onFailure: "panic" }, arch);
      deepEqual({ arch, ...panicked }, {
        arch,
        output: "initx: open /nonexistent/console failed: errno 2\n",
        signal: null,
        code: 1, // PID 1 exiting: a kernel would panic here
      });
    }
  },
});

Deno.test({
  name:
    "init serves the host's programs as PID 1 and powers off when the host closes",
  fn: async (t) => {
    if (
      !need(
        t,
        unshareAvailable,
        "running an init as PID 1 needs root and /usr/bin/unshare",
      )
    ) return;
    for (const arch of ARCHES) {
      const dir = await Deno.makeTempDir({ prefix: "initx-init-" });
      const server = new VsockProgramServer(unixStreamTransport(dir));
      try {
        const path = `${dir}/init`;
        const config: InitConfig = {
          console: CONSOLE,
          serve: { address: (port) => unixAddress(`${dir}/${port}`) },
        };
        await Deno.writeFile(path, buildInitElf(config, { arch }), {
          mode: 0o755,
        });
        const emulator = arch === HOST_ARCH ? "" : `qemu-${arch}-static `;
        const child = new Deno.Command("/usr/bin/unshare", {
          args: [
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            `test $$ = 1 || exit 99; exec ${emulator}${path}`,
          ],
          stdout: "piped",
          stderr: "piped",
          stdin: "null",
        }).spawn();
        try {
          deepEqual(await server.waitForGuest({ timeoutMs: 10_000 }), {
            version: 1,
            arch,
          });
          const sh = compile(
            buildExecProgram("/bin/sh", [
              "sh",
              "-c",
              "echo $$ $PATH; (sleep 0 &); echo oops >&2; exit 4",
            ]),
            { arch },
          );
          for (let i = 0; i < 3; i++) {
            const result = await server.run(sh, {
              capture: { stdout: true, stderr: true },
              setClock: false,
            });
            const [pid, envPath] = new TextDecoder().decode(result.stdout)
              .trim().split(" ");
            ok(Number(pid) > 1, `${arch}: not PID 1 itself`);
            ok(envPath?.includes("/bin"), `${arch}: a standard PATH`);
            equal(new TextDecoder().decode(result.stderr), "oops\n");
            equal(result.exitCode, 4);
          }
        } finally {
          await server.close();
          const output = await child.output();
          const decoder = new TextDecoder();
          deepEqual({
            arch,
            output: decoder.decode(output.stdout) +
              decoder.decode(output.stderr),
            signal: output.signal,
          }, {
            arch,
            output: `${DEFAULT_MARKER}\n`,
            signal: "SIGINT", // powered off once the host closed
          });
        }
      } finally {
        await server.close();
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});
