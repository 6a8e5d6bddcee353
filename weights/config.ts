/**
 * config.json → LlamaConfig: the fields of native/mkchat.h's mk_model_config (camelCase) plus the token ids the
 * chat needs. Only Llama models are accepted, and every field the engine uses is checked, so that a bad config is
 * reported here as one line naming the setting rather than as a crash or garbage text later.
 *
 * Defaults follow HF transformers' LlamaConfig where a field may be absent: num_key_value_heads = heads,
 * head_dim = hidden_size / heads, rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 2048,
 * tie_word_embeddings false. Rope parameters are read from `rope_scaling` (transformers 4.x) or `rope_parameters`
 * (transformers 5, which also moves rope_theta there).
 *
 * @module
 */

import { MkError } from "./errors.ts";

/** A Llama model's configuration, as the engine and the scheduler need it. */
export interface LlamaConfig {
  /** vocab_size: rows of the embedding and of the LM head. */
  vocabSize: number;
  /** hidden_size: the residual stream width. */
  dim: number;
  /** intermediate_size: the MLP width. */
  hiddenDim: number;
  /** num_hidden_layers. */
  nLayers: number;
  /** num_attention_heads. */
  nHeads: number;
  /** num_key_value_heads (grouped-query attention); divides nHeads. */
  nKvHeads: number;
  /** Per-head width: head_dim, else hidden_size / num_attention_heads. */
  headDim: number;
  /** max_position_embeddings: the longest context the model was made for. */
  maxPosition: number;
  /** rms_norm_eps. */
  rmsEps: number;
  /** rope_theta: the RoPE base. */
  ropeTheta: number;
  /** 0 = plain RoPE, 1 = Llama-3 frequency scaling (the four fields below apply). */
  ropeType: 0 | 1;
  /** rope_scaling.factor (1 for plain RoPE). */
  ropeFactor: number;
  /** rope_scaling.low_freq_factor (1 for plain RoPE). */
  ropeLowFreqFactor: number;
  /** rope_scaling.high_freq_factor (1 for plain RoPE). */
  ropeHighFreqFactor: number;
  /** rope_scaling.original_max_position_embeddings (maxPosition for plain RoPE). */
  ropeOriginalMaxPosition: number;
  /** True when the LM head is the embedding matrix (tie_word_embeddings; see model_files.ts for absent lm_head). */
  tieEmbeddings: boolean;
  /** bos_token_id, when the config names one. */
  bosTokenId?: number;
  /** eos_token_id as a list (a single id becomes a one-element list; absent → empty). */
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

function fail(file: string, what: string): never {
  throw new MkError("config", `${file}: ${what}`);
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function positiveInt(obj: Json, key: string, file: string, fallback?: number, prefix = ""): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    fail(file, `missing ${prefix}${key}`);
  }
  // 2^31 - 1: every size ends up in an int32_t of mk_model_config.
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0 || v > 0x7fffffff) {
    fail(file, `${prefix}${key} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function positiveNumber(obj: Json, key: string, file: string, fallback?: number, prefix = ""): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    fail(file, `missing ${prefix}${key}`);
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    fail(file, `${prefix}${key} must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function tokenId(v: unknown, key: string, file: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    fail(file, `${key} must be a token id (a non-negative integer), got ${JSON.stringify(v)}`);
  }
  return v;
}

function checkArchitecture(json: Json, file: string): void {
  const modelType = json.model_type;
  const archs = json.architectures;
  if (modelType !== undefined && modelType !== "llama") {
    fail(file, `model_type is ${JSON.stringify(modelType)}, but mkchat runs Llama models only (model_type "llama")`);
  }
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || !archs.includes("LlamaForCausalLM")) {
      fail(file, `architectures is ${JSON.stringify(archs)}, but mkchat runs LlamaForCausalLM only`);
    }
  } else if (modelType === undefined) {
    fail(file, `neither model_type nor architectures is set, so this is not known to be a Llama model`);
  }
  // Llama variants mkchat's kernels do not implement: say so instead of computing something else.
  if (json.hidden_act !== undefined && json.hidden_act !== "silu") {
    fail(file, `hidden_act is ${JSON.stringify(json.hidden_act)}; mkchat implements the Llama MLP with "silu" only`);
  }
  for (const key of ["attention_bias", "mlp_bias"]) {
    if (json[key] !== undefined && json[key] !== false) {
      fail(file, `${key} is ${JSON.stringify(json[key])}; mkchat implements Llama without biases`);
    }
  }
}

type Rope = Pick<
  LlamaConfig,
  "ropeType" | "ropeFactor" | "ropeLowFreqFactor" | "ropeHighFreqFactor" | "ropeOriginalMaxPosition"
>;

