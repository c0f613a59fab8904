import assert from "node:assert/strict";
import { buildAcpiTables } from "./acpi.ts";
import {
  ACPI_TABLES_ADDR,
  CMDLINE_ADDR,
  GDT_ADDR,
  GIB,
  MIB,
  PD_ADDR,
  PDPT_ADDR,
  PML4_ADDR,
  ZERO_PAGE_ADDR,
} from "./layout.ts";
import {
  buildX86Boot,
  e820Map,
  encodeGdtEntry,
  parseX86SetupHeader,
  type X86BootPlan,
} from "./linux_x86.ts";
import { ensureKernel } from "./kernel.ts";
import { needTool } from "../../tests/_gate.ts";

interface FakeKernelOptions {
  version?: number;
  xloadflags?: number;
  setupSects?: number;
  payloadBytes?: number;
  initSize?: number;
  prefAddress?: bigint;
  relocatable?: boolean;
  cmdlineSize?: number;
}

/** A minimal bzImage: a valid setup header and a payload of 0xcc bytes. */
function fakeKernel(options: FakeKernelOptions = {}): Uint8Array {
  const setupSects = options.setupSects ?? 4;
  const payload = options.payloadBytes ?? 0x3000;
  const kernelOffset = (setupSects + 1) * 512;
  const bytes = new Uint8Array(kernelOffset + payload);
  bytes.fill(0xcc, kernelOffset);
  const v = new DataView(bytes.buffer);
  v.setUint8(0x1f1, setupSects);
  v.setUint16(0x1fe, 0xaa55, true);
  v.setUint8(0x200, 0xeb);
  v.setUint8(0x201, 0x6a); // header ends at 0x26c
  bytes.set(new TextEncoder().encode("HdrS"), 0x202);
  v.setUint16(0x206, options.version ?? 0x020f, true);
  v.setUint8(0x211, 0x01); // LOADED_HIGH
  v.setUint32(0x22c, 0x7fffffff, true);
  v.setUint32(0x230, 0x200000, true);
  v.setUint8(0x234, options.relocatable === false ? 0 : 1);
  v.setUint16(0x236, options.xloadflags ?? 0x3, true);
  v.setUint32(0x238, options.cmdlineSize ?? 2047, true);
  v.setBigUint64(0x258, options.prefAddress ?? 0x1000000n, true);
  v.setUint32(0x260, options.initSize ?? 0x800000, true);
  return bytes;
}

function writeAt(plan: X86BootPlan, addr: bigint): Uint8Array {
  const w = plan.writes.find((w) => w.addr === addr);
  assert.ok(w, `no write at 0x${addr.toString(16)}`);
  return w.bytes;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
}

Deno.test("parseX86SetupHeader() reads the fields of a synthetic bzImage", () => {
  const hdr = parseX86SetupHeader(fakeKernel());
  assert.equal(hdr.version, 0x020f);
  assert.equal(hdr.setupSects, 4);
  assert.equal(hdr.kernelOffset, 0xa00);
  assert.equal(hdr.relocatable, true);
  assert.equal(hdr.kernelAlignment, 0x200000n);
  assert.equal(hdr.prefAddress, 0x1000000n);
  assert.equal(hdr.initSize, 0x800000n);
  assert.equal(hdr.initrdAddrMax, 0x7fffffffn);
  assert.equal(hdr.cmdlineSize, 2047);
  assert.equal(hdr.headerBytes, 0x26c - 0x1f1);
  // setup_sects 0 means 4.
  assert.equal(
    parseX86SetupHeader(fakeKernel({ setupSects: 0 })).setupSects,
    4,
  );
});

