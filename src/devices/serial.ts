/**
 * A 16550A UART, enough for Linux's 8250 driver to probe it as ttyS0.
 *
 * Primer: the UART has eight byte registers at `base + 0..7`. Offsets 0 and 1
 * switch meaning when LCR.DLAB is set (divisor latch instead of data and
 * interrupt enable). Transmission is instant here: a byte written to THR goes
 * to the output sink at once and THR is empty again, so the line status
 * always shows THRE|TEMT. Received bytes wait in an input queue; LSR.DR says
 * whether one is there. An interrupt is pending when an enabled condition
 * holds (data ready, or THR empty since the last IIR read / THR write); the
 * trigger fires each time one becomes pending, which suits an edge-triggered
 * IOAPIC pin (KVM_IRQFD or a KVM_IRQ_LINE pulse).
 *
 * Register map and bits: TI/National PC16550D datasheet, "Register
 * Description"; the probe sequence this model passes is Linux
 * `drivers/tty/serial/8250/8250_port.c` (`autoconfig`, `serial8250_do_startup`).
 *
 * @module
 */

// Register offsets from the base port (PC16550D Table 2).

/** Receiver buffer (read) / transmitter holding (write) register; DLAB=0. */
export const RBR_THR = 0;
/** Interrupt enable register; DLAB=0. */
export const IER = 1;
/** Interrupt identification (read) / FIFO control (write) register. */
export const IIR_FCR = 2;
/** Line control register. */
export const LCR = 3;
/** Modem control register. */
export const MCR = 4;
/** Line status register. */
export const LSR = 5;
/** Modem status register. */
export const MSR = 6;
/** Scratch register: stores a byte, used by drivers to detect the chip. */
export const SCR = 7;
/** Divisor latch low byte; at offset 0 when LCR.DLAB=1. */
export const DLL = 0;
/** Divisor latch high byte; at offset 1 when LCR.DLAB=1. */
export const DLM = 1;

/** IER: interrupt when received data is available. */
export const IER_RDA = 0x01;
/** IER: interrupt when THR is empty. */
export const IER_THRE = 0x02;
/** IER: interrupt on receiver line status (errors; never raised here). */
export const IER_RLS = 0x04;
/** IER: interrupt on modem status change (never raised here). */
export const IER_MS = 0x08;
/** IER bits that exist on a 16550A; the others read as 0. */
const IER_MASK = 0x0f;

/** IIR: no interrupt pending. */
export const IIR_NO_INT = 0x01;
/** IIR: THR empty interrupt (priority 3). */
export const IIR_THRE_ID = 0x02;
/** IIR: received data available interrupt (priority 2). */
export const IIR_RDA_ID = 0x04;
/** IIR: FIFOs enabled (bits 6..7 both set on a 16550A). */
export const IIR_FIFO_ENABLED = 0xc0;

/** FCR: enable the FIFOs. */
export const FCR_ENABLE_FIFO = 0x01;
/** FCR: clear the receive FIFO. */
export const FCR_CLEAR_RX = 0x02;
/** FCR: clear the transmit FIFO (nothing to clear: transmission is instant). */
export const FCR_CLEAR_TX = 0x04;

/** LCR: divisor latch access bit. */
export const LCR_DLAB = 0x80;

/** MCR: data terminal ready. */
export const MCR_DTR = 0x01;
/** MCR: request to send. */
export const MCR_RTS = 0x02;
/** MCR: OUT1, user output (loops back to RI). */
export const MCR_OUT1 = 0x04;
/** MCR: OUT2, gates the IRQ line on PCs (loops back to DCD). */
export const MCR_OUT2 = 0x08;
/** MCR: loopback mode: output feeds input, modem lines fold back. */
export const MCR_LOOP = 0x10;
/** MCR bits that exist on a 16550A. */
const MCR_MASK = 0x1f;

/** LSR: data ready (a received byte waits in RBR). */
export const LSR_DR = 0x01;
/** LSR: transmitter holding register empty. */
export const LSR_THRE = 0x20;
/** LSR: transmitter empty (THR and shift register). */
export const LSR_TEMT = 0x40;

