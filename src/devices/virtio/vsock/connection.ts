/**
 * One virtio-vsock stream connection: its state machine and credit-based
 * flow control in both directions (virtio 1.2 §5.10.6.3 "Buffer Space
 * Management", §5.10.6.5 "Stream Sockets"). It sees no virtqueue: the device
 * feeds it the guest's packets with {@link StreamConnection.receive} and
 * asks it for packets to send with {@link StreamConnection.takeControl} and
 * {@link StreamConnection.takeData}; the host sees a {@link VsockConnection}
 * (a readable and a writable byte stream).
 *
 * Credit, guest to host: we advertise {@link BUF_ALLOC_BYTES} and a
 * `fwd_cnt` that moves only as the host's reader takes bytes from
 * `readable`, so the guest can never have more than that many bytes
 * buffered here; a guest that sends beyond it broke the protocol and gets
 * RST. Every packet we send carries the current `fwd_cnt`; a CREDIT_UPDATE
 * goes out by itself once {@link CREDIT_UPDATE_THRESHOLD_BYTES} were
 * consumed since the guest last heard, or when it sends CREDIT_REQUEST.
 *
 * Credit, host to guest: data goes out only while `peer_buf_alloc -
 * (tx_cnt - peer_fwd_cnt)` is positive (u32 counters that wrap); each
 * `write()` resolves once all its bytes were handed to the device for guest
 * RX buffers, and the writable holds at most {@link SEND_QUEUE_BYTES} before
 * it applies backpressure.
 *
 * Lifecycle: `connecting` (host sent REQUEST) -> `established` -> `closing`
 * (an RST of ours waits to go out) -> `closed`. SHUTDOWN half-closes: the
 * guest's SEND ends `readable` once its data was read, the host closing
 * `writable` sends SHUTDOWN SEND after the queued data; once both
 * directions are done, we send RST, which Linux waits for after its own
 * SHUTDOWN. RST from the guest ends both directions.
 *
 * @module
 */

import {
  VSOCK_OP_CREDIT_REQUEST,
  VSOCK_OP_CREDIT_UPDATE,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RESPONSE,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_SHUTDOWN_RCV,
  VSOCK_SHUTDOWN_SEND,
  type VsockHeader,
} from "./packet.ts";

// ---- defs ----

/** Receive buffer advertised to the guest per connection (`buf_alloc`), in bytes. */
export const BUF_ALLOC_BYTES = 256 * 1024;
/** Bytes consumed since the guest last heard our `fwd_cnt` that trigger a CREDIT_UPDATE. */
export const CREDIT_UPDATE_THRESHOLD_BYTES = BUF_ALLOC_BYTES / 2;
/** Host bytes a connection's writable queues before `write()` applies backpressure. */
export const SEND_QUEUE_BYTES = 256 * 1024;
/** Default time a host-initiated connect waits for the guest's RESPONSE, in ms. */
export const CONNECT_TIMEOUT_MS = 5000;
/** Payloads below this size are copied into a shared buffer instead of kept whole, in bytes. */
const COALESCE_BELOW_BYTES = 512;
/** Size of the shared buffers that small payloads are copied into, in bytes. */
const COALESCE_BUFFER_BYTES = 16 * 1024;

/** Where a connection is in its life. */
export type ConnectionState =
  /** The host sent (or will send) REQUEST and waits for RESPONSE. */
  | "connecting"
  /** Data may flow. */
  | "established"
  /** Ended for the host; our RST still has to go out. */
  | "closing"
  /** Ended; nothing left to send. */
  | "closed";

/** A packet for the guest, without its addressing (the device adds that). */
export interface OutgoingPacket {
  /** Operation. */
  op: number;
  /** SHUTDOWN flags, else 0. */
  flags: number;
  /** RW payload (a view of the host's chunk: copy it before awaiting), else empty. */
  payload: Uint8Array;
  /** Our `buf_alloc`. */
  bufAlloc: number;
  /** Our `fwd_cnt`. */
  fwdCnt: number;
}

/** What {@link StreamConnection.receive} made of a packet. */
export type ReceiveOutcome =
  /** Used. */
  | "ok"
  /** Not understood (unknown op) or not relevant any more; dropped. */
  | "ignored"
  /** The guest broke the protocol; the connection is being reset. */
  | "protocol-error";

