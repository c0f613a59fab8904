/**
 * The virtio socket device, vsock (virtio 1.2 §5.10): stream connections
 * between the guest (Linux's `vmw_vsock_virtio_transport`) and host code on
 * Deno's event loop.
 *
 * Primer: every packet is a 44-byte `struct virtio_vsock_hdr` (see
 * `packet.ts`) and, for RW, a payload. The guest's packets arrive on the tx
 * queue (1) as device-readable chains, which go back with length 0; ours go
 * into the device-writable chains the guest keeps on the rx queue (0) — a
 * 44-byte header buffer plus a 4 KiB data buffer each on Linux 6.1, one
 * buffer on newer kernels — and go back with the bytes written. The event
 * queue (2) only carries transport-reset events, which this device never
 * sends. A connection is named by (host port, guest port); the guest is CID
 * `guest_cid` (config space, le64 at offset 0), the host CID 2.
 *
 * A connection opens with REQUEST and RESPONSE (or RST: refused), carries
 * RW data under credit-based flow control — each side advertises its
 * buffer (`buf_alloc`) and how much of it its reader consumed (`fwd_cnt`),
 * and the sender never has more in flight than that leaves room for —
 * half-closes with SHUTDOWN (flags RCV, SEND) and ends with RST. The
 * per-connection logic is in `connection.ts`.
 *
 * Neither side may hold the other hostage (virtio 1.2 §5.10.6.1): our
 * control packets wait for rx buffers in bounded form (flags per
 * connection, a bounded queue of RST replies; beyond it the tx queue is not
 * read until the guest gives rx buffers), data waits in the host writer's
 * stream, and the guest can never make us buffer more than `buf_alloc` per
 * connection, for at most {@link MAX_CONNECTIONS} connections.
 *
 * @module
 */

import {
  VIRTIO_ID_VSOCK,
  type VirtioContext,
  type VirtioDevice,
} from "../device.ts";
import {
  type DescriptorChain,
  type Virtqueue,
  VirtqueueError,
} from "../queue.ts";
import {
  CONNECT_TIMEOUT_MS,
  type ConnectionState,
  StreamConnection,
  type VsockConnection,
} from "./connection.ts";
import {
  decodeHeader,
  encodeHeader,
  headerProblem,
  isKnownOp,
  MAX_PACKET_PAYLOAD_BYTES,
  VSOCK_CONFIG_BYTES,
  VSOCK_DEFAULT_GUEST_CID,
  VSOCK_HDR_BYTES,
  VSOCK_HOST_CID,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_TYPE_STREAM,
  type VsockHeader,
} from "./packet.ts";

export { CONNECT_TIMEOUT_MS };
export type { ConnectionState, VsockConnection };

// ---- defs ----

/** Index of the rx queue (device to driver packets). */
export const VSOCK_RX_QUEUE = 0;
/** Index of the tx queue (driver to device packets). */
export const VSOCK_TX_QUEUE = 1;
/** Index of the event queue (transport reset events; never used here). */
export const VSOCK_EVENT_QUEUE = 2;
/** Maximum size of each of the three queues, in descriptors. */
export const VSOCK_QUEUE_SIZE = 256;
/** Connections the device holds at most; further REQUESTs are answered RST. */
export const MAX_CONNECTIONS = 1024;
/** Connections per listener that wait for `accept()`; further REQUESTs get RST. */
export const LISTEN_BACKLOG = 64;
/** RST replies to packets without a connection that wait for rx buffers, at most. */
export const MAX_PENDING_REPLIES = 256;
/** First host port of host-initiated connections (the IANA dynamic range). */
export const EPHEMERAL_PORT_FIRST = 49152;
/** Largest vsock port; 0xffffffff is `VMADDR_PORT_ANY`. */
const PORT_MAX = 0xfffffffe;
/** Chains handled per queue in one turn of the event loop before yielding. */
const CHAINS_PER_TURN = 256;

