/*
 * forward.c — the CPU reference engine: a plain Llama forward pass, one token at a time, llama2.c style.
 *
 * fp32 math over bf16 weights (each weight is widened exactly, products and sums in fp32), fp32 KV cache. This is
 * the oracle the megakernel and the CPU interpreter are compared with, and it must equal HF transformers in fp32
 * (bf16 weights upcast) within 1e-4 relative L2: same RMSNorm, same RoPE inverse frequencies (llama3 scaling
 * included), same rotate_half pairing, GQA by integer division of heads, SiLU-gated MLP.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu.h"

// ---------------------------------------------------------------------------------------------------------------------
// math kernels

/*
 * The bf16 dot product every matvec is made of. 32 independent accumulators: written this way the compiler turns the
 * inner loop into four 8-wide (AVX2) fused multiply-adds over widened bf16 without -ffast-math (it may not reorder a
 * single running sum, but it may vectorise lanes that are already separate). Four chains rather than two hide the
 * FMA latency, which is what a batched prefill (compute-bound) is limited by: +18% there; decoding is memory-bound.
 */
#define MK_DOT_LANES 32
float mk_dot_bf16(const uint16_t *w, const float *x, int64_t n) {
  float acc[MK_DOT_LANES] = {0};
  int64_t i = 0;
  for (; i + MK_DOT_LANES <= n; i += MK_DOT_LANES) {
    for (int j = 0; j < MK_DOT_LANES; j++) acc[j] += mk_bf16_to_f32(w[i + j]) * x[i + j];
  }
  float tail = 0.0f;
  for (; i < n; i++) tail += mk_bf16_to_f32(w[i]) * x[i];
  for (int s = MK_DOT_LANES / 2; s > 0; s >>= 1) { /* pairwise reduction of the lanes */
    for (int j = 0; j < s; j++) acc[j] += acc[j + s];
  }
  return acc[0] + tail;
}

/* out = x / sqrt(mean(x^2) + eps) * weight, as HF LlamaRMSNorm in fp32 */
void mk_rmsnorm(float *out, const float *x, const uint16_t *weight, int n, float eps) {
  double ss = 0.0; /* double: the mean of squares of a 2048-vector, once per norm, costs nothing */
  for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float inv = 1.0f / sqrtf((float)(ss / n) + eps);
  for (int i = 0; i < n; i++) out[i] = mk_bf16_to_f32(weight[i]) * (x[i] * inv);
}

// ---------------------------------------------------------------------------------------------------------------------
// threaded matvecs: each job is split over the pool by rows

typedef struct mk_mv {
  float *out;          /* (n, out_stride): out[b * out_stride + r] for input b */
  const uint16_t *w;   /* (rows, ld) bf16, the first cols of each row are used */
  const float *x;      /* (n, x_stride): input b at x + b * x_stride, cols used */
  int64_t rows, cols, ld;
  int n;               /* inputs: 1 when decoding, up to MK_BATCH in a prefill */
  int64_t x_stride, out_stride;
} mk_mv;

typedef struct { const mk_mv *jobs; int n_jobs; } mv_batch;

/* rows [r0, r1) for every input: each weight row is read from memory once and reused from L1 for the n inputs,
   which is what makes a batched prefill cheaper per token than decoding */
static void mv_rows(const mk_mv *j, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r++) {
    const uint16_t *row = j->w + r * j->ld;
    for (int b = 0; b < j->n; b++) j->out[b * j->out_stride + r] = mk_dot_bf16(row, j->x + b * j->x_stride, j->cols);
  }
}

static void mv_worker(void *arg, int i, int n) {
  const mv_batch *b = (const mv_batch *)arg;
  for (int k = 0; k < b->n_jobs; k++) {
    const mk_mv *j = &b->jobs[k];
    mv_rows(j, j->rows * i / n, j->rows * (i + 1) / n);
  }
}

