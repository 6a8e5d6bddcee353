// vm.cuh — the generic core of the megakernel: shared-memory page ring fed by a producer warp through the bulk copy
// engine (cp.async.bulk + mbarrier), global counters with timeouts, and the shared-memory layout. It knows nothing of
// Llama: ops (native/cuda/ops/*.cuh) describe their weight rows and their compute; megakernel.cu dispatches opcodes.
//
// Roles inside one block (one block per SM):
//   warp 8 (producer): walks the same instruction queue as the consumers, token after token, and streams each
//                      instruction's weight rows into pages. Weights never depend on activations, so it runs ahead
//                      of the consumers across instruction and token boundaries, bounded only by the ring.
//   warps 0..7 (consumers): wait on counters, compute from the pages, store outputs, signal counters.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#define MK_HD __host__ __device__ __forceinline__

namespace mk {

typedef __nv_bfloat16 bf16;

// --- configuration ------------------------------------------------------------------------------------------------
constexpr int kPageBytes = 16384;                 // one page = 16 KiB = 4 rows of a 2048-wide bf16 matrix
constexpr int kPages = 13;                        // 208 KiB ring: ~6 µs of one SM's share of HBM bandwidth
constexpr int kConsumerWarps = 8;
constexpr int kConsumerThreads = kConsumerWarps * 32;
constexpr int kThreads = kConsumerThreads + 32;   // + the producer warp
constexpr int kProducerWarp = kConsumerWarps;
constexpr int kMaxDim = 2048;                     // widest activation vector (fp32) kept in shared memory
constexpr int kMaxRows = 1024;                    // most output rows of one instruction (LMHEAD bound)
constexpr int kCandidates = 64;                   // MK_CUDA_MAX_TOP_K
static_assert(kPageBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
static_assert(kThreads == 288, "8 consumer warps + 1 producer warp");
constexpr size_t kSmemLimit = 227 * 1024;        // Hopper: usable dynamic shared memory per block
constexpr int kTraceWords = 6;                    // timestamps per traced instruction (Globals.trace)
// Diagnostics (Globals.diag, MKCHAT_DIAG): the output is meaningless, the step time says what the rest costs.
constexpr int kDiagNoCopy = 1;                    // pages complete without being copied (no HBM weight traffic)
constexpr int kDiagNoMath = 2;                    // consumers take and release pages but skip the dot products
constexpr int kDiagNoPages = 4;                   // no weight pages at all: synchronisation, norms, attention only
constexpr int kDiagNoRelease = 8;                 // counters are bumped without a release fence (UNSAFE: a consumer
                                                  // may read stale data; measures what the fences cost)

// --- shared memory --------------------------------------------------------------------------------------------------
struct __align__(128) Smem {
  uint8_t pages[kPages][kPageBytes];       // the weight ring
  float xs[kMaxDim];                       // the instruction's input vector (normalised), fp32
  float out[kMaxRows];                     // per-row results of the instruction's matvec
  int ids[kMaxRows];                       // scratch ids (sorting, sampling)
  float scratch[2 * kConsumerWarps * 32];  // reductions, attention partials
  float norm_ss[kConsumerWarps];           // rmsnorm_input's partial sums of squares, read after the matvec (the ops'
                                           // reductions in between use scratch: racecheck, PERF_LOG v21)
  uint64_t full[kPages];                   // producer -> consumers: page holds its bytes
  uint64_t empty[kPages];                  // consumers -> producer: page may be overwritten
  volatile int stop;                       // consumers -> producer: stop issuing (end of launch or abort)
  volatile int producer_done;              // producer -> consumers: no page will be issued any more
  volatile uint32_t issued;                // pages issued by the producer
  uint32_t npages;                         // ring pages in use (<= kPages; Globals.ring_pages, for tuning)
  int flag;                                // broadcast slot among consumers
  int go;                                  // the step gate's decision (its own slot: thread 0 writes flag for the
                                           // step's first instruction while other warps may still read this)
  unsigned long long *first_page_at;       // MKCHAT_TRACE: where the traced instruction's first-page time goes
  int instr_now, step_now;                 // the instruction in progress (for a page-wait timeout's report)
  int published;                           // set by an op (thread 0) whose outputs went out as completed bulk
                                           // stores: its counter signal needs no release fence
};
static_assert(sizeof(Smem) <= kSmemLimit, "the shared-memory layout must fit one Hopper SM");

// --- PTX helpers: mbarrier + bulk copy ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t *bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t *bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
// `count` arrivals at once (one warp standing for all the consumer warps).
__device__ __forceinline__ void mbar_arrive_n(uint64_t *bar, uint32_t count) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t *bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(smem_addr(bar)), "r"(parity)
      : "memory");
  return ok != 0;
}
// Bulk copy global -> shared, completing `bytes` of transaction count on `bar`.
__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes, uint64_t *bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
// The same copy with an L2 cache-eviction policy (createpolicy): weights are read once per token, so streaming them
// evict-first keeps L2 for the activations, counters and KV cache the latency chain reads (PERF_LOG v12: -2.3%).
__device__ __forceinline__ void bulk_load_hint(void *dst, const void *src, uint32_t bytes, uint64_t *bar,
                                               uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
}
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
// Bulk stores from shared to global memory through the copy engine (bulk_group completion), used to publish an
// instruction's outputs: waiting for their completion does not wait for the SM's weight copies in flight, which a
// release fence does (PERF_LOG v14). Addresses and sizes are multiples of 16 bytes.
__device__ __forceinline__ void bulk_store(void *gdst, const void *ssrc, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gdst), "r"(smem_addr(ssrc)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_reduce_add(float *gdst, const float *ssrc, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(gdst),
               "r"(smem_addr(ssrc)), "r"(bytes)
               : "memory");
}
// Wait until this thread's bulk stores are complete: their writes are in global memory.
__device__ __forceinline__ void bulk_commit_wait() {
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}
// 16-byte asynchronous copy global -> shared by this thread (cp.async, L2 only): a load whose data waits in shared
// memory, so it can be issued before a counter wait without holding registers across it.
__device__ __forceinline__ void cp_async16(void *sdst, const void *gsrc) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(sdst)), "l"(gsrc) : "memory");
}
// Wait until this thread's cp.async copies have landed (other threads see them after a barrier).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// Shared-memory writes made by this thread are ordered before later bulk copies that read them (async proxy).
__device__ __forceinline__ void fence_smem_to_bulk() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumerThreads) : "memory"); }

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ uint32_t ld_acquire(const uint32_t *p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// --- launch-wide control block (device memory) -------------------------------------------------------------------
struct Ctrl {
  int stop_step;        // SAMPLE sets the last step that runs (INT_MAX while running)
  int abort;            // set on a timeout: every wait gives up
  int finish;           // mk finish status decided by SAMPLE
  int err_claimed;      // first timeout claims the error record
  int err_sm, err_instr, err_op, err_layer, err_counter, err_step;
  uint32_t err_value, err_required;
};

// Wait until counters[c] >= required (thread 0 of the consumers), with a timeout that aborts the whole launch and
// records which instruction was stuck. Returns false when the launch is aborting.
__device__ inline bool wait_counter(const uint32_t *counters, int c, uint32_t required, Ctrl *ctrl,
                                    uint64_t timeout_ns, int instr, int op, int layer, int step) {
  const uint32_t *p = counters + c;
  if (ld_acquire(p) >= required) return true;
  uint64_t t0 = global_ns();
  for (int spin = 0;; ++spin) {
    if (ld_acquire(p) >= required) return true;
    if ((spin & 63) == 63) {
      if (*(volatile int *)&ctrl->abort) return false;
      if (global_ns() - t0 > timeout_ns) {
        if (atomicCAS(&ctrl->err_claimed, 0, 1) == 0) {
          ctrl->err_sm = blockIdx.x;
          ctrl->err_instr = instr;
          ctrl->err_op = op;
          ctrl->err_layer = layer;
          ctrl->err_counter = c;
          ctrl->err_step = step;
          ctrl->err_value = ld_acquire(p);
          ctrl->err_required = required;
          __threadfence();
        }
        atomicExch(&ctrl->abort, 1);
        return false;
      }
    }
    __nanosleep(32);
  }
}

// Consumers' signal: all their stores are done (caller synced); one thread publishes them and adds n to the counter.
// A release reduction: orders every store the consumers made before their barrier (PTX fences are cumulative), with
// no full fence on the critical path.
__device__ __forceinline__ void signal_counter(uint32_t *counters, int c, uint32_t n) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(counters + c), "r"(n) : "memory");
}
// The same without release semantics, for outputs already complete in global memory (waited-for bulk stores).
__device__ __forceinline__ void signal_counter_relaxed(uint32_t *counters, int c, uint32_t n) {
  asm volatile("red.relaxed.gpu.global.add.u32 [%0], %1;" ::"l"(counters + c), "r"(n) : "memory");
}

