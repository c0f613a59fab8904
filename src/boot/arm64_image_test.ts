import assert from "node:assert/strict";
import {
  ARM64_DTB_MAX_BYTES,
  ARM64_IMAGE_MAGIC,
  type Arm64ImageHeader,
  detectArm64KernelFormat,
  parseArm64ImageHeader,
  placeArm64Boot,
  unpackArm64Kernel,
} from "./arm64_image.ts";

const MIB = 1024n * 1024n;
const GIB = 1024n * MIB;
const RAM_BASE = 0x4000_0000n;

/** A synthetic Image: a valid header, then a recognizable pattern. */
function fakeImage(
  fields: {
    textOffset?: bigint;
    imageSize?: bigint;
    flags?: bigint;
    magic?: number;
    res5?: number;
    length?: number;
  } = {},
): Uint8Array {
  const image = new Uint8Array(fields.length ?? 8192);
  for (let i = 64; i < image.length; i++) image[i] = (i * 7) & 0xff;
  const view = new DataView(image.buffer);
  view.setUint32(0, 0xfa405a4d, true); // "MZ" as code0, like an EFI-stub kernel
  view.setUint32(4, 0x14000000, true); // b .
  view.setBigUint64(8, fields.textOffset ?? 0n, true);
  view.setBigUint64(16, fields.imageSize ?? 0x200_0000n, true);
  view.setBigUint64(24, fields.flags ?? 0b1010n, true);
  view.setUint32(56, fields.magic ?? ARM64_IMAGE_MAGIC, true);
  view.setUint32(60, fields.res5 ?? 0x40, true);
  return image;
}

