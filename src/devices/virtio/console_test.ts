import assert from "node:assert/strict";
import {
  CONSOLE_INPUT_LIMIT_BYTES,
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  VIRTIO_CONSOLE_F_SIZE,
  VirtioConsole,
  type VirtioConsoleOptions,
} from "./console.ts";
import {
  STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTIO_ID_CONSOLE,
} from "./device.ts";
import {
  INT_CONFIG,
  INT_VRING,
  REG_CONFIG_GENERATION,
  REG_DEVICE_ID,
} from "./mmio.ts";
import { VIRTQ_DESC_F_NEXT } from "./queue.ts";
import { VirtioTestDriver } from "./_driver_test_util.ts";

const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

function harness(options: VirtioConsoleOptions = {}) {
  const output: string[] = [];
  const device = new VirtioConsole({
    output: (bytes) => void output.push(decode(bytes)),
    ...options,
  });
  const driver = new VirtioTestDriver(device);
  return { device, driver, output };
}

Deno.test("VirtioConsole is device 3 with two queues and VIRTIO_CONSOLE_F_SIZE", () => {
  const { driver } = harness();
  assert.equal(driver.readRegister(REG_DEVICE_ID), VIRTIO_ID_CONSOLE);
  assert.equal(
    driver.deviceFeatures(),
    VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_CONSOLE_F_SIZE,
  );
  driver.start();
  assert.equal(driver.transport.queues.length, 2);
  assert.deepEqual(driver.errors, []);
});

Deno.test("VirtioConsole sends transmitq0 buffers to the output sink", () => {
  const { driver, output, device } = harness();
  driver.start();
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("hello ")], []);
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("wor"), text("ld\n")], []);
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("indirect")], [], {
    indirect: true,
  });
  driver.notify(CONSOLE_TRANSMITQ);
  assert.deepEqual(output, ["hello ", "world\n", "indirect"]);
  const used = driver.usedEntries(CONSOLE_TRANSMITQ);
  assert.deepEqual(used.map((u) => u.len), [0, 0, 0]);
  assert.equal(driver.interrupts, 1);
  assert.equal(driver.ackInterrupt(), INT_VRING);
  assert.equal(device.outputDropped, 0);
});

Deno.test("VirtioConsole holds input until receive buffers come, then fills them in order", () => {
  const { driver, device } = harness();
  device.input(text("typed ahead, "));
  driver.start();
  device.input(text("and more"));
  assert.equal(device.inputPending, 21);
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [8]);
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [4, 4]);
  driver.notify(CONSOLE_RECEIVEQ);
  let used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.deepEqual(used.map((u) => decode(u.data)), ["typed ah", "ead, and"]);
  assert.deepEqual(used.map((u) => u.len), [8, 8]);
  assert.equal(driver.interrupts, 1);
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [64]);
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [64]);
  driver.notify(CONSOLE_RECEIVEQ);
  used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.deepEqual(used.map((u) => decode(u.data)), [" more"]);
  assert.equal(device.inputPending, 0);
  // The spare buffer takes the next input at once.
  device.input(text("x"));
  used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.deepEqual(used.map((u) => decode(u.data)), ["x"]);
});

Deno.test("VirtioConsole delivers to buffers offered before DRIVER_OK", () => {
  const { driver, device } = harness();
  device.input(text("early"));
  driver.start({
    beforeDriverOk: () => {
      driver.addBuffers(CONSOLE_RECEIVEQ, [], [16]);
      driver.notify(CONSOLE_RECEIVEQ);
    },
  });
  const used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.deepEqual(used.map((u) => decode(u.data)), ["early"]);
});

Deno.test("VirtioConsole bounds waiting input at 1 MiB and counts what it drops", () => {
  const { driver, device } = harness();
  device.input(new Uint8Array(CONSOLE_INPUT_LIMIT_BYTES - 10).fill(0x61));
  device.input(new Uint8Array(30).fill(0x62));
  assert.equal(device.inputPending, CONSOLE_INPUT_LIMIT_BYTES);
  assert.equal(device.inputDropped, 20);
  driver.start();
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [CONSOLE_INPUT_LIMIT_BYTES - 4]);
  driver.notify(CONSOLE_RECEIVEQ);
  device.input(new Uint8Array(8).fill(0x63));
  assert.equal(device.inputPending, 12);
  assert.equal(device.inputDropped, 20);
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [100]);
  driver.notify(CONSOLE_RECEIVEQ);
  const used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.equal(used[0]!.len, CONSOLE_INPUT_LIMIT_BYTES - 4);
  assert.equal(decode(used[1]!.data), "bbbbcccccccc");
});

Deno.test("VirtioConsole keeps the guest running when the output sink throws, and keeps the first error", () => {
  let calls = 0;
  const device = new VirtioConsole({
    output: () => {
      calls++;
      throw new Error(calls === 1 ? "broken pipe" : "still broken");
    },
  });
  const driver = new VirtioTestDriver(device);
  driver.start();
  assert.equal(device.outputError === undefined, true);
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("lost")], []);
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("too")], []);
  driver.notify(CONSOLE_TRANSMITQ);
  assert.equal(calls, 2);
  assert.equal(device.outputDropped, 7);
  assert.equal(device.outputErrors, 2);
  assert.equal(device.outputError?.message, "broken pipe");
  assert.equal(driver.usedEntries(CONSOLE_TRANSMITQ).length, 2);
  assert.equal(driver.status & STATUS_DEVICE_NEEDS_RESET, 0);
  assert.deepEqual(driver.errors, []);

  const silent = new VirtioConsole();
  const d2 = new VirtioTestDriver(silent);
  d2.start();
  d2.addBuffers(CONSOLE_TRANSMITQ, [text("nowhere")], []);
  d2.notify(CONSOLE_TRANSMITQ);
  assert.equal(silent.outputDropped, 7);
  assert.equal(silent.outputError, undefined);
});

