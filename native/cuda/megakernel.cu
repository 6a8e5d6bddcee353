// megakernel.cu — the persistent decode kernel: one block per SM walks its instruction queue for every token of a
// launch. This file is the only place that maps opcodes (native/program.h) to ops (native/cuda/ops/).
//
// Build: nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -Xptxas -v -c megakernel.cu (native/build.ts does it).
#include "megakernel.cuh"
#include "ops/attn.cuh"
#include "ops/down.cuh"
#include "ops/gateup.cuh"
#include "ops/lmhead.cuh"
#include "ops/oproj.cuh"
#include "ops/qkv.cuh"
#include "ops/sample.cuh"
#include "../program.h"

#include <vector>

namespace mk {

// --- host: compile every instruction's weight rows into copy descriptors -----------------------------------------
// Rows contiguous in memory within a page become one copy (a whole page for LMHEAD/OPROJ; the two PairLayout halves
// for QKV and GATEUP; DOWN's strided slices stay one copy per row).
template <typename RowFn>
static void compile_rows(int n, int dim, RowFn row_fn, std::vector<CopyDesc> &out) {
  const int R = rows_per_page(dim);
  const uint32_t row_bytes = 2u * dim;
  for (int first = 0; first < n; first += R) {
    const int nr = n - first < R ? n - first : R;
    const size_t page_begin = out.size();
    const bf16 *run = row_fn(first);
    int run_start = 0, run_len = 1;
    auto flush = [&] {
      out.push_back({(unsigned long long)run, run_len * row_bytes, (uint32_t)(run_start * row_bytes / 16)});
    };
    for (int j = 1; j < nr; ++j) {
      const bf16 *r = row_fn(first + j);
      if (r == run + (size_t)run_len * dim) {
        ++run_len;
      } else {
        flush();
        run = r;
        run_start = j;
        run_len = 1;
      }
    }
    flush();
    out[page_begin].meta |= kCopyFirst | ((nr * row_bytes / 16) << 16);
    out.back().meta |= kCopyLast;
  }
}

void compile_copies(const Globals &hg, const int *instr, int n_instr, std::vector<CopyDesc> &copies,
                    std::vector<int> &start) {
  copies.clear();
  start.assign(1, 0);
  for (int i = 0; i < n_instr; ++i) {
    const int *w = instr + (size_t)i * MK_INSTR_WORDS;
    const int op = w[MK_I_OP], layer = w[MK_I_LAYER];
    const int *a = w + MK_I_A0;
    switch (op) {
      case MK_OP_QKV:
        compile_rows(QkvOp::rows(hg, a, layer, 0), hg.dim, [&](int k) { return QkvOp::row(hg, a, layer, k); }, copies);
        break;
      case MK_OP_OPROJ:
        compile_rows(OprojOp::rows(hg, a, layer, 0), hg.dim, [&](int k) { return OprojOp::row(hg, a, layer, k); },
                     copies);
        break;
      case MK_OP_GATEUP:
        compile_rows(GateupOp::rows(hg, a, layer, 0), hg.dim, [&](int k) { return GateupOp::row(hg, a, layer, k); },
                     copies);
        break;
      case MK_OP_DOWN:
        compile_rows(DownOp::rows(hg, a, layer, 0), hg.dim, [&](int k) { return DownOp::row(hg, a, layer, k); }, copies);
        break;
      case MK_OP_LMHEAD:
        compile_rows(a[1], hg.dim, [&](int k) { return LmheadOp::row(hg, a, layer, k); }, copies);
        break;
      default: break;
    }
    start.push_back((int)copies.size());
  }
}

// Returns whether the instruction signals its counter.
__device__ static bool run_op(const Globals &g, Smem &s, PageCursor &cur, int op, const int *a, int layer, int step) {
  switch (op) {
    case MK_OP_QKV: return QkvOp::run(g, s, cur, a, layer, step);
    case MK_OP_ATTN: return AttnOp::run(g, s, cur, a, layer, step);
    case MK_OP_OPROJ: return OprojOp::run(g, s, cur, a, layer, step);
    case MK_OP_GATEUP: return GateupOp::run(g, s, cur, a, layer, step);
    case MK_OP_DOWN: return DownOp::run(g, s, cur, a, layer, step);
    case MK_OP_LMHEAD: return LmheadOp::run(g, s, cur, a, layer, step);
    case MK_OP_SAMPLE: return SampleOp::run(g, s, cur, a, layer, step);
    default: consumer_sync(); return true;  // NOOP
  }
}

// --- producer warp: stream the weights of every instruction, token after token ----------------------------------
// A queue's descriptors are contiguous (its instructions are), so the warp streams [C0, C1) once per step, 32
// descriptors per coalesced load with the next batch already in flight; lane 0 drives the ring. Optionally it also
// asks L2 to prefetch the copy `l2_ahead` descriptors ahead (Globals.l2_ahead, MKCHAT_L2_AHEAD; <= 32). LMHEAD's
// descriptors are skipped on prompt steps whose logits nobody reads.
__device__ static void produce(const Globals &g, Smem &s, int q0, int q1) {
  const int lane = threadIdx.x & 31;
  const int C0 = g.copy_start[q0], C1 = g.copy_start[q1];
  if (C1 == C0) {
    if (lane == 0) s.producer_done = 1;
    return;
  }
  int S0 = C1, S1 = C1;  // this queue's LMHEAD descriptors
  for (int i = q0; i < q1; ++i) {
    if (g.instr[i * MK_INSTR_WORDS + MK_I_OP] != MK_OP_LMHEAD) continue;
    S0 = min(S0, g.copy_start[i]);
    S1 = g.copy_start[i + 1];
  }
  const int ahead = min(g.l2_ahead, 32);
  auto load = [&](int base) {
    uint4 d = make_uint4(0, 0, 0, 0);
    if (base + lane < C1) d = __ldg(reinterpret_cast<const uint4 *>(g.copies + base + lane));
    return d;
  };
  PageIssuer iss;
  uint8_t *page = nullptr;
  uint64_t *bar = nullptr;
  uint4 cur = load(C0);
  for (int step = 0; step < g.n_steps; ++step) {
    const bool skip_lm = step < g.lm_from_step;
    for (int base = C0; base < C1; base += 32) {
      const int next_base = base + 32 < C1 ? base + 32 : C0;
      const uint4 nxt = load(next_base);  // in flight while this batch is issued
      const int nb = min(32, C1 - base);
      for (int j = 0; j < nb; ++j) {
        if (ahead > 0) {  // L2 prefetch of the copy `ahead` descriptors on (wrapping into the next batch)
          const int k = j + ahead;
          const uint32_t plo = __shfl_sync(0xffffffffu, k < 32 ? cur.x : nxt.x, k & 31);
          const uint32_t phi = __shfl_sync(0xffffffffu, k < 32 ? cur.y : nxt.y, k & 31);
          const uint32_t pbytes = __shfl_sync(0xffffffffu, k < 32 ? cur.z : nxt.z, k & 31);
          if (lane == 0 && pbytes)
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(((uint64_t)phi << 32) | plo), "r"(pbytes)
                         : "memory");
        }
        const int c = base + j;
        const uint32_t lo = __shfl_sync(0xffffffffu, cur.x, j), hi = __shfl_sync(0xffffffffu, cur.y, j);
        const uint32_t bytes = __shfl_sync(0xffffffffu, cur.z, j), meta = __shfl_sync(0xffffffffu, cur.w, j);
        if (skip_lm && c >= S0 && c < S1) continue;
        int ok = 1;
        if (lane == 0) {
          if (meta & kCopyFirst) ok = iss.begin(s, &page, &bar, copy_page_bytes(meta));
          if (ok) {
            bulk_load(page + copy_dst(meta), reinterpret_cast<const void *>(((uint64_t)hi << 32) | lo), bytes, bar);
            if (meta & kCopyLast) iss.end(s);
          }
        }
        if (!__shfl_sync(0xffffffffu, ok, 0)) goto done;
      }
      cur = nxt;
    }
  }
done:
  if (lane == 0) {
    __threadfence_block();
    s.producer_done = 1;
  }
}