// --- the page stream as the consumers see it ---------------------------------------------------------------------
// Slot and phase advance incrementally: a division by the run-time ring size on every page cost v4 ~40% of its speed.
struct PageCursor {
  uint32_t slot = 0, phase = 0;
  uint32_t index = 0;  // pages consumed since the launch began (the producer's Smem.issued counts the same pages)
  __device__ __forceinline__ const uint8_t *acquire(Smem &s) const {
    while (!mbar_try_wait(&s.full[slot], phase)) {
    }
    note_first_page(s);
    return s.pages[slot];
  }
  // MKCHAT_TRACE: the first page of the traced instruction is in hand (one timer read per instruction, not per page).
  __device__ __forceinline__ static void note_first_page(Smem &s) {
    if (threadIdx.x == 0 && s.first_page_at) {
      *s.first_page_at = global_ns();
      s.first_page_at = nullptr;
    }
  }
  // MKCHAT_TRACE: an op-specific point between the wait and the first page (trace word 5): where a matvec begins (its
  // input staged), where ATTN's loads have landed.
  __device__ __forceinline__ static void note_mid(Smem &s) {
    if (threadIdx.x == 0 && s.first_page_at) s.first_page_at[3] = global_ns();
  }
  // Skip `n` pages that the consumers took and released some other way (matvec_rows_by_page); every consumer
  // thread calls it with the same n so the cursors stay identical.
  __device__ __forceinline__ void advance(const Smem &s, uint32_t n) {
    index += n;
    const uint32_t t = slot + n, wraps = t / s.npages;
    slot = t - wraps * s.npages;
    phase ^= wraps & 1;
  }
  // Every consumer warp calls release once per page, after its last read of it.
  __device__ __forceinline__ void release(Smem &s) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(&s.empty[slot]);
    ++index;
    if (++slot == s.npages) {
      slot = 0;
      phase ^= 1;
    }
  }
};