function parseRope(json: Json, file: string, maxPosition: number): Rope {
  const plain: Rope = {
    ropeType: 0,
    ropeFactor: 1,
    ropeLowFreqFactor: 1,
    ropeHighFreqFactor: 1,
    ropeOriginalMaxPosition: maxPosition,
  };
  const key = json.rope_scaling !== undefined && json.rope_scaling !== null ? "rope_scaling" : "rope_parameters";
  const rs = json[key];
  if (rs === undefined || rs === null) return plain;
  if (!isObject(rs)) fail(file, `${key} must be an object or null, got ${JSON.stringify(rs)}`);
  // "type" is the spelling of transformers < 4.43; "rope_type" wins when both are present, as in transformers.
  const type = rs.rope_type ?? rs.type;
  if (type === "default" || (type === undefined && key === "rope_parameters")) return plain;
  if (type !== "llama3") {
    fail(file, `${key}.rope_type ${JSON.stringify(type)} is not supported (mkchat implements "llama3" and default)`);
  }
  const p = `${key}.`;
  const factor = positiveNumber(rs, "factor", file, undefined, p);
  const low = positiveNumber(rs, "low_freq_factor", file, undefined, p);
  const high = positiveNumber(rs, "high_freq_factor", file, undefined, p);
  const original = positiveInt(rs, "original_max_position_embeddings", file, undefined, p);
  // The llama3 rule interpolates between the wavelengths original/low and original/high: it needs high > low, and
  // only shrinks frequencies, so factor >= 1 (transformers checks the same two things).
  if (factor < 1) fail(file, `${p}factor must be >= 1, got ${factor}`);
  if (!(high > low)) fail(file, `${p}high_freq_factor (${high}) must be greater than low_freq_factor (${low})`);
  return {
    ropeType: 1,
    ropeFactor: factor,
    ropeLowFreqFactor: low,
    ropeHighFreqFactor: high,
    ropeOriginalMaxPosition: original,
  };
}

function parseEos(v: unknown, file: string): number[] {
  if (v === undefined || v === null) return [];
  if (Array.isArray(v)) return v.map((x, i) => tokenId(x, `eos_token_id[${i}]`, file));
  return [tokenId(v, "eos_token_id", file)];
}

/**
 * Parses and validates a config.json already read as JSON; `file` is its path, named in every error. Throws
 * MkError("config") with one line naming the setting at fault.
 */
export function parseLlamaConfig(json: unknown, file: string): LlamaConfig {
  if (!isObject(json)) fail(file, "not a JSON object");
  checkArchitecture(json, file);
  const vocabSize = positiveInt(json, "vocab_size", file);
  const dim = positiveInt(json, "hidden_size", file);
  const hiddenDim = positiveInt(json, "intermediate_size", file);
  const nLayers = positiveInt(json, "num_hidden_layers", file);
  const nHeads = positiveInt(json, "num_attention_heads", file);
  const nKvHeads = positiveInt(json, "num_key_value_heads", file, nHeads);
  if (nHeads % nKvHeads !== 0) {
    fail(file, `num_attention_heads (${nHeads}) is not a multiple of num_key_value_heads (${nKvHeads})`);
  }
  if (json.head_dim === undefined || json.head_dim === null) {
    if (dim % nHeads !== 0) {
      fail(file, `hidden_size (${dim}) is not a multiple of num_attention_heads (${nHeads}) and head_dim is not set`);
    }
  }
  const headDim = positiveInt(json, "head_dim", file, dim / nHeads);
  // RoPE rotates pairs of dimensions, so the head width must be even.
  if (headDim % 2 !== 0) fail(file, `head_dim (${headDim}) must be even for rotary embeddings`);
  const maxPosition = positiveInt(json, "max_position_embeddings", file, 2048);
  const rmsEps = positiveNumber(json, "rms_norm_eps", file, 1e-6);
  if (rmsEps >= 1) fail(file, `rms_norm_eps must be a small positive number, got ${rmsEps}`);
  const ropeParams = isObject(json.rope_parameters) ? json.rope_parameters : {};
  const ropeTheta = json.rope_theta !== undefined
    ? positiveNumber(json, "rope_theta", file)
    : positiveNumber(ropeParams, "rope_theta", file, 10000, "rope_parameters.");
  const tie = json.tie_word_embeddings ?? false;
  if (typeof tie !== "boolean") fail(file, `tie_word_embeddings must be true or false, got ${JSON.stringify(tie)}`);
  const bos = json.bos_token_id;
  const config: LlamaConfig = {
    vocabSize,
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    headDim,
    maxPosition,
    rmsEps,
    ropeTheta,
    ...parseRope(json, file, maxPosition),
    tieEmbeddings: tie,
    eosTokenIds: parseEos(json.eos_token_id, file),
  };
  if (bos !== undefined && bos !== null) config.bosTokenId = tokenId(bos, "bos_token_id", file);
  for (const id of [...config.eosTokenIds, ...(config.bosTokenId === undefined ? [] : [config.bosTokenId])]) {
    if (id >= vocabSize) fail(file, `token id ${id} (bos/eos) is outside the vocabulary of ${vocabSize}`);
  }
  return config;
}
