/**
 * ChatTokenizer: the model's tokenizer.json (through `@huggingface/tokenizers`), its chat template (through
 * `@huggingface/jinja`), its stop ids, and an incremental detokeniser for streaming replies.
 *
 * Conventions, matching HF transformers:
 * - `encode()` never adds special tokens by itself; BOS is added only when asked (`addBos`), whatever the
 *   tokenizer.json post-processor would do.
 * - The chat template writes `<|begin_of_text|>` itself, so the rendered text is encoded without adding BOS
 *   (HF's `apply_chat_template(tokenize=True)` does the same).
 * - Decoding never applies `clean_up_tokenization_spaces` (it would turn "a . b" into "a. b"): decode(encode(s)) == s.
 *
 * @module
 */

import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import type { ModelFiles } from "../weights/model_files.ts";
import { MkError } from "./errors.ts";

/** A chat message as templates expect it. */
export interface ChatMessage {
  /** "system", "user" or "assistant". */
  role: string;
  /** The text. */
  content: string;
}

/** An incremental detokeniser: push ids one by one, get the text that became complete. */
export interface StreamDecoder {
  /** Adds one token; returns the new text it completes ("" while a UTF-8 character is still partial). */
  push(id: number): string;
  /** Returns whatever is still held back (e.g. an invalid byte sequence at the very end). */
  flush(): string;
}

/** What ChatTokenizer.load() reads: the tokenizer fields of ModelFiles. */
export type TokenizerFiles = Pick<ModelFiles, "dir" | "tokenizerJsonPath" | "tokenizerConfig" | "generationConfig"> & {
  config?: { bosTokenId?: number; eosTokenIds?: number[] };
};

/** A UTF-8 character is at most 4 bytes: a window this long still ending in U+FFFD holds invalid bytes, not a
 * character waiting for its last byte. */
const MAX_WINDOW = 16;

/** tokenizer_config.json's special tokens are a string or an AddedToken object `{ content }`. */
function tokenText(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return null;
}

function idList(value: unknown): number[] {
  if (typeof value === "number" && Number.isInteger(value)) return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === "number" && Number.isInteger(v));
  return [];
}

/** The chat template source: tokenizer_config.json's chat_template (a string or named list), else chat_template.jinja. */
async function findTemplate(files: TokenizerFiles): Promise<{ source: string; where: string } | null> {
  const where = `${files.dir}/tokenizer_config.json`;
  const t = files.tokenizerConfig.chat_template;
  if (typeof t === "string") return { source: t, where };
  if (Array.isArray(t)) {
    const named = t.find((e) => e?.name === "default") ?? t[0];
    if (typeof named?.template === "string") return { source: named.template, where };
  }
  const jinja = `${files.dir}/chat_template.jinja`;
  try {
    return { source: await Deno.readTextFile(jinja), where: jinja };
  } catch {
    return null;
  }
}

/** A model's tokenizer and chat template. */
export class ChatTokenizer {
  /** Token ids that end a reply: generation_config eos ∪ config eos ∪ tokenizer eos ∪ <|eot_id|>, <|eom_id|>. */
  readonly stopIds: number[];
  /** The BOS id, or null when the model has none. */
  readonly bosId: number | null;

  #tok: Tokenizer;
  #template: Template | null;
  #templateWhere: string;
  #bosToken: string;
  #eosToken: string;
  #specialIds: Set<number>;

