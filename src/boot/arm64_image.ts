/**
 * The arm64 Linux `Image`: its header, the compressed forms it ships in, and
 * where kernel, device tree and initrd go in guest RAM.
 *
 * Primer (Documentation/arch/arm64/booting.rst): the kernel is a flat
 * binary, entered at its first byte with x0 = physical address of the
 * device tree blob (DTB) and the MMU off. It starts with a 64-byte header,
 * all fields little-endian since v3.17:
 *
 * ```text
 * 0x00 u32 code0, 0x04 u32 code1   executable code (branch to stext; "MZ" when
 *                                  the kernel has an EFI stub)
 * 0x08 u64 text_offset             load offset from a 2 MiB aligned base
 * 0x10 u64 image_size              bytes the kernel uses from its start (0:
 *                                  unknown, kernels before v3.17)
 * 0x18 u64 flags                   bit 0 big-endian, bits 1-2 page size,
 *                                  bit 3 the base may be anywhere in RAM
 * 0x20 u64 res2, res3, res4
 * 0x38 u32 magic "ARM\x64" (0x644d5241)
 * 0x3c u32 res5                    offset of the PE header (EFI stub)
 * ```
 *
 * The kernel has no decompressor of its own: a boot loader decompresses
 * `Image.gz`. Distributions ship the Image plain (Debian's signed arm64
 * kernels are plain Images with an EFI stub), gzip-compressed (`vmlinuz`
 * from `make install`, Ubuntu), or as an EFI zboot executable (`MZ`, then
 * `zimg` at offset 4, a payload offset and size at 8 and 12 and the
 * compression name at 24, drivers/firmware/efi/libstub/zboot-header.S).
 * {@link unpackArm64Kernel} turns each gzip form into the Image.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Image header (booting.rst "4. Call the kernel image").

/** Bytes of the Image header. */
export const ARM64_IMAGE_HEADER_BYTES = 64;
/** `magic`: "ARM\x64" as a little-endian u32, at offset 0x38. */
export const ARM64_IMAGE_MAGIC = 0x644d5241;

/** text_offset (u64). */
const HDR_TEXT_OFFSET = 0x08;
/** image_size (u64). */
const HDR_IMAGE_SIZE = 0x10;
/** flags (u64). */
const HDR_FLAGS = 0x18;
/** magic (u32). */
const HDR_MAGIC = 0x38;
/** res5 (u32): PE header offset. */
const HDR_RES5 = 0x3c;

/** flags bit 0: the kernel is big-endian. */
export const ARM64_FLAG_BIG_ENDIAN = 1n << 0n;
/** flags bits 1-2: page size, 0 unspecified, 1 4K, 2 16K, 3 64K. */
const FLAG_PAGE_SIZE_SHIFT = 1n;
/** flags bit 3: the 2 MiB aligned base may be anywhere in physical memory. */
export const ARM64_FLAG_PLACE_ANYWHERE = 1n << 3n;
/** Page sizes by the value of flags bits 1-2. */
const PAGE_SIZES = [undefined, 4096, 16384, 65536] as const;

/** text_offset of kernels whose image_size is 0 (before v3.17). */
export const ARM64_LEGACY_TEXT_OFFSET = 0x80000n;

// ---------------------------------------------------------------------------
// Placement rules (booting.rst sections 2 and 4).

/** 1 MiB in bytes. */
const MIB = 1024n * 1024n;
/** 1 GiB in bytes. */
const GIB = 1024n * MIB;
/** The Image goes text_offset bytes above a base aligned to this. */
export const ARM64_KERNEL_ALIGN = 2n * MIB;
/** Largest DTB the kernel accepts. */
export const ARM64_DTB_MAX_BYTES = 2 * 1024 * 1024;
/**
 * Kernels before v4.2 need the DTB within this distance of the 2 MiB aligned
 * base below the Image.
 */
