// engine_cuda.cu — the host side of the CUDA backend (native/backend.h): device checks, weight upload, the
// instruction program, launches of the megakernel and the token stream from pinned memory to the caller.
//
// No CUDA error escapes: every call goes through CK(), which records "file:line call: error" on the engine and
// returns MK_ERR_CUDA (MK_ERR_OOM for allocation failures).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "../backend.h"
#include "megakernel.cuh"

using mk::bf16;

namespace {

// --- error handling --------------------------------------------------------------------------------------------------
int cuda_fail(mk_engine *e, cudaError_t err, const char *call, const char *file, int line) {
  const int status = err == cudaErrorMemoryAllocation ? MK_ERR_OOM
                     : (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) ? MK_ERR_NO_DEVICE
                                                                                        : MK_ERR_CUDA;
  const char *base = strrchr(file, '/');
  return mk_set_error(e, status, "CUDA %s at %s:%d (%s): %s", cudaGetErrorName(err), base ? base + 1 : file, line, call,
                      cudaGetErrorString(err));
}
#define CK(e, call)                                                                 \
  do {                                                                              \
    const cudaError_t err_ = (call);                                                \
    if (err_ != cudaSuccess) return cuda_fail((e), err_, #call, __FILE__, __LINE__); \
  } while (0)

// --- backend state ---------------------------------------------------------------------------------------------------
struct HostStreamMem {  // mapped pinned memory the kernel writes and the host thread reads
  int n, cancel;
};

struct CudaState {
  int device = 0, n_sms = 0;
  char name[128] = {0};
  cudaStream_t stream = nullptr;
  // weights
  std::vector<void *> weight_allocs;
  mk::LayerW *d_layers = nullptr;
  std::vector<mk::LayerW> layers;
  const bf16 *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr;
  float *inv_freq = nullptr;
  // activations (program.h)
  float *resid = nullptr, *q = nullptr, *attn = nullptr, *h = nullptr, *logits = nullptr;
  bf16 *kcache = nullptr, *vcache = nullptr;
  int *tokens = nullptr;
  int tokens_cap = 0;
  mk::Ctrl *ctrl = nullptr;
  // program
  int *instr = nullptr, *queue_start = nullptr, *per_token = nullptr;
  uint32_t *counters = nullptr, *attn_arrive = nullptr;
  float *attn_part = nullptr;
  mk::LmPart *lm_part = nullptr;
  int n_queues = 0, n_counters = 0, attn_splits = 0, n_lm_parts = 0, attn_per_head = 0;
  bool have_program = false;
  std::vector<int> h_instr, h_queue_start;  // host copies, for MKCHAT_TRACE
  // host stream
  HostStreamMem *hs = nullptr;  // pinned, mapped
  int *h_tokens = nullptr, *h_top_ids = nullptr;
  unsigned long long *h_t_ns = nullptr;
  float *h_logprob = nullptr, *h_top_lp = nullptr;
  int h_cap = 0;
};

CudaState *state(const mk_engine *e) { return static_cast<CudaState *>(e->cuda); }

int check_shape(mk_engine *e) {
  const mk_model_config &c = e->cfg;
  const bool pow2 = c.dim > 0 && (c.dim & (c.dim - 1)) == 0;
  if (!pow2 || c.dim < 256 || c.dim > mk::kMaxDim)
    return mk_set_error(e, MK_ERR_INVALID, "CUDA engine: hidden_size %d must be a power of two in [256, %d]", c.dim,
                        mk::kMaxDim);
  if (c.hidden_dim % c.dim != 0)
    return mk_set_error(e, MK_ERR_INVALID, "CUDA engine: intermediate_size %d must be a multiple of hidden_size %d",
                        c.hidden_dim, c.dim);
  if (c.head_dim % 32 != 0 || c.head_dim > mk::kMaxHeadDim)
    return mk_set_error(e, MK_ERR_INVALID, "CUDA engine: head_dim %d must be a multiple of 32 and <= %d", c.head_dim,
                        mk::kMaxHeadDim);
  if (c.n_heads % c.n_kv_heads != 0 || c.n_heads / c.n_kv_heads > mk::kConsumerWarps)
    return mk_set_error(e, MK_ERR_INVALID, "CUDA engine: %d heads over %d kv heads: groups of at most %d q heads",
                        c.n_heads, c.n_kv_heads, mk::kConsumerWarps);
  if ((c.n_heads / c.n_kv_heads) * c.head_dim > mk::kConsumerThreads)
    return mk_set_error(e, MK_ERR_INVALID, "CUDA engine: %d q heads per kv head x head_dim %d exceeds %d threads",
                        c.n_heads / c.n_kv_heads, c.head_dim, mk::kConsumerThreads);
  if (c.n_heads * c.head_dim != c.dim)
    return mk_set_error(e, MK_ERR_INVALID, "CUDA engine: heads*head_dim %d must equal hidden_size %d",
                        c.n_heads * c.head_dim, c.dim);
  return MK_OK;
}

// RoPE inverse frequencies in fp32, the way HF transformers computes them (llama3 scaling included).
void rope_inv_freq(const mk_model_config &c, std::vector<float> &out) {
  const int half = c.head_dim / 2;
  out.resize(half);
  for (int i = 0; i < half; ++i) {
    float f = 1.0f / powf(c.rope_theta, (float)(2 * i) / (float)c.head_dim);
    if (c.rope_type == 1) {
      const float low_wavelen = (float)c.rope_original_max_position / c.rope_low_freq_factor;
      const float high_wavelen = (float)c.rope_original_max_position / c.rope_high_freq_factor;
      const float wavelen = 2.0f * (float)M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / c.rope_factor;
      } else if (wavelen >= high_wavelen) {
        const float smooth = ((float)c.rope_original_max_position / wavelen - c.rope_low_freq_factor) /
                             (c.rope_high_freq_factor - c.rope_low_freq_factor);
        f = (1.0f - smooth) * f / c.rope_factor + smooth * f;
      }
    }
    out[i] = f;
  }
}

int upload(mk_engine *e, CudaState *st, const uint16_t *host, size_t n_elems, const bf16 **dst) {
  void *p = nullptr;
  CK(e, cudaMalloc(&p, n_elems * 2));
  st->weight_allocs.push_back(p);
  CK(e, cudaMemcpy(p, host, n_elems * 2, cudaMemcpyHostToDevice));
  *dst = static_cast<const bf16 *>(p);
  return MK_OK;
}

// --- the device weight layout (ops/llama.cuh LayerW): every instruction's rows contiguous ---------------------------
// Wd (dim, hidden) -> chunk-major (hidden/dim, dim, dim).
int upload_down(mk_engine *e, CudaState *st, const uint16_t *host, int dim, int hidden, const bf16 **dst) {
  std::vector<uint16_t> re((size_t)dim * hidden);
  const int chunks = hidden / dim;
  for (int c = 0; c < chunks; ++c)
    for (int r = 0; r < dim; ++r)
      memcpy(&re[((size_t)c * dim + r) * dim], host + (size_t)r * hidden + (size_t)c * dim, sizeof(uint16_t) * dim);
  return upload(e, st, re.data(), re.size(), dst);
}

// Wd (dim, hidden) -> transposed (hidden, dim): row r holds the weights that h[r] multiplies (MLP).
int upload_down_t(mk_engine *e, CudaState *st, const uint16_t *host, int dim, int hidden, const bf16 **dst) {
  std::vector<uint16_t> re((size_t)dim * hidden);
  for (int j = 0; j < dim; ++j)
    for (int r = 0; r < hidden; ++r) re[(size_t)r * dim + j] = host[(size_t)j * hidden + r];
  return upload(e, st, re.data(), re.size(), dst);
}

// Wq, Wk, Wv -> fused rows in RoPE-pair order: row 2p, 2p+1 = the two rows RoPE rotates together (QkvOp::fused_of).
int upload_qkv(mk_engine *e, CudaState *st, const mk_layer_weights &w, const mk_model_config &c, const bf16 **dst) {
  const int dim = c.dim, hd = c.head_dim, half = hd / 2;
  const int q_rows = c.n_heads * hd, kv_rows = c.n_kv_heads * hd, rows = q_rows + 2 * kv_rows;
  std::vector<uint16_t> re((size_t)rows * dim);
  for (int p = 0; p < rows / 2; ++p) {
    for (int h = 0; h < 2; ++h) {
      const int fr = (p / half) * hd + p % half + h * half;
      const uint16_t *src = fr < q_rows             ? w.wq + (size_t)fr * dim
                            : fr < q_rows + kv_rows ? w.wk + (size_t)(fr - q_rows) * dim
                                                    : w.wv + (size_t)(fr - q_rows - kv_rows) * dim;
      memcpy(&re[(size_t)(2 * p + h) * dim], src, sizeof(uint16_t) * dim);
    }
  }
  return upload(e, st, re.data(), re.size(), dst);
}

// Wgate, Wup -> interleaved rows: gate r at 2r, up r at 2r+1.
int upload_gate_up(mk_engine *e, CudaState *st, const mk_layer_weights &w, const mk_model_config &c, const bf16 **dst) {
  const size_t dim = c.dim;
  std::vector<uint16_t> re((size_t)2 * c.hidden_dim * dim);
  for (int r = 0; r < c.hidden_dim; ++r) {
    memcpy(&re[(2 * (size_t)r) * dim], w.w_gate + (size_t)r * dim, sizeof(uint16_t) * dim);
    memcpy(&re[(2 * (size_t)r + 1) * dim], w.w_up + (size_t)r * dim, sizeof(uint16_t) * dim);
  }
  return upload(e, st, re.data(), re.size(), dst);
}

double now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

// An integer setting from the environment, or `fallback` when it is not set.
int env_int(const char *name, int fallback) {
  const char *v = getenv(name);
  return v ? atoi(v) : fallback;
}

// Fill the launch-independent part of the kernel's view.
mk::Globals base_globals(const mk_engine *e, const CudaState *st) {
  mk::Globals g;
  memset(&g, 0, sizeof g);
  const mk_model_config &c = e->cfg;
  g.dim = c.dim;
  g.hidden = c.hidden_dim;
  g.n_layers = c.n_layers;
  g.n_heads = c.n_heads;
  g.n_kv = c.n_kv_heads;
  g.hd = c.head_dim;
  g.vocab = c.vocab_size;
  g.ctx = e->params.ctx_len;
  g.eps = c.rms_eps;
  g.embed = st->embed;
  g.final_norm = st->final_norm;
  g.lm_head = st->lm_head;
  g.layers = st->d_layers;
  g.inv_freq = st->inv_freq;
  g.instr = st->instr;
  g.queue_start = st->queue_start;
  g.per_token = st->per_token;
  g.attn_splits = st->attn_splits;
  g.attn_per_head = st->attn_per_head;
  g.resid = st->resid;
  g.q = st->q;
  g.kcache = st->kcache;
  g.vcache = st->vcache;
  g.attn_part = st->attn_part;
  g.attn = st->attn;
  g.h = st->h;
  g.logits = st->logits;
  g.lm_part = st->lm_part;
  g.attn_arrive = st->attn_arrive;
  g.counters = st->counters;
  g.tokens = st->tokens;
  g.ctrl = st->ctrl;
  const int ms = e->params.timeout_ms > 0 ? e->params.timeout_ms : 5000;
  g.timeout_ns = (unsigned long long)ms * 1000000ull;
  g.start_pos = e->pos;
  // Tuning, A/B and diagnostic switches (README, Environment), read at every launch.
  g.ring_pages = env_int("MKCHAT_RING_PAGES", mk::kPages);
  g.evict_first = env_int("MKCHAT_EVICT_FIRST", 1);
  g.bulk_publish = env_int("MKCHAT_BULK_PUBLISH", 1);
  g.inflight_pages = env_int("MKCHAT_INFLIGHT_PAGES", 3);
  g.attn_prefetch = env_int("MKCHAT_ATTN_PREFETCH", 1);
  g.norm_prefetch = env_int("MKCHAT_NORM_PREFETCH", 1);
  g.attn_single_max = env_int("MKCHAT_ATTN_SINGLE_MAX", 128);
  g.diag = env_int("MKCHAT_DIAG", 0);  // diagnostics: vm.cuh kDiag*
  int *dn = nullptr, *dc = nullptr;
  cudaHostGetDevicePointer((void **)&dn, (void *)&st->hs->n, 0);
  cudaHostGetDevicePointer((void **)&dc, (void *)&st->hs->cancel, 0);
  g.host.n = dn;
  g.host.cancel = dc;
  cudaHostGetDevicePointer((void **)&g.host.tokens, st->h_tokens, 0);
  cudaHostGetDevicePointer((void **)&g.host.t_ns, st->h_t_ns, 0);
  cudaHostGetDevicePointer((void **)&g.host.logprob, st->h_logprob, 0);
  cudaHostGetDevicePointer((void **)&g.host.top_ids, st->h_top_ids, 0);
  cudaHostGetDevicePointer((void **)&g.host.top_lp, st->h_top_lp, 0);
  g.host.cap = st->h_cap;
  return g;
}

// Reset the per-launch device state, run one launch, wait for it (polling the host stream through `poll`), and
// report a counter timeout with the instruction that was stuck.
template <typename Poll>
int run_launch(mk_engine *e, CudaState *st, const mk::Globals &g, Poll poll) {
  CK(e, cudaMemsetAsync(st->counters, 0, sizeof(uint32_t) * st->n_counters, st->stream));
  CK(e, cudaMemsetAsync(st->attn_arrive, 0, sizeof(uint32_t) * e->cfg.n_layers * e->cfg.n_kv_heads, st->stream));
  mk::Ctrl ctrl;
  memset(&ctrl, 0, sizeof ctrl);
  ctrl.stop_step = 0x7fffffff;
  CK(e, cudaMemcpyAsync(st->ctrl, &ctrl, sizeof ctrl, cudaMemcpyHostToDevice, st->stream));
  CK(e, cudaStreamSynchronize(st->stream));
  st->hs->n = 0;
  __atomic_store_n(&st->hs->cancel, 0, __ATOMIC_RELEASE);
  CK(e, mk::launch_megakernel(g, st->n_queues, st->stream));
  for (;;) {
    const cudaError_t q = cudaStreamQuery(st->stream);
    poll();
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) return cuda_fail(e, q, "megakernel", __FILE__, __LINE__);
    usleep(20);
  }
  poll();
  CK(e, cudaMemcpy(&ctrl, st->ctrl, sizeof ctrl, cudaMemcpyDeviceToHost));
  if (ctrl.abort) {
    const int ms = e->params.timeout_ms > 0 ? e->params.timeout_ms : 5000;
    if (ctrl.err_counter < 0)
      return mk_set_error(e, MK_ERR_TIMEOUT,
                          "megakernel: SM %d waited over %d ms at instruction %d (%s, layer %d, step %d) for weight "
                          "page %u of its stream (the producer had issued %u)",
                          ctrl.err_sm, ms, ctrl.err_instr, mk_op_name(ctrl.err_op), ctrl.err_layer, ctrl.err_step,
                          ctrl.err_required - 1, ctrl.err_value);
    return mk_set_error(e, MK_ERR_TIMEOUT,
                        "megakernel: SM %d waited over %d ms at instruction %d (%s, layer %d, step %d) for counter %d "
                        "to reach %u (it is %u)",
                        ctrl.err_sm, ms, ctrl.err_instr, mk_op_name(ctrl.err_op), ctrl.err_layer, ctrl.err_step,
                        ctrl.err_counter, ctrl.err_required, ctrl.err_value);
  }
  return MK_OK;
}

