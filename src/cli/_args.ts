/**
 * Small helpers shared by the CLI's subcommands.
 *
 * @module
 */

import { describeProgress, type ImageProgress } from "../image/store.ts";

/** Parses a flag's value as an integer of at least 1. */
export function positiveInteger(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`${flag} "${text}" is not a positive integer`);
  }
  return n;
}

/** Parses a flag's value as a number above 0. */
export function positiveNumber(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) {
    throw new Error(`${flag} "${text}" is not a positive number`);
  }
  return n;
}

/** Writes all of `bytes` to a synchronous writer. */
export function writeAll(
  w: { writeSync(p: Uint8Array): number },
  bytes: Uint8Array,
) {
  let done = 0;
  while (done < bytes.length) done += w.writeSync(bytes.subarray(done));
}

/**
 * Prints image progress on stderr, each line after `prefix: `: on a
 * terminal, one line rewritten in place while blobs download; elsewhere,
 * the status lines only.
 */
export function progressPrinter(
  prefix: string,
  err: (line: string) => void = (line) => console.error(line),
): {
  event: (e: ImageProgress) => void;
  done: () => void;
} {
  const tty = Deno.stderr.isTerminal();
  let open = false;
  const encoder = new TextEncoder();
  const done = () => {
    if (open) writeAll(Deno.stderr, encoder.encode("\n"));
    open = false;
  };
  return {
    event: (e) => {
      if (e.kind === "status") {
        done();
        err(`${prefix}: ${e.message}`);
      } else if (tty) {
        writeAll(
          Deno.stderr,
          encoder.encode(`\r\x1b[K${prefix}: ${describeProgress(e)}`),
        );
        open = true;
      }
    },
    done,
  };
}
