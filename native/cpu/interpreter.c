/*
 * interpreter.c — the CPU twin of the megakernel: runs the installed instruction program (native/program.h) over CPU
 * buffers, one instruction at a time, with the same counters, the same buffers (one of each, shared by all tokens)
 * and the same bf16 KV cache as the GPU. Its purpose is to test the program, not to be fast:
 *
 *  - every opcode is executed exactly as program.h specifies it (split attention with partials and a last-arriver
 *    merge, DOWN accumulating chunk by chunk into the resid[2L+2] that OPROJ initialised, LMHEAD partials, SAMPLE);
 *  - queues advance independently across tokens, as on the GPU: a queue may run into token t+1 while others are still
 *    in token t, as far as the counters allow (they are never reset inside a launch), so a missing dependency, within
 *    a token or across tokens, shows up as wrong logits or as an explicit error;
 *  - which ready queue runs next is "the first one" (interleave_seed == 0) or a uniformly random one (a seed), so
 *    tests can run the same program in many valid interleavings; no ready queue before the end is a deadlock,
 *    reported with the instruction every queue is stuck on.
 *
 * A launch runs the prompt tokens and then the generated ones: step t processes tokens[t] at position start + t;
 * SAMPLE of step t chooses tokens[t + 1] once t + 1 is past the prompt, and decides when the launch stops.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

// ---------------------------------------------------------------------------------------------------------------------
// state

typedef struct lm_part {
  float max;       /* largest logit of the part's rows */
  int32_t argmax;  /* its id (lowest id on ties) */
  double sumexp;   /* sum of exp(logit - max) over the rows */
  int32_t step;    /* step that wrote it: SAMPLE checks every part is from its own step */
} lm_part;

struct mk_interp {
  float **resid;       /* [2*n_layers + 1] of (dim); resid[0] unused (x_in(0) is the embedding row) */
  float *q;            /* (n_heads*hd) RoPE applied */
  uint16_t *kcache;    /* (n_layers, n_kv, ctx_len, hd) bf16, RoPE applied */
  uint16_t *vcache;    /* (n_layers, n_kv, ctx_len, hd) bf16 */
  float *attn;         /* (n_heads*hd) */
  float *h;            /* (hidden) */
  float *logits;       /* (vocab) */
  float *xin;          /* (dim) scratch: x_in(0) widened from bf16 */
  float *xn;           /* (dim) scratch: a normed input */
  float *rows;         /* (max(dim, hidden, 1024)) scratch matvec output */
  uint64_t rng;        /* interleaving choice, seeded from params.interleave_seed */
};

static float *fz(size_t n, int *fail) {
  float *p = (float *)calloc(n ? n : 1, sizeof(float));
  if (!p) *fail = 1;
  return p;
}

int mk_interp_create(mk_engine *e) {
  const mk_model_config *c = &e->cfg;
  mk_cpu *cpu = (mk_cpu *)e->cpu;
  mk_interp *s = (mk_interp *)calloc(1, sizeof *s);
  if (!s) return mk_set_error(e, MK_ERR_OOM, "interpreter: out of host memory");
  cpu->interp = s;
  const size_t dim = (size_t)c->dim, hd = (size_t)c->head_dim, L = (size_t)c->n_layers;
  const size_t kv = L * (size_t)c->n_kv_heads * (size_t)e->params.ctx_len * hd;
  int fail = 0;
  s->resid = (float **)calloc(2 * L + 1, sizeof(float *));
  if (!s->resid) fail = 1;
  for (size_t k = 1; !fail && k <= 2 * L; k++) s->resid[k] = fz(dim, &fail);
  s->q = fz((size_t)c->n_heads * hd, &fail);
  s->attn = fz((size_t)c->n_heads * hd, &fail);
  s->h = fz((size_t)c->hidden_dim, &fail);
  s->logits = fz((size_t)c->vocab_size, &fail);
  s->xin = fz(dim, &fail);
  s->xn = fz(dim, &fail);
  size_t rows = dim > (size_t)c->hidden_dim ? dim : (size_t)c->hidden_dim;
  s->rows = fz(rows > 1024 ? rows : 1024, &fail);
  s->kcache = (uint16_t *)calloc(kv ? kv : 1, sizeof(uint16_t));
  s->vcache = (uint16_t *)calloc(kv ? kv : 1, sizeof(uint16_t));
  if (!s->kcache || !s->vcache) fail = 1;
  s->rng = 0x6d6b63686174ull ^ ((uint64_t)e->params.interleave_seed * 0x9E3779B97F4A7C15ull);
  if (fail) return mk_set_error(e, MK_ERR_OOM, "interpreter: out of host memory for a bf16 KV cache of %d positions",
                                e->params.ctx_len);
  return MK_OK;
}

