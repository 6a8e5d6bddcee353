// oproj.cuh — MK_OP_OPROJ: attention output projection + residual.
// Args: a0 = first row, a1 = rows of Wo. resid[2L+1][r] = x_in(L)[r] + Wo[r].attn, and resid[2L+2][r] gets the same
// value: it is the accumulator that this layer's DOWN pieces add into.
#pragma once
#include "matvec.cuh"

namespace mk {

struct OprojOp {
  MK_HD static int rows(const Globals &, const int *a, int, int) { return a[1]; }
  MK_HD static const bf16 *first_row(const Globals &g, const int *a, int layer) {
    return g.layers[layer].wo + (size_t)a[0] * g.dim;
  }
  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int layer, int step) {
    const float *xf;
    const bf16 *xb;
    layer_input(g, layer, step, &xf, &xb);
    // The residual input is loaded now, in the same L2 round trip as the attention vector, not after the matvec.
    const float x0 = ctid() < a[1] ? layer_input_at(xf, xb, a[0] + ctid()) : 0.f;
    stage_vector(g, s, g.attn);
    matvec_rows(g, s, cur, a[1]);
    float *r1 = g.resid + (size_t)(2 * layer + 1) * g.dim, *r2 = r1 + g.dim;
    const bool bulk = bulk_rows(g, a[0], a[1]);
    float *stage = reinterpret_cast<float *>(s.ids);
    for (int k = ctid(); k < a[1]; k += kConsumerThreads) {
      const int r = a[0] + k;
      const float v = (k < kConsumerThreads ? x0 : layer_input_at(xf, xb, r)) + s.out[k];
      if (bulk) {
        stage[k] = v;
      } else {
        r1[r] = v;
        r2[r] = v;
      }
    }
    if (bulk) {
      float *const dst[2] = {r1 + a[0], r2 + a[0]};
      publish_rows(s, stage, dst, 2, a[1], false);
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
