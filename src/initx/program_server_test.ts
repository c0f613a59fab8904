/**
 * The host side against the real guest side: the program loop compiled to
 * a static ELF and run as a host process (natively, and under
 * `qemu-aarch64-static` for aarch64), connecting to Unix sockets that
 * `unixStreamTransport` listens on. Bad guest data comes from a fake guest
 * written here.
 */

import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { needTool } from "../../tests/_gate.ts";
import {
  type Arch,
  compile,
  type CompiledProgram,
  type MethodBuilder,
  ProgramBuilder,
  type Value,
} from "../ir/mod.ts";
import {
  BootTimeoutError,
  GuestError,
  ProtocolError,
  VmTerminatedError,
} from "./errors.ts";
import { Errno } from "./fragments/mod.ts";
import {
  buildExecProgram,
  buildProgramLoopElf,
  unixAddress,
} from "./program_loop.ts";
import {
  type StreamTransport,
  unixStreamTransport,
  VsockProgramServer,
} from "./program_server.ts";
import {
  decodeRequestHeader,
  encodeFrame,
  encodeHello,
  encodeReply,
  encodeStreamHello,
  FrameType,
  Limits,
  Port,
} from "./protocol.ts";
import { HOST_ARCH } from "../../tests/_util.ts";

const QEMU_AARCH64 = "qemu-aarch64-static";
const text = (bytes: Uint8Array | undefined) => new TextDecoder().decode(bytes);
const encode = (s: string) => new TextEncoder().encode(s);

interface Guest {
  server: VsockProgramServer;
  arch: Arch;
  dir: string;
  child: Deno.ChildProcess;
  /** Compile a program whose `main` is built by `body`. */
  compile(body: (m: MethodBuilder, p: ProgramBuilder) => void): CompiledProgram;
}

/**
 * Start the program loop as a process connected to a fresh server, run
 * `body`, then close the server, and wait for (or kill) the process.
 */
async function withGuest(
  body: (guest: Guest) => Promise<void>,
  options: {
    arch?: Arch;
    transport?: (dir: string) => StreamTransport;
  } = {},
): Promise<void> {
  const arch = options.arch ?? HOST_ARCH;
  const dir = await Deno.makeTempDir({ prefix: "initx-server-" });
  const server = new VsockProgramServer(
    (options.transport ?? unixStreamTransport)(dir),
  );
  let child: Deno.ChildProcess | undefined;
  let loopStderr = "";
  try {
    const path = `${dir}/loop`;
    await Deno.writeFile(
      path,
      buildProgramLoopElf({
        arch,
        address: (port) => unixAddress(`${dir}/${port}`),
      }),
      { mode: 0o755 },
    );
    const argv = arch === HOST_ARCH ? [path] : [QEMU_AARCH64, path];
    child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const hello = await server.waitForGuest({ timeoutMs: 10_000 });
    deepEqual(hello, { version: 1, arch });
    await body({
      server,
      arch,
      dir,
      child,
      compile(build) {
        const p = new ProgramBuilder();
        p.method("main", (m) => build(m, p));
        return compile(p.build(), { arch });
      },
    });
  } finally {
    await server.close();
    if (child !== undefined) {
      const timer = setTimeout(() => {
        try {
          child!.kill("SIGKILL");
        } catch {
          // Already gone.
        }
      }, 5000);
      const output = await child.output();
      clearTimeout(timer);
      loopStderr = text(output.stderr);
    }
    await Deno.remove(dir, { recursive: true });
  }
  equal(loopStderr, "", "the loop printed nothing");
}

let writes = 0;

/** Write `len` bytes at `ptr` to `fd`, whole. */
function writeAll(m: MethodBuilder, fd: number, ptr: Value, len: Value): void {
  const n = writes++;
  const done = m.var(`done${n}`, { init: 0 });
  m.label(`write${n}`);
  const wrote = m.syscall("write", [fd, m.add(ptr, done), m.sub(len, done)]);
  m.if(m.gt(wrote, 0), () => m.add(done, wrote, { into: done }));
  m.if(m.ltu(done, len), () => m.goto(`write${n}`));
}

/** `cat`: copy fd 0 to fd 1 until end of file; returns 0. */
function cat(m: MethodBuilder): void {
  const buf = m.var("buf", { init: m.buffer(65536) });
  m.label("read");
  const n = m.syscall("read", [0, buf, 65536]);
  m.if(m.isZero(n), () => m.return(0));
  m.if(m.isNegative(n), () => m.return(1));
  writeAll(m, 1, buf, n);
  m.goto("read");
}

