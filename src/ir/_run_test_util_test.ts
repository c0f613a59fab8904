import { deepEqual, equal, throws } from "node:assert/strict";
import { HOST_ARCH } from "../../tests/_util.ts";
import { launcher } from "./_run_test_util.ts";

const foreign = HOST_ARCH === "x86_64" ? "aarch64" : "x86_64";

Deno.test("launcher() fails in CI when the emulator is missing", () => {
  throws(() => launcher(foreign, { emulatorDir: "/nonexistent", ci: true }), {
    message:
      `Cannot run ${foreign} programs: /nonexistent/qemu-${foreign}-static is missing ` +
      "(apt-get install -y qemu-user-static)",
  });
});

Deno.test("launcher() skips loudly outside CI when the emulator is missing", () => {
  const warn = console.warn;
  const warnings: string[] = [];
  console.warn = (message: string) => warnings.push(message);
  try {
    equal(
      launcher(foreign, { emulatorDir: "/nonexistent", ci: false }),
      undefined,
    );
  } finally {
    console.warn = warn;
  }
  equal(warnings.length, 1);
});

Deno.test("launcher() runs the host architecture natively", () => {
  deepEqual(launcher(HOST_ARCH), []);
});
