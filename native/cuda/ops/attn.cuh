// attn.cuh — MK_OP_ATTN: decode attention for one kv head over one split of the context, flash-decoding style.
// Args: a0 = kv head g, a1 = split s (of g.attn_splits). The split's partial (o unnormalised, m, l) of every q head
// of the group goes to attn_part; the split that arrives last for (layer, g) merges all partials into attn and is the
// only one that signals, so ATTN's counter counts kv heads, not splits.
//
// Attention sits on the critical path of every layer, so it is written for latency: K and V of a tile of positions
// are staged in shared memory with one round of 16-byte cp.async copies (the positions of a kv head are contiguous in
// the cache), the first tile's before the instruction's counter wait; every (head, position) score is one thread's
// dot product, and the merge loads all partials at once.
// Thread (j, d) = (q head of the group, dimension) owns one output element; the host requires G * hd <= 256.
#pragma once
#include <math_constants.h>
#include "matvec.cuh"
#include "../../program.h"

namespace mk {

constexpr int kTile = 32;       // most positions per staged K/V tile

// Positions per tile: a tile's K and V fill at most s.xs (8 KiB: 32 positions at hd 64, 16 at hd 128), one 16-byte
// chunk per consumer thread.
__device__ __forceinline__ int tile_positions(int hd) { return min(kTile, (int)sizeof(Smem::xs) / (4 * hd)); }

// Eight fp32 values that are exactly bf16 (read through L2) back into one 16-byte cache chunk.
__device__ __forceinline__ uint4 pack_bf16x8(const float *f) {
  const float4 a = __ldcg(reinterpret_cast<const float4 *>(f)), b = __ldcg(reinterpret_cast<const float4 *>(f) + 1);
  const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  uint32_t u[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) u[i] = (__float_as_uint(v[2 * i]) >> 16) | (__float_as_uint(v[2 * i + 1]) & 0xffff0000u);
  return make_uint4(u[0], u[1], u[2], u[3]);
}

constexpr int kSinglePositionsPerWarp = 16;  // AttnOp::run_single: 8 warps x 16 = 128 positions at most

// Whether a context of n positions is attended by split 0 alone, its 8 warps taking 16 positions each (AttnOp::
// run_single): no partials through global memory, no arrival, no merge by another SM. The shape must be hd 64 with at
// most 4 q heads per kv head (Llama-3.2-1B: 4); Globals.attn_single_max bounds n (MKCHAT_ATTN_SINGLE_MAX, 0: never).
__device__ __forceinline__ bool attn_single(const Globals &g, int n) {
  return n <= g.attn_single_max && n <= kConsumerWarps * kSinglePositionsPerWarp && g.hd == 64 &&
         g.n_heads <= 4 * g.n_kv;
}

// The context positions [lo, hi) of one split at this step, n = positions in the context (program.h MK_OP_ATTN).
struct AttnSpan {
  int n, lo, hi, used;  // used: splits in use at this context length (the rest are empty)
  bool single;          // attn_single: split 0 takes the whole context, the other splits do nothing
  __device__ AttnSpan(const Globals &g, int split, int step) {
    n = g.start_pos + step + 1;
    single = attn_single(g, n);
    used = single ? 1 : min(g.attn_splits, (n + MK_ATTN_SPLIT_POSITIONS - 1) / MK_ATTN_SPLIT_POSITIONS);
    const int chunk = (n + used - 1) / used;
    lo = min(split * chunk, n);
    hi = min(lo + chunk, n);
  }
};

struct AttnOp {
  __device__ static int rows(const Globals &, const int *, int, int) { return 0; }  // streams no weights

  // Where 16-byte chunk c (of cpp per position) of tile position p of K sits in the tile: rows are 128 bytes apart at
  // hd 64, so unswizzled the score threads of a warp, which read the same chunk of consecutive positions, would all
  // hit the same four banks.
  __device__ __forceinline__ static int kslot(int p, int c, int cpp) { return p * cpp + (c ^ (p & (min(8, cpp) - 1))); }

