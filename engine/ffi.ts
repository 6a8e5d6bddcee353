/**
 * The one Deno FFI symbol table of mkchat: the TypeScript mirror of `native/mkchat.h`, and the byte layouts of the
 * parameter structs that cross the boundary. Nothing else in the project calls `Deno.dlopen`.
 *
 * Struct layouts follow the C rules on x86-64 / aarch64 Linux (LP64): every field sits at a multiple of its own size,
 * the struct is padded to a multiple of its largest member. The offsets below are checked against the `struct_size`
 * that the library's `*_default_params()` write (tests/engine/ffi_test.ts) and are written by hand so that a reader
 * can compare them with the header line by line.
 *
 * @module
 */

import type { LlamaConfig } from "../weights/config.ts";

/** `MK_ABI_VERSION` of the header this table mirrors; the library must report the same from `mk_abi_version()`. */
export const MK_ABI_VERSION = 1;

/** `MK_MAX_STOP_IDS`: stop ids a `mk_sampling_params` can hold. */
export const MK_MAX_STOP_IDS = 16;
/** `MK_MAX_LOGPROBS`: top-K log-probabilities per token at most. */
export const MK_MAX_LOGPROBS = 20;

/** `mk_status` values (0 ok, > 0 a finish outcome of generate, < 0 an error). */
export const Status = {
  OK: 0,
  FINISH_STOP: 1,
  FINISH_LENGTH: 2,
  FINISH_CONTEXT: 3,
  FINISH_CANCELLED: 4,
  ERR_INVALID: -1,
  ERR_IO: -2,
  ERR_WEIGHTS: -3,
  ERR_NO_DEVICE: -4,
  ERR_UNSUPPORTED_DEVICE: -5,
  ERR_OOM: -6,
  ERR_CUDA: -7,
  ERR_TIMEOUT: -8,
  ERR_STATE: -9,
  ERR_CONTEXT: -10,
  ERR_INTERNAL: -11,
} as const;

/** `mk_device` values. */
export const MK_DEVICE_CPU = 0;
/** `mk_device` values. */
export const MK_DEVICE_CUDA = 1;
/** `mk_cpu_mode` values. */
export const MK_CPU_REFERENCE = 0;
/** `mk_cpu_mode` values. */
export const MK_CPU_INTERPRETER = 1;
/** `mk_dtype` value of each safetensors dtype string. */
export const MK_DTYPE: Record<"BF16" | "F16" | "F32", number> = { BF16: 0, F16: 1, F32: 2 };

/** The symbol table passed to `Deno.dlopen`; the C signature of each function is in its comment. */
export const SYMBOLS = {
  /** int32_t mk_abi_version(void) */
  mk_abi_version: { parameters: [], result: "i32" },
  /** const char *mk_build_info(void) */
  mk_build_info: { parameters: [], result: "pointer" },
  /** const char *mk_last_error(const mk_engine *e) */
  mk_last_error: { parameters: ["pointer"], result: "pointer" },
  /** void mk_default_engine_params(mk_engine_params *p) */
  mk_default_engine_params: { parameters: ["buffer"], result: "void" },
  /** void mk_default_sampling_params(mk_sampling_params *p) */
  mk_default_sampling_params: { parameters: ["buffer"], result: "void" },
  /** int32_t mk_cuda_available(char *name_or_reason, int32_t cap) */
  mk_cuda_available: { parameters: ["buffer", "i32"], result: "i32" },
  /** int32_t mk_engine_create(const mk_model_config *cfg, const mk_engine_params *params, mk_engine **out) */
  mk_engine_create: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  /** void mk_engine_free(mk_engine *e) */
  mk_engine_free: { parameters: ["pointer"], result: "void" },
  /**
   * int32_t mk_engine_add_tensor(mk_engine *e, const char *name, const char *path, uint64_t offset,
   *                              uint64_t nbytes, int32_t dtype, int64_t d0, int64_t d1)
   */
  mk_engine_add_tensor: {
    parameters: ["pointer", "buffer", "buffer", "u64", "u64", "i32", "i64", "i64"],
    result: "i32",
  },
  /** int32_t mk_engine_load(mk_engine *e) — reads gigabytes: runs off the event loop */
  mk_engine_load: { parameters: ["pointer"], result: "i32", nonblocking: true },
  /** int32_t mk_engine_set_program(mk_engine *e, const int32_t *words, int32_t n_words) */
  mk_engine_set_program: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  /** int32_t mk_engine_device_info(const mk_engine *e, int32_t *n_queues, char *name, int32_t cap) */
  mk_engine_device_info: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "i32" },
  /** int32_t mk_engine_position(const mk_engine *e) */
  mk_engine_position: { parameters: ["pointer"], result: "i32" },
  /** int32_t mk_engine_truncate(mk_engine *e, int32_t n) */
  mk_engine_truncate: { parameters: ["pointer", "i32"], result: "i32" },
  /** int32_t mk_engine_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits) */
  mk_engine_prefill: { parameters: ["pointer", "buffer", "i32", "buffer"], result: "i32", nonblocking: true },
  /**
   * int32_t mk_engine_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
   *                            mk_stream *stream, const mk_stream_arrays *arrays)
   */
  mk_engine_generate: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mk_measure_read_bandwidth(mk_engine *e, double *gbps) */
  mk_measure_read_bandwidth: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library: `lib.symbols.mk_*`. */