Deno.test("parseX86SetupHeader() rejects garbage, truncated and old files", () => {
  assert.throws(
    () => parseX86SetupHeader(new Uint8Array(100)),
    /^Error: Cannot load kernel: file of 100 bytes is too short/,
  );
  const random = new Uint8Array(0x4000);
  crypto.getRandomValues(random);
  random.set([0, 0, 0, 0], 0x202);
  assert.throws(
    () => parseX86SetupHeader(random),
    {
      message:
        'Cannot load kernel: not a bzImage (missing "HdrS" magic at 0x202)',
    },
  );
  const noFlag = fakeKernel();
  noFlag[0x1fe] = 0;
  assert.throws(() => parseX86SetupHeader(noFlag), /boot_flag/);
  assert.throws(
    () => parseX86SetupHeader(fakeKernel({ version: 0x020a })),
    /boot protocol 2\.10 is older than 2\.12/,
  );
  assert.throws(
    () => parseX86SetupHeader(fakeKernel({ xloadflags: 0 })),
    /XLF_KERNEL_64/,
  );
  assert.throws(
    () => parseX86SetupHeader(fakeKernel().subarray(0, 0x240)),
    /setup header is truncated/,
  );
  assert.throws(
    () => parseX86SetupHeader(fakeKernel().subarray(0, 0xa00)),
    /ends before the protected-mode kernel/,
  );
});

Deno.test("buildX86Boot() fills the zero page at its documented offsets", () => {
  const kernel = fakeKernel();
  const initrd = new Uint8Array(0x1800).fill(7);
  const acpiTables = buildAcpiTables({ cpus: 2 });
  const plan = buildX86Boot(kernel, {
    memoryBytes: 256n * MIB,
    cmdline: "console=ttyS0 panic=-1",
    initrd,
    cpus: 2,
    acpiTables,
  });
  const zp = writeAt(plan, ZERO_PAGE_ADDR);
  const z = view(zp);
  assert.equal(zp.length, 4096);
  // Setup header copied from the file (boot_flag, "HdrS", version).
  assert.equal(z.getUint16(0x1fe, true), 0xaa55);
  assert.equal(z.getUint32(0x202, true), 0x53726448);
  assert.equal(z.getUint16(0x206, true), 0x020f);
  assert.equal(z.getUint8(0x210), 0xff, "type_of_loader");
  assert.equal(z.getUint8(0x211), 0x81, "loadflags LOADED_HIGH|CAN_USE_HEAP");
  assert.equal(z.getUint32(0x228, true), Number(CMDLINE_ADDR), "cmd_line_ptr");
  assert.equal(z.getBigUint64(0x070, true), ACPI_TABLES_ADDR, "acpi_rsdp_addr");

  // Initrd: page-aligned, at the top of RAM (256 MiB < initrd_addr_max).
  const ramdiskImage = z.getUint32(0x218, true);
  assert.equal(z.getUint32(0x21c, true), initrd.length, "ramdisk_size");
  assert.equal(ramdiskImage % 4096, 0);
  assert.equal(BigInt(ramdiskImage), 256n * MIB - 0x2000n);
  assert.deepEqual(plan.initrd, { addr: 256n * MIB - 0x2000n, size: 0x1800n });
  assert.equal(writeAt(plan, BigInt(ramdiskImage)), initrd);

  // e820: RAM below the EBDA, reserved 640K-1M, RAM 1M-256M.
  assert.equal(z.getUint8(0x1e8), 3, "e820_entries");
  const e820 = [0, 1, 2].map((i) => ({
    addr: z.getBigUint64(0x2d0 + 20 * i, true),
    size: z.getBigUint64(0x2d0 + 20 * i + 8, true),
    type: z.getUint32(0x2d0 + 20 * i + 16, true),
  }));
  assert.deepEqual(e820, [
    { addr: 0n, size: 0x9fc00n, type: 1 },
    { addr: 0x9fc00n, size: 0x100000n - 0x9fc00n, type: 2 },
    { addr: 0x100000n, size: 255n * MIB, type: 1 },
  ]);

  // Command line, NUL-terminated.
  assert.equal(
    new TextDecoder().decode(writeAt(plan, CMDLINE_ADDR)),
    "console=ttyS0 panic=-1\0",
  );
  // Kernel at pref_address, without the setup sectors.
  assert.equal(plan.kernelAddr, 0x1000000n);
  assert.deepEqual(writeAt(plan, 0x1000000n), kernel.subarray(0xa00));
  // ACPI blobs are part of the writes.
  for (const b of acpiTables.blobs) {
    assert.equal(writeAt(plan, b.addr), b.bytes);
  }
});

