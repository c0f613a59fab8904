import { equal } from "node:assert/strict";
import { ProgramBuilder } from "../ir/mod.ts";
import { run } from "../ir/_run_test_util.ts";
import { withTempDir } from "../../tests/_util.ts";
import { raiseReadAhead, VIRTIOFS_READ_AHEAD_KB } from "./read_ahead.ts";

/** `MAJOR:MINOR` of a `st_dev`, as Linux names backing devices. */
function bdiName(dev: number): string {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  return `${major}:${minor}`;
}

function program(paths: string[], bdiRoot: string) {
  const p = new ProgramBuilder();
  p.method("main", (m) => {
    for (const path of paths) raiseReadAhead(m, path, { bdiRoot });
    m.return(0);
  });
  return p.build();
}

for (const arch of ["x86_64", "aarch64"] as const) {
  Deno.test(`raiseReadAhead() writes the read-ahead of the path's device (${arch})`, async () => {
    await withTempDir(async (dir) => {
      const dev = (await Deno.stat(dir)).dev;
      const file = `${dir}/bdi/${bdiName(dev)}/read_ahead_kb`;
      await Deno.mkdir(`${dir}/bdi/${bdiName(dev)}`, { recursive: true });
      await Deno.writeTextFile(file, "128");
      const result = await run(
        program(["/nonexistent/path", dir], `${dir}/bdi`),
        { arch, dir },
      );
      if (result === undefined) return; // no emulator; the helper warned
      equal(result.code, 0);
      equal(await Deno.readTextFile(file), String(VIRTIOFS_READ_AHEAD_KB));
    });
  });

  Deno.test(`raiseReadAhead() leaves things alone without the bdi directory (${arch})`, async () => {
    await withTempDir(async (dir) => {
      const result = await run(program([dir], `${dir}/bdi`), { arch, dir });
      if (result === undefined) return;
      equal(result.code, 0);
      equal(
        [...Deno.readDirSync(dir)].some((e) => e.name === "bdi"),
        false,
      );
    });
  });
}
