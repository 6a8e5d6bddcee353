// lmhead.cuh — MK_OP_LMHEAD: final RMSNorm + a slice of the LM head + the slice's summary for SAMPLE.
// Args: a0 = first row, a1 = rows (<= kMaxRows), a2 = part slot. Skipped (but still signalled) on prompt steps whose
// logits nobody needs.
#pragma once
#include <math_constants.h>
#include "matvec.cuh"

namespace mk {

// Ids order ties: the lower id wins, as in a first-index argmax.
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

// Block-wide argmax over the consumers; every thread gets the winner.
__device__ inline void block_argmax(Smem &s, float *v, int *id) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, *v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, *id, o);
    if (better(ov, oi, *v, *id)) { *v = ov; *id = oi; }
  }
  const int warp = ctid() >> 5;
  if ((ctid() & 31) == 0) {
    s.scratch[warp] = *v;
    s.scratch[kConsumerWarps + warp] = __int_as_float(*id);
  }
  consumer_sync();
  float bv = s.scratch[0];
  int bi = __float_as_int(s.scratch[kConsumerWarps]);
  for (int w = 1; w < kConsumerWarps; ++w) {
    const float wv = s.scratch[w];
    const int wi = __float_as_int(s.scratch[kConsumerWarps + w]);
    if (better(wv, wi, bv, bi)) { bv = wv; bi = wi; }
  }
  consumer_sync();
  *v = bv;
  *id = bi;
}

// Sort (vals, ids)[0..n) descending (ties: lower id first) in place; n a power of two <= kMaxRows.
__device__ inline void bitonic_sort_desc(float *vals, int *ids, int n) {
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = ctid(); i < n; i += kConsumerThreads) {
        const int ixj = i ^ j;
        if (ixj > i) {
          const bool desc = (i & k) == 0;
          const bool a_first = better(vals[i], ids[i], vals[ixj], ids[ixj]);
          if (desc != a_first) {
            const float tv = vals[i]; vals[i] = vals[ixj]; vals[ixj] = tv;
            const int ti = ids[i]; ids[i] = ids[ixj]; ids[ixj] = ti;
          }
        }
      }
      consumer_sync();
    }
  }
}

__device__ __forceinline__ float gumbel(unsigned long long seed, int step, int id) {
  return -logf(-logf((float)uniform01(seed, step, id)));
}

struct LmheadOp {
  MK_HD static int rows(const Globals &g, const int *a, int, int step) {
    return step < g.lm_from_step ? 0 : a[1];
  }
  MK_HD static const bf16 *first_row(const Globals &g, const int *a, int) {
    return g.lm_head + (size_t)a[0] * g.dim;
  }
  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int, int step) {
    if (step < g.lm_from_step) {  // a prompt step: no logits (run_op ends synchronised)
      consumer_sync();
      return true;
    }
    const int n = a[1];
    rmsnorm_input(g, s, g.resid + (size_t)(2 * g.n_layers) * g.dim, nullptr, g.norm_prefetch ? nullptr : g.final_norm);
    matvec_rows(g, s, cur, n);
    const float inv = norm_scale(g, s);
    const float T = g.sp.temperature;
    float best = -CUDART_INF_F, gbest = -CUDART_INF_F;
    int best_id = INT_MAX, gid = INT_MAX;
    for (int k = ctid(); k < n; k += kConsumerThreads) {
      const float v = s.out[k] * inv;
      s.out[k] = v;  // the later passes over the logits read them scaled
      const int id = a[0] + k;
      g.logits[id] = v;
      if (better(v, id, best, best_id)) { best = v; best_id = id; }
      if (g.sp.gumbel) {
        const float gv = v / T + gumbel(g.sp.seed, step, id);
        if (better(gv, id, gbest, gid)) { gbest = gv; gid = id; }
      }
    }
    block_argmax(s, &best, &best_id);
    if (g.sp.gumbel) block_argmax(s, &gbest, &gid);
    float e1 = 0.f, eT = 0.f;
    for (int k = ctid(); k < n; k += kConsumerThreads) {
      e1 += expf(s.out[k] - best);
      if (T > 0.f) eT += expf((s.out[k] - best) / T);
    }
    e1 = block_sum(s, e1);
    eT = block_sum(s, eT);
    LmPart &part = g.lm_part[a[2]];
    int ncand = 0;
    if (g.sp.need_candidates) {
      int np2 = 1;
      while (np2 < n) np2 <<= 1;
      for (int k = ctid(); k < np2; k += kConsumerThreads) {
        if (k >= n) s.out[k] = -CUDART_INF_F;
        s.ids[k] = a[0] + k;
      }
      consumer_sync();
      bitonic_sort_desc(s.out, s.ids, np2);
      ncand = min(n, kCandidates);
      for (int k = ctid(); k < ncand; k += kConsumerThreads) {
        part.cval[k] = s.out[k];
        part.cid[k] = s.ids[k];
      }
    }
    if (ctid() == 0) {
      part.max = best;
      part.argmax = best_id;
      part.sumexp1 = e1;
      part.sumexpT = eT;
      part.gbest = gbest;
      part.gid = gid;
      part.ncand = ncand;
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
