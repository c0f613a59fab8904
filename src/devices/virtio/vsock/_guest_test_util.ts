/**
 * A guest-side vsock driver for tests, written to behave like Linux 6.1's
 * `vmw_vsock_virtio_transport` over a {@linkcode VirtioTestDriver}: it keeps
 * rx buffers posted (a 44-byte header buffer plus a 4 KiB data buffer each,
 * or any other layout), sends packets as header and payload descriptors,
 * keeps per-socket credit like `virtio_transport_common.c`, answers REQUESTs
 * for its listening ports, and records every packet the device sent and
 * every rule the device broke (e.g. data beyond the guest's credit).
 *
 * @example
 * ```ts
 * import { VirtioVsock } from "./device.ts";
 * import { LinuxLikeGuest } from "./_guest_test_util.ts";
 * const vsock = new VirtioVsock();
 * const listener = vsock.listen(9998);
 * const guest = new LinuxLikeGuest(vsock);
 * guest.start();
 * const socket = guest.connect(9998);
 * await guest.runUntil(() => socket.state === "established", "RESPONSE");
 * const conn = await listener.accept();
 * vsock.terminate("done");
 * ```
 *
 * @module
 */

import { VirtioTestDriver } from "../_driver_test_util.ts";
import {
  encodeHeader,
  MAX_PACKET_PAYLOAD_BYTES,
  opName,
  parsePacket,
  VSOCK_HDR_BYTES,
  VSOCK_HOST_CID,
  VSOCK_OP_CREDIT_REQUEST,
  VSOCK_OP_CREDIT_UPDATE,
  VSOCK_OP_REQUEST,
  VSOCK_OP_RESPONSE,
  VSOCK_OP_RST,
  VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN,
  VSOCK_SHUTDOWN_BOTH,
  VSOCK_TYPE_STREAM,
  type VsockHeader,
} from "./packet.ts";
import {
  type VirtioVsock,
  VSOCK_EVENT_QUEUE,
  VSOCK_RX_QUEUE,
  VSOCK_TX_QUEUE,
} from "./device.ts";
import { concat } from "../../../../tests/_util.ts";

/** Linux's default per-socket buffer (`VIRTIO_VSOCK_DEFAULT_BUF_SIZE`), in bytes. */
export const GUEST_BUF_ALLOC_BYTES = 256 * 1024;
/** Linux 6.1's rx buffer: a 44-byte header buffer and a 4 KiB data buffer. */
export const LINUX_61_RX_LAYOUT: readonly number[] = [VSOCK_HDR_BYTES, 4096];
/** Newer kernels' rx buffer: header and data in one buffer. */
export const SINGLE_RX_LAYOUT: readonly number[] = [VSOCK_HDR_BYTES + 4096];

/** Options of {@linkcode LinuxLikeGuest}. */
export interface LinuxLikeGuestOptions {
  /** Writable buffer lengths of each rx chain. Default {@linkcode LINUX_61_RX_LAYOUT}. */
  rxLayout?: readonly number[];
  /** Rx chains to keep posted. Default: as many as the queue's descriptors hold. */
  rxBuffers?: number;
  /**
   * How a packet is cut into readable tx buffers: `"linux"` (header, then
   * payload), `"single"` (one buffer), or lengths of the leading pieces.
   */
  txSplit?: "linux" | "single" | readonly number[];
  /** Guest RAM in bytes. Default 16 MiB. */
  memoryBytes?: number;
  /** Whether to stop posting rx buffers (a guest that does not read its queue). */
  holdRx?: boolean;
}

/** A packet the device put into an rx buffer. */
export interface ReceivedPacket {
  /** Its header. */
  header: VsockHeader;
  /** Its payload. */
  payload: Uint8Array;
  /** The used length the device reported. */
  usedLength: number;
}

/** One guest socket, with Linux's credit bookkeeping. */
export class GuestSocket {
  /** The guest's port. */
  readonly localPort: number;
  /** The host's port. */
  readonly peerPort: number;
  /** Where it is. */
  state: "connecting" | "established" | "closed" = "connecting";
  /** The host reset it (RST). */
  reset = false;
  /** SHUTDOWN flags received from the host. */
  peerShutdown = 0;
  /** Our receive buffer size. */
  bufAlloc = GUEST_BUF_ALLOC_BYTES;
  /** Bytes consumed by our reader. */
  fwdCnt = 0;
  /** `fwd_cnt` the host last heard. */
  lastFwdCnt = 0;
  /** Bytes sent. */
  txCnt = 0;
  /** The host's `buf_alloc`. */
  peerBufAlloc = 0;
  /** The host's `fwd_cnt`. */
  peerFwdCnt = 0;
  /** Whether to ignore the host's credit when sending (a hostile guest). */
  ignoreCredit = false;
  #rx: Uint8Array[] = [];
  #rxBytes = 0;
  #tx: Uint8Array[] = [];
  #guest: LinuxLikeGuest;

