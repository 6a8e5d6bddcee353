// qkv.cuh — MK_OP_QKV: RMSNorm + fused Q/K/V rows + RoPE (llama3 frequencies) + KV-cache append.
// Args: a0 = first pair, a1 = pairs. Pair p is the two rows head*hd + i and head*hd + i + hd/2 (head = p / (hd/2),
// i = p % (hd/2)) of the fused [q; k; v] output, the two values RoPE rotates together (HF rotate_half); LayerW.wqkv
// stores them as rows 2p and 2p+1, so the instruction's weights are one contiguous block.
#pragma once
#include "matvec.cuh"

namespace mk {

struct QkvOp {
  // Pair p's first row (half 0) and second row (half 1) in the fused [q; k; v] output.
  MK_HD static int fused_of(const Globals &g, int pair, int half) {
    const int half_hd = g.hd / 2;
    return (pair / half_hd) * g.hd + pair % half_hd + half * half_hd;
  }
  MK_HD static int rows(const Globals &, const int *a, int, int) { return 2 * a[1]; }
  MK_HD static const bf16 *first_row(const Globals &g, const int *a, int layer) {
    return g.layers[layer].wqkv + (size_t)2 * a[0] * g.dim;
  }

  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int layer, int step) {
    const float *xf;
    const bf16 *xb;
    layer_input(g, layer, step, &xf, &xb);
    const int half_hd0 = g.hd / 2;
    // This thread's RoPE frequency, loaded before the norm so it is not one more round trip after the matvec.
    const float freq0 = ctid() < a[1] ? __ldg(g.inv_freq + (a[0] + ctid()) % half_hd0) : 0.f;
    rmsnorm_input(g, s, xf, xb, g.norm_prefetch ? nullptr : g.layers[layer].attn_norm);
    matvec_rows(g, s, cur, 2 * a[1]);
    const float inv = norm_scale(g, s);
    const int pos = g.start_pos + step;
    const int q_rows = g.n_heads * g.hd, kv_rows = g.n_kv * g.hd, half_hd = g.hd / 2;
    // Every output also goes to g.q[fused row]; when the pairs are whole 16-byte groups they are staged in shared
    // memory and published with bulk stores (one per half-head run), which needs no release fence (vm.cuh).
    const bool bulk = g.bulk_publish && (a[0] & 3) == 0 && (a[1] & 3) == 0 && (half_hd & 3) == 0;
    float *stage = reinterpret_cast<float *>(s.ids);
    for (int k = ctid(); k < a[1]; k += kConsumerThreads) {
      const int pair = a[0] + k, fr = fused_of(g, pair, 0), i = pair % half_hd;
      float x1 = s.out[2 * k] * inv, x2 = s.out[2 * k + 1] * inv;
      if (fr < q_rows + kv_rows) {  // q and k heads are rotated, v is not
        float sn, cs;
        sincosf((float)pos * (k < kConsumerThreads ? freq0 : g.inv_freq[i]), &sn, &cs);
        const float r1 = x1 * cs - x2 * sn, r2 = x2 * cs + x1 * sn;
        x1 = r1;
        x2 = r2;
      }
      if (fr >= q_rows) {  // k or v: the cache holds bf16, and this step's attention reads the same rounding
        const bool is_k = fr < q_rows + kv_rows;
        const int off = fr - q_rows - (is_k ? 0 : kv_rows), kvh = off / g.hd, d = off % g.hd;
        bf16 *cache = is_k ? g.kcache : g.vcache;
        bf16 *dst = cache + (((size_t)layer * g.n_kv + kvh) * g.ctx + pos) * g.hd + d;
        const bf16 b1 = __float2bfloat16_rn(x1), b2 = __float2bfloat16_rn(x2);
        dst[0] = b1;
        dst[half_hd] = b2;
        x1 = bf2f(b1);
        x2 = bf2f(b2);
      }
      if (bulk) {
        // Run layout of the stage: for each head the piece touches, its first-half rows then its second-half rows.
        const int h = pair / half_hd, seg0 = max(a[0], h * half_hd);
        const int seg_len = min(a[0] + a[1], (h + 1) * half_hd) - seg0, base = 2 * (seg0 - a[0]);
        stage[base + pair - seg0] = x1;
        stage[base + seg_len + pair - seg0] = x2;
      } else {
        g.q[fr] = x1;
        g.q[fr + half_hd] = x2;
      }
    }
    if (bulk) {
      fence_smem_to_bulk();
      consumer_sync();
      if (ctid() == 0) {
        for (int h = a[0] / half_hd; h * half_hd < a[0] + a[1]; ++h) {
          const int seg0 = max(a[0], h * half_hd), seg_len = min(a[0] + a[1], (h + 1) * half_hd) - seg0;
          const int base = 2 * (seg0 - a[0]), row0 = fused_of(g, seg0, 0);
          bulk_store(g.q + row0, stage + base, 4u * seg_len);
          bulk_store(g.q + row0 + half_hd, stage + base + seg_len, 4u * seg_len);
        }
        bulk_commit_wait();
        s.published = 1;
      }
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