/** Options of {@link VirtioVsock}. */
export interface VirtioVsockOptions {
  /** The guest's CID, 3 to 0xfffffffe. Default 3. */
  guestCid?: bigint;
}

/** Options of {@link VirtioVsock.connect}. */
export interface VsockConnectOptions {
  /** How long to wait for the guest's RESPONSE, in ms. Default {@link CONNECT_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/**
 * A host port that takes the guest's connections.
 *
 * @example
 * ```ts
 * import { VirtioVsock } from "./device.ts";
 * const vsock = new VirtioVsock();
 * const listener = vsock.listen(9998);
 * listener.close();
 * console.assert(await listener.accept() === null);
 * ```
 */
export interface VsockListener {
  /** The host port. */
  readonly port: number;
  /**
   * The next connection the guest opened (already answered RESPONSE), or
   * null once the listener is closed or the device terminated.
   */
  accept(): Promise<VsockConnection | null>;
  /** Stops listening; connections not yet accepted are reset. */
  close(): void;
}

/** Counters for tests and diagnostics. */
export interface VsockStats {
  /** Chains taken from the tx queue. */
  packetsFromGuest: number;
  /** Packets put into rx buffers. */
  packetsToGuest: number;
  /** Unusable packets: short header, lying length, unknown op, foreign source CID, tiny rx buffers. */
  malformedPackets: number;
  /** Well-formed packets that had nowhere to go (no connection, not a stream, not for the host). */
  droppedPackets: number;
  /** Connections reset because the guest broke the protocol (e.g. data beyond credit). */
  protocolErrors: number;
  /** RST packets sent. */
  resetsSent: number;
  /** Connections the device holds. */
  connections: number;
  /** Guest bytes buffered for host readers, over all connections. */
  bufferedBytes: number;
  /** RST replies waiting for rx buffers. */
  pendingReplies: number;
}

/** Addressing of an RST reply to a packet no connection took. */
interface Reply {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  type: number;
}

/**
 * The vsock device model. Host code listens and connects through it; the
 * transport drives it with {@link VirtioVsock.notify}.
 *
 * @example
 * ```ts
 * import { VirtioVsock } from "./device.ts";
 * const vsock = new VirtioVsock({ guestCid: 3n });
 * const listener = vsock.listen(9998);
 * // Hand `vsock` to a VirtioMmioTransport; then, once the guest connects:
 * // const conn = await listener.accept();
 * // await conn?.readable.pipeTo(conn.writable);
 * listener.close();
 * vsock.terminate(new Error("Cannot use vsock: the VM stopped"));
 * ```
 */
export class VirtioVsock implements VirtioDevice {
  /** Virtio device ID 19. */
  readonly deviceId: number = VIRTIO_ID_VSOCK;
  /** No device-specific features (stream sockets only). */
  readonly features: bigint = 0n;
  /** rx, tx, event. */
  readonly queueMaxSizes: readonly number[] = [
    VSOCK_QUEUE_SIZE,
    VSOCK_QUEUE_SIZE,
    VSOCK_QUEUE_SIZE,
  ];

  #guestCid: bigint;
  #context: VirtioContext | undefined;
  #connections = new Map<string, StreamConnection>();
  #localPortUse = new Map<number, number>();
  #listeners = new Map<number, Listener>();
  #nextPort = EPHEMERAL_PORT_FIRST;
  #replies: Reply[] = [];
  #wantControl = new Set<StreamConnection>();
  #wantData = new Set<StreamConnection>();
  /** Popped rx chains with room for a header only: kept for control packets. */
  #headerOnlyRx: DescriptorChain[] = [];
  #pumpScheduled = false;
  #txPaused = false;
  #later: ReturnType<typeof setTimeout> | undefined;
  #failReason: string | undefined;
  #terminated = false;
  #header = new Uint8Array(VSOCK_HDR_BYTES);
  #stats = {
    packetsFromGuest: 0,
    packetsToGuest: 0,
    malformedPackets: 0,
    droppedPackets: 0,
    protocolErrors: 0,
    resetsSent: 0,
  };

