// gateup.cuh — MK_OP_GATEUP: RMSNorm + gate and up rows + SiLU.
// Args: a0 = first row, a1 = rows. LayerW.wgu interleaves gate row r and up row r, so the weights are contiguous.
#pragma once
#include "matvec.cuh"

namespace mk {

struct GateupOp {
  MK_HD static int rows(const Globals &, const int *a, int, int) { return 2 * a[1]; }
  MK_HD static const bf16 *first_row(const Globals &g, const int *a, int layer) {
    return g.layers[layer].wgu + (size_t)2 * a[0] * g.dim;
  }
  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int layer, int) {
    rmsnorm_input(g, s, g.resid + (size_t)(2 * layer + 1) * g.dim, nullptr, g.norm_prefetch ? nullptr : g.layers[layer].ffn_norm);
    matvec_rows(g, s, cur, 2 * a[1]);
    const float inv = norm_scale(g, s);
    const bool bulk = bulk_rows(g, a[0], a[1]);
    float *stage = reinterpret_cast<float *>(s.ids);
    for (int k = ctid(); k < a[1]; k += kConsumerThreads) {
      const float gate = s.out[2 * k] * inv, up = s.out[2 * k + 1] * inv;
      const float v = gate / (1.f + expf(-gate)) * up;
      if (bulk) stage[k] = v;
      else g.h[a[0] + k] = v;
    }
    if (bulk) {
      float *const dst[1] = {g.h + a[0]};
      publish_rows(s, stage, dst, 1, a[1], false);
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
