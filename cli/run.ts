/**
 * `mkchat run [PROMPT]`: one prompt (the argument, or all of stdin), one reply streamed to stdout, or with --json
 * one object at the end. Ctrl-C stops the reply (finish_reason "interrupted").
 * @module
 */
import { CliFailure, EXIT, UsageError } from "./errors.ts";
import { DEFAULT_CTX, type GenerationOptions } from "./options.ts";
import { bandwidthModel, loadModel, samplingParams } from "./load.ts";
import { cancelOnInterrupt, decodePieces, streamReply } from "./reply.ts";
import { LiveLine, printEndSummary, ReplyStats } from "./stats.ts";
import { err, out, tty } from "./term.ts";

/** Options of `run`: the shared generation flags and its own. */
export interface RunOptions extends GenerationOptions {
  /** undefined: read all of stdin */
  prompt: string | undefined;
  json: boolean;
  /** 0..20 top log-probabilities per generated token (JSON only) */
  logprobs: number;
  /** no chat template: BOS + the text */
  raw: boolean;
}

/** The finish reasons as `--json` names them. */
const FINISH = { stop: "stop", length: "length", interrupted: "interrupted", context: "context" } as const;

/** Run the command; returns the exit code. */
export async function runCommand(o: RunOptions): Promise<number> {
  const promptText = await readPrompt(o.prompt);
  const loaded = await loadModel({ model: o.model, device: o.device, ctx: o.ctx, defaultCtx: DEFAULT_CTX });
  const { engine, tokenizer, files } = loaded;
  try {
    const messages = [];
    if (o.system !== undefined) messages.push({ role: "system", content: o.system });
    messages.push({ role: "user", content: promptText });
    const promptIds = o.raw ? tokenizer.encode(promptText, { addBos: true }) : tokenizer.renderChat(messages, true);
    if (promptIds.length >= engine.ctx) {
      throw new CliFailure(`the prompt is ${promptIds.length} tokens, the context holds ${engine.ctx} (raise --ctx)`);
    }
    const bw = o.stats === "off" || o.json ? null : await bandwidthModel(loaded);
    const stats = new ReplyStats(engine.ctx, bw);
    const live = new LiveLine(o.json ? "off" : o.stats, bw?.ceilingGBs);
    const sp = samplingParams(o.sampling, files, tokenizer.stopIds, o.logprobs);

    const stopListening = cancelOnInterrupt(() => engine.cancel());
    let outcome;
    try {
      outcome = await streamReply(decodePieces(engine.generate(promptIds, sp), tokenizer.streamDecoder()), {
        onText: (t) => o.json || out(t),
        stats,
        live,
        ctxUsedAt: (i) => promptIds.length + i + 1,
      });
    } finally {
      stopListening();
    }
    const finish = FINISH[outcome.result.finish];
    if (!o.json) {
      if (outcome.text !== "" && !outcome.text.endsWith("\n")) out("\n");
      if (finish === "context") err(`mkchat: the context (${engine.ctx} tokens) is full; the reply was cut\n`);
      if (o.stats === "end") printEndSummary(outcome.summary, bw?.ceilingGBs);
    } else {
      const s = outcome.summary;
      const r = outcome.result;
      const json: Record<string, unknown> = {
        model: files.id,
        device: engine.device,
        device_name: engine.deviceName,
        prompt_ids: promptIds,
        tokens: outcome.generated.map((t) => t.id),
        text: outcome.text,
        finish_reason: finish,
        stats: {
          load_ms: round(engine.loadMs, 1),
          ttft_ms: round(s.ttftMs, 3),
          prefill_tok_s: round(r.prefillUs > 0 ? (r.nPrefill * 1e6) / r.prefillUs : NaN, 1),
          decode_tok_s: round(s.decodeTokS, 2),
          step_us_p50: round(s.stepUsP50, 1),
          step_us_p99: round(s.stepUsP99, 1),
        },
      };
      if (o.logprobs > 0) {
        json.logprobs = outcome.generated.map((t) => ({
          token: t.id,
          logprob: t.logprob ?? null,
          top: (t.top ?? []).map(([id, lp]) => [id, lp]),
        }));
      }
      out(JSON.stringify(json) + "\n");
    }
    return finish === "interrupted" ? EXIT.interrupted : EXIT.ok;
  } finally {
    engine.close();
  }
}

// JSON has no NaN: an undefined figure (one token → no step time) is null.
function round(v: number, digits: number): number | null {
  if (!Number.isFinite(v)) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

async function readPrompt(arg: string | undefined): Promise<string> {
  if (arg !== undefined) {
    if (arg.trim() === "") throw new UsageError("the PROMPT argument is empty");
    return arg;
  }
  if (tty.stdin) throw new UsageError("run needs a PROMPT argument, or the prompt on stdin");
  const text = await new Response(Deno.stdin.readable).text();
  if (text.trim() === "") throw new UsageError("the prompt read from stdin is empty");
  // A trailing newline is how files and echo end, not part of what the user asks.
  return text.replace(/\r?\n$/, "");
}