  /** Creates the device; throws a RangeError on a reserved guest CID. */
  constructor(options: VirtioVsockOptions = {}) {
    const cid = options.guestCid ?? VSOCK_DEFAULT_GUEST_CID;
    // CIDs 0-2 and 0xffffffff are reserved; the upper 32 bits are zero
    // (virtio 1.2 §5.10.4).
    if (typeof cid !== "bigint" || cid < 3n || cid >= 0xffffffffn) {
      throw new RangeError(
        `Cannot create vsock device: guest CID ${cid} is reserved or above 32 bits`,
      );
    }
    this.#guestCid = cid;
  }

  /** The guest's CID. */
  get guestCid(): bigint {
    return this.#guestCid;
  }

  /** Counters and sizes, a snapshot. */
  get stats(): VsockStats {
    let bufferedBytes = 0;
    for (const c of this.#connections.values()) {
      bufferedBytes += c.bufferedBytes;
    }
    return {
      ...this.#stats,
      connections: this.#connections.size,
      bufferedBytes,
      pendingReplies: this.#replies.length,
    };
  }

  // ---- host API ----

  /**
   * Listens on host port `port` for the guest's connections; throws if the
   * port already has a listener or the device was terminated.
   *
   * @example
   * ```ts
   * import { VirtioVsock } from "./device.ts";
   * const listener = new VirtioVsock().listen(1234);
   * listener.close();
   * ```
   */
  listen(port: number): VsockListener {
    checkPort(port, "listen on");
    if (this.#terminated) {
      throw new Error(
        `Cannot listen on vsock port ${port}: the vsock device was terminated`,
      );
    }
    if (this.#listeners.has(port)) {
      throw new Error(
        `Cannot listen on vsock port ${port}: the port already has a listener`,
      );
    }
    const listener = new Listener(port, () => {
      if (this.#listeners.get(port) === listener) this.#listeners.delete(port);
    });
    this.#listeners.set(port, listener);
    return listener;
  }

  /**
   * Opens a connection to port `port` of the guest from a host port of
   * 49152 or above. Rejects when the guest answers RST (nothing listens),
   * does not answer within `timeoutMs`, or the device resets or terminates.
   *
   * @example
   * ```ts
   * import { VirtioVsock } from "./device.ts";
   * const vsock = new VirtioVsock();
   * const pending = vsock.connect(5000, { timeoutMs: 10 });
   * await pending.catch((e) => console.log(e.message)); // no answer within 10 ms
   * ```
   */
  async connect(
    port: number,
    options: VsockConnectOptions = {},
  ): Promise<VsockConnection> {
    checkPort(port, "connect to");
    if (this.#terminated) {
      throw new Error(
        `Cannot connect to vsock port ${port} of the guest: the vsock device was terminated`,
      );
    }
    if (this.#connections.size >= MAX_CONNECTIONS) {
      throw new Error(
        `Cannot connect to vsock port ${port} of the guest: ${MAX_CONNECTIONS} connections are open`,
      );
    }
    const timeoutMs = options.timeoutMs;
    if (
      timeoutMs !== undefined && (!Number.isFinite(timeoutMs) || timeoutMs < 0)
    ) {
      throw new RangeError(
        `Cannot connect to vsock port ${port} of the guest: timeout ${timeoutMs} ms is not a non-negative number`,
      );
    }
    const conn = new StreamConnection({
      localPort: this.#allocatePort(),
      peerPort: port,
      initiator: "host",
      connectTimeoutMs: timeoutMs,
      onChange: (c) => this.#refresh(c),
    });
    this.#add(conn);
    await conn.established;
    return conn;
  }

  /**
   * Ends the device for good (the VM stopped): every connection's readable
   * errors and writable rejects with `reason` (a string becomes an Error),
   * pending connects reject, `accept()` returns null, and later `listen()`
   * and `connect()` fail. The device no longer touches guest memory.
   *
   * @example
   * ```ts
   * import { VirtioVsock } from "./device.ts";
   * const vsock = new VirtioVsock();
   * vsock.terminate("Cannot use vsock: the VM stopped");
   * ```
   */
  terminate(reason: unknown): void {
    if (this.#terminated) return;
    this.#terminated = true;
    const error = typeof reason === "string" ? new Error(reason) : reason;
    this.#dropAll(error);
    for (const listener of [...this.#listeners.values()]) listener.close();
    this.#listeners.clear();
    this.#context = undefined;
  }

  // ---- VirtioDevice ----

  /** Reads config space: `guest_cid` (le64) at offset 0, zeros after. */
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at >= 0 && at < VSOCK_CONFIG_BYTES
        ? Number((this.#guestCid >> BigInt(8 * at)) & 0xffn)
        : 0;
    }
  }

  /** Ignores writes: `guest_cid` is read-only. */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  /** The driver set DRIVER_OK: starts sending what waits (e.g. REQUESTs). */
  activate(context: VirtioContext): void {
    if (this.#terminated) return;
    if (context.queues.length < 3) {
      context.fail(
        `Cannot start the vsock device: ${context.queues.length} queues, 3 needed`,
      );
      return;
    }
    this.#context = context;
    this.#schedulePump();
  }

  /** The driver notified a queue: tx packets to read, or rx buffers to fill. */
  notify(index: number): void {
    if (this.#context === undefined) return;
    if (index === VSOCK_TX_QUEUE) this.#guard(() => this.#processTx());
    else if (index === VSOCK_RX_QUEUE) this.#guard(() => this.#pump());
    // The event queue's buffers stay with the device: no event is ever sent.
  }

  /**
   * The driver reset the device (or the transport did after a failure):
   * every connection ends with an error, listeners stay.
   */
  reset(): void {
    const reason = this.#failReason ??
      "Cannot use vsock connection: the guest reset the vsock device";
    this.#failReason = undefined;
    this.#dropAll(new Error(reason));
    this.#context = undefined;
  }

  // ---- connections ----

  #add(conn: StreamConnection): void {
    this.#connections.set(key(conn.localPort, conn.peerPort), conn);
    this.#localPortUse.set(
      conn.localPort,
      (this.#localPortUse.get(conn.localPort) ?? 0) + 1,
    );
    this.#refresh(conn);
  }

  /** Files `conn` under what it has to send, or forgets it once closed. */
  #refresh(conn: StreamConnection): void {
    const k = key(conn.localPort, conn.peerPort);
    if (this.#connections.get(k) !== conn) return;
    if (conn.state === "closed") {
      this.#connections.delete(k);
      this.#wantControl.delete(conn);
      this.#wantData.delete(conn);
      const use = (this.#localPortUse.get(conn.localPort) ?? 1) - 1;
      if (use > 0) this.#localPortUse.set(conn.localPort, use);
      else this.#localPortUse.delete(conn.localPort);
      return;
    }
    if (conn.hasControl()) this.#wantControl.add(conn);
    else this.#wantControl.delete(conn);
    if (conn.hasData()) this.#wantData.add(conn);
    else this.#wantData.delete(conn);
    if (this.#wantControl.size > 0 || this.#wantData.size > 0) {
      this.#schedulePump();
    }
  }

  #allocatePort(): number {
    // At most this many ports are taken, so the loop finds a free one.
    const taken = this.#localPortUse.size + this.#listeners.size;
    for (let i = 0; i <= taken; i++) {
      const port = this.#nextPort;
      this.#nextPort = port >= PORT_MAX ? EPHEMERAL_PORT_FIRST : port + 1;
      if (!this.#listeners.has(port) && !this.#localPortUse.has(port)) {
        return port;
      }
    }
    throw new Error("Cannot allocate a vsock port: every port is in use");
  }

  #dropAll(error: unknown): void {
    if (this.#later !== undefined) clearTimeout(this.#later);
    this.#later = undefined;
    this.#replies = [];
    this.#headerOnlyRx = [];
    this.#txPaused = false;
    const all = [...this.#connections.values()];
    this.#connections.clear();
    this.#localPortUse.clear();
    this.#wantControl.clear();
    this.#wantData.clear();
    for (const conn of all) conn.abort(error);
    for (const listener of this.#listeners.values()) listener.dropPending();
  }

  // ---- guest -> host (tx queue) ----

  #processTx(): void {
    const context = this.#context;
    const queue = context?.queues[VSOCK_TX_QUEUE];
    if (context === undefined || queue === undefined || !queue.ready) return;
    let handled = 0;
    for (;;) {
      if (this.#replies.length >= MAX_PENDING_REPLIES) {
        // Our replies cannot go out: stop reading until the guest gives rx
        // buffers (virtio 1.2 §5.10.6.1).
        this.#txPaused = true;
        break;
      }
      if (handled === CHAINS_PER_TURN) {
        this.#continueLater();
        break;
      }
      const chain = queue.pop();
      if (chain === undefined) break;
      this.#handleTxChain(queue, chain);
      queue.pushUsed(chain.head, 0);
      handled++;
    }
    if (handled > 0) context.signalUsed(queue);
    this.#pump();
  }

  #handleTxChain(queue: Virtqueue, chain: DescriptorChain): void {
    this.#stats.packetsFromGuest++;
    const header = decodeHeader(queue.readAll(chain, VSOCK_HDR_BYTES));
    if (header === undefined) {
      this.#stats.malformedPackets++;
      return;
    }
    const problem = headerProblem(
      header,
      chain.readableLength - VSOCK_HDR_BYTES,
    );
    if (problem !== undefined) {
      this.#stats.malformedPackets++;
      this.#rejectMalformed(header, problem);
      return;
    }
    // Only RW payloads matter; read exactly `len` bytes into a new buffer
    // that the connection may keep.
    const payload = header.op === VSOCK_OP_RW && header.len > 0
      ? queue.readAll(chain, VSOCK_HDR_BYTES + header.len).subarray(
        VSOCK_HDR_BYTES,
      )
      : EMPTY;
    this.#handlePacket(header, payload);
  }

  #rejectMalformed(header: VsockHeader, problem: string): void {
    if (header.srcCid !== this.#guestCid) return;
    const conn = header.dstCid === VSOCK_HOST_CID
      ? this.#connections.get(key(header.dstPort, header.srcPort))
      : undefined;
    if (conn !== undefined) {
      this.#stats.protocolErrors++;
      conn.protocolError(`${problem}: len ${header.len}`);
      this.#refresh(conn);
    } else if (header.op !== VSOCK_OP_RST) {
      this.#queueReply(header);
    }
  }

  #handlePacket(header: VsockHeader, payload: Uint8Array): void {
    if (header.srcCid !== this.#guestCid) {
      // Not from the guest's address: nothing sensible to answer.
      this.#stats.malformedPackets++;
      return;
    }
    if (header.dstCid !== VSOCK_HOST_CID || header.type !== VSOCK_TYPE_STREAM) {
      // Another CID, or SEQPACKET (not offered): refuse, as Linux does.
      this.#stats.droppedPackets++;
      if (header.op !== VSOCK_OP_RST) this.#queueReply(header);
      return;
    }
    const conn = this.#connections.get(key(header.dstPort, header.srcPort));
    if (conn !== undefined) {
      if (!isKnownOp(header.op)) {
        this.#stats.malformedPackets++;
        return;
      }
      const outcome = conn.receive(header, payload);
      if (outcome === "protocol-error") this.#stats.protocolErrors++;
      else if (outcome === "ignored") this.#stats.droppedPackets++;
      this.#refresh(conn);
      return;
    }
    if (header.op === VSOCK_OP_REQUEST) return this.#incoming(header);
    if (isKnownOp(header.op)) this.#stats.droppedPackets++;
    else this.#stats.malformedPackets++;
    if (header.op !== VSOCK_OP_RST) this.#queueReply(header);
  }

  /** A REQUEST for a new connection: RESPONSE if a listener takes it, else RST. */
  #incoming(header: VsockHeader): void {
    const listener = this.#listeners.get(header.dstPort);
    if (
      listener === undefined || listener.pending >= LISTEN_BACKLOG ||
      this.#connections.size >= MAX_CONNECTIONS
    ) {
      this.#queueReply(header);
      return;
    }
    const conn = new StreamConnection({
      localPort: header.dstPort,
      peerPort: header.srcPort,
      initiator: "guest",
      peerCredit: { bufAlloc: header.bufAlloc, fwdCnt: header.fwdCnt },
      onChange: (c) => this.#refresh(c),
    });
    this.#add(conn);
    listener.offer(conn);
  }

  #queueReply(header: VsockHeader): void {
    if (this.#replies.length >= MAX_PENDING_REPLIES) {
      // Unreachable while tx processing pauses at the limit; kept as a bound.
      this.#stats.droppedPackets++;
      return;
    }
    this.#replies.push({
      srcCid: header.dstCid,
      dstCid: header.srcCid,
      srcPort: header.dstPort,
      dstPort: header.srcPort,
      type: header.type,
    });
    this.#schedulePump();
  }

