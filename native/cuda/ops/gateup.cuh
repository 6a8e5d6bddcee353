// gateup.cuh — MK_OP_GATEUP: RMSNorm + gate and up rows + SiLU.
// Args: a0 = first row, a1 = rows. Each page holds whole (gate r, up r) pairs in PairLayout order: gate rows, then up.
#pragma once
#include "matvec.cuh"

namespace mk {

struct GateupOp {
  MK_HD static int rows(const Globals &, const int *a, int, int) { return 2 * a[1]; }
  MK_HD static const bf16 *row(const Globals &g, const int *a, int layer, int k) {
    const LayerW &w = g.layers[layer];
    int pair, half;
    PairLayout(g.dim, a[1]).of_vrow(k, &pair, &half);
    return (half ? w.wu : w.wg) + (size_t)(a[0] + pair) * g.dim;
  }
  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int layer, int) {
    rmsnorm_input(g, s, g.resid + (size_t)(2 * layer + 1) * g.dim, nullptr, g.layers[layer].ffn_norm);
    matvec_rows(g, s, cur, 2 * a[1]);
    const PairLayout pl(g.dim, a[1]);
    for (int k = ctid(); k < a[1]; k += kConsumerThreads) {
      const float gate = s.out[pl.vrow(k, 0)], up = s.out[pl.vrow(k, 1)];
      g.h[a[0] + k] = gate / (1.f + expf(-gate)) * up;
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