void mk_interp_free(mk_engine *e) {
  mk_cpu *cpu = (mk_cpu *)e->cpu;
  mk_interp *s = cpu->interp;
  if (!s) return;
  if (s->resid)
    for (int k = 1; k <= 2 * e->cfg.n_layers; k++) free(s->resid[k]);
  free(s->resid);
  free(s->q); free(s->attn); free(s->h); free(s->logits); free(s->xin); free(s->xn); free(s->rows);
  free(s->kcache); free(s->vcache);
  free(s);
  cpu->interp = NULL;
}

// ---------------------------------------------------------------------------------------------------------------------
// one launch

typedef struct launch {
  mk_engine *e;
  mk_interp *s;
  mk_pool *pool;
  mk_program_view p;
  int32_t start;           /* position of step 0 */
  int32_t n_prompt;
  int32_t steps_max;       /* steps the launch may run at most */
  int32_t *tokens;         /* [steps_max + 1] */
  int64_t *counters;       /* [n_counters] */
  int32_t *arrivals;       /* [n_layers * n_kv] ATTN splits arrived, over the whole launch */
  float *attn_part;        /* (n_heads, S, hd + 2): o[hd], m, l */
  lm_part *parts;          /* [n_lm_parts] */
  /* generation (sp == NULL: a prefill, which stops after the last prompt step) */
  const mk_sampling_params *sp;
  mk_sampler *smp;
  mk_stream *stream;
  const mk_stream_arrays *arrays;
  double t0, t_first;
  int32_t n_generated;
  int finish;              /* set by SAMPLE when the launch ends: a finish status, or MK_OK for a prefill */
  int done;
} launch;

static int sample_err(launch *g, int t, const char *what, int slot, int other) {
  return mk_set_error(g->e, MK_ERR_INTERNAL,
                      "interpreter: SAMPLE of step %d %s %d (written at step %d): a missing dependency in the program",
                      t, what, slot, other);
}

/* x_in(L) of step t: the embedding row of tokens[t] for layer 0, else resid[2L] */
static const float *x_in(launch *g, int layer, int t) {
  if (layer > 0) return g->s->resid[2 * layer];
  const int dim = g->e->cfg.dim;
  const uint16_t *row = g->e->w.embed + (size_t)g->tokens[t] * dim;
  for (int i = 0; i < dim; i++) g->s->xin[i] = mk_bf16_to_f32(row[i]);
  return g->s->xin;
}

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

// ---------------------------------------------------------------------------------------------------------------------
// the opcodes, as program.h specifies them

