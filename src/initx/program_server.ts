/**
 * The host side of the program protocol (`docs/protocol.md`): it listens on
 * the control, stdin and output ports of a {@link StreamTransport} (vsock in
 * a VM, Unix sockets in the unit tests), waits for the guest's hello, and
 * runs compiled programs in the guest one at a time.
 *
 * Output is passed on with backpressure: the next frame is read only once
 * the previous payload was written to the caller's stream, so a slow reader
 * slows the guest through the transport's flow control. Only output the
 * caller asked to capture is kept in memory. A slow or endless stdin never
 * delays a result: pumping stops when the reply arrives.
 *
 * ```ts
 * import { compile, ProgramBuilder } from "../ir/mod.ts";
 * import { unixStreamTransport, VsockProgramServer } from "./program_server.ts";
 *
 * const dir = Deno.makeTempDirSync();
 * const server = new VsockProgramServer(unixStreamTransport(dir));
 * // ... start a guest whose init connects to `${dir}/9998` ...
 * const p = new ProgramBuilder();
 * p.method("main", (m) => m.return(3));
 * const program = compile(p.build(), { arch: "x86_64" });
 * const pending = server.run(program, { setClock: false });
 * await server.close();
 * await pending.catch((e) => console.log(e.name)); // VmTerminatedError
 * Deno.removeSync(dir, { recursive: true });
 * ```
 *
 * @module
 */

import type { CompiledProgram } from "../ir/mod.ts";
import {
  BootTimeoutError,
  GuestError,
  ProtocolError,
  VmTerminatedError,
} from "./errors.ts";
import {
  decodeFrameHeader,
  decodeHello,
  decodeReply,
  decodeStreamHello,
  encodeRequestParts,
  FrameType,
  type Hello,
  Limits,
  OutputFlag,
  Port,
  type Reply,
  StdinMode,
} from "./protocol.ts";

/** How long `waitForGuest` waits by default, in milliseconds. */
const DEFAULT_BOOT_TIMEOUT_MS = 30_000;
/** How long a new stdin or output connection may take to say which program it is for. */
const STREAM_HELLO_TIMEOUT_MS = 10_000;
/** How long the output connection may lag behind a successful reply. */
const OUTPUT_GRACE_MS = 5_000;
/** Bytes of a `Uint8Array` stdin written at once, so stopping is prompt. */
const STDIN_CHUNK_SIZE = 64 * 1024;
/** Bytes read from a Unix socket at once. */
const UNIX_READ_SIZE = 64 * 1024;
/** The largest program id; ids wrap back to 1 after it. */
const MAX_PROGRAM_ID = 0xffff_ffff;

// ---- transports ----

/**
 * One stream connection of a {@link StreamTransport}. `readable` ends when
 * the peer shuts down its sending side; closing `writable` shuts down ours
 * (the peer reads end of file) and keeps `readable` open; `close()` ends
 * both directions at once and may be called more than once.
 *
 * @example
 * ```ts
 * import type { StreamConnection } from "./program_server.ts";
 * async function greet(conn: StreamConnection): Promise<void> {
 *   const writer = conn.writable.getWriter();
 *   await writer.write(new TextEncoder().encode("hi"));
 *   await writer.close();
 *   conn.close();
 * }
 * ```
 */
export interface StreamConnection {
  /** Bytes from the peer. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the peer; closing it half-closes the connection. */
  readonly writable: WritableStream<Uint8Array>;
  /** Close both directions. */
  close(): void;
}

/**
 * Accepts the connections to one port.
 *
 * @example
 * ```ts
 * import type { StreamListener } from "./program_server.ts";
 * async function drop(listener: StreamListener): Promise<void> {
 *   for (let c = await listener.accept(); c !== null; c = await listener.accept()) c.close();
 * }
 * ```
 */
export interface StreamListener {
  /** The next connection, or `null` once the listener is closed. */
  accept(): Promise<StreamConnection | null>;
  /** Stop listening; a pending `accept()` resolves with `null`. */
  close(): void;
}

/**
 * Where the guest's connections arrive: a listener per port.
 *
 * @example
 * ```ts
 * import { type StreamTransport, unixStreamTransport } from "./program_server.ts";
 * const transport: StreamTransport = unixStreamTransport("/tmp");
 * ```
 */