/** Write `count` chunks of `size` bytes of `byte` to `fd`. */
function flood(
  m: MethodBuilder,
  p: ProgramBuilder,
  what: { fd: number; byte: number; size: number; count: number },
): void {
  const chunk = p.bytes(new Uint8Array(what.size).fill(what.byte));
  const i = m.var(`i${what.fd}`, { init: 0 });
  m.while(m.ltu(i, what.count), () => {
    writeAll(m, what.fd, chunk.ptr, chunk.len);
    m.add(i, 1, { into: i });
  });
}

/** A stream that never ends and never yields. */
function silentStream(): ReadableStream<Uint8Array> {
  return new ReadableStream({ pull: () => new Promise(() => {}) });
}

Deno.test("run() returns the exit code and the captured stdout and stderr", async () => {
  await withGuest(async ({ server, compile }) => {
    const program = compile((m, p) => {
      const hello = p.string("hello");
      const oops = p.string("oops");
      m.syscall("write", [1, hello.ptr, hello.len]);
      m.syscall("write", [2, oops.ptr, oops.len]);
      m.return(7);
    });
    const result = await server.run(program, {
      capture: { stdout: true, stderr: true },
      setClock: false,
    });
    deepEqual(
      { ...result, stdout: text(result.stdout), stderr: text(result.stderr) },
      { exitCode: 7, stdout: "hello", stderr: "oops" },
    );
    deepEqual(await server.run(program, { setClock: false }), { exitCode: 7 });
  });
});

Deno.test("run() with combine merges stderr into stdout in order", async () => {
  await withGuest(async ({ server, compile }) => {
    const program = compile((m, p) => {
      for (const [fd, s] of [[1, "a"], [2, "b"], [1, "c"], [2, "d"]] as const) {
        const bytes = p.string(s);
        m.syscall("write", [fd, bytes.ptr, bytes.len]);
      }
      m.return(0);
    });
    const result = await server.run(program, {
      capture: { combine: true },
      setClock: false,
    });
    deepEqual({ ...result, stdout: text(result.stdout) }, {
      exitCode: 0,
      stdout: "abcd",
    });
  });
});

Deno.test("run() streams 8 MiB through a cat-like program unchanged", async () => {
  await withGuest(async ({ server, compile }) => {
    const program = compile((m) => cat(m));
    const input = new Uint8Array(8 * 1024 * 1024);
    for (let i = 0; i < input.length; i += 65536) {
      crypto.getRandomValues(input.subarray(i, i + 65536));
    }
    const expected = createHash("sha256").update(input).digest("hex");
    const hash = createHash("sha256");
    let received = 0;
    const stdout = new WritableStream<Uint8Array>({
      write(chunk) {
        hash.update(chunk);
        received += chunk.length;
      },
    });
    let offset = 0;
    const stdin = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (offset >= input.length) return controller.close();
        const size = 100_000 + (offset % 77_777);
        controller.enqueue(input.slice(offset, offset + size));
        offset += size;
      },
    });
    const result = await server.run(program, {
      stdin,
      stdout,
      setClock: false,
    });
    deepEqual(result, { exitCode: 0 });
    equal(received, input.length);
    equal(hash.digest("hex"), expected);
  });
});

Deno.test("run() forwards 1 MiB of stderr and stdout without a deadlock", async () => {
  await withGuest(async ({ server, compile }) => {
    const program = compile((m, p) => {
      flood(m, p, { fd: 2, byte: 0x65, size: 65536, count: 16 });
      flood(m, p, { fd: 1, byte: 0x6f, size: 65536, count: 16 });
      m.return(3);
    });
    // stderr not asked for: it goes to /dev/null in the guest.
    const quiet = await server.run(program, {
      capture: { stdout: true },
      setClock: false,
    });
    equal(quiet.exitCode, 3);
    equal(quiet.stdout?.length, 1 << 20);
    equal(quiet.stderr, undefined);
    ok(quiet.stdout!.every((b) => b === 0x6f));
    // stderr streamed to a slow reader, not captured.
    let stderrBytes = 0;
    const stderr = new WritableStream<Uint8Array>({
      async write(chunk) {
        ok(chunk.every((b) => b === 0x65));
        stderrBytes += chunk.length;
        await new Promise((resolve) => setTimeout(resolve, 1));
      },
    });
    const slow = await server.run(program, {
      stderr,
      capture: { stdout: true },
      setClock: false,
    });
    equal(slow.exitCode, 3);
    equal(stderrBytes, 1 << 20);
    equal(slow.stdout?.length, 1 << 20);
    equal(slow.stderr, undefined);
  });
});

