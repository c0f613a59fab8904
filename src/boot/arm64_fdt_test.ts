import assert from "node:assert/strict";
import { decompile, dtc } from "./_dtc_test_util.ts";
import { needTool } from "../../tests/_gate.ts";
import {
  ARM64_GIC_REDISTRIBUTOR_BYTES,
  ARM64_LAYOUT,
  arm64CpuMpidr,
  type Arm64FdtConfig,
  arm64VirtioMmioWindow,
  buildArm64Fdt,
} from "./arm64_fdt.ts";

const WHY =
  "the arm64 device tree is checked by decompiling it (apt-get install device-tree-compiler)";

/** The lines of one node's body (without nested nodes' closing), by its opening line. */
function nodeLines(dts: string[], opening: string): string[] {
  const start = dts.indexOf(`${opening} {`);
  assert.ok(start >= 0, `no node "${opening}" in:\n${dts.join("\n")}`);
  const end = dts.indexOf("};", start);
  return dts.slice(start + 1, end);
}

const CONFIG: Arm64FdtConfig = {
  memoryBytes: 512n << 20n,
  cpus: 2,
  cmdline: "console=ttyS0 earlycon panic=-1",
  initrd: { addr: 0x4400_0000n, size: 0x10_0000n },
  virtioMmio: [
    arm64VirtioMmioWindow(0),
    { ...arm64VirtioMmioWindow(1), trigger: "level" },
  ],
};

Deno.test("buildArm64Fdt() decompiles with dtc to the expected tree", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  assert.deepEqual(await decompile(buildArm64Fdt(CONFIG)), [
    "/dts-v1/;",
    "/ {",
    "#address-cells = <0x2>;",
    "#size-cells = <0x2>;",
    'compatible = "initx,virt", "linux,dummy-virt";',
    'model = "initx virt";',
    "interrupt-parent = <0x1>;",
    "chosen {",
    'bootargs = "console=ttyS0 earlycon panic=-1";',
    'stdout-path = "/serial@9000000";',
    "linux,initrd-start = <0x0 0x44000000>;",
    "linux,initrd-end = <0x0 0x44100000>;",
    "};",
    "memory@40000000 {",
    'device_type = "memory";',
    "reg = <0x0 0x40000000 0x0 0x20000000>;",
    "};",
    "cpus {",
    "#address-cells = <0x1>;",
    "#size-cells = <0x0>;",
    "cpu@0 {",
    'device_type = "cpu";',
    'compatible = "arm,arm-v8";',
    "reg = <0x0>;",
    'enable-method = "psci";',
    "};",
    "cpu@1 {",
    'device_type = "cpu";',
    'compatible = "arm,arm-v8";',
    "reg = <0x1>;",
    'enable-method = "psci";',
    "};",
    "};",
    "psci {",
    'compatible = "arm,psci-0.2", "arm,psci";',
    'method = "hvc";',
    "cpu_suspend = <0xc4000001>;",
    "cpu_off = <0x84000002>;",
    "cpu_on = <0xc4000003>;",
    "migrate = <0xc4000005>;",
    "};",
    "intc@8000000 {",
    'compatible = "arm,gic-v3";',
    "#interrupt-cells = <0x3>;",
    "#address-cells = <0x0>;",
    "interrupt-controller;",
    // Distributor 64 KiB, then 2 vCPUs x 128 KiB of redistributors.
    "reg = <0x0 0x8000000 0x0 0x10000 0x0 0x80a0000 0x0 0x40000>;",
    "phandle = <0x1>;",
    "};",
    "timer {",
    'compatible = "arm,armv8-timer";',
    // PPI 13, 14, 11, 10, level-high.
    "interrupts = <0x1 0xd 0x4 0x1 0xe 0x4 0x1 0xb 0x4 0x1 0xa 0x4>;",
    "always-on;",
    "};",
    "serial@9000000 {",
    'compatible = "ns16550a";',
    "reg = <0x0 0x9000000 0x0 0x1000>;",
    "interrupts = <0x0 0x1 0x1>;",
    "clock-frequency = <0x1c2000>;",
    "};",
    "virtio_mmio@a000000 {",
    'compatible = "virtio,mmio";',
    "reg = <0x0 0xa000000 0x0 0x1000>;",
    "interrupts = <0x0 0x10 0x1>;",
    "dma-coherent;",
    "};",
    "virtio_mmio@a001000 {",
    'compatible = "virtio,mmio";',
    "reg = <0x0 0xa001000 0x0 0x1000>;",
    "interrupts = <0x0 0x11 0x4>;",
    "dma-coherent;",
    "};",
    "};",
  ]);
});

