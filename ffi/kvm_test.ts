import { equal as assertEquals } from "node:assert/strict";
import {
  ALL_STRUCTS,
  ARM64_STRUCTS,
  KVM,
  KVM_ARM64,
  KVM_ARM_IRQ,
  KVM_ARM_VCPU_FEATURE,
  KVM_CAP,
  KVM_DEV_ARM_VGIC,
  KVM_DEV_TYPE_ARM_VGIC_V3,
  KVM_EXIT,
  KVM_REG,
  KVM_REG_ARM64_SYSREG_SHIFT,
  KVM_VGIC_V3_ADDR_TYPE,
  KVM_VGIC_V3_DIST_SIZE,
  KVM_VGIC_V3_REDIST_SIZE,
  type StructLayout,
} from "./kvm.ts";
import { need, needTool } from "../tests/_gate.ts";
import { withTempDir } from "../tests/_util.ts";

/**
 * The arm64 uapi headers of Debian's `linux-libc-dev-arm64-cross`. With
 * them first on the include path the host's compiler lays out the arm64
 * structs: every type in them is a fixed-size `__u32`/`__u64` (or a
 * 16-byte-aligned `__uint128_t`), laid out alike by the x86_64 and arm64
 * LP64 ABIs.
 */
const ARM64_CROSS_INCLUDE = "/usr/aarch64-linux-gnu/include";

