/*
 * program.h — the instruction program: the opcode table and the binary layout that engine/scheduler.ts writes and
 * both interpreters (CUDA megakernel in native/cuda/, CPU twin in native/cpu/interpreter.c) read.
 *
 * A program describes ONE decode step (one token) as one queue of instructions per SM. The megakernel runs the
 * queues once per token, for every token of a generation, in a single launch. Dependencies are counters:
 *
 *   - every instruction with signal >= 0 adds 1 to counters[signal] once its outputs are stored
 *     (ATTN signals only from the split that merges its kv head, see MK_OP_ATTN);
 *   - counters are never reset inside a launch: the header's per_token[c] says how many increments counter c gets per
 *     token, so an instruction of token t (0-based within the launch) waits until
 *         counters[wait] >= per_token[wait] * (t + wait_token_offset) + wait_count
 *     (wait_token_offset is 0 for a dependency inside the same token, -1 for one on the previous token; a required
 *     value <= 0 is satisfied at once);
 *   - counter 0 is the step counter: SAMPLE signals it once per token (per_token[0] == 1). Before starting token t > 0
 *     every queue waits for counters[0] >= t and then ends the launch if SAMPLE decided to stop.
 *
 * Layout (all int32 little-endian words):
 *   header   MK_PROG_HEADER_WORDS words (see MK_PH_*)
 *   per_token[n_counters]
 *   queue_start[n_queues + 1]       instruction index where queue q starts; queue q is [start[q], start[q+1])
 *   instructions[n_instructions][MK_INSTR_WORDS]
 *
 * Activation buffers are owned by the engine and named by the ops, never by the program:
 *   x_in(L)      layer L's input: L == 0 ? embedding[token] (bf16 -> fp32) : resid[2L]
 *   resid[k]     fp32 [dim], k in 1..2*n_layers (resid[2L+1] after attention of layer L, resid[2L+2] after its MLP)
 *   q            fp32 [n_heads * head_dim]           (RoPE applied)
 *   kcache/vcache bf16 [n_layers][n_kv_heads][ctx_len][head_dim] (RoPE applied to k)
 *   attn_part    fp32 [n_heads][attn_splits][head_dim + 2]   (o, m, l) partials of split attention
 *   attn         fp32 [n_heads * head_dim]           attention output, heads concatenated
 *   h            fp32 [hidden_dim]                   silu(gate) * up
 *   logits       fp32 [vocab]
 *   lm_part      per LMHEAD instruction: max, sum of exp(logit - max), top candidates (see MK_OP_LMHEAD)
 *   tokens       int32 [steps + 1]                   token of each step of the launch; SAMPLE writes tokens[t+1]
 * Position of token t: pos = start_pos + t.
 */
#ifndef MKCHAT_PROGRAM_H
#define MKCHAT_PROGRAM_H

#define MK_PROG_MAGIC 0x47504B4D /* "MKPG" */
#define MK_PROG_VERSION 1
#define MK_INSTR_WORDS 16
#define MK_ATTN_SPLIT_POSITIONS 32 /* ATTN: positions per split before another split is used (see MK_OP_ATTN) */
#define MK_PROG_HEADER_WORDS 16

/* header word indices */
#define MK_PH_MAGIC 0
#define MK_PH_VERSION 1
#define MK_PH_N_QUEUES 2        /* = SMs the program was made for (CPU interpreter: any) */
#define MK_PH_N_COUNTERS 3
#define MK_PH_N_INSTRUCTIONS 4
#define MK_PH_ATTN_SPLITS 5     /* S: attention splits per kv head */
#define MK_PH_DOWN_CHUNK 6      /* columns of the down projection per DOWN instruction chunk */
#define MK_PH_N_LM_PARTS 7      /* number of LMHEAD instructions = lm_part slots */
#define MK_PH_ROWS_PER_PAGE 8   /* weight rows (of `dim` bf16) per shared-memory page; informative */
#define MK_PH_ATTN_PER_HEAD 9   /* 0: ATTN's counter gets one increment per kv head and token; 1: one per q head, i.e.
                                   G = n_heads / n_kv per kv head (see MK_OP_ATTN) */
/* 9..15 reserved, zero */

/* instruction word indices */
#define MK_I_OP 0
#define MK_I_LAYER 1
#define MK_I_WAIT 2             /* counter id, or -1 */
#define MK_I_WAIT_COUNT 3
#define MK_I_WAIT_TOKEN_OFFSET 4
#define MK_I_SIGNAL 5           /* counter id, or -1 */
#define MK_I_A0 6               /* op arguments a0..a9 */
#define MK_I_A1 7
#define MK_I_A2 8
#define MK_I_A3 9
#define MK_I_A4 10

/*
 * Opcodes. Row r of a weight matrix W [out, in] is W[r, :]; all matrices are bf16 row-major as in the checkpoint.
 */
