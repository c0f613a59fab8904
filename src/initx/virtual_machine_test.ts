// The host side of VirtualMachine on a stand-in hypervisor (no /dev/kvm): the
// guest only prints on the serial port and powers off. Real boots are in
// tests/e2e/vm_e2e_test.ts.
import { equal, ok, rejects } from "node:assert/strict";
import { VmTerminatedError } from "./errors.ts";
import { VirtualMachine } from "./virtual_machine.ts";
import {
  fakeBzImage,
  serialOnlyHypervisor,
} from "./_serial_guest_test_util.ts";

Deno.test("VirtualMachine keeps the first console sink error in consoleError and result", async () => {
  const debug: string[] = [];
  const seen: string[] = [];
  await using vm = await VirtualMachine.create({
    memoryMiB: 16,
    kernel: { image: fakeBzImage(5120, 0x100) },
    hypervisor: serialOnlyHypervisor("first\nsecond\nthird\n"),
    console: (bytes) => {
      const line = new TextDecoder().decode(bytes);
      if (line !== "second\n") throw new Error(`cannot write ${line.trim()}`);
      seen.push(line);
    },
    debug: (line) => debug.push(line),
  });
  equal(vm.consoleError === undefined, true);
  // The guest powers off without connecting: the boot fails, the sink's
  // failures did not stop the guest from getting there.
  await rejects(vm.boot({ timeoutMs: 5000 }), VmTerminatedError);
  equal(vm.consoleError?.message, "cannot write first");
  equal(seen.join(""), "second\n");
  equal(vm.result?.outcome.kind, "power-off");
  equal(vm.result?.consoleError, vm.consoleError);
  equal(debug.filter((l) => l.startsWith("console sink failed")).length, 1);
});

Deno.test("VirtualMachine.result has no consoleError when the sink never throws", async () => {
  await using vm = await VirtualMachine.create({
    memoryMiB: 16,
    kernel: { image: fakeBzImage(5120, 0x100) },
    hypervisor: serialOnlyHypervisor("fine\n"),
    console: () => {},
  });
  await rejects(vm.boot({ timeoutMs: 5000 }), VmTerminatedError);
  equal(vm.consoleError, undefined);
  ok(vm.result !== undefined && !("consoleError" in vm.result));
});
