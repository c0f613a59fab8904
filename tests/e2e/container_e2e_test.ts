// `initx run IMAGE`: containers on a virtio-fs root, in real VMs. The image
// cache is a temporary one shared by the tests (the offline busybox is built
// into it once); no registry is asked.
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { need } from "../_gate.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import { ImageStore } from "../../src/image/store.ts";
import { findStaticBusybox } from "../../src/initx/busybox_guest.ts";
import {
  bytes,
  makeImage,
  writeOciLayout,
} from "../../src/image/image_test_util.ts";

const cacheDir = await Deno.makeTempDir({ prefix: "initx-container-e2e-" });
const images = new ImageStore({ dir: join(cacheDir, "images") });

interface Ran {
  code: number;
  out: string;
  errOut: string;
  messages: string;
}

/** A terminal of a fixed size for `-t`; it never resizes and has no raw mode. */
const fixedTerminal = {
  size: () => ({ columns: 100, rows: 30 }),
  onResize: () => () => {},
  setRaw: () => {
    throw new Error(
      "raw mode must not be set for a stdin that is not the terminal",
    );
  },
};

async function initxRun(args: string[], stdin?: string): Promise<Ran> {
  const { runCommand } = await import("../../src/cli/run.ts");
  const decoder = new TextDecoder();
  let out = "";
  let errOut = "";
  const messages: string[] = [];
  const code = await runCommand(
    ["--boot-timeout", "180", ...(stdin === undefined ? [] : ["-i"]), ...args],
    {
      out: (b) => out += decoder.decode(b, { stream: true }),
      errOut: (b) => errOut += decoder.decode(b, { stream: true }),
      err: (l) => messages.push(l),
      stdin: stdin === undefined ? undefined : new Blob([stdin]).stream(),
      images,
      offline: true,
      terminal: fixedTerminal,
    },
  );
  return { code, out, errOut, messages: messages.join("\n") };
}

function canBoot(t: Deno.TestContext): boolean {
  const why = cannotBootLinuxReason();
  return need(t, why === undefined, why ?? "");
}

Deno.test("initx run busybox -- sh -c: stdout, stderr and the exit code come back apart", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun([
    "busybox",
    "--",
    "sh",
    "-c",
    "echo hi; echo err >&2; exit 3",
  ]);
  equal(r.out, "hi\n", r.messages);
  equal(r.errOut, "err\n", r.messages);
  equal(r.code, 3, r.messages);
  ok(
    r.messages.includes("building it from the host's static busybox"),
    r.messages,
  );
});

Deno.test("initx run honours -e, -w and -u (by number and by name), with the container's mounts", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun([
    "-e",
    "FOO=bar baz",
    "-w",
    "/tmp",
    "-u",
    "65534",
    "busybox",
    "--",
    "sh",
    "-c",
    'echo "$FOO|$(pwd)|$(id -u):$(id -g)|$HOME|$(hostname)|$$"; grep -c " /proc proc " /proc/mounts; test -c /dev/null && echo dev-ok',
  ]);
  const [first = "", ...rest] = r.out.split("\n");
  const fields = first.split("|");
  equal(
    fields.slice(0, 5).join("|"),
    "bar baz|/tmp|65534:65534|/home|initx",
    r.messages + r.errOut,
  );
  ok(
    Number(fields[5]) > 1,
    `the command runs as a child of the init, not PID 1: ${first}`,
  );
  equal(rest.join("\n"), "1\ndev-ok\n", r.out);
  equal(r.code, 0, r.messages + r.errOut);
  const named = await initxRun(["-u", "nobody", "busybox", "--", "id", "-u"]);
  equal(named.out, "65534\n", named.messages + named.errOut);
  const missing = await initxRun(["-u", "nosuch", "busybox", "--", "true"]);
  equal(missing.code, 1);
  ok(missing.messages.includes('user "nosuch"'), missing.messages);
});

Deno.test("initx run: an image's Entrypoint, Cmd, Env, WorkingDir and User, and its whiteouts", async (t) => {
  if (!canBoot(t)) return;
  const busybox = findStaticBusybox();
  if (!need(t, busybox !== undefined, "no static busybox on this host")) return;
  const image = await makeImage([
    [
      { name: "bin/", kind: "directory" },
      {
        name: "bin/busybox",
        kind: "file",
        mode: 0o755,
        data: await Deno.readFile(busybox!),
      },
      { name: "bin/sh", kind: "symlink", linkName: "busybox" },
      { name: "bin/id", kind: "symlink", linkName: "busybox" },
      { name: "bin/ls", kind: "symlink", linkName: "busybox" },
      { name: "etc/", kind: "directory" },
      {
        name: "etc/passwd",
        kind: "file",
        data: bytes(
          "root:x:0:0::/root:/bin/sh\napp:x:1234:4321::/home/app:/bin/sh\n",
        ),
      },
      { name: "srv/", kind: "directory", uid: 1234, gid: 4321 },
      { name: "srv/gone", kind: "file", data: bytes("lower\n") },
      { name: "srv/kept", kind: "file", data: bytes("kept\n") },
    ],
    [{ name: "srv/.wh.gone", kind: "file" }],
  ], {
    config: {
      Entrypoint: ["/bin/sh", "-c"],
      Cmd: ['echo "$GREETING from $(pwd) as $(id -u):$(id -g)"; ls'],
      Env: ["PATH=/bin", "GREETING=hello"],
      WorkingDir: "/srv",
      User: "app",
    },
  });
  const layout = join(cacheDir, "layout");
  await writeOciLayout(layout, [["v1", image.manifest]], [
    image.manifest,
    image.config,
    ...image.layers,
  ]);
  const r = await initxRun([`oci:${layout}:v1`]);
  equal(r.out, "hello from /srv as 1234:4321\nkept\n", r.messages + r.errOut);
  equal(r.code, 0);
  // A command after -- replaces Cmd, after the Entrypoint.
  const over = await initxRun([
    `oci:${layout}:v1`,
    "--",
    "echo $GREETING again",
  ]);
  equal(over.out, "hello again\n", over.messages + over.errOut);
});

