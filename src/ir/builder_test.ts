import { deepEqual } from "node:assert/strict";
import { ProgramBuilder } from "./builder.ts";

Deno.test("ProgramBuilder.build() returns the IR the builder calls describe", () => {
  const p = new ProgramBuilder();
  const hi = p.string("hi", { nulTerminated: true });
  p.method("main", (m) => {
    const [argc] = m.params("argc");
    m.if(m.gt(argc, 1), () => m.printf("%s\n", [hi]));
    m.return(m.add(argc, 1));
  });
  const argc = { kind: "var", name: "argc", width: 64 } as const;
  const t0 = { kind: "var", name: "$t0", width: 64 } as const;
  deepEqual(p.build(), {
    entry: "main",
    data: [{ name: "$d0", bytes: new Uint8Array([104, 105, 0]) }],
    globals: [],
    methods: [{
      name: "main",
      params: [argc],
      buffers: [],
      body: [
        {
          kind: "if",
          cond: {
            kind: "compare",
            op: "gt",
            a: argc,
            b: { kind: "const", value: 1n },
          },
          then: [{
            kind: "printf",
            fd: { kind: "const", value: 1n },
            format: "%s\n",
            args: [{
              ptr: { kind: "data", name: "$d0" },
              len: { kind: "const", value: 2n, width: 64 },
            }],
          }],
          else: [],
        },
        {
          kind: "binary",
          op: "add",
          dst: t0,
          a: argc,
          b: { kind: "const", value: 1n },
        },
        { kind: "return", value: t0 },
      ],
    }],
  });
});

Deno.test("MethodBuilder.while() lowers to labels and gotos", () => {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    const i = m.var("i");
    m.while(m.ne(i, 0), () => m.sub(i, 1, { into: i }));
  });
  const kinds = p.build().methods[0]!.body.map((s) =>
    s.kind === "label"
      ? `label ${s.name}`
      : s.kind === "goto"
      ? `goto ${s.label}`
      : s.kind
  );
  deepEqual(kinds, [
    "label $while0",
    "if",
    "binary",
    "goto $while0",
    "label $wend0",
  ]);
});