// One CSV row per instruction of the traced step: queue (SM), index, op, layer, args, and its wait-begin, wait-end,
// first-page (-1: it streams no pages), compute-done and done (signalled) times in ns from the earliest wait-begin,
// and an op-specific midpoint (vm.cuh PageCursor::note_mid; -1: none).
void write_trace(const CudaState *st, const unsigned long long *d_trace, size_t n_instr, int step, const char *path) {
  constexpr int W = mk::kTraceWords;
  std::vector<unsigned long long> tr(W * n_instr);
  if (cudaMemcpy(tr.data(), d_trace, sizeof(unsigned long long) * tr.size(), cudaMemcpyDeviceToHost) != cudaSuccess)
    return;
  unsigned long long t0 = ~0ull;
  for (size_t i = 0; i < n_instr; ++i)
    if (tr[W * i]) t0 = std::min(t0, tr[W * i]);
  FILE *f = fopen(path, "w");
  if (!f) return;
  fprintf(f,
          "queue,instr,op,layer,a0,a1,a2,wait_begin_ns,wait_end_ns,first_page_ns,run_end_ns,done_ns,step,mid_ns\n");
  for (int q = 0; q < st->n_queues; ++q) {
    for (int i = st->h_queue_start[q]; i < st->h_queue_start[q + 1]; ++i) {
      const int *w = &st->h_instr[(size_t)i * MK_INSTR_WORDS];
      const unsigned long long *t = &tr[(size_t)W * i];
      const auto rel = [&](unsigned long long v) { return v ? (long long)(v - t0) : -1ll; };
      fprintf(f, "%d,%d,%s,%d,%d,%d,%d,%lld,%lld,%lld,%lld,%lld,%d,%lld\n", q, i, mk_op_name(w[MK_I_OP]),
              w[MK_I_LAYER], w[MK_I_A0], w[MK_I_A1], w[MK_I_A2], rel(t[0]), rel(t[1]), rel(t[2]), rel(t[3]), rel(t[4]),
              step, rel(t[5]));
    }
  }
  fclose(f);
}

}  // namespace