/** Compiles and runs a C program with `flags`; returns its stdout. */
async function runC(source: string, flags: string[] = []): Promise<string> {
  return await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/t.c`, source);
    const cc = await new Deno.Command("cc", {
      args: [...flags, "-o", `${dir}/t`, `${dir}/t.c`],
      stderr: "piped",
    }).output();
    if (!cc.success) {
      throw new Error(
        `Cannot compile the layout probe: ${
          new TextDecoder().decode(cc.stderr)
        }`,
      );
    }
    const out = await new Deno.Command(`${dir}/t`).output();
    return new TextDecoder().decode(out.stdout);
  });
}

/** Prints `name value` lines for C expressions, as unsigned 64-bit numbers. */
async function evalC(
  exprs: Record<string, string>,
  flags: string[] = [],
): Promise<Map<string, bigint>> {
  const lines = Object.entries(exprs).map(([name, expr]) =>
    `printf("${name} %llu\\n", (unsigned long long)(${expr}));`
  );
  // The arm64 header sizes the vGIC windows with the kernel's own SZ_64K,
  // which no uapi header defines.
  const src =
    `#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n#ifndef SZ_64K\n#define SZ_64K 0x10000\n#endif\nint main(void){\n${
      lines.join("\n")
    }\nreturn 0;}\n`;
  const out = await runC(src, flags);
  return new Map(
    out.trim().split("\n").map((l) => {
      const [name, value] = l.split(" ") as [string, string];
      return [name, BigInt(value)];
    }),
  );
}

/** Checks every size and offset of `structs` against the header. */
async function checkLayouts(structs: StructLayout[], flags: string[] = []) {
  const exprs: Record<string, string> = {};
  for (const s of structs) {
    exprs[s.name] = `sizeof(struct ${s.name})`;
    for (const f of Object.keys(s.fields)) {
      exprs[`${s.name}.${f}`] = `offsetof(struct ${s.name}, ${f})`;
    }
  }
  const actual = await evalC(exprs, flags);
  for (const s of structs) {
    assertEquals(
      Number(actual.get(s.name)),
      s.size,
      `sizeof(struct ${s.name})`,
    );
    for (const [f, field] of Object.entries(s.fields)) {
      assertEquals(
        Number(actual.get(`${s.name}.${f}`)),
        field.offset,
        `offsetof(struct ${s.name}, ${f})`,
      );
    }
  }
}

/**
 * The compiler flags that make `<linux/kvm.h>` the arm64 one, or undefined
 * on an x86_64 host without the cross headers. That case is a loud skip but
 * not a failure in CI, whose setup installs commands, not headers: there
 * `src/hv/kvm/regs_arm64_test.ts` still checks the `kvm_regs` offsets
 * against the register ids api.rst lists.
 */
function arm64HeaderFlags(t: Deno.TestContext): string[] | undefined {
  if (Deno.build.arch === "aarch64") return [];
  let present = false;
  try {
    present = Deno.statSync(`${ARM64_CROSS_INCLUDE}/asm/kvm.h`).isFile;
  } catch {
    // absent
  }
  // In CI (`deno task test` installs them) a missing header fails the test.
  if (
    !need(
      t,
      present,
      "the arm64 uapi headers are not installed (apt-get install linux-libc-dev-arm64-cross)",
    )
  ) return undefined;
  return ["-isystem", ARM64_CROSS_INCLUDE];
}

Deno.test("struct layouts match <linux/kvm.h>", async (t) => {
  if (
    !needTool(t, "cc", "a C compiler (build-essential) checks struct layouts")
  ) return;
  await checkLayouts(ALL_STRUCTS);
});

Deno.test("ioctl numbers match <linux/kvm.h>", async (t) => {
  if (
    !needTool(t, "cc", "a C compiler (build-essential) checks ioctl numbers")
  ) return;
  const names = Object.keys(KVM) as (keyof typeof KVM)[];
  const actual = await evalC(
    Object.fromEntries(names.map((n) => [n, `KVM_${n}`])),
  );
  for (const name of names) {
    assertEquals(KVM[name], actual.get(name), `KVM_${name}`);
  }
});

Deno.test("arm64 struct layouts match the arm64 <linux/kvm.h>", async (t) => {
  if (
    !needTool(t, "cc", "a C compiler (build-essential) checks struct layouts")
  ) return;
  const flags = arm64HeaderFlags(t);
  if (flags === undefined) return;
  await checkLayouts(ARM64_STRUCTS, flags);
});

Deno.test("arm64 ioctl numbers and constants match the arm64 <linux/kvm.h>", async (t) => {
  if (
    !needTool(t, "cc", "a C compiler (build-essential) checks ioctl numbers")
  ) return;
  const flags = arm64HeaderFlags(t);
  if (flags === undefined) return;
  const expected: Record<string, bigint | number> = {
    KVM_ARM_VCPU_INIT: KVM_ARM64.ARM_VCPU_INIT,
    KVM_ARM_PREFERRED_TARGET: KVM_ARM64.ARM_PREFERRED_TARGET,
    KVM_GET_ONE_REG: KVM.GET_ONE_REG,
    KVM_SET_ONE_REG: KVM.SET_ONE_REG,
    KVM_CREATE_DEVICE: KVM.CREATE_DEVICE,
    KVM_SET_DEVICE_ATTR: KVM.SET_DEVICE_ATTR,
    KVM_HAS_DEVICE_ATTR: KVM.HAS_DEVICE_ATTR,
    KVM_IRQ_LINE: KVM.IRQ_LINE,
    KVM_ARM_VCPU_POWER_OFF: KVM_ARM_VCPU_FEATURE.POWER_OFF,
    KVM_ARM_VCPU_PSCI_0_2: KVM_ARM_VCPU_FEATURE.PSCI_0_2,
    KVM_DEV_TYPE_ARM_VGIC_V3: KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_GRP_ADDR: KVM_DEV_ARM_VGIC.GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS: KVM_DEV_ARM_VGIC.GRP_NR_IRQS,
    KVM_DEV_ARM_VGIC_GRP_CTRL: KVM_DEV_ARM_VGIC.GRP_CTRL,
    KVM_DEV_ARM_VGIC_CTRL_INIT: KVM_DEV_ARM_VGIC.CTRL_INIT,
    KVM_VGIC_V3_ADDR_TYPE_DIST: KVM_VGIC_V3_ADDR_TYPE.DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST: KVM_VGIC_V3_ADDR_TYPE.REDIST,
    KVM_VGIC_V3_DIST_SIZE: KVM_VGIC_V3_DIST_SIZE,
    KVM_VGIC_V3_REDIST_SIZE: KVM_VGIC_V3_REDIST_SIZE,
    KVM_ARM_IRQ_TYPE_SHIFT: KVM_ARM_IRQ.TYPE_SHIFT,
    KVM_ARM_IRQ_NUM_MASK: KVM_ARM_IRQ.NUM_MASK,
    KVM_ARM_IRQ_TYPE_SPI: KVM_ARM_IRQ.TYPE_SPI,
    KVM_CAP_ONE_REG: KVM_CAP.ONE_REG,
    KVM_CAP_DEVICE_CTRL: KVM_CAP.DEVICE_CTRL,
    KVM_CAP_ARM_PSCI_0_2: KVM_CAP.ARM_PSCI_0_2,
    KVM_EXIT_ARM_NISV: KVM_EXIT.ARM_NISV,
    KVM_REG_ARM64: KVM_REG.ARM64,
    KVM_REG_SIZE_U64: KVM_REG.SIZE_U64,
    KVM_REG_ARM_CORE: KVM_REG.ARM_CORE,
    KVM_REG_ARM64_SYSREG: KVM_REG.ARM64_SYSREG,
    KVM_REG_ARM64_SYSREG_OP0_SHIFT: KVM_REG_ARM64_SYSREG_SHIFT.op0,
    KVM_REG_ARM64_SYSREG_OP1_SHIFT: KVM_REG_ARM64_SYSREG_SHIFT.op1,
    KVM_REG_ARM64_SYSREG_CRN_SHIFT: KVM_REG_ARM64_SYSREG_SHIFT.crn,
    KVM_REG_ARM64_SYSREG_CRM_SHIFT: KVM_REG_ARM64_SYSREG_SHIFT.crm,
    KVM_REG_ARM64_SYSREG_OP2_SHIFT: KVM_REG_ARM64_SYSREG_SHIFT.op2,
  };
  const actual = await evalC(
    Object.fromEntries(Object.keys(expected).map((n) => [n, n])),
    flags,
  );
  for (const [name, value] of Object.entries(expected)) {
    assertEquals(BigInt(value), actual.get(name), name);
  }
});