static void op_qkv(launch *g, const int32_t *in, int t) {
  mk_engine *e = g->e;
  const mk_model_config *c = &e->cfg;
  mk_interp *s = g->s;
  const int layer = in[MK_I_LAYER], hd = c->head_dim, half = hd / 2, pos = g->start + t;
  const struct mk_layer_weights *w = &e->w.layers[layer];
  const float *inv_freq = ((mk_cpu *)e->cpu)->inv_freq;
  mk_rmsnorm(s->xn, x_in(g, layer, t), w->attn_norm, c->dim, c->rms_eps);
  for (int p = in[MK_I_A0]; p < in[MK_I_A0] + in[MK_I_A1]; p++) {
    const int head = p / half, i = p % half; /* head over the fused [q heads; k heads; v heads] */
    const uint16_t *W;
    int local; /* head index within its matrix */
    if (head < c->n_heads) { W = w->wq; local = head; }
    else if (head < c->n_heads + c->n_kv_heads) { W = w->wk; local = head - c->n_heads; }
    else { W = w->wv; local = head - c->n_heads - c->n_kv_heads; }
    float x1 = mk_dot_bf16(W + ((size_t)local * hd + i) * c->dim, s->xn, c->dim);
    float x2 = mk_dot_bf16(W + ((size_t)local * hd + i + half) * c->dim, s->xn, c->dim);
    if (W != w->wv) { /* RoPE on q and k: the pair (i, i + hd/2) rotates by pos * inv_freq[i] */
      float pair[2] = {x1, x2};
      float angle = (float)pos * inv_freq[i];
      float cs = (float)cos((double)angle), sn = (float)sin((double)angle);
      x1 = pair[0] * cs - pair[1] * sn;
      x2 = pair[1] * cs + pair[0] * sn;
    }
    if (W == w->wq) {
      s->q[(size_t)local * hd + i] = x1;
      s->q[(size_t)local * hd + i + half] = x2;
    } else {
      uint16_t *cache = W == w->wk ? s->kcache : s->vcache;
      uint16_t *dst = cache + (((size_t)layer * c->n_kv_heads + local) * e->params.ctx_len + pos) * hd;
      dst[i] = mk_f32_to_bf16(x1);
      dst[i + half] = mk_f32_to_bf16(x2);
    }
  }
}

/* returns the counter increments: 0 unless this split merged its kv head, then 1 or, when the program counts q heads
   (header ATTN_PER_HEAD), the group size; < 0 on a detected hazard */
static int op_attn(launch *g, const int32_t *in, int t) {
  mk_engine *e = g->e;
  const mk_model_config *c = &e->cfg;
  mk_interp *s = g->s;
  const int layer = in[MK_I_LAYER], kvh = in[MK_I_A0], split = in[MK_I_A1], S = g->p.attn_splits;
  const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads, pos = g->start + t;
  /* the splits in use grow with the context (program.h MK_OP_ATTN) */
  const int n = pos + 1, want = (n + MK_ATTN_SPLIT_POSITIONS - 1) / MK_ATTN_SPLIT_POSITIONS, S_used = want < S ? want : S;
  const int chunk = (n + S_used - 1) / S_used, lo = split * chunk < n ? split * chunk : n;
  const int hi = lo + chunk < n ? lo + chunk : n;
  const float scale = 1.0f / sqrtf((float)hd);
  const size_t ctx = (size_t)e->params.ctx_len;
  const uint16_t *kc = s->kcache + ((size_t)layer * c->n_kv_heads + kvh) * ctx * hd; /* (ctx, hd) */
  const uint16_t *vc = s->vcache + ((size_t)layer * c->n_kv_heads + kvh) * ctx * hd; /* (ctx, hd) */
  int32_t *arrived = &g->arrivals[(size_t)layer * c->n_kv_heads + kvh];
  if (*arrived < S * t || *arrived >= S * (t + 1))
    return mk_set_error(e, MK_ERR_INTERNAL,
                        "interpreter: ATTN layer %d kv head %d split %d of step %d ran when %d splits had arrived "
                        "(expected %d..%d): a missing dependency in the program",
                        layer, kvh, split, t, *arrived, S * t, S * (t + 1) - 1);
  for (int j = 0; j < group; j++) {
    const int h = kvh * group + j;
    const float *q = s->q + (size_t)h * hd;
    float *part = g->attn_part + ((size_t)h * S + split) * (hd + 2); /* o[hd], m, l */
    float m = -INFINITY, l = 0.0f;
    for (int d = 0; d < hd; d++) part[d] = 0.0f;
    for (int k = lo; k < hi; k++) { /* online softmax over the split's positions */
      const uint16_t *key = kc + (size_t)k * hd, *val = vc + (size_t)k * hd;
      float dot = 0.0f;
      for (int d = 0; d < hd; d++) dot += q[d] * mk_bf16_to_f32(key[d]);
      float score = dot * scale;
      if (score > m) {
        float r = expf(m - score); /* rescale what was accumulated against the old max */
        l *= r;
        for (int d = 0; d < hd; d++) part[d] *= r;
        m = score;
      }
      float p = expf(score - m);
      l += p;
      for (int d = 0; d < hd; d++) part[d] += p * mk_bf16_to_f32(val[d]);
    }
    part[hd] = m;
    part[hd + 1] = l;
  }
  if (++*arrived != S * (t + 1)) return 0;
  /* the last split to arrive merges the S partials of each head of the group into attn */
  for (int j = 0; j < group; j++) {
    const int h = kvh * group + j;
    const float *parts = g->attn_part + (size_t)h * S * (hd + 2);
    float M = -INFINITY;
    for (int k = 0; k < S; k++) if (parts[k * (hd + 2) + hd] > M) M = parts[k * (hd + 2) + hd];
    float *out = s->attn + (size_t)h * hd;
    float L = 0.0f;
    for (int d = 0; d < hd; d++) out[d] = 0.0f;
    for (int k = 0; k < S; k++) {
      const float *pk = parts + (size_t)k * (hd + 2);
      if (pk[hd] == -INFINITY) continue; /* empty split */
      float r = expf(pk[hd] - M);
      L += pk[hd + 1] * r;
      for (int d = 0; d < hd; d++) out[d] += pk[d] * r;
    }
    for (int d = 0; d < hd; d++) out[d] /= L;
  }
  return g->p.attn_per_head ? group : 1;
}