// --- backend.h -------------------------------------------------------------------------------------------------------
extern "C" int mk_cuda_probe(char *name_or_reason, int cap) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    snprintf(name_or_reason, cap, "no CUDA GPU: %s", err != cudaSuccess ? cudaGetErrorString(err) : "no device");
    cudaGetLastError();
    return 0;
  }
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
    snprintf(name_or_reason, cap, "no CUDA GPU: cannot read device properties");
    return 0;
  }
  if (p.major != 9 || p.minor != 0) {
    snprintf(name_or_reason, cap, "%s is sm_%d%d; the megakernel needs sm_90 (Hopper: H100/H200)", p.name, p.major,
             p.minor);
    return 0;
  }
  snprintf(name_or_reason, cap, "%s", p.name);
  return 1;
}

extern "C" int mk_cuda_create(mk_engine *e) {
  char why[256];
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    mk_cuda_probe(why, sizeof why);
    return mk_set_error(e, MK_ERR_NO_DEVICE, "%s", why);
  }
  if (e->params.gpu_index < 0 || e->params.gpu_index >= n)
    return mk_set_error(e, MK_ERR_INVALID, "gpu_index %d: there are %d GPUs", e->params.gpu_index, n);
  cudaDeviceProp p;
  CK(e, cudaGetDeviceProperties(&p, e->params.gpu_index));
  if (p.major != 9 || p.minor != 0)
    return mk_set_error(e, MK_ERR_UNSUPPORTED_DEVICE, "%s is sm_%d%d; the megakernel needs sm_90 (Hopper)", p.name,
                        p.major, p.minor);
  if ((size_t)p.sharedMemPerBlockOptin < mk::kMegakernelSmem)
    return mk_set_error(e, MK_ERR_UNSUPPORTED_DEVICE, "%s offers %zu bytes of shared memory per block, need %zu",
                        p.name, (size_t)p.sharedMemPerBlockOptin, mk::kMegakernelSmem);
  int rc = check_shape(e);
  if (rc != MK_OK) return rc;
  CudaState *st = new CudaState();
  e->cuda = st;
  st->device = e->params.gpu_index;
  st->n_sms = p.multiProcessorCount;
  snprintf(st->name, sizeof st->name, "%s", p.name);
  CK(e, cudaSetDevice(st->device));
  CK(e, cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
  const mk_model_config &c = e->cfg;
  const size_t ctx = e->params.ctx_len;
  const size_t kv = (size_t)c.n_layers * c.n_kv_heads * ctx * c.head_dim;
  CK(e, cudaMalloc(&st->kcache, kv * sizeof(bf16)));
  CK(e, cudaMalloc(&st->vcache, kv * sizeof(bf16)));
  CK(e, cudaMalloc(&st->resid, sizeof(float) * (2 * c.n_layers + 1) * c.dim));
  // q, then this position's k and v: all the fused QKV rows (QkvOp publishes them in one piece; ATTN reads the current
  // position's k/v here rather than from the cache)
  CK(e, cudaMalloc(&st->q, sizeof(float) * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim));
  CK(e, cudaMalloc(&st->attn, sizeof(float) * c.n_heads * c.head_dim));
  CK(e, cudaMalloc(&st->h, sizeof(float) * c.hidden_dim));
  CK(e, cudaMalloc(&st->logits, sizeof(float) * c.vocab_size));
  CK(e, cudaMalloc(&st->ctrl, sizeof(mk::Ctrl)));
  CK(e, cudaMalloc(&st->attn_arrive, sizeof(uint32_t) * c.n_layers * c.n_kv_heads));
  st->tokens_cap = (int)ctx + 2;
  CK(e, cudaMalloc(&st->tokens, sizeof(int) * st->tokens_cap));
  // The token stream: mapped pinned memory, one slot per position the context can hold.
  st->h_cap = (int)ctx;
  CK(e, cudaHostAlloc(&st->hs, sizeof(HostStreamMem), cudaHostAllocMapped));
  CK(e, cudaHostAlloc(&st->h_tokens, sizeof(int) * ctx, cudaHostAllocMapped));
  CK(e, cudaHostAlloc(&st->h_t_ns, sizeof(unsigned long long) * ctx, cudaHostAllocMapped));
  CK(e, cudaHostAlloc(&st->h_logprob, sizeof(float) * ctx, cudaHostAllocMapped));
  CK(e, cudaHostAlloc(&st->h_top_ids, sizeof(int) * ctx * MK_MAX_LOGPROBS, cudaHostAllocMapped));
  CK(e, cudaHostAlloc(&st->h_top_lp, sizeof(float) * ctx * MK_MAX_LOGPROBS, cudaHostAllocMapped));
  memset(st->hs, 0, sizeof(HostStreamMem));
  return MK_OK;
}

