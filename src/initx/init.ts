/**
 * The guest's PID 1 for running one command: an IR program built from
 * fragments. In order it mounts devtmpfs on `/dev`, proc on `/proc`, sysfs
 * on `/sys` and tmpfs on `/dev/shm`, loads the configured kernel modules,
 * makes `/dev/console` its controlling terminal and fds 0-2, prints a
 * marker line, runs the command (or an embedded IR program), prints
 * `initx: exit status N`, and powers off. With `serve` it runs programs the
 * host sends over vsock instead (`docs/protocol.md`) until the host closes
 * the connection, then powers off.
 *
 * PID 1 must never return: the kernel would panic. Any failure prints
 * `initx: <step> failed: errno N` and then powers off (or reboots, or
 * panics, as configured); when even that fails it exits, and the kernel
 * panics.
 *
 * ```ts
 * import { buildInitElf } from "./init.ts";
 * const elf = buildInitElf({ run: { path: "/bin/sh", argv: ["sh"] } }, { arch: "x86_64" });
 * ```
 *
 * @module
 */

import {
  type Arch,
  compileElf,
  type MethodBuilder,
  type Program,
  ProgramBuilder,
} from "../ir/mod.ts";
import {
  attachConsole,
  embedProgram,
  Errno,
  forkExecWait,
  loadModule,
  mkdir,
  mount,
  type OnError,
  powerOff,
  reboot,
} from "./fragments/mod.ts";
import {
  serveProgramsFragment,
  type ServeProgramsOptions,
} from "./program_loop.ts";

/** Mount flags (`include/uapi/linux/mount.h`). */
const MS_NOSUID = 0x2;
const MS_NODEV = 0x4;
const MS_NOEXEC = 0x8;

/**
 * The line the init prints before running the command, unless configured.
 *
 * @example
 * ```ts
 * import { DEFAULT_MARKER } from "./init.ts";
 * console.assert(DEFAULT_MARKER.startsWith("initx:"));
 * ```
 */
export const DEFAULT_MARKER = "initx: init ready";

/**
 * What precedes the command's exit status on its line (`initx: exit
 * status 0`). A status of 128 + N means signal N ended the command.
 *
 * @example
 * ```ts
 * import { EXIT_STATUS_PREFIX } from "./init.ts";
 * const line = "initx: exit status 3";
 * console.assert(Number(line.slice(EXIT_STATUS_PREFIX.length)) === 3);
 * ```
 */
export const EXIT_STATUS_PREFIX = "initx: exit status ";

/**
 * A kernel module the init loads with `init_module`.
 *
 * @example
 * ```ts
 * import type { InitModule } from "./init.ts";
 * const module: InitModule = { name: "virtio_mmio", bytes: new Uint8Array(0) };
 * ```
 */
export interface InitModule {
  /** Module name, for messages. */
  name: string;
  /** The `.ko` file's (uncompressed) contents. */
  bytes: Uint8Array;
  /** Module parameters, e.g. `"device=4K@0xd0000000:5"` (default none). */
  params?: string;
}

/**
 * The command the init runs.
 *
 * @example
 * ```ts
 * import type { InitCommand } from "./init.ts";
 * const command: InitCommand = { path: "/bin/echo", argv: ["echo", "hi"] };
 * ```
 */
export interface InitCommand {
  /** Executable path in the guest. */
  path: string;
  /** Arguments, `argv[0]` included. */
  argv: readonly string[];
  /** Environment (default: {@link DEFAULT_ENV}). */
  env?: readonly string[];
  /** Working directory (default `/`). */
  cwd?: string;
}

/**
 * The environment of the command unless configured.
 *
 * @example
 * ```ts
 * import { DEFAULT_ENV } from "./init.ts";
 * console.assert(DEFAULT_ENV.some((v) => v.startsWith("PATH=")));
 * ```
 */
export const DEFAULT_ENV: readonly string[] = [
  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  "HOME=/",
  "TERM=linux",
];

/**
 * What the init does after a failure: power off (the default), reboot, or
 * exit, which makes the kernel panic.
 *
 * @example
 * ```ts
 * import type { FailureAction } from "./init.ts";
 * const action: FailureAction = "panic";
 * ```
 */
export type FailureAction = "powerOff" | "reboot" | "panic";

/**
 * Configuration of {@link buildInitProgram}.
 *
 * @example
 * ```ts
 * import type { InitConfig } from "./init.ts";
 * const config: InitConfig = {
 *   marker: "guest up",
 *   run: { path: "/bin/sh", argv: ["sh", "-c", "uname -a"] },
 * };
 * ```
 */
export interface InitConfig {
  /** Kernel modules, loaded in this order (one already loaded is fine). */
  modules?: readonly InitModule[];
  /** The line printed once the console is attached (default {@link DEFAULT_MARKER}). */
  marker?: string;
  /** The command to run; at most one of `run`, `program` and `serve`. */
  run?: InitCommand;
  /**
   * An IR program whose entry is called with the init's `argc`, `argv` and
   * `envp`; its result is printed as the exit status.
   */
  program?: Program;
  /**
   * Serve programs the host sends (`docs/protocol.md`) until it closes the
   * control connection; `{}` connects to the host's vsock ports.
   */
  serve?: ServeProgramsOptions;
  /** The console device (default `/dev/console`). */
  console?: string;
  /** What to do after a failure (default `"powerOff"`). */
  onFailure?: FailureAction;
  /**
   * Further steps, run after the console is attached and before the command,
   * program or program loop (a container's root, say). They jump to
   * `onError` on failure.
   */
  setup?: (m: MethodBuilder, onError: OnError) => void;
}