// The producer's side: make room for one more page and issue its copies (lane 0 of the producer warp only).
struct PageIssuer {
  uint32_t next = 0, slot = 0, round = 0;
  // Returns false when the consumers asked to stop. At most `inflight` pages are in flight at once (0: the whole
  // ring): page `next` is issued only once page next - inflight has landed. The pages beyond that wait in HBM's
  // queue, where they delay every other load of the latency chain without streaming any faster (PERF_LOG v18).
  __device__ __forceinline__ bool begin(Smem &s, uint8_t **page, uint64_t **bar, uint32_t bytes, uint32_t inflight) {
    if (round > 0) {
      while (!mbar_try_wait(&s.empty[slot], (round - 1) & 1)) {
        if (s.stop) return false;
      }
    }
    if (inflight > 0 && next >= inflight) {
      // Page next - inflight is still the newest page of its slot (inflight < npages), so its fill's parity is
      // unambiguous.
      const uint32_t bslot = slot >= inflight ? slot - inflight : slot + s.npages - inflight;
      const uint32_t bround = round - (slot >= inflight ? 0u : 1u);
      while (!mbar_try_wait(&s.full[bslot], bround & 1)) {
        if (s.stop) return false;
      }
    }
    if (s.stop) return false;
    *page = s.pages[slot];
    *bar = &s.full[slot];
    mbar_expect_tx(*bar, bytes);
    return true;
  }
  __device__ __forceinline__ void end(Smem &s) {
    ++next;
    if (++slot == s.npages) {
      slot = 0;
      ++round;
    }
    s.issued = next;
  }
};

// --- math helpers ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Dot product of 8 bf16 weights (one 16-byte chunk) with 8 fp32 inputs.
__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b) {
  const uint32_t u[4] = {w.x, w.y, w.z, w.w};
  float lo[4], hi[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    lo[i] = __uint_as_float(u[i] << 16);
    hi[i] = __uint_as_float(u[i] & 0xffff0000u);
  }
  float acc = lo[0] * a.x;
  acc = fmaf(hi[0], a.y, acc);
  acc = fmaf(lo[1], a.z, acc);
  acc = fmaf(hi[1], a.w, acc);
  acc = fmaf(lo[2], b.x, acc);
  acc = fmaf(hi[2], b.y, acc);
  acc = fmaf(lo[3], b.z, acc);
  acc = fmaf(hi[3], b.w, acc);
  return acc;
}
__device__ __forceinline__ float bf2f(bf16 v) { return __bfloat162float(v); }

}  // namespace mk
