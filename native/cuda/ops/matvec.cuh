// matvec.cuh — the one matrix-vector product every weight-streaming op is built on.
//
// An op's weights are `n` rows of `dim` bf16, contiguous in global memory (the engine lays the matrices out so). The
// producer packs R = 16 KiB / (2*dim) rows per page; the consumers dot every row with the op's input vector and leave
// row k's result in s.out[k]. dim is a power of two in [256, 2048]: lane l takes the row's 16-byte chunks l, l+32, ...
// (dim/256 of them).
//
// Pages map to the 8 consumer warps one page per warp: page j of the instruction belongs to warp j % 8, which reads
// its R rows, reduces four rows at once with 6 shuffles and releases the page alone (one arrival that counts for all
// 8 warps). Eight pages are in work at once and each warp pays the page protocol once per page it computes.
// Why it matters: the consumers must be several times faster than HBM, so that after a wait on a counter they drain
// the pages prefetched meanwhile before the next wait. PERF_LOG v14: with no weight copies at all, one warp per row
// (every warp taking every page) took 789 µs of the 859 µs with them. That mapping was removed in v20: it measured
// slower for the short QKV and OPROJ instructions too, and its 64 registers of input values made any new code spill.
#pragma once
#include "llama.cuh"
#include "../../program.h"