Deno.test("buildArm64Fdt() output survives a dtc dtb-to-dtb round trip without warnings", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  const configs: Arm64FdtConfig[] = [
    CONFIG,
    { memoryBytes: 64n << 20n, cpus: 1, cmdline: "" },
    {
      memoryBytes: 4n << 30n,
      cpus: 123,
      cmdline: "console=ttyS0",
      virtioMmio: Array.from(
        { length: 32 },
        (_, i) => arm64VirtioMmioWindow(i),
      ),
      rngSeed: Uint8Array.of(1, 2, 3, 4, 5, 6, 7),
    },
  ];
  for (const config of configs) {
    const dtb = buildArm64Fdt(config);
    // No -W flag is needed: dtc's default checks all pass.
    const r = await dtc(["-I", "dtb", "-O", "dtb"], dtb);
    assert.ok(r.success, `dtc -I dtb -O dtb failed:\n${r.stderr}`);
    assert.equal(r.stderr, "", `dtc warned for ${config.cpus} vCPUs`);
    assert.deepEqual(await decompile(r.output), await decompile(dtb));
  }
});

Deno.test("buildArm64Fdt() leaves out the initrd and seed when there are none", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  const plain = await decompile(
    buildArm64Fdt({ memoryBytes: 64n << 20n, cpus: 1, cmdline: "quiet" }),
  );
  assert.deepEqual(nodeLines(plain, "chosen"), [
    'bootargs = "quiet";',
    'stdout-path = "/serial@9000000";',
  ]);
  assert.ok(!plain.some((l) => l.startsWith("virtio_mmio@")));
  const seeded = await decompile(
    buildArm64Fdt({
      memoryBytes: 64n << 20n,
      cpus: 1,
      cmdline: "quiet",
      rngSeed: Uint8Array.of(0xde, 0xad, 0xbe),
    }),
  );
  assert.ok(nodeLines(seeded, "chosen").includes("rng-seed = [de ad be];"));
});

Deno.test("buildArm64Fdt() names cpu nodes by MPIDR and sizes the redistributors", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  const dts = await decompile(
    buildArm64Fdt({ memoryBytes: 64n << 20n, cpus: 17, cmdline: "" }),
  );
  const names = dts.filter((l) => l.startsWith("cpu@"));
  assert.equal(names.length, 17);
  assert.equal(names[15], "cpu@f {");
  assert.equal(names[16], "cpu@100 {");
  assert.ok(nodeLines(dts, "cpu@100").includes("reg = <0x100>;"));
  const redistBytes = (17n * ARM64_GIC_REDISTRIBUTOR_BYTES).toString(16);
  assert.ok(
    nodeLines(dts, "intc@8000000").includes(
      `reg = <0x0 0x8000000 0x0 0x10000 0x0 0x80a0000 0x0 0x${redistBytes}>;`,
    ),
  );
});

