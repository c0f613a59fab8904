/**
 * A 64-bit guest of our own on KVM: it sums 1..100, reports the sum through
 * MMIO and prints a greeting byte by byte to port 0xe9. Run with
 * `deno run -A examples/kvm_smoke.ts` on a host with `/dev/kvm`.
 *
 * @module
 */

import { Kvm } from "../src/hv/kvm/system.ts";
import type { Segment } from "../src/hv/hv.ts";

const kvm = Kvm.open();
const vm = kvm.createVm();
try {
  vm.addMemory(0n, 0x100000n);
  const mem = vm.memory;
  // Identity-map the first GiB with 2 MiB pages.
  mem.setU64(0x2000n, 0x3000n | 3n);
  mem.setU64(0x3000n, 0x4000n | 3n);
  for (let i = 0n; i < 512n; i++) {
    mem.setU64(0x4000n + i * 8n, (i << 21n) | 0x83n);
  }
  const text = new TextEncoder().encode("hello from a KVM guest\n");
  mem.writeExact(0x6000n, text);
  mem.writeExact(
    0x10000n,
    new Uint8Array([
      0x31,
      0xc0, // xor eax, eax
      0xb9,
      0x64,
      0x00,
      0x00,
      0x00, // mov ecx, 100
      0x48,
      0x01,
      0xc8, // add rax, rcx
      0xff,
      0xc9, // dec ecx
      0x75,
      0xf9, // jnz -7
      0xbb,
      0x00,
      0x00,
      0x00,
      0x30, // mov ebx, 0x30000000
      0x48,
      0x89,
      0x03, // mov [rbx], rax
      0xbe,
      0x00,
      0x60,
      0x00,
      0x00, // mov esi, 0x6000
      0xb9,
      text.length,
      0x00,
      0x00,
      0x00, // mov ecx, len
      0x66,
      0xba,
      0xe9,
      0x00, // mov dx, 0xe9
      0xf3,
      0x6e, // rep outsb
      0xf4, // hlt
    ]),
  );
  const code: Segment = {
    base: 0n,
    limit: 0xffffffff,
    selector: 0x08,
    type: 0xb,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 1,
    g: 1,
    avl: 0,
  };
  const data: Segment = { ...code, selector: 0x10, type: 0x3, l: 0, db: 1 };
  let out = "";
  let sum = 0n;
  const vcpu = await vm.startVcpu(0, {
    regs: { rip: 0x10000n, rsp: 0x8000n },
    sregs: {
      cs: code,
      ds: data,
      es: data,
      fs: data,
      gs: data,
      ss: data,
      gdt: { base: 0n, limit: 0 },
      idt: { base: 0n, limit: 0 },
      cr0: 0x8000_0011n,
      cr3: 0x2000n,
      cr4: 0x20n,
      efer: 0x500n,
    },
    handlers: {
      io: (a) => {
        if (a.port === 0xe9 && a.direction === "out") {
          out += String.fromCharCode(a.data[0]!);
        }
      },
      mmio: (a) => {
        if (a.isWrite) {
          sum = new DataView(a.data.buffer, a.data.byteOffset).getBigUint64(
            0,
            true,
          );
        }
      },
    },
  });
  const outcome = await vcpu.done;
  Deno.stdout.writeSync(new TextEncoder().encode(out));
  console.log(
    `guest computed 1 + ... + 100 = ${sum}; it ended with "${outcome.kind}" after ${vcpu.exitCount()} exits`,
  );
  if (outcome.kind !== "hlt" || sum !== 5050n) Deno.exitCode = 1;
} finally {
  await vm.close();
  kvm.close();
}
