import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import {
  indexModules,
  normalizeModuleName,
  parseModuleInfo,
  readModuleInfo,
  resolveModules,
} from "./modules.ts";
import { alignUp, gzip, withTempDir } from "../../tests/_util.ts";

const encoder = new TextEncoder();

/**
 * Builds a minimal ELF64 relocatable with a null section, `.modinfo` and
 * `.shstrtab`, the way the kernel build lays out a `.ko` (sections after the
 * header, section header table last).
 */
function fakeModule(modinfo: Record<string, string>): Uint8Array {
  const info = encoder.encode(
    Object.entries(modinfo).map(([k, v]) => `${k}=${v}\0`).join(""),
  );
  const shstrtab = encoder.encode("\0.modinfo\0.shstrtab\0");
  const infoOffset = 0x40;
  const strOffset = infoOffset + info.length;
  const shoff = alignUp(strOffset + shstrtab.length, 8);
  const elf = new Uint8Array(shoff + 3 * 64);
  const view = new DataView(elf.buffer);
  elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  view.setUint16(0x10, 1, true); // ET_REL
  view.setUint16(0x12, 62, true); // EM_X86_64
  view.setBigUint64(0x28, BigInt(shoff), true);
  view.setUint16(0x34, 0x40, true); // e_ehsize
  view.setUint16(0x3a, 64, true);
  view.setUint16(0x3c, 3, true);
  view.setUint16(0x3e, 2, true);
  elf.set(info, infoOffset);
  elf.set(shstrtab, strOffset);
  const section = (i: number, name: number, offset: number, size: number) => {
    const at = shoff + i * 64;
    view.setUint32(at, name, true);
    view.setUint32(at + 4, i === 2 ? 3 : 1, true); // SHT_STRTAB / SHT_PROGBITS
    view.setBigUint64(at + 24, BigInt(offset), true);
    view.setBigUint64(at + 32, BigInt(size), true);
  };
  section(1, 1, infoOffset, info.length);
  section(2, 10, strOffset, shstrtab.length);
  return elf;
}

/** Writes fake modules into `<dir>/kernel/<sub>/<file>`. */
async function fakeTree(
  dir: string,
  modules: Record<string, Record<string, string>>,
): Promise<void> {
  for (const [file, info] of Object.entries(modules)) {
    const path = join(dir, "kernel", file);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    const elf = fakeModule(info);
    await Deno.writeFile(path, file.endsWith(".gz") ? await gzip(elf) : elf);
  }
}

Deno.test("normalizeModuleName() treats '-' and '_' alike", () => {
  equal(normalizeModuleName("kvm-amd"), "kvm_amd");
  equal(normalizeModuleName("virtio_mmio"), "virtio_mmio");
});

Deno.test("parseModuleInfo() reads name, depends, vermagic and repeated keys", () => {
  const info = parseModuleInfo(
    fakeModule({
      alias: "virtio:d00000001v*",
      depends: "virtio-ring,virtio",
      name: "virtio_mmio",
      vermagic: "6.1.0 SMP mod_unload",
    }),
  );
  equal(info.name, "virtio_mmio");
  deepEqual(info.depends, ["virtio_ring", "virtio"]);
  equal(info.vermagic, "6.1.0 SMP mod_unload");
  deepEqual(info.fields[0], ["alias", "virtio:d00000001v*"]);
});

Deno.test("parseModuleInfo() falls back to the file name and rejects non-ELF data", () => {
  const info = parseModuleInfo(fakeModule({ depends: "" }), {
    fallbackName: "kvm-amd",
  });
  equal(info.name, "kvm_amd");
  deepEqual(info.depends, []);
  throws(
    () => parseModuleInfo(encoder.encode("not an elf")),
    /Cannot parse module: not an ELF file/,
  );
  const truncated = fakeModule({ name: "x" }).subarray(0, 0x50);
  throws(() => parseModuleInfo(truncated), /runs past the end of the file/);
});

Deno.test("readModuleInfo() reads .ko.gz and refuses .ko.xz clearly", async () => {
  await withTempDir(async (dir) => {
    await fakeTree(dir, { "a/fuse.ko.gz": { name: "fuse", depends: "" } });
    const info = await readModuleInfo(join(dir, "kernel/a/fuse.ko.gz"));
    equal(info.name, "fuse");
    await Deno.writeFile(join(dir, "x.ko.xz"), new Uint8Array(4));
    await rejects(
      readModuleInfo(join(dir, "x.ko.xz")),
      /Cannot read kernel module '.*x\.ko\.xz': xz compressed modules are not supported/,
    );
  });
});

