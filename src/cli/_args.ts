/**
 * Small helpers shared by the CLI's subcommands.
 *
 * @module
 */

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
