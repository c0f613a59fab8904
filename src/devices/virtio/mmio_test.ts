import assert from "node:assert/strict";
import {
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  type VirtioContext,
  type VirtioDevice,
} from "./device.ts";
import {
  INT_CONFIG,
  INT_VRING,
  MAX_IGNORED_ACCESS_REPORTS,
  REG_CONFIG_GENERATION,
  REG_DEVICE_FEATURES,
  REG_DEVICE_FEATURES_SEL,
  REG_DEVICE_ID,
  REG_DRIVER_FEATURES,
  REG_DRIVER_FEATURES_SEL,
  REG_INTERRUPT_STATUS,
  REG_MAGIC_VALUE,
  REG_QUEUE_DESC_LOW,
  REG_QUEUE_NUM,
  REG_QUEUE_NUM_MAX,
  REG_QUEUE_READY,
  REG_QUEUE_SEL,
  REG_SHM_BASE_HIGH,
  REG_SHM_BASE_LOW,
  REG_SHM_LEN_HIGH,
  REG_SHM_LEN_LOW,
  REG_SHM_SEL,
  REG_STATUS,
  REG_VENDOR_ID,
  REG_VERSION,
  VIRTIO_MMIO_MAGIC,
  VIRTIO_MMIO_VENDOR_INITX,
  VirtioMmioTransport,
} from "./mmio.ts";
import { VIRTQ_AVAIL_F_NO_INTERRUPT, VirtqueueError } from "./queue.ts";
import { VirtioTestDriver } from "./_driver_test_util.ts";

/** A device that records what the transport asks of it. */
class FakeDevice implements VirtioDevice {
  readonly deviceId = 26;
  readonly features = VIRTIO_F_INDIRECT_DESC | (1n << 3n);
  readonly queueMaxSizes = [8, 4];
  calls: string[] = [];
  context: VirtioContext | undefined;
  onNotify: (index: number) => void = () => {};
  onActivate: () => void = () => {};
  config = Uint8Array.of(1, 2, 3, 4, 5, 6);

  readConfig(offset: number, data: Uint8Array): void {
    data.set(this.config.subarray(offset, offset + data.length));
  }
  writeConfig(offset: number, data: Uint8Array): void {
    this.calls.push(`writeConfig ${offset} ${[...data]}`);
  }
  activate(context: VirtioContext): void {
    this.calls.push("activate");
    this.context = context;
    this.onActivate();
  }
  notify(index: number): void {
    this.calls.push(`notify ${index}`);
    this.onNotify(index);
  }
  reset(): void {
    this.calls.push("reset");
    this.context = undefined;
  }
}

function started(options: Parameters<VirtioTestDriver["start"]>[0] = {}) {
  const device = new FakeDevice();
  const driver = new VirtioTestDriver(device);
  driver.start(options);
  return { device, driver };
}

/** Echoes every chain of queue `index` back used, with 0 bytes. */
function answerAll(device: FakeDevice, index: number): void {
  const context = device.context!;
  const queue = context.queues[index]!;
  for (let chain = queue.pop(); chain; chain = queue.pop()) {
    queue.pushUsed(chain.head, 0);
  }
  context.signalUsed(queue);
}