  private constructor(
    tok: Tokenizer,
    template: { compiled: Template; where: string } | null,
    files: TokenizerFiles,
  ) {
    this.#tok = tok;
    this.#template = template?.compiled ?? null;
    this.#templateWhere = template?.where ?? `${files.dir}/tokenizer_config.json`;
    this.#bosToken = tokenText(files.tokenizerConfig.bos_token) ?? "";
    this.#eosToken = tokenText(files.tokenizerConfig.eos_token) ?? "";
    this.#specialIds = new Set([...tok.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    const bos = this.#bosToken ? tok.token_to_id(this.#bosToken) : undefined;
    this.bosId = bos ?? files.config?.bosTokenId ?? null;
    const stops = new Set<number>([
      ...idList(files.generationConfig?.eos_token_id),
      ...(files.config?.eosTokenIds ?? []),
    ]);
    for (const text of [this.#eosToken, "<|eot_id|>", "<|eom_id|>"]) {
      const id = text ? tok.token_to_id(text) : undefined;
      if (id !== undefined) stops.add(id);
    }
    this.stopIds = [...stops].sort((a, b) => a - b);
  }

  /** Reads tokenizer.json and the chat template; MkError("tokenizer") naming the file when either is unusable. */
  static async load(files: TokenizerFiles): Promise<ChatTokenizer> {
    let json: unknown;
    try {
      json = JSON.parse(await Deno.readTextFile(files.tokenizerJsonPath));
    } catch (e) {
      throw new MkError("tokenizer", `${files.tokenizerJsonPath}: ${e instanceof Error ? e.message : e}`);
    }
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json as object, files.tokenizerConfig);
    } catch (e) {
      throw new MkError("tokenizer", `${files.tokenizerJsonPath}: not a usable tokenizer: ${(e as Error).message}`);
    }
    const found = await findTemplate(files);
    let template: { compiled: Template; where: string } | null = null;
    if (found) {
      try {
        template = { compiled: new Template(found.source), where: found.where };
      } catch (e) {
        throw new MkError("tokenizer", `${found.where}: chat_template does not parse: ${(e as Error).message}`);
      }
    }
    return new ChatTokenizer(tok, template, files);
  }

  /** True when the model has a chat template (renderChat() works). */
  get hasChatTemplate(): boolean {
    return this.#template !== null;
  }

  /** Token ids of `text`, special-token text included as special tokens (as HF does); BOS first when `addBos`. */
  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids = text === "" ? [] : this.#tok.encode(text, { add_special_tokens: false }).ids;
    if (opts.addBos) {
      if (this.bosId === null) throw new MkError("tokenizer", "this tokenizer has no BOS token");
      return [this.bosId, ...ids];
    }
    return ids;
  }

  /** The text of `ids`; with `skipSpecial`, special tokens (BOS, <|eot_id|>, …) are left out. */
  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    if (ids.length === 0) return "";
    return this.#tok.decode(ids, {
      skip_special_tokens: opts.skipSpecial ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  /** True for added special tokens (BOS, EOS, headers, reserved). */
  isSpecial(id: number): boolean {
    return this.#specialIds.has(id);
  }

  /**
   * The chat template's text for `messages`, with bos_token, eos_token and add_generation_prompt; `extra` adds
   * variables (e.g. a fixed `date_string`). The template engine itself provides `strftime_now` (Llama-3.2 templates
   * print today's date with it unless `date_string` is given), `raise_exception` (its message becomes the MkError's)
   * and `range`.
   */
  renderChatText(messages: ChatMessage[], addGenerationPrompt: boolean, extra: Record<string, unknown> = {}): string {
    if (this.#template === null) {
      throw new MkError("tokenizer", `${this.#templateWhere} has no chat_template: use --raw for plain text`);
    }
    const where = this.#templateWhere;
    try {
      return this.#template.render({
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        bos_token: this.#bosToken,
        eos_token: this.#eosToken,
        add_generation_prompt: addGenerationPrompt,
        ...extra,
      });
    } catch (e) {
      if (e instanceof MkError) throw e;
      throw new MkError("tokenizer", `chat template (${where}) failed: ${(e as Error).message}`);
    }
  }

  /** The token ids of the rendered chat (no BOS added: the template writes it). */
  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean, extra: Record<string, unknown> = {}): number[] {
    return this.encode(this.renderChatText(messages, addGenerationPrompt, extra));
  }

  /**
   * An incremental detokeniser. It decodes a short window of ids (the last token of text already complete, then the
   * tokens after it) and emits the text that became stable: everything but a trailing run of U+FFFD, which is what a
   * UTF-8 character split across tokens decodes to until its last byte arrives. Each push decodes only the window,
   * so a reply costs O(n) overall. Special tokens are skipped unless `skipSpecial` is false.
   */
  streamDecoder(opts: { skipSpecial?: boolean } = {}): StreamDecoder {
    const skipSpecial = opts.skipSpecial ?? true;
    const decode = (part: number[]) => this.decode(part, { skipSpecial });
    let window: number[] = [];
    let emitted = 0; // characters of decode(window) already returned
    const step = (force: boolean): string => {
      if (window.length === 0) return "";
      const text = decode(window);
      let stable = text.length;
      while (!force && stable > 0 && text[stable - 1] === "\uFFFD") stable--;
      const out = stable > emitted ? text.slice(emitted, stable) : "";
      emitted = Math.max(emitted, stable);
      if (force || (stable < text.length && window.length > MAX_WINDOW)) {
        // flush, or bytes that no token completes (invalid output): give them out as they are and start afresh
        const rest = text.slice(emitted);
        window = [];
        emitted = 0;
        return out + rest;
      }
      if (stable === text.length) {
        // All complete: keep the last token as context for decoders that look at their left neighbour.
        window = window.slice(-1);
        emitted = decode(window).length;
      }
      return out;
    };
    return {
      push: (id: number) => {
        if (skipSpecial && this.#specialIds.has(id)) return "";
        window.push(id);
        return step(false);
      },
      flush: () => step(true),
    };
  }
}
