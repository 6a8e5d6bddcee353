/*
 * cpu.h — internal: the CPU engine (reference forward pass, sampling, interpreter of the instruction program) as
 * native/engine.c calls it. Everything here works on e->cpu (an mk_cpu) and the bf16 weights in e->w.
 */
#ifndef MKCHAT_CPU_H
#define MKCHAT_CPU_H

#include <stdint.h>

#include "../bf16.h"
#include "../engine_internal.h"

/* ---- thread pool (threads.c) ------------------------------------------------------------------------------------ */
/* A fixed set of workers that run fn(arg, i, n) for i in [0, n) (n = the pool size, the caller is worker 0). */
typedef struct mk_pool mk_pool;
typedef void (*mk_pool_fn)(void *arg, int i, int n);
mk_pool *mk_pool_create(int n_threads); /* NULL on failure */
void mk_pool_run(mk_pool *p, mk_pool_fn fn, void *arg);
int mk_pool_size(const mk_pool *p);
void mk_pool_free(mk_pool *p);

/* ---- math kernels (forward.c) ----------------------------------------------------------------------------------- */
float mk_dot_bf16(const uint16_t *w, const float *x, int64_t n);       /* sum_i bf16(w[i]) * x[i] */
void mk_rmsnorm(float *out, const float *x, const uint16_t *weight, int n, float eps);
/* out[r] = dot(W[r, 0:cols], x) for r in [0, rows), W bf16 with row stride ld; threaded over rows when large */
void mk_matvec(mk_pool *pool, float *out, const uint16_t *w, const float *x, int64_t rows, int64_t cols, int64_t ld);
/* RoPE inverse frequencies, float32 exactly as HF transformers computes them (default or llama3 scaling): [hd/2] */
void mk_rope_inv_freq(const mk_model_config *c, float *inv_freq);
/* rotate one head in place, HF rotate_half convention (element i pairs with i + hd/2) */
void mk_rope_apply(float *head, const float *inv_freq, int hd, int pos);

/* ---- sampling (sampling.c) -------------------------------------------------------------------------------------- */
typedef struct mk_sampler {
  mk_sampling_params sp;
  uint64_t rng;    /* splitmix64 state, seeded from sp.seed_lo/hi at the start of each generation */
  int32_t vocab;
  float *prob;     /* [vocab] scratch */
  void *cand;      /* [vocab] scratch candidates (probability, id) */
} mk_sampler;
int mk_sampler_init(mk_sampler *s, const mk_sampling_params *sp, int32_t vocab); /* 0 or MK_ERR_OOM */
void mk_sampler_free(mk_sampler *s);
/*
 * Choose the next token from logits [vocab] (temperature, top-k, top-p as HF; greedy at T == 0) and report the
 * log-probability of the chosen token and the top `sp.logprobs` ids of the RAW T=1 distribution (ids sorted by
 * logprob desc, ties by id). lse is log(sum(exp(logits))) when the caller knows it already, else NAN.
 * logprob, top_ids, top_lp may be NULL.
 */
int32_t mk_sample(mk_sampler *s, const float *logits, double lse, float *logprob, int32_t *top_ids, float *top_lp);
double mk_logsumexp(const float *x, int64_t n);

/* tokens a prefill runs through the reference forward pass at once (each weight row is read once per block) */
#define MK_BATCH 16

/* ---- the CPU engine state ---------------------------------------------------------------------------------------- */
typedef struct mk_interp mk_interp;

typedef struct mk_cpu {
  mk_pool *pool;
  float *inv_freq;     /* (hd/2) */
  /* reference forward pass (cpu_mode == MK_CPU_REFERENCE); activations for a block of up to MK_BATCH tokens */
  float *x;            /* (B, dim) residual stream */
  float *xb;           /* (B, dim) normed input of a block */
  float *xb2;          /* (B, dim) block output before the residual add */
  float *q;            /* (B, n_heads*hd) */
  float *att_out;      /* (B, n_heads*hd) attention output, heads concatenated */
  float *att;          /* (B, n_heads, ctx_len) attention scores */
  float *hb;           /* (B, hidden) gate, then silu(gate) * up */
  float *hb2;          /* (B, hidden) up */
  float *logits;       /* (vocab) */
  float *key_cache;    /* (layer, ctx_len, n_kv*hd) fp32 */
  float *value_cache;  /* (layer, ctx_len, n_kv*hd) fp32 */
  /* interpreter (cpu_mode == MK_CPU_INTERPRETER) */
  mk_interp *interp;
} mk_cpu;

/* forward.c */
int mk_cpu_create(mk_engine *e);
void mk_cpu_free(mk_engine *e);
int mk_cpu_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits);
int mk_cpu_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                    mk_stream *stream, const mk_stream_arrays *arrays);
int mk_cpu_read_bandwidth(mk_engine *e, double *gbps);

/* interpreter.c */
int mk_interp_create(mk_engine *e);  /* allocates cpu->interp (bf16 KV cache, activation buffers) */
void mk_interp_free(mk_engine *e);
int mk_interp_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits);
int mk_interp_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                       mk_stream *stream, const mk_stream_arrays *arrays);

/* generate.c: the shared publication of a generated token (arrays first, then the release store of n_tokens) */
void mk_publish_token(mk_stream *stream, const mk_stream_arrays *arrays, int32_t logprobs, int32_t i, int32_t token,
                      double t_us, float logprob, const int32_t *top_ids, const float *top_lp);
int mk_is_stop(const mk_sampling_params *sp, int32_t token);
int mk_cancelled(const mk_stream *stream);

#endif /* MKCHAT_CPU_H */
