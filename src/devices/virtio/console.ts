/**
 * A virtio console (virtio 1.2 §5.3) with one port and no MULTIPORT: Linux's
 * `virtio_console` driver makes it `hvc0`.
 *
 * Primer: the driver keeps empty device-writable buffers on receiveq0
 * (queue 0); the device fills them with host input and gives them back. The
 * driver puts its output on transmitq0 (queue 1) as device-readable buffers;
 * the device hands their bytes to the output sink and gives them back empty.
 * With VIRTIO_CONSOLE_F_SIZE the config space holds the console's size,
 * `struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports;
 * le32 emerg_wr; }`, and a config interrupt tells the driver it changed.
 *
 * @module
 */

import {
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_ID_CONSOLE,
  type VirtioContext,
  type VirtioDevice,
} from "./device.ts";

/** Feature: the config space holds the console size (virtio 1.2 §5.3.3, bit 0). */
export const VIRTIO_CONSOLE_F_SIZE = 1n << 0n;
/** Index of receiveq0 (host to guest). */
export const CONSOLE_RECEIVEQ = 0;
/** Index of transmitq0 (guest to host). */
export const CONSOLE_TRANSMITQ = 1;
/** Maximum size of each of the two queues. */
export const CONSOLE_QUEUE_SIZE = 256;
/** Host input the device holds for the guest at most; the excess is dropped. */
export const CONSOLE_INPUT_LIMIT_BYTES = 1024 * 1024;
/** Console size when none is given. */
export const CONSOLE_DEFAULT_COLS = 80;
/** Console size when none is given. */
export const CONSOLE_DEFAULT_ROWS = 24;

// struct virtio_console_config (virtio 1.2 §5.3.4).
const CONFIG_COLS = 0;
const CONFIG_ROWS = 2;
/** Bytes of the config space: cols, rows, max_nr_ports, emerg_wr. */
const CONFIG_SIZE = 12;

/** Options of {@linkcode VirtioConsole}. */
export interface VirtioConsoleOptions {
  /**
   * Receives the guest's output, one call per transmit buffer; the bytes are
   * a copy the sink may keep. A sink that throws loses that output, never
   * the guest: see {@linkcode VirtioConsole.outputError}. Default: the
   * output is dropped and counted.
   */
  output?: (bytes: Uint8Array) => void;
  /** Console width in columns (0..65535). Default {@linkcode CONSOLE_DEFAULT_COLS}. */
  cols?: number;
  /** Console height in rows (0..65535). Default {@linkcode CONSOLE_DEFAULT_ROWS}. */
  rows?: number;
}

/**
 * The virtio console device model. Host input given to
 * {@linkcode VirtioConsole.input} waits (up to 1 MiB) until the guest offers
 * receive buffers; it survives a driver reset, so input typed before the
 * guest's driver is up is not lost.
 *
 * @example
 * ```ts
 * import { GuestMemory } from "../../hv/memory.ts";
 * import { VirtioConsole } from "./console.ts";
 * import { VirtioMmioTransport } from "./mmio.ts";
 * const memory = new GuestMemory([{ base: 0n, bytes: new Uint8Array(1 << 20) }]);
 * const console_ = new VirtioConsole({
 *   output: (bytes) => Deno.stdout.writeSync(bytes),
 *   cols: 120,
 *   rows: 40,
 * });
 * const transport = new VirtioMmioTransport(console_, {
 *   memory: () => memory,
 *   interrupt: () => {},
 * });
 * console_.input(new TextEncoder().encode("ls\n")); // waits for the driver
 * ```
 */
export class VirtioConsole implements VirtioDevice {
  /** Virtio device ID 3, console. */
  readonly deviceId: number = VIRTIO_ID_CONSOLE;
  /** VIRTIO_CONSOLE_F_SIZE and VIRTIO_F_INDIRECT_DESC. */
  readonly features: bigint = VIRTIO_CONSOLE_F_SIZE | VIRTIO_F_INDIRECT_DESC;
  /** receiveq0 and transmitq0. */
  readonly queueMaxSizes: readonly number[] = [
    CONSOLE_QUEUE_SIZE,
    CONSOLE_QUEUE_SIZE,
  ];

