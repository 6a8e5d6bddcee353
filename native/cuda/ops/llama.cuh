// llama.cuh — what the ops share: the kernel's view of the model (weights, activation buffers named in
// native/program.h, launch parameters) and the small block-level helpers every op uses.
#pragma once
#include <climits>
#include "../vm.cuh"

namespace mk {

constexpr int kMaxHeadDim = 128;  // widest attention head the ATTN op handles
constexpr int kMaxSplits = 16;    // attention splits per kv head (bounded so one tile of partials stays small)

// The CUDA engine re-lays the checkpoint's matrices at load (engine_cuda.cu) so that the rows of every instruction
// are contiguous and each page is one bulk copy with no address arithmetic in the producer:
struct LayerW {
  const bf16 *attn_norm;    // (dim)
  const bf16 *wqkv;         // ((n_heads + 2 n_kv) hd, dim): the fused [q; k; v] rows in RoPE-pair order, row 2p and
                            // 2p+1 = the two rows of pair p (QkvOp::fused_of)
  const bf16 *wo;           // (dim, n_heads*hd)
  const bf16 *ffn_norm;     // (dim)
  const bf16 *wgu;          // (2 hidden, dim): gate row r at 2r, up row r at 2r+1
  const bf16 *wd;           // (hidden/dim, dim, dim): the (dim, hidden) matrix chunk-major (DOWN)
  const bf16 *wdt;          // (hidden, dim): the (dim, hidden) matrix transposed (MLP)
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
  int attn_per_head;        // ATTN's counter counts q heads (program.h MK_PH_ATTN_PER_HEAD), else kv heads
  // buffers (program.h)
  float *resid;             // [2*n_layers + 1][dim]; index 0 unused (layer 0 reads the embedding)
  float *q;                 // [(n_heads + 2 n_kv) hd] the fused QKV output: q after RoPE, then this position's k
                            // (after RoPE) and v, bf16-rounded as the cache holds them
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
  // optional per-instruction timing of one step (MKCHAT_TRACE): [n_instr][kTraceWords] = wait begin, wait end,
  // first page in hand, compute done (before the signal), done (after the signal), an op-specific midpoint
  // (PageCursor::note_mid), in ns of %globaltimer
  unsigned long long *trace;
  int trace_step;
  // diagnostics only (MKCHAT_DIAG, bits of kDiag*): take parts of the work away to measure what the rest costs
  int diag;
  // OPROJ, GATEUP and DOWN publish their outputs as bulk stores and signal without a release fence when their rows
  // are whole 16-byte groups (1, default; MKCHAT_BULK_PUBLISH=0 for fenced plain stores everywhere)
  int bulk_publish;
  // ATTN stages its first K/V tile before its counter wait (1, default; MKCHAT_ATTN_PREFETCH=0 after it, for A/B)
  int attn_prefetch;
  // QKV, GATEUP and LMHEAD stage their RMSNorm weight in shared memory before their counter wait (1, default;
  // MKCHAT_NORM_PREFETCH=0 reads it after the wait, for A/B)
  int norm_prefetch;
  // ATTN: contexts of up to this many positions (at most 128) are attended without splits, one SM per q head (attn.cuh
  // attn_single; default 128, MKCHAT_ATTN_SINGLE_MAX=0: always the splits with their merge)
  int attn_single_max;
  int ring_pages;             // pages of the ring in use (kPages; MKCHAT_RING_PAGES overrides, for tuning)
  int inflight_pages;         // most weight pages in flight per SM (default 3; 0: the whole ring; MKCHAT_INFLIGHT_PAGES)
  int evict_first;            // stream weights with an L2 evict-first policy (default 1; MKCHAT_EVICT_FIRST=0 disables)
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

// Thread t owns elements [8t, 8t+8) of a dim-vector (dim <= 2048 = 8 x 256): one 16-byte or two 32-byte loads per
// thread, all issued before any is used, so staging a vector costs one L2 round trip rather than eight.
__device__ __forceinline__ void load8(const float *src, float v[8]) {
  const float4 a = __ldcg(reinterpret_cast<const float4 *>(src)), b = __ldcg(reinterpret_cast<const float4 *>(src) + 1);
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(const bf16 *src, float v[8]) {
  const uint4 u = *reinterpret_cast<const uint4 *>(src);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void store8(float *dst, const float v[8]) {
  reinterpret_cast<float4 *>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4 *>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// s.xs = src (fp32, written by other SMs: read through L2).
__device__ inline void stage_vector(const Globals &g, Smem &s, const float *src) {
  const int t = ctid();
  if (8 * t < g.dim) {
    float v[8];
    load8(src + 8 * t, v);
    store8(s.xs + 8 * t, v);
  }
  consumer_sync();
}

// Before an instruction's counter wait: its RMSNorm weight (dim bf16, read once per token, so usually no longer in
// L2) goes to s.out with cp.async, thread t taking the 16 bytes it will use, so the norm after the wait is one L2
// round trip (the input vector) rather than that plus an HBM one.
__device__ __forceinline__ void stage_norm_weight(const Globals &g, Smem &s, const bf16 *weight) {
  const int t = ctid();
  if (8 * t < g.dim) cp_async16(reinterpret_cast<uint4 *>(s.out) + t, weight + 8 * t);
}

// The input of an RMSNorm + matvec: s.xs = x * weight, x = layer input (fp32 from L2, or a bf16 embedding row), and the
// warps' partial sums of x^2 in s.norm_ss. The norm's scalar rsqrt(mean(x^2) + eps) multiplies the matvec's
// outputs instead (norm_scale, after the matvec): W.(x*w*r) = r * W.(x*w), so the matvec need not wait for the block's
// sum. `weight` is null when stage_norm_weight put it in s.out before the wait.
__device__ inline void rmsnorm_input(const Globals &g, Smem &s, const float *x_f32, const bf16 *x_bf16,
                                     const bf16 *weight) {
  const int t = ctid();
  float ss = 0.f;
  if (8 * t < g.dim) {
    float v[8], w[8];
    if (x_bf16) load8(x_bf16 + 8 * t, v);
    else load8(x_f32 + 8 * t, v);
    if (weight) {
      load8(weight + 8 * t, w);
    } else {
      cp_async_wait_all();
      load8(reinterpret_cast<const bf16 *>(s.out) + 8 * t, w);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      ss += v[i] * v[i];
      v[i] *= w[i];
    }
    store8(s.xs + 8 * t, v);
  }
  ss = warp_sum(ss);
  if ((t & 31) == 0) s.norm_ss[t >> 5] = ss;
  consumer_sync();
}

// The RMSNorm scalar of the last rmsnorm_input, once the matvec is done.
__device__ __forceinline__ float norm_scale(const Globals &g, const Smem &s) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kConsumerWarps; ++i) ss += s.norm_ss[i];
  return rsqrtf(ss / g.dim + g.eps);
}

// Whether an instruction's output rows [a0, a0 + n) of fp32 can go out as bulk stores (whole 16-byte groups).
__device__ __forceinline__ bool bulk_rows(const Globals &g, int a0, int n) {
  return g.bulk_publish && (a0 & 3) == 0 && (n & 3) == 0 && n > 0;
}
// After every consumer wrote its share of `stage` (shared memory): thread 0 stores it to each of dst[0..n_dst) and
// waits until the stores are complete, then the instruction's signal can be a plain increment (vm.cuh bulk_store).
__device__ inline void publish_rows(Smem &s, const float *stage, float *const *dst, int n_dst, int n, bool add) {
  fence_smem_to_bulk();
  consumer_sync();
  if (ctid() == 0) {
    for (int i = 0; i < n_dst; ++i) {
      if (add) bulk_reduce_add(dst[i], stage, 4u * n);
      else bulk_store(dst[i], stage, 4u * n);
    }
    bulk_commit_wait();
    s.published = 1;
  }
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
