// megakernel.cu — the persistent decode kernel: one block per SM walks its instruction queue for every token of a
// launch. This file is the only place that maps opcodes (native/program.h) to ops (native/cuda/ops/).
//
// Build: nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -Xptxas -v -c megakernel.cu (native/build.ts does it).
#include "megakernel.cuh"
#include "ops/attn.cuh"
#include "ops/down.cuh"
#include "ops/gateup.cuh"
#include "ops/lmhead.cuh"
#include "ops/mlp.cuh"
#include "ops/oproj.cuh"
#include "ops/qkv.cuh"
#include "ops/sample.cuh"
#include "../program.h"

namespace mk {

// The weights an instruction streams: `rows` contiguous rows of `dim` bf16 starting at `first` (none for ATTN,
// SAMPLE and skipped LM-head steps), and a second segment for MLP (its down projection).
__device__ static int op_weights2(const Globals &g, int op, const int *a, int layer, int step, const bf16 **first) {
  if (op != MK_OP_MLP) return 0;
  *first = MlpOp::first_row2(g, a, layer);
  return MlpOp::rows2(g, a, layer, step);
}
__device__ static int op_weights(const Globals &g, int op, const int *a, int layer, int step, const bf16 **first) {
  switch (op) {
    case MK_OP_MLP: *first = MlpOp::first_row(g, a, layer); return MlpOp::rows(g, a, layer, step);
    case MK_OP_QKV: *first = QkvOp::first_row(g, a, layer); return QkvOp::rows(g, a, layer, step);
    case MK_OP_OPROJ: *first = OprojOp::first_row(g, a, layer); return OprojOp::rows(g, a, layer, step);
    case MK_OP_GATEUP: *first = GateupOp::first_row(g, a, layer); return GateupOp::rows(g, a, layer, step);
    case MK_OP_DOWN: *first = DownOp::first_row(g, a, layer); return DownOp::rows(g, a, layer, step);
    case MK_OP_LMHEAD: *first = LmheadOp::first_row(g, a, layer); return LmheadOp::rows(g, a, layer, step);
    default: return 0;
  }
}

// Work an instruction can start before its counter wait, on inputs that an earlier wait already ordered (or that
// never change: the RMSNorm weights).
__device__ static void prewait_op(const Globals &g, Smem &s, int op, const int *a, int layer, int step) {
  if (op == MK_OP_ATTN && g.attn_prefetch) AttnOp::prefetch(g, s, a, layer, step);
  if (!g.norm_prefetch) return;
  if (op == MK_OP_QKV) stage_norm_weight(g, s, g.layers[layer].attn_norm);
  if (op == MK_OP_GATEUP) stage_norm_weight(g, s, g.layers[layer].ffn_norm);
  if (op == MK_OP_LMHEAD && step >= g.lm_from_step) stage_norm_weight(g, s, g.final_norm);
}

// Returns how many increments the instruction adds to its counter (0: it does not signal). Every op returns with the
// consumers synchronised, early returns included: thread 0 writes s.flag for the next instruction right after
// (compute-sanitizer racecheck found the early returns of LMHEAD and SAMPLE in prompt steps and of an idle ATTN).
__device__ static int run_op(const Globals &g, Smem &s, PageCursor &cur, int op, const int *a, int layer, int step) {
  switch (op) {
    case MK_OP_QKV: return QkvOp::run(g, s, cur, a, layer, step);
    case MK_OP_ATTN: return AttnOp::run(g, s, cur, a, layer, step);
    case MK_OP_OPROJ: return OprojOp::run(g, s, cur, a, layer, step);
    case MK_OP_GATEUP: return GateupOp::run(g, s, cur, a, layer, step);
    case MK_OP_DOWN: return DownOp::run(g, s, cur, a, layer, step);
    case MK_OP_LMHEAD: return LmheadOp::run(g, s, cur, a, layer, step);
    case MK_OP_SAMPLE: return SampleOp::run(g, s, cur, a, layer, step);
    case MK_OP_MLP: return MlpOp::run(g, s, cur, a, layer, step);
    default: consumer_sync(); return true;  // NOOP
  }
}

// --- producer (lane 0 of warp 8): stream the weights of every instruction, token after token -------------------
// Every instruction's rows are contiguous (the engine's weight layout), so a page is one bulk copy and the producer's
// work per page is a few instructions: the producer is a single thread on the critical path (PERF_LOG v3-v8).
__device__ static void produce(const Globals &g, Smem &s, int q0, int q1) {
  PageIssuer iss;
  const int R = rows_per_page(g.dim);
  const uint32_t row_bytes = 2u * g.dim;
  const uint64_t policy = evict_first_policy();
  const uint32_t inflight = g.inflight_pages > 0 ? min((uint32_t)g.inflight_pages, s.npages - 1) : 0u;
  for (int step = 0; step < g.n_steps; ++step) {
    for (int i = q0; i < q1; ++i) {
      const int *w = g.instr + i * MK_INSTR_WORDS;
      for (int seg = 0; seg < 2; ++seg) {
        const bf16 *src = nullptr;
        int n = seg == 0 ? op_weights(g, w[MK_I_OP], w + MK_I_A0, w[MK_I_LAYER], step, &src)
                         : op_weights2(g, w[MK_I_OP], w + MK_I_A0, w[MK_I_LAYER], step, &src);
        if (g.diag & kDiagNoPages) n = 0;
        for (int first = 0; first < n; first += R) {
          const uint32_t bytes = (uint32_t)min(R, n - first) * row_bytes;
          uint8_t *page;
          uint64_t *bar;
          if (!iss.begin(s, &page, &bar, (g.diag & kDiagNoCopy) ? 0u : bytes, inflight)) goto done;
          if (g.diag & kDiagNoCopy) {
          } else if (g.evict_first) {
            bulk_load_hint(page, src + (size_t)first * g.dim, bytes, bar, policy);
          } else {
            bulk_load(page, src + (size_t)first * g.dim, bytes, bar);
          }
          iss.end(s);
        }
      }
    }
  }
done:
  __threadfence_block();
  s.producer_done = 1;
}

// --- consumer warps: wait, compute, signal -------------------------------------------------------------------------
__device__ static void consume(const Globals &g, Smem &s, int q0, int q1) {
  PageCursor cur;
  for (int step = 0; step < g.n_steps; ++step) {
    if (step > 0) {  // step gate: the previous token is sampled (counter 0, program.h), then is there more to do?
      if (ctid() == 0) {
        const bool ok = wait_counter(g.counters, 0, (uint32_t)step, g.ctrl, g.timeout_ns, q0, MK_OP_SAMPLE,
                                     g.n_layers, step);
        s.go = ok && step <= *(volatile int *)&g.ctrl->stop_step;
      }
      consumer_sync();
      if (!s.go) return;
    }
    for (int i = q0; i < q1; ++i) {
      const int *w = g.instr + i * MK_INSTR_WORDS;
      const int op = w[MK_I_OP], layer = w[MK_I_LAYER], wait = w[MK_I_WAIT];
      const bool tracing = g.trace && step == g.trace_step && ctid() == 0;
      unsigned long long *tr = tracing ? g.trace + (size_t)kTraceWords * i : nullptr;
      if (tr) {
        tr[0] = global_ns();
        s.first_page_at = tr + 2;  // PageCursor::note_first_page (stays 0 when the instruction streams no pages)
      }
      prewait_op(g, s, op, w + MK_I_A0, layer, step);
      if (ctid() == 0) {
        bool ok = true;
        if (wait >= 0) {
          const long long req =
              (long long)g.per_token[wait] * (step + w[MK_I_WAIT_TOKEN_OFFSET]) + w[MK_I_WAIT_COUNT];
          if (req > 0) ok = wait_counter(g.counters, wait, (uint32_t)req, g.ctrl, g.timeout_ns, i, op, layer, step);
        }
        s.flag = ok;
        s.instr_now = i;
        s.step_now = step;
      }
      consumer_sync();
      if (!s.flag) return;
      if (tr) tr[1] = global_ns();
      const int sig = run_op(g, s, cur, op, w + MK_I_A0, layer, step);  // ends with the consumers synced
      if (tr) {
        tr[3] = global_ns();
        s.first_page_at = nullptr;
      }
      if (ctid() == 0) {
        // Outputs already complete in global memory (an op's bulk stores, waited for), or the unsafe diagnostic that
        // measures what the release fence costs: a plain increment.
        const bool relaxed = s.published || (g.diag & kDiagNoRelease);
        s.published = 0;
        if (sig > 0 && w[MK_I_SIGNAL] >= 0) {
          if (relaxed) signal_counter_relaxed(g.counters, w[MK_I_SIGNAL], (uint32_t)sig);
          else signal_counter(g.counters, w[MK_I_SIGNAL], (uint32_t)sig);
        }
      }
      if (tr) tr[4] = global_ns();
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
    s.first_page_at = nullptr;
    s.published = 0;
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  if (g.diag & kDiagNoCopy) {  // pages are never written: give them finite contents
    for (int i = threadIdx.x; i < kPages * kPageBytes / 16; i += kThreads)
      reinterpret_cast<uint4 *>(s.pages)[i] = make_uint4(0, 0, 0, 0);
  }
  __syncthreads();
  const int q0 = g.queue_start[blockIdx.x], q1 = g.queue_start[blockIdx.x + 1];
  if (threadIdx.x / 32 == kProducerWarp) {
    if ((threadIdx.x & 31) == 0) produce(g, s, q0, q1);
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