namespace mk {

constexpr int kMaxChunksPerLane = kMaxDim / 8 / 32;  // 8 for dim 2048

MK_HD int rows_per_page(int dim) { return kPageBytes / (2 * dim); }

// Sum v[0..3] over the warp, four rows at once: lane l ends with row 2*bit4(l) + bit3(l) summed over all 32 lanes
// (a butterfly that halves the values in flight at the first two levels: 6 shuffles instead of 20).
__device__ __forceinline__ float warp_sum4(float v0, float v1, float v2, float v3, int lane) {
  const bool hi16 = lane & 16, hi8 = lane & 8;
  const float a0 = (hi16 ? v2 : v0) + __shfl_xor_sync(0xffffffffu, hi16 ? v0 : v2, 16);
  const float a1 = (hi16 ? v3 : v1) + __shfl_xor_sync(0xffffffffu, hi16 ? v1 : v3, 16);
  float b = (hi8 ? a1 : a0) + __shfl_xor_sync(0xffffffffu, hi8 ? a0 : a1, 8);
  b += __shfl_xor_sync(0xffffffffu, b, 4);
  b += __shfl_xor_sync(0xffffffffu, b, 2);
  b += __shfl_xor_sync(0xffffffffu, b, 1);
  return b;
}

// One lane's share of four consecutive rows, chunk by chunk. The input chunks are read from shared memory here (one
// 32-byte read serves four rows) rather than held in 64 registers for the whole instruction: the kernel is at its
// 168-register cooperative-launch limit.
__device__ __forceinline__ void rows4_dot(const uint4 *row, int stride, int lane, int cpl, const float4 *xs4,
                                          float v[4]) {
  v[0] = v[1] = v[2] = v[3] = 0.f;
#pragma unroll
  for (int c = 0; c < kMaxChunksPerLane; ++c) {
    if (c < cpl) {
      const int o = lane + 32 * c;
      const float4 xa = xs4[2 * o], xb = xs4[2 * o + 1];
      v[0] += dot8(row[o], xa, xb);
      v[1] += dot8(row[o + stride], xa, xb);
      v[2] += dot8(row[o + 2 * stride], xa, xb);
      v[3] += dot8(row[o + 3 * stride], xa, xb);
    }
  }
}

// Wait until page `index` of the stream is in `slot` (its fill has the given parity). Another warp owns the slot's
// previous page and may not have seen it land yet, and parity cannot tell two fills apart while the older one is
// incomplete: once the producer has issued `index` (Smem.issued), the older fill was released, so it had landed.
// A page that never comes (a stalled producer) times out like a counter wait: the launch aborts and the host reports
// the instruction. Returns false then.
__device__ __noinline__ bool page_wait_slow(const Globals &g, Smem &s, uint32_t index, uint32_t slot,
                                            uint32_t phase) {
  const uint64_t t0 = global_ns();
  for (uint32_t spin = 1;; ++spin) {
    if ((int)(s.issued - index) > 0 && mbar_try_wait(&s.full[slot], phase)) return true;
    if ((spin & 255) == 0) {
      if (*(volatile int *)&g.ctrl->abort) return false;
      if (global_ns() - t0 > g.timeout_ns) {
        const int i = s.instr_now;
        if (atomicCAS(&g.ctrl->err_claimed, 0, 1) == 0) {
          g.ctrl->err_sm = blockIdx.x;
          g.ctrl->err_instr = i;
          g.ctrl->err_op = g.instr[i * MK_INSTR_WORDS + MK_I_OP];
          g.ctrl->err_layer = g.instr[i * MK_INSTR_WORDS + MK_I_LAYER];
          g.ctrl->err_counter = -1;  // a weight page, not a counter
          g.ctrl->err_step = s.step_now;
          g.ctrl->err_value = s.issued;
          g.ctrl->err_required = index + 1;
          __threadfence();
        }
        atomicExch(&g.ctrl->abort, 1);
        return false;
      }
    }
  }
}
__device__ __forceinline__ bool page_wait(const Globals &g, Smem &s, uint32_t index, uint32_t slot, uint32_t phase) {
  if ((int)(s.issued - index) > 0 && mbar_try_wait(&s.full[slot], phase)) return true;
  return page_wait_slow(g, s, index, slot, phase);
}

// Consumers, one warp per page: s.out[k] = dot(row k, s.xs) for k < n. Ends with the consumers synchronised.
__device__ inline void matvec_rows_by_page(const Globals &g, Smem &s, PageCursor &cur, int n, int dim) {
  const int R = rows_per_page(dim);
  const int cpl = dim / 256;
  const int warp = ctid() >> 5, lane = ctid() & 31;
  const float4 *xs4 = reinterpret_cast<const float4 *>(s.xs);
  const uint32_t np = s.npages;
  const int npg = (n + R - 1) / R;
  PageCursor::note_mid(s);  // MKCHAT_TRACE: the input vector is staged, the matvec begins
  uint32_t slot = cur.slot + warp, phase = cur.phase;
  while (slot >= np) {
    slot -= np;
    phase ^= 1;
  }
  for (int pg = warp; pg < npg; pg += kConsumerWarps) {
    if (!page_wait(g, s, cur.index + pg, slot, phase)) break;  // the launch is aborting
    if (pg == 0) PageCursor::note_first_page(s);
    const uint4 *page = reinterpret_cast<const uint4 *>(s.pages[slot]);
    const int first = pg * R, nr = min(R, n - first);
    // Rows past nr (a short last page) are still inside the page (R is a multiple of 4): computed on stale bytes,
    // never mixed with real rows (each row has its own reduction tree) and never stored.
    for (int r = 0; r < nr; r += 4) {
      float v4[4];
      rows4_dot(page + r * (dim / 8), dim / 8, lane, cpl, xs4, v4);
      const float v = warp_sum4(v4[0], v4[1], v4[2], v4[3], lane);
      const int k = r + ((lane >> 4) << 1) + ((lane >> 3) & 1);
      if ((lane & 7) == 0 && k < nr) s.out[first + k] = v;
    }
    __syncwarp();
    if (lane == 0) mbar_arrive_n(&s.empty[slot], kConsumerWarps);
    slot += kConsumerWarps;
    while (slot >= np) {
      slot -= np;
      phase ^= 1;
    }
  }
  cur.advance(s, npg);
  consumer_sync();
}

// Every weight-streaming op's matvec. The diagnostic modes (vm.cuh kDiag*) replace it by zeros, with or without taking
// the pages.
__device__ __forceinline__ void matvec_rows(const Globals &g, Smem &s, PageCursor &cur, int n) {
  if (g.diag & (kDiagNoPages | kDiagNoMath)) {
    if (!(g.diag & kDiagNoPages)) {
      for (int first = 0; first < n; first += rows_per_page(g.dim)) {
        cur.acquire(s);
        cur.release(s);
      }
    }
    for (int k = ctid(); k < n; k += kConsumerThreads) s.out[k] = 0.f;
    consumer_sync();
    return;
  }
  matvec_rows_by_page(g, s, cur, n, g.dim);
}

}  // namespace mk
