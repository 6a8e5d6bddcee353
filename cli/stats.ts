/**
 * Latency figures of a reply, from the per-token timestamps the engine reports (GeneratedToken.tUs, µs since the
 * generate call began): time to first token, decode rate, step-time percentiles, and on a GPU the share of the
 * memory bandwidth that the step time implies. Shown as a live status line on stderr, as a one-line summary, or not.
 * @module
 */
import { consoleSize, err, palette, tty } from "./term.ts";
import type { StatsMode } from "./options.ts";

/** What a decode step must read, to turn a step time into a bandwidth share (GPU only). */
export interface BandwidthModel {
  /** bytes of weights streamed per step (all tensors; the embedding table only when it is also the LM head) */
  weightBytes: number;
  /** KV-cache bytes read per step per token of context: n_layers · n_kv_heads · head_dim · 2 (k, v) · 2 (bf16) */
  kvBytesPerToken: number;
  /** streaming-read ceiling measured at load, GB/s */
  ceilingGBs: number;
}

/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

/** Differences between consecutive timestamps, skipping the first `skip` steps (warm-up). */
export function stepTimes(tUs: number[], skip = 0): number[] {
  const steps: number[] = [];
  for (let i = Math.max(1, skip + 1); i < tUs.length; i++) steps.push(tUs[i] - tUs[i - 1]);
  return steps;
}

/** A summary of one reply's timings. All times in the unit their name says; NaN when not defined. */
export interface ReplySummary {
  tokens: number;
  ttftMs: number;
  decodeTokS: number;
  stepUsP50: number;
  stepUsP99: number;
  /** tokens in the KV cache / its size */
  ctxUsed: number;
  ctx: number;
  /** share of the read-bandwidth ceiling in [0, 1], or NaN off the GPU */
  bandwidthShare: number;
}

/** Accumulates the timestamps of one reply and summarises them at any moment. */
export class ReplyStats {
  #tUs: number[] = [];
  #ctx: number;
  #bw: BandwidthModel | null;
  #ctxUsed = 0;

  /** @param ctx KV-cache size; @param bw null where the bandwidth share makes no sense (CPU) */
  constructor(ctx: number, bw: BandwidthModel | null) {
    this.#ctx = ctx;
    this.#bw = bw;
  }

  /** Record a token: its timestamp and the context used once it is known. */
  add(tUs: number, ctxUsed: number): void {
    this.#tUs.push(tUs);
    this.#ctxUsed = ctxUsed;
  }

  /** The timestamps recorded so far. */
  get timestamps(): readonly number[] {
    return this.#tUs;
  }

