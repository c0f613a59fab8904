import assert from "node:assert/strict";
import {
  DLL,
  DLM,
  FCR_CLEAR_RX,
  FCR_ENABLE_FIFO,
  IER,
  IER_RDA,
  IER_THRE,
  IIR_FCR,
  IIR_NO_INT,
  IIR_RDA_ID,
  IIR_THRE_ID,
  LCR,
  LCR_DLAB,
  LSR,
  LSR_DR,
  LSR_TEMT,
  LSR_THRE,
  MCR,
  MCR_DTR,
  MCR_LOOP,
  MCR_OUT2,
  MCR_RTS,
  MSR,
  RBR_THR,
  SCR,
  Serial,
  type SerialState,
} from "./serial.ts";

function harness(inputCapacity?: number) {
  const out: number[] = [];
  let irqs = 0;
  let drained = 0;
  const options = {
    trigger: { trigger: () => void irqs++ },
    out: (bytes: Uint8Array) => void out.push(...bytes),
    events: { inputDrained: () => void drained++ },
    inputCapacity,
  };
  const serial = new Serial(options);
  return {
    serial,
    options,
    out,
    irqs: () => irqs,
    drained: () => drained,
  };
}

Deno.test("Serial passes the 8250 driver's probe as a 16550A", () => {
  const { serial: s } = harness();
  // autoconfig(): IER existence test.
  s.write(IER, 0);
  assert.equal(s.read(IER) & 0x0f, 0);
  s.write(IER, 0x0f);
  assert.equal(s.read(IER) & 0x0f, 0x0f);
  s.write(IER, 0);
  // Loopback test: MCR LOOP|OUT2|RTS must show DCD|CTS in MSR.
  s.write(MCR, MCR_LOOP | 0x0a);
  assert.equal(s.read(MSR) & 0xf0, 0x90);
  s.write(MCR, 0);
  // FIFO probe: IIR bits 7..6 == 3 after enabling the FIFO means 16550A.
  s.write(LCR, 0);
  s.write(IIR_FCR, FCR_ENABLE_FIFO);
  assert.equal(s.read(IIR_FCR) >> 6, 3);
  // No EFR (LCR 0xbf) and no 64-byte FIFO (IIR bit 5).
  s.write(LCR, 0xbf);
  assert.notEqual(s.read(IIR_FCR), 0);
  s.write(LCR, 0);
  assert.equal(s.read(IIR_FCR) & 0x20, 0);
  // XScale UUE bit (IER bit 6) must not stick.
  s.write(IER, 0x40);
  assert.equal(s.read(IER) & 0x40, 0);
  // Scratch register keeps what is written.
  s.write(SCR, 0xa5);
  assert.equal(s.read(SCR), 0xa5);
  s.write(SCR, 0x5a);
  assert.equal(s.read(SCR), 0x5a);
  // Startup: LSR must not read 0xff.
  assert.equal(s.read(LSR), LSR_THRE | LSR_TEMT);
});

Deno.test("Serial reports THRE when the TX interrupt is enabled (no UART_BUG_THRE)", () => {
  const { serial: s, irqs } = harness();
  s.write(IIR_FCR, FCR_ENABLE_FIFO);
  s.write(IER, IER_THRE);
  assert.equal(irqs(), 1);
  assert.equal(s.read(IIR_FCR) & 0x0f, IIR_THRE_ID);
  // Reading IIR acknowledged it.
  assert.equal(s.read(IIR_FCR) & 0x0f, IIR_NO_INT);
  s.write(IER, 0);
  s.write(IER, IER_THRE);
  assert.equal(s.read(IIR_FCR) & 0x0f, IIR_THRE_ID);
  assert.equal(irqs(), 2);
});

