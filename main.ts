/**
 * mkchat — chat with Llama-3.2-1B from the command line, on a CUDA megakernel or the CPU reference engine.
 *
 * This file only builds the command-line program (commander) and hands each command to cli/. Every failure ends
 * here as one line on stderr: see cli/errors.ts for the exit codes.
 * @module
 */
import { Command, CommanderError, Option } from "commander";
import { EXIT, reportError, UsageError } from "./cli/errors.ts";
import {
  DEFAULT_MODEL,
  parseChoice,
  parseGenerationFlags,
  parseIntIn,
  parseModelText,
  type RawGenerationFlags,
  SELFTEST_MODEL,
} from "./cli/options.ts";

const verbose = Deno.args.includes("--verbose");

/** The flags chat and run share. */
function addGenerationFlags(cmd: Command): Command {
  return cmd
    .option("--model <M>", "HF repo id (org/name[@rev]), a local folder, or synthetic:<shape>[@seed]", DEFAULT_MODEL)
    .addOption(new Option("--device <D>", "where to run: auto, cuda or cpu").default("auto"))
    .option("--system <TEXT>", "system prompt")
    .option("--temperature <T>", "sampling temperature, 0 = greedy (default: the model's, else 0.6)")
    .option("--top-p <P>", "nucleus sampling mass in (0, 1], 1 = off (default: the model's, else 0.9)")
    .option("--top-k <K>", "sample among the K most likely tokens, 0 = off (default: the model's, else 0)")
    .option("--seed <N>", "random seed (default: a fresh one each reply)")
    .option("--max-tokens <N>", "most tokens per reply (default 4096, and never past the context)")
    .option("--ctx <N>", "context size in tokens (default 4096, at most the model's)")
    .option("--stats <MODE>", "latency figures on stderr: live (status line), end (summary) or off", "live")
    .option("--verbose", "print details (stack traces) on errors");
}

/** Build the program; each action stores its exit code in `result`. */
function buildProgram(result: { code: number }): Command {
  const program = new Command("mkchat")
    .description("Chat with Llama-3.2-1B: a CUDA megakernel, or the CPU reference engine anywhere.")
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (s) => Deno.stdout.writeSync(new TextEncoder().encode(s)),
      writeErr: (s) => Deno.stderr.writeSync(new TextEncoder().encode(s)),
      // Errors are printed by the top-level handler, as one line.
      outputError: () => {},
    });

  addGenerationFlags(program.command("chat").description("interactive chat (a scripted one when stdin is a pipe)"))
    .action(async (flags: RawGenerationFlags) => {
      const { chatCommand } = await import("./cli/chat.ts");
      result.code = await chatCommand(parseGenerationFlags(flags));
    });

  addGenerationFlags(
    program.command("run").description("one prompt, one reply (the PROMPT words, or all of stdin)")
      .argument("[PROMPT...]", "the prompt; read from stdin when absent"),
  )
    .option("--json", "print one JSON object at the end instead of the text")
    .option("--logprobs <K>", "with --json: the top-K log-probabilities of each generated token (0..20)")
    .option("--raw", "no chat template: BOS + the text")
    .action(
      async (words: string[], flags: RawGenerationFlags & { json?: boolean; logprobs?: string; raw?: boolean }) => {
        const logprobs = flags.logprobs === undefined ? 0 : parseIntIn("--logprobs", flags.logprobs, 0, 20);
        if (logprobs > 0 && !flags.json) throw new UsageError("--logprobs needs --json");
        const { runCommand } = await import("./cli/run.ts");
        result.code = await runCommand({
          ...parseGenerationFlags(flags),
          prompt: words.length > 0 ? words.join(" ") : undefined,
          json: flags.json === true,
          logprobs,
          raw: flags.raw === true,
        });
      },
    );

  program.command("pull").description("download a model into the cache (shared with Python's huggingface_hub)")
    .argument("[MODEL]", "HF repo id (org/name[@rev]), or synthetic:<shape>[@seed]", DEFAULT_MODEL)
    .option("--verbose", "print details (stack traces) on errors")
    .action(async (model: string) => {
      const { pullCommand } = await import("./cli/pull.ts");
      result.code = await pullCommand({ model: parseModelText(model) });
    });

  program.command("selftest").description("check the engine against the CPU reference, then measure its latency")
    .option("--model <M>", "model to test (synthetic weights need no download)", SELFTEST_MODEL)
    .option("--device <D>", "where to run: auto, cuda or cpu", "auto")
    .option("--json", "print all figures as one JSON object")
    .option("--prompt-tokens <N>", "prompt length for the measurement", "32")
    .option("--gen-tokens <N>", "greedy tokens to time", "128")
    .option("--verbose", "print details (stack traces) on errors")
    .action(
      async (flags: { model: string; device: string; json?: boolean; promptTokens: string; genTokens: string }) => {
        const { selftestCommand } = await import("./cli/selftest.ts");
        result.code = await selftestCommand({
          model: parseModelText(flags.model),
          device: parseChoice("--device", flags.device, ["auto", "cuda", "cpu"] as const),
          json: flags.json === true,
          promptTokens: parseIntIn("--prompt-tokens", flags.promptTokens, 1, 1 << 16),
          genTokens: parseIntIn("--gen-tokens", flags.genTokens, 4, 1 << 16),
          verbose,
        });
      },
    );

  return program;
}

/** Parse, run, and turn every outcome into an exit code. */
export async function main(args: string[]): Promise<number> {
  const result = { code: EXIT.ok as number };
  try {
    await buildProgram(result).parseAsync(args, { from: "user" });
    return result.code;
  } catch (e) {
    if (e instanceof CommanderError) return commanderExit(e);
    return reportError(e, verbose);
  }
}

// commander's own outcomes: help and version are fine; anything else is a usage mistake, reported on one line.
function commanderExit(e: CommanderError): number {
  if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return EXIT.ok;
  if (e.code === "commander.help" || e.code === "commander.executeSubCommandAsync") return EXIT.usage;
  const message = e.message.replace(/^error:\s*/, "");
  return reportError(new UsageError(message), verbose);
}

if (import.meta.main) {
  // A rejected promise nobody awaited (a bug) still ends as one line, not a stack trace.
  globalThis.addEventListener("unhandledrejection", (ev) => {
    ev.preventDefault();
    Deno.exit(reportError(ev.reason, verbose));
  });
  Deno.exit(await main(Deno.args));
}
