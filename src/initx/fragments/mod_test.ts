/**
 * Fragments compiled to static ELF files and run as processes in a
 * temporary directory, natively and under QEMU user mode. Fragments that
 * need PID 1 or would change the host (mount, reboot, sethostname, network)
 * are checked for their IR only; init_test.ts boots them in a namespace.
 */

import { deepEqual, equal, match, ok } from "node:assert/strict";
import { run, type RunResult } from "../../ir/_run_test_util.ts";
import {
  type Arch,
  type MethodBuilder,
  type Program,
  ProgramBuilder,
  type Statement,
} from "../../ir/mod.ts";
import {
  addDefaultRoute,
  attempt,
  binfmtRule,
  configureInterface,
  createFileFromStdin,
  embedProgram,
  Errno,
  exec,
  forkExecWait,
  hostsFile,
  logKmsg,
  mkdir,
  mknod,
  type OnError,
  registerBinfmt,
  setHosts,
  setResolvConf,
  trySetHosts,
  writeBinaryFile,
} from "./mod.ts";
import { withTempDir } from "../../../tests/_util.ts";

const ARCHES: readonly Arch[] = ["x86_64", "aarch64"];

/** A program running `body`, exiting 0, or printing the failed step and exiting 1. */
function steps(body: (m: MethodBuilder, onError: OnError) => void): Program {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const errno = m.var("errno");
    const step = m.var("step");
    body(m, { errno, goto: "fail", step });
    m.return(0);
    m.label("fail");
    m.printf("failed: %s: errno %d\n", [step, errno]);
    m.return(1);
  });
  return p.build();
}

/** Run `program` for each architecture in a fresh directory and check the result there. */
async function runEach(
  program: Program,
  check: (result: RunResult & { arch: Arch; dir: string }) => Promise<void>,
  options: { stdin?: string; setup?: (dir: string) => Promise<void> } = {},
): Promise<void> {
  for (const arch of ARCHES) {
    await withTempDir(async (dir) => {
      await options.setup?.(dir);
      const result = await run(program, { arch, dir, stdin: options.stdin });
      if (result !== undefined) await check({ ...result, arch, dir });
    });
  }
}

Deno.test("mkdir() makes a directory and tolerates ignored errnos", async () => {
  const program = steps((m, onError) => {
    mkdir(m, { path: "made", mode: 0o750, onError });
    mkdir(m, { path: "made", ignore: [Errno.EEXIST], onError });
    m.printf("ok\n");
  });
  await runEach(program, async ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, { arch, stdout: "ok\n", code: 0 });
    const info = await Deno.stat(`${dir}/made`);
    ok(info.isDirectory);
    equal(info.mode! & 0o777, 0o750 & ~Deno.umask());
  });
});

Deno.test("mkdir() reports a missing parent through onError", async () => {
  const program = steps((m, onError) => {
    mkdir(m, { path: "missing/child", ignore: [Errno.EEXIST], onError });
    m.printf("not reached\n");
  });
  await runEach(program, ({ arch, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: "failed: mkdir missing/child: errno 2\n",
      code: 1,
    });
    return Promise.resolve();
  });
});

Deno.test("mknod() makes a FIFO and reports EEXIST", async () => {
  const program = steps((m, onError) => {
    mknod(m, { path: "fifo", type: "fifo", mode: 0o600, onError });
    m.printf("made\n");
    mknod(m, { path: "fifo", type: "fifo", onError });
  });
  await runEach(program, async ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: "made\nfailed: mknod fifo: errno 17\n",
      code: 1,
    });
    ok((await Deno.lstat(`${dir}/fifo`)).isFifo);
  });
});

Deno.test("writeBinaryFile() writes every byte value and reports a missing directory", async () => {
  const bytes = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
  const program = steps((m, onError) => {
    writeBinaryFile(m, { path: "out.bin", bytes, mode: 0o600, onError });
    writeBinaryFile(m, { path: "nope/out.bin", bytes, onError });
  });
  await runEach(program, async ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: "failed: open nope/out.bin: errno 2\n",
      code: 1,
    });
    deepEqual(await Deno.readFile(`${dir}/out.bin`), bytes);
    equal((await Deno.stat(`${dir}/out.bin`)).mode! & 0o777, 0o600);
  });
});