/**
 * A stream connection as the host sees it.
 *
 * @example
 * ```ts
 * import type { VsockConnection } from "./connection.ts";
 * async function echo(conn: VsockConnection): Promise<void> {
 *   await conn.readable.pipeTo(conn.writable); // ends with SHUTDOWN SEND
 *   await conn.closed;
 * }
 * ```
 */
export interface VsockConnection {
  /** The host's port. */
  readonly localPort: number;
  /** The guest's port. */
  readonly peerPort: number;
  /**
   * Bytes from the guest. A byte stream (BYOB readers work) with no
   * read-ahead: the guest's credit comes back only as this is read. Ends
   * when the guest shuts down sending; errors on reset.
   */
  readonly readable: ReadableStream<Uint8Array>;
  /**
   * Bytes to the guest. Each write resolves once its bytes went into guest
   * RX buffers; closing sends SHUTDOWN SEND after them; aborting resets.
   */
  readonly writable: WritableStream<Uint8Array>;
  /** Resets the connection (RST) at once and drops everything buffered. */
  close(): void;
  /** Resolves once the connection has ended, whichever way (never rejects). */
  readonly closed: Promise<void>;
}

/** Options of {@link StreamConnection}. */
export interface StreamConnectionOptions {
  /** The host's port. */
  localPort: number;
  /** The guest's port. */
  peerPort: number;
  /**
   * Who opened it: `"guest"` (made on the guest's REQUEST; answers
   * RESPONSE) or `"host"` (sends REQUEST, waits for RESPONSE).
   */
  initiator: "guest" | "host";
  /** The guest's `buf_alloc` and `fwd_cnt` from its REQUEST (guest-initiated). */
  peerCredit?: { bufAlloc: number; fwdCnt: number };
  /** Timeout of a host-initiated connect in ms. Default {@link CONNECT_TIMEOUT_MS}. */
  connectTimeoutMs?: number;
  /** Receive buffer to advertise, in bytes. Default {@link BUF_ALLOC_BYTES}. */
  bufAllocBytes?: number;
  /** Called whenever a packet may have become ready to send, or the state changed. */
  onChange?: (connection: StreamConnection) => void;
}

type RxEnd = { kind: "eof" } | { kind: "error"; error: unknown };

interface PendingWrite {
  bytes: Uint8Array;
  offset: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/**
 * The state machine of one stream connection.
 *
 * @example
 * ```ts
 * import { StreamConnection } from "./connection.ts";
 * const conn = new StreamConnection({ localPort: 9998, peerPort: 1024, initiator: "guest" });
 * const answer = conn.takeControl(); // RESPONSE, with our buf_alloc
 * console.assert(answer?.op === 2 && conn.state === "established");
 * ```
 */
export class StreamConnection implements VsockConnection {
  /** The host's port. */
  readonly localPort: number;
  /** The guest's port. */
  readonly peerPort: number;
  /** Bytes from the guest (see {@link VsockConnection.readable}). */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the guest (see {@link VsockConnection.writable}). */
  readonly writable: WritableStream<Uint8Array>;
  /** Resolves once the connection has ended (never rejects). */
  readonly closed: Promise<void>;
  /**
   * Resolves when the connection is established (at once for a
   * guest-initiated one); rejects when a host-initiated connect fails.
   */
  readonly established: Promise<void>;

  #state: ConnectionState;
  #onChange: (c: StreamConnection) => void;
  #bufAlloc: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #resolveClosed!: () => void;
  #resolveEstablished!: () => void;
  #rejectEstablished!: (e: unknown) => void;

  // Control packets waiting to go out (flags, so they cannot pile up).
  #wantRequest = false;
  #wantResponse = false;
  #wantRst = false;
  #wantCreditUpdate = false;
  #shutdownPending = 0;
  #shutdownSent = 0;
  #peerShutdown = 0;

  // Guest -> host.
  #rc!: ReadableByteStreamController;
  #rxQueue: Uint8Array[] = [];
  #rxQueuedBytes = 0;
  #coalesce: Uint8Array | undefined;
  #fwdCnt = 0;
  #lastSentFwdCnt = 0;
  #rxEnd: RxEnd | undefined;
  #readableDone = false;
  #readCancelled = false;
  #pullWaiter: (() => void) | undefined;