export type MkLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

// --- memory shared with native code ---------------------------------------------------------------------------------

/**
 * A zeroed buffer whose bytes never move: created as an explicit ArrayBuffer (V8 keeps small typed arrays made with
 * `new Uint8Array(n)` on its heap, where the garbage collector may move them; a pointer handed to a native thread
 * must stay valid until the call returns).
 */
export function nativeBuffer(nbytes: number): ArrayBuffer {
  return new ArrayBuffer(Math.max(8, nbytes));
}

/** A NUL-terminated UTF-8 copy of `text` for a `const char *` parameter. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(nativeBuffer(bytes.length + 1), 0, bytes.length + 1);
  out.set(bytes);
  return out;
}

/** The text of a NUL-terminated `char` buffer the library filled (e.g. mk_cuda_available's name_or_reason). */
export function readCBuffer(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(buf.subarray(0, end < 0 ? buf.length : end));
}

/** The text behind a `const char *` the library returned (NULL reads as ""). */
export function readCPointer(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** The address of a buffer as the 64-bit integer a pointer field holds (0 for null). */
export function addressOf(buf: ArrayBufferView<ArrayBuffer> | null): bigint {
  if (buf === null) return 0n;
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf));
}

// --- mk_model_config ------------------------------------------------------------------------------------------------

/**
 * `mk_model_config`: 17 four-byte fields, no padding.
 *
 * | offset | field | | offset | field |
 * |---|---|---|---|---|
 * | 0 | u32 struct_size | | 36 | f32 rms_eps |
 * | 4 | i32 vocab_size | | 40 | f32 rope_theta |
 * | 8 | i32 dim | | 44 | i32 rope_type |
 * | 12 | i32 hidden_dim | | 48 | f32 rope_factor |
 * | 16 | i32 n_layers | | 52 | f32 rope_low_freq_factor |
 * | 20 | i32 n_heads | | 56 | f32 rope_high_freq_factor |
 * | 24 | i32 n_kv_heads | | 60 | i32 rope_original_max_position |
 * | 28 | i32 head_dim | | 64 | i32 tie_embeddings |
 * | 32 | i32 max_position | | 68 | (size) |
 */
export const MODEL_CONFIG = {
  size: 68,
  struct_size: 0,
  vocab_size: 4,
  dim: 8,
  hidden_dim: 12,
  n_layers: 16,
  n_heads: 20,
  n_kv_heads: 24,
  head_dim: 28,
  max_position: 32,
  rms_eps: 36,
  rope_theta: 40,
  rope_type: 44,
  rope_factor: 48,
  rope_low_freq_factor: 52,
  rope_high_freq_factor: 56,
  rope_original_max_position: 60,
  tie_embeddings: 64,
} as const;

/** The fields of `mk_model_config`: weights/config.ts's LlamaConfig without the tokenizer ids the engine never sees. */
export type ModelConfigFields = Omit<LlamaConfig, "bosTokenId" | "eosTokenIds">;

/** Writes a `mk_model_config` (struct_size included) into a new buffer. */
export function writeModelConfig(c: ModelConfigFields): Uint8Array<ArrayBuffer> {
  const buf = nativeBuffer(MODEL_CONFIG.size);
  const v = new DataView(buf);
  const o = MODEL_CONFIG;
  v.setUint32(o.struct_size, o.size, true);
  v.setInt32(o.vocab_size, c.vocabSize, true);
  v.setInt32(o.dim, c.dim, true);
  v.setInt32(o.hidden_dim, c.hiddenDim, true);
  v.setInt32(o.n_layers, c.nLayers, true);
  v.setInt32(o.n_heads, c.nHeads, true);
  v.setInt32(o.n_kv_heads, c.nKvHeads, true);
  v.setInt32(o.head_dim, c.headDim, true);
  v.setInt32(o.max_position, c.maxPosition, true);
  v.setFloat32(o.rms_eps, c.rmsEps, true);
  v.setFloat32(o.rope_theta, c.ropeTheta, true);
  v.setInt32(o.rope_type, c.ropeType, true);
  v.setFloat32(o.rope_factor, c.ropeFactor, true);
  v.setFloat32(o.rope_low_freq_factor, c.ropeLowFreqFactor, true);
  v.setFloat32(o.rope_high_freq_factor, c.ropeHighFreqFactor, true);
  v.setInt32(o.rope_original_max_position, c.ropeOriginalMaxPosition, true);
  v.setInt32(o.tie_embeddings, c.tieEmbeddings ? 1 : 0, true);
  return new Uint8Array(buf, 0, o.size);
}

// --- mk_engine_params -----------------------------------------------------------------------------------------------

