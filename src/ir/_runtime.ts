/**
 * Runtime methods written in the IR itself, added to a program by the
 * compiler when it uses `printf`. Internal to `src/ir/`. Names start with
 * `$`, which user names never need.
 *
 * @module
 */

import { ProgramBuilder } from "./builder.ts";
import type { Program } from "./ir.ts";

/** `$print_unsigned(fd, value, base)`: write `value` in base 2..16. */
export const PRINT_UNSIGNED = "$print_unsigned";
/** `$print_signed(fd, value)`: write `value` as a signed decimal. */
export const PRINT_SIGNED = "$print_signed";
/** `$strlen(ptr)`: length of a NUL-terminated string. */
export const STRLEN = "$strlen";

let cached: Program | undefined;

/** The runtime methods and their data, built once. */
export function runtime(): Program {
  if (cached) return cached;
  const p = new ProgramBuilder();
  const digits = p.string("0123456789abcdef", { name: "$digits" });
  const minus = p.string("-", { name: "$minus" });

  p.method(PRINT_UNSIGNED, (m) => {
    const [fd, value, base] = m.params("fd", "value", "base");
    const end = m.add(m.buffer(32), 32);
    const cursor = m.var("cursor", { init: end });
    const table = m.var("table");
    m.label("digit");
    m.sub(cursor, 1, { into: cursor });
    m.urem(value, base, { into: table });
    m.add(table, digits, { into: table });
    m.set(m.mem(cursor, { width: 8 }), m.mem(table, { width: 8 }));
    m.udiv(value, base, { into: value });
    m.if(m.ne(value, 0), () => m.goto("digit"));
    m.syscall("write", [fd, cursor, m.sub(end, cursor)]);
    m.return(0);
  });

  p.method(PRINT_SIGNED, (m) => {
    const [fd, value] = m.params("fd", "value");
    m.if(m.isNegative(value), () => {
      m.syscall("write", [fd, minus.ptr, minus.len]);
      m.sub(0, value, { into: value });
    });
    m.call(PRINT_UNSIGNED, [fd, value, 10]);
    m.return(0);
  });

  p.method(STRLEN, (m) => {
    const [ptr] = m.params("ptr");
    const cursor = m.var("cursor", { init: ptr });
    const byte = m.var("byte", { width: 8 });
    m.label("next");
    m.set(byte, m.mem(cursor, { width: 8 }));
    m.if(m.isZero(byte), () => m.goto("done"));
    m.add(cursor, 1, { into: cursor });
    m.goto("next");
    m.label("done");
    m.return(m.sub(cursor, ptr));
  });
  cached = p.build();
  return cached;
}