  // K and V of the tile at p0 into s.xs with cp.async, thread t taking chunk t, except this step's own position,
  // which QKV publishes with q (ordered by the QKV counter, not yet by anything for the cache).
  __device__ static void issue_tile(const Globals &g, Smem &s, size_t head_base, int n, int hi, int p0) {
    const int hd = g.hd, cpp = hd / 8, t = ctid(), np = min(tile_positions(hd), hi - p0);
    if (t >= np * cpp || p0 + t / cpp == n - 1) return;
    const size_t at = (head_base + p0) * hd;
    uint4 *ktile = reinterpret_cast<uint4 *>(s.xs), *vtile = ktile + np * cpp;
    cp_async16(ktile + kslot(t / cpp, t % cpp, cpp), reinterpret_cast<const uint4 *>(g.kcache + at) + t);
    cp_async16(vtile + t, reinterpret_cast<const uint4 *>(g.vcache + at) + t);
  }

  // Before the QKV counter wait (megakernel.cu, g.attn_prefetch): the split's first tile of older positions needs
  // nothing from this step (the step gate ordered it for this token), so the wait hides its latency.
  __device__ static void prefetch(const Globals &g, Smem &s, const int *a, int layer, int step) {
    const AttnSpan sp(g, a[1], step);
    const size_t head_base = ((size_t)layer * g.n_kv + a[0]) * g.ctx;
    if (!sp.single && sp.lo < sp.hi) issue_tile(g, s, head_base, sp.n, sp.hi, sp.lo);
  }