Deno.test("buildArm64Fdt() takes every address and interrupt from the layout", async (t) => {
  if (!needTool(t, "dtc", WHY)) return;
  const layout = {
    ...ARM64_LAYOUT,
    ramBase: 0x8000_0000n,
    gicDistributor: { base: 0x2f00_0000n, size: 0x1_0000n },
    gicRedistributors: { base: 0x2f10_0000n, size: 0x10_0000n },
    uart: {
      ...ARM64_LAYOUT.uart,
      base: 0x1c09_0000n,
      spi: 5,
      trigger: "level" as const,
    },
  };
  const dts = await decompile(
    buildArm64Fdt({
      memoryBytes: 64n << 20n,
      cpus: 1,
      cmdline: "",
      virtioMmio: [arm64VirtioMmioWindow(3, layout)],
      layout,
    }),
  );
  assert.ok(
    nodeLines(dts, "chosen").includes('stdout-path = "/serial@1c090000";'),
  );
  assert.ok(
    nodeLines(dts, "memory@80000000").includes(
      "reg = <0x0 0x80000000 0x0 0x4000000>;",
    ),
  );
  assert.ok(
    nodeLines(dts, "intc@2f000000").includes(
      "reg = <0x0 0x2f000000 0x0 0x10000 0x0 0x2f100000 0x0 0x20000>;",
    ),
  );
  assert.ok(
    nodeLines(dts, "serial@1c090000").includes("interrupts = <0x0 0x5 0x4>;"),
  );
  assert.ok(
    nodeLines(dts, "virtio_mmio@a003000").includes(
      "interrupts = <0x0 0x13 0x1>;",
    ),
  );
});

Deno.test("buildArm64Fdt() writes a version-17 blob within the 2 MiB limit", () => {
  const dtb = buildArm64Fdt(CONFIG);
  const view = new DataView(dtb.buffer);
  assert.equal(view.getUint32(0), 0xd00dfeed);
  assert.equal(view.getUint32(4), dtb.length);
  assert.equal(view.getUint32(20), 17);
  assert.equal(view.getUint32(28), 0); // boot_cpuid_phys: vCPU 0's MPIDR
  assert.throws(
    () =>
      buildArm64Fdt({
        ...CONFIG,
        rngSeed: new Uint8Array(2 * 1024 * 1024),
      }),
    /Cannot encode devicetree: blob of \d+ bytes exceeds the limit of 2097152 bytes/,
  );
});

Deno.test("buildArm64Fdt() refuses a machine that cannot be", () => {
  const cases: [Partial<Arm64FdtConfig>, RegExp][] = [
    [
      { cpus: 0 },
      /cpu count 0 is outside 1\.\.123 \(the room for GIC redistributors\)/,
    ],
    [{ cpus: 124 }, /cpu count 124 is outside 1\.\.123/],
    [{ cpus: 1.5 }, /cpu count 1\.5 is outside/],
    [{ memoryBytes: 0 }, /memory size 0 is not a positive multiple of 64 KiB/],
    [
      { memoryBytes: (64n << 20n) + 4096n },
      /is not a positive multiple of 64 KiB/,
    ],
    [
      { memoryBytes: 256n << 30n },
      /memory size 274877906944 exceeds the layout's 273804165120 bytes/,
    ],
    [{ cmdline: "a\0b" }, /command line contains a NUL byte/],
    [
      { cmdline: "x".repeat(2048) },
      /command line of 2048 bytes exceeds the kernel's limit of 2047/,
    ],
    [
      { initrd: { addr: 0x3000_0000n, size: 0x1000n } },
      /initrd at 0x30000000 of 4096 bytes is not inside RAM 0x40000000\.\.0x60000000/,
    ],
    [
      { initrd: { addr: 0x5fff_f000n, size: 0x2000n } },
      /initrd at 0x5ffff000 of 8192 bytes is not inside RAM/,
    ],
    [
      { initrd: { addr: 0x4400_0000n, size: 0n } },
      /initrd at 0x44000000 of 0 bytes/,
    ],
    [
      { virtioMmio: [{ ...arm64VirtioMmioWindow(0), spi: 1 }] },
      /virtio-mmio device 0 has SPI 1, already used by the UART/,
    ],
    [
      {
        virtioMmio: [arm64VirtioMmioWindow(0), {
          ...arm64VirtioMmioWindow(1),
          spi: 16,
        }],
      },
      /virtio-mmio device 1 has SPI 16, already used by virtio-mmio device 0/,
    ],
    [
      { virtioMmio: [{ ...arm64VirtioMmioWindow(0), spi: 988 }] },
      /virtio-mmio device 0 has SPI 988, outside 0\.\.987/,
    ],
    [
      { virtioMmio: [{ base: 0x0900_0800n, size: 0x1000n, spi: 20 }] },
      /virtio-mmio device 0 at 0x9000800 overlaps the UART at 0x9000000\.\.0x9001000/,
    ],
    [
      { virtioMmio: [{ base: 0x080c_0000n, size: 0x1000n, spi: 20 }] },
      /virtio-mmio device 0 at 0x80c0000 overlaps the GIC redistributors at 0x80a0000\.\.0x80e0000/,
    ],
    [
      { virtioMmio: [{ base: 0x5000_0000n, size: 0x1000n, spi: 20 }] },
      /virtio-mmio device 0 at 0x50000000 overlaps RAM/,
    ],
    [
      {
        virtioMmio: [arm64VirtioMmioWindow(0), {
          ...arm64VirtioMmioWindow(0),
          spi: 40,
        }],
      },
      /virtio-mmio device 1 at 0xa000000 overlaps virtio-mmio device 0|virtio-mmio device 0 at 0xa000000 overlaps virtio-mmio device 1/,
    ],
    [
      { virtioMmio: [{ base: 0x0b00_0000n, size: 0n, spi: 20 }] },
      /virtio-mmio device 0 has an empty window/,
    ],
  ];
  for (const [change, message] of cases) {
    assert.throws(
      () => buildArm64Fdt({ ...CONFIG, ...change }),
      (e: Error) =>
        e.message.startsWith("Cannot build arm64 device tree: ") &&
        message.test(e.message),
      `${JSON.stringify(change, (_, v) => typeof v === "bigint" ? `${v}` : v)}`,
    );
  }
});

