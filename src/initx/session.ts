/**
 * `startSession`: boot a VM (unless it already is), run one program in it,
 * and hand back a handle to wait for or stop the run.
 *
 * @module
 */

import type { GuestProgram, VirtualMachine } from "./virtual_machine.ts";

/** Default boot limit of a session. */
export const DEFAULT_SESSION_BOOT_TIMEOUT_MS = 10_000;

/** Options of {@linkcode startSession}. */
export interface SessionOptions {
  /** Limit from the VM's start to the init's connection (default 10 s). */
  bootTimeout?: number;
  /** The VM is booted already: go straight to the program. */
  skipBoot?: boolean;
  /** Called once the guest is up, before the program starts. */
  onBootComplete?: (vm: VirtualMachine) => void | Promise<void>;
  /** Aborting stops the session (the VM is closed). */
  signal?: AbortSignal;
  /** The program's stdin (default: none). */
  stdin?: ReadableStream<Uint8Array> | Uint8Array;
  /** Receives the program's stdout (default: discarded). */
  stdout?: WritableStream<Uint8Array>;
  /** Receives the program's stderr (default: discarded). */
  stderr?: WritableStream<Uint8Array>;
}

/** A running session. */
export interface Session {
  /** The session's VM. */
  readonly vm: VirtualMachine;
  /**
   * Resolves when the program ended with status 0; rejects with
   * `ExitError`, `BootTimeoutError`, `VmTerminatedError` or the abort
   * reason.
   */
  readonly done: Promise<void>;
  /**
   * Waits up to `timeoutMs` (default 0) for the program to end by itself,
   * then closes the VM; resolves once it is closed.
   */
  stop(timeoutMs?: number): Promise<void>;
  /** `done`, for symmetry with process handles. */
  wait(): Promise<void>;
}

/**
 * Boots `vm` (unless `skipBoot`) and runs `program` on it.
 *
 * @example
 * ```ts ignore
 * import { ProgramBuilder, startSession, VirtualMachine } from "./mod.ts";
 * const p = new ProgramBuilder();
 * p.method("main", (m) => m.return(0));
 * const vm = await VirtualMachine.create();
 * const session = startSession(vm, p.build(), { bootTimeout: 30_000 });
 * await session.wait();
 * await session.stop();
 * ```
 */
export function startSession(
  vm: VirtualMachine,
  program: GuestProgram,
  options: SessionOptions = {},
): Session {
  const signal = options.signal;
  const done = (async () => {
    signal?.throwIfAborted();
    if (!options.skipBoot) {
      await vm.boot({
        timeoutMs: options.bootTimeout ?? DEFAULT_SESSION_BOOT_TIMEOUT_MS,
        signal,
      });
    }
    await options.onBootComplete?.(vm);
    signal?.throwIfAborted();
    await vm.runWithStreamingOutput(program, {
      stdin: options.stdin,
      stdout: options.stdout,
      stderr: options.stderr,
      signal,
    });
  })();
  // A rejection nobody awaited must not end the process: callers learn of
  // it through `done`/`wait()`.
  done.catch(() => {});
  return {
    vm,
    done,
    wait: () => done,
    async stop(timeoutMs = 0) {
      if (timeoutMs > 0) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          done.catch(() => {}),
          new Promise((r) => timer = setTimeout(r, timeoutMs)),
        ]);
        clearTimeout(timer);
      }
      await vm.close();
    },
  };
}