static void op_oproj(launch *g, const int32_t *in, int t) {
  const mk_model_config *c = &g->e->cfg;
  mk_interp *s = g->s;
  const int layer = in[MK_I_LAYER], r0 = in[MK_I_A0], n = in[MK_I_A1], qdim = c->n_heads * c->head_dim;
  const float *x = x_in(g, layer, t);
  mk_matvec(g->pool, s->rows, g->e->w.layers[layer].wo + (size_t)r0 * qdim, s->attn, n, qdim, qdim);
  for (int r = 0; r < n; r++) {
    float v = x[r0 + r] + s->rows[r];
    s->resid[2 * layer + 1][r0 + r] = v;
    s->resid[2 * layer + 2][r0 + r] = v; /* the MLP accumulator DOWN adds into */
  }
}

static void op_gateup(launch *g, const int32_t *in) {
  const mk_model_config *c = &g->e->cfg;
  mk_interp *s = g->s;
  const int layer = in[MK_I_LAYER], r0 = in[MK_I_A0], n = in[MK_I_A1];
  const struct mk_layer_weights *w = &g->e->w.layers[layer];
  mk_rmsnorm(s->xn, s->resid[2 * layer + 1], w->ffn_norm, c->dim, c->rms_eps);
  for (int r = r0; r < r0 + n; r++) {
    float gv = mk_dot_bf16(w->w_gate + (size_t)r * c->dim, s->xn, c->dim);
    float uv = mk_dot_bf16(w->w_up + (size_t)r * c->dim, s->xn, c->dim);
    s->h[r] = silu(gv) * uv;
  }
}

static void op_down(launch *g, const int32_t *in) {
  const mk_model_config *c = &g->e->cfg;
  mk_interp *s = g->s;
  const int layer = in[MK_I_LAYER], r0 = in[MK_I_A0], n = in[MK_I_A1], C = g->p.down_chunk;
  const int col0 = in[MK_I_A2] * C, cols = col0 + C <= c->hidden_dim ? C : c->hidden_dim - col0;
  mk_matvec(g->pool, s->rows, g->e->w.layers[layer].w_down + (size_t)r0 * c->hidden_dim + col0, s->h + col0, n, cols,
            c->hidden_dim);
  for (int r = 0; r < n; r++) s->resid[2 * layer + 2][r0 + r] += s->rows[r];
}

/* MLP: GATEUP of rows [r0, r0+n) and the down projection of exactly those columns of h (program.h). */
static void op_mlp(launch *g, const int32_t *in) {
  const mk_model_config *c = &g->e->cfg;
  mk_interp *s = g->s;
  const int layer = in[MK_I_LAYER], r0 = in[MK_I_A0], n = in[MK_I_A1];
  op_gateup(g, in);
  const uint16_t *wd = g->e->w.layers[layer].w_down; /* (dim, hidden) */
  float *acc = s->resid[2 * layer + 2];
  for (int j = 0; j < c->dim; j++) acc[j] += mk_dot_bf16(wd + (size_t)j * c->hidden_dim + r0, s->h + r0, n);
}

