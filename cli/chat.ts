/**
 * `mkchat chat`: an interactive conversation on a terminal, or a scripted one when stdin is a pipe (one user turn
 * per line or `"""` block, each reply printed, exit at EOF). Slash commands change the session; Ctrl-C stops a
 * reply and keeps the conversation.
 * @module
 */
import { EXIT, UsageError } from "./errors.ts";
import { ChatSession } from "../engine/chat_session.ts";
import {
  DEFAULT_CTX,
  type GenerationOptions,
  parseIntIn,
  parseSeed,
  parseTemperature,
  parseTopP,
  type SamplingChoice,
} from "./options.ts";
import { bandwidthModel, loadModel, samplingParams } from "./load.ts";
import { defaultHistoryFile, type LineSource, PipedLines, readTurn, TerminalLines } from "./repl.ts";
import { cancelOnInterrupt, streamReply } from "./reply.ts";
import { formatSummary, LiveLine, printEndSummary, ReplyStats, type ReplySummary } from "./stats.ts";
import { err, out, palette, tty } from "./term.ts";

/** Options of `chat` (the shared generation flags). */
export type ChatOptions = GenerationOptions;

const HELP = `commands:
  /help                 this list
  /bye                  leave (Ctrl-D too)
  /clear                forget the conversation (keeps the system prompt)
  /system TEXT          set the system prompt (starts over); "/system" alone removes it
  /set NAME VALUE       temperature, top_p, top_k, seed, max_tokens ("/set" alone shows them)
  /stats                figures of the last reply and the context used
  """                   starts and ends a multi-line message
Ctrl-C stops a reply; at the prompt it clears the line, twice exits.`;

/** Run the command; returns the exit code. */
export async function chatCommand(o: ChatOptions): Promise<number> {
  const loaded = await loadModel({ model: o.model, device: o.device, ctx: o.ctx, defaultCtx: DEFAULT_CTX });
  const { engine, tokenizer, files } = loaded;
  const interactive = tty.stdin;
  const colour = palette(tty.stdout);
  const bw = o.stats === "off" ? null : await bandwidthModel(loaded);
  const session = new ChatSession(engine, tokenizer, { system: o.system });
  const sampling: SamplingChoice = { ...o.sampling };
  const src: LineSource = interactive ? new TerminalLines(defaultHistoryFile()) : new PipedLines();
  let last: ReplySummary | null = null;

  if (interactive) {
    err(colour.dim(`mkchat · ${files.id} · ${engine.deviceName} · ctx ${engine.ctx} · /help for commands`) + "\n");
  }
  try {
    for (;;) {
      const turn = await readTurn(src, { first: colour.green(">>> "), more: colour.dim("... ") });
      if (turn === null) break;
      if (turn.trim() === "") continue;
      if (turn.trimStart().startsWith("/")) {
        const r = runSlash(turn.trim(), {
          session,
          sampling,
          last,
          position: () => engine.position,
          ctx: engine.ctx,
          ceilingGBs: bw?.ceilingGBs,
        });
        if (r === "bye") break;
        continue;
      }
      // Where the context stands once the prompt is in (for the status line; the session knows it exactly later).
      const needed = tokenizer.renderChat([...session.messages, { role: "user", content: turn }], true).length;
      const stats = new ReplyStats(engine.ctx, bw);
      const live = new LiveLine(interactive ? o.stats : "off", bw?.ceilingGBs);
      const stopListening = cancelOnInterrupt(() => session.cancel());
      let outcome;
      try {
        outcome = await streamReply(session.reply(turn, samplingParams(sampling, files, tokenizer.stopIds)), {
          onText: out,
          stats,
          live,
          ctxUsedAt: (i) => needed + i + 1,
        });
      } finally {
        stopListening();
      }
      last = outcome.summary;
      const finish = outcome.result.finish;
      if (finish === "context" && outcome.generated.length === 0) {
        // Nothing was generated: the conversation itself no longer fits.
        err(`mkchat: ${outcome.result.message ?? "the context is full: /clear to start over"}\n`);
        continue;
      }
      if (!outcome.text.endsWith("\n")) out("\n");
      if (finish === "interrupted" && interactive) err(colour.dim("[stopped]") + "\n");
      if (finish === "context") {
        err(`mkchat: ${outcome.result.message ?? "the context is full: /clear to start over"}\n`);
      }
      if (o.stats === "end") printEndSummary(last, bw?.ceilingGBs);
    }
  } finally {
    src.close();
    engine.close();
  }
  return EXIT.ok;
}

interface SlashContext {
  session: ChatSession;
  sampling: SamplingChoice;
  last: ReplySummary | null;
  position: () => number;
  ctx: number;
  ceilingGBs: number | undefined;
}

/** Carry out one slash command; "bye" ends the chat. Mistakes are reported and the chat goes on. */
function runSlash(line: string, c: SlashContext): "bye" | "ok" {
  const [cmd, ...rest] = line.split(/\s+/);
  const arg = line.slice(cmd.length).trim();
  try {
    switch (cmd) {
      case "/bye":
      case "/exit":
      case "/quit":
        return "bye";
      case "/help":
      case "/?":
        err(HELP + "\n");
        return "ok";
      case "/clear":
        c.session.clear();
        err("(conversation cleared)\n");
        return "ok";
      case "/system":
        // The system prompt opens the rendered conversation: changing it starts over.
        c.session.setSystem(arg === "" ? null : arg);
        c.session.clear();
        err(
          arg === ""
            ? "(system prompt removed; conversation cleared)\n"
            : "(system prompt set; conversation cleared)\n",
        );
        return "ok";
      case "/set":
        if (rest.length === 0) err(describeSampling(c.sampling) + "\n");
        else setSampling(c.sampling, rest[0], rest.slice(1).join(" "));
        return "ok";
      case "/stats": {
        err((c.last ? formatSummary(c.last, c.ceilingGBs) : "no reply yet") + "\n");
        err(`${describeSampling(c.sampling)} · KV cache ${c.position()}/${c.ctx} tokens\n`);
        return "ok";
      }
      default:
        err(`mkchat: unknown command ${cmd} (/help lists them)\n`);
        return "ok";
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(`mkchat: ${e.message}\n`);
      return "ok";
    }
    throw e;
  }
}

function describeSampling(s: SamplingChoice): string {
  const v = (x: unknown) => x === undefined ? "(model default)" : String(x);
  return `temperature ${v(s.temperature)} · top_p ${v(s.topP)} · top_k ${v(s.topK)} · ` +
    `seed ${s.seed ?? "(random)"} · max_tokens ${v(s.maxTokens)}`;
}

/** `/set NAME VALUE`, checked with the same rules as the flags. */
export function setSampling(s: SamplingChoice, name: string, value: string): void {
  const key = name.replace(/-/g, "_");
  if (value === "") throw new UsageError(`/set ${key} needs a value`);
  switch (key) {
    case "temperature":
      s.temperature = parseTemperature(value, "temperature");
      break;
    case "top_p":
      s.topP = parseTopP(value, "top_p");
      break;
    case "top_k":
      s.topK = parseIntIn("top_k", value, 0, 1_000_000);
      break;
    case "seed":
      s.seed = value === "random" ? undefined : parseSeed(value, "seed");
      break;
    case "max_tokens":
      s.maxTokens = parseIntIn("max_tokens", value, 1, 1 << 20);
      break;
    default:
      throw new UsageError(`/set knows temperature, top_p, top_k, seed, max_tokens, not ${name}`);
  }
  err(`(${key} = ${value})\n`);
}
