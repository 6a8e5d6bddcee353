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
    stage_vector(g, s, g.attn);
    matvec_rows(g, s, cur, a[1]);
    const float *xf;
    const bf16 *xb;
    layer_input(g, layer, step, &xf, &xb);
    float *r1 = g.resid + (size_t)(2 * layer + 1) * g.dim, *r2 = r1 + g.dim;
    for (int k = ctid(); k < a[1]; k += kConsumerThreads) {
      const int r = a[0] + k;
      const float v = layer_input_at(xf, xb, r) + s.out[k];
      r1[r] = v;
      r2[r] = v;
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