Deno.test("createFileFromStdin() copies stdin to a file and returns the count", async () => {
  const input = "line of input\n".repeat(1000);
  const program = steps((m, onError) => {
    const copied = createFileFromStdin(m, { path: "stdin.txt", onError });
    m.printf("copied %d\n", [copied]);
    createFileFromStdin(m, { path: "nope/stdin.txt", onError });
  });
  await runEach(program, async ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: `copied ${input.length}\nfailed: open nope/stdin.txt: errno 2\n`,
      code: 1,
    });
    equal(await Deno.readTextFile(`${dir}/stdin.txt`), input);
  }, { stdin: input });
});

Deno.test("forkExecWait() runs a command in a working directory and returns its status", async () => {
  const program = steps((m, onError) => {
    m.printf("pwd status %d\n", [
      forkExecWait(m, { path: "/bin/pwd", argv: ["pwd"], cwd: "sub", onError }),
    ]);
    m.printf("exit status %d\n", [
      forkExecWait(m, {
        path: "/bin/sh",
        argv: ["sh", "-c", 'test "$GREETING" = hi && exit 3'],
        env: ["GREETING=hi"],
        onError,
      }),
    ]);
    m.printf("signal status %d\n", [
      forkExecWait(m, {
        path: "/bin/sh",
        argv: ["sh", "-c", "kill -9 $$"],
        onError,
      }),
    ]);
    m.printf("missing cwd %d\n", [
      forkExecWait(m, {
        path: "/bin/pwd",
        argv: ["pwd"],
        cwd: "nope",
        onError,
      }),
    ]);
    m.printf("missing program %d\n", [
      forkExecWait(m, { path: "/nonexistent", argv: ["x"], onError }),
    ]);
  });
  await runEach(program, ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: `${Deno.realPathSync(dir)}/sub\npwd status 0\nexit status 3\n` +
        "signal status 137\nmissing cwd 127\nmissing program 127\n",
      code: 0,
    });
    return Promise.resolve();
  }, { setup: (dir) => Deno.mkdir(`${dir}/sub`) });
});

Deno.test("exec() replaces the process, or reports why it could not", async () => {
  const replaced = steps((m, onError) => {
    exec(m, {
      path: "/bin/sh",
      argv: ["sh", "-c", "echo replaced in $(pwd); exit 5"],
      cwd: "sub",
      onError,
    });
  });
  await runEach(replaced, ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: `replaced in ${Deno.realPathSync(dir)}/sub\n`,
      code: 5,
    });
    return Promise.resolve();
  }, { setup: (dir) => Deno.mkdir(`${dir}/sub`) });
  const missing = steps((m, onError) => {
    exec(m, { path: "/nonexistent", argv: ["x"], onError });
  });
  await runEach(missing, ({ arch, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: "failed: exec /nonexistent: errno 2\n",
      code: 1,
    });
    return Promise.resolve();
  });
});

Deno.test("setHosts(), setResolvConf(), logKmsg() and registerBinfmt() write their files", async () => {
  const rule = {
    name: "demo",
    magic: new Uint8Array([0x7f, 0x3a, 0x00]),
    interpreter: "/bin/demo",
    flags: "F",
  };
  const program = steps((m, onError) => {
    setHosts(m, {
      path: "hosts",
      entries: [{ address: "127.0.0.1", names: ["localhost", "box"] }],
      onError,
    });
    setResolvConf(m, {
      path: "resolv.conf",
      nameservers: ["10.42.0.1"],
      search: ["example"],
      onError,
    });
    logKmsg(m, { path: "kmsg", message: "hello", onError });
    registerBinfmt(m, { register: "register", rule, onError });
    m.printf("hosts errno %d\n", [
      trySetHosts(m, { path: "nope/hosts" }),
    ]);
    logKmsg(m, { path: "nope/kmsg", message: "x", onError });
  });
  await runEach(program, async ({ arch, dir, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: "hosts errno 2\nfailed: open nope/kmsg: errno 2\n",
      code: 1,
    });
    equal(
      await Deno.readTextFile(`${dir}/hosts`),
      "127.0.0.1\tlocalhost box\n",
    );
    equal(
      await Deno.readTextFile(`${dir}/resolv.conf`),
      "search example\nnameserver 10.42.0.1\n",
    );
    equal(await Deno.readTextFile(`${dir}/kmsg`), "<6>hello\n");
    equal(
      await Deno.readTextFile(`${dir}/register`),
      ":demo:M:0:\\x7f\\x3a\\x00::/bin/demo:F",
    );
  }, {
    setup: async (dir) => {
      // Neither file is created: like the kernel's, they must exist.
      await Deno.writeTextFile(`${dir}/kmsg`, "");
      await Deno.writeTextFile(`${dir}/register`, "");
    },
  });
});