  /** Made by {@linkcode LinuxLikeGuest}. */
  constructor(guest: LinuxLikeGuest, localPort: number, peerPort: number) {
    this.#guest = guest;
    this.localPort = localPort;
    this.peerPort = peerPort;
  }

  /** Bytes received and not yet read. */
  get rxBytes(): number {
    return this.#rxBytes;
  }

  /** Bytes written and not yet sent (waiting for credit). */
  get txQueued(): number {
    return this.#tx.reduce((n, b) => n + b.length, 0);
  }

  /** Host credit: `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`. */
  get credit(): number {
    return this.peerBufAlloc - ((this.txCnt - this.peerFwdCnt) >>> 0);
  }

  /** Queues bytes to send; they go out as credit allows. */
  write(bytes: Uint8Array): void {
    if (bytes.length > 0) this.#tx.push(bytes);
    this.flush();
  }

  /** Sends what credit allows, in packets of at most 64 KiB. */
  flush(): void {
    while (this.state === "established" && this.#tx.length > 0) {
      const head = this.#tx[0]!;
      const room = this.ignoreCredit ? head.length : this.credit;
      const n = Math.min(room, head.length, MAX_PACKET_PAYLOAD_BYTES);
      if (n <= 0) return;
      this.send(VSOCK_OP_RW, 0, head.subarray(0, n));
      this.txCnt = (this.txCnt + n) >>> 0;
      if (n === head.length) this.#tx.shift();
      else this.#tx[0] = head.subarray(n);
    }
  }

  /** Takes up to `max` received bytes; sends a CREDIT_UPDATE like Linux. */
  read(max = Infinity): Uint8Array {
    const parts: Uint8Array[] = [];
    let n = 0;
    while (n < max && this.#rx.length > 0) {
      const head = this.#rx[0]!;
      const take = Math.min(head.length, max - n);
      parts.push(head.subarray(0, take));
      if (take === head.length) this.#rx.shift();
      else this.#rx[0] = head.subarray(take);
      n += take;
    }
    this.#rxBytes -= n;
    this.fwdCnt = (this.fwdCnt + n) >>> 0;
    // virtio_transport_stream_do_dequeue(): update when the host's view of
    // our free space drops below one maximal packet.
    const free = this.bufAlloc - ((this.fwdCnt - this.lastFwdCnt) >>> 0);
    if (
      n > 0 && free < MAX_PACKET_PAYLOAD_BYTES && this.state === "established"
    ) {
      this.send(VSOCK_OP_CREDIT_UPDATE, 0);
    }
    return concat(parts);
  }

  /** Sends a SHUTDOWN with `flags`. */
  shutdown(flags: number): void {
    this.send(VSOCK_OP_SHUTDOWN, flags);
  }

  /** Like Linux's close(): SHUTDOWN with both flags. */
  close(): void {
    this.shutdown(VSOCK_SHUTDOWN_BOTH);
  }

  /** Sends a packet on this socket with our credit fields. */
  send(op: number, flags: number, payload?: Uint8Array): void {
    this.lastFwdCnt = this.fwdCnt;
    this.#guest.sendPacket({
      srcPort: this.localPort,
      dstPort: this.peerPort,
      op,
      flags,
      bufAlloc: this.bufAlloc,
      fwdCnt: this.fwdCnt,
    }, payload);
  }

  /** Handles a packet from the host. */
  receive(p: ReceivedPacket): void {
    const h = p.header;
    this.peerBufAlloc = h.bufAlloc;
    this.peerFwdCnt = h.fwdCnt;
    switch (h.op) {
      case VSOCK_OP_RESPONSE:
        if (this.state !== "connecting") {
          this.#guest.errors.push(`RESPONSE on ${this.state} socket`);
        }
        this.state = "established";
        break;
      case VSOCK_OP_RST:
        this.state = "closed";
        this.reset = true;
        this.#guest.forget(this);
        return;
      case VSOCK_OP_SHUTDOWN:
        this.peerShutdown |= h.flags;
        break;
      case VSOCK_OP_RW:
        if (this.state !== "established") {
          this.#guest.errors.push(`RW on ${this.state} socket`);
        }
        if (this.peerShutdown & 2) {
          this.#guest.errors.push("RW after SHUTDOWN SEND");
        }
        if (this.#rxBytes + p.payload.length > this.bufAlloc) {
          this.#guest.errors.push(
            `host sent ${p.payload.length} bytes beyond credit (${this.#rxBytes} buffered)`,
          );
        }
        this.#rx.push(p.payload);
        this.#rxBytes += p.payload.length;
        break;
      case VSOCK_OP_CREDIT_REQUEST:
        this.send(VSOCK_OP_CREDIT_UPDATE, 0);
        break;
      case VSOCK_OP_CREDIT_UPDATE:
        break;
      default:
        this.#guest.errors.push(`unexpected ${opName(h.op)}`);
    }
    this.flush();
  }
}