  // ---- host -> guest (rx queue) ----

  #schedulePump(): void {
    if (this.#pumpScheduled || this.#context === undefined) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      this.#guard(() => this.#pump());
    });
  }

  /** Fills rx buffers: control packets first, then data round-robin. */
  #pump(): void {
    const context = this.#context;
    const queue = context?.queues[VSOCK_RX_QUEUE];
    if (context === undefined || queue === undefined || !queue.ready) return;
    let budget = CHAINS_PER_TURN;
    let used = 0;
    const pop = (forData: boolean): DescriptorChain | undefined => {
      while (budget > 0) {
        budget--;
        const chain = queue.pop();
        if (chain === undefined) return undefined;
        if (chain.writableLength < VSOCK_HDR_BYTES) {
          // No room even for a header: give it back empty (Linux drops it).
          this.#stats.malformedPackets++;
          queue.pushUsed(chain.head, 0);
          used++;
          continue;
        }
        if (forData && chain.writableLength === VSOCK_HDR_BYTES) {
          this.#headerOnlyRx.push(chain);
          continue;
        }
        return chain;
      }
      return undefined;
    };
    for (;;) {
      const reply = this.#replies[0];
      const control = reply === undefined
        ? first(this.#wantControl)
        : undefined;
      if (reply !== undefined || control !== undefined) {
        if (control !== undefined && !control.hasControl()) {
          this.#wantControl.delete(control);
          continue;
        }
        const chain = this.#headerOnlyRx.pop() ?? pop(false);
        if (chain === undefined) break;
        if (reply !== undefined) {
          this.#replies.shift();
          const rst = {
            ...reply,
            op: VSOCK_OP_RST,
            flags: 0,
            bufAlloc: 0,
            fwdCnt: 0,
          };
          this.#write(queue, chain, rst, EMPTY);
        } else {
          const packet = control!.takeControl()!;
          this.#write(queue, chain, this.#connHeader(control!, packet), EMPTY);
          this.#refresh(control!);
        }
        used++;
        continue;
      }
      const conn = first(this.#wantData);
      if (conn === undefined) break;
      if (!conn.hasData()) {
        this.#wantData.delete(conn);
        continue;
      }
      const chain = pop(true);
      if (chain === undefined) break;
      const room = Math.min(
        chain.writableLength - VSOCK_HDR_BYTES,
        MAX_PACKET_PAYLOAD_BYTES,
      );
      const packet = conn.takeData(room)!;
      this.#write(queue, chain, this.#connHeader(conn, packet), packet.payload);
      used++;
      // To the back of the line: connections take turns.
      this.#wantData.delete(conn);
      this.#refresh(conn);
    }
    if (used > 0) context.signalUsed(queue);
    if (budget === 0) this.#continueLater();
    if (this.#txPaused && this.#replies.length < MAX_PENDING_REPLIES) {
      this.#txPaused = false;
      this.#continueLater();
    }
  }

  #connHeader(
    conn: StreamConnection,
    packet: { op: number; flags: number; bufAlloc: number; fwdCnt: number },
  ): Omit<VsockHeader, "len"> {
    return {
      srcCid: VSOCK_HOST_CID,
      dstCid: this.#guestCid,
      srcPort: conn.localPort,
      dstPort: conn.peerPort,
      type: VSOCK_TYPE_STREAM,
      op: packet.op,
      flags: packet.flags,
      bufAlloc: packet.bufAlloc,
      fwdCnt: packet.fwdCnt,
    };
  }

  /** Writes header then payload across the chain's writable buffers. */
  #write(
    queue: Virtqueue,
    chain: DescriptorChain,
    header: Omit<VsockHeader, "len">,
    payload: Uint8Array,
  ): void {
    const bytes = encodeHeader(
      { ...header, len: payload.length },
      this.#header,
    );
    let n = queue.write(chain, bytes, 0);
    if (payload.length > 0) n += queue.write(chain, payload, VSOCK_HDR_BYTES);
    queue.pushUsed(chain.head, n);
    this.#stats.packetsToGuest++;
    if (header.op === VSOCK_OP_RST) this.#stats.resetsSent++;
  }

  /** Runs the queues again on a later turn of the event loop. */
  #continueLater(): void {
    if (this.#later !== undefined || this.#context === undefined) return;
    this.#later = setTimeout(() => {
      this.#later = undefined;
      this.#guard(() => this.#processTx());
    }, 0);
  }

  /** Runs device work outside notify(): a failure fails the device, never throws. */
  #guard(work: () => void): void {
    try {
      work();
    } catch (e) {
      const context = this.#context;
      const reason = e instanceof VirtqueueError
        ? e.message
        : `Cannot run the vsock device: ${
          e instanceof Error ? e.message : String(e)
        }`;
      if (context === undefined) return;
      this.#failReason = reason;
      context.fail(reason);
      // The transport resets the device inside fail(); make sure of it.
      if (this.#context !== undefined) this.reset();
    }
  }
}

