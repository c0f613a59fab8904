// Input checks of bootLinux() that run before any hypervisor is opened, and
// the console path on a stand-in hypervisor: they need no /dev/kvm. The boots
// themselves are in tests/e2e/boot_e2e_test.ts.
import {
  deepEqual,
  equal,
  match,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import { bootLinux, checkKernelImage } from "./linux_vm.ts";
import {
  fakeBzImage,
  serialOnlyHypervisor,
} from "./_serial_guest_test_util.ts";

Deno.test("bootLinux() rejects a kernel that is not a bzImage", async () => {
  await rejects(
    bootLinux({ kernel: new TextEncoder().encode("garbage".repeat(200)) }),
    /^Error: Cannot load kernel: not a bzImage/,
  );
});

Deno.test("bootLinux() rejects an empty kernel", async () => {
  await rejects(
    bootLinux({ kernel: new Uint8Array(0) }),
    /Cannot load kernel: file of 0 bytes is too short/,
  );
});

Deno.test("checkKernelImage() rejects a truncated bzImage and accepts a whole one", () => {
  throws(
    () => checkKernelImage(fakeBzImage(2048, 0x100)),
    /Cannot load kernel: file of 2048 bytes is truncated \(its header announces 5120 bytes\)/,
  );
  checkKernelImage(fakeBzImage(5120, 0x100));
});

Deno.test("bootLinux() names a kernel or initrd path it cannot read", async () => {
  await rejects(
    bootLinux({ kernel: "/nonexistent/vmlinuz" }),
    /Cannot read kernel '\/nonexistent\/vmlinuz': No such file/,
  );
  await rejects(
    bootLinux({
      kernel: fakeBzImage(5120, 0x100),
      initrd: "/nonexistent/initrd.cpio",
    }),
    /Cannot read initrd '\/nonexistent\/initrd.cpio': No such file/,
  );
});

Deno.test("bootLinux() rejects bad sizes before opening KVM", async () => {
  const kernel = fakeBzImage(5120, 0x100);
  const e = await bootLinux({ kernel, memoryMiB: 1.5 }).catch((e) => e);
  match(String(e), /memory of 1.5 MiB is not an integer/);
  await rejects(bootLinux({ kernel, cpus: 0 }), /cpu count 0 is outside/);
});

Deno.test("bootLinux() keeps the guest running when onConsole throws and returns the first error", async () => {
  const received: string[] = [];
  let calls = 0;
  const result = await bootLinux({
    kernel: fakeBzImage(5120, 0x100),
    memoryMiB: 16,
    hypervisor: serialOnlyHypervisor("one\ntwo\n"),
    onConsole: (bytes) => {
      if (++calls === 1) throw new Error("stdout is closed");
      received.push(new TextDecoder().decode(bytes));
    },
  });
  equal(result.outcome.kind, "power-off");
  equal(result.consoleError?.message, "stdout is closed");
  deepEqual(received, ["two\n"]);
  equal(result.console, "one\ntwo\n");
});

Deno.test("bootLinux() returns no consoleError when onConsole never throws", async () => {
  const result = await bootLinux({
    kernel: fakeBzImage(5120, 0x100),
    memoryMiB: 16,
    hypervisor: serialOnlyHypervisor("fine\n"),
    onConsole: () => {},
  });
  equal(result.outcome.kind, "power-off");
  equal(result.console, "fine\n");
  ok(!("consoleError" in result));
});
