// llama.cuh — what the ops share: the kernel's view of the model (weights, activation buffers named in
// native/program.h, launch parameters) and the small block-level helpers every op uses.
#pragma once
#include <climits>
#include "../vm.cuh"

namespace mk {

constexpr int kMaxHeadDim = 128;  // widest attention head the ATTN op handles (4 dims per lane)

struct LayerW {
  const bf16 *attn_norm;    // (dim)
  const bf16 *wq;           // (n_heads*hd, dim)
  const bf16 *wk, *wv;      // (n_kv*hd, dim)
  const bf16 *wo;           // (dim, n_heads*hd)
  const bf16 *ffn_norm;     // (dim)
  const bf16 *wg, *wu;      // (hidden, dim)
  const bf16 *wd;           // (dim, hidden)
};

// One LMHEAD instruction's summary of its slice of the vocabulary.
struct LmPart {
  float max;                // largest logit of the slice
  int argmax;               // its id (lowest id on ties)
  float sumexp1;            // sum exp(logit - max)
  float sumexpT;            // sum exp((logit - max) / T) when T > 0
  float gbest;              // best logit/T + Gumbel noise (temperature-only sampling)
  int gid;
  int ncand;
  int pad;
  float cval[kCandidates];  // the slice's top logits, descending
  int cid[kCandidates];
};

struct SampleParams {
  float temperature, top_p;
  int top_k, logprobs;
  unsigned long long seed;
  int n_stop;
  int stop_ids[16];
  int need_candidates;      // top-k / top-p / logprobs need the candidate lists
  int gumbel;               // temperature sampling over the whole vocabulary
};

// Per-token outputs streamed to the host through mapped pinned memory (device-side pointers).
struct HostStream {
  volatile int *n;          // tokens published
  volatile int *cancel;     // set by the host
  int *tokens;
  unsigned long long *t_ns; // %globaltimer when the token became known
  float *logprob;
  int *top_ids;
  float *top_lp;
  int cap;
};

struct Globals {
  // model shape
  int dim, hidden, n_layers, n_heads, n_kv, hd, vocab, ctx;
  float eps;
  // weights
  const bf16 *embed;        // (vocab, dim)
  const bf16 *final_norm;   // (dim)
  const bf16 *lm_head;      // (vocab, dim), == embed when tied
  const LayerW *layers;     // [n_layers]
  const float *inv_freq;    // (hd/2) RoPE frequencies, llama3 scaling applied
  // program
  const int *instr;         // [n_instr][16]
  const int *queue_start;   // [n_queues + 1]
  const int *per_token;     // [n_counters]
  int attn_splits;
  // buffers (program.h)
  float *resid;             // [2*n_layers + 1][dim]; index 0 unused (layer 0 reads the embedding)
  float *q;                 // [n_heads*hd]
  bf16 *kcache, *vcache;    // [n_layers][n_kv][ctx][hd]
  float *attn_part;         // [n_heads][splits][hd + 2]
  float *attn;              // [n_heads*hd]
  float *h;                 // [hidden]
  float *logits;            // [vocab]
  LmPart *lm_part;          // [n_lm_parts]
  uint32_t *attn_arrive;    // [n_layers][n_kv]
  uint32_t *counters;
  int *tokens;              // [n_steps + 1]
  Ctrl *ctrl;
  HostStream host;
  // launch
  int start_pos, n_steps;
  int lm_from_step;         // first step whose LM head is computed
  int sample_from_step;     // first step that samples (= n_prompt - 1), or n_steps when only prefilling
  int max_tokens;
  SampleParams sp;
  unsigned long long timeout_ns;
};

// --- helpers shared by the ops -----------------------------------------------------------------------------------
__device__ __forceinline__ int ctid() { return threadIdx.x; }  // consumer thread id 0..255

// Sum over the 256 consumer threads; every thread gets the result.
__device__ inline float block_sum(Smem &s, float v) {
  v = warp_sum(v);
  if ((ctid() & 31) == 0) s.scratch[ctid() >> 5] = v;
  consumer_sync();
  float r = 0.f;
#pragma unroll
  for (int i = 0; i < kConsumerWarps; ++i) r += s.scratch[i];
  consumer_sync();
  return r;
}

// xs = x * rsqrt(mean(x^2) + eps) * weight, with x = layer input (embedding row of the step's token for layer 0).
__device__ inline void rmsnorm_input(const Globals &g, Smem &s, const float *x_f32, const bf16 *x_bf16,
                                     const bf16 *weight) {
  float ss = 0.f;
  for (int i = ctid(); i < g.dim; i += kConsumerThreads) {
    const float v = x_bf16 ? bf2f(x_bf16[i]) : __ldcg(x_f32 + i);
    s.xs[i] = v;
    ss += v * v;
  }
  ss = block_sum(s, ss);
  const float inv = rsqrtf(ss / g.dim + g.eps);
  for (int i = ctid(); i < g.dim; i += kConsumerThreads) s.xs[i] = s.xs[i] * inv * bf2f(weight[i]);
  consumer_sync();
}

// The input of layer L (program.h x_in): a pointer pair, exactly one of them non-null.
__device__ __forceinline__ void layer_input(const Globals &g, int layer, int step, const float **f, const bf16 **b) {
  if (layer == 0) {
    *f = nullptr;
    *b = g.embed + (size_t)__ldcg(g.tokens + step) * g.dim;  // written by SAMPLE on another SM: bypass L1
  } else {
    *f = g.resid + (size_t)(2 * layer) * g.dim;
    *b = nullptr;
  }
}
__device__ __forceinline__ float layer_input_at(const float *f, const bf16 *b, int i) {
  return b ? bf2f(b[i]) : __ldcg(f + i);
}

// Counter-based uniform in (0, 1): splitmix64 of (seed, step, index). Same function in native/cpu/.
__device__ __forceinline__ double uniform01(unsigned long long seed, int step, int index) {
  unsigned long long z = seed ^ (0x9E3779B97F4A7C15ull * (unsigned long long)(step + 1)) ^
                         (0xD1B54A32D192ED03ull * (unsigned long long)(index + 1));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return ((z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

}  // namespace mk