/** A listening port; see {@link VsockListener}. */
class Listener implements VsockListener {
  readonly port: number;
  #backlog: StreamConnection[] = [];
  #waiters: ((c: VsockConnection | null) => void)[] = [];
  #closed = false;
  #onClose: () => void;

  constructor(port: number, onClose: () => void) {
    this.port = port;
    this.#onClose = onClose;
  }

  /** Connections waiting for accept(). */
  get pending(): number {
    return this.#backlog.length;
  }

  accept(): Promise<VsockConnection | null> {
    const next = this.#backlog.shift();
    if (next !== undefined) return Promise.resolve(next);
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  offer(conn: StreamConnection): void {
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter(conn);
    else this.#backlog.push(conn);
  }

  /** Forgets waiting connections (the device dropped them). */
  dropPending(): void {
    this.#backlog = [];
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#onClose();
    for (const conn of this.#backlog) conn.close();
    this.#backlog = [];
    for (const waiter of this.#waiters) waiter(null);
    this.#waiters = [];
  }
}

function key(localPort: number, peerPort: number): string {
  return `${localPort}:${peerPort}`;
}

function first<T>(set: Set<T>): T | undefined {
  for (const v of set) return v;
  return undefined;
}

function checkPort(port: number, action: string): void {
  if (!Number.isInteger(port) || port < 0 || port > PORT_MAX) {
    throw new RangeError(
      `Cannot ${action} vsock port ${port}: not an integer from 0 to ${PORT_MAX}`,
    );
  }
}

const EMPTY = new Uint8Array(0);