Deno.test("VirtioConsole keeps a non-Error thrown by the sink as an Error", () => {
  const device = new VirtioConsole({
    output: () => {
      throw "EPIPE";
    },
  });
  const driver = new VirtioTestDriver(device);
  driver.start();
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("x")], []);
  driver.notify(CONSOLE_TRANSMITQ);
  assert.ok(device.outputError instanceof Error);
  assert.equal(device.outputError.message, "EPIPE");
  assert.equal(driver.usedEntries(CONSOLE_TRANSMITQ).length, 1);
});

Deno.test("VirtioConsole shows cols and rows in config space and signals changes", () => {
  const { driver, device } = harness({ cols: 132, rows: 43 });
  driver.start();
  const view = new DataView(driver.readConfig(0, 4).buffer);
  assert.equal(view.getUint16(0, true), 132);
  assert.equal(view.getUint16(2, true), 43);
  assert.deepEqual([...driver.readConfig(4, 8)], new Array(8).fill(0));
  assert.deepEqual([...driver.readConfig(20, 2)], [0, 0]);
  const generation = driver.readRegister(REG_CONFIG_GENERATION);
  device.setConsoleSize(100, 30);
  assert.equal(driver.interrupts, 1);
  assert.equal(driver.ackInterrupt(), INT_CONFIG);
  assert.notEqual(driver.readRegister(REG_CONFIG_GENERATION), generation);
  assert.deepEqual([...driver.readConfig(0, 4)], [100, 0, 30, 0]);
  assert.throws(() => device.setConsoleSize(70000, 1), RangeError);
  assert.throws(() => new VirtioConsole({ rows: -1 }), RangeError);
});

Deno.test("VirtioConsole raises no config interrupt when the driver did not take F_SIZE", () => {
  const { driver, device } = harness();
  driver.start({ features: 0n });
  device.setConsoleSize(100, 30);
  assert.equal(driver.interrupts, 0);
  assert.deepEqual([...driver.readConfig(0, 4)], [100, 0, 30, 0]);
});

Deno.test("VirtioConsole fails on a hostile transmit chain and works again after a reset", () => {
  const { driver, device, output } = harness();
  driver.start();
  driver.addBuffers(CONSOLE_TRANSMITQ, [text("fine")], []);
  // A chain pointing at itself.
  driver.writeDescriptor(CONSOLE_TRANSMITQ, 5, {
    addr: driver.memoryBase,
    len: 4,
    flags: VIRTQ_DESC_F_NEXT,
    next: 5,
  });
  driver.publish(CONSOLE_TRANSMITQ, 5);
  driver.notify(CONSOLE_TRANSMITQ);
  assert.deepEqual(output, ["fine"]);
  assert.ok(driver.status & STATUS_DEVICE_NEEDS_RESET);
  assert.match(driver.errors[0]!, /virtqueue 1: .*a loop/);
  // Input now waits; the dead device takes nothing.
  device.input(text("later"));
  assert.equal(device.inputPending, 5);
  driver.start();
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [16]);
  driver.notify(CONSOLE_RECEIVEQ);
  const used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.deepEqual(used.map((u) => decode(u.data)), ["later"]);
});

Deno.test("VirtioConsole fails on a receive buffer outside RAM", () => {
  const { driver, device } = harness();
  driver.start();
  driver.writeDescriptor(CONSOLE_RECEIVEQ, 0, {
    addr: 0x10n,
    len: 64,
    flags: 2,
    next: 0,
  });
  driver.publish(CONSOLE_RECEIVEQ, 0);
  device.input(text("x"));
  assert.ok(driver.status & STATUS_DEVICE_NEEDS_RESET);
  assert.match(driver.errors[0]!, /virtqueue 0: .*not guest RAM/);
  assert.equal(device.inputPending, 1);
});

Deno.test("VirtioConsole gives zero-length receive buffers back without looping", () => {
  const { driver, device } = harness();
  driver.start();
  for (let i = 0; i < 3; i++) driver.addBuffers(CONSOLE_RECEIVEQ, [], [0]);
  driver.addBuffers(CONSOLE_RECEIVEQ, [], [2]);
  device.input(text("ok"));
  const used = driver.usedEntries(CONSOLE_RECEIVEQ);
  assert.deepEqual(used.map((u) => u.len), [0, 0, 0, 2]);
  assert.equal(decode(used[3]!.data), "ok");
});

Deno.test("VirtioConsole moves megabytes of output without trouble", () => {
  let bytes = 0;
  const device = new VirtioConsole({ output: (b) => void (bytes += b.length) });
  const driver = new VirtioTestDriver(device);
  driver.start();
  const chunk = new Uint8Array(32 * 1024).fill(0x2e);
  for (let i = 0; i < 256; i++) {
    driver.addBuffers(CONSOLE_TRANSMITQ, [chunk], []);
    driver.notify(CONSOLE_TRANSMITQ);
    driver.usedEntries(CONSOLE_TRANSMITQ);
  }
  assert.equal(bytes, 8 * 1024 * 1024);
});