/** A Linux-like vsock guest over a virtio-mmio test driver. */
export class LinuxLikeGuest {
  /** The test driver (guest RAM, rings, transport). */
  readonly driver: VirtioTestDriver;
  /** The device. */
  readonly device: VirtioVsock;
  /** Every packet the device sent, in order. */
  readonly packets: ReceivedPacket[] = [];
  /** Rules the device broke, as text; tests expect none. */
  readonly errors: string[] = [];
  /** Sockets the guest accepted on its listening ports. */
  readonly accepted: GuestSocket[] = [];
  /** The guest's CID as read from config space. */
  cid = 0n;
  /** Whether to keep rx buffers back (see options). */
  holdRx: boolean;
  /** Whether to record packets without acting on them (a guest that hangs). */
  mute = false;
  #rxLayout: readonly number[];
  #rxTarget: number;
  #rxPosted = 0;
  #txSplit: "linux" | "single" | readonly number[];
  #pendingTx: Uint8Array[][] = [];
  #sockets = new Map<string, GuestSocket>();
  #listening = new Set<number>();
  #nextPort = 1024;

  /** Builds the driver and transport; call start(). */
  constructor(device: VirtioVsock, options: LinuxLikeGuestOptions = {}) {
    this.device = device;
    this.driver = new VirtioTestDriver(device, {
      memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024,
    });
    this.#rxLayout = options.rxLayout ?? LINUX_61_RX_LAYOUT;
    this.#rxTarget = options.rxBuffers ??
      Math.floor(256 / this.#rxLayout.length);
    this.#txSplit = options.txSplit ?? "linux";
    this.holdRx = options.holdRx ?? false;
  }

  /** Initializes the device, reads the CID, posts event and rx buffers. */
  start(): void {
    this.driver.start();
    this.cid = new DataView(this.driver.readConfig(0, 8).buffer)
      .getBigUint64(0, true);
    for (let i = 0; i < 8; i++) {
      this.driver.addBuffers(VSOCK_EVENT_QUEUE, [], [4]);
    }
    this.driver.notify(VSOCK_EVENT_QUEUE);
    this.#fillRx();
  }

  /**
   * Resets the device and starts over, like a driver reload: sockets are
   * gone, listening ports stay.
   */
  restart(): void {
    this.#sockets.clear();
    this.#pendingTx = [];
    this.#rxPosted = 0;
    this.start();
  }

  /** Opens a socket to host port `port` (sends REQUEST). */
  connect(port: number, localPort = this.#nextPort++): GuestSocket {
    const s = new GuestSocket(this, localPort, port);
    this.#sockets.set(key(localPort, port), s);
    s.send(VSOCK_OP_REQUEST, 0);
    return s;
  }

  /** Listens on guest port `port` for host-initiated connections. */
  listen(port: number): void {
    this.#listening.add(port);
  }

  /** The socket for (guest port, host port), if any. */
  socket(localPort: number, peerPort: number): GuestSocket | undefined {
    return this.#sockets.get(key(localPort, peerPort));
  }

  /** Drops a closed socket from the table. */
  forget(s: GuestSocket): void {
    if (this.#sockets.get(key(s.localPort, s.peerPort)) === s) {
      this.#sockets.delete(key(s.localPort, s.peerPort));
    }
  }

  /** Sends a packet from this guest (src CID filled in, dst CID 2 unless given). */
  sendPacket(
    fields: Partial<VsockHeader>,
    payload: Uint8Array = new Uint8Array(0),
  ): void {
    const header = encodeHeader({
      srcCid: this.cid,
      dstCid: VSOCK_HOST_CID,
      srcPort: 0,
      dstPort: 0,
      type: VSOCK_TYPE_STREAM,
      op: VSOCK_OP_RW,
      flags: 0,
      bufAlloc: GUEST_BUF_ALLOC_BYTES,
      fwdCnt: 0,
      ...fields,
      len: fields.len ?? payload.length,
    });
    this.sendRaw(this.#split(header, payload));
  }

  /** Offers one tx chain made of `buffers` (readable) and kicks the queue. */
  sendRaw(buffers: Uint8Array[]): void {
    this.#pendingTx.push(buffers.map((b) => b.slice()));
    this.#flushTx();
  }

  /**
   * Handles everything the device gave back: frees tx buffers, parses rx
   * packets, reposts rx buffers, sends what waited. Returns packets handled.
   */
  poll(): number {
    this.driver.usedEntries(VSOCK_TX_QUEUE);
    let n = 0;
    for (const entry of this.driver.usedEntries(VSOCK_RX_QUEUE)) {
      this.#rxPosted--;
      n++;
      const data = entry.data ?? new Uint8Array(0);
      const parsed = parsePacket(data);
      if (!parsed.ok) {
        this.errors.push(`rx packet of ${entry.len} bytes: ${parsed.problem}`);
        continue;
      }
      if (entry.len !== VSOCK_HDR_BYTES + parsed.header.len) {
        this.errors.push(
          `used length ${entry.len} is not 44 + len ${parsed.header.len}`,
        );
      }
      const packet = {
        header: parsed.header,
        payload: parsed.payload.slice(),
        usedLength: entry.len,
      };
      this.packets.push(packet);
      if (!this.mute) this.#dispatch(packet);
    }
    for (const s of this.#sockets.values()) s.flush();
    this.#flushTx();
    this.#fillRx();
    return n;
  }

  /**
   * Polls and yields to the event loop until `done()` holds; throws after
   * `maxTurns` turns, naming `what` it waited for.
   */
  async runUntil(
    done: () => boolean,
    what: string,
    maxTurns = 20000,
  ): Promise<void> {
    for (let i = 0; i < maxTurns; i++) {
      this.poll();
      if (done()) return;
      await new Promise((r) => setTimeout(r, 0));
    }
    throw new Error(
      `Cannot wait for ${what}: still not there after ${maxTurns} turns`,
    );
  }

  /** Polls for `turns` turns of the event loop. */
  async runFor(turns: number): Promise<void> {
    for (let i = 0; i < turns; i++) {
      this.poll();
      await new Promise((r) => setTimeout(r, 0));
    }
    this.poll();
  }

  #dispatch(p: ReceivedPacket): void {
    const h = p.header;
    if (h.srcCid !== VSOCK_HOST_CID || h.dstCid !== this.cid) {
      this.errors.push(
        `${opName(h.op)} from CID ${h.srcCid} to CID ${h.dstCid}`,
      );
      return;
    }
    if (h.type !== VSOCK_TYPE_STREAM) {
      this.errors.push(`${opName(h.op)} of type ${h.type}`);
      return;
    }
    const s = this.#sockets.get(key(h.dstPort, h.srcPort));
    if (s !== undefined) return s.receive(p);
    if (h.op === VSOCK_OP_REQUEST && this.#listening.has(h.dstPort)) {
      const child = new GuestSocket(this, h.dstPort, h.srcPort);
      child.state = "established";
      child.peerBufAlloc = h.bufAlloc;
      child.peerFwdCnt = h.fwdCnt;
      this.#sockets.set(key(h.dstPort, h.srcPort), child);
      this.accepted.push(child);
      child.send(VSOCK_OP_RESPONSE, 0);
      return;
    }
    // virtio_transport_reset_no_sock(): RST for anything but RST.
    if (h.op !== VSOCK_OP_RST) {
      this.sendPacket({
        srcPort: h.dstPort,
        dstPort: h.srcPort,
        op: VSOCK_OP_RST,
        bufAlloc: 0,
      });
    }
  }

  #split(header: Uint8Array, payload: Uint8Array): Uint8Array[] {
    const split = this.#txSplit;
    if (split === "linux") {
      return payload.length > 0 ? [header, payload] : [header];
    }
    const whole = concat([header, payload]);
    if (split === "single") return [whole];
    const out: Uint8Array[] = [];
    let at = 0;
    for (const len of split) {
      if (at >= whole.length) break;
      out.push(whole.subarray(at, Math.min(whole.length, at + len)));
      at += len;
    }
    if (at < whole.length) out.push(whole.subarray(at));
    return out;
  }

  #flushTx(): void {
    while (this.#pendingTx.length > 0) {
      try {
        this.driver.addBuffers(VSOCK_TX_QUEUE, this.#pendingTx[0]!, []);
      } catch {
        // Out of descriptors: the device has not given tx buffers back.
        this.driver.usedEntries(VSOCK_TX_QUEUE);
        try {
          this.driver.addBuffers(VSOCK_TX_QUEUE, this.#pendingTx[0]!, []);
        } catch {
          break;
        }
      }
      this.#pendingTx.shift();
      this.driver.notify(VSOCK_TX_QUEUE);
      this.driver.usedEntries(VSOCK_TX_QUEUE);
    }
  }

  #fillRx(): void {
    if (this.holdRx) return;
    let posted = false;
    while (this.#rxPosted < this.#rxTarget) {
      this.driver.addBuffers(VSOCK_RX_QUEUE, [], [...this.#rxLayout]);
      this.#rxPosted++;
      posted = true;
    }
    if (posted) this.driver.notify(VSOCK_RX_QUEUE);
  }
}

function key(localPort: number, peerPort: number): string {
  return `${localPort}:${peerPort}`;
}