const LEGACY_DTB_WINDOW = 512n * MIB;
/** The initrd and the Image must share a window aligned to this ... */
const INITRD_WINDOW_ALIGN = GIB;
/** ... and no bigger than this. */
const INITRD_WINDOW_MAX = 32n * GIB;
/** Alignment initx gives the initrd: the largest arm64 page size. */
const INITRD_ALIGN = 64n * 1024n;

// ---------------------------------------------------------------------------
// Compressed forms.

/** gzip member magic and the deflate method byte (RFC 1952 §2.3.1). */
const GZIP_MAGIC = [0x1f, 0x8b, 0x08] as const;
/** zboot: "zimg" at offset 4 of an "MZ" executable. */
const ZBOOT_TYPE_OFFSET = 4;
/** zboot: u32 payload offset. */
const ZBOOT_PAYLOAD_OFFSET = 8;
/** zboot: u32 payload size. */
const ZBOOT_PAYLOAD_SIZE = 12;
/** zboot: NUL-terminated compression name ("gzip", "zstd", ...). */
const ZBOOT_COMPRESSION = 24;
/** zboot: room for the compression name, up to the PE magic at 0x38. */
const ZBOOT_COMPRESSION_BYTES = 32;
/** Decompressed kernels larger than this are refused (default). */
export const ARM64_KERNEL_MAX_BYTES = 512 * 1024 * 1024;

/** Magic numbers of compressors initx does not unpack, for the error message. */
const OTHER_COMPRESSIONS: { name: string; magic: number[] }[] = [
  { name: "xz", magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00] },
  { name: "zstd", magic: [0x28, 0xb5, 0x2f, 0xfd] },
  { name: "lz4", magic: [0x04, 0x22, 0x4d, 0x18] },
  { name: "lz4 (legacy)", magic: [0x02, 0x21, 0x4c, 0x18] },
  { name: "bzip2", magic: [0x42, 0x5a, 0x68] },
  { name: "lzo", magic: [0x89, 0x4c, 0x5a, 0x4f] },
];

const decoder = new TextDecoder();

