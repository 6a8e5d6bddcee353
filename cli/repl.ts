/**
 * Where chat turns come from: a line editor with history on a terminal, or plain lines from a pipe. Both hand out
 * whole *turns*: a line, or a `"""` block (everything between a line that starts with `"""` and a line that ends
 * with `"""`, newlines kept).
 * @module
 */
import * as readline from "node:readline";
import process from "node:process";
import { dirname, join } from "node:path";
import { err } from "./term.ts";

/** A source of raw input lines. `null` means end of input (Ctrl-D, EOF, or Ctrl-C twice at the prompt). */
export interface LineSource {
  /** Read one line; `prompt` is shown on a terminal only. */
  readLine(prompt: string): Promise<string | null>;
  /** Release the input (and save the history). */
  close(): void;
}

/** Marks a multi-line block. */
export const BLOCK_QUOTE = '"""';

/**
 * Read one turn: a line, or a `"""` block. `null` at end of input; an unterminated block at EOF is returned as it is.
 * @param prompts what to show for the first line and for continuation lines
 */
export async function readTurn(src: LineSource, prompts: { first: string; more: string }): Promise<string | null> {
  const line = await src.readLine(prompts.first);
  if (line === null) return null;
  if (!line.trimStart().startsWith(BLOCK_QUOTE)) return line;
  let body = line.trimStart().slice(BLOCK_QUOTE.length);
  // `"""one line"""` opens and closes at once.
  if (body.trimEnd().endsWith(BLOCK_QUOTE)) return body.trimEnd().slice(0, -BLOCK_QUOTE.length);
  const parts = body === "" ? [] : [body];
  for (;;) {
    const more = await src.readLine(prompts.more);
    if (more === null) return parts.join("\n");
    if (more.trimEnd().endsWith(BLOCK_QUOTE)) {
      body = more.trimEnd().slice(0, -BLOCK_QUOTE.length);
      if (body !== "") parts.push(body);
      return parts.join("\n");
    }
    parts.push(more);
  }
}

/** Lines from a pipe or file: one per `\n`, `\r\n` tolerated, the last line even without a newline. */
export class PipedLines implements LineSource {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #eof = false;

  /** @param stream the byte stream to read (stdin by default) */
  constructor(stream: ReadableStream<Uint8Array> = Deno.stdin.readable) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** Read the next line (no prompt is shown: nobody is watching). */
  async readLine(_prompt: string): Promise<string | null> {
    for (;;) {
      const nl = this.#buffer.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buffer.slice(0, nl).replace(/\r$/, "");
        this.#buffer = this.#buffer.slice(nl + 1);
        return line;
      }
      if (this.#eof) {
        if (this.#buffer === "") return null;
        const last = this.#buffer;
        this.#buffer = "";
        return last;
      }
      const { value, done } = await this.#reader.read();
      if (done) this.#eof = true;
      else this.#buffer += value;
    }
  }

  /** Stop reading. */
  close(): void {
    this.#reader.cancel().catch(() => {});
  }
}

/**
 * Lines typed at a terminal: line editing, history (Up/Down), Ctrl-C clears the line, twice on an empty one exits.
 *
 * One readline interface for the whole chat, so that lines pasted or typed ahead are queued rather than lost. While
 * the caller works on a line (a reply is being generated) the interface is paused and the terminal is in cooked
 * mode: Ctrl-C then arrives as SIGINT, which cancels the reply, and anything typed waits in the terminal's buffer.
 */
export class TerminalLines implements LineSource {
  static readonly #historyMax = 500;
  #rl: readline.Interface;
  #historyFile: string | null;
  #queue: string[] = [];
  #closed = false;
  #wake: (() => void) | null = null;
  #interrupts = 0;

  /** @param historyFile where history persists between sessions, or null to keep it in memory only */
  constructor(historyFile: string | null) {
    this.#historyFile = historyFile;
    this.#rl = readline.createInterface({
      input: process.stdin,
      output: process.stdout,
      terminal: true,
      history: historyFile ? loadHistory(historyFile) : [],
      historySize: TerminalLines.#historyMax,
      removeHistoryDuplicates: true,
    } as readline.ReadLineOptions);
    this.#rl.on("line", (line) => {
      this.#interrupts = 0;
      this.#queue.push(line);
      this.#wake?.();
    });
    // Ctrl-D on an empty line, or the input ended.
    this.#rl.on("close", () => {
      this.#closed = true;
      this.#wake?.();
    });
    this.#rl.on("SIGINT", () => this.#onInterrupt());
    this.#hold();
  }

  /** One line (a queued one first). */
  async readLine(prompt: string): Promise<string | null> {
    if (this.#queue.length > 0) return this.#queue.shift()!;
    if (this.#closed) return null;
    setRaw(true);
    this.#rl.setPrompt(prompt);
    this.#rl.prompt();
    await new Promise<void>((resolve) => this.#wake = resolve);
    this.#wake = null;
    this.#hold();
    return this.#queue.shift() ?? null;
  }

  /** Save the history (newest first, bounded) and let go of the terminal. */
  close(): void {
    const history = (this.#rl as unknown as { history?: string[] }).history ?? [];
    if (this.#historyFile) saveHistory(this.#historyFile, history.slice(0, TerminalLines.#historyMax));
    this.#closed = true;
    this.#rl.close();
    setRaw(false);
  }

  // Between prompts: no reading, cooked mode (see the class comment).
  #hold(): void {
    this.#rl.pause();
    setRaw(false);
  }

  #onInterrupt(): void {
    const rl = this.#rl as unknown as { line: string };
    if (rl.line !== "") {
      // Clear what was typed, as a shell does.
      this.#interrupts = 0;
      this.#rl.write(null, { ctrl: true, name: "e" });
      this.#rl.write(null, { ctrl: true, name: "u" });
      return;
    }
    if (++this.#interrupts >= 2) {
      process.stdout.write("\n");
      this.#closed = true;
      this.#wake?.();
      return;
    }
    err("\n(press Ctrl-C again or type /bye to exit)\n");
    this.#rl.prompt();
  }
}

function setRaw(on: boolean): void {
  try {
    if (Deno.stdin.isTerminal()) Deno.stdin.setRaw(on);
  } catch {
    // not a terminal after all: nothing to switch
  }
}

/** ~/.cache/mkchat/history, or under $MKCHAT_CACHE / $XDG_CACHE_HOME when set; null when there is no home. */
export function defaultHistoryFile(): string | null {
  const base = Deno.env.get("MKCHAT_CACHE") ??
    (Deno.env.get("XDG_CACHE_HOME") ? join(Deno.env.get("XDG_CACHE_HOME")!, "mkchat") : null) ??
    (Deno.env.get("HOME") ? join(Deno.env.get("HOME")!, ".cache", "mkchat") : null);
  return base ? join(base, "history") : null;
}

// History is a convenience: a file we cannot read or write must never stop the chat.
function loadHistory(file: string): string[] {
  try {
    return JSON.parse(Deno.readTextFileSync(file)).filter((x: unknown) => typeof x === "string");
  } catch {
    return [];
  }
}

function saveHistory(file: string, entries: string[]): void {
  try {
    Deno.mkdirSync(dirname(file), { recursive: true });
    const tmp = `${file}.${Deno.pid}.tmp`;
    Deno.writeTextFileSync(tmp, JSON.stringify(entries));
    Deno.renameSync(tmp, file);
  } catch {
    // ignored on purpose: see loadHistory
  }
}
