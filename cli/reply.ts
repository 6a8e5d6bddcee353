/**
 * Streaming one reply: pull pieces (text + token) from a generator, hand the text to the caller as it comes, keep
 * the timings for the stats line, and let Ctrl-C cancel.
 * @module
 */
import type { GeneratedToken, GenerateResult } from "../engine/engine.ts";
import type { StreamDecoder } from "../engine/tokenizer.ts";
import type { LiveLine, ReplyStats, ReplySummary } from "./stats.ts";

/** One streamed piece: the text a token completed ("" while a character is partial) and the token. */
export interface Piece {
  text: string;
  token: GeneratedToken;
}

/** What a finished reply leaves behind. */
export interface ReplyOutcome<R extends GenerateResult> {
  result: R;
  /** every generated token, in order (the stop id included), with timings and log-probabilities */
  generated: GeneratedToken[];
  text: string;
  summary: ReplySummary;
}

/** How to stream one reply. */
export interface StreamOptions {
  /** receives text as soon as it is decodable */
  onText: (text: string) => void;
  stats: ReplyStats;
  live: LiveLine;
  /** context used once generated token i (0-based) is known */
  ctxUsedAt: (i: number) => number;
}

/** Turn an engine generation into pieces, decoding incrementally (never half a UTF-8 character). */
export async function* decodePieces(
  gen: AsyncGenerator<GeneratedToken, GenerateResult>,
  decoder: StreamDecoder,
): AsyncGenerator<Piece, GenerateResult> {
  let last: GeneratedToken | undefined;
  for (;;) {
    const step = await gen.next();
    if (step.done) {
      const rest = decoder.flush();
      if (rest !== "" && last) yield { text: rest, token: last };
      return step.value;
    }
    last = step.value;
    yield { text: decoder.push(last.id), token: last };
  }
}

/** Run a generation to its end, streaming its text. */
export async function streamReply<R extends GenerateResult>(
  gen: AsyncGenerator<Piece, R>,
  o: StreamOptions,
): Promise<ReplyOutcome<R>> {
  const generated: GeneratedToken[] = [];
  let text = "";
  o.live.begin();
  try {
    for (;;) {
      const step = await gen.next();
      if (step.done) {
        o.live.update(o.stats.summary(), true);
        return { result: step.value, generated, text, summary: o.stats.summary() };
      }
      const { text: piece, token } = step.value;
      // A flushed tail comes with the last token again: count each token once.
      if (generated[generated.length - 1] !== token) {
        generated.push(token);
        o.stats.add(token.tUs, o.ctxUsedAt(generated.length - 1));
      }
      if (piece !== "") {
        text += piece;
        o.onText(piece);
      }
      o.live.update(o.stats.summary());
    }
  } finally {
    o.live.end();
  }
}

/**
 * SIGINTs closer together than this are one press: `deno task` forwards the terminal's SIGINT to its child, which
 * has already had it from the terminal, so a single Ctrl-C can arrive twice.
 */
const SAME_PRESS_MS = 250;

/**
 * Ctrl-C while a reply runs: the first press asks the engine to stop (it does within one step); a second press,
 * if the engine has not let go yet, exits at once. Returns a function that removes the handler.
 */
export function cancelOnInterrupt(cancel: () => void): () => void {
  let first = -1;
  const handler = () => {
    const now = performance.now();
    if (first < 0) {
      first = now;
      cancel();
    } else if (now - first > SAME_PRESS_MS) {
      Deno.exit(130);
    }
  };
  Deno.addSignalListener("SIGINT", handler);
  return () => Deno.removeSignalListener("SIGINT", handler);
}