static void op_lmhead(launch *g, const int32_t *in, int t) {
  const mk_model_config *c = &g->e->cfg;
  mk_interp *s = g->s;
  const int r0 = in[MK_I_A0], n = in[MK_I_A1];
  lm_part *part = &g->parts[in[MK_I_A2]];
  part->step = t;
  if (t < g->n_prompt - 1) return; /* a prompt step before the last: nobody reads these logits */
  mk_rmsnorm(s->xn, s->resid[2 * c->n_layers], g->e->w.final_norm, c->dim, c->rms_eps);
  float *logits = s->logits + r0;
  mk_matvec(g->pool, logits, g->e->w.lm_head + (size_t)r0 * c->dim, s->xn, n, c->dim, c->dim);
  part->max = -INFINITY;
  part->argmax = r0;
  for (int r = 0; r < n; r++)
    if (logits[r] > part->max) { part->max = logits[r]; part->argmax = r0 + r; }
  double sum = 0.0;
  for (int r = 0; r < n; r++) sum += exp((double)logits[r] - part->max);
  part->sumexp = sum;
}

/* merges the parts and chooses the next token; sets g->done when the launch ends. < 0 on error. */
static int op_sample(launch *g, int t) {
  mk_engine *e = g->e;
  for (int k = 0; k < g->p.n_lm_parts; k++)
    if (g->parts[k].step != t) return sample_err(g, t, "merged LMHEAD part", k, g->parts[k].step);
  const int32_t pos_next = g->start + t + 1; /* tokens in the cache once this step is done */
  if (t < g->n_prompt - 1) {                 /* still in the prompt: the next token is known */
    if (g->stream) {
      g->stream->n_prefill = t + 1;
      if (mk_cancelled(g->stream)) { g->finish = MK_FINISH_CANCELLED; g->done = 1; }
    }
    return MK_OK;
  }
  if (!g->sp) { g->finish = MK_OK; g->done = 1; return MK_OK; } /* prefill: the logits of the last token are ready */

  /* merge the parts: global max and log-sum-exp, for the raw log-probabilities */
  float M = -INFINITY;
  for (int k = 0; k < g->p.n_lm_parts; k++) if (g->parts[k].max > M) M = g->parts[k].max;
  double sum = 0.0;
  for (int k = 0; k < g->p.n_lm_parts; k++) sum += g->parts[k].sumexp * exp((double)g->parts[k].max - M);
  const double lse = (double)M + log(sum);

  int32_t top_ids[MK_MAX_LOGPROBS];
  float top_lp[MK_MAX_LOGPROBS], lp = 0.0f;
  const int32_t k = g->n_generated;
  int32_t tok = mk_sample(g->smp, g->s->logits, lse, &lp, top_ids, top_lp);
  double now = mk_now_us() - g->t0;
  if (k == 0) {
    g->stream->n_prefill = g->n_prompt;
    g->stream->prefill_us = now;
    g->t_first = now;
  }
  mk_publish_token(g->stream, g->arrays, g->sp->logprobs, k, tok, now, lp, top_ids, top_lp);
  g->stream->decode_us = now - g->t_first;
  g->n_generated = k + 1;
  int finish = 0;
  if (mk_is_stop(g->sp, tok)) finish = MK_FINISH_STOP;
  else if (k + 1 >= g->sp->max_tokens) finish = MK_FINISH_LENGTH;
  else if (pos_next >= e->params.ctx_len) finish = MK_FINISH_CONTEXT;
  else if (mk_cancelled(g->stream)) finish = MK_FINISH_CANCELLED;
  if (finish) { g->finish = finish; g->done = 1; return MK_OK; }
  if (t + 1 >= g->steps_max)
    return mk_set_error(e, MK_ERR_INTERNAL, "interpreter: step %d ran past the launch's %d steps", t + 1, g->steps_max);
  g->tokens[t + 1] = tok;
  return MK_OK;
}