Deno.test("initx run: writes last for the run only and never reach the image cache", async (t) => {
  if (!canBoot(t)) return;
  const write = await initxRun([
    "busybox",
    "--",
    "sh",
    "-c",
    "echo new > /etc/new && cat /etc/new && rm /bin/ls && test ! -e /bin/ls && echo removed && mkdir -p /a/b && mv /etc/new /a/b/ && cat /a/b/new",
  ]);
  equal(write.out, "new\nremoved\nnew\n", write.messages + write.errOut);
  const after = await initxRun([
    "busybox",
    "--",
    "sh",
    "-c",
    "test ! -e /etc/new && test ! -e /a && test -e /bin/ls && echo clean",
  ]);
  equal(after.out, "clean\n", after.messages + after.errOut);
});

Deno.test("initx run -v: a read-write volume changes the host directory, a read-only one refuses writes, escapes fail", async (t) => {
  if (!canBoot(t)) return;
  const rw = await Deno.makeTempDir({ dir: cacheDir, prefix: "rw-" });
  const ro = await Deno.makeTempDir({ dir: cacheDir, prefix: "ro-" });
  await Deno.writeTextFile(join(ro, "in"), "from host\n");
  await Deno.writeTextFile(join(cacheDir, "secret"), "outside\n");
  const r = await initxRun([
    "-v",
    `${rw}:/data`,
    "-v",
    `${ro}:/mnt/in:ro`,
    "busybox",
    "--",
    "sh",
    "-c",
    [
      "cat /mnt/in/in",
      "echo guest > /data/out",
      "echo x > /mnt/in/new 2>/dev/null || echo ro-refused",
      // Escapes: a symlink pointing out, '..' from the share root, a rename
      // out of the share, a hard link from outside.
      "ln -s /etc/passwd /data/link; cat /data/link | head -n 1",
      "ln -s ../secret /data/up; cat /data/up 2>/dev/null || echo up-refused",
      "cat /data/../secret 2>/dev/null || echo dotdot-refused",
      // The init raised the read-ahead of the root and of the volumes.
      "for d in / /data; do cat /sys/class/bdi/$(awk -v d=$d '$5 == d && / - virtiofs / {print $3}' /proc/self/mountinfo)/read_ahead_kb; done",
    ].join("; "),
  ]);
  equal(r.code, 0, r.messages + r.errOut);
  const lines = r.out.split("\n");
  equal(lines[0], "from host");
  equal(lines[1], "ro-refused");
  // The symlink resolves inside the guest, to the guest's own /etc/passwd.
  equal(lines[2], "root:x:0:0:root:/root:/bin/sh");
  equal(lines[3], "up-refused");
  equal(lines[4], "dotdot-refused");
  equal(lines.slice(5, 7).join(","), "1024,1024", r.out);
  ok(!r.out.includes("outside"), r.out);
  equal(await Deno.readTextFile(join(rw, "out")), "guest\n");
  equal(
    await Deno.readLink(join(rw, "link")),
    "/etc/passwd",
    "the guest's symlink is stored as written",
  );
  const names = [];
  for await (const e of Deno.readDir(ro)) names.push(e.name);
  equal(names.join(","), "in");
  equal(await Deno.readTextFile(join(cacheDir, "secret")), "outside\n");
});

Deno.test("initx run -i with the image root streams stdin through", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun(
    ["busybox", "--", "sh", "-c", "wc -l; exit 7"],
    "a\nb\nc\n",
  );
  equal(r.out.trim(), "3", r.messages + r.errOut);
  equal(r.code, 7);
});

Deno.test("initx run -t: the command's terminal is the guest's hvc0, sized like the host's", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun([
    "-t",
    "busybox",
    "--",
    "sh",
    "-c",
    'tty; stty size; echo "term=$TERM"; [ -t 0 ] && [ -t 2 ] && echo all-tty; exit 4',
  ]);
  const lines = r.out.replaceAll("\r\n", "\n");
  ok(lines.startsWith("/dev/hvc0\n"), lines + r.messages); // boot lines stay out
  ok(lines.includes("30 100\n"), lines);
  ok(/term=\S+\n/.test(lines), lines);
  ok(lines.includes("all-tty\n"), lines);
  equal(r.code, 4, r.messages);
});

Deno.test("initx run -i -t: keys reach an interactive shell through its terminal", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun(
    ["-t", "busybox", "--", "sh"],
    "echo typed-$((6*7))\nexit 5\n",
  );
  ok(r.out.includes("typed-42"), r.out + r.messages);
  equal(r.code, 5, r.messages);
});

Deno.test("initx run --exec: the command is PID 1 and sees only its own processes", async (t) => {
  if (!canBoot(t)) return;
  const r = await initxRun([
    "--exec",
    "busybox",
    "--",
    "sh",
    "-c",
    'echo "pid=$$"; cat /proc/1/comm; ls -d /proc/[0-9]* | wc -l; exit 6',
  ]);
  const [pid, comm, count] = r.out.trim().split("\n").map((l) => l.trim());
  equal(pid, "pid=1", r.out + r.messages);
  // Its own /proc: PID 1 is the command, and it sees only its processes.
  equal(comm, "sh", r.out);
  ok(Number(count) >= 1 && Number(count) <= 3, r.out);
  equal(r.code, 6, r.messages);
});