Deno.test("VirtioMmioTransport identifies itself as a version 2 device", () => {
  const driver = new VirtioTestDriver(new FakeDevice());
  assert.equal(driver.readRegister(REG_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
  assert.equal(driver.readRegister(REG_VERSION), 2);
  assert.equal(driver.readRegister(REG_DEVICE_ID), 26);
  assert.equal(driver.readRegister(REG_VENDOR_ID), VIRTIO_MMIO_VENDOR_INITX);
  assert.equal(
    new TextDecoder().decode(Uint8Array.of(0x69, 0x6e, 0x69, 0x78)),
    "inix",
  );
  driver.writeRegister(REG_SHM_SEL, 0);
  for (
    const r of [
      REG_SHM_LEN_LOW,
      REG_SHM_LEN_HIGH,
      REG_SHM_BASE_LOW,
      REG_SHM_BASE_HIGH,
    ]
  ) {
    assert.equal(driver.readRegister(r), 0xffffffff);
  }
  assert.deepEqual(driver.errors, []);
});

Deno.test("VirtioMmioTransport shows QueueNumMax 0 and QueueReady 0 past the device's queues", () => {
  const driver = new VirtioTestDriver(new FakeDevice());
  const max = [8, 4, 0, 0];
  max.forEach((n, i) => {
    driver.writeRegister(REG_QUEUE_SEL, i);
    assert.equal(driver.readRegister(REG_QUEUE_NUM_MAX), n);
    assert.equal(driver.readRegister(REG_QUEUE_READY), 0);
  });
  driver.writeRegister(REG_QUEUE_SEL, 0xffffffff);
  assert.equal(driver.readRegister(REG_QUEUE_NUM_MAX), 0);
});

Deno.test("VirtioMmioTransport offers the device's features plus VIRTIO_F_VERSION_1", () => {
  const driver = new VirtioTestDriver(new FakeDevice());
  assert.equal(
    driver.deviceFeatures(),
    VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | (1n << 3n),
  );
  driver.writeRegister(REG_DEVICE_FEATURES_SEL, 2);
  assert.equal(driver.readRegister(REG_DEVICE_FEATURES), 0);
});

Deno.test("VirtioMmioTransport negotiates like Linux and activates the device on DRIVER_OK", () => {
  const { device, driver } = started({ features: VIRTIO_F_INDIRECT_DESC });
  assert.deepEqual(device.calls, ["reset", "activate"]);
  assert.equal(
    driver.status,
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
  );
  const context = device.context!;
  assert.equal(context.features, VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC);
  assert.equal(context.memory, driver.memory);
  assert.equal(context.queues.length, 2);
  assert.ok(context.queues.every((q) => q.ready));
  assert.equal(context.queues[0]!.descAddr, driver.queue(0).descAddr);
  // Writing DRIVER_OK again does not activate twice.
  driver.writeRegister(REG_STATUS, driver.status);
  assert.deepEqual(device.calls, ["reset", "activate"]);
  assert.deepEqual(driver.errors, []);
});

Deno.test("VirtioMmioTransport refuses FEATURES_OK without VERSION_1 or with bits not offered", () => {
  for (
    const [features, pattern] of [
      [VIRTIO_F_INDIRECT_DESC, /VIRTIO_F_VERSION_1 is not set/],
      [VIRTIO_F_VERSION_1 | (1n << 5n), /bits 0x20 were not offered/],
      [VIRTIO_F_VERSION_1 | (1n << 63n), /bits 0x8000000000000000/],
    ] as const
  ) {
    const device = new FakeDevice();
    const driver = new VirtioTestDriver(device);
    assert.throws(
      () => driver.start({ forceFeatures: features }),
      /refused features/,
    );
    assert.equal(driver.status & STATUS_FEATURES_OK, 0);
    assert.match(driver.errors.join("\n"), pattern);
    // DRIVER_OK anyway: the device is not started but fails.
    driver.writeRegister(REG_STATUS, driver.status | STATUS_DRIVER_OK);
    assert.deepEqual(device.calls.filter((c) => c === "activate"), []);
    assert.ok(driver.status & STATUS_DEVICE_NEEDS_RESET);
  }
});

Deno.test("VirtioMmioTransport resets the device, its queues and InterruptStatus on status 0", () => {
  const { device, driver } = started();
  device.context!.signalConfig();
  assert.equal(driver.transport.interruptStatus, INT_CONFIG);
  driver.writeRegister(REG_STATUS, 0);
  assert.equal(driver.status, 0);
  assert.equal(driver.transport.interruptStatus, 0);
  assert.deepEqual(device.calls, ["reset", "activate", "reset"]);
  assert.ok(
    driver.transport.queues.every((q) => !q.ready && q.descAddr === 0n),
  );
  driver.start();
  assert.equal(device.calls.at(-1), "activate");
});

Deno.test("VirtioMmioTransport delivers notifications and pulses the interrupt once per new status bit", () => {
  const { device, driver } = started();
  device.onNotify = (index) => answerAll(device, index);
  driver.addBuffers(0, [Uint8Array.of(1)], []);
  driver.notify(0);
  assert.equal(driver.interrupts, 1);
  assert.deepEqual(driver.usedEntries(0), [{ head: 0, len: 0 }]);
  // Not acknowledged yet: a second used buffer raises no new edge.
  driver.addBuffers(1, [Uint8Array.of(1)], []);
  driver.notify(1);
  assert.equal(driver.interrupts, 1);
  // A config change is a new bit: a new edge.
  device.context!.signalConfig();
  assert.equal(driver.interrupts, 2);
  assert.equal(driver.ackInterrupt(), INT_VRING | INT_CONFIG);
  assert.equal(driver.readRegister(REG_INTERRUPT_STATUS), 0);
  driver.addBuffers(1, [Uint8Array.of(1)], []);
  driver.notify(1);
  assert.equal(driver.interrupts, 3);
  driver.ackInterrupt();
  // Nothing new in the used ring: no interrupt.
  device.context!.signalUsed(device.context!.queues[1]!);
  assert.equal(driver.interrupts, 3);
  // The driver asked for none.
  driver.setAvailFlags(1, VIRTQ_AVAIL_F_NO_INTERRUPT);
  driver.addBuffers(1, [Uint8Array.of(1)], []);
  driver.notify(1);
  assert.equal(driver.interrupts, 3);
  assert.equal(driver.usedEntries(1).length, 3);
});

Deno.test("VirtioMmioTransport counts config changes in ConfigGeneration", () => {
  const { device, driver } = started();
  const before = driver.readRegister(REG_CONFIG_GENERATION);
  device.context!.signalConfig();
  assert.equal(driver.readRegister(REG_CONFIG_GENERATION), before + 1);
});

Deno.test("VirtioMmioTransport replays kicks that came before DRIVER_OK", () => {
  const device = new FakeDevice();
  const driver = new VirtioTestDriver(device);
  driver.start({
    beforeDriverOk: () => {
      driver.addBuffers(1, [Uint8Array.of(1)], []);
      driver.notify(1);
      driver.notify(1);
      assert.deepEqual(device.calls, ["reset"]);
    },
  });
  assert.deepEqual(device.calls, ["reset", "activate", "notify 1"]);
});

Deno.test("VirtioMmioTransport passes config space accesses of any width", () => {
  const { device, driver } = started();
  assert.deepEqual([...driver.readConfig(1, 2)], [2, 3]);
  assert.deepEqual([...driver.readConfig(4, 4)], [5, 6, 0, 0]);
  driver.transport.write(0x100 + 3, Uint8Array.of(9));
  assert.equal(device.calls.at(-1), "writeConfig 3 9");
});

Deno.test("VirtioMmioTransport fails the device on a bad queue configuration", () => {
  const { device, driver } = started();
  driver.writeRegister(REG_STATUS, 0);
  driver.start({
    beforeDriverOk: () => {
      driver.writeRegister(REG_QUEUE_SEL, 1);
      driver.writeRegister(REG_QUEUE_READY, 0);
      driver.writeRegister(REG_QUEUE_NUM, 3);
      driver.writeRegister(REG_QUEUE_READY, 1);
    },
  });
  assert.match(driver.errors.join("\n"), /Cannot activate virtqueue 1: size 3/);
  assert.ok(driver.status & STATUS_DEVICE_NEEDS_RESET);
  // DRIVER_OK was not set yet: no config interrupt.
  assert.equal(driver.transport.interruptStatus, 0);
  assert.equal(driver.interrupts, 0);
  assert.equal(device.calls.filter((c) => c === "activate").length, 1);
});

Deno.test("VirtioMmioTransport catches a throwing notify(), fails the device until reset", () => {
  for (
    const error of [
      new VirtqueueError("Cannot pop a chain from virtqueue 0: a loop"),
      new TypeError("oops"),
    ]
  ) {
    const { device, driver } = started();
    device.onNotify = () => {
      throw error;
    };
    driver.addBuffers(0, [Uint8Array.of(1)], []);
    driver.notify(0);
    const status = driver.status;
    assert.ok(status & STATUS_DEVICE_NEEDS_RESET);
    assert.ok(status & STATUS_DRIVER_OK);
    assert.equal(driver.interrupts, 1);
    assert.equal(driver.transport.interruptStatus, INT_CONFIG);
    assert.equal(driver.errors.length, 1);
    assert.match(
      driver.errors[0]!,
      error instanceof VirtqueueError
        ? /a loop/
        : /Cannot handle a notification of queue 0: oops/,
    );
    assert.deepEqual(device.calls, ["reset", "activate", "notify 0", "reset"]);
    // Dead until reset: no more calls, queues inactive.
    driver.notify(0);
    assert.equal(device.calls.length, 4);
    assert.ok(driver.transport.queues.every((q) => !q.ready));
    // The driver's own status writes keep DEVICE_NEEDS_RESET.
    driver.writeRegister(REG_STATUS, STATUS_ACKNOWLEDGE);
    assert.ok(driver.status & STATUS_DEVICE_NEEDS_RESET);
    device.onNotify = (index) => answerAll(device, index);
    driver.start();
    assert.equal(driver.status & STATUS_DEVICE_NEEDS_RESET, 0);
    driver.addBuffers(0, [Uint8Array.of(1)], []);
    driver.notify(0);
    assert.equal(driver.usedEntries(0).length, 1);
  }
});

Deno.test("VirtioMmioTransport ignores a context from before a reset or failure", () => {
  const { device, driver } = started();
  const old = device.context!;
  old.fail("Cannot go on: test failure");
  assert.equal(driver.errors.length, 1);
  driver.start();
  old.fail("Cannot go on: stale");
  old.signalConfig();
  assert.equal(driver.errors.length, 1);
  assert.equal(driver.status & STATUS_DEVICE_NEEDS_RESET, 0);
  assert.equal(driver.transport.interruptStatus, 0);
});

Deno.test("VirtioMmioTransport catches a throwing activate() and throwing hooks", () => {
  const device = new FakeDevice();
  device.onActivate = () => {
    throw new Error("no");
  };
  const errors: string[] = [];
  let mapped = 0;
  const transport = new VirtioMmioTransport(device, {
    memory: () => {
      if (mapped++ === 0) throw new Error("Cannot map memory: test");
      return new VirtioTestDriver(device).memory;
    },
    interrupt: () => {
      throw new Error("line");
    },
    onError: (message) => {
      errors.push(message);
      throw new Error("sink");
    },
  });
  const reg = (offset: number, value: number) => {
    const data = new Uint8Array(4);
    new DataView(data.buffer).setUint32(0, value, true);
    transport.write(offset, data);
  };
  reg(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  reg(REG_DRIVER_FEATURES_SEL, 1);
  reg(REG_DRIVER_FEATURES, 1);
  reg(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  reg(REG_QUEUE_SEL, 0);
  reg(REG_QUEUE_READY, 1); // memory() throws: the device fails
  assert.match(errors.join("\n"), /Cannot map memory: test/);
  reg(REG_STATUS, 0);
  reg(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  reg(REG_DRIVER_FEATURES_SEL, 1);
  reg(REG_DRIVER_FEATURES, 1);
  reg(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  reg(REG_STATUS, transport.status | STATUS_DRIVER_OK);
  assert.match(errors.join("\n"), /Cannot start the device: no/);
  assert.match(errors.join("\n"), /Cannot raise the device's interrupt: line/);
  assert.ok(transport.status & STATUS_DEVICE_NEEDS_RESET);
});

Deno.test("VirtioMmioTransport ignores and reports odd accesses", () => {
  const { device, driver } = started();
  const t = driver.transport;
  const byte = Uint8Array.of(0xaa);
  t.read(REG_MAGIC_VALUE, byte);
  assert.equal(byte[0], 0);
  t.write(REG_STATUS, Uint8Array.of(0));
  assert.ok(driver.status & STATUS_DRIVER_OK);
  t.read(REG_MAGIC_VALUE + 2, new Uint8Array(4));
  t.read(0xffe, new Uint8Array(4));
  t.write(0x1000, new Uint8Array(4));
  driver.writeRegister(REG_MAGIC_VALUE, 1);
  // Queue registers of a ready queue stay as they are.
  driver.writeRegister(REG_QUEUE_SEL, 0);
  driver.writeRegister(REG_QUEUE_DESC_LOW, 0x1234);
  assert.equal(t.queues[0]!.descAddr, driver.queue(0).descAddr);
  driver.writeRegister(REG_QUEUE_SEL, 7);
  driver.writeRegister(REG_QUEUE_NUM, 4);
  driver.notify(9);
  const expected = [
    /register 0x0: a 1-byte access/,
    /register 0x70: a 1-byte access/,
    /register 0x2: a 4-byte access/,
    /offset 0xffe: outside the 4 KiB window/,
    /offset 0x1000: outside/,
    /register 0x0: it is read-only/,
    /Cannot configure queue 0: it is ready/,
    /Cannot configure queue 7: the device has 2 queues/,
    /Cannot notify queue 9/,
  ];
  assert.equal(driver.errors.length, expected.length);
  expected.forEach((p, i) => assert.match(driver.errors[i]!, p));
  assert.deepEqual(device.calls, ["reset", "activate"]);
  assert.equal(driver.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

Deno.test("VirtioMmioTransport goes quiet after MAX_IGNORED_ACCESS_REPORTS ignored accesses", () => {
  const driver = new VirtioTestDriver(new FakeDevice());
  for (let i = 0; i < 100; i++) driver.writeRegister(REG_MAGIC_VALUE, i);
  assert.equal(driver.errors.length, MAX_IGNORED_ACCESS_REPORTS + 1);
  assert.match(driver.errors.at(-1)!, /Cannot report more ignored accesses/);
});
