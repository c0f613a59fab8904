import { withTempDir } from "../../tests/_util.ts";
/**
 * Test helper: disassemble bytes with GNU objdump, the reference the
 * encoders are checked against. Internal to `src/ir/` tests.
 *
 * @module
 */

/** One instruction as objdump prints it. */
export interface Disassembled {
  /** Offset of the instruction. */
  offset: number;
  /** Mnemonic and operands, normalised (single spaces, no comments). */
  text: string;
}

const COMMANDS = {
  x86_64: ["objdump", [
    "-D",
    "-b",
    "binary",
    "-m",
    "i386:x86-64",
    "-M",
    "intel",
  ]],
  aarch64: ["aarch64-linux-gnu-objdump", [
    "-D",
    "-b",
    "binary",
    "-m",
    "aarch64",
  ]],
} as const;

/** Collapse whitespace, drop trailing comments (`#` on x86, `//` on arm), lower-case. */
export function normalise(text: string, arch: "x86_64" | "aarch64"): string {
  const comment = arch === "x86_64" ? /\s+#.*$/ : /\s*\/\/.*$/;
  return text.replace(comment, "").replace(/\s+/g, " ").replace(/, /g, ",")
    .trim().toLowerCase();
}

/**
 * Disassemble `bytes` with objdump for `arch`; throws a clear error when
 * objdump is missing.
 */
export async function disassemble(
  bytes: Uint8Array,
  arch: "x86_64" | "aarch64",
): Promise<Disassembled[]> {
  const [command, args] = COMMANDS[arch];
  return await withTempDir(async (dir) => {
    const file = `${dir}/code.bin`;
    await Deno.writeFile(file, bytes);
    let output: Deno.CommandOutput;
    try {
      output = await new Deno.Command(command, { args: [...args, file] })
        .output();
    } catch (error) {
      throw new Error(
        `Cannot run ${command}: ${(error as Error).message} (install binutils${
          arch === "aarch64" ? "-aarch64-linux-gnu" : ""
        })`,
      );
    }
    if (!output.success) {
      throw new Error(
        `Cannot disassemble: ${new TextDecoder().decode(output.stderr)}`,
      );
    }
    const lines = new TextDecoder().decode(output.stdout).split("\n");
    const result: Disassembled[] = [];
    for (const line of lines) {
      const match = /^\s*([0-9a-f]+):\t[0-9a-f ]+\t(.*)$/.exec(line);
      if (!match) continue;
      result.push({
        offset: parseInt(match[1]!, 16),
        text: normalise(match[2]!, arch),
      });
    }
    return result;
  });
}