extern "C" int mk_cuda_load(mk_engine *e) {
  CudaState *st = state(e);
  const mk_model_config &c = e->cfg;
  const size_t dim = c.dim, hd = c.head_dim;
  int rc = upload(e, st, e->w.embed, (size_t)c.vocab_size * dim, &st->embed);
  if (rc) return rc;
  if ((rc = upload(e, st, e->w.final_norm, dim, &st->final_norm))) return rc;
  if (e->w.lm_head == e->w.embed) st->lm_head = st->embed;
  else if ((rc = upload(e, st, e->w.lm_head, (size_t)c.vocab_size * dim, &st->lm_head))) return rc;
  st->layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const mk_layer_weights &w = e->w.layers[l];
    mk::LayerW &d = st->layers[l];
    if ((rc = upload(e, st, w.attn_norm, dim, &d.attn_norm))) return rc;
    if ((rc = upload_qkv(e, st, w, c, &d.wqkv))) return rc;
    if ((rc = upload(e, st, w.wo, dim * c.n_heads * hd, &d.wo))) return rc;
    if ((rc = upload(e, st, w.ffn_norm, dim, &d.ffn_norm))) return rc;
    if ((rc = upload_gate_up(e, st, w, c, &d.wgu))) return rc;
    if ((rc = upload_down(e, st, w.w_down, c.dim, c.hidden_dim, &d.wd))) return rc;
  }
  CK(e, cudaMalloc(&st->d_layers, sizeof(mk::LayerW) * c.n_layers));
  CK(e, cudaMemcpy(st->d_layers, st->layers.data(), sizeof(mk::LayerW) * c.n_layers, cudaMemcpyHostToDevice));
  std::vector<float> inv;
  rope_inv_freq(c, inv);
  CK(e, cudaMalloc(&st->inv_freq, sizeof(float) * inv.size()));
  CK(e, cudaMemcpy(st->inv_freq, inv.data(), sizeof(float) * inv.size(), cudaMemcpyHostToDevice));
  return MK_OK;
}