  #output: ((bytes: Uint8Array) => void) | undefined;
  #cols: number;
  #rows: number;
  #context: VirtioContext | undefined;
  /** Host input not yet delivered: `#input[#inputStart..#inputEnd]`. */
  #input = new Uint8Array(0);
  #inputStart = 0;
  #inputEnd = 0;
  #inputDropped = 0;
  #outputDropped = 0;
  #outputErrors = 0;
  #outputError: Error | undefined;

  /** Creates the device; throws a RangeError on a bad console size. */
  constructor(options: VirtioConsoleOptions = {}) {
    this.#output = options.output;
    this.#cols = checkSize("cols", options.cols ?? CONSOLE_DEFAULT_COLS);
    this.#rows = checkSize("rows", options.rows ?? CONSOLE_DEFAULT_ROWS);
  }

  /** Bytes of host input dropped because 1 MiB was already waiting. */
  get inputDropped(): number {
    return this.#inputDropped;
  }

  /** Bytes of guest output lost: no sink was given, or the sink threw. */
  get outputDropped(): number {
    return this.#outputDropped;
  }

  /** Times the output sink threw. */
  get outputErrors(): number {
    return this.#outputErrors;
  }

  /**
   * The first error the output sink threw (later output still goes to the
   * sink), or undefined while it has not failed.
   */
  get outputError(): Error | undefined {
    return this.#outputError;
  }

  /** Bytes of host input waiting for receive buffers. */
  get inputPending(): number {
    return this.#inputEnd - this.#inputStart;
  }