  // The whole context of kv head `kvh` (n <= 128 positions, hd 64) for its q heads j0 .. j0 + nh - 1 (nh <= 4) on
  // this SM, written for latency: one round of loads (q, every position's K row and V column pair), then warp w scores
  // positions 16w..16w+15 against the heads (lane l and lane l + 16 each dot half of position 16w + l's K row),
  // softmaxes and P.Vs them (lane l owns dimensions 2l, 2l+1), and the 8 warp partials are merged in shared memory. This step's own position comes
  // from the QKV output (as in the tile loop). Registers are budgeted: a spill here goes to L2 (shared memory leaves L1
  // ~29 KiB), and 32 positions per warp with whole K rows per lane cost 250 µs per token that way (PERF_LOG v20).
  template <int kMaxG>  // most heads at once (1: one head per SM, no dead head loops; 4: any nh <= 4)
  __device__ static void run_single(const Globals &g, Smem &s, int kvh, int j0, int nh, int layer, int n) {
    constexpr int hd = 64, kPos = kSinglePositionsPerWarp;
    const int G = kMaxG == 1 ? 1 : nh, t = ctid(), warp = t >> 5, lane = t & 31, half = lane >> 4;
    const int h0 = kvh * (g.n_heads / g.n_kv) + j0;  // first q head
    const int p0 = warp * kPos, npw = max(0, min(kPos, n - p0)), p = p0 + (lane & (kPos - 1));
    const bool scorer = (lane & (kPos - 1)) < npw;
    const size_t head_base = ((size_t)layer * g.n_kv + kvh) * g.ctx;
    const float *cur_k = g.q + (size_t)(g.n_heads + kvh) * hd, *cur_v = cur_k + (size_t)g.n_kv * hd;
    float *q = s.out;                                          // [G][hd], pre-scaled
    float4 *ew = reinterpret_cast<float4 *>(s.ids);            // [8 warps][16 positions] softmax weights, G <= 4
    float *po = s.xs;                                          // [8 warps][G][hd] partial outputs
    float *pm = s.scratch, *pl = pm + kConsumerWarps * kMaxG;  // [8 warps][G] partial max, sum
    // Loads, all in flight together: q, this lane's half K row (chunks 4 half .. 4 half + 3), the warp's V pairs.
    const float qv = t < G * hd ? __ldcg(g.q + (size_t)h0 * hd + t) * rsqrtf((float)hd) : 0.f;
    uint4 k[4];
    if (scorer && p != n - 1) {
      const uint4 *kr = reinterpret_cast<const uint4 *>(g.kcache + (head_base + p) * hd) + 4 * half;
#pragma unroll
      for (int c = 0; c < 4; ++c) k[c] = __ldcg(kr + c);
    } else if (scorer) {
#pragma unroll
      for (int c = 0; c < 4; ++c) k[c] = pack_bf16x8(cur_k + 8 * (4 * half + c));
    }
    uint32_t v[kPos];  // V[p0 + i][2 lane, 2 lane + 1] as a bf16 pair
    const uint32_t *vc = reinterpret_cast<const uint32_t *>(g.vcache + (head_base + p0) * hd) + lane;
#pragma unroll
    for (int i = 0; i < kPos; ++i) v[i] = i < npw && p0 + i != n - 1 ? __ldcg(vc + i * (hd / 2)) : 0u;
    if (p0 <= n - 1 && n - 1 < p0 + kPos) {
      const float2 cv = __ldcg(reinterpret_cast<const float2 *>(cur_v) + lane);
      const uint32_t packed = (__float_as_uint(cv.x) >> 16) | (__float_as_uint(cv.y) & 0xffff0000u);
#pragma unroll
      for (int i = 0; i < kPos; ++i) {
        if (p0 + i == n - 1) v[i] = packed;
      }
    }
    if (t < G * hd) q[t] = qv;
    consumer_sync();
    PageCursor::note_mid(s);  // MKCHAT_TRACE: the loads have landed
    // Scores of this lane's position against the G heads (two half rows, summed across the half-warps), then the
    // warp's softmax weights over its 16 positions.
    float sc[kMaxG], m[kMaxG], l[kMaxG];
#pragma unroll
    for (int j = 0; j < kMaxG; ++j) sc[j] = 0.f;
    const float4 *q4 = reinterpret_cast<const float4 *>(q) + 8 * half;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
#pragma unroll
      for (int j = 0; j < kMaxG; ++j) {
        if (j < G) sc[j] += dot8(k[c], q4[j * (hd / 4) + 2 * c], q4[j * (hd / 4) + 2 * c + 1]);
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxG; ++j) {
      sc[j] += __shfl_xor_sync(0xffffffffu, sc[j], 16);
      if (j >= G || !scorer) sc[j] = -CUDART_INF_F;
      float mx = sc[j];
#pragma unroll
      for (int o = kPos / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      m[j] = mx;
      sc[j] = scorer && j < G ? __expf(sc[j] - mx) : 0.f;
      float sum = sc[j];
#pragma unroll
      for (int o = kPos / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      l[j] = sum;
    }
    if (half == 0) {
      float e4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < kMaxG; ++j) e4[j] = sc[j];
      ew[warp * kPos + lane] = make_float4(e4[0], e4[1], e4[2], e4[3]);
    }
    __syncwarp();
    // P.V over the warp's positions: lane owns dimensions 2 lane and 2 lane + 1 of every head.
    float o[kMaxG][2];
#pragma unroll
    for (int j = 0; j < kMaxG; ++j) o[j][0] = o[j][1] = 0.f;
#pragma unroll
    for (int i = 0; i < kPos; ++i) {
      if (i < npw) {
        const float4 e = ew[warp * kPos + i];
        const float v0 = __uint_as_float(v[i] << 16), v1 = __uint_as_float(v[i] & 0xffff0000u);
        const float ej[4] = {e.x, e.y, e.z, e.w};
#pragma unroll
        for (int j = 0; j < kMaxG; ++j) {
          o[j][0] = fmaf(ej[j], v0, o[j][0]);
          o[j][1] = fmaf(ej[j], v1, o[j][1]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxG; ++j) {
      if (j < G) reinterpret_cast<float2 *>(po + (warp * G + j) * hd)[lane] = make_float2(o[j][0], o[j][1]);
    }
    if (lane < G) {  // lane j publishes head j's max and sum (every lane holds all G of them)
      float mj = m[0], lj = l[0];
#pragma unroll
      for (int j = 1; j < kMaxG; ++j) {
        if (lane == j) {
          mj = m[j];
          lj = l[j];
        }
      }
      pm[warp * kMaxG + lane] = npw > 0 ? mj : -CUDART_INF_F;
      pl[warp * kMaxG + lane] = npw > 0 ? lj : 0.f;
    }
    consumer_sync();
    // Merge the warps' partials: thread (j, d).
    if (t < G * hd) {
      const int j = t / hd, d = t % hd;
      float M = -CUDART_INF_F;
#pragma unroll
      for (int w = 0; w < kConsumerWarps; ++w) M = fmaxf(M, pm[w * kMaxG + j]);
      float O = 0.f, L = 0.f;  // a warp without positions has m = -inf, l = 0, o = 0: its weight is exp(-inf) = 0
#pragma unroll
      for (int w = 0; w < kConsumerWarps; ++w) {
        const float c = __expf(pm[w * kMaxG + j] - M);
        O = fmaf(c, po[(w * G + j) * hd + d], O);
        L = fmaf(c, pl[w * kMaxG + j], L);
      }
      g.attn[(size_t)(h0 + j) * hd + d] = O / L;
    }
    PageCursor::note_first_page(s);  // MKCHAT_TRACE: marks the attention done
    consumer_sync();
  }

  // Returns the counter increments (program.h MK_OP_ATTN): 0, or 1 per q head with attn_per_head, else 1 per kv head.
  __device__ static int run(const Globals &g, Smem &s, PageCursor &, const int *a, int layer, int step) {
    const int kvh = a[0], split = a[1], S = g.attn_splits, hd = g.hd;
    const int G = g.n_heads / g.n_kv, TP = tile_positions(hd);
    const AttnSpan sp(g, split, step);
    if (sp.single) {
      // Split s takes q heads [s*k, s*k + k) of the group alone; the others have nothing to do and make no arrival
      // (attn_arrive stays a multiple of S). One head per SM is the case that matters (Llama-3.2-1B: G = 4 <= S).
      const int k = g.attn_per_head ? (G + S - 1) / S : G, j0 = split * k, nh = min(G, j0 + k) - j0;
      if (nh <= 0) {  // nothing to do; the consumers still leave together (run_op ends synchronised)
        consumer_sync();
        return 0;
      }
      if (nh == 1) run_single<1>(g, s, kvh, j0, 1, layer, sp.n);
      else run_single<4>(g, s, kvh, j0, nh, layer, sp.n);
      return g.attn_per_head ? nh : 1;
    }
    const int n = sp.n, lo = sp.lo, hi = sp.hi;
    const int t = ctid(), j = t / hd, d = t % hd, h = kvh * G + j;
    const bool owner = j < G;
    const size_t head_base = ((size_t)layer * g.n_kv + kvh) * g.ctx;
    float *q = s.out;                                        // [G][hd], pre-scaled
    float *sc = reinterpret_cast<float *>(s.ids);            // [G][TP] softmax weights of the tile
    // Per q head: running max, running sum of exp, and this tile's rescale of the output (online softmax).
    float *run_m = s.scratch, *run_l = run_m + G, *run_c = run_l + G;
    if (t < G) {
      run_m[t] = -CUDART_INF_F;
      run_l[t] = 0.f;
    }
    const int cpp = hd / 8, nscore = G * TP;  // TP is 16 or 32: a warp of score threads holds whole heads
    float o = 0.f;
    const float qv = owner ? __ldcg(g.q + h * hd + d) * rsqrtf((float)hd) : 0.f;
    for (int p0 = lo; p0 < hi; p0 += TP) {
      const int np = min(TP, hi - p0), chunks = np * cpp;
      uint4 *ktile = reinterpret_cast<uint4 *>(s.xs), *vtile = ktile + chunks;
      if (p0 != lo || !g.attn_prefetch) issue_tile(g, s, head_base, n, hi, p0);
      if (t < chunks && p0 + t / cpp == n - 1) {
        const float *kv = g.q + (size_t)(g.n_heads + kvh) * hd + (t % cpp) * 8;
        ktile[kslot(t / cpp, t % cpp, cpp)] = pack_bf16x8(kv);
        vtile[t] = pack_bf16x8(kv + (size_t)g.n_kv * hd);
      }
      if (p0 == lo && owner) q[j * hd + d] = qv;
      cp_async_wait_all();
      consumer_sync();
      // Scores and the tile's softmax weights, one (head, position) per thread, reduced across the head's lanes: no
      // thread walks the tile serially.
      if (t < ((nscore + 31) & ~31)) {
        const int sj = t / TP, spos = t % TP;
        const bool valid = t < nscore && spos < np;
        float acc = -CUDART_INF_F;
        if (valid) {
          const float4 *qr = reinterpret_cast<const float4 *>(q + sj * hd);
          acc = 0.f;
          for (int c = 0; c < cpp; ++c) acc += dot8(ktile[kslot(spos, c, cpp)], qr[2 * c], qr[2 * c + 1]);
        }
        float mt = acc;
        for (int off = TP / 2; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
        const float m_old = t < nscore ? run_m[sj] : -CUDART_INF_F, m_new = fmaxf(m_old, mt);
        const float e = valid ? __expf(acc - m_new) : 0.f;
        float es = e;
        for (int off = TP / 2; off > 0; off >>= 1) es += __shfl_xor_sync(0xffffffffu, es, off);
        __syncwarp();  // every lane has read run_m before its head's lane 0 updates it
        if (t < nscore) {
          sc[sj * TP + spos] = e;
          if (spos == 0) {
            const float c = __expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
            run_l[sj] = run_l[sj] * c + es;
            run_m[sj] = m_new;
            run_c[sj] = c;
          }
        }
      }
      consumer_sync();
      if (owner) {  // o = o * c + sum_p e_p v_p, four positions in flight
        const float *ej = sc + j * TP;
        const bf16 *vt = reinterpret_cast<const bf16 *>(vtile) + d;
        float o0 = 0.f, o1 = 0.f, o2 = 0.f, o3 = 0.f;
        int p = 0;
        for (; p + 4 <= np; p += 4) {
          o0 = fmaf(ej[p], bf2f(vt[p * hd]), o0);
          o1 = fmaf(ej[p + 1], bf2f(vt[(p + 1) * hd]), o1);
          o2 = fmaf(ej[p + 2], bf2f(vt[(p + 2) * hd]), o2);
          o3 = fmaf(ej[p + 3], bf2f(vt[(p + 3) * hd]), o3);
        }
        for (; p < np; ++p) o0 = fmaf(ej[p], bf2f(vt[p * hd]), o0);
        o = o * run_c[j] + ((o0 + o1) + (o2 + o3));
      }
      consumer_sync();
    }
    const float m = owner && lo < hi ? run_m[j] : -CUDART_INF_F, l = owner && lo < hi ? run_l[j] : 0.f;
    PageCursor::note_first_page(s);  // MKCHAT_TRACE: ATTN has no pages; its "first page" time marks the tiles done
    if (owner) {
      float *part = g.attn_part + ((size_t)h * S + split) * (hd + 2);
      part[d] = o;
      if (d == 0) {
        part[hd] = m;
        part[hd + 1] = l;
      }
    }
    consumer_sync();
    if (t == 0) {
      uint32_t old;
      asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;"
                   : "=r"(old)
                   : "l"(g.attn_arrive + layer * g.n_kv + kvh)
                   : "memory");
      s.flag = ((old + 1) % (uint32_t)S) == 0;
    }
    consumer_sync();
    const bool last = s.flag;
    if (last && owner) {
      const float *base = g.attn_part + (size_t)h * S * (hd + 2);
      // Online merge, 4 splits per round so their loads are in flight together (no per-split register arrays: they
      // pushed the kernel past its 168-register budget).
      float M = -CUDART_INF_F, L = 0.f, O = 0.f;
      for (int s0 = 0; s0 < sp.used; s0 += 4) {  // splits past sp.used are empty
        float ms[4], ls[4], os[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const bool in = s0 + k < sp.used;
          const float *p = base + (in ? s0 + k : 0) * (hd + 2);  // never address past the partials
          ms[k] = in ? __ldcg(p + hd) : -CUDART_INF_F;
          ls[k] = in ? __ldcg(p + hd + 1) : 0.f;
          os[k] = in ? __ldcg(p + d) : 0.f;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (ms[k] == -CUDART_INF_F) continue;
          const float m_new = fmaxf(M, ms[k]), c_old = __expf(M - m_new), c = __expf(ms[k] - m_new);
          L = L * c_old + ls[k] * c;
          O = O * c_old + os[k] * c;
          M = m_new;
        }
      }
      g.attn[h * hd + d] = O / L;
    }
    consumer_sync();
    return last ? (g.attn_per_head ? G : 1) : 0;
  }
};

}  // namespace mk