Deno.test("resolveModules() puts dependencies first", async () => {
  await withTempDir(async (dir) => {
    await fakeTree(dir, {
      "virtio/virtio_ring.ko": { name: "virtio_ring", depends: "" },
      "virtio/virtio.ko": { name: "virtio", depends: "virtio_ring" },
      "virtio/virtio_mmio.ko": {
        name: "virtio_mmio",
        depends: "virtio,virtio_ring",
      },
      "x86/kvm-amd.ko.gz": { name: "kvm_amd", depends: "kvm" },
      "x86/kvm.ko": { name: "kvm", depends: "irqbypass" },
      "lib/irqbypass.ko": { name: "irqbypass", depends: "" },
      "fs/virtiofs.ko": { name: "virtiofs", depends: "fuse,virtio" },
      "fs/fuse.ko": { name: "fuse", depends: "" },
    });
    await Deno.writeTextFile(
      join(dir, "modules.builtin"),
      "kernel/fs/fuse.ko\n",
    );
    const order = await resolveModules(dir, [
      "virtio_mmio",
      "kvm-amd",
      "virtiofs",
      "virtio",
    ]);
    deepEqual(order.map((m) => m.name), [
      "virtio_ring",
      "virtio",
      "virtio_mmio",
      "irqbypass",
      "kvm",
      "kvm_amd",
      "virtiofs", // fuse is built in
    ]);
    ok(order[5]?.path.endsWith("kvm-amd.ko.gz"));
  });
});

Deno.test("resolveModules() reports cycles and missing modules", async () => {
  await withTempDir(async (dir) => {
    await fakeTree(dir, {
      "a.ko": { name: "a", depends: "b" },
      "b.ko": { name: "b", depends: "c" },
      "c.ko": { name: "c", depends: "a" },
      "d.ko": { name: "d", depends: "nope" },
    });
    await rejects(
      resolveModules(dir, ["a"]),
      /Cannot resolve kernel modules: dependency cycle a -> b -> c -> a/,
    );
    await rejects(
      resolveModules(dir, ["d"]),
      /Cannot resolve kernel module 'nope' \(needed by 'd'\): not found in/,
    );
    await rejects(
      indexModules(join(dir, "missing")),
      /Cannot index kernel modules in '.*missing'/,
    );
  });
});

/** Module directory of Debian's cloud kernel, from the environment or /tmp/k. */
async function debianModuleDir(): Promise<string | undefined> {
  const candidates = [
    Deno.env.get("INITX_TEST_MODULES"),
    "/tmp/k/x/lib/modules/6.1.0-57-cloud-amd64",
  ];
  for (const dir of candidates) {
    if (!dir) continue;
    try {
      if ((await Deno.stat(join(dir, "kernel"))).isDirectory) return dir;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

Deno.test("resolveModules() orders Debian's cloud kernel modules", async () => {
  const dir = await debianModuleDir();
  if (!dir) {
    console.warn(
      "SKIPPED: no unpacked Debian cloud kernel (set INITX_TEST_MODULES=<lib/modules/VERSION>)",
    );
    return;
  }
  const order = (await resolveModules(dir, [
    "virtio_mmio",
    "virtio_console",
    "vmw_vsock_virtio_transport",
    "virtiofs",
    "virtio_net",
    "kvm_amd",
  ])).map((m) => m.name);
  deepEqual(new Set(order).size, order.length);
  const before = (a: string, b: string) =>
    ok(
      order.includes(a) && order.indexOf(a) < order.indexOf(b),
      `${a} before ${b} in ${order}`,
    );
  before("virtio_ring", "virtio_mmio");
  before("virtio", "virtio_mmio");
  before("virtio", "virtio_console");
  before("vsock", "vmw_vsock_virtio_transport_common");
  before("vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport");
  before("fuse", "virtiofs");
  before("irqbypass", "kvm");
  before("kvm", "kvm_amd");
  ok(order.includes("virtio_net"));
});