// --- consumer warps: wait, compute, signal -------------------------------------------------------------------------
__device__ static void consume(const Globals &g, Smem &s, int q0, int q1) {
  PageCursor cur;
  for (int step = 0; step < g.n_steps; ++step) {
    if (step > 0) {  // step gate: the previous token is sampled (counter 0, program.h), then is there more to do?
      if (ctid() == 0) {
        const bool ok = wait_counter(g.counters, 0, (uint32_t)step, g.ctrl, g.timeout_ns, q0, MK_OP_SAMPLE,
                                     g.n_layers, step);
        s.flag = ok && step <= *(volatile int *)&g.ctrl->stop_step;
      }
      consumer_sync();
      if (!s.flag) return;
    }
    for (int i = q0; i < q1; ++i) {
      const int *w = g.instr + i * MK_INSTR_WORDS;
      const int op = w[MK_I_OP], layer = w[MK_I_LAYER], wait = w[MK_I_WAIT];
      const bool tracing = g.trace && step == g.trace_step && ctid() == 0;
      if (tracing) g.trace[3 * i] = global_ns();
      if (ctid() == 0) {
        bool ok = true;
        if (wait >= 0) {
          const long long req =
              (long long)g.per_token[wait] * (step + w[MK_I_WAIT_TOKEN_OFFSET]) + w[MK_I_WAIT_COUNT];
          if (req > 0) ok = wait_counter(g.counters, wait, (uint32_t)req, g.ctrl, g.timeout_ns, i, op, layer, step);
        }
        s.flag = ok;
      }
      consumer_sync();
      if (!s.flag) return;
      if (tracing) g.trace[3 * i + 1] = global_ns();
      const bool sig = run_op(g, s, cur, op, w + MK_I_A0, layer, step);  // ends with the consumers synced
      if (sig && w[MK_I_SIGNAL] >= 0 && ctid() == 0) signal_counter(g.counters, w[MK_I_SIGNAL]);
      if (tracing) g.trace[3 * i + 2] = global_ns();
    }
  }
}

