import { deepEqual, equal } from "node:assert/strict";
import {
  I8042_COMMAND_PORT,
  I8042_STATUS_OUTPUT_FULL,
  Platform,
} from "./platform.ts";

function recorder() {
  const events: string[] = [];
  const platform = new Platform({
    powerOff: () => events.push("power-off"),
    reset: () => events.push("reset"),
  });
  return { events, platform };
}

Deno.test("Platform reports power-off only for an S5 sleep write", () => {
  const { events, platform } = recorder();
  platform.write(0x600, 0x14); // S5 without SLP_EN
  platform.write(0x600, 0x20 | (3 << 2)); // SLP_EN with S3
  deepEqual(events, []);
  platform.write(0x600, 0x34);
  deepEqual(events, ["power-off"]);
});

Deno.test("Platform reports reset from the ACPI register and the i8042", () => {
  const { events, platform } = recorder();
  platform.write(0x602, 0x02);
  platform.write(I8042_COMMAND_PORT, 0xd1);
  deepEqual(events, []);
  platform.write(0x602, 0x01);
  platform.write(I8042_COMMAND_PORT, 0xfe);
  deepEqual(events, ["reset", "reset"]);
});

Deno.test("Platform reads: sleep status 0, i8042 status, CMOS absent", () => {
  const { platform } = recorder();
  equal(platform.read(0x601), 0);
  equal(platform.read(I8042_COMMAND_PORT), I8042_STATUS_OUTPUT_FULL);
  equal(platform.read(0x71), 0xff);
  equal(platform.handles(0x80), true);
  equal(platform.handles(0x3f8), false);
});
