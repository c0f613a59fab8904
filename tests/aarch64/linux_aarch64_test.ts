// arm64 Linux guests: `initx run busybox` on arm64 KVM (inside the arm64 KVM
// lab on other hosts; `deno task test` puts this file there). One boot, as
// the emulated lab is slow: two vCPUs (the second started by PSCI CPU_ON),
// the container's command output on its own streams, and its exit status.
import { equal } from "node:assert/strict";
import { join } from "node:path";
import { need } from "../_gate.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import { ImageStore } from "../../src/image/store.ts";

const ON_ARM64 = Deno.build.arch === "aarch64";

Deno.test({
  name:
    "initx run busybox on arm64: uname -m, two vCPUs, stdout, stderr and the exit code",
  ignore: !ON_ARM64,
  async fn(t) {
    const why = cannotBootLinuxReason();
    if (!need(t, why === undefined, why ?? "")) return;
    const cacheDir = await Deno.makeTempDir({ prefix: "initx-arm64-e2e-" });
    try {
      const { runCommand } = await import("../../src/cli/run.ts");
      const decoder = new TextDecoder();
      let out = "";
      let errOut = "";
      const messages: string[] = [];
      const code = await runCommand(
        [
          "--boot-timeout",
          "600",
          "--cpus",
          "2",
          "busybox",
          "--",
          "sh",
          "-c",
          "uname -m; nproc; echo err >&2; exit 3",
        ],
        {
          out: (b) => out += decoder.decode(b, { stream: true }),
          errOut: (b) => errOut += decoder.decode(b, { stream: true }),
          err: (l) => messages.push(l),
          images: new ImageStore({ dir: join(cacheDir, "images") }),
          offline: true,
        },
      );
      const log = messages.join("\n");
      equal(out, "aarch64\n2\n", log + errOut);
      equal(errOut, "err\n", log);
      equal(code, 3, log);
    } finally {
      await Deno.remove(cacheDir, { recursive: true });
    }
  },
});