// ---------------------------------------------------------------------------------------------------------------------
// the scheduler of queues: counters, readiness, interleaving

static int64_t wait_target(const launch *g, const int32_t *in, int t) {
  const int c = in[MK_I_WAIT];
  if (c < 0) return 0;
  return (int64_t)g->p.per_token[c] * (t + in[MK_I_WAIT_TOKEN_OFFSET]) + in[MK_I_WAIT_COUNT];
}

static int is_ready(const launch *g, const int32_t *in, int t) {
  int64_t need = wait_target(g, in, t);
  return need <= 0 || g->counters[in[MK_I_WAIT]] >= need;
}

static uint64_t next_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int report_deadlock(launch *g, const int32_t *q_step, const int32_t *q_idx) {
  char msg[MK_ERROR_CAP];
  int len = snprintf(msg, sizeof msg, "interpreter: deadlock, no queue can run:");
  for (int q = 0; q < g->p.n_queues && len < (int)sizeof msg - 1; q++) {
    const int n = g->p.queue_start[q + 1] - g->p.queue_start[q];
    if (n == 0 || q_step[q] >= g->steps_max) continue;
    const int i = g->p.queue_start[q] + q_idx[q];
    const int32_t *in = g->p.instr + (size_t)i * MK_INSTR_WORDS;
    len += snprintf(msg + len, sizeof msg - (size_t)len, " queue %d step %d instr %d (%s L%d) waits counter %d >= %lld (has %lld);",
                    q, q_step[q], i, mk_op_name(in[MK_I_OP]), in[MK_I_LAYER], in[MK_I_WAIT],
                    (long long)wait_target(g, in, q_step[q]), (long long)g->counters[in[MK_I_WAIT]]);
  }
  return mk_set_error(g->e, MK_ERR_INTERNAL, "%s", msg);
}

static int run_launch(launch *g) {
  const mk_program_view *p = &g->p;
  const int nq = p->n_queues;
  int32_t *q_step = (int32_t *)calloc((size_t)nq, sizeof(int32_t));
  int32_t *q_idx = (int32_t *)calloc((size_t)nq, sizeof(int32_t));
  int32_t *ready = (int32_t *)calloc((size_t)nq, sizeof(int32_t));
  if (!q_step || !q_idx || !ready) {
    free(q_step); free(q_idx); free(ready);
    return mk_set_error(g->e, MK_ERR_OOM, "interpreter: out of host memory");
  }
  const int seeded = g->e->params.interleave_seed != 0;
  int rc = MK_OK;
  while (!g->done) {
    int n_ready = 0;
    for (int q = 0; q < nq; q++) {
      const int n = p->queue_start[q + 1] - p->queue_start[q];
      if (n == 0 || q_step[q] >= g->steps_max) continue;
      const int32_t *in = p->instr + (size_t)(p->queue_start[q] + q_idx[q]) * MK_INSTR_WORDS;
      if (is_ready(g, in, q_step[q])) {
        ready[n_ready++] = q;
        if (!seeded) break; /* in order: the first queue that can run */
      }
    }
    if (n_ready == 0) { rc = report_deadlock(g, q_step, q_idx); break; }
    const int q = seeded ? ready[next_rand(&g->s->rng) % (uint64_t)n_ready] : ready[0];
    const int t = q_step[q];
    const int32_t *in = p->instr + (size_t)(p->queue_start[q] + q_idx[q]) * MK_INSTR_WORDS;
    int signal = 1;
    switch (in[MK_I_OP]) {
      case MK_OP_NOOP: break;
      case MK_OP_QKV: op_qkv(g, in, t); break;
      case MK_OP_ATTN: signal = op_attn(g, in, t); break;
      case MK_OP_OPROJ: op_oproj(g, in, t); break;
      case MK_OP_GATEUP: op_gateup(g, in); break;
      case MK_OP_DOWN: op_down(g, in); break;
      case MK_OP_MLP: op_mlp(g, in); break;
      case MK_OP_LMHEAD: op_lmhead(g, in, t); break;
      case MK_OP_SAMPLE: signal = op_sample(g, t) == MK_OK ? 1 : -1; break;
    }
    if (signal < 0) { rc = MK_ERR_INTERNAL; break; }
    if (signal && in[MK_I_SIGNAL] >= 0) g->counters[in[MK_I_SIGNAL]] += signal;
    if (++q_idx[q] == p->queue_start[q + 1] - p->queue_start[q]) { q_idx[q] = 0; q_step[q]++; }
  }
  free(q_step); free(q_idx); free(ready);
  return rc;
}

