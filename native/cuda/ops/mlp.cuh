// mlp.cuh — MK_OP_MLP: RMSNorm + gate/up rows + SiLU + the down projection of exactly those rows of h, added into
// the residual. Args: a0 = first hidden row, a1 = rows.
//
// Fusing DOWN into the instruction that made its slice of h removes a chip-wide dependency per layer (DOWN used to
// wait for 33 SMs' GATEUP): the pages of the down projection stream right behind the gate/up pages, with no wait and
// no HBM refill bubble in between (PERF_LOG v11). The weights come in two contiguous segments: LayerW.wgu rows
// [2 a0, 2 a0 + 2 a1) and LayerW.wdt (Wdown transposed, (hidden, dim)) rows [a0, a0 + a1).
#pragma once
#include "matvec.cuh"

namespace mk {

struct MlpOp {
  MK_HD static int rows(const Globals &, const int *a, int, int) { return 2 * a[1]; }
  MK_HD static const bf16 *first_row(const Globals &g, const int *a, int layer) {
    return g.layers[layer].wgu + (size_t)2 * a[0] * g.dim;
  }
  MK_HD static int rows2(const Globals &, const int *a, int, int) { return a[1]; }
  MK_HD static const bf16 *first_row2(const Globals &g, const int *a, int layer) {
    return g.layers[layer].wdt + (size_t)a[0] * g.dim;
  }

  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int layer, int) {
    const int n = a[1];
    rmsnorm_input(g, s, g.resid + (size_t)(2 * layer + 1) * g.dim, nullptr, g.layers[layer].ffn_norm);
    matvec_rows(g, s, cur, 2 * n);
    const float inv = norm_scale(g, s);
    float *h = reinterpret_cast<float *>(s.ids);  // [n] this instruction's slice of h
    for (int k = ctid(); k < n; k += kConsumerThreads) {
      const float gate = s.out[2 * k] * inv, up = s.out[2 * k + 1] * inv;
      h[k] = gate / (1.f + expf(-gate)) * up;
    }
    consumer_sync();
    // out[j] += sum_k Wdt[a0 + k][j] * h[k]: thread t owns output columns [8t, 8t+8), reads its 16 bytes of every row.
    // Each SM rotates which 16-byte column group a thread owns, so that the 132 SMs' atomic adds at the end do not all
    // hit the same addresses at the same moment.
    const int R = rows_per_page(g.dim), groups = g.dim / 8;
    const bool mine = ctid() < groups;
    const int t = (ctid() + blockIdx.x * 37) % groups;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int first = 0; first < n; first += R) {
      const int nr = min(R, n - first);
      const uint4 *page = reinterpret_cast<const uint4 *>(cur.acquire(s));
      if (mine) {
        for (int r = 0; r < nr; ++r) {
          const uint4 w = page[r * (g.dim / 8) + t];
          const float hv = h[first + r];
          const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            acc[2 * i] = fmaf(__uint_as_float(u[i] << 16), hv, acc[2 * i]);
            acc[2 * i + 1] = fmaf(__uint_as_float(u[i] & 0xffff0000u), hv, acc[2 * i + 1]);
          }
        }
      }
      cur.release(s);
    }
    if (mine) {
      float *dst = g.resid + (size_t)(2 * layer + 2) * g.dim + 8 * t;
#pragma unroll
      for (int i = 0; i < 8; ++i) atomicAdd(dst + i, acc[i]);
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