/**
 * `mk_engine_params`: 8 four-byte fields, no padding.
 *
 * | offset | field |
 * |---|---|
 * | 0 | u32 struct_size |
 * | 4 | i32 device |
 * | 8 | i32 ctx_len |
 * | 12 | i32 n_threads |
 * | 16 | i32 cpu_mode |
 * | 20 | i32 gpu_index |
 * | 24 | i32 timeout_ms |
 * | 28 | u32 interleave_seed |
 * | 32 | (size) |
 */
export const ENGINE_PARAMS = {
  size: 32,
  struct_size: 0,
  device: 4,
  ctx_len: 8,
  n_threads: 12,
  cpu_mode: 16,
  gpu_index: 20,
  timeout_ms: 24,
  interleave_seed: 28,
} as const;

/** The settable fields of `mk_engine_params`; those left out keep the library's defaults. */
export interface EngineParamFields {
  device: number;
  ctxLen: number;
  nThreads?: number;
  cpuMode?: number;
  gpuIndex?: number;
  timeoutMs?: number;
  interleaveSeed?: number;
}

/** A `mk_engine_params` filled by `mk_default_engine_params()`, then with the given fields. */
export function writeEngineParams(lib: MkLibrary, f: EngineParamFields): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(nativeBuffer(ENGINE_PARAMS.size), 0, ENGINE_PARAMS.size);
  lib.symbols.mk_default_engine_params(bytes);
  const v = new DataView(bytes.buffer);
  const o = ENGINE_PARAMS;
  v.setUint32(o.struct_size, o.size, true);
  v.setInt32(o.device, f.device, true);
  v.setInt32(o.ctx_len, f.ctxLen, true);
  if (f.nThreads !== undefined) v.setInt32(o.n_threads, f.nThreads, true);
  if (f.cpuMode !== undefined) v.setInt32(o.cpu_mode, f.cpuMode, true);
  if (f.gpuIndex !== undefined) v.setInt32(o.gpu_index, f.gpuIndex, true);
  if (f.timeoutMs !== undefined) v.setInt32(o.timeout_ms, f.timeoutMs, true);
  if (f.interleaveSeed !== undefined) v.setUint32(o.interleave_seed, f.interleaveSeed, true);
  return bytes;
}

// --- mk_sampling_params ---------------------------------------------------------------------------------------------

/**
 * `mk_sampling_params`: four-byte fields and one int32[16] array, no padding.
 *
 * | offset | field |
 * |---|---|
 * | 0 | u32 struct_size |
 * | 4 | f32 temperature |
 * | 8 | f32 top_p |
 * | 12 | i32 top_k |
 * | 16 | u32 seed_lo |
 * | 20 | u32 seed_hi |
 * | 24 | i32 max_tokens |
 * | 28 | i32 n_stop_ids |
 * | 32 | i32 stop_ids[16] (64 bytes) |
 * | 96 | i32 logprobs |
 * | 100 | (size) |
 */
export const SAMPLING_PARAMS = {
  size: 100,
  struct_size: 0,
  temperature: 4,
  top_p: 8,
  top_k: 12,
  seed_lo: 16,
  seed_hi: 20,
  max_tokens: 24,
  n_stop_ids: 28,
  stop_ids: 32,
  logprobs: 96,
} as const;

// --- mk_stream ------------------------------------------------------------------------------------------------------

/**
 * `mk_stream`: six four-byte fields, then two doubles (8-aligned: 24 is already a multiple of 8, no padding).
 *
 * | offset | field |
 * |---|---|
 * | 0 | u32 struct_size |
 * | 4 | volatile i32 n_tokens (native publishes, caller polls) |
 * | 8 | volatile i32 cancel (caller sets) |
 * | 12 | volatile i32 finish |
 * | 16 | i32 n_prefill |
 * | 20 | i32 position |
 * | 24 | f64 prefill_us |
 * | 32 | f64 decode_us |
 * | 40 | (size) |
 */
export const STREAM = {
  size: 40,
  struct_size: 0,
  n_tokens: 4,
  cancel: 8,
  finish: 12,
  n_prefill: 16,
  position: 20,
  prefill_us: 24,
  decode_us: 32,
} as const;

// --- mk_stream_arrays -----------------------------------------------------------------------------------------------

/**
 * `mk_stream_arrays`: two four-byte fields, then five pointers (8-aligned from offset 8).
 *
 * | offset | field |
 * |---|---|
 * | 0 | u32 struct_size |
 * | 4 | i32 capacity |
 * | 8 | int32_t *tokens |
 * | 16 | double *t_us |
 * | 24 | float *logprob |
 * | 32 | int32_t *top_ids |
 * | 40 | float *top_logprobs |
 * | 48 | (size) |
 */
export const STREAM_ARRAYS = {
  size: 48,
  struct_size: 0,
  capacity: 4,
  tokens: 8,
  t_us: 16,
  logprob: 24,
  top_ids: 32,
  top_logprobs: 40,
} as const;
