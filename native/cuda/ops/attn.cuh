// attn.cuh — MK_OP_ATTN: decode attention for one kv head over one split of the context, flash-decoding style.
// Args: a0 = kv head g, a1 = split s (of g.attn_splits). The split's partial (o unnormalised, m, l) of every q head
// of the group goes to attn_part; the split that arrives last for (layer, g) merges all partials into attn and is the
// only one that signals, so ATTN's counter counts kv heads, not splits.
#pragma once
#include <math_constants.h>
#include "matvec.cuh"

namespace mk {


struct AttnOp {
  __device__ static int rows(const Globals &, const int *, int, int) { return 0; }  // streams no weights
  __device__ static const bf16 *row(const Globals &, const int *, int, int) { return nullptr; }

  __device__ static bool run(const Globals &g, Smem &s, PageCursor &, const int *a, int layer, int step) {
    const int kvh = a[0], split = a[1], S = g.attn_splits, hd = g.hd;
    const int G = g.n_heads / g.n_kv, dpl = hd / 32;  // q heads per kv head, dims per lane
    const int n = g.start_pos + step + 1, chunk = (n + S - 1) / S;
    const int lo = min(split * chunk, n), hi = min(lo + chunk, n);
    const int warp = ctid() >> 5, lane = ctid() & 31;
    const int wph = kConsumerWarps / G;  // warps per head (the host requires G <= 8)
    const float scale = rsqrtf((float)hd);
    const size_t head_base = ((size_t)layer * g.n_kv + kvh) * g.ctx;
    float *wpart = s.xs;  // [warp][hd + 2] per-warp partials
    if (warp < wph * G) {
      const int j = warp / wph, h = kvh * G + j, sub = warp % wph;
      float q[4], o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int i = 0; i < 4; ++i) q[i] = i < dpl ? __ldcg(g.q + h * hd + lane * dpl + i) * scale : 0.f;
      float m = -CUDART_INF_F, l = 0.f;
      for (int p = lo + sub; p < hi; p += wph) {
        const bf16 *kp = g.kcache + (head_base + p) * hd + lane * dpl;
        const bf16 *vp = g.vcache + (head_base + p) * hd + lane * dpl;
        float sc = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (i < dpl) sc += q[i] * bf2f(__ldcg(kp + i));
        sc = warp_sum(sc);
        const float m_new = fmaxf(m, sc), corr = __expf(m - m_new), e = __expf(sc - m_new);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (i < dpl) o[i] = o[i] * corr + e * bf2f(__ldcg(vp + i));
        m = m_new;
      }
      float *wp = wpart + warp * (kMaxHeadDim + 2);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i < dpl) wp[lane * dpl + i] = o[i];
      if (lane == 0) {
        wp[kMaxHeadDim] = m;
        wp[kMaxHeadDim + 1] = l;
      }
    }
    consumer_sync();
    // Combine the warps of each head into the split's partial.
    for (int idx = ctid(); idx < G * hd; idx += kConsumerThreads) {
      const int j = idx / hd, d = idx % hd;
      float M = -CUDART_INF_F;
      for (int w = j * wph; w < (j + 1) * wph; ++w) M = fmaxf(M, wpart[w * (kMaxHeadDim + 2) + kMaxHeadDim]);
      float L = 0.f, O = 0.f;
      if (M != -CUDART_INF_F) {
        for (int w = j * wph; w < (j + 1) * wph; ++w) {
          const float *wp = wpart + w * (kMaxHeadDim + 2);
          if (wp[kMaxHeadDim] == -CUDART_INF_F) continue;
          const float c = __expf(wp[kMaxHeadDim] - M);
          L += wp[kMaxHeadDim + 1] * c;
          O += wp[d] * c;
        }
      }
      float *part = g.attn_part + ((size_t)(kvh * G + j) * S + split) * (hd + 2);
      part[d] = O;
      if (d == 0) {
        part[hd] = M;
        part[hd + 1] = L;
      }
    }
    consumer_sync();
    if (ctid() == 0) {
      __threadfence();
      const uint32_t old = atomicAdd(g.attn_arrive + layer * g.n_kv + kvh, 1u);
      s.flag = ((old + 1) % (uint32_t)S) == 0;
    }
    consumer_sync();
    const bool last = s.flag;
    if (last) {
      __threadfence();
      for (int idx = ctid(); idx < G * hd; idx += kConsumerThreads) {
        const int j = idx / hd, d = idx % hd, h = kvh * G + j;
        const float *base = g.attn_part + (size_t)h * S * (hd + 2);
        float M = -CUDART_INF_F;
        for (int sp = 0; sp < S; ++sp) M = fmaxf(M, __ldcg(base + sp * (hd + 2) + hd));
        float L = 0.f, O = 0.f;
        for (int sp = 0; sp < S; ++sp) {
          const float ms = __ldcg(base + sp * (hd + 2) + hd);
          if (ms == -CUDART_INF_F) continue;
          const float c = __expf(ms - M);
          L += __ldcg(base + sp * (hd + 2) + hd + 1) * c;
          O += __ldcg(base + sp * (hd + 2) + d) * c;
        }
        g.attn[h * hd + d] = O / L;
      }
    }
    consumer_sync();
    return last;
  }
};

}  // namespace mk
