/**
 * Sampling parameters: defaults (from the model's generation_config.json when it has them), validation with one-line
 * messages that name the command-line flag, and marshalling to the native `mk_sampling_params`.
 *
 * @module
 */

import { MkError } from "./errors.ts";
import { MK_MAX_LOGPROBS, MK_MAX_STOP_IDS, type MkLibrary, nativeBuffer, SAMPLING_PARAMS } from "./ffi.ts";

/** How tokens are drawn, and when a generation stops. */
export interface SamplingParams {
  /** 0 = greedy; else the softmax temperature. */
  temperature: number;
  /** Nucleus sampling mass in (0, 1]; 1 = off. */
  topP: number;
  /** Keep the K most likely tokens; 0 = off. */
  topK: number;
  /** 64-bit seed: the same seed, prompt and parameters give the same tokens. */
  seed: bigint | number;
  /** Generated tokens at most (>= 1). */
  maxTokens: number;
  /** Token ids that end the reply (at most 16); the stop id itself is reported as the last token. */
  stopIds: number[];
  /** 0..20: top-K log-probabilities to report for each generated token. */
  logprobs: number;
}

/** Temperature used when generation_config.json does not give one. */
export const DEFAULT_TEMPERATURE = 0.6;
/** top_p used when generation_config.json does not give one. */
export const DEFAULT_TOP_P = 0.9;
/** Reply length limit used when the caller does not give one. */
export const DEFAULT_MAX_TOKENS = 4096;

/** A fresh random 64-bit seed. */
export function randomSeed(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(words[1]) << 32n) | BigInt(words[0]);
}

function numberField(config: Record<string, unknown> | null, key: string): number | undefined {
  const value = config?.[key];
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/**
 * The default sampling parameters of a model: temperature, top_p and top_k from its generation_config.json when
 * present (a config with `do_sample: false` means greedy), else temperature 0.6 and top_p 0.9; a random seed.
 */
export function defaultSampling(
  generationConfig: Record<string, unknown> | null,
  stopIds: number[] = [],
): SamplingParams {
  const greedy = generationConfig?.do_sample === false;
  return {
    temperature: greedy ? 0 : numberField(generationConfig, "temperature") ?? DEFAULT_TEMPERATURE,
    topP: numberField(generationConfig, "top_p") ?? DEFAULT_TOP_P,
    topK: numberField(generationConfig, "top_k") ?? 0,
    seed: randomSeed(),
    maxTokens: DEFAULT_MAX_TOKENS,
    stopIds: [...stopIds],
    logprobs: 0,
  };
}

function fail(message: string): never {
  throw new MkError("usage", message);
}

/**
 * Checks every field; throws MkError("usage") with one line naming the flag (`--temperature must be >= 0`).
 * Returns its argument so it can wrap an object literal.
 */
export function validateSampling(sp: SamplingParams): SamplingParams {
  if (!Number.isFinite(sp.temperature) || sp.temperature < 0) fail("--temperature must be >= 0");
  if (!Number.isFinite(sp.topP) || sp.topP <= 0 || sp.topP > 1) fail("--top-p must be in (0, 1]");
  if (!Number.isInteger(sp.topK) || sp.topK < 0 || sp.topK > 2 ** 31 - 1) {
    fail("--top-k must be an integer >= 0 (0 = off)");
  }
  const seed = typeof sp.seed === "bigint" ? sp.seed : Number.isSafeInteger(sp.seed) ? BigInt(sp.seed) : -1n;
  if (seed < 0n || seed >= 1n << 64n) fail("--seed must be an integer in [0, 2^64)");
  if (!Number.isInteger(sp.maxTokens) || sp.maxTokens < 1 || sp.maxTokens > 2 ** 31 - 1) {
    fail("--max-tokens must be an integer >= 1");
  }
  if (sp.stopIds.length > MK_MAX_STOP_IDS) fail(`at most ${MK_MAX_STOP_IDS} stop ids, got ${sp.stopIds.length}`);
  for (const id of sp.stopIds) {
    if (!Number.isInteger(id) || id < 0 || id > 2 ** 31 - 1) fail(`stop id ${id} is not a token id`);
  }
  if (!Number.isInteger(sp.logprobs) || sp.logprobs < 0 || sp.logprobs > MK_MAX_LOGPROBS) {
    fail(`--logprobs must be an integer in [0, ${MK_MAX_LOGPROBS}]`);
  }
  return sp;
}

/**
 * A `mk_sampling_params` for `sp` (validated), starting from the library's `mk_default_sampling_params()` so that
 * fields appended to the struct later keep their defaults. `maxTokens` may be lowered by the caller (`maxTokens`).
 */
export function writeSamplingParams(
  lib: MkLibrary,
  sp: SamplingParams,
  maxTokens = sp.maxTokens,
): Uint8Array<ArrayBuffer> {
  validateSampling(sp);
  const o = SAMPLING_PARAMS;
  const bytes = new Uint8Array(nativeBuffer(o.size), 0, o.size);
  lib.symbols.mk_default_sampling_params(bytes);
  const v = new DataView(bytes.buffer);
  const seed = BigInt(sp.seed);
  v.setUint32(o.struct_size, o.size, true);
  v.setFloat32(o.temperature, sp.temperature, true);
  v.setFloat32(o.top_p, sp.topP, true);
  v.setInt32(o.top_k, sp.topK, true);
  v.setUint32(o.seed_lo, Number(seed & 0xffffffffn), true);
  v.setUint32(o.seed_hi, Number(seed >> 32n), true);
  v.setInt32(o.max_tokens, maxTokens, true);
  v.setInt32(o.n_stop_ids, sp.stopIds.length, true);
  sp.stopIds.forEach((id, i) => v.setInt32(o.stop_ids + 4 * i, id, true));
  v.setInt32(o.logprobs, sp.logprobs, true);
  return bytes;
}