extern "C" int mk_cuda_set_program(mk_engine *e, const int32_t *words, int32_t n_words) {
  CudaState *st = state(e);
  mk_program_view v;
  int rc = mk_program_parse(e, words, n_words, &v);
  if (rc != MK_OK) return rc;
  if (v.n_queues > st->n_sms)
    return mk_set_error(e, MK_ERR_INVALID, "program has %d queues but %s has %d SMs (one block per SM)", v.n_queues,
                        st->name, st->n_sms);
  if (v.attn_splits > mk::kMaxSplits)
    return mk_set_error(e, MK_ERR_INVALID, "program has %d attention splits (at most %d on CUDA)", v.attn_splits,
                        mk::kMaxSplits);
  if (v.down_chunk != e->cfg.dim)
    return mk_set_error(e, MK_ERR_INVALID, "program's DOWN chunk %d must equal hidden_size %d on CUDA", v.down_chunk,
                        e->cfg.dim);
  bool uses_mlp = false;
  for (int i = 0; i < v.n_instructions; ++i) uses_mlp |= v.instr[(size_t)i * MK_INSTR_WORDS + MK_I_OP] == MK_OP_MLP;
  if (uses_mlp && !st->layers.empty() && !st->layers[0].wdt) {
    // MLP's transposed down projection is uploaded only for programs that use it (537 MB for Llama-3.2-1B).
    const mk_model_config &c = e->cfg;
    for (int l = 0; l < c.n_layers; ++l) {
      const int rc = upload_down_t(e, st, e->w.layers[l].w_down, c.dim, c.hidden_dim, &st->layers[l].wdt);
      if (rc != MK_OK) return rc;
    }
    CK(e, cudaMemcpy(st->d_layers, st->layers.data(), sizeof(mk::LayerW) * c.n_layers, cudaMemcpyHostToDevice));
  }
  for (int i = 0; i < v.n_instructions; ++i) {
    const int32_t *w = v.instr + (size_t)i * MK_INSTR_WORDS;
    if (w[MK_I_OP] == MK_OP_LMHEAD && w[MK_I_A1] > mk::kMaxRows)
      return mk_set_error(e, MK_ERR_INVALID, "instruction %d: LMHEAD of %d rows (at most %d on CUDA)", i, w[MK_I_A1],
                          mk::kMaxRows);
    if ((w[MK_I_OP] == MK_OP_QKV || w[MK_I_OP] == MK_OP_GATEUP || w[MK_I_OP] == MK_OP_MLP) &&
        2 * w[MK_I_A1] > mk::kMaxRows)
      return mk_set_error(e, MK_ERR_INVALID, "instruction %d: %s of %d rows (at most %d on CUDA)", i,
                          mk_op_name(w[MK_I_OP]), 2 * w[MK_I_A1], mk::kMaxRows);
    if ((w[MK_I_OP] == MK_OP_OPROJ || w[MK_I_OP] == MK_OP_DOWN) && w[MK_I_A1] > mk::kMaxRows)
      return mk_set_error(e, MK_ERR_INVALID, "instruction %d: %s of %d rows (at most %d on CUDA)", i,
                          mk_op_name(w[MK_I_OP]), w[MK_I_A1], mk::kMaxRows);
  }
  cudaFree(st->instr);
  cudaFree(st->queue_start);
  cudaFree(st->per_token);
  cudaFree(st->counters);
  cudaFree(st->attn_part);
  cudaFree(st->lm_part);
  st->have_program = false;
  CK(e, cudaMalloc(&st->instr, sizeof(int) * MK_INSTR_WORDS * std::max(1, v.n_instructions)));
  CK(e, cudaMemcpy(st->instr, v.instr, sizeof(int) * MK_INSTR_WORDS * v.n_instructions, cudaMemcpyHostToDevice));
  CK(e, cudaMalloc(&st->queue_start, sizeof(int) * (v.n_queues + 1)));
  CK(e, cudaMemcpy(st->queue_start, v.queue_start, sizeof(int) * (v.n_queues + 1), cudaMemcpyHostToDevice));
  CK(e, cudaMalloc(&st->per_token, sizeof(int) * v.n_counters));
  CK(e, cudaMemcpy(st->per_token, v.per_token, sizeof(int) * v.n_counters, cudaMemcpyHostToDevice));
  CK(e, cudaMalloc(&st->counters, sizeof(uint32_t) * v.n_counters));
  CK(e, cudaMalloc(&st->attn_part,
                   sizeof(float) * e->cfg.n_heads * v.attn_splits * (e->cfg.head_dim + 2)));
  CK(e, cudaMalloc(&st->lm_part, sizeof(mk::LmPart) * std::max(1, v.n_lm_parts)));
  st->h_instr.assign(v.instr, v.instr + (size_t)MK_INSTR_WORDS * v.n_instructions);
  st->h_queue_start.assign(v.queue_start, v.queue_start + v.n_queues + 1);
  st->n_queues = v.n_queues;
  st->n_counters = v.n_counters;
  st->attn_splits = v.attn_splits;
  st->attn_per_head = v.attn_per_head;
  st->n_lm_parts = v.n_lm_parts;
  st->have_program = true;
  return MK_OK;
}

