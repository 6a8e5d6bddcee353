/*
 * mkchat.h — the whole C ABI of the mkchat native engine (CPU reference engine and CUDA megakernel).
 *
 * Conventions (after llama.h / webview / PJRT):
 *  - One opaque handle, mk_engine. Every function returns an int status (see mk_status): 0 ok, >0 a soft outcome,
 *    <0 an error whose one-line message is read with mk_last_error(engine) (or mk_last_error(NULL) for errors
 *    raised before an engine exists). No C++ exception or CUDA error crosses this boundary.
 *  - Parameter structs start with their own size (struct_size) so that fields can be appended later; fill them with
 *    the *_default_params() helpers.
 *  - The caller checks mk_abi_version() == MK_ABI_VERSION at load.
 *  - An engine is used by one thread at a time, with one exception: the mk_stream header of a running
 *    mk_engine_generate() is shared memory that the caller reads (n_tokens) and writes (cancel) concurrently.
 *
 * The TypeScript mirror of this header is engine/ffi.ts and nowhere else.
 */
#ifndef MKCHAT_H
#define MKCHAT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MK_API __declspec(dllexport)
#else
#define MK_API __attribute__((visibility("default")))
#endif

#define MK_ABI_VERSION 1

/* ---- status codes ---------------------------------------------------------------------------------------------- */
typedef enum mk_status {
  MK_OK = 0,
  /* soft outcomes of mk_engine_generate (also stored in mk_stream.finish) */
  MK_FINISH_STOP = 1,       /* a stop id was sampled (it is reported as the last token) */
  MK_FINISH_LENGTH = 2,     /* max_tokens reached */
  MK_FINISH_CONTEXT = 3,    /* the KV cache is full (ctx_len positions used) */
  MK_FINISH_CANCELLED = 4,  /* mk_stream.cancel was set */
  /* errors */
  MK_ERR_INVALID = -1,      /* bad argument or parameter value */
  MK_ERR_IO = -2,           /* a weights file could not be opened, read or mapped */
  MK_ERR_WEIGHTS = -3,      /* a tensor is missing, or has the wrong dtype, shape or size */
  MK_ERR_NO_DEVICE = -4,    /* CUDA asked for, but no driver, no GPU, or library built without CUDA */
  MK_ERR_UNSUPPORTED_DEVICE = -5, /* a GPU is there but is not sm_90 (Hopper) */
  MK_ERR_OOM = -6,          /* host or device memory exhausted */
  MK_ERR_CUDA = -7,         /* any other CUDA error (message names file:line and the call) */
  MK_ERR_TIMEOUT = -8,      /* a megakernel counter wait timed out (message names SM, instruction, counter) */
  MK_ERR_STATE = -9,        /* call not valid in the engine's state (not loaded, no program, call in flight) */
  MK_ERR_CONTEXT = -10,     /* prefill would overflow the context: nothing was appended */
  MK_ERR_INTERNAL = -11,
} mk_status;

/* ---- devices and dtypes ---------------------------------------------------------------------------------------- */
typedef enum mk_device { MK_DEVICE_CPU = 0, MK_DEVICE_CUDA = 1 } mk_device;
typedef enum mk_dtype { MK_DTYPE_BF16 = 0, MK_DTYPE_F16 = 1, MK_DTYPE_F32 = 2 } mk_dtype;

/* CPU engine execution mode: the plain forward pass, or the CPU interpreter of the instruction program. */
typedef enum mk_cpu_mode { MK_CPU_REFERENCE = 0, MK_CPU_INTERPRETER = 1 } mk_cpu_mode;