Deno.test("buildX86Boot() identity-maps 4 GiB and sets up long mode", () => {
  const plan = buildX86Boot(fakeKernel(), {
    memoryBytes: 128n * MIB,
    cmdline: "",
    cpus: 1,
  });
  const pml4 = view(writeAt(plan, PML4_ADDR));
  assert.equal(pml4.getBigUint64(0, true), PDPT_ADDR | 3n);
  assert.equal(pml4.getBigUint64(8, true), 0n);
  const pdpt = view(writeAt(plan, PDPT_ADDR));
  for (let i = 0; i < 4; i++) {
    assert.equal(
      pdpt.getBigUint64(8 * i, true),
      PD_ADDR + BigInt(i) * 4096n | 3n,
    );
  }
  assert.equal(pdpt.getBigUint64(32, true), 0n);
  const pds = view(writeAt(plan, PD_ADDR));
  assert.equal(pds.byteLength, 4 * 4096);
  assert.equal(pds.getBigUint64(0, true), 0x83n);
  assert.equal(pds.getBigUint64(8, true), 0x200000n | 0x83n);
  assert.equal(
    pds.getBigUint64(pds.byteLength - 8, true),
    4n * GIB - 0x200000n | 0x83n,
  );

  const gdt = view(writeAt(plan, GDT_ADDR));
  assert.equal(gdt.getBigUint64(0x00, true), 0n);
  assert.equal(gdt.getBigUint64(0x10, true), 0x00af9b000000ffffn);
  assert.equal(gdt.getBigUint64(0x18, true), 0x00cf93000000ffffn);
  assert.equal(gdt.getBigUint64(0x20, true), 0x00008b0000000067n);

  const { regs, sregs } = plan.cpu;
  assert.equal(regs.rip, 0x1000200n);
  assert.equal(regs.rsi, ZERO_PAGE_ADDR);
  assert.equal(regs.rflags, 2n);
  assert.equal(sregs.cr3, PML4_ADDR);
  assert.equal(sregs.cr0, 0x80000011n);
  assert.equal(sregs.cr4, 0x20n);
  assert.equal(sregs.efer, 0x500n);
  assert.deepEqual(sregs.gdt, { base: GDT_ADDR, limit: 47 });
  assert.deepEqual(sregs.idt, { base: 0n, limit: 0 });
  assert.equal(sregs.cs.selector, 0x10);
  assert.ok(sregs.cs.l && !sregs.cs.db && sregs.cs.present && sregs.cs.g);
  assert.equal(sregs.cs.type, 0xb);
  for (const s of [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
    assert.equal(s.selector, 0x18);
    assert.equal(s.type, 0x3);
  }
  // The segment registers and the GDT agree.
  assert.equal(encodeGdtEntry(sregs.cs), gdt.getBigUint64(0x10, true));
  assert.equal(encodeGdtEntry(sregs.ss), gdt.getBigUint64(0x18, true));
  assert.equal(encodeGdtEntry(sregs.tr), gdt.getBigUint64(0x20, true));
});

Deno.test("buildX86Boot() keeps writes disjoint and below the RAM end", () => {
  const plan = buildX86Boot(fakeKernel(), {
    memoryBytes: 64n * MIB,
    cmdline: "x",
    initrd: new Uint8Array(10 * 1024 * 1024),
    cpus: 1,
    acpiTables: buildAcpiTables({ cpus: 1 }),
  });
  const sorted = [...plan.writes].sort((a, b) => (a.addr < b.addr ? -1 : 1));
  let end = 0n;
  for (const w of sorted) {
    assert.ok(w.addr >= end);
    end = w.addr + BigInt(w.bytes.length);
  }
  assert.ok(end <= 64n * MIB);
  assert.ok((plan.initrd?.addr ?? 0n) >= plan.kernelEnd);
});

Deno.test("buildX86Boot() caps the initrd at initrd_addr_max and splits RAM", () => {
  const plan = buildX86Boot(fakeKernel(), {
    memoryBytes: 5n * GIB,
    cmdline: "",
    initrd: new Uint8Array(4096),
    cpus: 1,
  });
  assert.equal(plan.initrd?.addr, 0x80000000n - 4096n);
  assert.deepEqual(plan.e820.slice(2), [
    { addr: 0x100000n, size: 3n * GIB - 0x100000n, type: 1 },
    { addr: 4n * GIB, size: 2n * GIB, type: 1 },
  ]);
});

Deno.test("buildX86Boot() explains what does not fit", () => {
  assert.throws(
    () =>
      buildX86Boot(fakeKernel(), {
        memoryBytes: 16n * MIB,
        cmdline: "",
        cpus: 1,
      }),
    /^Error: Cannot load kernel: kernel needs guest RAM up to 0x1800000/,
  );
  assert.throws(
    () =>
      buildX86Boot(fakeKernel({ cmdlineSize: 10 }), {
        memoryBytes: 64n * MIB,
        cmdline: "a".repeat(11),
        cpus: 1,
      }),
    /command line of 11 bytes exceeds the kernel's limit of 10/,
  );
  assert.throws(
    () =>
      buildX86Boot(fakeKernel(), {
        memoryBytes: 64n * MIB,
        cmdline: "",
        initrd: new Uint8Array(60 * 1024 * 1024),
        cpus: 1,
      }),
    /initrd of 62914560 bytes does not fit/,
  );
  assert.throws(
    () =>
      buildX86Boot(fakeKernel(), {
        memoryBytes: 64n * MIB,
        cmdline: "",
        cpus: 1,
        acpiTables: buildAcpiTables({ cpus: 1, tablesAddr: 0x200000n }),
      }),
    /ACPI table at 0x200000 is not in e820-reserved memory/,
  );
  assert.throws(
    () => e820Map(512n * 1024n),
    /ends below 1 MiB/,
  );
});

Deno.test("buildX86Boot() loads a non-relocatable kernel at 1 MiB", () => {
  const plan = buildX86Boot(fakeKernel({ relocatable: false }), {
    memoryBytes: 64n * MIB,
    cmdline: "",
    cpus: 1,
  });
  assert.equal(plan.kernelAddr, 0x100000n);
  assert.equal(plan.cpu.regs.rip, 0x100200n);
  assert.equal(plan.kernelEnd, 0x1800000n); // runs at pref_address + init_size
});

Deno.test("buildX86Boot() plans the default kernel (Debian's cloud kernel)", async (t) => {
  if (
    !needTool(t, "apt-get", "the default kernel comes from Debian's packages")
  ) return;
  const kernel = await Deno.readFile((await ensureKernel()).image);
  const hdr = parseX86SetupHeader(kernel);
  assert.ok(hdr.version >= 0x020f);
  assert.ok(hdr.relocatable);
  const plan = buildX86Boot(kernel, {
    memoryBytes: 512n * MIB,
    cmdline: "console=ttyS0 reboot=k panic=-1",
    cpus: 2,
    initrd: new Uint8Array(1 << 20),
    acpiTables: buildAcpiTables({ cpus: 2 }),
  });
  assert.equal(plan.kernelAddr, hdr.prefAddress);
  assert.ok(plan.initrd && plan.initrd.addr >= plan.kernelEnd);
  await t.step("entry is the 64-bit entry point", () => {
    assert.equal(plan.cpu.regs.rip, hdr.prefAddress + 0x200n);
  });
});