extern "C" int mk_cuda_device_info(const mk_engine *e, int32_t *n_queues, char *name, int32_t cap) {
  const CudaState *st = state(e);
  if (n_queues) *n_queues = st->n_sms;
  if (name && cap > 0) snprintf(name, cap, "%s", st->name);
  return MK_OK;
}

static void fill_sampling(mk::SampleParams &sp, const mk_sampling_params *p) {
  memset(&sp, 0, sizeof sp);
  sp.temperature = p->temperature;
  sp.top_p = p->top_p;
  sp.top_k = p->top_k;
  sp.logprobs = p->logprobs;
  sp.seed = ((unsigned long long)p->seed_hi << 32) | p->seed_lo;
  sp.n_stop = p->n_stop_ids;
  for (int i = 0; i < p->n_stop_ids && i < 16; ++i) sp.stop_ids[i] = p->stop_ids[i];
  const bool filtered = p->temperature > 0.f && (p->top_k > 0 || p->top_p < 1.f);
  sp.need_candidates = filtered || p->logprobs > 0;
  sp.gumbel = p->temperature > 0.f && !filtered;
}

extern "C" int mk_cuda_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits) {
  CudaState *st = state(e);
  if (!st->have_program) return mk_set_error(e, MK_ERR_STATE, "CUDA prefill: no instruction program installed");
  CK(e, cudaMemcpyAsync(st->tokens, tokens, sizeof(int) * n, cudaMemcpyHostToDevice, st->stream));
  mk::Globals g = base_globals(e, st);
  g.n_steps = n;
  g.sample_from_step = n;                   // nothing is sampled
  g.lm_from_step = logits ? n - 1 : n;      // the LM head runs for the last token only when its logits are wanted
  g.max_tokens = 0;
  mk_sampling_params dp;
  mk_default_sampling_params(&dp);
  dp.temperature = 0.f;  // greedy: the LM head then skips the candidate sort
  dp.logprobs = 0;
  fill_sampling(g.sp, &dp);
  int rc = run_launch(e, st, g, [] {});
  if (rc != MK_OK) return rc;
  if (logits) CK(e, cudaMemcpy(logits, st->logits, sizeof(float) * e->cfg.vocab_size, cudaMemcpyDeviceToHost));
  e->pos += n;
  return MK_OK;
}