Deno.test("run() holds the guest back while the caller's stdout is slow", async () => {
  await withGuest(async ({ server, compile }) => {
    const program = compile((m, p) => {
      flood(m, p, { fd: 1, byte: 0x2e, size: 65536, count: 128 });
      m.return(0);
    });
    let writes = 0;
    let received = 0;
    let open = () => {};
    const gate = new Promise<void>((resolve) => open = resolve);
    const stdout = new WritableStream<Uint8Array>({
      async write(chunk) {
        writes++;
        await gate;
        received += chunk.length;
      },
    });
    let settled = false;
    const pending = server.run(program, { stdout, setClock: false })
      .finally(() => settled = true);
    await new Promise((resolve) => setTimeout(resolve, 300));
    equal(writes, 1, "one payload at a time");
    ok(!settled, "the program waits for the host");
    open();
    deepEqual(await pending, { exitCode: 0 });
    equal(received, 8 * 1024 * 1024);
  });
});

Deno.test("run() of a program that exits at once does not wait for a long stdin", async () => {
  await withGuest(async ({ server, compile }) => {
    const program = compile((m) => m.return(5));
    const endless = new ReadableStream<Uint8Array>({
      pull: (controller) => controller.enqueue(new Uint8Array(65536)),
    });
    deepEqual(await server.run(program, { stdin: endless, setClock: false }), {
      exitCode: 5,
    });
    ok(!endless.locked, "the stream is unlocked again");
    await endless.cancel();
    deepEqual(
      await server.run(program, {
        stdin: new Uint8Array(32 * 1024 * 1024),
        setClock: false,
      }),
      { exitCode: 5 },
    );
    const silent = silentStream();
    deepEqual(await server.run(program, { stdin: silent, setClock: false }), {
      exitCode: 5,
    });
  });
});

Deno.test("run() runs 200 programs in a row on one loop", async () => {
  await withGuest(async ({ server, compile }) => {
    const programs = [0, 1, 2, 3, 255].map((code) =>
      compile((m, p) => {
        const s = p.string(`${code}`);
        m.syscall("write", [1, s.ptr, s.len]);
        m.return(code);
      })
    );
    const runs = Array.from({ length: 200 }, (_, i) => {
      const index = i % programs.length;
      return server.run(programs[index]!, {
        capture: { stdout: true },
        setClock: false,
      }).then((r) => ({ code: r.exitCode, out: text(r.stdout) }));
    });
    const results = await Promise.all(runs);
    results.forEach((r, i) => {
      const code = [0, 1, 2, 3, 255][i % programs.length]!;
      deepEqual(r, { code, out: `${code}` });
    });
  });
});

Deno.test("run() reports a signal as 128 + N and global data relocated", async () => {
  await withGuest(async ({ server, compile }) => {
    const killed = compile((m) => {
      m.syscall("kill", [m.syscall("getpid"), 9]);
      m.return(0);
    });
    deepEqual(await server.run(killed, { setClock: false }), {
      exitCode: 128 + 9,
    });
    const tables = compile((m, p) => {
      const words = [p.string("relocated "), p.string("pointers")];
      const table = m.var("table", { init: p.pointers(words) });
      const counter = m.var("counter", { init: p.global(8) });
      words.forEach((word, i) => {
        const ptr = m.var(`ptr${i}`, { init: m.mem(table, { disp: 8 * i }) });
        m.syscall("write", [1, ptr, word.len]);
        m.add(m.mem(counter), 1, { into: m.mem(counter) });
      });
      m.return(m.mem(counter));
    });
    ok(tables.relocations.length >= 2);
    ok(tables.bssSize >= 8);
    const result = await server.run(tables, {
      capture: { stdout: true },
      setClock: false,
    });
    deepEqual({ ...result, stdout: text(result.stdout) }, {
      exitCode: 2,
      stdout: "relocated pointers",
    });
  });
});

