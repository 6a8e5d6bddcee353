// down.cuh — MK_OP_DOWN: one `dim`-wide column chunk of the down projection, added into the residual.
// Args: a0 = first row, a1 = rows, a2 = chunk c. resid[2L+2][r] += Wd[r, c*dim:(c+1)*dim] . h[c*dim:(c+1)*dim].
// Chunks of one row run on different SMs, hence the atomic add (OPROJ initialised the accumulator).
#pragma once
#include "matvec.cuh"

namespace mk {

struct DownOp {
  MK_HD static int rows(const Globals &, const int *a, int, int) { return a[1]; }
  // LayerW.wd is chunk-major, so the rows of one chunk are contiguous.
  MK_HD static const bf16 *first_row(const Globals &g, const int *a, int layer) {
    return g.layers[layer].wd + ((size_t)a[2] * g.dim + a[0]) * g.dim;
  }
  __device__ static bool run(const Globals &g, Smem &s, PageCursor &cur, const int *a, int layer, int) {
    stage_vector(g, s, g.h + (size_t)a[2] * g.dim);
    matvec_rows(g, s, cur, a[1]);
    float *acc = g.resid + (size_t)(2 * layer + 2) * g.dim;
    if (bulk_rows(g, a[0], a[1])) {  // one bulk reduction (add) of the rows instead of an atomic add each
      float *const dst[1] = {acc + a[0]};
      publish_rows(s, s.out, dst, 1, a[1], true);
    } else {
      for (int k = ctid(); k < a[1]; k += kConsumerThreads) atomicAdd(acc + a[0] + k, s.out[k]);
    }
    consumer_sync();
    return true;
  }
};

}  // namespace mk
