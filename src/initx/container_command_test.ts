import { deepEqual, equal, throws } from "node:assert/strict";
import type { LayerEntry } from "../vfs/layer.ts";
import { OverlayFs } from "../vfs/overlay.ts";
import { LayerTree } from "../vfs/tree.ts";
import {
  CONTAINER_DEFAULT_PATH,
  readTextFile,
  resolveContainerCommand,
  statPath,
} from "./container_command.ts";

const text = (s: string) => new TextEncoder().encode(s);
const base = { mode: 0o755, uid: 0, gid: 0, mtimeMs: 0 };

async function imageFs(): Promise<OverlayFs> {
  const entries: LayerEntry[] = [
    { ...base, path: "bin", type: "directory" },
    { ...base, path: "bin/busybox", type: "file", data: text("ELF") },
    { ...base, path: "bin/sh", type: "symlink", linkTarget: "busybox" },
    { ...base, path: "usr", type: "directory" },
    { ...base, path: "usr/bin", type: "directory" },
    // An absolute link: resolved against the image's root, not the host's.
    {
      ...base,
      path: "usr/bin/env",
      type: "symlink",
      linkTarget: "/bin/busybox",
    },
    {
      ...base,
      path: "usr/bin/notes",
      type: "file",
      mode: 0o644,
      data: text("x"),
    },
    { ...base, path: "usr/local", type: "directory" },
    { ...base, path: "usr/local/bin", type: "directory" },
    {
      ...base,
      path: "usr/local/bin/loop",
      type: "symlink",
      linkTarget: "loop",
    },
    { ...base, path: "etc", type: "directory" },
    {
      ...base,
      path: "etc/passwd",
      type: "file",
      mode: 0o644,
      data: text(
        "root:x:0:0:root:/root:/bin/sh\n# comment\nwww:x:33:34:www:/var/www:/bin/sh\n",
      ),
    },
    {
      ...base,
      path: "etc/group",
      type: "file",
      mode: 0o644,
      data: text("root:x:0:\nwww:x:34:\nstaff:x:50:\n"),
    },
    { ...base, path: "app", type: "directory" },
    { ...base, path: "app/run", type: "file", data: text("#!/bin/sh\n") },
  ];
  const tree = new LayerTree();
  await tree.applyLayer(entries);
  return new OverlayFs(tree);
}

Deno.test("resolveContainerCommand() runs the image's Entrypoint and Cmd, found through PATH", async () => {
  const fs = await imageFs();
  const cmd = resolveContainerCommand(fs, {
    Entrypoint: ["env"],
    Cmd: ["sh"],
    Env: ["PATH=/usr/local/bin:/usr/bin:/bin", "A=1"],
  });
  equal(cmd.path, "/usr/bin/env");
  deepEqual(cmd.argv, ["env", "sh"]);
  deepEqual(cmd.env, [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "A=1",
    "HOME=/root",
  ]);
  equal(cmd.cwd, "/");
  equal(cmd.uid, 0);
  equal(cmd.gid, 0);
});

Deno.test("resolveContainerCommand() overrides: command, env, workdir, user by name and number", async () => {
  const fs = await imageFs();
  const image = { Cmd: ["sh"], Env: ["A=1", "B=2"], User: "www" };
  const cmd = resolveContainerCommand(fs, image, {
    command: ["sh", "-c", "id -u"],
    env: ["B=3", "C=4", "HOSTVAR", "MISSING"],
    workdir: "/app",
    hostEnv: (n) => n === "HOSTVAR" ? "from-host" : undefined,
  });
  equal(cmd.path, "/bin/sh");
  deepEqual(cmd.argv, ["sh", "-c", "id -u"]);
  deepEqual(cmd.env, [
    "A=1",
    "B=3",
    "C=4",
    "HOSTVAR=from-host",
    `PATH=${CONTAINER_DEFAULT_PATH}`,
    "HOME=/var/www",
  ]);
  equal(cmd.cwd, "/app");
  deepEqual([cmd.uid, cmd.gid], [33, 34]);
  const numeric = resolveContainerCommand(fs, image, { user: "1000" });
  deepEqual([numeric.uid, numeric.gid], [1000, 0]);
  const known = resolveContainerCommand(fs, image, { user: "33" });
  deepEqual([known.uid, known.gid], [33, 34]);
  const both = resolveContainerCommand(fs, image, { user: "www:staff" });
  deepEqual([both.uid, both.gid], [33, 50]);
  const ids = resolveContainerCommand(fs, image, { user: "7:8" });
  deepEqual([ids.uid, ids.gid], [7, 8]);
  equal(
    resolveContainerCommand(fs, image, { command: ["./run"], workdir: "/app" })
      .path,
    "/app/run",
  );
});

Deno.test("resolveContainerCommand() names what is wrong", async () => {
  const fs = await imageFs();
  throws(() => resolveContainerCommand(fs, {}), /neither Entrypoint nor Cmd/);
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["nosuch"] }),
    /"nosuch" is not found in the image's PATH/,
  );
  // Not executable, a symlink loop, a missing absolute path.
  throws(() => resolveContainerCommand(fs, { Cmd: ["notes"] }), /not found/);
  throws(() => resolveContainerCommand(fs, { Cmd: ["loop"] }), /not found/);
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["/bin/nope"] }),
    /not a file/,
  );
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["sh"] }, { user: "nobody" }),
    /user "nobody": the image's \/etc\/passwd has no such user/,
  );
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["sh"] }, { user: "www:nogroup" }),
    /group "nogroup"/,
  );
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["sh"] }, { user: "a:b:c" }),
    /USER:GROUP/,
  );
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["sh"] }, { env: ["=x"] }),
    /no name/,
  );
  throws(
    () => resolveContainerCommand(fs, { Cmd: ["sh"] }, { workdir: "app" }),
    /not an absolute path/,
  );
});

Deno.test("statPath() and readTextFile() follow links inside the image only", async () => {
  const fs = await imageFs();
  equal(statPath(fs, "/usr/bin/env")?.size, 3);
  equal(statPath(fs, "/usr/bin/../../bin/sh")?.size, 3);
  equal(statPath(fs, "/../../bin/busybox")?.size, 3, "'..' stops at the root");
  equal(statPath(fs, "/etc/passwd/x"), undefined);
  equal(readTextFile(fs, "/etc/group")?.split("\n")[1], "www:x:34:");
  equal(readTextFile(fs, "/etc/shadow"), undefined);
});
