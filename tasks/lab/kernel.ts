/**
 * The lab's own kernel: Debian's cloud kernel, whose package also carries the
 * `kvm-amd` modules that give the lab its `/dev/kvm`.
 *
 * @module
 */

import { ensureKernel } from "../../src/boot/kernel.ts";

/** The kernel the lab boots and the module tree it loads KVM from. */
export interface LabKernel {
  /** Path of the bzImage. */
  image: string;
  /** The `lib/modules/<version>` directory. */
  modulesDir: string;
  /** The kernel release, e.g. `6.1.0-57-cloud-amd64`. */
  version: string;
}

/** Provisions (or reuses) the lab kernel through the project's kernel cache. */
export async function ensureLabKernel(
  progress: (line: string) => void,
): Promise<LabKernel> {
  const k = await ensureKernel({ source: "debian", onProgress: progress });
  if (k.modules === undefined) {
    throw new Error(
      `Cannot prepare the KVM lab: kernel ${k.version} came without modules; the lab needs its kvm-amd module`,
    );
  }
  return { image: k.image, modulesDir: k.modules, version: k.version };
}