/** MSR: clear to send. */
export const MSR_CTS = 0x10;
/** MSR: data set ready. */
export const MSR_DSR = 0x20;
/** MSR: ring indicator. */
export const MSR_RI = 0x40;
/** MSR: data carrier detect. */
export const MSR_DCD = 0x80;

/** Divisor after reset: 115200 / 12 = 9600 baud. */
const DEFAULT_DIVISOR = 12;
/** Default capacity of the input queue, as in vm-superio. */
export const DEFAULT_INPUT_CAPACITY = 64;

/** Raises the UART's interrupt line (one method, like vm-superio's Trigger). */
export interface SerialTrigger {
  /** Called each time an interrupt becomes pending. */
  trigger(): void;
}

/** Optional hooks; each defaults to doing nothing. */
export interface SerialEvents {
  /** The guest read the last queued input byte: room to enqueue more. */
  inputDrained?(): void;
}

/** Options of {@link Serial}. */
export interface SerialOptions {
  /** Interrupt line: an object with `trigger()` or a plain callback. */
  trigger: SerialTrigger | (() => void);
  /**
   * Receives every transmitted byte (one byte per call, not buffered). A
   * sink that throws loses that byte, never the guest: see
   * {@link Serial.outputError}.
   */
  out: (bytes: Uint8Array) => void;
  /** Optional hooks. */
  events?: SerialEvents;
  /** Input queue capacity in bytes. Default {@link DEFAULT_INPUT_CAPACITY}. */
  inputCapacity?: number;
}

/** Snapshot of a {@link Serial}: plain data, safe to serialize as JSON. */
export interface SerialState {
  /** Baud rate divisor latch (16 bits). */
  divisor: number;
  /** Interrupt enable register. */
  ier: number;
  /** Line control register. */
  lcr: number;
  /** Modem control register. */
  mcr: number;
  /** Scratch register. */
  scr: number;
  /** FIFOs enabled by FCR bit 0. */
  fifoEnabled: boolean;
  /** A THR-empty interrupt is latched (cleared by reading IIR or writing THR). */
  thrEmptyPending: boolean;
  /** Bytes received and not yet read by the guest. */
  input: number[];
}

/**
 * 16550A UART model. The hypervisor side maps port I/O at `base + offset` to
 * {@link Serial.read} / {@link Serial.write} and calls
 * {@link Serial.enqueueInput} with host input.
 *
 * @example
 * ```ts
 * import { LSR, LSR_THRE, RBR_THR, Serial } from "./serial.ts";
 * const serial = new Serial({
 *   trigger: () => {}, // e.g. vm.irqLine(4)
 *   out: (bytes) => Deno.stdout.writeSync(bytes),
 * });
 * if (serial.read(LSR) & LSR_THRE) serial.write(RBR_THR, 0x41); // prints "A"
 * ```
 */
export class Serial {
  #trigger: () => void;
  #out: (bytes: Uint8Array) => void;
  #events: SerialEvents;
  #capacity: number;
  #divisor = DEFAULT_DIVISOR;
  #ier = 0;
  #lcr = 0;
  #mcr = 0;
  #scr = 0;
  #fifoEnabled = false;
  #thrEmptyPending = false;
  #input: number[] = [];
  #outputErrors = 0;
  #outputError: Error | undefined;