  /** Reads the config space; bytes past it read as 0. */
  readConfig(offset: number, data: Uint8Array): void {
    const config = new Uint8Array(CONFIG_SIZE);
    const view = new DataView(config.buffer);
    view.setUint16(CONFIG_COLS, this.#cols, true);
    view.setUint16(CONFIG_ROWS, this.#rows, true);
    data.fill(0);
    if (offset < 0 || offset >= CONFIG_SIZE) return;
    data.set(config.subarray(offset, offset + data.length));
  }

  /** Ignores config writes: emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, not offered. */
  writeConfig(_offset: number, _data: Uint8Array): void {}

  /** Starts serving the queues: delivers waiting input, takes pending output. */
  activate(context: VirtioContext): void {
    this.#context = context;
    this.#transmit();
    this.#deliver();
  }

  /** Handles a kick of receiveq0 (new receive buffers) or transmitq0 (output). */
  notify(index: number): void {
    if (index === CONSOLE_RECEIVEQ) this.#deliver();
    else if (index === CONSOLE_TRANSMITQ) this.#transmit();
  }

  /** Forgets the guest's queues; host input not yet delivered stays queued. */
  reset(): void {
    this.#context = undefined;
  }

  /**
   * Queues host input for the guest and delivers what fits into the receive
   * buffers the guest offers now; the rest follows as buffers come. Beyond
   * {@linkcode CONSOLE_INPUT_LIMIT_BYTES} waiting, bytes are dropped and
   * counted in {@linkcode VirtioConsole.inputDropped}.
   *
   * @example
   * ```ts
   * import { VirtioConsole } from "./console.ts";
   * const device = new VirtioConsole();
   * device.input(new TextEncoder().encode("echo hi\n"));
   * console.log(device.inputPending); // 8, until a driver takes it
   * ```
   */
  input(bytes: Uint8Array): void {
    const pending = this.inputPending;
    const accepted = Math.min(
      bytes.length,
      CONSOLE_INPUT_LIMIT_BYTES - pending,
    );
    this.#inputDropped += bytes.length - accepted;
    if (accepted > 0) {
      if (this.#inputEnd + accepted > this.#input.length) {
        const need = pending + accepted;
        if (need <= this.#input.length) {
          this.#input.copyWithin(0, this.#inputStart, this.#inputEnd);
        } else {
          const grown = new Uint8Array(
            Math.min(
              CONSOLE_INPUT_LIMIT_BYTES,
              Math.max(need, 2 * this.#input.length, 4096),
            ),
          );
          grown.set(this.#input.subarray(this.#inputStart, this.#inputEnd));
          this.#input = grown;
        }
        this.#inputStart = 0;
        this.#inputEnd = pending;
      }
      this.#input.set(bytes.subarray(0, accepted), this.#inputEnd);
      this.#inputEnd += accepted;
    }
    this.#deliver();
  }

  /**
   * Changes the console size the config space shows and, once the driver
   * took VIRTIO_CONSOLE_F_SIZE, raises a config interrupt so the guest
   * resizes `hvc0`. Throws a RangeError unless both are integers 0..65535.
   *
   * @example
   * ```ts
   * import { VirtioConsole } from "./console.ts";
   * const device = new VirtioConsole();
   * device.setConsoleSize(132, 43);
   * ```
   */
  setConsoleSize(cols: number, rows: number): void {
    this.#cols = checkSize("cols", cols);
    this.#rows = checkSize("rows", rows);
    const context = this.#context;
    if (context && (context.features & VIRTIO_CONSOLE_F_SIZE) !== 0n) {
      context.signalConfig();
    }
  }

  /** Fills receive buffers with waiting input, at most one ring's worth. */
  #deliver(): void {
    const context = this.#context;
    const queue = context?.queues[CONSOLE_RECEIVEQ];
    if (context === undefined || !queue?.ready) return;
    let used = false;
    try {
      // The budget bounds one call even if the guest keeps adding buffers
      // while it runs; whatever it adds later comes with its own kick.
      for (let budget = queue.size; budget > 0; budget--) {
        if (this.inputPending === 0) break;
        const chain = queue.pop();
        if (chain === undefined) break;
        const n = queue.write(
          chain,
          this.#input.subarray(this.#inputStart, this.#inputEnd),
        );
        this.#inputStart += n;
        if (this.#inputStart === this.#inputEnd) {
          this.#inputStart = this.#inputEnd = 0;
        }
        queue.pushUsed(chain.head, n);
        used = true;
      }
    } catch (e) {
      return this.#fail(context, e);
    }
    if (used) context.signalUsed(queue);
  }

  /** Takes the guest's output buffers, at most one ring's worth. */
  #transmit(): void {
    const context = this.#context;
    const queue = context?.queues[CONSOLE_TRANSMITQ];
    if (context === undefined || !queue?.ready) return;
    const outputs: Uint8Array[] = [];
    try {
      for (let budget = queue.size; budget > 0; budget--) {
        const chain = queue.pop();
        if (chain === undefined) break;
        outputs.push(queue.readAll(chain));
        queue.pushUsed(chain.head, 0);
      }
    } catch (e) {
      this.#fail(context, e);
    }
    // The bytes were read before any failure: they still reach the sink.
    for (const bytes of outputs) this.#emit(bytes);
    if (outputs.length > 0 && this.#context === context) {
      context.signalUsed(queue);
    }
  }

  #emit(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (this.#output === undefined) {
      this.#outputDropped += bytes.length;
      return;
    }
    try {
      this.#output(bytes);
    } catch (e) {
      // A failing sink loses this output but must not stop the guest.
      this.#outputDropped += bytes.length;
      this.#outputErrors++;
      this.#outputError ??= e instanceof Error ? e : new Error(String(e));
    }
  }

  #fail(context: VirtioContext, e: unknown): void {
    context.fail(e instanceof Error ? e.message : String(e));
  }
}

function checkSize(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new RangeError(
      `Cannot set console size: ${name} ${value} is not an integer from 0 to 65535`,
    );
  }
  return value;
}
