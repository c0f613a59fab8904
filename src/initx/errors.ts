/**
 * The typed errors of running programs in a guest: a program that exited
 * with a non-zero status ({@link ExitError}), a VM that ended
 * ({@link VmTerminatedError}), an init that never connected
 * ({@link BootTimeoutError}), bad data from the guest ({@link ProtocolError})
 * and a step of the init itself that failed ({@link GuestError}).
 *
 * ```ts
 * import { ExitError, VmTerminatedError } from "./errors.ts";
 * try {
 *   throw new ExitError(3);
 * } catch (e) {
 *   if (e instanceof ExitError) console.assert(e.code === 3);
 *   else if (e instanceof VmTerminatedError) console.log(e.reason);
 * }
 * ```
 *
 * @module
 */

/**
 * Names of the errnos a guest error most likely carries
 * (`include/uapi/asm-generic/errno-base.h`, `errno.h`; x86_64 and aarch64
 * share them).
 */
const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  10: "ECHILD",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  19: "ENODEV",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  32: "EPIPE",
  38: "ENOSYS",
  97: "EAFNOSUPPORT",
  104: "ECONNRESET",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
};

/**
 * A program exited with a non-zero status. `code` is 0..255, or 128 + N
 * when signal N ended it; `stdout` and `stderr` hold the captured output,
 * when there was any capture.
 *
 * @example
 * ```ts
 * import { ExitError } from "./errors.ts";
 * const error = new ExitError(2, { stderr: new TextEncoder().encode("no\n") });
 * console.assert(error.message === "Cannot run the program: it exited with status 2");
 * ```
 */
export class ExitError extends Error {
  /** The exit status, 1..255 (128 + N for signal N). */
  readonly code: number;
  /** The captured standard output, when it was captured. */
  readonly stdout?: Uint8Array;
  /** The captured standard error, when it was captured. */
  readonly stderr?: Uint8Array;

  /**
   * Make the error.
   *
   * @param code The exit status.
   * @param output The captured output, if any.
   */
  constructor(
    code: number,
    output: { stdout?: Uint8Array; stderr?: Uint8Array } = {},
  ) {
    super(`Cannot run the program: it exited with status ${code}`);
    this.name = "ExitError";
    this.code = code;
    if (output.stdout !== undefined) this.stdout = output.stdout;
    if (output.stderr !== undefined) this.stderr = output.stderr;
  }
}

/**
 * The VM ended (or was ended) while a program ran, or before it could run.
 *
 * @example
 * ```ts
 * import { VmTerminatedError } from "./errors.ts";
 * const error = new VmTerminatedError("the guest powered off");
 * console.assert(error.reason === "the guest powered off");
 * ```
 */
export class VmTerminatedError extends Error {
  /** Why the VM ended. */
  readonly reason: string;

  /**
   * Make the error.
   *
   * @param reason Why the VM ended, e.g. `"the guest powered off"`.
   */
  constructor(reason: string) {
    super(`Cannot run the program: the VM ended (${reason})`);
    this.name = "VmTerminatedError";
    this.reason = reason;
  }
}

/**
 * The guest's init did not connect to the host within the time limit.
 *
 * @example
 * ```ts
 * import { BootTimeoutError } from "./errors.ts";
 * const error = new BootTimeoutError(30_000);
 * console.assert(error.timeoutMs === 30_000);
 * ```
 */
export class BootTimeoutError extends Error {
  /** The limit that passed, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * Make the error.
   *
   * @param timeoutMs The limit, in milliseconds.
   */
  constructor(timeoutMs: number) {
    super(
      `Cannot reach the guest: the init did not connect within ${timeoutMs} ms`,
    );
    this.name = "BootTimeoutError";
    this.timeoutMs = timeoutMs;
  }
}

/**
 * The guest sent data that breaks the program protocol
 * (`docs/protocol.md`): a bad magic, size, type or order.
 *
 * @example
 * ```ts
 * import { ProtocolError } from "./errors.ts";
 * const error = new ProtocolError("Cannot read the hello: bad magic 0x0");
 * console.assert(error.name === "ProtocolError");
 * ```
 */
export class ProtocolError extends Error {
  /**
   * Make the error.
   *
   * @param message The full message.
   */
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/**
 * A step of the guest's init failed (mapping the code, connecting a stream,
 * forking, ...), so the program did not run or its streams could not be set
 * up. The init goes on serving programs.
 *
 * @example
 * ```ts
 * import { GuestError } from "./errors.ts";
 * const error = new GuestError(12);
 * console.assert(error.message === "Cannot run the program: a step of the init failed with errno 12 (ENOMEM)");
 * ```
 */
export class GuestError extends Error {
  /** The positive errno the init reported. */
  readonly errno: number;

  /**
   * Make the error.
   *
   * @param errno The positive errno.
   */
  constructor(errno: number) {
    const name = ERRNO_NAMES[errno];
    super(
      `Cannot run the program: a step of the init failed with errno ${errno}${
        name === undefined ? "" : ` (${name})`
      }`,
    );
    this.name = "GuestError";
    this.errno = errno;
  }
}
