import { deepEqual, equal, throws } from "node:assert/strict";
import { GuestMemory, GuestMemoryError } from "./memory.ts";

function twoRegions() {
  return new GuestMemory([
    { base: 0x1000n, bytes: new Uint8Array(0x100) },
    { base: 0x0n, bytes: new Uint8Array(0x100) },
  ]);
}

Deno.test("GuestMemory reads back what it writes, in every width, little-endian", () => {
  const mem = twoRegions();
  mem.setU64(0x1008n, 0x1122334455667788n);
  equal(mem.getU8(0x1008n), 0x88);
  equal(mem.getU16(0x1008n), 0x7788);
  equal(mem.getU32(0x1008n), 0x55667788);
  equal(mem.getU64(0x1008n), 0x1122334455667788n);
  equal(mem.size, 0x200n);
  deepEqual(mem.regions.map((r) => r.base), [0n, 0x1000n]);
});

Deno.test("GuestMemory read() and write() stop at a region's end and return the count", () => {
  const mem = twoRegions();
  equal(mem.write(0xfcn, new Uint8Array([1, 2, 3, 4, 5, 6])), 4);
  const dst = new Uint8Array(6);
  equal(mem.read(0xfcn, dst), 4);
  deepEqual([...dst], [1, 2, 3, 4, 0, 0]);
  equal(mem.read(0x500n, dst), 0);
});

Deno.test("GuestMemory readExact() and writeExact() throw with the counts and touch nothing", () => {
  const mem = twoRegions();
  const dst = new Uint8Array(8).fill(7);
  throws(() => mem.readExact(0xfcn, dst), (e) => {
    equal(e instanceof GuestMemoryError, true);
    const g = e as GuestMemoryError;
    equal(g.expected, 8);
    equal(g.completed, 4);
    equal(
      g.message,
      "Cannot read 8 bytes at guest address 0xfc: only 4 bytes are guest RAM",
    );
    return true;
  });
  deepEqual([...dst], [7, 7, 7, 7, 7, 7, 7, 7]);
  throws(
    () => mem.writeExact(0xfcn, new Uint8Array(8).fill(9)),
    GuestMemoryError,
  );
  equal(mem.getU32(0xfcn), 0);
});

Deno.test("GuestMemory rejects accesses outside RAM, across regions and overlapping regions", () => {
  const mem = twoRegions();
  throws(() => mem.getU32(0xfen), /Cannot read 4 bytes at guest address 0xfe/);
  throws(
    () => mem.setU8(0x200n, 1),
    /Cannot write 1 bytes at guest address 0x200/,
  );
  throws(() => mem.getU64(0xffff_ffff_ffff_fffcn), GuestMemoryError);
  equal(mem.slice(0xf0n, 0x20), undefined);
  throws(
    () =>
      new GuestMemory([{ base: 0n, bytes: new Uint8Array(16) }, {
        base: 8n,
        bytes: new Uint8Array(16),
      }]),
    /regions overlap/,
  );
});

Deno.test("GuestMemory.revoke() turns every later access into an error", () => {
  const mem = twoRegions();
  mem.revoke();
  throws(() => mem.getU8(0n), GuestMemoryError);
  equal(mem.slice(0n, 1), undefined);
  equal(mem.size, 0n);
});