/**
 * Build the init program.
 *
 * @example
 * ```ts
 * import { buildInitProgram } from "./init.ts";
 * const program = buildInitProgram({ run: { path: "/bin/true", argv: ["true"] } });
 * console.assert(program.entry === "main");
 * ```
 *
 * @param config What to load and run.
 * @returns The IR program.
 * @throws {TypeError} When more than one of `run`, `program` and `serve` is given.
 */
export function buildInitProgram(config: InitConfig): Program {
  if (config.run !== undefined && config.program !== undefined) {
    throw new TypeError(
      "Cannot build the init program: give either run or program, not both",
    );
  }
  if (
    config.serve !== undefined &&
    (config.run !== undefined || config.program !== undefined)
  ) {
    throw new TypeError(
      "Cannot build the init program: serve runs the host's programs, give no run or program with it",
    );
  }
  const p = new ProgramBuilder();
  const payload = config.program === undefined
    ? undefined
    : embedPayload(p, config.program);
  p.method("main", (m) => {
    const [argc, argv, envp] = m.params("argc", "argv", "envp");
    const errno = m.var("errno", { init: 0 });
    const step = m.var("step", { init: 0 });
    const onError: OnError = { errno, goto: "fail", step };

    mountEarlyFilesystems(m, onError);
    for (const module of config.modules ?? []) {
      loadModule(m, { ...module, ignore: [Errno.EEXIST], onError });
    }
    attachConsole(m, { path: config.console ?? "/dev/console", onError });
    m.printf("%s\n", [p.string(config.marker ?? DEFAULT_MARKER)]);
    config.setup?.(m, onError);

    if (config.run !== undefined) {
      const { path, argv: args, env, cwd } = config.run;
      const status = forkExecWait(m, {
        path,
        argv: args,
        env: env ?? DEFAULT_ENV,
        cwd: cwd ?? "/",
        onError,
      });
      m.printf(`${EXIT_STATUS_PREFIX}%d\n`, [status]);
    } else if (payload !== undefined) {
      const status = m.call(
        payload.entry,
        [argc, argv, envp].slice(0, payload.params),
      );
      m.printf(`${EXIT_STATUS_PREFIX}%d\n`, [status]);
    } else if (config.serve !== undefined) {
      serveProgramsFragment(m, { ...config.serve, onError });
    }
    powerOff(m, { onError });

    m.label("fail");
    m.printf("initx: %s failed: errno %d\n", [step, errno]);
    const lastResort: OnError = { errno, goto: "panic", step };
    switch (config.onFailure ?? "powerOff") {
      case "powerOff":
        powerOff(m, { onError: lastResort });
        break;
      case "reboot":
        reboot(m, { onError: lastResort });
        break;
      case "panic":
        break;
    }
    m.syscall("exit_group", [1]);
    m.label("panic");
    m.printf("initx: %s failed: errno %d\n", [step, errno]);
    m.syscall("exit_group", [1]);
  });
  return p.build();
}

/** Embed the payload; its entry takes up to three of `argc`, `argv`, `envp`. */
function embedPayload(
  p: ProgramBuilder,
  program: Program,
): { entry: string; params: number } {
  const params = program.methods.find((m) => m.name === program.entry)?.params
    .length ?? 0;
  if (params > 3) {
    throw new TypeError(
      `Cannot build the init program: the program's entry "${program.entry}" takes ${params} parameters, at most 3 (argc, argv, envp)`,
    );
  }
  return { entry: embedProgram(p, program, { prefix: "payload." }), params };
}

/** devtmpfs, proc, sysfs and a tmpfs for POSIX shared memory. */
function mountEarlyFilesystems(m: MethodBuilder, onError: OnError): void {
  const mounts = [
    {
      source: "devtmpfs",
      target: "/dev",
      fstype: "devtmpfs",
      flags: MS_NOSUID,
    },
    {
      source: "proc",
      target: "/proc",
      fstype: "proc",
      flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
    },
    {
      source: "sysfs",
      target: "/sys",
      fstype: "sysfs",
      flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
    },
    {
      source: "tmpfs",
      target: "/dev/shm",
      fstype: "tmpfs",
      flags: MS_NOSUID | MS_NODEV,
      data: "mode=1777",
    },
  ];
  for (const spec of mounts) {
    mkdir(m, { path: spec.target, ignore: [Errno.EEXIST], onError });
    mount(m, { ...spec, ignore: [Errno.EBUSY], onError });
  }
}

/**
 * Build the init program and compile it to a static ELF executable.
 *
 * @example
 * ```ts
 * import { buildInitElf } from "./init.ts";
 * const elf = buildInitElf({}, { arch: "aarch64" });
 * console.assert(elf[0] === 0x7f);
 * ```
 *
 * @param config What to load and run.
 * @param options The target architecture.
 * @returns The executable's bytes.
 */
export function buildInitElf(
  config: InitConfig,
  options: { arch: Arch },
): Uint8Array {
  return compileElf(buildInitProgram(config), options);
}