Deno.test("arm64VirtioMmioWindow() steps 4 KiB windows and SPIs from the layout", () => {
  assert.deepEqual(arm64VirtioMmioWindow(0), {
    base: 0x0a00_0000n,
    size: 0x1000n,
    spi: 16,
  });
  assert.deepEqual(arm64VirtioMmioWindow(31), {
    base: 0x0a01_f000n,
    size: 0x1000n,
    spi: 47,
  });
  assert.throws(
    () => arm64VirtioMmioWindow(32),
    /Cannot place virtio-mmio device: index 32 is outside 0\.\.31/,
  );
  assert.throws(() => arm64VirtioMmioWindow(-1), /index -1 is outside/);
  // All 32 fit the machine together.
  buildArm64Fdt({
    ...CONFIG,
    virtioMmio: Array.from({ length: 32 }, (_, i) => arm64VirtioMmioWindow(i)),
  });
});

Deno.test("arm64CpuMpidr() packs the vCPU index into Aff0..Aff2 like KVM", () => {
  assert.equal(arm64CpuMpidr(0), 0);
  assert.equal(arm64CpuMpidr(15), 0xf);
  assert.equal(arm64CpuMpidr(16), 0x100);
  assert.equal(arm64CpuMpidr(17), 0x101);
  assert.equal(arm64CpuMpidr(0x1234), 0x1_2304);
  assert.throws(() => arm64CpuMpidr(-1), /Cannot name vCPU -1/);
  assert.throws(() => arm64CpuMpidr(1 << 20), /Cannot name vCPU 1048576/);
});

Deno.test("ARM64_LAYOUT is frozen and its regions do not overlap", () => {
  assert.ok(Object.isFrozen(ARM64_LAYOUT));
  assert.ok(Object.isFrozen(ARM64_LAYOUT.uart));
  assert.throws(() => {
    (ARM64_LAYOUT.uart as { base: bigint }).base = 0n;
  }, TypeError);
  const l = ARM64_LAYOUT;
  const regions = [
    l.gicDistributor,
    l.gicRedistributors,
    l.uart,
    {
      base: l.virtioMmio.base,
      size: l.virtioMmio.stride * BigInt(l.virtioMmio.count),
    },
    { base: l.ramBase, size: l.ramMaxBytes },
  ].sort((a, b) => (a.base < b.base ? -1 : 1));
  for (let i = 1; i < regions.length; i++) {
    assert.ok(
      regions[i - 1]!.base + regions[i - 1]!.size <= regions[i]!.base,
      `region at 0x${regions[i]!.base.toString(16)} overlaps its predecessor`,
    );
  }
  // 123 vCPUs of redistributors, as on QEMU virt.
  assert.equal(l.gicRedistributors.size / ARM64_GIC_REDISTRIBUTOR_BYTES, 123n);
});
