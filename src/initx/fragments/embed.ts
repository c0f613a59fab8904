/**
 * Embedding one IR program in another under a name prefix.
 *
 * @module
 */

import type {
  DataItem,
  DataRef,
  Operand,
  Program,
  ProgramBuilder,
  Statement,
} from "../../ir/mod.ts";

/**
 * Copy a compiled-independent IR program into the program being built,
 * renaming its methods, data and globals with a prefix, and return the new
 * name of its entry method (call it with `m.call(name, [...])`).
 *
 * @example
 * ```ts
 * import { ProgramBuilder } from "../../ir/mod.ts";
 * import { embedProgram } from "./mod.ts";
 * const payload = new ProgramBuilder();
 * payload.method("main", (m) => m.return(7));
 * const p = new ProgramBuilder();
 * const entry = embedProgram(p, payload.build(), { prefix: "payload." });
 * p.method("main", (m) => m.return(m.call(entry)));
 * ```
 *
 * @param p The program being built.
 * @param program The program to embed.
 * @param options The prefix for its names (default `"embedded."`).
 * @returns The entry method's new name.
 */
export function embedProgram(
  p: ProgramBuilder,
  program: Program,
  options: { prefix?: string } = {},
): string {
  const prefix = options.prefix ?? "embedded.";
  const rename = <T extends Operand>(o: T): T =>
    o.kind === "data" || o.kind === "global" || o.kind === "method"
      ? { ...o, name: prefix + o.name }
      : o;
  const renameStatement = (s: Statement): Statement => {
    switch (s.kind) {
      case "assign":
      case "convert":
        return { ...s, src: rename(s.src) };
      case "binary":
        return { ...s, a: rename(s.a), b: rename(s.b) };
      case "syscall":
        return { ...s, args: s.args.map(rename) };
      case "call":
        return {
          ...s,
          target: typeof s.target === "string"
            ? prefix + s.target
            : rename(s.target),
          args: s.args.map(rename),
        };
      case "if": {
        const cond = (c: typeof s.cond): typeof s.cond =>
          c.kind === "not"
            ? { kind: "not", cond: cond(c.cond) }
            : { ...c, a: rename(c.a), b: rename(c.b) };
        return {
          ...s,
          cond: cond(s.cond),
          then: s.then.map(renameStatement),
          else: s.else.map(renameStatement),
        };
      }
      case "return":
        return s.value === undefined ? s : { ...s, value: rename(s.value) };
      case "printf":
        return {
          ...s,
          fd: rename(s.fd),
          args: s.args.map((a) =>
            "ptr" in a ? { ptr: rename(a.ptr), len: rename(a.len) } : rename(a)
          ),
        };
      case "label":
      case "goto":
        return s;
      default: {
        const unknown: never = s;
        throw new TypeError(
          `Cannot embed statement: kind "${
            (unknown as Statement).kind
          }" is unknown`,
        );
      }
    }
  };
  for (const item of program.data as DataItem[]) {
    if ("bytes" in item) {
      p.bytes(item.bytes, { name: prefix + item.name });
    } else {
      p.pointers(
        item.pointers.map((t): DataRef | null =>
          t === null ? null : { kind: "data", name: prefix + t }
        ),
        { name: prefix + item.name },
      );
    }
  }
  for (const g of program.globals) p.global(g.size, { name: prefix + g.name });
  for (const method of program.methods) {
    p.method(prefix + method.name, (mb) => {
      mb.method.params.push(...method.params);
      mb.method.buffers.push(...method.buffers);
      mb.method.body.push(...method.body.map(renameStatement));
    });
  }
  return prefix + program.entry;
}
