import assert from "node:assert/strict";
import {
  acpiChecksum,
  amlInteger,
  amlNameString,
  amlPkgLength,
  buildAcpiTables,
  buildDsdt,
  buildMadt,
  FADT_FLAG_HW_REDUCED_ACPI,
  isPowerOffWrite,
  S5_SLP_TYP,
  SLEEP_CONTROL_SLP_EN,
  type VirtioMmioAcpiDevice,
} from "./acpi.ts";
import {
  ACPI_RESET_PORT,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
  ACPI_TABLES_ADDR,
  virtioMmioWindow,
} from "./layout.ts";
import { needTool } from "../../tests/_gate.ts";
import { withTempDir } from "../../tests/_util.ts";

const DEVICES: VirtioMmioAcpiDevice[] = [
  virtioMmioWindow(0),
  virtioMmioWindow(1),
  { ...virtioMmioWindow(2), trigger: "level" },
];

function byteSum(bytes: Uint8Array): number {
  return bytes.reduce((s, b) => (s + b) & 0xff, 0);
}

function signature(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes.subarray(0, 4));
}

/** Disassembles each table with `iasl -d`; returns the .dsl text by signature. */
async function disassemble(
  tables: Uint8Array[],
): Promise<Map<string, string>> {
  return await withTempDir(async (dir) => {
    const out = new Map<string, string>();
    for (const t of tables) {
      const name = signature(t).toLowerCase();
      await Deno.writeFile(`${dir}/${name}.dat`, t);
      const result = await new Deno.Command("iasl", {
        args: ["-d", `${name}.dat`],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const log = new TextDecoder().decode(result.stdout) +
        new TextDecoder().decode(result.stderr);
      assert.ok(result.success, `iasl -d ${name}.dat failed:\n${log}`);
      assert.doesNotMatch(
        log,
        /error|warning/i,
        `iasl -d ${name}.dat:\n${log}`,
      );
      out.set(signature(t), await Deno.readTextFile(`${dir}/${name}.dsl`));
    }
    return out;
  });
}

Deno.test("amlPkgLength() encodes one to four bytes counting itself", () => {
  assert.deepEqual(amlPkgLength(0), Uint8Array.of(1));
  assert.deepEqual(amlPkgLength(62), Uint8Array.of(63));
  // 63 + 2 = 65 = 0x41: lead 0x41, next byte 0x04.
  assert.deepEqual(amlPkgLength(63), Uint8Array.of(0x41, 0x04));
  assert.deepEqual(amlPkgLength(100), Uint8Array.of(0x46, 0x06));
  // 0x1000 + 3 = 0x1003.
  assert.deepEqual(amlPkgLength(0x1000), Uint8Array.of(0x83, 0x00, 0x01));
  assert.equal(amlPkgLength(0x100000).length, 4);
  assert.throws(() => amlPkgLength(1 << 28), /Cannot encode AML package/);
});

Deno.test("amlInteger() picks the shortest encoding", () => {
  assert.deepEqual(amlInteger(0), Uint8Array.of(0x00));
  assert.deepEqual(amlInteger(1), Uint8Array.of(0x01));
  assert.deepEqual(amlInteger(5), Uint8Array.of(0x0a, 5));
  assert.deepEqual(amlInteger(0x1234), Uint8Array.of(0x0b, 0x34, 0x12));
  assert.deepEqual(
    amlInteger(0xd0000000n),
    Uint8Array.of(0x0c, 0, 0, 0, 0xd0),
  );
  assert.equal(amlInteger(1n << 40n)[0], 0x0e);
  assert.throws(() => amlInteger(-1), /not a u64/);
});

Deno.test("amlNameString() pads segments and handles root and paths", () => {
  assert.deepEqual(amlNameString("_HID"), new TextEncoder().encode("_HID"));
  assert.deepEqual(
    amlNameString("\\_S5"),
    Uint8Array.of(0x5c, ...new TextEncoder().encode("_S5_")),
  );
  assert.deepEqual(
    amlNameString("\\_SB.VR00"),
    Uint8Array.of(0x5c, 0x2e, ...new TextEncoder().encode("_SB_VR00")),
  );
  assert.equal(amlNameString("A.B.C")[0], 0x2f);
  assert.throws(() => amlNameString("toolong"), /not a NameSeg/);
});

Deno.test("acpiChecksum() makes the byte sum zero", () => {
  const t = Uint8Array.of(1, 2, 0, 250);
  acpiChecksum(t, 2);
  assert.equal(byteSum(t), 0);
});

Deno.test("buildAcpiTables() places checksummed tables after the RSDP", () => {
  const { rsdpAddr, blobs } = buildAcpiTables({
    cpus: 2,
    virtioMmio: DEVICES,
  });
  assert.equal(rsdpAddr, ACPI_TABLES_ADDR);
  const [rsdp, xsdt, fadt, madt, dsdt] = blobs;
  assert.ok(rsdp && xsdt && fadt && madt && dsdt);
  assert.equal(rsdp.addr, rsdpAddr);

  // RSDP: signature, revision 2, both checksums, XSDT pointer.
  const rv = new DataView(rsdp.bytes.buffer);
  assert.equal(new TextDecoder().decode(rsdp.bytes.subarray(0, 8)), "RSD PTR ");
  assert.equal(rsdp.bytes[15], 2);
  assert.equal(byteSum(rsdp.bytes.subarray(0, 20)), 0);
  assert.equal(byteSum(rsdp.bytes), 0);
  assert.equal(rv.getUint32(20, true), 36);
  assert.equal(rv.getBigUint64(24, true), xsdt.addr);

  // XSDT lists FADT and MADT; FADT points at the DSDT.
  const xv = new DataView(xsdt.bytes.buffer);
  assert.equal(xv.getBigUint64(36, true), fadt.addr);
  assert.equal(xv.getBigUint64(44, true), madt.addr);
  const fv = new DataView(fadt.bytes.buffer);
  assert.equal(fv.getBigUint64(140, true), dsdt.addr);
  assert.equal(fv.getUint32(112, true) & FADT_FLAG_HW_REDUCED_ACPI, 1 << 20);
  assert.equal(fv.getBigUint64(248, true), BigInt(ACPI_SLEEP_CONTROL_PORT));

  let end = 0n;
  for (const b of blobs) {
    assert.ok(b.addr >= end, "tables overlap");
    assert.equal(b.addr % 16n, 0n);
    end = b.addr + BigInt(b.bytes.length);
    if (b !== rsdp) {
      assert.equal(byteSum(b.bytes), 0, `${signature(b.bytes)} checksum`);
      assert.equal(
        new DataView(b.bytes.buffer).getUint32(4, true),
        b.bytes.length,
      );
    }
  }
  assert.ok(end <= 0x100000n);
});

Deno.test("buildMadt() adds the IRQ0 override only when asked", () => {
  const plain = buildMadt({ cpus: 1 });
  const pc = buildMadt({ cpus: 1, isaIrq0ToGsi2: true });
  assert.equal(pc.length - plain.length, 10);
  assert.equal(pc[pc.length - 16], 2, "interrupt source override entry");
});

Deno.test("buildAcpiTables() keeps tables inside the BIOS area", () => {
  const many = Array.from({ length: 256 }, (_, i) => ({
    base: 0xd0000000n + BigInt(i) * 0x1000n,
    size: 0x1000n,
    gsi: 16,
  }));
  assert.throws(
    () =>
      buildAcpiTables({
        cpus: 1,
        virtioMmio: many,
        tablesAddr: 0xffe00n,
      }),
    /run past the BIOS area at 0x100000/,
  );
});

Deno.test("buildMadt() rejects impossible CPU counts", () => {
  assert.throws(() => buildMadt({ cpus: 0 }), /cpu count 0/);
  assert.throws(() => buildMadt({ cpus: 256 }), /cpu count 256/);
});

Deno.test("buildDsdt() rejects windows above 4 GiB and bad GSIs", () => {
  assert.throws(
    () => buildDsdt([{ base: 1n << 32n, size: 0x1000n, gsi: 16 }]),
    /not below 4 GiB/,
  );
  assert.throws(
    () => buildDsdt([{ base: 0xd0000000n, size: 0x1000n, gsi: -1 }]),
    /invalid GSI -1/,
  );
});

Deno.test("isPowerOffWrite() matches what Linux writes for S5", () => {
  assert.ok(isPowerOffWrite((S5_SLP_TYP << 2) | SLEEP_CONTROL_SLP_EN));
  assert.ok(!isPowerOffWrite(S5_SLP_TYP << 2)); // no SLP_EN
  assert.ok(!isPowerOffWrite((3 << 2) | SLEEP_CONTROL_SLP_EN)); // S3
});

Deno.test("iasl -d accepts the tables and reads them back", async (t) => {
  if (!needTool(t, "iasl", "it disassembles the tables")) return;
  const { blobs } = buildAcpiTables({
    cpus: 3,
    virtioMmio: DEVICES,
    isaIrq0ToGsi2: true,
  });
  // The RSDP is not a table with a standard header; iasl does not take it.
  const dsl = await disassemble(blobs.slice(1).map((b) => b.bytes));

  const dsdt = dsl.get("DSDT") ?? "";
  assert.equal(dsdt.match(/Name \(_HID, "LNRO0005"\)/g)?.length, 3);
  for (const [n, dev] of DEVICES.entries()) {
    const hex = dev.base.toString(16).toUpperCase().padStart(8, "0");
    assert.match(dsdt, new RegExp(`Device \\(VR0${n}\\)`));
    assert.match(dsdt, new RegExp(`0x${hex},\\s+// Address Base`));
    assert.match(
      dsdt,
      new RegExp(
        `Interrupt \\(ResourceConsumer, ${
          dev.trigger === "level" ? "Level" : "Edge"
        }, ActiveHigh, Exclusive, ,, \\)\\s*\\{\\s*0x${
          dev.gsi.toString(16).toUpperCase().padStart(8, "0")
        },`,
      ),
    );
  }
  assert.match(dsdt, /0x00001000,\s+\/\/ Address Length/);
  assert.match(dsdt, /Name \(_UID, 0x02\)/);
  assert.match(
    dsdt,
    /Name \(\\_S5, Package \(0x04\)\s*\/\/ _S5_[^{]*\{\s*0x05,/,
  );

  const fadt = dsl.get("FACP") ?? "";
  assert.match(fadt, /Revision : 06/);
  assert.match(fadt, /Hardware Reduced \(V5\) : 1/);
  assert.match(fadt, /Reset Register Supported \(V2\) : 1/);
  const port = (p: number) => p.toString(16).toUpperCase().padStart(16, "0");
  assert.match(
    fadt,
    new RegExp(
      `Sleep Control Register : \\[Generic Address Structure\\][^]*?Space ID : 01 \\[SystemIO\\][^]*?Address : ${
        port(ACPI_SLEEP_CONTROL_PORT)
      }`,
    ),
  );
  assert.match(
    fadt,
    new RegExp(
      `Sleep Status Register[^]*?Address : ${port(ACPI_SLEEP_STATUS_PORT)}`,
    ),
  );
  assert.match(
    fadt,
    new RegExp(`Reset Register[^]*?Address : ${port(ACPI_RESET_PORT)}`),
  );

  const madt = dsl.get("APIC") ?? "";
  assert.equal(madt.match(/\[Processor Local APIC\]/g)?.length, 3);
  assert.match(madt, /Local Apic ID : 02/);
  assert.match(
    madt,
    /\[I\/O APIC\][^]*?Address : FEC00000[^]*?Interrupt : 00000000/,
  );
  assert.match(madt, /Local Apic Address : FEE00000/);
  assert.match(
    madt,
    /\[Interrupt Source Override\][^]*?Source : 00[^]*?Interrupt : 00000002/,
  );

  const xsdt = dsl.get("XSDT") ?? "";
  assert.match(xsdt, /ACPI Table Address {3}1 :/);
});

Deno.test("iasl recompiles the disassembled DSDT to the same AML", async (t) => {
  if (!needTool(t, "iasl", "it disassembles the tables")) return;
  const dsdt = buildDsdt(DEVICES);
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/dsdt.dat`, dsdt);
    const run = async (args: string[]) => {
      const r = await new Deno.Command("iasl", {
        args,
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stdout));
    };
    await run(["-d", "dsdt.dat"]);
    await run(["-on", "-p", "again", "dsdt.dsl"]); // -on: keep "\\_S5_" rooted
    const again = await Deno.readFile(`${dir}/again.aml`);
    // Headers differ in compiler ID/revision and checksum; the AML must not.
    assert.deepEqual(again.subarray(36), dsdt.subarray(36));
  });
});