Deno.test("attempt() yields 0 after success and the errno after a failure", async () => {
  const program = steps((m) => {
    const ok = attempt(m, (onError) => mkdir(m, { path: "a", onError }));
    const failed = attempt(m, (onError) => mkdir(m, { path: "a", onError }));
    m.printf("%d %d\n", [ok, failed]);
  });
  await runEach(program, ({ arch, stdout }) => {
    deepEqual({ arch, stdout }, { arch, stdout: "0 17\n" });
    return Promise.resolve();
  });
});

Deno.test("embedProgram() runs another program's entry with its data and globals", async () => {
  const payload = new ProgramBuilder();
  const name = payload.string("payload", { nulTerminated: true });
  const table = payload.pointers([name, null]);
  const counter = payload.global(8);
  payload.method("twice", (m) => {
    const [x] = m.params("x");
    m.return(m.mul(x, 2));
  });
  payload.method("main", (m) => {
    const t = m.var("t", { init: table });
    const g = m.var("g", { init: counter });
    m.set(m.mem(g), m.call("twice", [21]));
    m.printf("%s %d\n", [m.mem(t), m.mem(g)]);
    m.return(7);
  });
  const p = new ProgramBuilder();
  p.string("host data"); // takes the name "$d0" in the host program too
  const entry = embedProgram(p, payload.build(), { prefix: "payload." });
  p.method("main", (m) => m.return(m.call(entry)));
  await runEach(p.build(), ({ arch, stdout, code }) => {
    deepEqual({ arch, stdout, code }, {
      arch,
      stdout: "payload 42\n",
      code: 7,
    });
    return Promise.resolve();
  });
});

function syscalls(statements: Statement[]): string[] {
  return statements.flatMap((s) =>
    s.kind === "syscall"
      ? [s.name]
      : s.kind === "if"
      ? [...syscalls(s.then), ...syscalls(s.else)]
      : []
  );
}

Deno.test("configureInterface() and addDefaultRoute() issue socket ioctls", () => {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const onError = { errno: m.var("errno"), goto: "fail" };
    configureInterface(m, {
      name: "eth0",
      address: "10.42.0.2",
      prefixLength: 24,
      mtu: 1500,
      onError,
    });
    addDefaultRoute(m, { gateway: "10.42.0.1", onError });
    m.label("fail");
  });
  const calls = syscalls(p.build().methods[0]!.body);
  deepEqual(calls.filter((c) => c !== "close"), [
    "socket",
    ...Array(5).fill("ioctl"),
    "socket",
    "ioctl",
  ]);
});

Deno.test("fragment helpers reject malformed addresses and names at build time", () => {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const onError = { errno: m.var("errno"), goto: "fail" };
    for (const address of ["10.0.0", "1.2.3.256", "a.b.c.d"]) {
      let error: unknown;
      try {
        configureInterface(m, {
          name: "eth0",
          address,
          prefixLength: 8,
          onError,
        });
      } catch (e) {
        error = e;
      }
      ok(error instanceof RangeError);
      match(error.message, /Cannot use ".*" as an IPv4 address/);
    }
  });
});

Deno.test("hostsFile() and binfmtRule() format their lines", () => {
  equal(
    hostsFile([{ address: "::1", names: ["localhost", "ip6-localhost"] }]),
    "::1\tlocalhost ip6-localhost\n",
  );
  equal(
    binfmtRule({
      name: "x",
      magic: new Uint8Array([1, 2]),
      mask: new Uint8Array([0xff, 0xfe]),
      offset: 4,
      interpreter: "/i",
    }),
    ":x:M:4:\\x01\\x02:\\xff\\xfe:/i:",
  );
});