/* set up a launch of n_prompt prompt tokens (+ generation when sp != NULL), run it, tear it down */
static int launch_program(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                          mk_stream *stream, const mk_stream_arrays *arrays, float *logits_out) {
  const mk_model_config *c = &e->cfg;
  launch g;
  memset(&g, 0, sizeof g);
  g.e = e;
  g.s = ((mk_cpu *)e->cpu)->interp;
  g.pool = ((mk_cpu *)e->cpu)->pool;
  g.t0 = mk_now_us();
  int rc = mk_program_parse(e, e->program, e->program_words, &g.p);
  if (rc != MK_OK) return rc;
  g.start = e->pos;
  g.n_prompt = n_prompt;
  /* the last possible step: generated token max_tokens-1 is chosen at step n_prompt-1+max_tokens-1, and no step may
     run at a position past the context */
  int64_t steps = sp ? (int64_t)n_prompt + sp->max_tokens - 1 : n_prompt;
  if (steps > (int64_t)e->params.ctx_len - g.start) steps = (int64_t)e->params.ctx_len - g.start;
  g.steps_max = (int32_t)steps;
  g.sp = sp;
  g.stream = stream;
  g.arrays = arrays;
  mk_sampler smp;
  memset(&smp, 0, sizeof smp);
  g.smp = &smp;
  g.tokens = (int32_t *)calloc((size_t)g.steps_max + 1, sizeof(int32_t));
  g.counters = (int64_t *)calloc((size_t)g.p.n_counters + 1, sizeof(int64_t));
  g.arrivals = (int32_t *)calloc((size_t)c->n_layers * c->n_kv_heads, sizeof(int32_t));
  g.attn_part = (float *)calloc((size_t)c->n_heads * g.p.attn_splits * (c->head_dim + 2), sizeof(float));
  g.parts = (lm_part *)calloc((size_t)g.p.n_lm_parts, sizeof(lm_part));
  if (!g.tokens || !g.counters || !g.arrivals || !g.attn_part || !g.parts ||
      (sp && mk_sampler_init(&smp, sp, c->vocab_size) != 0)) {
    rc = mk_set_error(e, MK_ERR_OOM, "interpreter: out of host memory for a launch of %d steps", g.steps_max);
  } else {
    for (int k = 0; k < g.p.n_lm_parts; k++) g.parts[k].step = -1;
    memcpy(g.tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    rc = run_launch(&g);
  }
  if (rc == MK_OK) {
    /* the steps that ran to their SAMPLE are in the cache: the prompt and all generated tokens but the last */
    int32_t done_steps = sp ? (g.n_generated > 0 ? n_prompt + g.n_generated - 1
                                                 : (stream ? stream->n_prefill : 0))
                            : n_prompt;
    if (sp && g.finish == MK_FINISH_CANCELLED && g.n_generated == 0) done_steps = stream->n_prefill;
    e->pos = g.start + done_steps;
    if (logits_out) memcpy(logits_out, g.s->logits, (size_t)c->vocab_size * sizeof(float));
    rc = sp ? g.finish : MK_OK;
  }
  if (stream) {
    stream->position = e->pos;
    if (sp) __atomic_store_n(&stream->finish, rc > 0 ? rc : 0, __ATOMIC_RELEASE);
  }
  mk_sampler_free(&smp);
  free(g.tokens); free(g.counters); free(g.arrivals); free(g.attn_part); free(g.parts);
  return rc;
}

int mk_interp_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits) {
  return launch_program(e, tokens, n, NULL, NULL, NULL, logits);
}

int mk_interp_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                       mk_stream *stream, const mk_stream_arrays *arrays) {
  return launch_program(e, prompt, n_prompt, sp, stream, arrays, NULL);
}
