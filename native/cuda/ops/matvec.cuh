// matvec.cuh — the one matrix-vector product every weight-streaming op is built on.
//
// An op describes its weights as a list of "virtual rows", each `dim` bf16 wide and contiguous in global memory
// (a real matrix row, or for DOWN a `dim`-wide slice of a row). The producer packs R = 16 KiB / (2*dim) rows per
// page; the consumers dot every row with the op's input vector and leave row k's result in s.out[k].
//
// Consumer mapping (dim a power of two in [256, 2048]): one warp does one whole row — row k of the instruction
// belongs to warp k % 8. Lane l takes the row's 16-byte chunks l, l+32, ... (dim/256 of them), so the lane's input
// values sit in registers for the whole instruction, the row is reduced with 5 shuffles, and lane 0 stores it: no
// block barrier per page. Every warp walks every page (arriving on its `empty` barrier even when it has no row in it)
// so the ring's release count stays 8.
//
// Why it matters (PERF_LOG v2 -> v5): the consumers must be several times faster than HBM, so that after a wait on a
// counter they drain the pages prefetched meanwhile before the next wait.
#pragma once
#include "llama.cuh"

namespace mk {

constexpr int kMaxChunksPerLane = kMaxDim / 8 / 32;  // 8 for dim 2048

MK_HD int rows_per_page(int dim) { return kPageBytes / (2 * dim); }

// Ops whose rows come in pairs (QKV: the two RoPE halves; GATEUP: gate and up) lay each page out as the first rows of
// its pairs, then their second rows, so that consecutive pairs are contiguous runs the producer copies in one go.
struct PairLayout {
  int R, P, npairs;  // rows per page, pairs per full page, pairs of the instruction
  MK_HD PairLayout(int dim, int n) : R(rows_per_page(dim)), P(rows_per_page(dim) / 2), npairs(n) {}
  MK_HD int pairs_in_page(int q) const { return P < npairs - q * P ? P : npairs - q * P; }
  // Virtual row k -> (pair, half).
  MK_HD void of_vrow(int k, int *pair, int *half) const {
    const int q = k / R, j = k % R, pip = pairs_in_page(q);
    *half = j >= pip;
    *pair = q * P + (*half ? j - pip : j);
  }
  // (pair, half) -> virtual row.
  MK_HD int vrow(int m, int half) const {
    const int q = m / P;
    return q * R + half * pairs_in_page(q) + m % P;
  }
};

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

// Sum each of a[0..3] over the 32 lanes; the total of a[r] ends in lane 8*r.
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

// Consumers, every warp on every row (v2): thread t takes chunk column t % C of 4 rows per page, reduces the 4 rows
// with 6 shuffles, and the warps' (row, segment) partials are summed after a barrier per page.
__device__ inline void matvec_rows_split(Smem &s, PageCursor &cur, int n, int dim) {
  const int R = rows_per_page(dim);
  const int C = dim / 8;
  const int rows_per_sweep = kConsumerThreads / C;
  const int segs = C / 32;
  const int t = ctid(), col = t & (C - 1), row0 = t / C, lane = t & 31;
  const float4 *xs4 = reinterpret_cast<const float4 *>(s.xs);
  const float4 xa = xs4[2 * col], xb = xs4[2 * col + 1];
  for (int first = 0, page_no = 0; first < n; first += R, ++page_no) {
    const int nr = min(R, n - first);
    const uint4 *page = reinterpret_cast<const uint4 *>(cur.acquire(s));
    const uint4 w0 = page[(row0 + 0 * rows_per_sweep) * C + col];
    const uint4 w1 = page[(row0 + 1 * rows_per_sweep) * C + col];
    const uint4 w2 = page[(row0 + 2 * rows_per_sweep) * C + col];
    const uint4 w3 = page[(row0 + 3 * rows_per_sweep) * C + col];
    const float p0 = dot8(w0, xa, xb), p1 = dot8(w1, xa, xb), p2 = dot8(w2, xa, xb), p3 = dot8(w3, xa, xb);
    cur.release(s);
    const float sum = warp_sum4(p0, p1, p2, p3);
    float *red = s.red[page_no & 1];
    if ((lane & 7) == 0) red[(row0 + (lane >> 3) * rows_per_sweep) * segs + (col >> 5)] = sum;
    consumer_sync();
    if (t < nr) {
      float v = 0.f;
      for (int k = 0; k < segs; ++k) v += red[t * segs + k];
      s.out[first + t] = v;
    }
  }
  consumer_sync();
}

// The matvec the launch asked for (Globals.matvec_mode: 0 split across warps, 1 one warp per row).
__device__ __forceinline__ void matvec_rows(const Globals &g, Smem &s, PageCursor &cur, int n) {
  if (g.matvec_mode == 1) matvec_rows_by_warp(s, cur, n, g.dim);
  else matvec_rows_split(s, cur, n, g.dim);
}

}  // namespace mk