typedef enum mk_opcode {
  MK_OP_NOOP = 0,
  /* QKV (layer L; a0 = first pair, a1 = pair count).
   *   xn = rmsnorm(x_in(L)) * input_layernorm[L]
   *   The fused output rows are [q (n_heads*hd) ; k (n_kv*hd) ; v (n_kv*hd)]; "pair" p covers the two rows
   *   head*hd + i and head*hd + i + hd/2 where head = p / (hd/2), i = p % (hd/2) (the two rows RoPE rotates together,
   *   HF rotate_half convention). For each pair: compute both dot products with xn, apply RoPE at pos to q and k
   *   heads (v unrotated), store q rows to q (fp32), k and v rows to kcache/vcache[L][kvh][pos] (bf16). */
  MK_OP_QKV = 1,
  /* ATTN (layer L; a0 = kv head g, a1 = split s). For each q head h of group g (h = g*n_heads/n_kv + j), over the
   *   positions of split s: with n = pos+1, the splits in use are S' = min(S, ceil(n / MK_ATTN_SPLIT_POSITIONS)) and
   *   split s takes positions [s*c, min((s+1)*c, n)) with c = ceil(n / S') (splits s >= S' are empty), so short
   *   contexts use few splits and long ones all S.
   *   Writes partial (o[hd] unnormalised, m = max score, l = sum exp(score - m)) to attn_part[h][s] (empty split:
   *   m = -inf, l = 0, o = 0). Scores are q.k / sqrt(hd). Then increments the (L, g) arrival count; the split that
   *   arrives last merges the S partials of each of its heads into attn[h*hd ...] and is the only one to signal: it
   *   adds 1 to the counter, or G when the header's ATTN_PER_HEAD is 1.
   *   What must hold is only that: the counter has its increments for (L, g) once attn rows of all of g's heads are
   *   written. An interpreter may share a kv head's work among its splits otherwise: CUDA attends contexts of at most
   *   128 positions (hd 64, G <= 4) without partials, split s taking q heads [s*k, s*k + k) alone (k = ceil(G / S)
   *   with ATTN_PER_HEAD, else k = G) and adding as many increments as heads, or 1 without ATTN_PER_HEAD. */
  MK_OP_ATTN = 2,
  /* OPROJ (layer L; a0 = first row, a1 = rows of Wo).
   *   for r in rows: v = x_in(L)[r] + dot(Wo[r], attn); resid[2L+1][r] = v; resid[2L+2][r] = v
   *   (the second store initialises the MLP accumulator that DOWN adds into). */
  MK_OP_OPROJ = 3,
  /* GATEUP (layer L; a0 = first row, a1 = rows; the rows never cross a DOWN chunk boundary).
   *   xn = rmsnorm(resid[2L+1]) * post_attention_layernorm[L]
   *   for r in rows: h[r] = silu(dot(Wgate[r], xn)) * dot(Wup[r], xn) */
  MK_OP_GATEUP = 4,
  /* DOWN (layer L; a0 = first row, a1 = rows of Wdown, a2 = chunk c).
   *   for r in rows: resid[2L+2][r] += dot(Wdown[r, c*C:(c+1)*C], h[c*C:(c+1)*C])  (C = header DOWN_CHUNK;
   *   atomic add on the GPU: chunks of one row run on different SMs). */
  MK_OP_DOWN = 5,
  /* LMHEAD (a0 = first row, a1 = rows <= 1024, a2 = part slot).
   *   xn = rmsnorm(resid[2*n_layers]) * norm; for r in rows: logits[r] = dot(Wlm[r], xn)   (Wlm = embedding if tied)
   *   lm_part[slot] = { max logit and its id, sum exp(logit - max), the instruction's top-K candidates (K =
   *   MK_CUDA_MAX_TOP_K, sorted by logit desc) when the sampling needs them, and the best Gumbel-perturbed id when
   *   sampling with temperature and no top-k/top-p } */
  MK_OP_LMHEAD = 6,
  /* SAMPLE (a0 = number of lm_part slots). Merges the parts, chooses the next token (greedy / Gumbel / top-k+top-p
   *   on the merged candidates), records logprobs, writes tokens[t+1] unless step t+1 is still in the prompt, and
   *   decides whether the launch stops (stop id, max tokens, context, cancel). */
  MK_OP_SAMPLE = 7,
  /* MLP (layer L; a0 = first row of the hidden layer, a1 = rows): GATEUP and the matching slice of DOWN in one, so the
   *   down projection needs no wait on other SMs:
   *   xn = rmsnorm(resid[2L+1]) * post_attention_layernorm[L]
   *   for r in rows: h[r] = silu(dot(Wgate[r], xn)) * dot(Wup[r], xn)
   *   for j < dim: resid[2L+2][j] += sum over r in rows of Wdown[j, r] * h[r]   (atomic adds on the GPU) */
  MK_OP_MLP = 8,
  MK_OP_COUNT = 9
} mk_opcode;

#endif /* MKCHAT_PROGRAM_H */