extern "C" int mk_cuda_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *p,
                                mk_stream *stream, const mk_stream_arrays *arrays) {
  CudaState *st = state(e);
  if (!st->have_program) return mk_set_error(e, MK_ERR_STATE, "CUDA generate: no instruction program installed");
  if (p->top_k > mk::kCandidates)
    return mk_set_error(e, MK_ERR_INVALID, "top_k %d: the CUDA sampler keeps at most %d candidates", p->top_k,
                        mk::kCandidates);
  const double t0 = now_us();
  const int room = e->params.ctx_len - e->pos;  // positions left; check_run guaranteed room >= n_prompt
  const long long want = (long long)n_prompt + p->max_tokens - 1;
  const int n_steps = (int)std::min<long long>(want, room);
  CK(e, cudaMemcpyAsync(st->tokens, prompt, sizeof(int) * n_prompt, cudaMemcpyHostToDevice, st->stream));
  mk::Globals g = base_globals(e, st);
  g.n_steps = n_steps;
  g.sample_from_step = n_prompt - 1;
  g.lm_from_step = n_prompt - 1;
  g.max_tokens = p->max_tokens;
  fill_sampling(g.sp, p);
  // MKCHAT_TRACE=<file>: time every instruction of one steady decode step (diagnostics; see tests/gpu/trace_summary.py)
  const char *trace_path = getenv("MKCHAT_TRACE");
  unsigned long long *trace = nullptr;
  const size_t n_instr = st->h_instr.size() / MK_INSTR_WORDS;
  if (trace_path && *trace_path) {
    CK(e, cudaMalloc(&trace, sizeof(unsigned long long) * mk::kTraceWords * n_instr));
    CK(e, cudaMemset(trace, 0, sizeof(unsigned long long) * mk::kTraceWords * n_instr));
    g.trace = trace;
    g.trace_step = g.sample_from_step + std::max(1, std::min(p->max_tokens, n_steps - g.sample_from_step) / 2);
  }
  const int k = p->logprobs;
  int published = 0;
  double first_us = 0.0;
  auto poll = [&] {
    const int n = std::min(__atomic_load_n(&st->hs->n, __ATOMIC_ACQUIRE), arrays->capacity);
    for (; published < n; ++published) {
      if (published == 0) first_us = now_us() - t0;
      arrays->tokens[published] = st->h_tokens[published];
      arrays->t_us[published] = first_us + (double)(st->h_t_ns[published] - st->h_t_ns[0]) / 1000.0;
      if (arrays->logprob) arrays->logprob[published] = k > 0 ? st->h_logprob[published] : 0.f;
      for (int i = 0; i < k; ++i) {
        if (arrays->top_ids) arrays->top_ids[published * k + i] = st->h_top_ids[published * k + i];
        if (arrays->top_logprobs) arrays->top_logprobs[published * k + i] = st->h_top_lp[published * k + i];
      }
      __atomic_store_n(&stream->n_tokens, published + 1, __ATOMIC_RELEASE);
    }
    if (__atomic_load_n(&stream->cancel, __ATOMIC_ACQUIRE)) __atomic_store_n(&st->hs->cancel, 1, __ATOMIC_RELEASE);
  };
  int rc = run_launch(e, st, g, poll);
  if (trace) {
    if (rc == MK_OK) write_trace(st, trace, n_instr, g.trace_step, trace_path);
    cudaFree(trace);
  }
  if (rc != MK_OK) return rc;
  mk::Ctrl ctrl;
  CK(e, cudaMemcpy(&ctrl, st->ctrl, sizeof ctrl, cudaMemcpyDeviceToHost));
  const int steps_run = ctrl.stop_step < n_steps ? ctrl.stop_step + 1 : n_steps;
  e->pos += steps_run;
  stream->n_prefill = n_prompt;
  stream->prefill_us = first_us;
  stream->decode_us = published > 1 ? arrays->t_us[published - 1] - arrays->t_us[0] : 0.0;
  const int finish = ctrl.finish ? ctrl.finish : MK_FINISH_LENGTH;
  __atomic_store_n(&stream->finish, finish, __ATOMIC_RELEASE);
  return finish;
}