/* Below this many multiply-adds a wake-up of the pool costs more than it saves. */
#define MK_PARALLEL_MIN_MACS (1 << 16)

static void matvecs(mk_pool *pool, const mk_mv *jobs, int n_jobs) {
  int64_t macs = 0;
  for (int k = 0; k < n_jobs; k++) macs += jobs[k].rows * jobs[k].cols * jobs[k].n;
  mv_batch b = {jobs, n_jobs};
  if (pool && mk_pool_size(pool) > 1 && macs >= MK_PARALLEL_MIN_MACS) {
    mk_pool_run(pool, mv_worker, &b);
  } else {
    mv_worker(&b, 0, 1);
  }
}

void mk_matvec(mk_pool *pool, float *out, const uint16_t *w, const float *x, int64_t rows, int64_t cols, int64_t ld) {
  mk_mv j = {out, w, x, rows, cols, ld, 1, cols, rows};
  matvecs(pool, &j, 1);
}

// ---------------------------------------------------------------------------------------------------------------------
// RoPE

/*
 * inv_freq[i] = 1 / theta^(2i/hd), then for rope_type llama3: frequencies whose wavelength is longer than
 * original_max / low_freq_factor are divided by factor, shorter than original_max / high_freq_factor are kept, and
 * the band between is interpolated smoothly. Every step is done in float32 in the order HF transformers does it
 * (its scalar / tensor is reciprocal(tensor) * scalar), so the angles equal HF's to the last bit in practice.
 */
void mk_rope_inv_freq(const mk_model_config *c, float *inv_freq) {
  const int half = c->head_dim / 2;
  for (int i = 0; i < half; i++) {
    float expo = (float)(2 * i) / (float)c->head_dim;
    float base_pow = (float)pow((double)c->rope_theta, (double)expo);
    inv_freq[i] = (1.0f / base_pow) * 1.0f;
  }
  if (c->rope_type != 1) return;
  const float factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
  const float old_ctx = (float)c->rope_original_max_position;
  const float low_freq_wavelen = old_ctx / lo;  /* python floats in HF, compared against a float32 tensor */
  const float high_freq_wavelen = old_ctx / hi;
  for (int i = 0; i < half; i++) {
    float f = inv_freq[i];
    float wavelen = (1.0f / f) * (float)(2.0 * M_PI);
    float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    float smooth = ((1.0f / wavelen) * old_ctx - lo) / (hi - lo);
    float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
    int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    inv_freq[i] = medium ? smoothed : scaled;
  }
}