  /** The figures as they stand. */
  summary(): ReplySummary {
    const t = this.#tUs;
    const steps = stepTimes(t).sort((a, b) => a - b);
    const p50 = percentile(steps, 50);
    let share = NaN;
    if (this.#bw && Number.isFinite(p50) && p50 > 0) {
      const bytes = this.#bw.weightBytes + this.#bw.kvBytesPerToken * this.#ctxUsed;
      share = bytes / (p50 * 1e-6) / (this.#bw.ceilingGBs * 1e9);
    }
    return {
      tokens: t.length,
      ttftMs: t.length > 0 ? t[0] / 1000 : NaN,
      decodeTokS: t.length > 1 ? ((t.length - 1) * 1e6) / (t[t.length - 1] - t[0]) : NaN,
      stepUsP50: p50,
      stepUsP99: percentile(steps, 99),
      ctxUsed: this.#ctxUsed,
      ctx: this.#ctx,
      bandwidthShare: share,
    };
  }
}

/** One line of figures: `TTFT 41 ms · 52.3 tok/s · 19.1/22.4 ms p50/p99 · ctx 120/4096 · 71% of 3070 GB/s`. */
export function formatSummary(s: ReplySummary, ceilingGBs?: number): string {
  const parts: string[] = [];
  if (Number.isFinite(s.ttftMs)) parts.push(`TTFT ${fmt(s.ttftMs)} ms`);
  if (Number.isFinite(s.decodeTokS)) parts.push(`${fmt(s.decodeTokS)} tok/s`);
  if (Number.isFinite(s.stepUsP50)) parts.push(`${fmtUs(s.stepUsP50)}/${fmtUs(s.stepUsP99)} p50/p99 per token`);
  parts.push(`ctx ${s.ctxUsed}/${s.ctx}`);
  if (Number.isFinite(s.bandwidthShare)) {
    parts.push(`${Math.round(s.bandwidthShare * 100)}% of ${fmt(ceilingGBs ?? NaN)} GB/s`);
  }
  return parts.join(" · ");
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return "-";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function fmtUs(us: number): string {
  return us >= 10_000 ? `${fmt(us / 1000)} ms` : `${us.toFixed(0)} µs`;
}

/**
 * The live status line of a reply on a terminal.
 *
 * When stdout and stderr are the same terminal, the reply scrolls in a region that spares the bottom row and the
 * status is drawn there (save cursor, draw, restore): the text is never overwritten and the line never scrolls
 * away. When only stderr is a terminal, a plain `\r`-rewritten line is enough. Redraws are throttled to 10 per
 * second: a terminal is slower than the engine.
 */
export class LiveLine {
  #mode: "region" | "line" | "none";
  #rows = 0;
  #lastDraw = 0;
  #active = false;
  #ceiling: number | undefined;

  /** @param mode the --stats setting; anything but "live" (or no terminal on stderr) draws nothing */
  constructor(mode: StatsMode, ceilingGBs?: number) {
    this.#ceiling = ceilingGBs;
    if (mode !== "live" || !tty.stderr) this.#mode = "none";
    else this.#mode = tty.stdout ? "region" : "line";
  }

  /** Reserve the bottom row (before the reply's first byte is written). */
  begin(): void {
    if (this.#mode === "none" || this.#active) return;
    this.#active = true;
    // Deno.exit() (a second Ctrl-C) dispatches "unload": give the terminal back even then.
    globalThis.addEventListener("unload", this.#onUnload);
    this.#lastDraw = 0;
    if (this.#mode === "region") {
      this.#rows = consoleSize().rows;
      if (this.#rows < 3) {
        this.#mode = "line";
        return;
      }
      // Make room for the status row below the cursor, then confine scrolling to the rows above it.
      err(`\n\x1b[1A\x1b7\x1b[1;${this.#rows - 1}r\x1b8`);
    }
  }

  /** Redraw with the figures so far (throttled unless `force`). */
  update(s: ReplySummary, force = false): void {
    if (!this.#active) return;
    const now = performance.now();
    if (!force && now - this.#lastDraw < 100) return;
    this.#lastDraw = now;
    const width = consoleSize().columns;
    const text = palette(true).dim(truncate(formatSummary(s, this.#ceiling), width - 1));
    if (this.#mode === "region") err(`\x1b7\x1b[${this.#rows};1H\x1b[2K${text}\x1b8`);
    else err(`\r\x1b[2K${text}`);
  }

  #onUnload = () => this.end();

  /** Remove the line and give the terminal back as it was. */
  end(): void {
    if (!this.#active) return;
    this.#active = false;
    globalThis.removeEventListener("unload", this.#onUnload);
    if (this.#mode === "region") err(`\x1b7\x1b[r\x1b[${this.#rows};1H\x1b[2K\x1b8`);
    else err(`\r\x1b[2K`);
  }
}

function truncate(s: string, width: number): string {
  return [...s].length <= width ? s : [...s].slice(0, Math.max(0, width - 1)).join("") + "…";
}

/** The one-line summary that `--stats end` prints after each reply (stderr). */
export function printEndSummary(s: ReplySummary, ceilingGBs?: number): void {
  err(palette(tty.stderr).dim(`[${formatSummary(s, ceilingGBs)}]`) + "\n");
}
