/**
 * The flags shared by the commands, as commander hands them over (strings), turned into checked, typed values.
 *
 * Validation lives here rather than in commander's argParser so that every message has the same shape:
 * `--top-p must be in (0, 1], got 1.5`.
 * @module
 */
import { UsageError } from "./errors.ts";

/** The model used when --model is absent (an ungated copy of meta-llama/Llama-3.2-1B-Instruct). */
export const DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct";
/** selftest's default: seeded random weights of the exact Llama-3.2-1B shape, so that it needs no download. */
export const SELFTEST_MODEL = "synthetic:llama-3.2-1b";

/** Where the engine runs. */
export type DeviceChoice = "auto" | "cuda" | "cpu";
/** How the latency figures are shown during chat and run. */
export type StatsMode = "live" | "end" | "off";

/**
 * Sampling settings chosen on the command line (or with /set in the chat). A field left undefined takes the model's
 * default (its generation_config.json, else temperature 0.6, top-p 0.9) — a fresh random seed per reply for `seed`.
 */
export interface SamplingChoice {
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: bigint;
  maxTokens?: number;
}

/** Everything `chat` and `run` share. */
export interface GenerationOptions {
  model: string;
  device: DeviceChoice;
  system: string | undefined;
  sampling: SamplingChoice;
  /** undefined: DEFAULT_CTX, capped by what the model supports */
  ctx: number | undefined;
  stats: StatsMode;
  verbose: boolean;
}

/** Context size when --ctx is absent (capped by the model's max_position_embeddings). */
export const DEFAULT_CTX = 4096;

/** The raw option bag commander produces for chat/run (every value a string as typed). */
export interface RawGenerationFlags {
  model?: string;
  device?: string;
  system?: string;
  temperature?: string;
  topP?: string;
  topK?: string;
  seed?: string;
  maxTokens?: string;
  ctx?: string;
  stats?: string;
  verbose?: boolean;
}

/** Check and convert the flags common to chat and run. Throws UsageError naming the flag. */
export function parseGenerationFlags(raw: RawGenerationFlags): GenerationOptions {
  return {
    model: parseModelText(raw.model ?? DEFAULT_MODEL),
    device: parseChoice("--device", raw.device ?? "auto", ["auto", "cuda", "cpu"] as const),
    system: raw.system,
    sampling: {
      temperature: raw.temperature === undefined ? undefined : parseTemperature(raw.temperature),
      topP: raw.topP === undefined ? undefined : parseTopP(raw.topP),
      topK: raw.topK === undefined ? undefined : parseIntIn("--top-k", raw.topK, 0, 1_000_000),
      seed: raw.seed === undefined ? undefined : parseSeed(raw.seed),
      maxTokens: raw.maxTokens === undefined ? undefined : parseIntIn("--max-tokens", raw.maxTokens, 1, 1 << 24),
    },
    ctx: raw.ctx === undefined ? undefined : parseIntIn("--ctx", raw.ctx, 16, 1 << 24),
    stats: parseChoice("--stats", raw.stats ?? "live", ["live", "end", "off"] as const),
    verbose: raw.verbose === true,
  };
}

/** A model reference must at least be non-empty; weights/model_ref.ts judges the rest. */
export function parseModelText(text: string): string {
  if (text.trim() === "") throw new UsageError("--model must not be empty");
  return text;
}

/** One of a fixed set of words. */
export function parseChoice<T extends string>(flag: string, text: string, allowed: readonly T[]): T {
  if ((allowed as readonly string[]).includes(text)) return text as T;
  throw new UsageError(`${flag} must be one of ${allowed.join(", ")}, got ${text}`);
}

/** Temperature ≥ 0 (0 = greedy), at most 100. */
export function parseTemperature(text: string, flag = "--temperature"): number {
  const v = parseNumber(flag, text);
  if (!(v >= 0 && v <= 100)) throw new UsageError(`${flag} must be in [0, 100], got ${text}`);
  return v;
}

/** Nucleus mass in (0, 1]; 1 turns it off. */
export function parseTopP(text: string, flag = "--top-p"): number {
  const v = parseNumber(flag, text);
  if (!(v > 0 && v <= 1)) throw new UsageError(`${flag} must be in (0, 1], got ${text}`);
  return v;
}

/** An unsigned 64-bit seed (decimal). */
export function parseSeed(text: string, flag = "--seed"): bigint {
  if (!/^\d{1,20}$/.test(text.trim()) || BigInt(text.trim()) >= 1n << 64n) {
    throw new UsageError(`${flag} must be an integer in [0, 2^64), got ${text}`);
  }
  return BigInt(text.trim());
}

/** A decimal integer in [min, max]. */
export function parseIntIn(flag: string, text: string, min: number, max: number): number {
  const t = text.trim();
  if (!/^-?\d+$/.test(t)) throw new UsageError(`${flag} must be an integer in [${min}, ${max}], got ${text}`);
  const v = Number(t);
  if (v < min || v > max) throw new UsageError(`${flag} must be an integer in [${min}, ${max}], got ${text}`);
  return v;
}

function parseNumber(flag: string, text: string): number {
  const t = text.trim();
  // Number("") is 0 and Number("0x10") is 16: accept plain decimals only.
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) throw new UsageError(`${flag} must be a number, got ${text}`);
  return Number(t);
}
