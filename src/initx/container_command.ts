/**
 * What a container runs: its image config's Entrypoint, Cmd, Env,
 * WorkingDir and User, with the user's overrides, turned into an exec of a
 * path inside the image (as the user, group, directory and environment to
 * use). The host looks into the image's filesystem itself, before boot: the
 * command is found through `PATH` there, and user and group names come from
 * its `/etc/passwd` and `/etc/group`, so a command that cannot run is
 * reported before a VM is started.
 *
 * @module
 */

import {
  type Filesystem,
  O_RDONLY,
  ROOT_NODE_ID,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
} from "../vfs/filesystem.ts";

/** `PATH` when the image's environment has none (as container runtimes use). */
export const CONTAINER_DEFAULT_PATH =
  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** Symbolic links followed in one path at most (Linux's MAXSYMLINKS). */
const MAX_SYMLINKS = 40;
/** The longest `/etc/passwd` or `/etc/group` read, in bytes. */
const MAX_ACCOUNT_FILE_BYTES = 4 * 1024 * 1024;

/**
 * The runtime part of an image config (OCI config.md `config`).
 *
 * @example
 * ```ts
 * import type { ContainerDefaults } from "./container_command.ts";
 * const defaults: ContainerDefaults = { Cmd: ["sh"], Env: ["PATH=/bin"] };
 * ```
 */
export interface ContainerDefaults {
  /** User or `user:group`, by name or number. */
  User?: string;
  /** `NAME=value` strings. */
  Env?: string[];
  /** The command's leading arguments. */
  Entrypoint?: string[] | null;
  /** The default arguments (after the entrypoint). */
  Cmd?: string[] | null;
  /** Working directory. */
  WorkingDir?: string;
}

/**
 * What the user gave on the command line, each overriding the image.
 *
 * @example
 * ```ts
 * import type { ContainerOverrides } from "./container_command.ts";
 * const o: ContainerOverrides = { command: ["id", "-u"], user: "1000", env: ["A=1"] };
 * ```
 */
export interface ContainerOverrides {
  /** Replaces the image's Cmd (the Entrypoint stays in front). */
  command?: readonly string[];
  /** `NAME=value` (set) or `NAME` (taken from `hostEnv`), after the image's. */
  env?: readonly string[];
  /** Working directory. */
  workdir?: string;
  /** `user`, `user:group`, `uid` or `uid:gid`. */
  user?: string;
  /** Where `-e NAME` looks names up (default: none are found). */
  hostEnv?: (name: string) => string | undefined;
}

/**
 * The command a container's init executes.
 *
 * @example
 * ```ts
 * import type { ContainerCommand } from "./container_command.ts";
 * const c: ContainerCommand = {
 *   path: "/bin/sh", argv: ["sh"], env: ["PATH=/bin"], cwd: "/", uid: 0, gid: 0,
 * };
 * ```
 */
export interface ContainerCommand {
  /** The executable, an absolute path inside the image. */
  path: string;
  /** Its arguments, `argv[0]` included. */
  argv: string[];
  /** Its environment. */
  env: string[];
  /** Its working directory. */
  cwd: string;
  /** User ID. */
  uid: number;
  /** Group ID. */
  gid: number;
}

/**
 * Resolves what the container runs. Throws an `Error` that names what is
 * wrong: no command at all, an executable not found through `PATH`, a user
 * or group name the image does not know.
 *
 * @example
 * ```ts ignore
 * import { resolveContainerCommand } from "./container_command.ts";
 * const cmd = resolveContainerCommand(fs, { Cmd: ["sh"] }, { command: ["echo", "hi"] });
 * console.log(cmd.path); // /bin/echo
 * ```
 */
export function resolveContainerCommand(
  fs: Filesystem,
  defaults: ContainerDefaults,
  overrides: ContainerOverrides = {},
): ContainerCommand {
  const argv = [
    ...(defaults.Entrypoint ?? []),
    ...(overrides.command?.length ? overrides.command : defaults.Cmd ?? []),
  ];
  if (argv.length === 0) {
    throw new Error(
      "Cannot run the container: no command was given and the image has neither Entrypoint nor Cmd",
    );
  }
  const env = mergeEnv(defaults.Env ?? [], overrides);
  const account = resolveUser(fs, overrides.user ?? defaults.User ?? "");
  if (!env.some((e) => e.startsWith("HOME="))) {
    env.push(`HOME=${account.home ?? "/"}`);
  }
  const cwd = overrides.workdir || defaults.WorkingDir || "/";
  if (!cwd.startsWith("/")) {
    throw new Error(
      `Cannot run the container: the working directory ${
        JSON.stringify(cwd)
      } is not an absolute path`,
    );
  }
  const path = findExecutable(fs, argv[0]!, envValue(env, "PATH"), cwd);
  return { path, argv, env, cwd, uid: account.uid, gid: account.gid };
}

/** The image's environment with the overrides applied, PATH always set. */
function mergeEnv(image: readonly string[], o: ContainerOverrides): string[] {
  const vars = new Map<string, string>();
  for (const e of image) {
    const at = e.indexOf("=");
    if (at > 0) vars.set(e.slice(0, at), e.slice(at + 1));
  }
  for (const e of o.env ?? []) {
    const at = e.indexOf("=");
    if (at === 0 || e === "") {
      throw new Error(
        `Cannot set the environment variable ${
          JSON.stringify(e)
        }: it has no name (use NAME=value)`,
      );
    }
    if (at > 0) vars.set(e.slice(0, at), e.slice(at + 1));
    else {
      const value = o.hostEnv?.(e);
      if (value !== undefined) vars.set(e, value);
    }
  }
  if (!vars.has("PATH")) vars.set("PATH", CONTAINER_DEFAULT_PATH);
  return [...vars].map(([k, v]) => `${k}=${v}`);
}

function envValue(env: readonly string[], name: string): string {
  const e = env.find((x) => x.startsWith(`${name}=`));
  return e === undefined ? "" : e.slice(name.length + 1);
}

/** A user and group resolved against the image. */
interface Account {
  uid: number;
  gid: number;
  home?: string;
}

const NUMERIC = /^\d+$/;

/**
 * `user[:group]` by name or number; names from `/etc/passwd` and
 * `/etc/group` in `fs`. A numeric user not in the passwd file gets group 0.
 */
export function resolveUser(fs: Filesystem, spec: string): Account {
  const [user = "", group, ...rest] = spec.split(":");
  if (rest.length > 0 || (group !== undefined && group === "")) {
    throw new Error(
      `Cannot run the container as ${
        JSON.stringify(spec)
      }: use USER, USER:GROUP, UID or UID:GID`,
    );
  }
  // No user: root, with its home from the passwd file when it has one.
  const name = user === "" ? "0" : user;
  const passwd = parseAccounts(readTextFile(fs, "/etc/passwd"));
  let account: Account;
  {
    const found = passwd.find((f) =>
      NUMERIC.test(name) ? f[2] === name : f[0] === name
    );
    if (found === undefined && !NUMERIC.test(name)) {
      throw new Error(
        `Cannot run the container as user "${user}": the image's /etc/passwd has no such user`,
      );
    }
    account = found === undefined ? { uid: idNumber(user, "user"), gid: 0 } : {
      uid: idNumber(found[2] ?? "", "user"),
      gid: idNumber(found[3] ?? "", "group"),
      home: found[5] || undefined,
    };
  }
  if (group !== undefined) {
    if (NUMERIC.test(group)) account.gid = idNumber(group, "group");
    else {
      const found = parseAccounts(readTextFile(fs, "/etc/group")).find((f) =>
        f[0] === group
      );
      if (found === undefined) {
        throw new Error(
          `Cannot run the container with group "${group}": the image's /etc/group has no such group`,
        );
      }
      account.gid = idNumber(found[2] ?? "", "group");
    }
  }
  return account;
}

function idNumber(text: string, what: string): number {
  const n = Number(text);
  if (!NUMERIC.test(text) || n > 0xfffffffe) {
    throw new Error(`Cannot use ${what} ID ${JSON.stringify(text)}`);
  }
  return n;
}

/** The colon-separated lines of a passwd or group file. */
function parseAccounts(text: string | undefined): string[][] {
  return (text ?? "").split("\n").filter((l) => l && !l.startsWith("#"))
    .map((l) => l.split(":"));
}

/**
 * The absolute path `name` runs from: `name` itself when it holds a `/`
 * (made absolute against `cwd`), else the first executable regular file
 * `DIR/name` over the `PATH` directories.
 */
export function findExecutable(
  fs: Filesystem,
  name: string,
  path: string,
  cwd: string,
): string {
  if (name.includes("/")) {
    const full = normalizePath(name.startsWith("/") ? name : `${cwd}/${name}`);
    const attr = statPath(fs, full);
    if (attr === undefined || (attr.mode & S_IFMT) !== S_IFREG) {
      throw new Error(
        `Cannot run the container: ${name} is not a file in the image`,
      );
    }
    return full;
  }
  for (const dir of path.split(":")) {
    if (!dir.startsWith("/")) continue;
    const full = `${dir.replace(/\/$/, "")}/${name}`;
    const attr = statPath(fs, full);
    if (
      attr !== undefined && (attr.mode & S_IFMT) === S_IFREG &&
      (attr.mode & 0o111) !== 0
    ) return full;
  }
  throw new Error(
    `Cannot run the container: "${name}" is not found in the image's PATH (${path})`,
  );
}

/** A node found by {@linkcode withPath}. */
export interface FoundNode {
  /** Its node ID (valid inside the callback only). */
  nodeid: number;
  /** Type and permission bits. */
  mode: number;
  /** Size in bytes. */
  size: number;
}

/** `path` without empty, `.` and `..` parts (`..` at the root stays there). */
function normalizePath(path: string): string {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return "/" + out.join("/");
}

/**
 * The attributes of `path` in `fs`, symbolic links followed, or undefined
 * when it does not exist.
 */
export function statPath(
  fs: Filesystem,
  path: string,
): FoundNode | undefined {
  return withPath(fs, path, (node) => node);
}

/**
 * Calls `use` with the node at `path` in `fs` (symbolic links followed:
 * relative ones against their directory, absolute ones against the image's
 * root), or with undefined when it does not exist; the lookups it made are
 * given back (`forget`) once `use` returns.
 */
export function withPath<T>(
  fs: Filesystem,
  path: string,
  use: (node: FoundNode | undefined) => T,
): T {
  const pending = path.split("/").filter((p) => p && p !== ".");
  const stack: number[] = []; // the directories above the current one
  let node = ROOT_NODE_ID;
  let mode = S_IFDIR | 0o755;
  let size = 0;
  let links = 0;
  const looked: number[] = [];
  try {
    while (pending.length > 0) {
      const part = pending.shift()!;
      if ((mode & S_IFMT) !== S_IFDIR) return use(undefined);
      if (part === "..") {
        node = stack.pop() ?? ROOT_NODE_ID;
        mode = S_IFDIR;
        continue;
      }
      let entry;
      try {
        entry = fs.lookup(node, part);
      } catch {
        return use(undefined);
      }
      looked.push(entry.nodeid);
      if ((entry.attr.mode & S_IFMT) === S_IFLNK) {
        if (++links > MAX_SYMLINKS) return use(undefined);
        const target = fs.readlink(entry.nodeid);
        pending.unshift(...target.split("/").filter((p) => p && p !== "."));
        if (target.startsWith("/")) {
          stack.length = 0;
          node = ROOT_NODE_ID;
        }
        mode = S_IFDIR;
        continue;
      }
      stack.push(node);
      node = entry.nodeid;
      mode = entry.attr.mode;
      size = entry.attr.size;
    }
    return use({ nodeid: node, mode, size });
  } finally {
    for (const id of looked) {
      try {
        fs.forget(id, 1);
      } catch {
        // A lookup count the filesystem no longer holds: nothing to undo.
      }
    }
  }
}

/** A whole small file of the image as text, or undefined when missing. */
export function readTextFile(fs: Filesystem, path: string): string | undefined {
  return withPath(fs, path, (attr) => {
    if (attr === undefined || (attr.mode & S_IFMT) !== S_IFREG) {
      return undefined;
    }
    if (attr.size > MAX_ACCOUNT_FILE_BYTES) {
      throw new Error(
        `Cannot read ${path} of the image: ${attr.size} bytes is more than ${MAX_ACCOUNT_FILE_BYTES}`,
      );
    }
    const { fh } = fs.open(attr.nodeid, O_RDONLY);
    try {
      const out = new Uint8Array(attr.size);
      let at = 0;
      while (at < attr.size) {
        const pieces = fs.read(attr.nodeid, fh, at, attr.size - at);
        const before = at;
        for (const p of pieces) {
          const n = Math.min(p.length, attr.size - at);
          out.set(p.subarray(0, n), at);
          at += n;
        }
        if (at === before) break;
      }
      return new TextDecoder().decode(out.subarray(0, at));
    } finally {
      fs.release(attr.nodeid, fh);
    }
  });
}