/* ---- model config (from config.json) --------------------------------------------------------------------------- */
typedef struct mk_model_config {
  uint32_t struct_size;
  int32_t vocab_size;          /* 128256 for Llama-3 */
  int32_t dim;                 /* hidden_size: 2048 */
  int32_t hidden_dim;          /* intermediate_size: 8192 */
  int32_t n_layers;            /* num_hidden_layers: 16 */
  int32_t n_heads;             /* num_attention_heads: 32 */
  int32_t n_kv_heads;          /* num_key_value_heads: 8 */
  int32_t head_dim;            /* 64 (hidden_size / num_attention_heads unless config says head_dim) */
  int32_t max_position;        /* max_position_embeddings */
  float rms_eps;               /* rms_norm_eps */
  float rope_theta;            /* rope_theta */
  int32_t rope_type;           /* 0 = default rope, 1 = llama3 scaling */
  float rope_factor;           /* rope_scaling.factor */
  float rope_low_freq_factor;  /* rope_scaling.low_freq_factor */
  float rope_high_freq_factor; /* rope_scaling.high_freq_factor */
  int32_t rope_original_max_position; /* rope_scaling.original_max_position_embeddings */
  int32_t tie_embeddings;      /* 1: lm_head is the embedding matrix */
} mk_model_config;

/* ---- engine params --------------------------------------------------------------------------------------------- */
typedef struct mk_engine_params {
  uint32_t struct_size;
  int32_t device;      /* mk_device */
  int32_t ctx_len;     /* KV cache positions to allocate (<= max_position) */
  int32_t n_threads;   /* CPU engine worker threads; 0 = all cores */
  int32_t cpu_mode;    /* mk_cpu_mode; ignored on CUDA */
  int32_t gpu_index;   /* CUDA device ordinal */
  int32_t timeout_ms;  /* CUDA: a counter wait longer than this aborts the kernel with MK_ERR_TIMEOUT; 0 = 5000 */
  uint32_t interleave_seed; /* CPU interpreter: 0 = run the queues in order; else a random valid interleaving of the
                               queues (any order the counters allow), drawn from this seed, for every step */
} mk_engine_params;

/* ---- sampling -------------------------------------------------------------------------------------------------- */
#define MK_MAX_STOP_IDS 16
#define MK_MAX_LOGPROBS 20
/* On CUDA, top-k and top-p act on the 64 most likely tokens (see native/cuda/ops/sample.cuh); the CPU engine is exact
   over the whole vocabulary. temperature == 0 is greedy on both. */
#define MK_CUDA_MAX_TOP_K 64

typedef struct mk_sampling_params {
  uint32_t struct_size;
  float temperature;   /* 0 = greedy */
  float top_p;         /* 1 = off */
  int32_t top_k;       /* 0 = off */
  uint32_t seed_lo, seed_hi; /* 64-bit seed */
  int32_t max_tokens;  /* generated tokens at most (>= 1) */
  int32_t n_stop_ids;
  int32_t stop_ids[MK_MAX_STOP_IDS];
  int32_t logprobs;    /* 0..MK_MAX_LOGPROBS: top-K log-probabilities (of the raw, T=1 distribution) per token */
} mk_sampling_params;

/*
 * The stream header of a generation: shared between the native thread running mk_engine_generate and the caller.
 * Native writes the token arrays first, then publishes n_tokens (release store); the caller polls n_tokens
 * (acquire load) and may set cancel != 0 at any time, which ends the generation within one decode step.
 */
typedef struct mk_stream {
  uint32_t struct_size;
  volatile int32_t n_tokens;   /* generated tokens published so far */
  volatile int32_t cancel;     /* set by the caller */
  volatile int32_t finish;     /* 0 while running, then an mk_finish status */
  int32_t n_prefill;           /* prompt tokens processed by this call */
  int32_t position;            /* engine position (tokens in the KV cache) when the call returned */
  double prefill_us;           /* wall time of the prompt, until the first generated token is known */
  double decode_us;            /* wall time from the first to the last generated token */
} mk_stream;

/* Per-token outputs of a generation; arrays the caller owns, each `capacity` long (top_* capacity*logprobs). */
typedef struct mk_stream_arrays {
  uint32_t struct_size;
  int32_t capacity;
  int32_t *tokens;        /* [capacity] generated token ids */
  double *t_us;           /* [capacity] time each token became known, µs since the call began (device clock on CUDA) */
  float *logprob;         /* [capacity] log-probability of the chosen token, or NULL */
  int32_t *top_ids;       /* [capacity * logprobs] or NULL */
  float *top_logprobs;    /* [capacity * logprobs] or NULL */
} mk_stream_arrays;

