// Input checks of bootLinux() that run before any hypervisor is opened: they
// need no /dev/kvm. The boots themselves are in tests/e2e/boot_e2e_test.ts.
import { match, rejects, throws } from "node:assert/strict";
import { bootLinux, checkKernelImage } from "./linux_vm.ts";

/** A bzImage header that parses, announcing `syssize` paragraphs of kernel. */
function fakeBzImage(fileBytes: number, syssize: number): Uint8Array {
  const k = new Uint8Array(fileBytes);
  const v = new DataView(k.buffer);
  k[0x1f1] = 1; // setup_sects: the kernel starts at 1024
  v.setUint32(0x1f4, syssize, true);
  v.setUint16(0x1fe, 0xaa55, true);
  k[0x201] = 0x6a; // header length past 0x202
  v.setUint32(0x202, 0x53726448, true); // "HdrS"
  v.setUint16(0x206, 0x020f, true);
  k[0x211] = 1; // LOADED_HIGH
  v.setUint16(0x236, 1, true); // XLF_KERNEL_64
  return k;
}

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