export interface StreamTransport {
  /**
   * Listen on a port.
   *
   * @param port The port.
   * @returns The listener.
   */
  listen(port: number): StreamListener;
}

/**
 * A {@link StreamTransport} over Unix sockets in a directory: port P is the
 * socket `${dir}/${P}`. A stale socket file at that path is replaced; the
 * listener removes its file when closed.
 *
 * @example
 * ```ts
 * import { unixStreamTransport } from "./program_server.ts";
 * const dir = Deno.makeTempDirSync();
 * const listener = unixStreamTransport(dir).listen(9998);
 * listener.close();
 * Deno.removeSync(dir, { recursive: true });
 * ```
 *
 * @param dir The directory of the sockets.
 * @returns The transport.
 */
export function unixStreamTransport(dir: string): StreamTransport {
  return {
    listen(port: number): StreamListener {
      const path = `${dir}/${port}`;
      try {
        if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
      } catch {
        // Nothing there.
      }
      const listener = Deno.listen({ transport: "unix", path });
      let closed = false;
      return {
        async accept() {
          if (closed) return null;
          try {
            return unixConnection(await listener.accept());
          } catch (e) {
            if (closed) return null;
            throw e;
          }
        },
        close() {
          if (closed) return;
          closed = true;
          try {
            listener.close();
          } catch {
            // Already closed.
          }
          try {
            Deno.removeSync(path);
          } catch {
            // Already gone.
          }
        },
      };
    },
  };
}

function unixConnection(conn: Deno.UnixConn): StreamConnection {
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  };
  const buffer = new Uint8Array(UNIX_READ_SIZE);
  const readable = new ReadableStream<Uint8Array>({
    async pull(controller) {
      let n: number | null;
      try {
        n = await conn.read(buffer);
      } catch (e) {
        if (closed) controller.close();
        else controller.error(e);
        return;
      }
      if (n === null) controller.close();
      else controller.enqueue(buffer.slice(0, n));
    },
  }, { highWaterMark: 0 });
  const writable = new WritableStream<Uint8Array>({
    async write(chunk) {
      for (let at = 0; at < chunk.length;) {
        at += await conn.write(chunk.subarray(at));
      }
    },
    async close() {
      await conn.closeWrite();
    },
    abort() {
      close();
    },
  });
  return { readable, writable, close };
}

// ---- internals ----

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(reason: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((a, b) => {
    resolve = a;
    reject = b;
  });
  return { promise, resolve, reject };
}

function closeQuietly(conn: StreamConnection): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

/** Exact reads from a stream of chunks. */
class ByteReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  /**
   * Exactly `n` bytes; `null` when the stream ended before the first one.
   * A stream that ends part way is a {@link ProtocolError}.
   */
  async readExact(n: number, what: string): Promise<Uint8Array | null> {
    if (n === 0) return new Uint8Array(0);
    while (this.#buffered < n && !this.#ended) {
      const { done, value } = await this.#reader.read();
      if (done) this.#ended = true;
      else if (value.length > 0) {
        this.#chunks.push(value);
        this.#buffered += value.length;
      }
    }
    if (this.#buffered < n) {
      if (this.#buffered === 0) return null;
      throw new ProtocolError(
        `Cannot read ${what}: the connection ended after ${this.#buffered} of ${n} bytes`,
      );
    }
    return this.#take(n);
  }

  #take(n: number): Uint8Array {
    this.#buffered -= n;
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const bytes = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const chunk = this.#chunks[0]!;
      const take = Math.min(chunk.length, n - at);
      bytes.set(chunk.subarray(0, take), at);
      at += take;
      if (take === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    return bytes;
  }
}

// ---- the server ----

/** Options of {@link VsockProgramServer.run}. */
type RunOptions = NonNullable<Parameters<VsockProgramServer["run"]>[1]>;
/** What {@link VsockProgramServer.run} resolves with. */
type RunResult = Awaited<ReturnType<VsockProgramServer["run"]>>;

