/**
 * Debian packages of another architecture for the lab: the host's dpkg
 * learns the architecture (`dpkg --add-architecture`), apt-get downloads the
 * `.deb` files and `dpkg-deb -x` unpacks them into a cached root, which is
 * never installed on the host.
 *
 * @module
 */

import { join } from "node:path";
import { createHash } from "node:crypto";

const decoder = new TextDecoder();

async function run(
  cmd: string[],
  options: { cwd?: string } = {},
): Promise<string> {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    cwd: options.cwd,
    env: { LC_ALL: "C", DEBIAN_FRONTEND: "noninteractive" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot run "${cmd.join(" ")}": exit ${out.code}: ${
        decoder.decode(out.stderr).trim().slice(-2000)
      }`,
    );
  }
  return decoder.decode(out.stdout);
}

/**
 * Makes apt know the packages of Debian architecture `debArch` (e.g.
 * `arm64`): adds it to dpkg's foreign architectures and refreshes the
 * package lists, once. Does nothing for the host's own architecture.
 */
export async function ensureDebianArch(
  debArch: string,
  progress: (line: string) => void,
): Promise<void> {
  if ((await run(["dpkg", "--print-architecture"])).trim() === debArch) return;
  const foreign = (await run(["dpkg", "--print-foreign-architectures"]))
    .split(/\s+/);
  if (foreign.includes(debArch)) return;
  progress(
    `lab: adding the Debian architecture ${debArch} (dpkg --add-architecture, apt-get update)`,
  );
  await run(["dpkg", "--add-architecture", debArch]);
  await run(["apt-get", "update", "-qq"]);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Name of the file that marks a finished root and lists its `.deb` files. */
const ROOT_STAMP = ".debs";

/**
 * Returns a directory holding `packages` (names with their architecture,
 * e.g. `libc6:arm64`) unpacked with `dpkg-deb -x`, under `parent`; fetched
 * with `apt-get download` the first time, reused afterwards.
 */
export async function ensureDebianRoot(
  parent: string,
  packages: readonly string[],
  progress: (line: string) => void,
): Promise<string> {
  const key = createHash("sha256").update(packages.join("\n")).digest("hex");
  const dir = join(parent, `debian-${key.slice(0, 16)}`);
  if (await exists(join(dir, ROOT_STAMP))) return dir;
  progress(`lab: fetching ${packages.join(" ")} (apt-get download, once)`);
  await Deno.mkdir(parent, { recursive: true });
  const temp = await Deno.makeTempDir({ dir: parent, prefix: ".debian-" });
  try {
    const debs = join(temp, "debs");
    const root = join(temp, "root");
    await Deno.mkdir(debs);
    const sandbox = Deno.uid() === 0 ? ["-o", "APT::Sandbox::User=root"] : [];
    await run(["apt-get", ...sandbox, "download", ...packages], { cwd: debs });
    const files: string[] = [];
    for await (const e of Deno.readDir(debs)) {
      if (e.name.endsWith(".deb")) files.push(e.name);
    }
    files.sort();
    if (files.length !== packages.length) {
      throw new Error(
        `Cannot fetch ${packages.join(" ")}: apt-get download left ${
          files.join(", ") || "no .deb file"
        }`,
      );
    }
    for (const f of files) {
      await run(["dpkg-deb", "-x", join(debs, f), root]);
    }
    await Deno.writeTextFile(join(root, ROOT_STAMP), files.join("\n") + "\n");
    try {
      await Deno.rename(root, dir);
    } catch (error) {
      // Another lab run may have finished the same root first: use theirs.
      if (!await exists(join(dir, ROOT_STAMP))) {
        // A root left without its stamp is unfinished: replace it.
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        await Deno.rename(root, dir).catch(() => {
          throw error;
        });
      }
    }
  } finally {
    await Deno.remove(temp, { recursive: true }).catch(() => {});
  }
  return dir;
}
