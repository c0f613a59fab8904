// initx's own IR-compiled init as PID 1 of the default kernel: it loads
// kernel modules with init_module, runs a command, prints its status and
// powers off.
import { equal, ok } from "node:assert/strict";
import { bootLinux } from "../../src/initx/linux_vm.ts";
import {
  buildBusyboxInitramfs,
  busyboxApplets,
  findStaticBusybox,
  loadInitModules,
} from "../../src/initx/busybox_guest.ts";
import { DEFAULT_MARKER, EXIT_STATUS_PREFIX } from "../../src/initx/init.ts";
import { ensureKernel } from "../../src/boot/kernel.ts";
import { cannotBootLinuxReason } from "../../src/hv/kvm/host.ts";
import { need } from "../_gate.ts";

async function defaultKernel(): Promise<{ image: string; modules: string }> {
  const image = Deno.env.get("INITX_LAB_KERNEL");
  const modules = Deno.env.get("INITX_LAB_MODULES");
  if (image && modules) return { image, modules };
  const k = await ensureKernel();
  if (!k.modules) throw new Error(`Kernel ${k.version} has no modules`);
  return { image: k.image, modules: k.modules };
}

Deno.test("the IR init boots the default kernel, loads modules, runs a command and powers off", async (t) => {
  const why = cannotBootLinuxReason();
  if (!need(t, why === undefined, why ?? "")) return;
  const busybox = findStaticBusybox();
  if (
    !need(t, busybox !== undefined, "busybox (busybox-static) is not installed")
  ) return;
  const kernel = await defaultKernel();
  const modules = await loadInitModules(kernel.modules, [
    "virtio_mmio",
    "vmw_vsock_virtio_transport",
  ]);
  ok(
    modules.length >= 3,
    `expected dependencies too, got ${modules.map((m) => m.name)}`,
  );
  const initrd = buildBusyboxInitramfs({
    busybox: await Deno.readFile(busybox!),
    applets: await busyboxApplets(busybox!),
    command: [
      "sh",
      "-c",
      "cut -d' ' -f1 /proc/modules | sort; echo pid=$$; exit 3",
    ],
    modules,
  });
  const result = await bootLinux({
    kernel: kernel.image,
    initrd,
    memoryMiB: 256,
    timeoutMs: 120_000,
  });
  const text = result.console.replaceAll("\r", "");
  equal(result.outcome.kind, "power-off", text.slice(-3000));
  ok(text.includes(DEFAULT_MARKER), text.slice(-3000));
  for (const m of modules) {
    ok(
      text.includes(`${m.name}\n`),
      `module ${m.name} not in /proc/modules:\n${text.slice(-3000)}`,
    );
  }
  ok(text.includes(`${EXIT_STATUS_PREFIX}3`), text.slice(-3000));
  ok(
    !text.includes("pid=1\n"),
    "the command ran as PID 1 instead of a child of the init",
  );
});

Deno.test("initx run busybox -- CMD returns the command's output and exit status", async (t) => {
  const why = cannotBootLinuxReason();
  if (!need(t, why === undefined, why ?? "")) return;
  const { runCommand } = await import("../../src/cli/run.ts");
  let out = "";
  const errors: string[] = [];
  const code = await runCommand([
    "busybox",
    "--",
    "sh",
    "-c",
    "echo hi from $(uname -s); dmesg | head -n 1 | cut -c1-15; printf no-newline; exit 4",
  ], {
    out: (b) => out += new TextDecoder().decode(b),
    err: (l) => errors.push(l),
  });
  // Output lines that look like kernel log lines are the command's too, and
  // output without a final newline stays so.
  equal(out, "hi from Linux\n[    0.000000] \nno-newline", errors.join("\n"));
  equal(code, 4, errors.join("\n"));
});

Deno.test("initx run -i streams stdin in; stdout and stderr come back apart", async (t) => {
  const why = cannotBootLinuxReason();
  if (!need(t, why === undefined, why ?? "")) return;
  const { runCommand } = await import("../../src/cli/run.ts");
  let out = "";
  let errOut = "";
  const errors: string[] = [];
  const decoder = new TextDecoder();
  const code = await runCommand([
    "-i",
    "--boot-timeout",
    "180",
    "busybox",
    "--",
    "sh",
    "-c",
    "while read l; do echo out:$l; echo err:$l >&2; done; exit 5",
  ], {
    out: (b) => out += decoder.decode(b),
    errOut: (b) => errOut += decoder.decode(b),
    err: (l) => errors.push(l),
    stdin: new Blob(["one\n", "two\n"]).stream(),
  });
  equal(out, "out:one\nout:two\n", errors.join("\n"));
  equal(errOut, "err:one\nerr:two\n", errors.join("\n"));
  equal(code, 5, errors.join("\n"));
});