/* ---- API ------------------------------------------------------------------------------------------------------- */
typedef struct mk_engine mk_engine;

MK_API int32_t mk_abi_version(void);
/* Build description, e.g. "mkchat 0.1.0 cpu+cuda(sm_90a) src=<hash>". */
MK_API const char *mk_build_info(void);
/* Last error message of an engine, or of the calling thread's last engine-less call when e == NULL. Never NULL. */
MK_API const char *mk_last_error(const mk_engine *e);

MK_API void mk_default_engine_params(mk_engine_params *p);
MK_API void mk_default_sampling_params(mk_sampling_params *p);

/* CUDA probe: 1 and a device name when a usable (sm_90) GPU and driver are present, else 0 and the reason. */
MK_API int32_t mk_cuda_available(char *name_or_reason, int32_t cap);

MK_API int32_t mk_engine_create(const mk_model_config *cfg, const mk_engine_params *params, mk_engine **out);
MK_API void mk_engine_free(mk_engine *e);

/*
 * Declare one tensor stored in a safetensors file: HF name ("model.layers.3.mlp.up_proj.weight"), the file, the
 * absolute byte offset of its data and its byte size, dtype, and shape (d1 = 0 for 1-D). Every tensor the config
 * implies must be declared before mk_engine_load; unknown names are an error.
 */
MK_API int32_t mk_engine_add_tensor(mk_engine *e, const char *name, const char *path, uint64_t offset, uint64_t nbytes,
                                    int32_t dtype, int64_t d0, int64_t d1);
/* Map/read the declared tensors and (CUDA) upload them; after this the engine is ready at position 0. */
MK_API int32_t mk_engine_load(mk_engine *e);

/* Install the instruction program made by engine/scheduler.ts (see native/program.h): n_words int32 words. Required
   before generation on CUDA and with MK_CPU_INTERPRETER. */
MK_API int32_t mk_engine_set_program(mk_engine *e, const int32_t *words, int32_t n_words);

/* What the engine runs on: the number of instruction queues the scheduler should build (CUDA: SM count; CPU: a
   suggestion) and a device name ("NVIDIA H200", "cpu (16 threads)"). */
MK_API int32_t mk_engine_device_info(const mk_engine *e, int32_t *n_queues, char *name, int32_t cap);

MK_API int32_t mk_engine_position(const mk_engine *e);
/* Keep only the first n positions of the KV cache (0 = clear the conversation). */
MK_API int32_t mk_engine_truncate(mk_engine *e, int32_t n);

/*
 * Append tokens to the KV cache. With logits != NULL, write the vocab_size logits after the last token.
 * MK_ERR_CONTEXT (nothing appended) when position + n > ctx_len.
 */
MK_API int32_t mk_engine_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits);

/*
 * Prefill `prompt` (n_prompt >= 1 new tokens), then generate until a stop id, max_tokens, a full context or cancel.
 * Blocks the calling thread; publishes each token through stream/arrays as it becomes known. Returns the finish
 * status (> 0) or an error (< 0). Generated token k enters the KV cache when token k+1 is computed, so when the call
 * returns with n tokens generated the cache holds the prompt and the first n-1 of them: the last generated token
 * (often a stop id) is the first token the caller passes to the next prefill/generate if the conversation goes on.
 * Requires position + n_prompt <= ctx_len (else MK_ERR_CONTEXT, nothing appended).
 */
MK_API int32_t mk_engine_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                                  mk_stream *stream, const mk_stream_arrays *arrays);

/* ---- diagnostics ----------------------------------------------------------------------------------------------- */
/* Streaming-read bandwidth of the device in GB/s (CUDA: a large read-only kernel; CPU: memory read), measured now. */
MK_API int32_t mk_measure_read_bandwidth(mk_engine *e, double *gbps);


#ifdef __cplusplus
}
#endif
#endif /* MKCHAT_H */