Deno.test("run() of buildExecProgram() runs a host executable, or says why not", async () => {
  await withGuest(async ({ server, arch }) => {
    const echo = compile(buildExecProgram("/bin/echo", ["echo", "hi"]), {
      arch,
    });
    const result = await server.run(echo, {
      capture: { stdout: true, stderr: true },
      setClock: false,
    });
    deepEqual(
      { ...result, stdout: text(result.stdout), stderr: text(result.stderr) },
      { exitCode: 0, stdout: "hi\n", stderr: "" },
    );
    const missing = compile(buildExecProgram("/nonexistent/initx", ["x"]), {
      arch,
    });
    const failed = await server.run(missing, {
      capture: { stderr: true },
      setClock: false,
    });
    deepEqual({ ...failed, stderr: text(failed.stderr) }, {
      exitCode: 127,
      stderr: "initx: cannot exec /nonexistent/initx: errno 2\n",
    });
    const catFile = compile(
      buildExecProgram("/bin/cat", ["cat", "-"], { env: ["A=1"] }),
      { arch },
    );
    const piped = await server.run(catFile, {
      stdin: encode("through /bin/cat"),
      capture: { stdout: true },
      setClock: false,
    });
    equal(text(piped.stdout), "through /bin/cat");
  });
});

Deno.test("run() reports a guest-side failure as GuestError and the loop goes on", async () => {
  // No stdin listener: the guest's connect to port 9999 fails.
  const withoutStdin = (dir: string): StreamTransport => {
    const inner = unixStreamTransport(dir);
    return {
      listen(port) {
        if (port !== Port.STDIN) return inner.listen(port);
        let close = () => {};
        const closed = new Promise<null>((resolve) => {
          close = () => resolve(null);
        });
        return { accept: () => closed, close };
      },
    };
  };
  await withGuest(async ({ server, compile }) => {
    const program = compile((m) => m.return(4));
    await rejects(
      server.run(program, {
        stdin: encode("x"),
        capture: { stdout: true },
        setClock: false,
      }),
      (e: unknown) => e instanceof GuestError && e.errno === Errno.ENOENT,
    );
    deepEqual(await server.run(program, { setClock: false }), { exitCode: 4 });
  }, { transport: withoutStdin });
});