extern "C" int mk_cuda_truncate(mk_engine *, int32_t) { return MK_OK; }  // positions past n are overwritten later

extern "C" int mk_cuda_read_bandwidth(mk_engine *e, double *gbps) {
  CudaState *st = state(e);
  const size_t bytes = (size_t)2 << 30;  // 2 GiB: 30x the L2, about one decode step's worth of weights
  void *buf = nullptr;
  unsigned long long *sink = nullptr;
  CK(e, cudaMalloc(&buf, bytes));
  CK(e, cudaMalloc(&sink, sizeof *sink));
  CK(e, cudaMemsetAsync(buf, 0x5a, bytes, st->stream));
  cudaEvent_t a, b;
  CK(e, cudaEventCreate(&a));
  CK(e, cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < 12; ++i) {
    CK(e, cudaEventRecord(a, st->stream));
    CK(e, mk::launch_read_probe(buf, bytes, sink, st->n_sms, st->stream));
    CK(e, cudaEventRecord(b, st->stream));
    CK(e, cudaEventSynchronize(b));
    float t = 0.f;
    CK(e, cudaEventElapsedTime(&t, a, b));
    if (i >= 2) ms.push_back(t);  // two warm-ups
  }
  std::sort(ms.begin(), ms.end());
  *gbps = (double)bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(buf);
  cudaFree(sink);
  return MK_OK;
}

extern "C" void mk_cuda_free(mk_engine *e) {
  CudaState *st = state(e);
  if (!st) return;
  cudaSetDevice(st->device);
  for (void *p : st->weight_allocs) cudaFree(p);
  void *dev[] = {st->d_layers, st->inv_freq, st->resid, st->q, st->attn, st->h, st->logits, st->kcache, st->vcache,
                 st->tokens, st->ctrl, st->instr, st->queue_start, st->per_token, st->counters, st->attn_arrive,
                 st->attn_part, st->lm_part};
  for (void *p : dev) cudaFree(p);
  void *host[] = {st->hs, st->h_tokens, st->h_t_ns, st->h_logprob, st->h_top_ids, st->h_top_lp};
  for (void *p : host) cudaFreeHost(p);
  if (st->stream) cudaStreamDestroy(st->stream);
  delete st;
  e->cuda = nullptr;
}
