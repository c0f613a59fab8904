import assert from "node:assert/strict";
import {
  ACPI_TABLES_ADDR,
  CMDLINE_ADDR,
  CMDLINE_MAX_BYTES,
  EBDA_START,
  GDT_ADDR,
  GIB,
  guestRamRegions,
  IOAPIC_ADDR,
  MIB,
  PD_ADDR,
  PD_COUNT,
  PDPT_ADDR,
  PML4_ADDR,
  RAM_LOW_MAX_END,
  VIRTIO_MMIO_BASE,
  VIRTIO_MMIO_MAX_DEVICES,
  VIRTIO_MMIO_SIZE,
  virtioMmioWindow,
  ZERO_PAGE_ADDR,
} from "./layout.ts";

Deno.test("guestRamRegions() splits RAM around the 32-bit MMIO hole", () => {
  assert.deepEqual(guestRamRegions(512n * MIB), [
    { start: 0n, size: 512n * MIB },
  ]);
  assert.deepEqual(guestRamRegions(3n * GIB), [{ start: 0n, size: 3n * GIB }]);
  assert.deepEqual(guestRamRegions(5n * GIB), [
    { start: 0n, size: 3n * GIB },
    { start: 4n * GIB, size: 2n * GIB },
  ]);
  assert.throws(() => guestRamRegions(0n), /not a positive multiple of 4096/);
  assert.throws(() => guestRamRegions(4097n), /not a positive multiple/);
});

Deno.test("virtioMmioWindow() stays inside the MMIO hole below the IOAPIC", () => {
  assert.deepEqual(virtioMmioWindow(0), {
    base: VIRTIO_MMIO_BASE,
    size: VIRTIO_MMIO_SIZE,
    gsi: 16,
  });
  const last = virtioMmioWindow(VIRTIO_MMIO_MAX_DEVICES - 1);
  assert.ok(VIRTIO_MMIO_BASE >= RAM_LOW_MAX_END);
  assert.ok(last.base + last.size <= IOAPIC_ADDR);
  assert.ok(last.gsi < 24, "KVM's IOAPIC has 24 pins");
  assert.throws(() => virtioMmioWindow(VIRTIO_MMIO_MAX_DEVICES), /outside/);
  assert.throws(() => virtioMmioWindow(-1), /outside/);
});

Deno.test("boot structures below 1 MiB do not overlap", () => {
  const ranges: Array<[name: string, start: bigint, size: bigint]> = [
    ["gdt", GDT_ADDR, 0x100n],
    ["zero page", ZERO_PAGE_ADDR, 0x1000n],
    ["pml4", PML4_ADDR, 0x1000n],
    ["pdpt", PDPT_ADDR, 0x1000n],
    ["pd", PD_ADDR, BigInt(PD_COUNT) * 0x1000n],
    ["cmdline", CMDLINE_ADDR, BigInt(CMDLINE_MAX_BYTES)],
  ];
  ranges.sort((a, b) => (a[1] < b[1] ? -1 : 1));
  let end = 0x500n; // below: real-mode IVT and BIOS data area
  for (const [name, start, size] of ranges) {
    assert.ok(start >= end, `${name} overlaps`);
    end = start + size;
  }
  assert.ok(end <= EBDA_START);
  assert.ok(ACPI_TABLES_ADDR >= EBDA_START);
});
