// matvec.cuh — the one matrix-vector product every weight-streaming op is built on.
//
// An op's weights are `n` rows of `dim` bf16, contiguous in global memory (the engine lays the matrices out so). The producer packs R = 16 KiB / (2*dim) rows per
// page; the consumers dot every row with the op's input vector and leave row k's result in s.out[k].
//
// Consumer mapping (dim a power of two in [256, 2048]): one warp does one whole row — row k of the instruction
// belongs to warp k % 8. Lane l takes the row's 16-byte chunks l, l+32, ... (dim/256 of them), so the lane's input
// values sit in registers for the whole instruction, the row is reduced with 5 shuffles, and lane 0 stores it: no
// block barrier per page. Every warp walks every page (arriving on its `empty` barrier even when it has no row in it)
// so the ring's release count stays 8.
//
// Why it matters: the consumers must be several times faster than HBM, so that after a wait on a counter they drain
// the pages prefetched meanwhile before the next wait (PERF_LOG: 3% faster than v2's all-warps-per-row mapping).
#pragma once
#include "llama.cuh"

namespace mk {

constexpr int kMaxChunksPerLane = kMaxDim / 8 / 32;  // 8 for dim 2048

MK_HD int rows_per_page(int dim) { return kPageBytes / (2 * dim); }

// Consumers, one warp per row: s.out[k] = dot(row k, s.xs) for k < n. Ends with the consumers synchronised.
__device__ inline void matvec_rows_by_warp(Smem &s, PageCursor &cur, int n, int dim) {
  const int R = rows_per_page(dim);
  const int cpl = dim / 256;                    // chunks per lane
  const int warp = ctid() >> 5, lane = ctid() & 31;
  const float4 *xs4 = reinterpret_cast<const float4 *>(s.xs);
  float4 xa[kMaxChunksPerLane], xb[kMaxChunksPerLane];
#pragma unroll
  for (int c = 0; c < kMaxChunksPerLane; ++c) {
    if (c < cpl) {
      xa[c] = xs4[2 * (lane + 32 * c)];
      xb[c] = xs4[2 * (lane + 32 * c) + 1];
    }
  }
  for (int first = 0; first < n; first += R) {
    const int nr = min(R, n - first);
    const uint4 *page = reinterpret_cast<const uint4 *>(cur.acquire(s));
    // This warp's rows of the page: instruction row (first + r) % 8 == warp (with R = 4, even pages feed warps 0-3
    // and odd pages warps 4-7, so two pages are in work at once).
    for (int r = (warp - first % kConsumerWarps + kConsumerWarps) % kConsumerWarps; r < nr; r += kConsumerWarps) {
      const uint4 *row = page + r * (dim / 8);
      float acc[kMaxChunksPerLane];
#pragma unroll
      for (int c = 0; c < kMaxChunksPerLane; ++c) acc[c] = c < cpl ? dot8(row[lane + 32 * c], xa[c], xb[c]) : 0.f;
      float v = 0.f;
#pragma unroll
      for (int c = 0; c < kMaxChunksPerLane; ++c) v += acc[c];
      v = warp_sum(v);
      if (lane == 0) s.out[first + r] = v;
    }
    cur.release(s);
  }
  consumer_sync();
}

__device__ __forceinline__ void matvec_rows(const Globals &g, Smem &s, PageCursor &cur, int n) {
  matvec_rows_by_warp(s, cur, n, g.dim);
}

}  // namespace mk
