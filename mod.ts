/**
 * initx: boot a real Linux kernel in a micro-VM from TypeScript, on the
 * host's own hypervisor (KVM through `Deno.dlopen`), and run programs that
 * initx compiles itself from a small IR.
 *
 * This module is the library. Run as the main module it is the CLI
 * (`deno run -A mod.ts --help`).
 *
 * Run programs in a booted guest with {@linkcode VirtualMachine}:
 *
 * ```ts ignore
 * import { ProgramBuilder, VirtualMachine } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => {
 *   m.printf("hello from the guest\n");
 *   m.return(0);
 * });
 * await using vm = await VirtualMachine.create();
 * await vm.boot();
 * const { stdout } = await vm.runWithCapture(p.build());
 * ```
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
export {
  type Arm64Regs,
  type Arm64SysRegs,
  type Arm64VcpuInit,
  describePc,
  type ExitHandlers,
  type HvVcpu,
  type HvVm,
  type Hypervisor,
  type IoAccess,
  type MmioAccess,
  type Segment,
  type VcpuInit,
  type VcpuOutcome,
  type VcpuRegs,
  type X86Regs,
  type X86Sregs,
} from "./src/hv/hv.ts";
export {
  GuestMemory,
  GuestMemoryError,
  type MemoryRegion,
} from "./src/hv/memory.ts";
export { Kvm, type KvmCreateVmOptions } from "./src/hv/kvm/system.ts";
export { type KvmArch, type KvmGicOptions, KvmVm } from "./src/hv/kvm/vm.ts";
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
export { ALPINE_KEYS } from "./src/boot/alpine_keys.ts";
export {
  ensureKernel,
  type EnsureKernelOptions,
  type KernelArch,
  type KernelInfo,
  type KernelSource,
} from "./src/boot/kernel.ts";
export { OsError } from "./ffi/libc.ts";
export {
  type BootOptions,
  type CapturedOutput,
  type CaptureFlags,
  DEFAULT_BOOT_TIMEOUT_MS,
  type GuestFile,
  type GuestProcess,
  type GuestProgram,
  type GuestShare,
  type StreamingOptions,
  VirtualMachine,
  type VirtualMachineOptions,
} from "./src/initx/virtual_machine.ts";
export type { LinuxVmOutcome, LinuxVmResult } from "./src/initx/linux_vm.ts";
export {
  type Attr,
  type AttrChanges,
  type CreateResult,
  type DirEntry,
  type Entry,
  type Filesystem,
  type FsContext,
  FsError,
  HostDirFs,
  type HostDirFsOptions,
  type ImageFilesystemOptions,
  type LayeredImage,
  LayerTree,
  openImageFilesystem,
  type OpenResult,
  OverlayFs,
  type OverlayFsOptions,
  type StatFs,
  type Timespec,
  type TreeNode,
} from "./src/vfs/mod.ts";
export * from "./src/image/mod.ts";
export type {
  VirtioContext,
  VirtioDevice,
} from "./src/devices/virtio/device.ts";
export {
  type DescriptorChain,
  type GuestBuffer,
  Virtqueue,
  VirtqueueError,
} from "./src/devices/virtio/queue.ts";
export {
  type Session,
  type SessionOptions,
  startSession,
} from "./src/initx/session.ts";
export {
  type StreamConnection,
  type StreamListener,
  type StreamTransport,
  unixStreamTransport,
  VsockProgramServer,
} from "./src/initx/program_server.ts";
export {
  BootTimeoutError,
  ExitError,
  GuestError,
  ProtocolError,
  VmTerminatedError,
} from "./src/initx/errors.ts";
export { main } from "./src/cli/main.ts";

if (import.meta.main) {
  const { main } = await import("./src/cli/main.ts");
  Deno.exit(await main(Deno.args));
}
