/**
 * Download progress on stderr: a redrawn bar on a terminal, a plain line per file (start, end) otherwise, so that
 * logs stay readable.
 * @module
 */
import { consoleSize, err, palette, tty } from "./term.ts";

/** One progress report of weights/hub.ts (mirrors its PullProgress). */
export interface Progress {
  file: string;
  done: number;
  total: number;
}

/** Human-readable bytes: 1.2 GB, 35 MB, 410 kB. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return "?";
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)} kB`;
  return `${n} B`;
}

/** Renders PullProgress reports; call `finish()` once the pull is over. */
export class ProgressDisplay {
  #file = "";
  #start = 0;
  #lastDraw = 0;
  #drawn = false;
  #lastDone = 0;
  #lastTotal = 0;
  #terminal = tty.stderr;

  /** Feed one report (files arrive one after another). */
  report(p: Progress): void {
    const now = performance.now();
    if (p.file !== this.#file) {
      this.#closeFile();
      this.#file = p.file;
      this.#start = now;
      if (!this.#terminal) err(`mkchat: downloading ${p.file} (${formatBytes(p.total)})\n`);
    }
    this.#lastDone = p.done;
    this.#lastTotal = p.total;
    if (!this.#terminal) return;
    if (now - this.#lastDraw < 80 && p.done < p.total) return;
    this.#lastDraw = now;
    this.#draw(now);
  }

  /** End the current file's line. */
  finish(): void {
    this.#closeFile();
    this.#file = "";
  }

  #draw(now: number): void {
    const { done, total } = { done: this.#lastDone, total: this.#lastTotal };
    const secs = (now - this.#start) / 1000;
    const rate = secs > 0.2 ? `${formatBytes(done / secs)}/s` : "";
    const pct = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 0;
    const tail = ` ${String(pct).padStart(3)}% ${formatBytes(done)}/${formatBytes(total)} ${rate}`;
    // Names padded to one width so that the bars of successive files line up.
    const name = (this.#file.length > 28 ? "…" + this.#file.slice(-27) : this.#file).padEnd(22);
    const barWidth = Math.max(10, Math.min(40, consoleSize().columns - name.length - tail.length - 4));
    const filled = total > 0 ? Math.round((done / total) * barWidth) : 0;
    const bar = "█".repeat(filled) + palette(true).dim("░".repeat(barWidth - filled));
    err(`\r\x1b[2K${name} ${bar}${tail}`);
    this.#drawn = true;
  }

  #closeFile(): void {
    if (this.#file === "") return;
    if (this.#terminal) {
      this.#draw(performance.now());
      if (this.#drawn) err("\n");
      this.#drawn = false;
    } else {
      err(`mkchat: ${this.#file}: ${formatBytes(this.#lastDone)} done\n`);
    }
  }
}