__global__ void __launch_bounds__(kThreads, 1) megakernel(const __grid_constant__ Globals g) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  Smem &s = *reinterpret_cast<Smem *>(smem_raw);
  if (threadIdx.x == 0) {
    s.npages = g.ring_pages >= 2 && g.ring_pages <= kPages ? g.ring_pages : kPages;
    for (int i = 0; i < kPages; ++i) {
      mbar_init(&s.full[i], 1);
      mbar_init(&s.empty[i], kConsumerWarps);
    }
    s.stop = 0;
    s.producer_done = 0;
    s.issued = 0;
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();
  const int q0 = g.queue_start[blockIdx.x], q1 = g.queue_start[blockIdx.x + 1];
  if (threadIdx.x / 32 == kProducerWarp) {
    produce(g, s, q0, q1);
    return;
  }
  consume(g, s, q0, q1);
  // Leave only when every bulk copy into this block's shared memory has landed.
  if (ctid() == 0) s.stop = 1;
  while (!s.producer_done) {
  }
  consumer_sync();
  // The last npages pages issued are the only ones that can still be in flight: each slot's newest page is among them,
  // and waiting on a page whose phase already completed returns at once.
  if (ctid() == 0) {
    const uint32_t issued = s.issued;
    const uint32_t np = s.npages;
    for (uint32_t p = issued > np ? issued - np : 0; p < issued; ++p) {
      while (!mbar_try_wait(&s.full[p % np], (p / np) & 1)) {
      }
    }
  }
  consumer_sync();
}

// --- bandwidth probe: a streaming read of a buffer much larger than L2 --------------------------------------------
__global__ void read_probe(const uint4 *src, size_t n, unsigned long long *sink) {
  uint32_t acc = 0;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(src + i), b = __ldcs(src + i + stride), c = __ldcs(src + i + 2 * stride),
                d = __ldcs(src + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldcs(src + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x12345678u) atomicAdd(sink, 1ull);  // practically never true; keeps the loads
}

cudaError_t launch_megakernel(const Globals &g, int n_queues, cudaStream_t stream) {
  static bool configured = false;
  if (!configured) {
    const cudaError_t e =
        cudaFuncSetAttribute(megakernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kMegakernelSmem);
    if (e != cudaSuccess) return e;
    configured = true;
  }
  void *args[] = {const_cast<Globals *>(&g)};
  return cudaLaunchCooperativeKernel((const void *)megakernel, dim3(n_queues), dim3(kThreads), args, kMegakernelSmem,
                                     stream);
}

cudaError_t launch_read_probe(const void *src, size_t bytes, unsigned long long *sink, int n_sms,
                              cudaStream_t stream) {
  read_probe<<<n_sms * 4, 512, 0, stream>>>(static_cast<const uint4 *>(src), bytes / 16, sink);
  return cudaGetLastError();
}

}  // namespace mk
