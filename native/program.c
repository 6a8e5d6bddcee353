/*
 * program.c — validation of an instruction program (native/program.h) against the engine's model config, shared by
 * the CPU interpreter and the CUDA backend: a program that passes here cannot make either read or write outside its
 * buffers. Whether its counters order the work correctly is what the interpreter's random interleavings test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

static const char *const OP_NAMES[MK_OP_COUNT] = {"NOOP", "QKV", "ATTN", "OPROJ", "GATEUP", "DOWN", "LMHEAD", "SAMPLE", "MLP"};

const char *mk_op_name(int op) { return op >= 0 && op < MK_OP_COUNT ? OP_NAMES[op] : "?"; }

#define BAD(...) mk_set_error(e, MK_ERR_INVALID, __VA_ARGS__)

/* the queue that holds instruction i */
static int queue_of(const mk_program_view *v, int i) {
  int q = 0;
  while (q + 1 < v->n_queues && v->queue_start[q + 1] <= i) q++;
  return q;
}

int mk_program_parse(mk_engine *e, const int32_t *words, int32_t n_words, mk_program_view *out) {
  if (!words) return BAD("program: words is NULL");
  if (n_words < MK_PROG_HEADER_WORDS) return BAD("program: %d words, shorter than the %d-word header", n_words, MK_PROG_HEADER_WORDS);
  const int32_t *h = words;
  if ((uint32_t)h[MK_PH_MAGIC] != (uint32_t)MK_PROG_MAGIC)
    return BAD("program: bad magic 0x%08x (expected 0x%08x \"MKPG\")", (unsigned)h[MK_PH_MAGIC], (unsigned)MK_PROG_MAGIC);
  if (h[MK_PH_VERSION] != MK_PROG_VERSION)
    return BAD("program: version %d, this library reads version %d", h[MK_PH_VERSION], MK_PROG_VERSION);
  mk_program_view v;
  memset(&v, 0, sizeof v);
  v.n_queues = h[MK_PH_N_QUEUES];
  v.n_counters = h[MK_PH_N_COUNTERS];
  v.n_instructions = h[MK_PH_N_INSTRUCTIONS];
  v.attn_splits = h[MK_PH_ATTN_SPLITS];
  v.down_chunk = h[MK_PH_DOWN_CHUNK];
  v.n_lm_parts = h[MK_PH_N_LM_PARTS];
  v.attn_per_head = h[MK_PH_ATTN_PER_HEAD];
  if (v.n_queues < 1 || v.n_queues > 65536) return BAD("program: n_queues %d out of range [1, 65536]", v.n_queues);
  if (v.n_counters < 0 || v.n_counters > (1 << 24)) return BAD("program: n_counters %d out of range", v.n_counters);
  if (v.n_instructions < 1 || v.n_instructions > (1 << 24))
    return BAD("program: n_instructions %d out of range", v.n_instructions);
  if (v.attn_per_head != 0 && v.attn_per_head != 1)
    return BAD("program: header word %d (ATTN_PER_HEAD) is %d, must be 0 or 1", MK_PH_ATTN_PER_HEAD, v.attn_per_head);
  for (int k = MK_PH_ATTN_PER_HEAD + 1; k < MK_PROG_HEADER_WORDS; k++)
    if (h[k] != 0) return BAD("program: reserved header word %d is %d, must be 0", k, h[k]);
  int64_t want = (int64_t)MK_PROG_HEADER_WORDS + v.n_counters + (v.n_queues + 1) +
                 (int64_t)v.n_instructions * MK_INSTR_WORDS;
  if (want != n_words)
    return BAD("program: %d words, but the header implies %lld (%d counters, %d queues, %d instructions)", n_words,
               (long long)want, v.n_counters, v.n_queues, v.n_instructions);
  v.header = h;
  v.per_token = h + MK_PROG_HEADER_WORDS;
  v.queue_start = v.per_token + v.n_counters;
  v.instr = v.queue_start + v.n_queues + 1;
  for (int c = 0; c < v.n_counters; c++)
    if (v.per_token[c] < 0) return BAD("program: per_token[%d] = %d is negative", c, v.per_token[c]);
  if (v.queue_start[0] != 0 || v.queue_start[v.n_queues] != v.n_instructions)
    return BAD("program: queue_start must run from 0 to n_instructions (%d), found %d .. %d", v.n_instructions,
               v.queue_start[0], v.queue_start[v.n_queues]);
  for (int q = 0; q < v.n_queues; q++)
    if (v.queue_start[q + 1] < v.queue_start[q])
      return BAD("program: queue_start[%d] = %d is below queue_start[%d] = %d", q + 1, v.queue_start[q + 1], q,
                 v.queue_start[q]);

  /* ---- per-instruction checks against the model ---- */
  const mk_model_config *c = &e->cfg;
  const int L = c->n_layers, hd = c->head_dim, S = v.attn_splits;
  const int64_t pairs = (int64_t)(c->n_heads + 2 * c->n_kv_heads) * (hd / 2);
  if (S < 1 || S > 4096) return BAD("program: attn_splits %d out of range [1, 4096]", S);
  if (v.down_chunk < 1 || v.down_chunk > c->hidden_dim)
    return BAD("program: down_chunk %d out of range [1, %d]", v.down_chunk, c->hidden_dim);
  if (v.n_lm_parts < 1 || v.n_lm_parts > c->vocab_size)
    return BAD("program: n_lm_parts %d out of range [1, %d]", v.n_lm_parts, c->vocab_size);
  const int n_chunks = (c->hidden_dim + v.down_chunk - 1) / v.down_chunk;

  /* counts used to check coverage: ATTN (L, g, s) once each, LMHEAD slots once each, one SAMPLE */
  size_t n_attn = (size_t)L * c->n_kv_heads * S;
  uint8_t *attn_seen = (uint8_t *)calloc(n_attn, 1);
  int32_t *attn_signal = (int32_t *)malloc((size_t)L * c->n_kv_heads * sizeof(int32_t));
  uint8_t *slot_seen = (uint8_t *)calloc((size_t)v.n_lm_parts, 1);
  int64_t *signals = (int64_t *)calloc((size_t)v.n_counters + 1, sizeof(int64_t));
  if (!attn_seen || !attn_signal || !slot_seen || !signals) {
    free(attn_seen); free(attn_signal); free(slot_seen); free(signals);
    return mk_set_error(e, MK_ERR_OOM, "program: out of host memory while validating");
  }
  for (size_t k = 0; k < (size_t)L * c->n_kv_heads; k++) attn_signal[k] = -2;
  int n_sample = 0, rc = MK_OK;

#define IBAD(...)                                                                                                \
  do {                                                                                                           \
    char msg_[256];                                                                                              \
    snprintf(msg_, sizeof msg_, __VA_ARGS__);                                                                    \
    rc = BAD("program: instruction %d (queue %d, %s): %s", i, queue_of(&v, i), mk_op_name(op), msg_);           \
    goto done;                                                                                                   \
  } while (0)

  for (int i = 0; i < v.n_instructions; i++) {
    const int32_t *in = v.instr + (size_t)i * MK_INSTR_WORDS;
    const int op = in[MK_I_OP], layer = in[MK_I_LAYER];
    const int a0 = in[MK_I_A0], a1 = in[MK_I_A1], a2 = in[MK_I_A2];
    if (op < 0 || op >= MK_OP_COUNT) IBAD("unknown opcode %d", op);
    if (in[MK_I_WAIT] < -1 || in[MK_I_WAIT] >= v.n_counters)
      IBAD("wait counter %d out of range [-1, %d)", in[MK_I_WAIT], v.n_counters);
    if (in[MK_I_SIGNAL] < -1 || in[MK_I_SIGNAL] >= v.n_counters)
      IBAD("signal counter %d out of range [-1, %d)", in[MK_I_SIGNAL], v.n_counters);
    if (in[MK_I_WAIT] >= 0 && in[MK_I_WAIT_COUNT] < 0) IBAD("negative wait_count %d", in[MK_I_WAIT_COUNT]);
    if (in[MK_I_WAIT_TOKEN_OFFSET] > 0 || in[MK_I_WAIT_TOKEN_OFFSET] < -1)
      IBAD("wait_token_offset %d must be 0 or -1", in[MK_I_WAIT_TOKEN_OFFSET]);
    if (((op >= MK_OP_QKV && op <= MK_OP_DOWN) || op == MK_OP_MLP) && (layer < 0 || layer >= L)) IBAD("layer %d out of range [0, %d)", layer, L);
    switch (op) {
      case MK_OP_QKV:
        if (a0 < 0 || a1 < 1 || (int64_t)a0 + a1 > pairs) IBAD("pairs [%d, %d+%d) outside [0, %lld)", a0, a0, a1, (long long)pairs);
        break;
      case MK_OP_ATTN: {
        if (a0 < 0 || a0 >= c->n_kv_heads) IBAD("kv head %d out of range [0, %d)", a0, c->n_kv_heads);
        if (a1 < 0 || a1 >= S) IBAD("split %d out of range [0, %d)", a1, S);
        size_t g = (size_t)layer * c->n_kv_heads + a0;
        if (attn_seen[g * S + a1]++) IBAD("layer %d kv head %d split %d appears twice", layer, a0, a1);
        if (attn_signal[g] != -2 && attn_signal[g] != in[MK_I_SIGNAL])
          IBAD("splits of layer %d kv head %d signal different counters (%d, %d)", layer, a0, attn_signal[g], in[MK_I_SIGNAL]);
        attn_signal[g] = in[MK_I_SIGNAL];
        break;
      }
      case MK_OP_OPROJ:
        if (a0 < 0 || a1 < 1 || (int64_t)a0 + a1 > c->dim) IBAD("rows [%d, %d+%d) outside [0, %d)", a0, a0, a1, c->dim);
        break;
      case MK_OP_GATEUP:
        if (a0 < 0 || a1 < 1 || (int64_t)a0 + a1 > c->hidden_dim)
          IBAD("rows [%d, %d+%d) outside [0, %d)", a0, a0, a1, c->hidden_dim);
        if (a0 / v.down_chunk != (a0 + a1 - 1) / v.down_chunk)
          IBAD("rows [%d, %d) cross a down chunk boundary (chunk %d)", a0, a0 + a1, v.down_chunk);
        break;
      case MK_OP_MLP:
        if (a0 < 0 || a1 < 1 || (int64_t)a0 + a1 > c->hidden_dim)
          IBAD("rows [%d, %d+%d) outside [0, %d)", a0, a0, a1, c->hidden_dim);
        break;
      case MK_OP_DOWN:
        if (a0 < 0 || a1 < 1 || (int64_t)a0 + a1 > c->dim) IBAD("rows [%d, %d+%d) outside [0, %d)", a0, a0, a1, c->dim);
        if (a2 < 0 || a2 >= n_chunks) IBAD("chunk %d out of range [0, %d)", a2, n_chunks);
        break;
      case MK_OP_LMHEAD:
        if (a0 < 0 || a1 < 1 || a1 > 1024 || (int64_t)a0 + a1 > c->vocab_size)
          IBAD("rows [%d, %d+%d) outside [0, %d) or more than 1024", a0, a0, a1, c->vocab_size);
        if (a2 < 0 || a2 >= v.n_lm_parts) IBAD("part slot %d out of range [0, %d)", a2, v.n_lm_parts);
        if (slot_seen[a2]++) IBAD("part slot %d is written by two LMHEAD instructions", a2);
        break;
      case MK_OP_SAMPLE:
        if (a0 != v.n_lm_parts) IBAD("merges %d parts, the header says %d", a0, v.n_lm_parts);
        if (n_sample++) IBAD("a second SAMPLE instruction (one per step)");
        break;
      default:
        break;
    }
    if (in[MK_I_SIGNAL] >= 0 && op != MK_OP_ATTN) signals[in[MK_I_SIGNAL]]++;
  }
#define PBAD(...)                          \
  do {                                     \
    char msg_[256];                        \
    snprintf(msg_, sizeof msg_, __VA_ARGS__); \
    rc = BAD("program: %s", msg_);         \
    goto done;                             \
  } while (0)
  {
    if (n_sample != 1) PBAD("no SAMPLE instruction");
    for (int s = 0; s < v.n_lm_parts; s++)
      if (!slot_seen[s]) PBAD("no LMHEAD writes part slot %d", s);
    for (size_t g = 0; g < (size_t)L * c->n_kv_heads; g++) {
      for (int s = 0; s < S; s++)
        if (!attn_seen[g * S + s]) PBAD("no ATTN for layer %d kv head %d split %d", (int)(g / c->n_kv_heads), (int)(g % c->n_kv_heads), s);
      /* only the merging split signals: once, or once per q head of the group */
      if (attn_signal[g] >= 0) signals[attn_signal[g]] += v.attn_per_head ? c->n_heads / c->n_kv_heads : 1;
    }
    for (int k = 0; k < v.n_counters; k++)
      if (signals[k] != v.per_token[k])
        PBAD("counter %d: per_token says %d increments per token, the instructions make %lld", k, v.per_token[k],
             (long long)signals[k]);
  }
  *out = v;
done:
  free(attn_seen); free(attn_signal); free(slot_seen); free(signals);
  return rc;
}