Deno.test("Serial transmits bytes and interrupts after each when enabled", () => {
  const { serial: s, out, irqs } = harness();
  s.write(LCR, 0x03); // 8N1
  s.write(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
  for (const b of new TextEncoder().encode("hi")) s.write(RBR_THR, b);
  assert.deepEqual(out, [0x68, 0x69]);
  assert.equal(irqs(), 0, "no interrupt while IER is 0");
  s.write(IER, IER_THRE);
  s.read(IIR_FCR);
  s.write(RBR_THR, 0x21);
  assert.equal(irqs(), 2);
  assert.equal(s.read(IIR_FCR) & 0x0f, IIR_THRE_ID);
  assert.deepEqual(out, [0x68, 0x69, 0x21]);
});

Deno.test("Serial keeps transmitting and interrupting when the output sink throws, and keeps the first error", () => {
  let irqs = 0;
  const out: number[] = [];
  const s = new Serial({
    trigger: () => void irqs++,
    out: (bytes) => {
      if (bytes[0] === 0x21) throw new Error(`sink full at ${out.length}`);
      out.push(...bytes);
    },
  });
  s.write(IER, IER_THRE);
  s.read(IIR_FCR);
  assert.equal(s.outputError === undefined, true);
  for (const b of new TextEncoder().encode("a!b!c")) {
    s.write(RBR_THR, b);
    // Each byte empties THR and interrupts, lost or not: the driver goes on.
    assert.equal(s.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
    assert.equal(s.read(IIR_FCR) & 0x0f, IIR_THRE_ID);
  }
  assert.deepEqual(out, [0x61, 0x62, 0x63]);
  assert.equal(irqs, 1 + 5);
  assert.equal(s.outputErrors, 2);
  assert.equal(s.outputError?.message, "sink full at 1");
});

Deno.test("Serial delivers input with data-ready status and interrupts", () => {
  const { serial: s, irqs, drained } = harness();
  s.write(IER, IER_RDA);
  assert.equal(s.enqueueInput(new TextEncoder().encode("ab")), 2);
  assert.equal(irqs(), 1);
  assert.equal(s.read(IIR_FCR) & 0x0f, IIR_RDA_ID);
  // Like serial8250_rx_chars(): read while LSR.DR.
  const got: number[] = [];
  while (s.read(LSR) & LSR_DR) got.push(s.read(RBR_THR));
  assert.deepEqual(got, [0x61, 0x62]);
  assert.equal(drained(), 1);
  assert.equal(s.read(IIR_FCR) & 0x0f, IIR_NO_INT);
  assert.equal(s.read(RBR_THR), 0, "empty RBR reads 0");
});

Deno.test("Serial input queue is bounded and FCR clears it", () => {
  const { serial: s } = harness(4);
  assert.equal(s.enqueueInput(Uint8Array.of(1, 2, 3, 4, 5, 6)), 4);
  assert.equal(s.inputSpace, 0);
  assert.equal(s.enqueueInput(Uint8Array.of(7)), 0);
  s.write(IIR_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RX);
  assert.equal(s.read(LSR) & LSR_DR, 0);
  assert.equal(s.inputSpace, 4);
});

Deno.test("Serial divisor latch shadows RBR/IER while DLAB is set", () => {
  const { serial: s, out } = harness();
  s.write(IER, IER_RDA);
  s.write(LCR, LCR_DLAB | 0x03);
  s.write(DLL, 0x01); // 115200 baud
  s.write(DLM, 0x00);
  assert.equal(s.read(DLL), 0x01);
  assert.equal(s.read(DLM), 0x00);
  s.write(LCR, 0x03);
  assert.equal(s.read(IER), IER_RDA);
  assert.deepEqual(out, [], "divisor writes are not output");
});

Deno.test("Serial loopback sends output back to the receiver", () => {
  const { serial: s, out } = harness();
  s.write(MCR, MCR_LOOP);
  s.write(RBR_THR, 0x55);
  assert.deepEqual(out, []);
  assert.equal(s.read(LSR) & LSR_DR, LSR_DR);
  assert.equal(s.read(RBR_THR), 0x55);
});

Deno.test("Serial accepts a plain callback as trigger", () => {
  let n = 0;
  const s = new Serial({ trigger: () => void n++, out: () => {} });
  s.write(IER, IER_THRE);
  assert.equal(n, 1);
  assert.throws(
    () => new Serial({ trigger: () => {}, out: () => {}, inputCapacity: 0 }),
    /input capacity 0/,
  );
});

Deno.test("Serial state() / fromState() round-trip and validate", () => {
  const { serial: s, options } = harness();
  s.write(LCR, LCR_DLAB);
  s.write(DLL, 3);
  s.write(LCR, 0x03);
  s.write(IER, IER_RDA | IER_THRE);
  s.write(SCR, 0x42);
  s.write(IIR_FCR, FCR_ENABLE_FIFO);
  s.enqueueInput(Uint8Array.of(9, 8));
  const state = s.state();
  const json = JSON.parse(JSON.stringify(state)) as SerialState;
  const copy = Serial.fromState(json, options);
  assert.deepEqual(copy.state(), state);
  assert.equal(copy.read(RBR_THR), 9);
  assert.equal(copy.read(IIR_FCR), 0xc0 | IIR_RDA_ID);

  const bad: Array<[Partial<SerialState>, RegExp]> = [
    [{ ier: 0x10 }, /ier 16 is not within mask 0xf/],
    [{ divisor: 0x10000 }, /divisor 65536/],
    [{ lcr: 1.5 }, /lcr 1.5/],
    [{ input: [256] }, /input\[0\] 256/],
    [{ input: new Array(65).fill(0) }, /exceeds capacity 64/],
    [{ fifoEnabled: 1 as unknown as boolean }, /fifoEnabled is not a boolean/],
  ];
  for (const [patch, message] of bad) {
    assert.throws(
      () => Serial.fromState({ ...state, ...patch }, options),
      (e: Error) =>
        e.message.startsWith("Cannot restore serial port: ") &&
        message.test(e.message),
    );
  }
});
