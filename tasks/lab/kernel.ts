/**
 * The lab's own kernel: Debian's cloud kernel of the lab's architecture. On
 * x86_64 its package carries the `kvm-amd` modules that give the lab its
 * `/dev/kvm`; on arm64 KVM is built in. Either way its modules serve the
 * nested guests too.
 *
 * @module
 */

import { ensureKernel } from "../../src/boot/kernel.ts";
import { LAB_MACHINES, type LabArch } from "./arch.ts";
import { ensureDebianArch } from "./debian.ts";

/** The kernel the lab boots and the module tree it loads KVM from. */
export interface LabKernel {
  /** Path of the bzImage (x86_64) or the Image (aarch64). */
  image: string;
  /** The `lib/modules/<version>` directory. */
  modulesDir: string;
  /** The kernel release, e.g. `6.1.0-57-cloud-amd64`. */
  version: string;
  /** The architecture it runs on. */
  arch: LabArch;
}

/** Options of {@linkcode ensureLabKernel}. */
export interface LabKernelOptions {
  /** The lab's architecture; default `x86_64`. */
  arch?: LabArch;
}

/** Provisions (or reuses) the lab kernel through the project's kernel cache. */
export async function ensureLabKernel(
  progress: (line: string) => void,
  options: LabKernelOptions = {},
): Promise<LabKernel> {
  const arch = options.arch ?? "x86_64";
  if (arch !== Deno.build.arch) {
    // apt-cache must know the other architecture's kernel packages.
    await ensureDebianArch(LAB_MACHINES[arch].debianArch, progress);
  }
  const k = await ensureKernel({
    source: "debian",
    arch,
    onProgress: progress,
  });
  if (k.modules === undefined) {
    throw new Error(
      `Cannot prepare the KVM lab: kernel ${k.version} came without modules; the lab needs them for KVM and for its nested guests`,
    );
  }
  return { image: k.image, modulesDir: k.modules, version: k.version, arch };
}