/** A run, validated and waiting its turn. */
interface Plan {
  program: CompiledProgram;
  outputFlags: number;
  stdin?: ReadableStream<Uint8Array> | Uint8Array;
  stdout?: WritableStream<Uint8Array>;
  stderr?: WritableStream<Uint8Array>;
  captureStdout: boolean;
  captureStderr: boolean;
  setClock: boolean;
  signal?: AbortSignal;
}

/** The host's side of one program while it runs. */
class ActiveRun {
  readonly id: number;
  readonly plan: Plan;
  #tasks: Set<Promise<void>>;
  #stdinReader?: ReadableStreamDefaultReader<Uint8Array>;
  #stdinConn?: StreamConnection;
  #stdinStopped = false;
  #outputConn?: StreamConnection;
  #outputDone = deferred<Error | undefined>();
  #stdoutWriter?: WritableStreamDefaultWriter<Uint8Array>;
  #stderrWriter?: WritableStreamDefaultWriter<Uint8Array>;
  #captured: Record<1 | 2, Uint8Array[]> = { 1: [], 2: [] };
  #writeError?: Error;
  #abandoned = false;
  /** Resolves when the run is abandoned or disposed: a stuck caller's stream is then left behind. */
  #left = deferred<void>();

  constructor(id: number, plan: Plan, tasks: Set<Promise<void>>) {
    this.id = id;
    this.plan = plan;
    this.#tasks = tasks;
    // Lock the caller's streams now, so a locked one fails before the guest is asked.
    try {
      if (plan.stdin instanceof ReadableStream) {
        this.#stdinReader = plan.stdin.getReader();
      }
      this.#stdoutWriter = plan.stdout?.getWriter();
      this.#stderrWriter = plan.stderr?.getWriter();
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  get #wantsOutput(): boolean {
    return (this.plan.outputFlags &
      (OutputFlag.STDOUT | OutputFlag.STDERR)) !== 0;
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }

  /** Take a stream connection for this run; `false` when it is not wanted. */
  attach(
    kind: "stdin" | "output",
    conn: StreamConnection,
    reader: ByteReader,
  ): boolean {
    if (kind === "stdin") {
      if (this.plan.stdin === undefined || this.#stdinConn !== undefined) {
        return false;
      }
      this.#stdinConn = conn;
      if (this.#stdinStopped) closeQuietly(conn);
      else this.#track(this.#pumpStdin(conn));
      return true;
    }
    if (!this.#wantsOutput || this.#outputConn !== undefined) return false;
    this.#outputConn = conn;
    if (this.#abandoned) closeQuietly(conn);
    this.#track(this.#pumpOutput(conn, reader));
    return true;
  }

  async #pumpStdin(conn: StreamConnection): Promise<void> {
    const source = this.plan.stdin!;
    let writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
    try {
      writer = conn.writable.getWriter();
      if (source instanceof Uint8Array) {
        for (let at = 0; at < source.length; at += STDIN_CHUNK_SIZE) {
          if (this.#stdinStopped) return;
          await writer.write(source.subarray(at, at + STDIN_CHUNK_SIZE));
        }
      } else {
        const reader = this.#stdinReader!;
        for (;;) {
          const { done, value } = await reader.read();
          if (done || this.#stdinStopped) break;
          if (value.length > 0) await writer.write(value);
        }
      }
      if (!this.#stdinStopped) await writer.close();
    } catch {
      // The program exited and the guest closed its stdin, or pumping
      // stopped: neither is an error. The program still gets end of file.
      closeQuietly(conn);
    }
  }

  async #pumpOutput(conn: StreamConnection, reader: ByteReader): Promise<void> {
    let error: Error | undefined;
    try {
      for (;;) {
        const head = await reader.readExact(
          Limits.FRAME_HEADER_SIZE,
          "an output frame",
        );
        if (head === null) {
          throw new ProtocolError(
            "Cannot read the output: the stream ended before its end frame",
          );
        }
        const { type, length } = decodeFrameHeader(head);
        if (type === FrameType.END) break;
        const bit = type === FrameType.STDOUT
          ? OutputFlag.STDOUT
          : OutputFlag.STDERR;
        if ((this.plan.outputFlags & bit) === 0) {
          throw new ProtocolError(
            `Cannot read the output: got a frame of type ${type}, which the request did not ask for`,
          );
        }
        const payload = await reader.readExact(length, "an output frame");
        if (payload === null) {
          throw new ProtocolError(
            "Cannot read the output: the stream ended before a frame's payload",
          );
        }
        await this.#deliver(type as 1 | 2, payload);
      }
    } catch (e) {
      error = asError(e);
    } finally {
      closeQuietly(conn);
    }
    this.#outputDone.resolve(error);
  }

  async #deliver(type: 1 | 2, payload: Uint8Array): Promise<void> {
    if (this.#abandoned) return;
    const capture = type === 1
      ? this.plan.captureStdout
      : this.plan.captureStderr;
    if (capture) this.#captured[type].push(payload);
    const writer = type === 1 ? this.#stdoutWriter : this.#stderrWriter;
    if (writer === undefined) return;
    try {
      await Promise.race([writer.write(payload), this.#left.promise]);
    } catch (e) {
      // The caller's stream failed: keep draining, report it at the end.
      this.#writeError ??= asError(e);
      writer.releaseLock();
      if (type === 1) this.#stdoutWriter = undefined;
      else this.#stderrWriter = undefined;
    }
  }

  /** Stop pumping stdin; the program gets end of file. */
  stopStdin(): void {
    if (this.#stdinStopped) return;
    this.#stdinStopped = true;
    try {
      this.#stdinReader?.releaseLock();
    } catch {
      // Already released.
    }
    this.#stdinReader = undefined;
    if (this.#stdinConn) closeQuietly(this.#stdinConn);
  }

  /** The caller stopped waiting: end stdin, drop output (the guest drains its pipes). */
  abandon(): void {
    this.#abandoned = true;
    this.#left.resolve();
    this.stopStdin();
    if (this.#outputConn) closeQuietly(this.#outputConn);
  }

  /**
   * Wait until the output stream ended; its error, if any. An output
   * connection that has not even arrived `graceMs` after this call is a
   * protocol error.
   */
  outputFinished(graceMs: number): Promise<Error | undefined> {
    if (!this.#wantsOutput) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        if (this.#outputConn !== undefined) return;
        resolve(
          new ProtocolError(
            "Cannot read the output: the guest replied but never connected its output stream",
          ),
        );
      }, graceMs);
      this.#outputDone.promise.then((error) => {
        clearTimeout(timer);
        resolve(error);
      });
    });
  }

  /** The result for an exit status; throws when a caller's stream failed. */
  result(status: number): RunResult {
    if (this.#writeError) throw this.#writeError;
    const result: RunResult = { exitCode: status };
    if (this.plan.captureStdout) result.stdout = concat(this.#captured[1]);
    if (this.plan.captureStderr) result.stderr = concat(this.#captured[2]);
    return result;
  }

  /** Release everything the run holds. */
  dispose(): void {
    this.#left.resolve();
    this.stopStdin();
    if (this.#outputConn) closeQuietly(this.#outputConn);
    this.#outputDone.resolve(undefined);
    for (const writer of [this.#stdoutWriter, this.#stderrWriter]) {
      try {
        writer?.releaseLock();
      } catch {
        // Already released.
      }
    }
    this.#stdoutWriter = this.#stderrWriter = undefined;
  }
}

/**
 * The host side of the program protocol: listens on a transport's control,
 * stdin and output ports, waits for the guest's init to connect and say
 * hello, and runs compiled programs in the guest, queued, one at a time.
 *
 * Bad data from the guest rejects with {@link ProtocolError}; once the
 * control connection is out of step, every later run rejects with it too.
 * When the guest closes the control connection, or {@link terminate} is
 * called, pending and later runs reject with {@link VmTerminatedError}.
 *
 * @example
 * ```ts
 * import { unixStreamTransport, VsockProgramServer } from "./program_server.ts";
 * const dir = Deno.makeTempDirSync();
 * const server = new VsockProgramServer(unixStreamTransport(dir));
 * const guest = server.waitForGuest({ timeoutMs: 10 });
 * await guest.catch((e) => console.assert(e.name === "BootTimeoutError"));
 * await server.close();
 * Deno.removeSync(dir, { recursive: true });
 * ```
 */
export class VsockProgramServer {
  #listeners: StreamListener[] = [];
  #guest = deferred<Hello>();
  #claimed = false;
  #control?: {
    conn: StreamConnection;
    reader: ByteReader;
    writer: WritableStreamDefaultWriter<Uint8Array>;
  };
  #queue: Promise<unknown> = Promise.resolve();
  #runs = new Map<number, ActiveRun>();
  #nextId = 1;
  #ended?: Error;
  #endedSignal = deferred<never>();
  #connections = new Set<StreamConnection>();
  #tasks = new Set<Promise<void>>();

  /**
   * Listen on the three ports.
   *
   * @param transport Where the guest's connections arrive.
   * @param options The ports.
   * @throws {RangeError} When two ports are the same.
   */
  constructor(
    transport: StreamTransport,
    options: {
      /** The ports (default 9998, 9999 and 10001). */
      ports?: { control?: number; stdin?: number; output?: number };
    } = {},
  ) {
    const ports = {
      control: options.ports?.control ?? Port.CONTROL,
      stdin: options.ports?.stdin ?? Port.STDIN,
      output: options.ports?.output ?? Port.OUTPUT,
    };
    if (new Set(Object.values(ports)).size !== 3) {
      throw new RangeError(
        `Cannot serve programs: the control, stdin and output ports must differ, got ${ports.control}, ${ports.stdin} and ${ports.output}`,
      );
    }
    this.#guest.promise.catch(() => {});
    this.#endedSignal.promise.catch(() => {});
    try {
      const control = transport.listen(ports.control);
      this.#listeners.push(control);
      const stdin = transport.listen(ports.stdin);
      this.#listeners.push(stdin);
      const output = transport.listen(ports.output);
      this.#listeners.push(output);
      this.#track(this.#acceptControl(control));
      this.#track(this.#acceptStreams(stdin, "stdin"));
      this.#track(this.#acceptStreams(output, "output"));
    } catch (e) {
      for (const listener of this.#listeners) listener.close();
      throw e;
    }
  }

  /**
   * Wait for the guest's init to connect and say hello.
   *
   * @param options The limit (default 30 s) and an abort signal.
   * @returns The guest's protocol version and architecture.
   * @throws {BootTimeoutError} After `timeoutMs`.
   * @throws {VmTerminatedError} When the server was terminated first.
   * @throws {ProtocolError} When the guest's hello is bad.
   */
  async waitForGuest(
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<{ version: number; arch: "x86_64" | "aarch64" }> {
    if (this.#ended) throw this.#ended;
    const { signal } = options;
    signal?.throwIfAborted();
    const timeoutMs = options.timeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort: (() => void) | undefined;
    const limits = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new BootTimeoutError(timeoutMs)),
        timeoutMs,
      );
      onAbort = () => reject(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([
        this.#guest.promise,
        limits,
        this.#endedSignal.promise,
      ]);
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Run one compiled program in the guest, after the runs queued before it.
   * A non-zero exit status is a result, not an error.
   *
   * @param program The program, compiled for the guest's architecture.
   * @param options Stdin, output streams and capture, clock, abort signal.
   * @returns The exit status and the captured output.
   * @throws {GuestError} When a step of the init failed (the program did not run).
   * @throws {ProtocolError} When the guest sent bad data.
   * @throws {VmTerminatedError} When the VM ended first.
   * @throws {TypeError} When a stream is locked, or `combine` comes with a `stderr` stream.
   * @throws {RangeError} When the program is empty or too large.
   */
  run(
    program: CompiledProgram,
    options: {
      /**
       * The program's stdin, streamed over port 9999 (default `/dev/null`).
       * Pumping stops when the program's reply arrives; a stream is then
       * unlocked, not cancelled.
       */
      stdin?: ReadableStream<Uint8Array> | Uint8Array;
      /** Where the program's stdout goes as it comes (written, never closed). */
      stdout?: WritableStream<Uint8Array>;
      /** Where the program's stderr goes as it comes (written, never closed). */
      stderr?: WritableStream<Uint8Array>;
      /**
       * Output collected into the result. `combine` makes fd 2 the same as
       * fd 1 in the guest: everything goes to stdout, in order, and no
       * `stderr` stream may be given.
       */
      capture?: { stdout?: boolean; stderr?: boolean; combine?: boolean };
      /** Set the guest's clock to the host's first (default `true`). */
      setClock?: boolean;
      /**
       * Stops waiting for the program: the run rejects with the signal's
       * reason, its stdin ends and its output is dropped. The protocol
       * cannot kill a program: later runs wait until this one ends.
       */
      signal?: AbortSignal;
    } = {},
  ): Promise<{
    /** 0..255, or 128 + N when signal N ended the program. */
    exitCode: number;
    /** The captured stdout (with stderr, when combined), when asked for. */
    stdout?: Uint8Array;
    /** The captured stderr, when asked for. */
    stderr?: Uint8Array;
  }> {
    let plan: Plan;
    try {
      plan = this.#plan(program, options);
    } catch (e) {
      return Promise.reject(e);
    }
    const job = this.#queue.then(() => this.#execute(plan));
    this.#queue = job.catch(() => {});
    const { signal } = options;
    if (signal === undefined) return job;
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      if (signal.aborted) onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      job.then(resolve, reject).finally(() =>
        signal.removeEventListener("abort", onAbort)
      );
    });
  }

  /**
   * End everything: pending and later runs and waits reject with
   * {@link VmTerminatedError}, connections and listeners close. Only the
   * first call counts.
   *
   * @param reason Why, e.g. `"the guest powered off"`.
   */
  terminate(reason: string): void {
    this.#end(new VmTerminatedError(reason));
  }

  /**
   * {@link terminate} with "the program server was closed" (the guest's init
   * sees its control connection end and powers off), then wait until the
   * server's own tasks are done.
   */
  async close(): Promise<void> {
    this.terminate("the program server was closed");
    while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
  }

  // ---- internals ----

  #plan(program: CompiledProgram, options: RunOptions): Plan {
    const capture = options.capture ?? {};
    const combine = capture.combine ?? false;
    if (combine && options.stderr !== undefined) {
      throw new TypeError(
        "Cannot run the program: capture.combine sends stderr to stdout, so a stderr stream would get nothing",
      );
    }
    const stdout = combine || options.stdout !== undefined ||
      (capture.stdout ?? false);
    const stderr = !combine &&
      (options.stderr !== undefined || (capture.stderr ?? false));
    const outputFlags = (stdout ? OutputFlag.STDOUT : 0) |
      (stderr ? OutputFlag.STDERR : 0) | (combine ? OutputFlag.COMBINE : 0);
    // Check the program now; the id and clock are filled in at its turn.
    encodeRequestParts(program, { id: 1, outputFlags });
    return {
      program,
      outputFlags,
      stdin: options.stdin,
      stdout: options.stdout,
      stderr: options.stderr,
      captureStdout: combine || (capture.stdout ?? false),
      captureStderr: stderr && (capture.stderr ?? false),
      setClock: options.setClock ?? true,
      signal: options.signal,
    };
  }

  async #execute(plan: Plan): Promise<RunResult> {
    plan.signal?.throwIfAborted();
    if (this.#ended) throw this.#ended;
    await this.#race(this.#guest.promise);
    const control = this.#control!;
    const id = this.#nextId;
    this.#nextId = id >= MAX_PROGRAM_ID ? 1 : id + 1;
    const run = new ActiveRun(id, plan, this.#tasks);
    this.#runs.set(id, run);
    const onAbort = () => run.abandon();
    plan.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const parts = encodeRequestParts(plan.program, {
        id,
        outputFlags: plan.outputFlags,
        stdinMode: plan.stdin === undefined
          ? StdinMode.NONE
          : StdinMode.STREAMED,
        clock: plan.setClock ? new Date() : undefined,
      });
      let bytes: Uint8Array | null;
      try {
        for (const part of parts) {
          if (part.length > 0) await this.#race(control.writer.write(part));
        }
        bytes = await this.#race(
          control.reader.readExact(Limits.REPLY_SIZE, "the reply"),
        );
      } catch (e) {
        throw this.#controlLost(e);
      }
      if (bytes === null) throw this.#controlLost();
      let reply: Reply;
      try {
        reply = decodeReply(bytes);
        if (reply.id !== id) {
          throw new ProtocolError(
            `Cannot read the reply: it is for program ${reply.id}, expected ${id}`,
          );
        }
      } catch (e) {
        this.#end(asError(e));
        throw e;
      }
      run.stopStdin();
      if (reply.guestError !== 0) throw new GuestError(reply.guestError);
      if (plan.signal?.aborted) throw plan.signal.reason;
      const outputError = await this.#race(
        run.outputFinished(OUTPUT_GRACE_MS),
      );
      if (outputError) throw outputError;
      return run.result(reply.status);
    } finally {
      plan.signal?.removeEventListener("abort", onAbort);
      this.#runs.delete(id);
      run.dispose();
    }
  }

  /** The error that ends the server when the control connection broke. */
  #controlLost(cause?: unknown): Error {
    if (this.#ended) return this.#ended;
    const error = cause instanceof ProtocolError
      ? cause
      : new VmTerminatedError("the guest closed the control connection");
    this.#end(error);
    return error;
  }

  /** `promise`, or the error that ended the server, whichever comes first. */
  #race<T>(promise: Promise<T>): Promise<T> {
    return Promise.race([promise, this.#endedSignal.promise]);
  }

  #end(error: Error): void {
    if (this.#ended) return;
    this.#ended = error;
    this.#guest.reject(error);
    this.#endedSignal.reject(error);
    for (const listener of this.#listeners) {
      try {
        listener.close();
      } catch {
        // Already closed.
      }
    }
    for (const conn of this.#connections) closeQuietly(conn);
    this.#connections.clear();
    for (const run of this.#runs.values()) run.abandon();
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }

  #keep(conn: StreamConnection): void {
    if (this.#ended) {
      closeQuietly(conn);
      return;
    }
    this.#connections.add(conn);
  }

  async #accept(listener: StreamListener): Promise<StreamConnection | null> {
    try {
      return await listener.accept();
    } catch {
      return null;
    }
  }

  async #acceptControl(listener: StreamListener): Promise<void> {
    for (;;) {
      const conn = await this.#accept(listener);
      if (conn === null) return;
      if (this.#claimed || this.#ended) {
        closeQuietly(conn);
        continue;
      }
      this.#claimed = true;
      this.#keep(conn);
      this.#track(this.#greet(conn));
    }
  }

  async #greet(conn: StreamConnection): Promise<void> {
    try {
      const reader = new ByteReader(conn.readable);
      const bytes = await this.#race(
        reader.readExact(Limits.HELLO_SIZE, "the hello"),
      );
      if (bytes === null) {
        throw new ProtocolError(
          "Cannot read the hello: the guest closed the control connection first",
        );
      }
      const hello = decodeHello(bytes);
      this.#control = { conn, reader, writer: conn.writable.getWriter() };
      this.#guest.resolve(hello);
    } catch (e) {
      this.#end(
        this.#ended ??
          (e instanceof ProtocolError ? e : new ProtocolError(
            `Cannot read the hello: ${asError(e).message}`,
          )),
      );
    }
  }

  async #acceptStreams(
    listener: StreamListener,
    kind: "stdin" | "output",
  ): Promise<void> {
    for (;;) {
      const conn = await this.#accept(listener);
      if (conn === null) return;
      this.#keep(conn);
      if (!this.#ended) this.#track(this.#attach(conn, kind));
    }
  }

  async #attach(
    conn: StreamConnection,
    kind: "stdin" | "output",
  ): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let attached = false;
    try {
      const reader = new ByteReader(conn.readable);
      const timeout = new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), STREAM_HELLO_TIMEOUT_MS);
      });
      const bytes = await Promise.race([
        reader.readExact(Limits.STREAM_HELLO_SIZE, "a stream hello"),
        timeout,
      ]);
      if (bytes === null) return;
      const hello = decodeStreamHello(bytes);
      if (hello.kind !== kind) return;
      attached = this.#runs.get(hello.id)?.attach(kind, conn, reader) ?? false;
    } catch {
      // A connection that does not say which program it is for is dropped.
    } finally {
      clearTimeout(timer);
      // Once attached, the run owns the connection (and closes it).
      this.#connections.delete(conn);
      if (!attached) closeQuietly(conn);
    }
  }
}
