/**
 * Static ELF64 executables (ET_EXEC) for Linux, from compiled code. The
 * whole file is one read-write-execute PT_LOAD segment at a fixed address:
 * headers, then the code, then the zeroed bss the kernel adds. Relocations
 * are applied here, since the load address is known.
 *
 * Field layouts follow the System V gABI, "Object Files" (ELF header,
 * program header); machine numbers are from the gABI's `e_machine` list.
 *
 * @module
 */

import type { Arch } from "./syscalls.ts";

/** Size of the ELF64 file header. */
const EHDR_SIZE = 64;
/** Size of one ELF64 program header. */
const PHDR_SIZE = 56;
/** Program headers written: PT_LOAD and PT_GNU_STACK. */
const PHDR_COUNT = 2;
/** File offset of the code: after the headers, rounded up. */
const CODE_OFFSET = 0x100;
/** `e_ident` magic, class, data and version (gABI, "ELF Identification"). */
const ELFMAG = [0x7f, 0x45, 0x4c, 0x46];
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EV_CURRENT = 1;
/** `e_type`: executable file. */
const ET_EXEC = 2;
/** `e_machine` values. */
const EM_X86_64 = 62;
const EM_AARCH64 = 183;
/** `p_type` values; PT_GNU_STACK asks for a non-executable stack. */
const PT_LOAD = 1;
const PT_GNU_STACK = 0x6474e551;
/** `p_flags` bits. */
const PF_X = 1;
const PF_W = 2;
const PF_R = 4;
/** Segment alignment: 64 KiB covers 4 KiB, 16 KiB and 64 KiB page kernels. */
const SEGMENT_ALIGN = 0x10000n;

/** Default load address of the executable. */
export const DEFAULT_BASE_ADDRESS = 0x400000n;

/**
 * What {@link writeElf} needs: code as `compile()` returns it, with the
 * offset of the process entry code.
 *
 * @example
 * ```ts
 * import type { ElfImage } from "./elf.ts";
 * const image: ElfImage = {
 *   code: new Uint8Array([0xeb, 0xfe]), // jmp $
 *   relocations: [],
 *   bssSize: 0,
 *   entryOffset: 0,
 * };
 * ```
 */
export interface ElfImage {
  /** Position-independent code and constant data. */
  code: Uint8Array;
  /** Offsets in `code` of 64-bit code-relative addresses. */
  relocations: number[];
  /** Zeroed bytes needed right after the code. */
  bssSize: number;
  /** Offset in `code` where the process starts (argc at the stack pointer). */
  entryOffset: number;
}

/**
 * Options of {@link writeElf}.
 *
 * @example
 * ```ts
 * import type { ElfOptions } from "./elf.ts";
 * const options: ElfOptions = { arch: "aarch64", baseAddress: 0x400000n };
 * ```
 */
export interface ElfOptions {
  /** Target architecture (sets `e_machine`). */
  arch: Arch;
  /** Virtual address of the file's first byte; default `0x400000`. */
  baseAddress?: bigint;
}

/**
 * Write a static ELF64 executable.
 *
 * @example
 * ```ts
 * import { writeElf } from "./elf.ts";
 * const elf = writeElf(
 *   { code: new Uint8Array([0xeb, 0xfe]), relocations: [], bssSize: 0, entryOffset: 0 },
 *   { arch: "x86_64" },
 * );
 * console.assert(elf[0] === 0x7f && elf[4] === 2);
 * ```
 *
 * @param image The code and where it starts.
 * @param options The architecture and load address.
 * @returns The file's bytes.
 */
export function writeElf(image: ElfImage, options: ElfOptions): Uint8Array {
  const base = options.baseAddress ?? DEFAULT_BASE_ADDRESS;
  if (base % SEGMENT_ALIGN !== 0n) {
    throw new RangeError(
      `Cannot write ELF: base address 0x${
        base.toString(16)
      } is not 64 KiB aligned`,
    );
  }
  const codeAddress = base + BigInt(CODE_OFFSET);
  const file = new Uint8Array(CODE_OFFSET + image.code.length);
  const view = new DataView(file.buffer);
  file.set(image.code, CODE_OFFSET);
  for (const at of image.relocations) {
    const offset = CODE_OFFSET + at;
    view.setBigUint64(
      offset,
      view.getBigUint64(offset, true) + codeAddress,
      true,
    );
  }

  file.set(ELFMAG, 0);
  file[4] = ELFCLASS64;
  file[5] = ELFDATA2LSB;
  file[6] = EV_CURRENT;
  view.setUint16(16, ET_EXEC, true);
  view.setUint16(18, options.arch === "x86_64" ? EM_X86_64 : EM_AARCH64, true);
  view.setUint32(20, EV_CURRENT, true);
  view.setBigUint64(24, codeAddress + BigInt(image.entryOffset), true);
  view.setBigUint64(32, BigInt(EHDR_SIZE), true); // e_phoff
  view.setUint16(52, EHDR_SIZE, true);
  view.setUint16(54, PHDR_SIZE, true);
  view.setUint16(56, PHDR_COUNT, true);
  view.setUint16(58, 64, true); // e_shentsize, though there are no sections

  const load = EHDR_SIZE;
  view.setUint32(load, PT_LOAD, true);
  view.setUint32(load + 4, PF_R | PF_W | PF_X, true);
  view.setBigUint64(load + 8, 0n, true); // p_offset
  view.setBigUint64(load + 16, base, true); // p_vaddr
  view.setBigUint64(load + 24, base, true); // p_paddr
  view.setBigUint64(load + 32, BigInt(file.length), true); // p_filesz
  view.setBigUint64(load + 40, BigInt(file.length + image.bssSize), true); // p_memsz
  view.setBigUint64(load + 48, SEGMENT_ALIGN, true);

  const stack = EHDR_SIZE + PHDR_SIZE;
  view.setUint32(stack, PT_GNU_STACK, true);
  view.setUint32(stack + 4, PF_R | PF_W, true);
  view.setBigUint64(stack + 48, 16n, true);
  return file;
}
