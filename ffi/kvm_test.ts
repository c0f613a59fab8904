import { equal as assertEquals } from "node:assert/strict";
import { ALL_STRUCTS, KVM } from "./kvm.ts";
import { needTool } from "../tests/_gate.ts";
import { withTempDir } from "../tests/_util.ts";

/** Compiles and runs a C program; returns its stdout. */
async function runC(source: string): Promise<string> {
  return await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/t.c`, source);
    const cc = await new Deno.Command("cc", {
      args: ["-o", `${dir}/t`, `${dir}/t.c`],
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

Deno.test("struct layouts match <linux/kvm.h>", async (t) => {
  if (
    !needTool(t, "cc", "a C compiler (build-essential) checks struct layouts")
  ) return;
  const lines: string[] = [];
  for (const s of ALL_STRUCTS) {
    lines.push(`printf("${s.name} %zu\\n", sizeof(struct ${s.name}));`);
    for (const f of Object.keys(s.fields)) {
      lines.push(
        `printf("${s.name}.${f} %zu\\n", offsetof(struct ${s.name}, ${f}));`,
      );
    }
  }
  const src =
    `#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void){\n${
      lines.join("\n")
    }\nreturn 0;}\n`;
  const out = await runC(src);
  const actual = new Map(
    out.trim().split("\n").map((l) => l.split(" ") as [string, string]),
  );
  for (const s of ALL_STRUCTS) {
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
});

Deno.test("ioctl numbers match <linux/kvm.h>", async (t) => {
  if (
    !needTool(t, "cc", "a C compiler (build-essential) checks ioctl numbers")
  ) return;
  const names = Object.keys(KVM);
  const src = `#include <stdio.h>\n#include <linux/kvm.h>\nint main(void){\n${
    names.map((n) => `printf("${n} %lu\\n", (unsigned long)KVM_${n});`).join(
      "\n",
    )
  }\nreturn 0;}\n`;
  const out = await runC(src);
  for (const line of out.trim().split("\n")) {
    const [name, value] = line.split(" ") as [keyof typeof KVM, string];
    assertEquals(KVM[name], BigInt(value), `KVM_${name}`);
  }
});
