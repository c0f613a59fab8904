import { deepEqual, equal, ok } from "node:assert/strict";
import { compileElf, type Statement } from "../ir/mod.ts";
import {
  buildContainerInitProgram,
  CONTAINER_ROOT_TAG,
} from "./container_init.ts";

function syscalls(statements: Statement[]): string[] {
  return statements.flatMap((s) =>
    s.kind === "syscall"
      ? [s.name]
      : s.kind === "if"
      ? [...syscalls(s.then), ...syscalls(s.else)]
      : []
  );
}

Deno.test("buildContainerInitProgram() compiles for both architectures", () => {
  for (const arch of ["x86_64", "aarch64"] as const) {
    const elf = compileElf(buildContainerInitProgram({ serve: {} }), { arch });
    ok(elf.length > 0 && elf.length < 64 * 1024, `${arch}: ${elf.length}`);
  }
});

Deno.test("buildContainerInitProgram() enters the virtio-fs root before it serves programs", () => {
  const program = buildContainerInitProgram({ hostname: "box", serve: {} });
  const main = program.methods.find((m) => m.name === "main")!;
  const calls = syscalls(main.body);
  // The switch_root order: mount the root, chdir there, move it onto "/",
  // chroot, chdir "/"; then the container's mounts and hostname.
  const at = (name: string, from = 0) => calls.indexOf(name, from);
  const rootMount = calls.findIndex((c, i) =>
    c === "mount" && calls.slice(0, i).filter((x) => x === "mount").length >= 4
  );
  ok(rootMount > 0, calls.join(","));
  const order = [
    at("chdir", rootMount),
    at("mount", at("chdir", rootMount)),
    at("chroot", rootMount),
    at("sethostname", rootMount),
  ];
  deepEqual([...order].sort((a, b) => a - b), order, calls.join(","));
  ok(order.every((i) => i > 0), calls.join(","));
  const tag = program.data.find((d) =>
    "bytes" in d &&
    new TextDecoder().decode(d.bytes) === `${CONTAINER_ROOT_TAG}\0`
  );
  ok(tag, "the root tag is in the program's data");
});

Deno.test("buildContainerInitProgram() raises the read-ahead of the root and of each share", () => {
  const program = buildContainerInitProgram({
    serve: {},
    shares: [{ tag: "share0", path: "/data", readOnly: false }],
  });
  const main = program.methods.find((m) => m.name === "main")!;
  const calls = (statements: Statement[]): string[] =>
    statements.flatMap((s) =>
      s.kind === "call" && typeof s.target === "string"
        ? [s.target]
        : s.kind === "if"
        ? [...calls(s.then), ...calls(s.else)]
        : []
    );
  equal(calls(main.body).filter((c) => c === "$raise_read_ahead").length, 2);
  ok(program.methods.some((m) => m.name === "$raise_read_ahead"));
});