function fail(detail: string): never {
  throw new Error(`Cannot load arm64 kernel: ${detail}`);
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

function startsWith(
  data: Uint8Array,
  magic: readonly number[],
  at = 0,
): boolean {
  return magic.every((b, i) => data[at + i] === b);
}

function ascii(data: Uint8Array, at: number, length: number): string {
  return decoder.decode(data.subarray(at, at + length));
}

// ---------------------------------------------------------------------------
// Formats.

/** What a kernel file is, as far as {@link unpackArm64Kernel} cares. */
export type Arm64KernelFormat = "image" | "gzip" | "zboot" | "unknown";

/**
 * Tells a plain Image (`ARM\x64` at 0x38), a gzip file and an EFI zboot
 * executable apart by their first bytes.
 *
 * @example
 * ```ts
 * import { detectArm64KernelFormat } from "./arm64_image.ts";
 * detectArm64KernelFormat(Uint8Array.of(0x1f, 0x8b, 0x08, 0)); // "gzip"
 * ```
 */
export function detectArm64KernelFormat(data: Uint8Array): Arm64KernelFormat {
  if (
    data.length >= ARM64_IMAGE_HEADER_BYTES &&
    new DataView(data.buffer, data.byteOffset, data.length)
        .getUint32(HDR_MAGIC, true) === ARM64_IMAGE_MAGIC
  ) {
    return "image";
  }
  if (startsWith(data, GZIP_MAGIC)) return "gzip";
  if (
    ascii(data, 0, 2) === "MZ" && ascii(data, ZBOOT_TYPE_OFFSET, 4) === "zimg"
  ) {
    return "zboot";
  }
  return "unknown";
}

/** Why a file that is no Image is not one, for the error message. */
function describeForeign(data: Uint8Array): string {
  if (data.length >= 0x206 && ascii(data, 0x202, 4) === "HdrS") {
    return "it is an x86 bzImage";
  }
  if (startsWith(data, [0x7f, 0x45, 0x4c, 0x46])) {
    return "it is an ELF file (vmlinux?); boot arch/arm64/boot/Image instead";
  }
  const other = OTHER_COMPRESSIONS.find((c) => startsWith(data, c.magic));
  if (other !== undefined) {
    return `it is ${other.name}-compressed; initx decompresses gzip only (pass the uncompressed Image)`;
  }
  return `no "ARM\\x64" magic at ${hex(HDR_MAGIC)}`;
}

// ---------------------------------------------------------------------------
// Header parsing.

/** The header fields of an arm64 Image, as initx uses them. */
export interface Arm64ImageHeader {
  /**
   * Load offset from a 2 MiB aligned base: the header's, or
   * {@link ARM64_LEGACY_TEXT_OFFSET} when `imageSize` is 0 (booting.rst says
   * to assume it then).
   */
  textOffset: bigint;
  /** Bytes the kernel uses from its first byte; 0 when the kernel does not say. */
  imageSize: bigint;
  /** The raw flags field. */
  flags: bigint;
  /** Kernel page size in bytes, `undefined` when the header leaves it unspecified. */
  pageSize: 4096 | 16384 | 65536 | undefined;
  /** flags bit 3: the 2 MiB aligned base may be anywhere in physical memory. */
  placeAnywhere: boolean;
  /** res5: offset of the PE header of the EFI stub, 0 without one. */
  peHeaderOffset: number;
  /** Length of the Image file (what gets copied into RAM). */
  fileBytes: number;
}

/**
 * Parses and checks the header of an uncompressed arm64 Image (the whole
 * file, so its length is known). Throws `Cannot load arm64 kernel: ...` for
 * a truncated or foreign file (naming gzip, zboot, bzImage, ELF and other
 * compressors when it sees them), a big-endian kernel, or a text_offset
 * that is not a 4 KiB multiple below 2 MiB.
 *
 * @example
 * ```ts
 * import { parseArm64ImageHeader } from "./arm64_image.ts";
 * const image = new Uint8Array(4096);
 * const view = new DataView(image.buffer);
 * view.setBigUint64(0x10, 0x200000n, true); // image_size
 * view.setBigUint64(0x18, 0b1010n, true); // 4K pages, place anywhere
 * view.setUint32(0x38, 0x644d5241, true); // "ARM\x64"
 * const header = parseArm64ImageHeader(image);
 * console.assert(header.textOffset === 0n && header.pageSize === 4096);
 * ```
 */
export function parseArm64ImageHeader(image: Uint8Array): Arm64ImageHeader {
  const format = detectArm64KernelFormat(image);
  if (format === "gzip" || format === "zboot") {
    fail(
      `the file is ${
        format === "gzip" ? "gzip-compressed" : "an EFI zboot image"
      }; decompress it first (unpackArm64Kernel)`,
    );
  }
  if (image.length < ARM64_IMAGE_HEADER_BYTES) {
    fail(
      `file of ${image.length} bytes is too short for an Image header (${ARM64_IMAGE_HEADER_BYTES} bytes)`,
    );
  }
  if (format !== "image") fail(`not an arm64 Image: ${describeForeign(image)}`);
  const view = new DataView(image.buffer, image.byteOffset, image.length);
  const rawTextOffset = view.getBigUint64(HDR_TEXT_OFFSET, true);
  const imageSize = view.getBigUint64(HDR_IMAGE_SIZE, true);
  const flags = view.getBigUint64(HDR_FLAGS, true);
  let textOffset = rawTextOffset;
  if (imageSize === 0n) {
    // Before v3.17 the field had the kernel's endianness and no flags
    // existed: 0x80000 written big-endian is the one sign of such a kernel.
    if (
      view.getBigUint64(HDR_TEXT_OFFSET, false) === ARM64_LEGACY_TEXT_OFFSET
    ) {
      fail(
        `kernel is big-endian (text_offset 0x80000 is stored big-endian); initx boots little-endian kernels`,
      );
    }
    textOffset = ARM64_LEGACY_TEXT_OFFSET;
  } else if ((flags & ARM64_FLAG_BIG_ENDIAN) !== 0n) {
    fail(
      `kernel is big-endian (flags ${
        hex(flags)
      } has bit 0 set); initx boots little-endian kernels`,
    );
  }
  if (textOffset >= ARM64_KERNEL_ALIGN || textOffset % 4096n !== 0n) {
    fail(
      `text_offset ${hex(textOffset)} is not a multiple of 4 KiB below 2 MiB`,
    );
  }
  const pageBits = Number((flags >> FLAG_PAGE_SIZE_SHIFT) & 3n);
  return {
    textOffset,
    imageSize,
    flags,
    pageSize: PAGE_SIZES[pageBits],
    placeAnywhere: (flags & ARM64_FLAG_PLACE_ANYWHERE) !== 0n,
    peHeaderOffset: view.getUint32(HDR_RES5, true),
    fileBytes: image.length,
  };
}

// ---------------------------------------------------------------------------
// Unpacking.

/** Options of {@link unpackArm64Kernel}. */
export interface UnpackArm64KernelOptions {
  /** Largest decompressed kernel accepted; default {@link ARM64_KERNEL_MAX_BYTES}. */
  maxBytes?: number;
}

/** Inflates one gzip stream, refusing output past `maxBytes`. */
async function gunzip(
  data: Uint8Array,
  maxBytes: number,
  what: string,
): Promise<Uint8Array> {
  const input = new Uint8Array(data); // a copy on its own ArrayBuffer
  const reader = new Blob([input]).stream()
    .pipeThrough(new DecompressionStream("gzip"))
    .getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) break;
      chunks.push(value);
    }
  } catch (error) {
    fail(`${what} is not valid gzip data (${(error as Error).message})`);
  }
  if (total > maxBytes) {
    await reader.cancel();
    fail(`${what} decompresses to more than ${maxBytes} bytes`);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** The gzip payload of an EFI zboot image. */
function zbootPayload(data: Uint8Array): Uint8Array {
  if (data.length < ZBOOT_COMPRESSION + ZBOOT_COMPRESSION_BYTES) {
    fail(`EFI zboot image of ${data.length} bytes is truncated`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.length);
  const nameBytes = data.subarray(
    ZBOOT_COMPRESSION,
    ZBOOT_COMPRESSION + ZBOOT_COMPRESSION_BYTES,
  );
  const nul = nameBytes.indexOf(0);
  const compression = decoder.decode(
    nul < 0 ? nameBytes : nameBytes.subarray(0, nul),
  );
  if (compression !== "gzip") {
    fail(
      `EFI zboot image is compressed with "${compression}"; initx decompresses gzip only (build with CONFIG_KERNEL_GZIP or pass the uncompressed Image)`,
    );
  }
  const offset = view.getUint32(ZBOOT_PAYLOAD_OFFSET, true);
  const size = view.getUint32(ZBOOT_PAYLOAD_SIZE, true);
  if (size === 0 || offset + size > data.length) {
    fail(
      `EFI zboot payload at ${
        hex(offset)
      } of ${size} bytes lies outside the ${data.length}-byte file`,
    );
  }
  return data.subarray(offset, offset + size);
}

/**
 * Returns the uncompressed Image inside a kernel file: a plain Image as is
 * (the same array), a gzip file or a gzip-compressed EFI zboot image
 * decompressed (DecompressionStream), then checked with
 * {@link parseArm64ImageHeader}. Anything else (zboot with another
 * compressor, xz, zstd, a bzImage) throws `Cannot load arm64 kernel: ...`.
 *
 * @example
 * ```ts ignore
 * import { parseArm64ImageHeader, unpackArm64Kernel } from "./arm64_image.ts";
 * const image = await unpackArm64Kernel(await Deno.readFile("/boot/vmlinuz"));
 * console.log(parseArm64ImageHeader(image).imageSize);
 * ```
 */
export async function unpackArm64Kernel(
  data: Uint8Array,
  options: UnpackArm64KernelOptions = {},
): Promise<Uint8Array> {
  const maxBytes = options.maxBytes ?? ARM64_KERNEL_MAX_BYTES;
  const format = detectArm64KernelFormat(data);
  // `make install` gzips the Image itself, never a zboot executable, so one
  // level of unpacking is all there is.
  const image = format === "gzip"
    ? await gunzip(data, maxBytes, "gzip-compressed kernel")
    : format === "zboot"
    ? await gunzip(zbootPayload(data), maxBytes, "EFI zboot payload")
    : data;
  parseArm64ImageHeader(image);
  return image;
}

// ---------------------------------------------------------------------------
// Placement.

/** Options of {@link placeArm64Boot}. */
export interface Arm64PlacementOptions {
  /** Guest physical address of the first byte of RAM. */
  ramBase: bigint;
  /** RAM size in bytes. */
  ramBytes: bigint;
  /** Size of the initramfs, when one is loaded. */
  initrdBytes?: bigint | number;
}

/** Where a boot puts things, all guest physical addresses. */
export interface Arm64Placement {
  /** Load address of the Image and the boot vCPU's PC. */
  kernelAddr: bigint;
  /** End of the kernel's footprint: image_size (or the file, if unknown) from `kernelAddr`. */
  kernelEnd: bigint;
  /**
   * Where the DTB goes (x0 of the boot vCPU): 2 MiB aligned (booting.rst
   * asks for 8 bytes), with
   * {@link ARM64_DTB_MAX_BYTES} of room that nothing else uses.
   */
  dtbAddr: bigint;
  /** Where the initrd goes, if one was asked for. */
  initrd?: { addr: bigint; size: bigint };
}

function alignUp(value: bigint, align: bigint): bigint {
  return (value + align - 1n) / align * align;
}

function alignDown(value: bigint, align: bigint): bigint {
  return value / align * align;
}

/**
 * Places Image, DTB and initrd in RAM by booting.rst. The Image goes
 * text_offset above the first 2 MiB boundary of RAM (as close to the start
 * of RAM as possible, which flags bit 3 clear asks for and bit 3 set
 * allows). The DTB gets a 2 MiB slot of its own, so the tree can be written
 * after placement (it holds the initrd's address) with only its size limit
 * to respect.
 *
 * - image_size known: DTB slot right after the kernel's footprint, initrd
 *   right after the slot. Low and packed: nothing is left between them.
 * - image_size 0: booting.rst asks for as much free memory after the
 *   kernel as possible, so the initrd goes at the top of RAM (or of the
 *   32 GiB window it shares with the Image) and the DTB slot below it, but
 *   within 512 MiB of the base as kernels before v4.2 need.
 *
 * Throws `Cannot load arm64 kernel: ...` when RAM is too small, or when the
 * initrd and the Image do not fit one 1 GiB aligned window of at most
 * 32 GiB.
 *
 * @example
 * ```ts
 * import { placeArm64Boot } from "./arm64_image.ts";
 * const header = {
 *   textOffset: 0n, imageSize: 0x2000000n, flags: 0xan, pageSize: 4096,
 *   placeAnywhere: true, peHeaderOffset: 0x40, fileBytes: 0x1800000,
 * } as const;
 * const p = placeArm64Boot(header, {
 *   ramBase: 0x4000_0000n, ramBytes: 256n << 20n, initrdBytes: 4096,
 * });
 * console.assert(p.kernelAddr === 0x4000_0000n);
 * console.assert(p.dtbAddr === 0x4200_0000n);
 * console.assert(p.initrd?.addr === 0x4220_0000n);
 * ```
 */
export function placeArm64Boot(
  header: Arm64ImageHeader,
  options: Arm64PlacementOptions,
): Arm64Placement {
  const ramStart = options.ramBase;
  const ramEnd = ramStart + options.ramBytes;
  if (ramStart < 0n || options.ramBytes <= 0n) {
    fail(
      `RAM of ${options.ramBytes} bytes at ${hex(ramStart)} is not usable`,
    );
  }
  const base = alignUp(ramStart, ARM64_KERNEL_ALIGN);
  const kernelAddr = base + header.textOffset;
  const footprint = header.imageSize > BigInt(header.fileBytes)
    ? header.imageSize
    : BigInt(header.fileBytes);
  const kernelEnd = kernelAddr + footprint;
  const dtbSlot = BigInt(ARM64_DTB_MAX_BYTES);
  const initrdSize = options.initrdBytes === undefined
    ? undefined
    : BigInt(options.initrdBytes);
  if (initrdSize !== undefined && initrdSize <= 0n) {
    fail(`initrd size ${initrdSize} is not positive`);
  }

  let dtbAddr: bigint;
  let initrdAddr: bigint | undefined;
  if (header.imageSize !== 0n) {
    dtbAddr = alignUp(kernelEnd, ARM64_KERNEL_ALIGN);
    if (initrdSize !== undefined) initrdAddr = dtbAddr + dtbSlot;
  } else {
    let ceiling = ramEnd;
    if (initrdSize !== undefined) {
      const windowTop = alignDown(kernelAddr, INITRD_WINDOW_ALIGN) +
        INITRD_WINDOW_MAX;
      const top = ramEnd < windowTop ? ramEnd : windowTop;
      initrdAddr = alignDown(top - initrdSize, INITRD_ALIGN);
      ceiling = initrdAddr;
    }
    const legacyLimit = base + LEGACY_DTB_WINDOW;
    if (ceiling > legacyLimit) ceiling = legacyLimit;
    dtbAddr = alignDown(ceiling - dtbSlot, ARM64_KERNEL_ALIGN);
  }

  const end = initrdAddr !== undefined && initrdSize !== undefined
    ? initrdAddr + initrdSize
    : dtbAddr + dtbSlot;
  const lowest = initrdAddr !== undefined && initrdAddr < dtbAddr
    ? initrdAddr
    : dtbAddr;
  if (
    kernelEnd > ramEnd || lowest < kernelEnd || end > ramEnd ||
    dtbAddr + dtbSlot > ramEnd
  ) {
    fail(
      `RAM ${hex(ramStart)}..${hex(ramEnd)} is too small for the kernel (${
        hex(kernelAddr)
      }..${hex(kernelEnd)}), a ${hex(dtbSlot)}-byte DTB slot and an initrd of ${
        initrdSize ?? 0n
      } bytes`,
    );
  }
  let initrd: { addr: bigint; size: bigint } | undefined;
  if (initrdAddr !== undefined && initrdSize !== undefined) {
    const windowStart = alignDown(
      initrdAddr < kernelAddr ? initrdAddr : kernelAddr,
      INITRD_WINDOW_ALIGN,
    );
    const top = initrdAddr + initrdSize > kernelEnd
      ? initrdAddr + initrdSize
      : kernelEnd;
    const windowEnd = alignUp(top, INITRD_WINDOW_ALIGN);
    if (windowEnd - windowStart > INITRD_WINDOW_MAX) {
      fail(
        `initrd at ${hex(initrdAddr)}..${
          hex(initrdAddr + initrdSize)
        } and the kernel at ${
          hex(kernelAddr)
        } do not fit one 1 GiB aligned window of 32 GiB`,
      );
    }
    initrd = { addr: initrdAddr, size: initrdSize };
  }
  return { kernelAddr, kernelEnd, dtbAddr, initrd };
}