async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([new Uint8Array(data)]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** An EFI zboot executable around `payload`, compressed with `compression`. */
function fakeZboot(
  payload: Uint8Array,
  compression = "gzip",
  fields: { offset?: number; size?: number } = {},
): Uint8Array {
  const offset = 0x1000;
  const out = new Uint8Array(offset + payload.length + 0x100);
  const view = new DataView(out.buffer);
  out.set(new TextEncoder().encode("MZ"), 0);
  out.set(new TextEncoder().encode("zimg"), 4);
  view.setUint32(8, fields.offset ?? offset, true);
  view.setUint32(12, fields.size ?? payload.length, true);
  out.set(new TextEncoder().encode(compression), 24);
  view.setUint32(0x38, 0x818223cd, true); // LINUX_PE_MAGIC, not "ARM\x64"
  view.setUint32(0x3c, 0x40, true);
  out.set(payload, offset);
  return out;
}

function header(fields: Partial<Arm64ImageHeader> = {}): Arm64ImageHeader {
  return {
    textOffset: 0n,
    imageSize: 0x200_0000n,
    flags: 0b1010n,
    pageSize: 4096,
    placeAnywhere: true,
    peHeaderOffset: 0x40,
    fileBytes: 0x180_0000,
    ...fields,
  };
}

Deno.test("parseArm64ImageHeader() reads text_offset, image_size and flags", () => {
  const image = fakeImage({
    textOffset: 0x80000n,
    imageSize: 0x1234_0000n,
    flags: 0b1010n,
  });
  assert.deepEqual(parseArm64ImageHeader(image), {
    textOffset: 0x80000n,
    imageSize: 0x1234_0000n,
    flags: 0b1010n,
    pageSize: 4096,
    placeAnywhere: true,
    peHeaderOffset: 0x40,
    fileBytes: 8192,
  });
  const pages = [0n, 1n, 2n, 3n].map((bits) =>
    parseArm64ImageHeader(fakeImage({ flags: bits << 1n })).pageSize
  );
  assert.deepEqual(pages, [undefined, 4096, 16384, 65536]);
  assert.equal(
    parseArm64ImageHeader(fakeImage({ flags: 0b0010n })).placeAnywhere,
    false,
  );
  // Reserved flag bits (4-63) are left to future kernels, not refused.
  assert.equal(
    parseArm64ImageHeader(fakeImage({ flags: 0b1010n | (1n << 40n) })).flags,
    0b1010n | (1n << 40n),
  );
});

Deno.test("parseArm64ImageHeader() assumes text_offset 0x80000 when image_size is 0", () => {
  // Before v3.17: image_size 0, text_offset of unspecified endianness, no flags.
  const old = parseArm64ImageHeader(
    fakeImage({ imageSize: 0n, textOffset: 0x80000n, flags: 0n }),
  );
  assert.equal(old.textOffset, 0x80000n);
  assert.equal(old.imageSize, 0n);
  const garbage = parseArm64ImageHeader(
    fakeImage({ imageSize: 0n, textOffset: 0x1234n, flags: 0n }),
  );
  assert.equal(garbage.textOffset, 0x80000n);
});

Deno.test("parseArm64ImageHeader() refuses big-endian kernels", () => {
  assert.throws(
    () => parseArm64ImageHeader(fakeImage({ flags: 0b1011n })),
    /Cannot load arm64 kernel: kernel is big-endian \(flags 0xb has bit 0 set\)/,
  );
  // An old big-endian kernel: 0x80000 stored big-endian, image_size 0.
  const old = fakeImage({ imageSize: 0n, flags: 0n });
  new DataView(old.buffer).setBigUint64(8, 0x80000n, false);
  assert.throws(
    () => parseArm64ImageHeader(old),
    /kernel is big-endian \(text_offset 0x80000 is stored big-endian\)/,
  );
});

Deno.test("parseArm64ImageHeader() names what a foreign or truncated file is", () => {
  assert.throws(
    () => parseArm64ImageHeader(new Uint8Array(63)),
    /Cannot load arm64 kernel: file of 63 bytes is too short for an Image header \(64 bytes\)/,
  );
  assert.throws(
    () => parseArm64ImageHeader(fakeImage({ magic: 0x12345678 })),
    /not an arm64 Image: no "ARM\\x64" magic at 0x38/,
  );
  const bz = new Uint8Array(0x1000);
  bz.set(new TextEncoder().encode("HdrS"), 0x202);
  assert.throws(
    () => parseArm64ImageHeader(bz),
    /not an arm64 Image: it is an x86 bzImage/,
  );
  const elf = new Uint8Array(0x100);
  elf.set([0x7f, 0x45, 0x4c, 0x46]);
  assert.throws(() => parseArm64ImageHeader(elf), /it is an ELF file/);
  const xz = new Uint8Array(0x100);
  xz.set([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
  assert.throws(
    () => parseArm64ImageHeader(xz),
    /it is xz-compressed; initx decompresses gzip only/,
  );
  const gz = new Uint8Array(0x100);
  gz.set([0x1f, 0x8b, 0x08]);
  assert.throws(
    () => parseArm64ImageHeader(gz),
    /the file is gzip-compressed; decompress it first \(unpackArm64Kernel\)/,
  );
  assert.throws(
    () => parseArm64ImageHeader(fakeZboot(new Uint8Array(16))),
    /the file is an EFI zboot image; decompress it first/,
  );
});

Deno.test("parseArm64ImageHeader() refuses a text_offset that cannot be right", () => {
  assert.throws(
    () => parseArm64ImageHeader(fakeImage({ textOffset: 0x1234n })),
    /text_offset 0x1234 is not a multiple of 4 KiB below 2 MiB/,
  );
  assert.throws(
    () => parseArm64ImageHeader(fakeImage({ textOffset: 0x200000n })),
    /text_offset 0x200000 is not a multiple/,
  );
});

Deno.test("detectArm64KernelFormat() tells Image, gzip and zboot apart", async () => {
  const image = fakeImage();
  assert.equal(detectArm64KernelFormat(image), "image");
  assert.equal(detectArm64KernelFormat(await gzip(image)), "gzip");
  assert.equal(detectArm64KernelFormat(fakeZboot(new Uint8Array(8))), "zboot");
  assert.equal(detectArm64KernelFormat(new Uint8Array(8)), "unknown");
  assert.equal(detectArm64KernelFormat(new Uint8Array(0)), "unknown");
});

Deno.test("unpackArm64Kernel() returns a plain Image as is", async () => {
  const image = fakeImage();
  assert.equal(await unpackArm64Kernel(image), image);
});

Deno.test("unpackArm64Kernel() decompresses a gzip-compressed Image", async () => {
  const image = fakeImage({ length: 100_000 });
  const unpacked = await unpackArm64Kernel(await gzip(image));
  assert.deepEqual(unpacked, image);
  assert.equal(parseArm64ImageHeader(unpacked).fileBytes, 100_000);
});

Deno.test("unpackArm64Kernel() decompresses the gzip payload of an EFI zboot image", async () => {
  const image = fakeImage({ length: 50_000 });
  const zboot = fakeZboot(await gzip(image));
  assert.deepEqual(await unpackArm64Kernel(zboot), image);
});

Deno.test("unpackArm64Kernel() explains what it cannot unpack", async () => {
  const image = fakeImage();
  await assert.rejects(
    unpackArm64Kernel(fakeZboot(await gzip(image), "zstd")),
    /Cannot load arm64 kernel: EFI zboot image is compressed with "zstd"; initx decompresses gzip only/,
  );
  const payload = await gzip(image);
  await assert.rejects(
    unpackArm64Kernel(fakeZboot(payload, "gzip", { size: 1 << 30 })),
    /EFI zboot payload at 0x1000 of 1073741824 bytes lies outside the \d+-byte file/,
  );
  await assert.rejects(
    unpackArm64Kernel(fakeZboot(payload).subarray(0, 40)),
    /EFI zboot image of 40 bytes is truncated/,
  );
  const corrupt = await gzip(image);
  corrupt.fill(0xff, 10, corrupt.length - 8);
  await assert.rejects(
    unpackArm64Kernel(corrupt),
    /gzip-compressed kernel is not valid gzip data/,
  );
  await assert.rejects(
    unpackArm64Kernel(await gzip(new TextEncoder().encode("x".repeat(200)))),
    /not an arm64 Image: no "ARM\\x64" magic/,
  );
  await assert.rejects(
    unpackArm64Kernel(await gzip(new Uint8Array(100_000)), { maxBytes: 1000 }),
    /gzip-compressed kernel decompresses to more than 1000 bytes/,
  );
  await assert.rejects(
    unpackArm64Kernel(new Uint8Array(10)),
    /file of 10 bytes is too short/,
  );
});

Deno.test("placeArm64Boot() packs kernel, DTB slot and initrd from the start of RAM", () => {
  const p = placeArm64Boot(header(), {
    ramBase: RAM_BASE,
    ramBytes: 256n * MIB,
    initrdBytes: 5000,
  });
  assert.deepEqual(p, {
    kernelAddr: RAM_BASE,
    kernelEnd: RAM_BASE + 0x200_0000n,
    dtbAddr: RAM_BASE + 0x200_0000n,
    initrd: { addr: RAM_BASE + 0x220_0000n, size: 5000n },
  });
  assert.equal(p.dtbAddr % 8n, 0n);
  const noInitrd = placeArm64Boot(header(), {
    ramBase: RAM_BASE,
    ramBytes: 256n * MIB,
  });
  assert.equal(noInitrd.initrd, undefined);
  assert.equal(noInitrd.dtbAddr, RAM_BASE + 0x200_0000n);
});

Deno.test("placeArm64Boot() honours text_offset, a 2 MiB base and a file longer than image_size", () => {
  const p = placeArm64Boot(
    header({
      textOffset: 0x80000n,
      imageSize: 0x10_0000n,
      fileBytes: 0x30_0000,
    }),
    { ramBase: RAM_BASE + 0x1000n, ramBytes: 64n * MIB },
  );
  // First 2 MiB boundary at or above RAM, plus text_offset.
  assert.equal(p.kernelAddr, RAM_BASE + 0x20_0000n + 0x80000n);
  assert.equal(p.kernelEnd, p.kernelAddr + 0x30_0000n);
  assert.equal(p.dtbAddr, RAM_BASE + 0x60_0000n);
});

Deno.test("placeArm64Boot() leaves memory after a kernel of unknown size free", () => {
  const old = header({
    textOffset: 0x80000n,
    imageSize: 0n,
    fileBytes: 0x80_0000,
  });
  const small = placeArm64Boot(old, {
    ramBase: RAM_BASE,
    ramBytes: 256n * MIB,
    initrdBytes: 3 * 1024 * 1024,
  });
  const ramEnd = RAM_BASE + 256n * MIB;
  assert.equal(small.kernelAddr, RAM_BASE + 0x80000n);
  assert.equal(small.initrd?.addr, ramEnd - 0x30_0000n);
  assert.equal(small.dtbAddr, ramEnd - 0x40_0000n - 0x20_0000n);
  // With more RAM the DTB stays within 512 MiB of the base (kernels < v4.2).
  const big = placeArm64Boot(old, {
    ramBase: RAM_BASE,
    ramBytes: 4n * GIB,
    initrdBytes: 3 * 1024 * 1024,
  });
  assert.equal(
    big.dtbAddr,
    RAM_BASE + 512n * MIB - BigInt(ARM64_DTB_MAX_BYTES),
  );
  assert.equal(big.initrd?.addr, RAM_BASE + 4n * GIB - 0x30_0000n);
  // And the initrd stays in the 32 GiB window that holds the kernel.
  const huge = placeArm64Boot(old, {
    ramBase: RAM_BASE,
    ramBytes: 64n * GIB,
    initrdBytes: 0x10000,
  });
  assert.equal(huge.initrd?.addr, RAM_BASE + 32n * GIB - 0x10000n);
});

Deno.test("placeArm64Boot() says when RAM is too small or the initrd too far", () => {
  assert.throws(
    () =>
      placeArm64Boot(header(), {
        ramBase: RAM_BASE,
        ramBytes: 0x200_0000n,
      }),
    /Cannot load arm64 kernel: RAM 0x40000000..0x42000000 is too small for the kernel \(0x40000000..0x42000000\), a 0x200000-byte DTB slot and an initrd of 0 bytes/,
  );
  assert.throws(
    () =>
      placeArm64Boot(header(), {
        ramBase: RAM_BASE,
        ramBytes: 34n * MIB,
        initrdBytes: 1,
      }),
    /is too small .* an initrd of 1 bytes/,
  );
  assert.throws(
    () =>
      placeArm64Boot(header({ imageSize: 0n, textOffset: 0x80000n }), {
        ramBase: RAM_BASE,
        ramBytes: 0x200_0000n,
        initrdBytes: 0x100_0000,
      }),
    /is too small/,
  );
  assert.throws(
    () =>
      placeArm64Boot(header(), {
        ramBase: RAM_BASE,
        ramBytes: 64n * GIB,
        initrdBytes: 33n * GIB,
      }),
    /do not fit one 1 GiB aligned window of 32 GiB/,
  );
  assert.throws(
    () => placeArm64Boot(header(), { ramBase: RAM_BASE, ramBytes: 0n }),
    /RAM of 0 bytes at 0x40000000 is not usable/,
  );
  assert.throws(
    () =>
      placeArm64Boot(header(), {
        ramBase: RAM_BASE,
        ramBytes: GIB,
        initrdBytes: 0,
      }),
    /initrd size 0 is not positive/,
  );
});