/* head (hd) rotated at pos: element i pairs with i + hd/2 (HF rotate_half: out = x*cos + cat(-x2, x1)*sin) */
void mk_rope_apply(float *head, const float *inv_freq, int hd, int pos) {
  const int half = hd / 2;
  for (int i = 0; i < half; i++) {
    float angle = (float)pos * inv_freq[i]; /* float32 product, as HF's inv_freq @ position_ids */
    float c = (float)cos((double)angle), s = (float)sin((double)angle);
    float x1 = head[i], x2 = head[i + half];
    head[i] = x1 * c - x2 * s;
    head[i + half] = x2 * c + x1 * s;
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// build / free

static void *xcalloc(size_t n, size_t size, int *fail) {
  void *p = calloc(n ? n : 1, size);
  if (!p) *fail = 1;
  return p;
}

int mk_cpu_create(mk_engine *e) {
  const mk_model_config *c = &e->cfg;
  mk_cpu *s = (mk_cpu *)calloc(1, sizeof *s);
  if (!s) return mk_set_error(e, MK_ERR_OOM, "cpu engine: out of host memory");
  e->cpu = s;
  s->pool = mk_pool_create(e->params.n_threads);
  if (!s->pool) return mk_set_error(e, MK_ERR_OOM, "cpu engine: cannot start %d threads", e->params.n_threads);
  const size_t dim = (size_t)c->dim, hd = (size_t)c->head_dim, qdim = (size_t)c->n_heads * hd;
  const size_t kvdim = (size_t)c->n_kv_heads * hd, ctx = (size_t)e->params.ctx_len;
  int fail = 0;
  s->inv_freq = (float *)xcalloc(hd / 2, sizeof(float), &fail);
  if (!fail) mk_rope_inv_freq(c, s->inv_freq);
  if (e->params.cpu_mode == MK_CPU_INTERPRETER) {
    if (fail) return mk_set_error(e, MK_ERR_OOM, "cpu engine: out of host memory");
    return mk_interp_create(e);
  }
  const size_t B = MK_BATCH;
  s->x = (float *)xcalloc(B * dim, sizeof(float), &fail);
  s->xb = (float *)xcalloc(B * dim, sizeof(float), &fail);
  s->xb2 = (float *)xcalloc(B * dim, sizeof(float), &fail);
  s->q = (float *)xcalloc(B * qdim, sizeof(float), &fail);
  s->att_out = (float *)xcalloc(B * qdim, sizeof(float), &fail);
  s->att = (float *)xcalloc(B * (size_t)c->n_heads * ctx, sizeof(float), &fail);
  s->hb = (float *)xcalloc(B * (size_t)c->hidden_dim, sizeof(float), &fail);
  s->hb2 = (float *)xcalloc(B * (size_t)c->hidden_dim, sizeof(float), &fail);
  s->logits = (float *)xcalloc((size_t)c->vocab_size, sizeof(float), &fail);
  s->key_cache = (float *)xcalloc((size_t)c->n_layers * ctx * kvdim, sizeof(float), &fail);
  s->value_cache = (float *)xcalloc((size_t)c->n_layers * ctx * kvdim, sizeof(float), &fail);
  if (fail) {
    return mk_set_error(e, MK_ERR_OOM, "cpu engine: out of host memory for a KV cache of %d positions (%.1f MiB)",
                        e->params.ctx_len, 2.0 * c->n_layers * ctx * kvdim * 4 / 1048576.0);
  }
  return MK_OK;
}

void mk_cpu_free(mk_engine *e) {
  mk_cpu *s = (mk_cpu *)e->cpu;
  if (!s) return;
  if (s->interp) mk_interp_free(e);
  mk_pool_free(s->pool);
  free(s->inv_freq);
  free(s->x); free(s->xb); free(s->xb2); free(s->q); free(s->att_out); free(s->att);
  free(s->hb); free(s->hb2); free(s->logits); free(s->key_cache); free(s->value_cache);
  free(s);
  e->cpu = NULL;
}

// ---------------------------------------------------------------------------------------------------------------------
// attention: one job per head, split over the pool

typedef struct {
  const mk_engine *e;
  mk_cpu *s;
  int layer, pos0, n; /* tokens pos0 .. pos0+n-1; token b attends to positions [0, pos0 + b] */
} attn_job;

static void attn_heads(void *arg, int i, int n_workers) {
  const attn_job *j = (const attn_job *)arg;
  const mk_model_config *c = &j->e->cfg;
  mk_cpu *s = j->s;
  const int hd = c->head_dim, kvdim = c->n_kv_heads * hd, qdim = c->n_heads * hd, group = c->n_heads / c->n_kv_heads;
  const size_t ctx = (size_t)j->e->params.ctx_len;
  const float scale = 1.0f / sqrtf((float)hd);
  const float *kc = s->key_cache + (size_t)j->layer * ctx * kvdim;   /* (ctx, kvdim) of this layer */
  const float *vc = s->value_cache + (size_t)j->layer * ctx * kvdim; /* (ctx, kvdim) */
  const int items = j->n * c->n_heads;                               /* (token, head) pairs */
  for (int it = items * i / n_workers; it < items * (i + 1) / n_workers; it++) {
    const int b = it / c->n_heads, h = it % c->n_heads, pos = j->pos0 + b;
    const float *q = s->q + (size_t)b * qdim + (size_t)h * hd; /* (hd) */
    const int kvh = h / group;                             /* GQA: query heads [kvh*group, (kvh+1)*group) share kvh */
    float *att = s->att + (size_t)it * ctx;                /* (pos + 1) scores */
    float m = -INFINITY;
    for (int t = 0; t <= pos; t++) {
      const float *k = kc + (size_t)t * kvdim + (size_t)kvh * hd;
      float dot = 0.0f;
      for (int d = 0; d < hd; d++) dot += q[d] * k[d];
      att[t] = dot * scale;
      if (att[t] > m) m = att[t];
    }
    float sum = 0.0f;
    for (int t = 0; t <= pos; t++) { att[t] = expf(att[t] - m); sum += att[t]; }
    float *out = s->att_out + (size_t)b * qdim + (size_t)h * hd; /* (hd) */
    for (int d = 0; d < hd; d++) out[d] = 0.0f;
    for (int t = 0; t <= pos; t++) {
      const float *v = vc + (size_t)t * kvdim + (size_t)kvh * hd;
      const float a = att[t] / sum;
      for (int d = 0; d < hd; d++) out[d] += a * v[d];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// the forward pass of up to MK_BATCH consecutive tokens

/*
 * Run tokens[0..n) at positions pos0..pos0+n-1 (n <= MK_BATCH): writes their K and V into the cache and, when
 * want_logits, s->logits for the LAST token. Decoding is n = 1; a prefill goes MK_BATCH tokens at a time so that each
 * weight row is streamed from memory once per block instead of once per token. Returns MK_FINISH_CANCELLED when
 * stream->cancel was seen between layers (the cache at these positions is then partial, and pos must not advance).
 */
static int forward(mk_engine *e, const int32_t *tokens, int n, int pos0, int want_logits, const mk_stream *stream) {
  const mk_model_config *c = &e->cfg;
  mk_cpu *s = (mk_cpu *)e->cpu;
  const int dim = c->dim, hd = c->head_dim, kvdim = c->n_kv_heads * hd, qdim = c->n_heads * hd;
  const int hidden = c->hidden_dim;
  const size_t ctx = (size_t)e->params.ctx_len;

  /* x (n, dim) = embedding rows of the tokens */
  for (int b = 0; b < n; b++) {
    const uint16_t *emb = e->w.embed + (size_t)tokens[b] * dim;
    for (int i = 0; i < dim; i++) s->x[(size_t)b * dim + i] = mk_bf16_to_f32(emb[i]);
  }

  for (int l = 0; l < c->n_layers; l++) {
    if (stream && mk_cancelled(stream)) return MK_FINISH_CANCELLED;
    const struct mk_layer_weights *w = &e->w.layers[l];
    float *kc = s->key_cache + ((size_t)l * ctx + pos0) * kvdim;   /* (n, kvdim) at pos0.. */
    float *vc = s->value_cache + ((size_t)l * ctx + pos0) * kvdim; /* (n, kvdim) */

    /* attention block: xb = rmsnorm(x); q, k, v = xb @ Wq^T, Wk^T, Wv^T; RoPE on q and k */
    for (int b = 0; b < n; b++) mk_rmsnorm(s->xb + (size_t)b * dim, s->x + (size_t)b * dim, w->attn_norm, dim, c->rms_eps);
    mk_mv qkv[3] = {{s->q, w->wq, s->xb, qdim, dim, dim, n, dim, qdim},
                    {kc, w->wk, s->xb, kvdim, dim, dim, n, dim, kvdim},
                    {vc, w->wv, s->xb, kvdim, dim, dim, n, dim, kvdim}};
    matvecs(s->pool, qkv, 3);
    for (int b = 0; b < n; b++) {
      for (int h = 0; h < c->n_heads; h++) mk_rope_apply(s->q + (size_t)b * qdim + (size_t)h * hd, s->inv_freq, hd, pos0 + b);
      for (int h = 0; h < c->n_kv_heads; h++) mk_rope_apply(kc + (size_t)b * kvdim + (size_t)h * hd, s->inv_freq, hd, pos0 + b);
    }

    /* att_out (n, qdim) = softmax(q k^T / sqrt(hd)) v, token b over positions [0, pos0 + b], per head */
    attn_job aj = {e, s, l, pos0, n};
    if ((int64_t)(pos0 + n) * qdim * n >= MK_PARALLEL_MIN_MACS / 4) mk_pool_run(s->pool, attn_heads, &aj);
    else attn_heads(&aj, 0, 1);

    /* x += att_out @ Wo^T */
    mk_mv o = {s->xb2, w->wo, s->att_out, dim, qdim, qdim, n, qdim, dim};
    matvecs(s->pool, &o, 1);
    for (size_t i = 0; i < (size_t)n * dim; i++) s->x[i] += s->xb2[i];

    /* MLP block: x += (silu(xb @ Wgate^T) * (xb @ Wup^T)) @ Wdown^T with xb = rmsnorm(x) */
    for (int b = 0; b < n; b++) mk_rmsnorm(s->xb + (size_t)b * dim, s->x + (size_t)b * dim, w->ffn_norm, dim, c->rms_eps);
    mk_mv gu[2] = {{s->hb, w->w_gate, s->xb, hidden, dim, dim, n, dim, hidden},
                   {s->hb2, w->w_up, s->xb, hidden, dim, dim, n, dim, hidden}};
    matvecs(s->pool, gu, 2);
    for (size_t i = 0; i < (size_t)n * hidden; i++) {
      float g = s->hb[i];
      s->hb[i] = g / (1.0f + expf(-g)) * s->hb2[i];
    }
    mk_mv down = {s->xb2, w->w_down, s->hb, dim, hidden, hidden, n, hidden, dim};
    matvecs(s->pool, &down, 1);
    for (size_t i = 0; i < (size_t)n * dim; i++) s->x[i] += s->xb2[i];
  }

  if (want_logits) {
    /* logits (vocab) = rmsnorm(x[last]) @ Wlm^T  (Wlm = embedding when tied) */
    mk_rmsnorm(s->xb, s->x + (size_t)(n - 1) * dim, e->w.final_norm, dim, c->rms_eps);
    mk_matvec(s->pool, s->logits, e->w.lm_head, s->xb, c->vocab_size, dim, dim);
  }
  return MK_OK;
}

/* tokens[0..n) into the cache from e->pos, MK_BATCH at a time; logits of the last when want_logits. Stops early on
   cancel (returns MK_FINISH_CANCELLED; e->pos counts the blocks that completed). */
static int run_tokens(mk_engine *e, const int32_t *tokens, int n, int want_logits, mk_stream *stream) {
  for (int i = 0; i < n; i += MK_BATCH) {
    const int nb = n - i < MK_BATCH ? n - i : MK_BATCH;
    if (forward(e, tokens + i, nb, e->pos, want_logits && i + nb == n, stream) == MK_FINISH_CANCELLED)
      return MK_FINISH_CANCELLED;
    e->pos += nb;
    if (stream) stream->n_prefill += nb;
  }
  return MK_OK;
}

// ---------------------------------------------------------------------------------------------------------------------
// prefill and generate

int mk_cpu_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits) {
  if (e->params.cpu_mode == MK_CPU_INTERPRETER) return mk_interp_prefill(e, tokens, n, logits);
  mk_cpu *s = (mk_cpu *)e->cpu;
  run_tokens(e, tokens, n, logits != NULL, NULL);
  if (logits) memcpy(logits, s->logits, (size_t)e->cfg.vocab_size * sizeof(float));
  return MK_OK;
}

int mk_cpu_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                    mk_stream *stream, const mk_stream_arrays *arrays) {
  if (e->params.cpu_mode == MK_CPU_INTERPRETER) return mk_interp_generate(e, prompt, n_prompt, sp, stream, arrays);
  mk_cpu *s = (mk_cpu *)e->cpu;
  const double t0 = mk_now_us();
  mk_sampler smp;
  if (mk_sampler_init(&smp, sp, e->cfg.vocab_size) != 0) return mk_set_error(e, MK_ERR_OOM, "sampler: out of memory");
  int32_t top_ids[MK_MAX_LOGPROBS];
  float top_lp[MK_MAX_LOGPROBS];

  /* prompt: every token enters the cache; only the last one's logits are needed. Cancel is honoured between
     layers, so a long prompt stops within one layer's time of one block. */
  int finish = run_tokens(e, prompt, n_prompt, 1, stream) == MK_FINISH_CANCELLED ? MK_FINISH_CANCELLED : 0;
  stream->prefill_us = mk_now_us() - t0;

  double t_first = 0.0;
  for (int32_t k = 0; !finish; k++) {
    float lp = 0.0f;
    int32_t tok = mk_sample(&smp, s->logits, NAN, &lp, top_ids, top_lp);
    double t = mk_now_us() - t0;
    mk_publish_token(stream, arrays, sp->logprobs, k, tok, t, lp, top_ids, top_lp);
    if (k == 0) { stream->prefill_us = t; t_first = t; }
    stream->decode_us = t - t_first;

    if (mk_is_stop(sp, tok)) finish = MK_FINISH_STOP;
    else if (k + 1 >= sp->max_tokens) finish = MK_FINISH_LENGTH;
    else if (e->pos >= e->params.ctx_len) finish = MK_FINISH_CONTEXT; /* no room to run tok */
    else if (mk_cancelled(stream)) finish = MK_FINISH_CANCELLED;
    if (finish) break;

    if (forward(e, &tok, 1, e->pos, 1, stream) == MK_FINISH_CANCELLED) finish = MK_FINISH_CANCELLED;
    else e->pos++;
  }
  mk_sampler_free(&smp);
  stream->position = e->pos;
  __atomic_store_n(&stream->finish, finish, __ATOMIC_RELEASE);
  return finish;
}

// ---------------------------------------------------------------------------------------------------------------------
// read bandwidth: every thread sums its slice of a large buffer; the best of a few passes

typedef struct { const float *buf; size_t n; double *partial; } bw_job;

static void bw_worker(void *arg, int i, int n) {
  bw_job *j = (bw_job *)arg;
  size_t a = j->n * (size_t)i / (size_t)n, b = j->n * (size_t)(i + 1) / (size_t)n;
  float acc[16] = {0};
  for (size_t k = a; k + 16 <= b; k += 16)
    for (int l = 0; l < 16; l++) acc[l] += j->buf[k + l];
  double s = 0;
  for (int l = 0; l < 16; l++) s += acc[l];
  j->partial[i] = s;
}

int mk_cpu_read_bandwidth(mk_engine *e, double *gbps) {
  mk_cpu *s = (mk_cpu *)e->cpu;
  const size_t n = (size_t)64 << 20; /* 64 Mi floats = 256 MiB: far beyond any last-level cache */
  float *buf = (float *)malloc(n * sizeof(float));
  double *partial = (double *)calloc((size_t)mk_pool_size(s->pool), sizeof(double));
  if (!buf || !partial) {
    free(buf); free(partial);
    return mk_set_error(e, MK_ERR_OOM, "read bandwidth: cannot allocate a 256 MiB buffer");
  }
  for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
  bw_job j = {buf, n, partial};
  double best = 1e30;
  for (int rep = 0; rep < 4; rep++) {
    double t0 = mk_now_us();
    mk_pool_run(s->pool, bw_worker, &j);
    double dt = mk_now_us() - t0;
    if (dt < best) best = dt;
  }
  volatile double sink = partial[0];
  (void)sink;
  *gbps = (double)(n * sizeof(float)) / (best * 1e-6) / 1e9;
  free(buf);
  free(partial);
  return MK_OK;
}