Deno.test("run() rejects with the signal's reason and later runs still run", async () => {
  await withGuest(async ({ server, compile }) => {
    const waitsForStdin = compile((m) => cat(m));
    const controller = new AbortController();
    const pending = server.run(waitsForStdin, {
      stdin: silentStream(),
      capture: { stdout: true },
      signal: controller.signal,
      setClock: false,
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    controller.abort(new Error("stop"));
    await rejects(pending, { message: "stop" });
    const quick = compile((m) => m.return(1));
    deepEqual(await server.run(quick, { setClock: false }), { exitCode: 1 });
    // A caller's stdout that never takes a write does not hold the loop up
    // once the run is abandoned.
    const chatty = compile((m, p) => {
      flood(m, p, { fd: 1, byte: 0x21, size: 65536, count: 32 });
      m.return(0);
    });
    const stuck = new AbortController();
    const stalled = server.run(chatty, {
      stdout: new WritableStream({ write: () => new Promise(() => {}) }),
      signal: stuck.signal,
      setClock: false,
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    stuck.abort(new Error("stuck"));
    await rejects(stalled, { message: "stuck" });
    deepEqual(await server.run(quick, { setClock: false }), { exitCode: 1 });
    await rejects(
      server.run(quick, { signal: AbortSignal.abort(new Error("early")) }),
      { message: "early" },
    );
  });
});

Deno.test("run() rejects with VmTerminatedError when the loop dies mid-run", async () => {
  await withGuest(async ({ server, compile, child }) => {
    const waitsForStdin = compile((m) => cat(m));
    const pending = server.run(waitsForStdin, {
      stdin: silentStream(),
      setClock: false,
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    child.kill("SIGKILL");
    await rejects(pending, VmTerminatedError);
    await rejects(server.run(waitsForStdin), VmTerminatedError);
    server.terminate("killed by the test");
    await rejects(server.waitForGuest(), VmTerminatedError);
  });
});

Deno.test("run() of an aarch64 program under qemu-aarch64-static", async (t) => {
  if (HOST_ARCH === "aarch64") return;
  if (!needTool(t, QEMU_AARCH64, "it runs the aarch64 program loop")) return;
  await withGuest(async ({ server, compile }) => {
    const program = compile((m, p) => {
      const hello = p.string("hello from aarch64");
      m.syscall("write", [1, hello.ptr, hello.len]);
      m.return(9);
    });
    const result = await server.run(program, {
      capture: { stdout: true },
      setClock: false,
    });
    deepEqual({ ...result, stdout: text(result.stdout) }, {
      exitCode: 9,
      stdout: "hello from aarch64",
    });
    const echoed = await server.run(compile((m) => cat(m)), {
      stdin: encode("round trip"),
      capture: { stdout: true },
      setClock: false,
    });
    equal(text(echoed.stdout), "round trip");
  }, { arch: "aarch64" });
});

Deno.test("waitForGuest() rejects with BootTimeoutError when nothing connects", async () => {
  const dir = await Deno.makeTempDir({ prefix: "initx-server-" });
  const server = new VsockProgramServer(unixStreamTransport(dir));
  try {
    const start = performance.now();
    await rejects(
      server.waitForGuest({ timeoutMs: 200 }),
      (e: unknown) => e instanceof BootTimeoutError && e.timeoutMs === 200,
    );
    const elapsed = performance.now() - start;
    ok(elapsed >= 190 && elapsed < 2000, `${elapsed} ms`);
    await rejects(
      server.waitForGuest({ signal: AbortSignal.abort(new Error("no")) }),
      { message: "no" },
    );
    const pending = server.run(
      compile(buildExecProgram("/bin/true", ["true"]), { arch: HOST_ARCH }),
    );
    server.terminate("the VM did not boot");
    await rejects(
      pending,
      (e: unknown) =>
        e instanceof VmTerminatedError && e.reason === "the VM did not boot",
    );
    await rejects(server.waitForGuest(), VmTerminatedError);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- a fake guest, for bad data ----

/** A server, and a fake guest that connects to it with raw sockets. */
async function withFakeGuest(
  body: (fake: {
    server: VsockProgramServer;
    connect(port: number): Promise<Deno.UnixConn>;
  }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "initx-fake-" });
  const server = new VsockProgramServer(unixStreamTransport(dir));
  const conns: Deno.UnixConn[] = [];
  try {
    await body({
      server,
      async connect(port) {
        const conn = await Deno.connect({
          transport: "unix",
          path: `${dir}/${port}`,
        });
        conns.push(conn);
        return conn;
      },
    });
  } finally {
    await server.close();
    for (const conn of conns) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await Deno.remove(dir, { recursive: true });
  }
}

async function readExactly(
  conn: Deno.UnixConn,
  n: number,
): Promise<Uint8Array> {
  const bytes = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await conn.read(bytes.subarray(at));
    if (got === null) {
      throw new Error(`end of stream after ${at} of ${n} bytes`);
    }
    at += got;
  }
  return bytes;
}

async function writeAllTo(
  conn: Deno.UnixConn,
  bytes: Uint8Array,
): Promise<void> {
  for (let at = 0; at < bytes.length;) {
    at += await conn.write(bytes.subarray(at));
  }
}

const TINY: CompiledProgram = {
  code: new Uint8Array(16),
  relocations: [],
  bssSize: 0,
  entryOffset: 0,
};

Deno.test("waitForGuest() rejects a bad hello with ProtocolError", async () => {
  await withFakeGuest(async ({ server, connect }) => {
    const control = await connect(Port.CONTROL);
    const hello = encodeHello({ version: 1, arch: "x86_64" });
    hello[0] = 0;
    await writeAllTo(control, hello);
    await rejects(server.waitForGuest({ timeoutMs: 5000 }), ProtocolError);
    await rejects(server.run(TINY), ProtocolError);
  });
});

Deno.test("run() rejects bad frames, a wrong reply id and closes strangers' streams", async () => {
  await withFakeGuest(async ({ server, connect }) => {
    const control = await connect(Port.CONTROL);
    await writeAllTo(control, encodeHello({ version: 1, arch: "aarch64" }));
    deepEqual(await server.waitForGuest(), { version: 1, arch: "aarch64" });

    // A request with output: a frame of an unknown type.
    const first = server.run(TINY, { capture: { stdout: true } });
    const header = decodeRequestHeader(
      await readExactly(control, Limits.REQUEST_HEADER_SIZE),
    );
    equal(header.outputFlags, 1);
    ok(header.clockSeconds > 1_600_000_000, "the clock is set by default");
    await readExactly(control, header.codeSize);
    // A stream for another program is closed at once.
    const stranger = await connect(Port.OUTPUT);
    await writeAllTo(stranger, encodeStreamHello({ kind: "output", id: 99 }));
    equal(await stranger.read(new Uint8Array(1)), null);
    const output = await connect(Port.OUTPUT);
    await writeAllTo(
      output,
      encodeStreamHello({ kind: "output", id: header.id }),
    );
    await writeAllTo(output, encodeFrame(FrameType.STDOUT, encode("ok")));
    await writeAllTo(output, encodeFrame(7, encode("bad")));
    await writeAllTo(
      control,
      encodeReply({ id: header.id, status: 0, guestError: 0 }),
    );
    await rejects(first, /type 7 is unknown/);

    // A stderr frame the request did not ask for.
    const second = server.run(TINY, { capture: { stdout: true } });
    const h2 = decodeRequestHeader(
      await readExactly(control, Limits.REQUEST_HEADER_SIZE),
    );
    await readExactly(control, h2.codeSize);
    const output2 = await connect(Port.OUTPUT);
    await writeAllTo(output2, encodeStreamHello({ kind: "output", id: h2.id }));
    await writeAllTo(output2, encodeFrame(FrameType.STDERR, encode("no")));
    await writeAllTo(
      control,
      encodeReply({ id: h2.id, status: 1, guestError: 0 }),
    );
    await rejects(second, ProtocolError);

    // A reply for another program breaks the control connection for good.
    const third = server.run(TINY, { setClock: false });
    const h3 = decodeRequestHeader(
      await readExactly(control, Limits.REQUEST_HEADER_SIZE),
    );
    equal(h3.clockSeconds, 0);
    await readExactly(control, h3.codeSize);
    await writeAllTo(
      control,
      encodeReply({ id: h3.id + 1, status: 0, guestError: 0 }),
    );
    await rejects(third, /it is for program/);
    await rejects(server.run(TINY), ProtocolError);
  });
});

Deno.test("run() rejects an output stream that ends without its end frame", async () => {
  await withFakeGuest(async ({ server, connect }) => {
    const control = await connect(Port.CONTROL);
    await writeAllTo(control, encodeHello({ version: 1, arch: "x86_64" }));
    const pending = server.run(TINY, { capture: { stdout: true } });
    const header = decodeRequestHeader(
      await readExactly(control, Limits.REQUEST_HEADER_SIZE),
    );
    await readExactly(control, header.codeSize);
    const output = await connect(Port.OUTPUT);
    await writeAllTo(
      output,
      encodeStreamHello({ kind: "output", id: header.id }),
    );
    await writeAllTo(
      output,
      encodeFrame(FrameType.STDOUT, encode("partial")).subarray(0, 8),
    );
    output.close();
    await writeAllTo(
      control,
      encodeReply({ id: header.id, status: 0, guestError: 0 }),
    );
    await rejects(pending, /ended after 3 of 7 bytes/);
    // The control connection is still in step.
    const next = server.run(TINY, {});
    const h2 = decodeRequestHeader(
      await readExactly(control, Limits.REQUEST_HEADER_SIZE),
    );
    await readExactly(control, h2.codeSize);
    await writeAllTo(
      control,
      encodeReply({ id: h2.id, status: 2, guestError: 0 }),
    );
    deepEqual(await next, { exitCode: 2 });
  });
});

Deno.test("run() checks its options and the program before queueing", async () => {
  await withFakeGuest(async ({ server }) => {
    await rejects(
      server.run(TINY, {
        capture: { combine: true },
        stderr: new WritableStream(),
      }),
      TypeError,
    );
    await rejects(server.run({ ...TINY, code: new Uint8Array(0) }), RangeError);
    await rejects(server.run({ ...TINY, relocations: [12] }), RangeError);
  });
});

Deno.test("close() ends a run whose stdout never takes a write", async () => {
  await withFakeGuest(async ({ server, connect }) => {
    const control = await connect(Port.CONTROL);
    await writeAllTo(control, encodeHello({ version: 1, arch: "x86_64" }));
    const pending = server.run(TINY, {
      stdout: new WritableStream({ write: () => new Promise(() => {}) }),
    });
    const header = decodeRequestHeader(
      await readExactly(control, Limits.REQUEST_HEADER_SIZE),
    );
    await readExactly(control, header.codeSize);
    const output = await connect(Port.OUTPUT);
    await writeAllTo(
      output,
      encodeStreamHello({ kind: "output", id: header.id }),
    );
    await writeAllTo(output, encodeFrame(FrameType.STDOUT, encode("stuck")));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await server.close();
    await rejects(pending, VmTerminatedError);
  });
});