  /** Creates a UART in its reset state. */
  constructor(options: SerialOptions) {
    const t = options.trigger;
    this.#trigger = typeof t === "function" ? t : () => t.trigger();
    this.#out = options.out;
    this.#events = options.events ?? {};
    const capacity = options.inputCapacity ?? DEFAULT_INPUT_CAPACITY;
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(
        `Cannot create serial port: input capacity ${capacity} is not a positive integer`,
      );
    }
    this.#capacity = capacity;
  }

  /** Bytes lost because the output sink threw (one byte per failed call). */
  get outputErrors(): number {
    return this.#outputErrors;
  }

  /**
   * The first error the output sink threw (later bytes still go to the
   * sink), or undefined while it has not failed.
   */
  get outputError(): Error | undefined {
    return this.#outputError;
  }

  /** Free room in the input queue, in bytes. */
  get inputSpace(): number {
    return this.#capacity - this.#input.length;
  }

  /**
   * Reads the register at `offset` (0..7) as the guest's `inb` would.
   * Reading RBR consumes a byte; reading IIR clears a THR-empty interrupt.
   * Offsets outside 0..7 read as 0xff, like an empty bus.
   */
  read(offset: number): number {
    const dlab = (this.#lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR:
        return dlab ? this.#divisor & 0xff : this.#readRbr();
      case IER:
        return dlab ? this.#divisor >> 8 : this.#ier;
      case IIR_FCR:
        return this.#readIir();
      case LCR:
        return this.#lcr;
      case MCR:
        return this.#mcr;
      case LSR:
        return (this.#input.length > 0 ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
      case MSR:
        return this.#msr();
      case SCR:
        return this.#scr;
      default:
        return 0xff;
    }
  }

  /**
   * Writes `value` (a byte) to the register at `offset` (0..7) as the
   * guest's `outb` would. Writes to read-only registers and to offsets
   * outside 0..7 are ignored.
   */
  write(offset: number, value: number): void {
    const byte = value & 0xff;
    const dlab = (this.#lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR:
        if (dlab) {
          this.#divisor = (this.#divisor & 0xff00) | byte;
        } else {
          this.#transmit(byte);
        }
        return;
      case IER:
        if (dlab) {
          this.#divisor = (this.#divisor & 0x00ff) | (byte << 8);
        } else {
          const enablesThre = (byte & IER_THRE) !== 0 &&
            (this.#ier & IER_THRE) === 0;
          this.#ier = byte & IER_MASK;
          // A 16550 raises THRE at once when the interrupt is enabled while
          // THR is empty, which it always is here; Linux's startup checks it.
          if (enablesThre) this.#thrEmptyPending = true;
          this.#update();
        }
        return;
      case IIR_FCR:
        this.#fifoEnabled = (byte & FCR_ENABLE_FIFO) !== 0;
        if ((byte & FCR_CLEAR_RX) && this.#input.length > 0) {
          this.#input.length = 0;
          this.#events.inputDrained?.();
        }
        return;
      case LCR:
        this.#lcr = byte;
        return;
      case MCR:
        this.#mcr = byte & MCR_MASK;
        return;
      case SCR:
        this.#scr = byte;
        return;
      default:
        // LSR and MSR are read-only (factory test writes are not modelled).
        return;
    }
  }

  /**
   * Queues host input for the guest; returns how many bytes were accepted
   * (fewer than given when the queue is full: retry after
   * `events.inputDrained`).
   *
   * @example
   * ```ts
   * import { Serial } from "./serial.ts";
   * const serial = new Serial({ trigger: () => {}, out: () => {} });
   * serial.enqueueInput(new TextEncoder().encode("ls\n")); // 3
   * ```
   */
  enqueueInput(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.inputSpace);
    if (n === 0) return 0;
    const wasEmpty = this.#input.length === 0;
    for (let i = 0; i < n; i++) this.#input.push(bytes[i] ?? 0);
    if (wasEmpty) this.#update();
    return n;
  }

  /**
   * Snapshot of the device.
   *
   * @example
   * ```ts
   * import { Serial } from "./serial.ts";
   * const options = { trigger: () => {}, out: () => {} };
   * const copy = Serial.fromState(new Serial(options).state(), options);
   * ```
   */
  state(): SerialState {
    return {
      divisor: this.#divisor,
      ier: this.#ier,
      lcr: this.#lcr,
      mcr: this.#mcr,
      scr: this.#scr,
      fifoEnabled: this.#fifoEnabled,
      thrEmptyPending: this.#thrEmptyPending,
      input: [...this.#input],
    };
  }

  /**
   * Restores a device from {@link Serial.state}, after checking every field;
   * throws `Cannot restore serial port: ...` on a malformed state.
   */
  static fromState(state: SerialState, options: SerialOptions): Serial {
    const serial = new Serial(options);
    const bad = (detail: string): never => {
      throw new Error(`Cannot restore serial port: ${detail}`);
    };
    const byte = (name: string, v: unknown, mask = 0xff): number => {
      if (
        typeof v !== "number" || !Number.isInteger(v) || v < 0 ||
        (v & ~mask) !== 0
      ) {
        bad(
          `${name} ${JSON.stringify(v)} is not within mask 0x${
            mask.toString(16)
          }`,
        );
      }
      return v as number;
    };
    if (typeof state !== "object" || state === null) {
      bad(`state is not an object`);
    }
    serial.#divisor = byte("divisor", state.divisor, 0xffff);
    serial.#ier = byte("ier", state.ier, IER_MASK);
    serial.#lcr = byte("lcr", state.lcr);
    serial.#mcr = byte("mcr", state.mcr, MCR_MASK);
    serial.#scr = byte("scr", state.scr);
    if (typeof state.fifoEnabled !== "boolean") {
      bad(`fifoEnabled is not a boolean`);
    }
    if (typeof state.thrEmptyPending !== "boolean") {
      bad(`thrEmptyPending is not a boolean`);
    }
    serial.#fifoEnabled = state.fifoEnabled;
    serial.#thrEmptyPending = state.thrEmptyPending;
    if (!Array.isArray(state.input)) bad(`input is not an array`);
    if (state.input.length > serial.#capacity) {
      bad(
        `input of ${state.input.length} bytes exceeds capacity ${serial.#capacity}`,
      );
    }
    serial.#input = state.input.map((v, i) => byte(`input[${i}]`, v));
    return serial;
  }

  #readRbr(): number {
    const b = this.#input.shift();
    if (b === undefined) return 0;
    if (this.#input.length === 0) this.#events.inputDrained?.();
    return b;
  }

  #readIir(): number {
    const fifo = this.#fifoEnabled ? IIR_FIFO_ENABLED : 0;
    const id = this.#pendingId();
    // Reading IIR acknowledges a THRE interrupt when it is the one reported.
    if (id === IIR_THRE_ID) this.#thrEmptyPending = false;
    return fifo | id;
  }

  /** Highest-priority pending interrupt's IIR id, or IIR_NO_INT. */
  #pendingId(): number {
    if ((this.#ier & IER_RDA) && this.#input.length > 0) return IIR_RDA_ID;
    if ((this.#ier & IER_THRE) && this.#thrEmptyPending) return IIR_THRE_ID;
    return IIR_NO_INT;
  }

  #update(): void {
    if (this.#pendingId() !== IIR_NO_INT) this.#trigger();
  }

  #transmit(byte: number): void {
    if (this.#mcr & MCR_LOOP) {
      // Loopback: the byte arrives at the receiver; dropped if it is full.
      if (this.#input.length < this.#capacity) this.#input.push(byte);
    } else {
      try {
        this.#out(Uint8Array.of(byte));
      } catch (e) {
        // The byte is lost, but THR must empty as always: a driver waiting
        // for THRE would otherwise wait for good.
        this.#outputErrors++;
        this.#outputError ??= e instanceof Error ? e : new Error(String(e));
      }
    }
    this.#thrEmptyPending = true;
    this.#update();
  }

  #msr(): number {
    if (this.#mcr & MCR_LOOP) {
      // Loopback folds the outputs back: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
      return ((this.#mcr & MCR_RTS) ? MSR_CTS : 0) |
        ((this.#mcr & MCR_DTR) ? MSR_DSR : 0) |
        ((this.#mcr & MCR_OUT1) ? MSR_RI : 0) |
        ((this.#mcr & MCR_OUT2) ? MSR_DCD : 0);
    }
    // A connected terminal: carrier, data set ready, clear to send.
    return MSR_DCD | MSR_DSR | MSR_CTS;
  }
}
