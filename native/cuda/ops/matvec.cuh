// matvec.cuh — the one matrix-vector product every weight-streaming op is built on.
//
// An op describes its weights as a list of "virtual rows", each `dim` bf16 wide and contiguous in global memory
// (a real matrix row, or for DOWN a `dim`-wide slice of a row). The producer packs R = 16 KiB / (2*dim) rows per
// page; the consumers dot every row with the op's input vector and leave row k's result in s.out[k].
//
// Consumer mapping (dim a power of two in [256, 2048]): a row is C = dim/8 chunks of 16 bytes; thread t always takes
// chunk column t % C, of rows t / C + k * (256 / C), k = 0..3 — so every thread does exactly 4 rows of a full page,
// its 8 input values sit in registers for the whole instruction, and the 32 lanes of a warp always share a row.
// The 4 per-row partial sums of a warp are reduced together with 6 shuffles (instead of 4 x 5), and a warp's result
// for (row, 256-column segment) is stored once in s.red: a deterministic sum, no atomics.
//
// Why it matters: the consumers must be several times faster than HBM, so that after a wait on a counter they drain
// the pages the producer prefetched meanwhile and the ring is free again before the next wait.
#pragma once
#include "llama.cuh"

namespace mk {

constexpr int kRowsPerThread = 4;  // rows of a full page each consumer thread handles

__device__ __forceinline__ int rows_per_page(int dim) { return kPageBytes / (2 * dim); }

// Sum each of a[0..3] over the 32 lanes; the total of row r ends in lane 8*r.
__device__ __forceinline__ float warp_sum4(float a0, float a1, float a2, float a3) {
  const int lane = threadIdx.x & 31;
  const bool hi16 = lane & 16, hi8 = lane & 8;
  float b0 = hi16 ? a2 : a0, b1 = hi16 ? a3 : a1;
  b0 += __shfl_xor_sync(0xffffffffu, hi16 ? a0 : a2, 16);
  b1 += __shfl_xor_sync(0xffffffffu, hi16 ? a1 : a3, 16);
  float c = hi8 ? b1 : b0;
  c += __shfl_xor_sync(0xffffffffu, hi8 ? b0 : b1, 8);
  c += __shfl_xor_sync(0xffffffffu, c, 4);
  c += __shfl_xor_sync(0xffffffffu, c, 2);
  c += __shfl_xor_sync(0xffffffffu, c, 1);
  return c;
}

// Consumers: s.out[k] = dot(row k, s.xs) for k < n. Ends with the consumers synchronised.
__device__ inline void matvec_rows(Smem &s, PageCursor &cur, int n, int dim) {
  const int R = rows_per_page(dim);
  const int C = dim / 8;                        // chunks per row (power of two, 32..256)
  const int rows_per_sweep = kConsumerThreads / C;
  const int segs = C / 32;                      // warps per row
  const int t = ctid(), col = t & (C - 1), row0 = t / C, lane = t & 31;
  const float4 *xs4 = reinterpret_cast<const float4 *>(s.xs);
  const float4 xa = xs4[2 * col], xb = xs4[2 * col + 1];
  for (int first = 0, page_no = 0; first < n; first += R, ++page_no) {
    const int nr = min(R, n - first);
    const uint4 *page = reinterpret_cast<const uint4 *>(cur.acquire(s));
    // Rows beyond nr hold stale bytes: computed, never stored.
    const uint4 w0 = page[(row0 + 0 * rows_per_sweep) * C + col];
    const uint4 w1 = page[(row0 + 1 * rows_per_sweep) * C + col];
    const uint4 w2 = page[(row0 + 2 * rows_per_sweep) * C + col];
    const uint4 w3 = page[(row0 + 3 * rows_per_sweep) * C + col];
    const float p0 = dot8(w0, xa, xb), p1 = dot8(w1, xa, xb), p2 = dot8(w2, xa, xb), p3 = dot8(w3, xa, xb);
    cur.release(s);
    const float sum = warp_sum4(p0, p1, p2, p3);
    float *red = s.red[page_no & 1];
    if ((lane & 7) == 0) {
      const int row = row0 + (lane >> 3) * rows_per_sweep;
      red[row * segs + (col >> 5)] = sum;
    }
    consumer_sync();
    if (t < nr) {
      float v = 0.f;
      for (int k = 0; k < segs; ++k) v += red[t * segs + k];
      s.out[first + t] = v;
    }
  }
  consumer_sync();
}

}  // namespace mk
