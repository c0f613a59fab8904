/**
 * initx: boot a real Linux kernel in a micro-VM from TypeScript, on the
 * host's own hypervisor (KVM through `Deno.dlopen`), and run programs that
 * initx compiles itself from a small IR.
 *
 * This module is the library. Run as the main module it is the CLI
 * (`deno run -A mod.ts --help`).
 *
 * @example
 * ```ts
 * import { compileElf, ProgramBuilder } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   m.printf("hello from %s\n", [p.string("initx")]);
 *   m.return(0);
 * });
 * const elf = compileElf(p.build(), { arch: "x86_64" });
 * console.log(elf.byteLength > 0);
 * ```
 *
 * @module
 */

export * from "./src/ir/mod.ts";
export type {
  ExitHandlers,
  HvVcpu,
  HvVm,
  Hypervisor,
  IoAccess,
  MmioAccess,
  Segment,
  VcpuInit,
  VcpuOutcome,
  X86Regs,
  X86Sregs,
} from "./src/hv/hv.ts";
export {
  GuestMemory,
  GuestMemoryError,
  type MemoryRegion,
} from "./src/hv/memory.ts";
export { Kvm } from "./src/hv/kvm/system.ts";
export { KvmVm } from "./src/hv/kvm/vm.ts";
export { KvmVcpu } from "./src/hv/kvm/vcpu.ts";
export {
  cannotBootLinuxReason,
  detectKvmHost,
  type KvmHost,
} from "./src/hv/kvm/host.ts";
export {
  type CpioDeviceOptions,
  type CpioEntryOptions,
  CpioWriter,
} from "./src/boot/cpio.ts";
export {
  ensureKernel,
  type EnsureKernelOptions,
  type KernelArch,
  type KernelInfo,
  type KernelSource,
} from "./src/boot/kernel.ts";
export { OsError } from "./ffi/libc.ts";
export { main } from "./src/cli/main.ts";

if (import.meta.main) {
  const { main } = await import("./src/cli/main.ts");
  Deno.exit(await main(Deno.args));
}
