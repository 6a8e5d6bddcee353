// matvec.cuh — the one matrix-vector product every weight-streaming op is built on.
//
// An op describes its weights as a list of "virtual rows", each `dim` bf16 wide and contiguous in global memory
// (a real matrix row, or for DOWN a `dim`-wide slice of a row). The producer packs floor(16 KiB / (2*dim)) rows per
// page; the consumers dot every row with xs (the op's input vector in shared memory) and leave row k's result in
// s.out[k].
//
// Consumer mapping: a page is a flat array of 16-byte chunks (8 bf16). Thread t takes chunks t, t+256, ...; dim is a
// power of two >= 256, so the 32 lanes of a warp always sit in one row, and a warp-reduced partial is written once per
// (row, 256-element segment) into s.red — a deterministic sum, no atomics.
#pragma once
#include "llama.cuh"

namespace mk {

__device__ __forceinline__ int rows_per_page(int dim) { return kPageBytes / (2 * dim); }

// Producer: stream `n` virtual rows, row k starting at row_fn(k). Returns false when told to stop.
template <typename RowFn>
__device__ inline bool issue_rows(Smem &s, PageIssuer &iss, int n, int dim, RowFn row_fn) {
  const int R = rows_per_page(dim);
  const uint32_t row_bytes = 2u * dim;
  for (int first = 0; first < n; first += R) {
    const int nr = min(R, n - first);
    uint8_t *page;
    uint64_t *bar;
    if (!iss.begin(s, &page, &bar, nr * row_bytes)) return false;
    for (int j = 0; j < nr; ++j) bulk_load(page + j * row_bytes, row_fn(first + j), row_bytes, bar);
    iss.end(s);
  }
  return true;
}

// Consumers: s.out[k] = dot(row k, xs) for k < n. Ends with the consumers synchronised.
__device__ inline void matvec_rows(Smem &s, PageCursor &cur, int n, int dim) {
  const int R = rows_per_page(dim);
  const int chunks_per_row = dim / 8;        // power of two
  const int groups_per_row = chunks_per_row / 32;
  const int lane = ctid() & 31;
  const float4 *xs4 = reinterpret_cast<const float4 *>(s.xs);
  for (int first = 0, page_no = 0; first < n; first += R, ++page_no) {
    const int nr = min(R, n - first);
    const uint4 *page = reinterpret_cast<const uint4 *>(cur.acquire(s));
    float *red = s.red[page_no & 1];
    const int total = nr * chunks_per_row;
    for (int f = ctid(); f < total; f += kConsumerThreads) {
      const int col = f & (chunks_per_row - 1);
      const float acc = warp_sum(dot8(page[f], xs4[2 * col], xs4[2 * col + 1]));
      if (lane == 0) red[f >> 5] = acc;
    }
    cur.release(s);
    consumer_sync();
    if (ctid() < nr) {
      float v = 0.f;
      for (int k = 0; k < groups_per_row; ++k) v += red[ctid() * groups_per_row + k];
      s.out[first + ctid()] = v;
    }
  }
  consumer_sync();
}

}  // namespace mk