  // Host -> guest.
  #wc!: WritableStreamDefaultController;
  #txCnt = 0;
  #peerBufAlloc = 0;
  #peerFwdCnt = 0;
  #sending: PendingWrite | undefined;
  #writeError: unknown;
  #writeFailed = false;
  #writableAborted = false;
  #hostSendClosed = false;
  #closeWaiter:
    | { resolve: () => void; reject: (e: unknown) => void }
    | undefined;

  /** Creates a connection; a guest-initiated one is established at once. */
  constructor(options: StreamConnectionOptions) {
    this.localPort = options.localPort;
    this.peerPort = options.peerPort;
    this.#onChange = options.onChange ?? (() => {});
    this.#bufAlloc = options.bufAllocBytes ?? BUF_ALLOC_BYTES;
    this.closed = new Promise((r) => this.#resolveClosed = r);
    this.established = new Promise((resolve, reject) => {
      this.#resolveEstablished = resolve;
      this.#rejectEstablished = reject;
    });
    this.established.catch(() => {});
    if (options.peerCredit !== undefined) {
      this.#peerBufAlloc = options.peerCredit.bufAlloc >>> 0;
      this.#peerFwdCnt = options.peerCredit.fwdCnt >>> 0;
    }
    if (options.initiator === "guest") {
      this.#state = "established";
      this.#wantResponse = true;
      this.#resolveEstablished();
    } else {
      this.#state = "connecting";
      this.#wantRequest = true;
      const ms = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#end({
          error: new Error(
            `Cannot connect to vsock port ${this.peerPort} of the guest: no answer within ${ms} ms`,
          ),
          // An RST only matters if the guest may have seen our REQUEST.
          rst: !this.#wantRequest,
          discard: true,
        });
      }, ms);
    }
    this.readable = new ReadableStream({
      type: "bytes",
      start: (c) => {
        this.#rc = c;
      },
      pull: () => this.#pull(),
      cancel: () => this.#cancelRead(),
    }, { highWaterMark: 0 });
    this.writable = new WritableStream<Uint8Array>({
      start: (c) => {
        this.#wc = c;
        // abort() waits for the write in flight, which may wait for guest
        // credit forever: act on the signal, which fires at once.
        c.signal.addEventListener(
          "abort",
          () => {
            // The stream is erroring itself: only settle our side.
            this.#writableAborted = true;
            this.#end({ error: c.signal.reason, rst: true, discard: true });
          },
          { once: true },
        );
      },
      write: (chunk) => this.#write(chunk),
      close: () => this.#closeWrite(),
      abort: (reason) => this.#end({ error: reason, rst: true, discard: true }),
    }, new ByteLengthQueuingStrategy({ highWaterMark: SEND_QUEUE_BYTES }));
  }

  /** Where the connection is in its life. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** Bytes received from the guest and not yet read by the host. */
  get bufferedBytes(): number {
    return this.#rxQueuedBytes;
  }

  /** Bytes the guest can take now: `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`. */
  get peerCredit(): number {
    const inFlight = (this.#txCnt - this.#peerFwdCnt) >>> 0;
    return Math.max(0, this.#peerBufAlloc - inFlight);
  }

  /** Our `fwd_cnt`: bytes of the guest's the host has consumed (mod 2^32). */
  get fwdCnt(): number {
    return this.#fwdCnt;
  }

  /** Resets the connection (RST) at once and drops everything buffered. */
  close(): void {
    this.#end({
      error: new Error(
        `Cannot use vsock connection (host port ${this.localPort}, guest port ${this.peerPort}): it was closed`,
      ),
      rst: true,
      discard: true,
    });
  }

  /**
   * Resets the connection because a packet for it was unusable (e.g. its
   * length field lied): RST to the guest, streams error after buffered data.
   */
  protocolError(detail: string): void {
    this.#violate(detail);
  }

  /**
   * Ends the connection from outside (device reset, VM gone): streams error
   * with `error` at once, buffered data is dropped, no RST is sent.
   */
  abort(error: unknown): void {
    this.#end({ error, rst: false, discard: true });
  }

  /**
   * Handles a packet the guest sent on this connection (addressing already
   * matched by the device; `payload` is exactly `header.len` bytes and
   * becomes the connection's: it may be handed on without a copy).
   */
  receive(header: VsockHeader, payload: Uint8Array): ReceiveOutcome {
    const state = this.#state;
    if (state === "closed") return "ignored";
    if (state === "closing") {
      // Our RST is on its way; the guest's RST makes it unnecessary.
      if (header.op === VSOCK_OP_RST) {
        this.#wantRst = false;
        this.#setClosed();
        this.#changed();
      }
      return "ignored";
    }
    this.#peerBufAlloc = header.bufAlloc >>> 0;
    this.#peerFwdCnt = header.fwdCnt >>> 0;
    let outcome: ReceiveOutcome = "ok";
    switch (header.op) {
      case VSOCK_OP_RESPONSE:
        if (state !== "connecting") {
          return this.#violate("RESPONSE while established");
        }
        this.#state = "established";
        this.#clearTimer();
        this.#resolveEstablished();
        break;
      case VSOCK_OP_RST:
        this.#receiveRst();
        return "ok";
      case VSOCK_OP_REQUEST:
        return this.#violate("REQUEST on an open connection");
      case VSOCK_OP_RW:
        if (state !== "established") {
          return this.#violate("data before RESPONSE");
        }
        outcome = this.#receiveData(payload);
        break;
      case VSOCK_OP_SHUTDOWN:
        if (state !== "established") {
          return this.#violate("SHUTDOWN before RESPONSE");
        }
        this.#receiveShutdown(header.flags);
        break;
      case VSOCK_OP_CREDIT_UPDATE:
        break;
      case VSOCK_OP_CREDIT_REQUEST:
        if (state === "established") this.#wantCreditUpdate = true;
        break;
      default:
        outcome = "ignored";
    }
    if (outcome === "ok") this.#changed();
    return outcome;
  }

  /** Whether {@link StreamConnection.takeControl} has a packet. */
  hasControl(): boolean {
    return this.#nextControl() !== undefined;
  }

  /** Whether {@link StreamConnection.takeData} has a packet (data and credit). */
  hasData(): boolean {
    return this.#state === "established" && this.#sending !== undefined &&
      this.peerCredit > 0;
  }

  /**
   * The next control packet (REQUEST, RESPONSE, RST, SHUTDOWN,
   * CREDIT_UPDATE), or undefined; taking it counts it as sent.
   */
  takeControl(): OutgoingPacket | undefined {
    const next = this.#nextControl();
    if (next === undefined) return undefined;
    const packet = this.#packet(next.op, next.flags, EMPTY);
    switch (next.op) {
      case VSOCK_OP_RST:
        this.#wantRst = false;
        this.#setClosed();
        break;
      case VSOCK_OP_REQUEST:
        this.#wantRequest = false;
        break;
      case VSOCK_OP_RESPONSE:
        this.#wantResponse = false;
        break;
      case VSOCK_OP_SHUTDOWN:
        this.#shutdownPending &= ~next.flags;
        this.#shutdownSent |= next.flags;
        if (next.flags & VSOCK_SHUTDOWN_SEND) this.#resolveCloseWaiter();
        this.#checkFullClose();
        break;
    }
    return packet;
  }

  /**
   * The next data packet of at most `maxBytes` payload bytes (and never
   * beyond the guest's credit), or undefined. The payload is a view of the
   * host's chunk: the caller copies it into guest memory before yielding.
   */
  takeData(maxBytes: number): OutgoingPacket | undefined {
    const w = this.#sending;
    if (w === undefined || this.#state !== "established") return undefined;
    const n = Math.min(maxBytes, this.peerCredit, w.bytes.length - w.offset);
    if (n <= 0) return undefined;
    const payload = w.bytes.subarray(w.offset, w.offset + n);
    w.offset += n;
    this.#txCnt = (this.#txCnt + n) >>> 0;
    if (w.offset === w.bytes.length) {
      this.#sending = undefined;
      w.resolve();
    }
    return this.#packet(VSOCK_OP_RW, 0, payload);
  }

  #packet(op: number, flags: number, payload: Uint8Array): OutgoingPacket {
    // Every packet tells the guest our credit (Linux updates from each one).
    this.#lastSentFwdCnt = this.#fwdCnt;
    this.#wantCreditUpdate = false;
    return {
      op,
      flags,
      payload,
      bufAlloc: this.#bufAlloc,
      fwdCnt: this.#fwdCnt,
    };
  }

  #nextControl(): { op: number; flags: number } | undefined {
    switch (this.#state) {
      case "closing":
        return this.#wantRst ? { op: VSOCK_OP_RST, flags: 0 } : undefined;
      case "connecting":
        return this.#wantRequest
          ? { op: VSOCK_OP_REQUEST, flags: 0 }
          : undefined;
      case "established": {
        if (this.#wantResponse) return { op: VSOCK_OP_RESPONSE, flags: 0 };
        // SHUTDOWN SEND only after the last queued byte went out.
        let flags = this.#shutdownPending;
        if (this.#sending !== undefined) flags &= ~VSOCK_SHUTDOWN_SEND;
        if (flags !== 0) return { op: VSOCK_OP_SHUTDOWN, flags };
        if (this.#wantCreditUpdate) {
          return { op: VSOCK_OP_CREDIT_UPDATE, flags: 0 };
        }
        return undefined;
      }
      default:
        return undefined;
    }
  }

  #receiveData(payload: Uint8Array): ReceiveOutcome {
    if (this.#peerShutdown & VSOCK_SHUTDOWN_SEND) {
      return this.#violate("data after SHUTDOWN SEND");
    }
    const n = payload.length;
    if (n === 0) return "ok";
    if (this.#rxQueuedBytes + n > this.#bufAlloc) {
      return this.#violate(
        `${n} bytes beyond the credit (${
          this.#bufAlloc - this.#rxQueuedBytes
        } bytes left)`,
      );
    }
    if (this.#readCancelled || this.#readableDone) {
      // Nobody reads any more: drop it but give the credit back.
      this.#consumed(n);
      return "ok";
    }
    this.#enqueue(payload);
    this.#rxQueuedBytes += n;
    if (this.#pullWaiter !== undefined) this.#deliver();
    return "ok";
  }

  #enqueue(payload: Uint8Array): void {
    const q = this.#rxQueue;
    if (payload.length >= COALESCE_BELOW_BYTES) {
      this.#coalesce = undefined;
      q.push(payload);
      return;
    }
    // Small payloads share a buffer so that a guest sending one byte per
    // packet cannot make us hold one allocation per byte.
    const buf = this.#coalesce;
    const last = q[q.length - 1];
    if (buf !== undefined && last !== undefined && last.buffer === buf.buffer) {
      const start = last.byteOffset - buf.byteOffset;
      const end = start + last.length;
      if (end + payload.length <= buf.length) {
        buf.set(payload, end);
        q[q.length - 1] = buf.subarray(start, end + payload.length);
        return;
      }
    }
    const fresh = new Uint8Array(COALESCE_BUFFER_BYTES);
    fresh.set(payload);
    this.#coalesce = fresh;
    q.push(fresh.subarray(0, payload.length));
  }

  #receiveShutdown(flags: number): void {
    const fresh = flags & VSOCK_SHUTDOWN_BOTH & ~this.#peerShutdown;
    this.#peerShutdown |= fresh;
    if (fresh & VSOCK_SHUTDOWN_SEND) {
      this.#rxEnd ??= { kind: "eof" };
      if (this.#rxQueue.length === 0) this.#finishReadable();
    }
    if (fresh & VSOCK_SHUTDOWN_RCV) {
      // The guest reads no more: what the host still wants to send is lost.
      this.#shutdownPending &= ~VSOCK_SHUTDOWN_SEND;
      if (this.#hostSendClosed && this.#sending === undefined) {
        this.#resolveCloseWaiter();
      } else {
        this.#failWrites(
          new Error(
            `Cannot write to vsock connection (host port ${this.localPort}, guest port ${this.peerPort}): the guest shut down its receive side`,
          ),
        );
      }
    }
    this.#checkFullClose();
  }

  #receiveRst(): void {
    if (this.#state === "connecting") {
      this.#wantRequest = false;
      this.#end({
        error: new Error(
          `Cannot connect to vsock port ${this.peerPort} of the guest: connection refused (RST)`,
        ),
        rst: false,
        discard: true,
      });
      return;
    }
    const orderly = (this.#peerShutdown & VSOCK_SHUTDOWN_SEND) !== 0;
    this.#end({
      error: new Error(
        `Cannot use vsock connection (host port ${this.localPort}, guest port ${this.peerPort}): reset by the guest`,
      ),
      rst: false,
      discard: false,
      readEof: orderly,
    });
  }

  #violate(detail: string): ReceiveOutcome {
    this.#end({
      error: new Error(
        `Cannot use vsock connection (host port ${this.localPort}, guest port ${this.peerPort}): the guest broke the protocol (${detail})`,
      ),
      rst: true,
      discard: false,
    });
    return "protocol-error";
  }

  /** Both directions done: finish with RST as Linux expects after SHUTDOWN. */
  #checkFullClose(): void {
    if (this.#state !== "established") return;
    const inDone = (this.#peerShutdown & VSOCK_SHUTDOWN_SEND) ||
      (this.#shutdownSent & VSOCK_SHUTDOWN_RCV);
    const outDone = (this.#peerShutdown & VSOCK_SHUTDOWN_RCV) ||
      (this.#shutdownSent & VSOCK_SHUTDOWN_SEND);
    if (!inDone || !outDone) return;
    this.#state = "closing";
    this.#wantRst = true;
    this.#resolveClosed();
    this.#changed();
  }

  /**
   * Ends the connection. `discard` drops buffered guest data and errors the
   * readable now; otherwise the host reads what is buffered first and then
   * sees `error` (or the end of the stream with `readEof`).
   */
  #end(options: {
    error: unknown;
    rst: boolean;
    discard: boolean;
    readEof?: boolean;
  }): void {
    const state = this.#state;
    if (state === "closing" || state === "closed") {
      if (options.discard && !options.rst) {
        // Device gone: our pending RST will never be sent.
        this.#wantRst = false;
        this.#discardRx(options.error);
        this.#setClosed();
        this.#changed();
      }
      return;
    }
    this.#clearTimer();
    if (state === "connecting") this.#rejectEstablished(options.error);
    if (options.discard) {
      this.#discardRx(options.error);
    } else {
      this.#rxEnd ??= options.readEof
        ? { kind: "eof" }
        : { kind: "error", error: options.error };
      if (this.#rxQueue.length === 0) this.#finishReadable();
    }
    const delivered = this.#hostSendClosed && this.#sending === undefined &&
      (this.#shutdownSent & VSOCK_SHUTDOWN_SEND) !== 0;
    if (!delivered) this.#failWrites(options.error);
    this.#wantRequest = this.#wantResponse = this.#wantCreditUpdate = false;
    this.#shutdownPending = 0;
    if (options.rst) {
      this.#state = "closing";
      this.#wantRst = true;
      this.#resolveClosed();
    } else {
      this.#setClosed();
    }
    this.#changed();
  }

  #setClosed(): void {
    this.#state = "closed";
    this.#clearTimer();
    this.#resolveClosed();
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #changed(): void {
    this.#onChange(this);
  }

  // ---- readable side ----

  #pull(): Promise<void> | void {
    if (this.#rxQueue.length > 0) return this.#deliver();
    if (this.#rxEnd !== undefined) return this.#finishReadable();
    return new Promise((resolve) => this.#pullWaiter = resolve);
  }

  /** Hands the first queued chunk (or part of it) to the pending read. */
  #deliver(): void {
    const head = this.#rxQueue[0];
    if (head === undefined || this.#readableDone) return;
    const c = this.#rc;
    const request = c.byobRequest;
    let n: number;
    if (request?.view) {
      const v = request.view;
      const view = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      n = Math.min(view.length, head.length);
      view.set(n === head.length ? head : head.subarray(0, n));
      if (n === head.length) this.#rxQueue.shift();
      else this.#rxQueue[0] = head.subarray(n);
      request.respond(n);
    } else {
      this.#rxQueue.shift();
      n = head.length;
      // enqueue() transfers the chunk's ArrayBuffer: only do that when the
      // chunk is alone in a buffer of ours, else hand over a copy.
      const own = head.buffer === this.#coalesce?.buffer
        ? (this.#coalesce = undefined, true)
        : head.buffer instanceof ArrayBuffer &&
          head.buffer.byteLength <= head.length + COALESCE_BELOW_BYTES;
      c.enqueue(own ? head : head.slice());
    }
    this.#rxQueuedBytes -= n;
    this.#consumed(n);
    this.#wakePull();
    if (this.#rxQueue.length === 0 && this.#rxEnd !== undefined) {
      this.#finishReadable();
    }
  }

  #wakePull(): void {
    const w = this.#pullWaiter;
    this.#pullWaiter = undefined;
    w?.();
  }

  #consumed(n: number): void {
    this.#fwdCnt = (this.#fwdCnt + n) >>> 0;
    const unheard = (this.#fwdCnt - this.#lastSentFwdCnt) >>> 0;
    if (
      unheard >= CREDIT_UPDATE_THRESHOLD_BYTES &&
      this.#state === "established" &&
      !this.#wantCreditUpdate
    ) {
      this.#wantCreditUpdate = true;
      this.#changed();
    }
  }

  #finishReadable(): void {
    if (this.#readableDone) return;
    this.#readableDone = true;
    const end = this.#rxEnd ?? { kind: "eof" };
    try {
      if (end.kind === "error") {
        this.#rc.error(end.error);
      } else {
        this.#rc.close();
        // A pending BYOB read is only answered by respond(0) after close().
        this.#rc.byobRequest?.respond(0);
      }
    } catch {
      // Already cancelled by the reader.
    }
    this.#wakePull();
  }

  #discardRx(error: unknown): void {
    this.#rxQueue = [];
    this.#rxQueuedBytes = 0;
    this.#coalesce = undefined;
    this.#rxEnd = { kind: "error", error };
    if (!this.#readableDone) {
      this.#readableDone = true;
      try {
        this.#rc.error(error);
      } catch {
        // Already cancelled by the reader.
      }
    }
    this.#wakePull();
  }

  #cancelRead(): void {
    this.#readCancelled = true;
    this.#readableDone = true;
    const n = this.#rxQueuedBytes;
    this.#rxQueue = [];
    this.#rxQueuedBytes = 0;
    this.#coalesce = undefined;
    this.#wakePull();
    if (this.#state !== "established") return;
    this.#consumed(n);
    if (!(this.#peerShutdown & VSOCK_SHUTDOWN_SEND)) {
      this.#shutdownPending |= VSOCK_SHUTDOWN_RCV;
    }
    this.#checkFullClose();
    this.#changed();
  }

  // ---- writable side ----

  #write(chunk: Uint8Array): Promise<void> | void {
    if (this.#writeFailed) throw this.#writeError;
    if (!(chunk instanceof Uint8Array)) {
      throw new TypeError(
        `Cannot write to vsock connection (host port ${this.localPort}, guest port ${this.peerPort}): chunk is not a Uint8Array`,
      );
    }
    if (chunk.length === 0) return;
    return new Promise((resolve, reject) => {
      this.#sending = { bytes: chunk, offset: 0, resolve, reject };
      this.#changed();
    });
  }

  #closeWrite(): Promise<void> | void {
    if (this.#writeFailed) throw this.#writeError;
    this.#hostSendClosed = true;
    if (this.#peerShutdown & VSOCK_SHUTDOWN_RCV) return;
    return new Promise((resolve, reject) => {
      this.#closeWaiter = { resolve, reject };
      this.#shutdownPending |= VSOCK_SHUTDOWN_SEND;
      this.#changed();
    });
  }

  #resolveCloseWaiter(): void {
    const w = this.#closeWaiter;
    this.#closeWaiter = undefined;
    w?.resolve();
  }

  #failWrites(error: unknown): void {
    if (this.#writeFailed) return;
    this.#writeFailed = true;
    this.#writeError = error;
    const w = this.#sending;
    this.#sending = undefined;
    w?.reject(error);
    const c = this.#closeWaiter;
    this.#closeWaiter = undefined;
    c?.reject(error);
    if (this.#writableAborted) return;
    try {
      this.#wc.error(error);
    } catch {
      // Already closed or errored.
    }
  }
}

const EMPTY = new Uint8Array(0);
