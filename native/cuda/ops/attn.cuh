// attn.cuh — MK_OP_ATTN: decode attention for one kv head over one split of the context, flash-decoding style.
// Args: a0 = kv head g, a1 = split s (of g.attn_splits). The split's partial (o unnormalised, m, l) of every q head
// of the group goes to attn_part; the split that arrives last for (layer, g) merges all partials into attn and is the
// only one that signals, so ATTN's counter counts kv heads, not splits.
//
// Attention sits on the critical path of every layer, so it is written for latency: K and V of up to kTile positions
// are staged in shared memory with one round of 16-byte loads (the positions of a kv head are contiguous in the
// cache), every (head, position) score is one thread's 64-wide dot product, and the merge loads all partials at once.
// Thread (j, d) = (q head of the group, dimension) owns one output element; the host requires G * hd <= 256.
#pragma once
#include <math_constants.h>
#include "matvec.cuh"
#include "../../program.h"

namespace mk {

constexpr int kTile = 32;       // positions per staged K/V tile: 2 x 32 x 64 x 2 B = 8 KiB = s.xs

// Eight fp32 values that are exactly bf16 (read through L2) back into one 16-byte cache chunk.
__device__ __forceinline__ uint4 pack_bf16x8(const float *f) {
  const float4 a = __ldcg(reinterpret_cast<const float4 *>(f)), b = __ldcg(reinterpret_cast<const float4 *>(f) + 1);
  const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  uint32_t u[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) u[i] = (__float_as_uint(v[2 * i]) >> 16) | (__float_as_uint(v[2 * i + 1]) & 0xffff0000u);
  return make_uint4(u[0], u[1], u[2], u[3]);
}

struct AttnOp {
  __device__ static int rows(const Globals &, const int *, int, int) { return 0; }  // streams no weights

  __device__ static bool run(const Globals &g, Smem &s, PageCursor &, const int *a, int layer, int step) {
    const int kvh = a[0], split = a[1], S = g.attn_splits, hd = g.hd;
    const int G = g.n_heads / g.n_kv;
    // The splits in use grow with the context (program.h MK_OP_ATTN): few at chat lengths, all S at long contexts.
    const int n = g.start_pos + step + 1, S_used = min(S, (n + MK_ATTN_SPLIT_POSITIONS - 1) / MK_ATTN_SPLIT_POSITIONS);
    const int chunk = (n + S_used - 1) / S_used;
    const int lo = min(split * chunk, n), hi = min(lo + chunk, n);
    const int t = ctid(), j = t / hd, d = t % hd, h = kvh * G + j;
    const bool owner = j < G;
    const size_t head_base = ((size_t)layer * g.n_kv + kvh) * g.ctx;
    uint4 *ktile = reinterpret_cast<uint4 *>(s.xs);         // [kTile][hd/8] 16-byte chunks
    uint4 *vtile = ktile + kTile * hd / 8;
    float *q = s.out;                                        // [G][hd], pre-scaled
    float *sc = reinterpret_cast<float *>(s.ids);            // [G][kTile] scores
    // K/V tiles go through registers so that a tile's loads (and, for the first one, q's) are in flight together:
    // one L2 round trip per tile.
    float m = -CUDART_INF_F, l = 0.f, o = 0.f;
    const float qv = owner ? __ldcg(g.q + h * hd + d) * rsqrtf((float)hd) : 0.f;
    bool q_stored = false;
    for (int p0 = lo; p0 < hi; p0 += kTile) {
      const int np = min(kTile, hi - p0), chunks = np * hd / 8;
      uint4 kr = make_uint4(0, 0, 0, 0), vr = make_uint4(0, 0, 0, 0);
      if (t < chunks) {
        if (p0 + t / (hd / 8) == n - 1) {
          // This step's own position: QKV published its k/v (bf16-rounded) with q, ordered by the QKV counter; its
          // cache copy is ordered only for later tokens.
          const float *kv = g.q + (size_t)(g.n_heads + kvh) * hd + (t % (hd / 8)) * 8;
          kr = pack_bf16x8(kv);
          vr = pack_bf16x8(kv + (size_t)g.n_kv * hd);
        } else {
          kr = __ldcg(reinterpret_cast<const uint4 *>(g.kcache + (head_base + p0) * hd) + t);
          vr = __ldcg(reinterpret_cast<const uint4 *>(g.vcache + (head_base + p0) * hd) + t);
        }
      }
      if (!q_stored && owner) q[j * hd + d] = qv;
      q_stored = true;
      if (t < chunks) {
        ktile[t] = kr;
        vtile[t] = vr;
      }
      consumer_sync();
      if (t < G * kTile) {
        const int sj = t / kTile, sp = t % kTile;
        float acc = 0.f;
        if (sp < np) {
          const uint4 *kr = ktile + sp * hd / 8;
          const float4 *qr = reinterpret_cast<const float4 *>(q + sj * hd);
          for (int c = 0; c < hd / 8; ++c) acc += dot8(kr[c], qr[2 * c], qr[2 * c + 1]);
        }
        sc[sj * kTile + sp] = sp < np ? acc : -CUDART_INF_F;
      }
      consumer_sync();
      if (owner) {
        const float *sj = sc + j * kTile;
        float mt = -CUDART_INF_F;
        for (int p = 0; p < np; ++p) mt = fmaxf(mt, sj[p]);
        const float m_new = fmaxf(m, mt), corr = __expf(m - m_new);
        const bf16 *vt = reinterpret_cast<const bf16 *>(vtile);
        float lsum = 0.f, osum = 0.f;
        for (int p = 0; p < np; ++p) {
          const float e = __expf(sj[p] - m_new);
          lsum += e;
          osum = fmaf(e, bf2f(vt[p * hd + d]), osum);
        }
        l = l * corr + lsum;
        o = o * corr + osum;
        m = m_new;
      }
      consumer_sync();
    }
    if (owner) {
      float *part = g.attn_part + ((size_t)h * S + split) * (hd + 2);
      part[d] = o;
      if (d == 0) {
        part[hd] = m;
        part[hd + 1] = l;
      }
    }
    consumer_sync();
    if (t == 0) {
      uint32_t old;
      asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;"
                   : "=r"(old)
                   : "l"(g.attn_arrive + layer * g.n_kv + kvh)
                   : "memory");
      s.flag = ((old + 1) % (uint32_t)S) == 0;
    }
    consumer_sync();
    const bool last = s.flag;
    if (last && owner) {
      const float *base = g.attn_part + (size_t)h * S * (hd + 2);
      // Online merge, 4 splits per round so their loads are in flight together (no per-split register arrays: they
      // pushed the kernel past its 168-register budget).
      float M = -CUDART_INF_F, L = 0.f, O = 0.f;
      for (int s0 = 0; s0 < S_used; s0 += 4) {  // splits past S_used are empty
        float ms[4], ls[4], os[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const bool in = s0 + k < S_used;
          const float *p = base + (in ? s0 + k : 0) * (hd + 2);  // never address past the partials
          ms[k] = in ? __ldcg(p + hd) : -CUDART_INF_F;
          ls[k] = in ? __ldcg(p + hd + 1) : 0.f;
          os[k] = in ? __ldcg(p + d) : 0.f;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (ms[k] == -CUDART_INF_F) continue;
          const float m_new = fmaxf(M, ms[k]), c_old = __expf(M - m_new), c = __expf(ms[k] - m_new);
          L = L * c_old + ls[k] * c;
          O = O * c_old + os[k] * c;
          M = m_new;
        }
      }
      g.attn[h * hd + d] = O / L;
    }
    consumer_sync();
    return last;
  }
};

}  // namespace mk
