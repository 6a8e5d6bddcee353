/**
 * ChatSession: a multi-turn conversation over one Engine that keeps the KV cache between turns.
 *
 * Each turn renders the whole conversation with the chat template, compares the ids with the ids known to be in the
 * KV cache, truncates the cache to their common prefix and prefills only the rest. The cache holds the prompt and all
 * generated tokens but the last (mkchat.h: the last generated token enters the cache only when the next call feeds
 * it), which is why the cached ids are tracked here rather than assumed.
 *
 * @module
 */

import type { Engine, GeneratedToken, GenerateResult } from "./engine.ts";
import type { SamplingParams } from "./sampling.ts";
import type { ChatMessage, ChatTokenizer } from "./tokenizer.ts";

/** One streamed piece of a reply: the text the token completed ("" while a character is partial) and the token. */
export interface ReplyPiece {
  /** Text to print now. */
  text: string;
  /** The generated token with its timing (and log-probabilities when asked for). */
  token: GeneratedToken;
}

/** How a reply ended: the engine's result plus the reply text and what the cache saved. */
export interface ReplyResult extends GenerateResult {
  /** The whole reply text (special tokens left out). */
  text: string;
  /** Tokens of the rendered conversation, generation prompt included. */
  promptTokens: number;
  /** Of those, how many were already in the KV cache (not prefilled again). */
  reusedTokens: number;
  /** For finish "context": one line for the user saying what happened and what to do. */
  message?: string;
}

/** The options of a ChatSession. */
export interface ChatSessionOptions {
  /** The system prompt, if any. */
  system?: string;
}

function commonPrefix(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function strftimeDate(d: Date): string {
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  return `${String(d.getDate()).padStart(2, "0")} ${months[d.getMonth()]} ${d.getFullYear()}`;
}

/** A conversation: messages, the ids in the engine's KV cache, and replies that prefill only what changed. */
export class ChatSession {
  #engine: Engine;
  #tok: ChatTokenizer;
  #system: string | null;
  #turns: ChatMessage[] = [];
  /** The ids in the engine's KV cache, in order (engine.position of them). */
  #cached: number[] = [];
  /** The date templates show ("26 Jul 2024"), fixed for the session so that a turn after midnight reuses the cache. */
  #dateString = strftimeDate(new Date());

  /** A new conversation on `engine` (whose KV cache it takes over) with `tokenizer`'s chat template. */
  constructor(engine: Engine, tokenizer: ChatTokenizer, opts: ChatSessionOptions = {}) {
    this.#engine = engine;
    this.#tok = tokenizer;
    this.#system = opts.system ?? null;
  }

  /** The conversation so far, system message first when there is one. */
  get messages(): ChatMessage[] {
    const system = this.#system === null ? [] : [{ role: "system", content: this.#system }];
    return [...system, ...this.#turns.map((m) => ({ ...m }))];
  }

  /** Tokens in the KV cache that belong to this conversation. */
  get cachedTokens(): number {
    return this.#cached.length;
  }

  /** Forgets the turns (the system prompt stays); the cache is trimmed lazily by the next reply. */
  clear(): void {
    this.#turns = [];
  }

  /** Replaces the system prompt (null removes it); applies from the next reply. */
  setSystem(text: string | null): void {
    this.#system = text;
  }

  /** Stops the reply being generated (within one decode step); the partial reply is kept. */
  cancel(): void {
    this.#engine.cancel();
  }

  /**
   * Adds `userText` as a user turn and streams the assistant's reply. Uses the tokenizer's stop ids when
   * `sp.stopIds` is empty. When the conversation no longer fits the context, returns finish "context" with a
   * `message` (and keeps nothing of this turn); a reply cut by the context end or by cancel() is kept as it is.
   */
  async *reply(userText: string, sp: SamplingParams): AsyncGenerator<ReplyPiece, ReplyResult> {
    const engine = this.#engine;
    const turns: ChatMessage[] = [...this.#turns, { role: "user", content: userText }];
    const system = this.#system === null ? [] : [{ role: "system", content: this.#system }];
    const ids = this.#tok.renderChat([...system, ...turns], true, { date_string: this.#dateString });
    if (ids.length >= engine.ctx) {
      return {
        finish: "context",
        tokens: [],
        nPrefill: 0,
        prefillUs: 0,
        decodeUs: 0,
        stepUs: [],
        text: "",
        promptTokens: ids.length,
        reusedTokens: 0,
        message: `the conversation is ${ids.length} tokens and the context holds ${engine.ctx}: ` +
          "/clear to start over (or a larger --ctx)",
      };
    }
    if (engine.position !== this.#cached.length) this.#cached = []; // someone else used the engine: trust nothing
    // At least one prompt token must be fed to generate; re-feed the last one when everything is cached.
    const reused = Math.min(commonPrefix(ids, this.#cached), ids.length - 1);
    if (engine.position !== reused) await engine.truncate(reused);
    this.#cached = ids.slice(0, reused);

    const stopIds = sp.stopIds.length > 0 ? sp.stopIds : this.#tok.stopIds;
    const decoder = this.#tok.streamDecoder();
    const generated: number[] = [];
    let text = "";
    let result: GenerateResult | undefined;
    const stream = engine.generate(ids.slice(reused), { ...sp, stopIds });
    try {
      let last: GeneratedToken | undefined;
      while (true) {
        const next = await stream.next();
        if (next.done) {
          result = next.value;
          break;
        }
        last = next.value;
        generated.push(last.id);
        const piece = decoder.push(last.id);
        text += piece;
        yield { text: piece, token: last };
      }
      const rest = decoder.flush();
      if (rest && last) {
        text += rest;
        yield { text: rest, token: last };
      }
    } finally {
      // Stopped early by our consumer: end the generation (the engine cancels and waits for the native call).
      if (result === undefined) await stream.return(undefined as never);
      // The cache holds a prefix of prompt ++ generated: engine.position says how long.
      this.#cached = [...ids, ...generated].slice(0, engine.position);
    }
    this.#turns = [...turns, { role: "assistant", content: text }];
    const out: ReplyResult = { ...result, text, promptTokens: ids.length, reusedTokens: reused };
    if (result.finish === "context") {
      out.message = `the reply reached the end of the context (${engine.ctx} tokens): /clear to start over`;
    }
    return out;
  }
}
