// sample.cuh — MK_OP_SAMPLE: merge the LMHEAD parts, choose the next token, stream it to the host, decide the stop.
// Args: a0 = number of parts.
//
// Greedy and temperature-only sampling are exact over the whole vocabulary (argmax; Gumbel-max). top-k and top-p act
// on the 64 most likely tokens (the merged candidates): exact for top_k <= 64 and for any nucleus that fits in 64
// tokens; a wider nucleus is cut at 64 (MK_CUDA_MAX_TOP_K in mkchat.h). Log-probabilities are of the raw (T = 1)
// distribution, normalised over the whole vocabulary.
#pragma once
#include "lmhead.cuh"

namespace mk {

enum { kFinishStop = 1, kFinishLength = 2, kFinishContext = 3, kFinishCancelled = 4 };

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct SampleOp {
  __device__ static int rows(const Globals &, const int *, int, int) { return 0; }

  // The K largest candidates of all parts, sorted, into s.out / s.ids[0..K). Radix select of the K-th largest key
  // (4 passes of 8 bits), then a gather and a small sort. Returns K.
  __device__ static int merge_candidates(const Globals &g, Smem &s, int nparts) {
    int total = 0;
    for (int j = 0; j < nparts; ++j) total += g.lm_part[j].ncand;  // L2-resident, tiny
    const int K = min(kCandidates, total);
    int *hist = s.ids;
    uint32_t prefix = 0, mask = 0;
    int remaining = K;
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      for (int b = ctid(); b < 256; b += kConsumerThreads) hist[b] = 0;
      consumer_sync();
      for (int j = ctid(); j < nparts; j += kConsumerThreads) {
        const LmPart &p = g.lm_part[j];
        const int nc = __ldcg(&p.ncand);
        for (int c = 0; c < nc; ++c) {
          const uint32_t key = order_key(__ldcg(&p.cval[c]));
          if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1);
        }
      }
      consumer_sync();
      if (ctid() == 0) {
        int cum = 0, b = 255;
        for (; b > 0; --b) {
          if (cum + hist[b] >= remaining) break;
          cum += hist[b];
        }
        s.flag = b;
        s.scratch[0] = __int_as_float(remaining - cum);
      }
      consumer_sync();
      prefix |= (uint32_t)s.flag << shift;
      mask |= 255u << shift;
      remaining = __float_as_int(s.scratch[0]);
      consumer_sync();
    }
    // Gather: every key above the threshold, and `remaining` of those equal to it.
    if (ctid() == 0) { s.flag = 0; s.scratch[1] = __int_as_float(0); }
    consumer_sync();
    int *n_eq = reinterpret_cast<int *>(&s.scratch[1]);
    for (int j = ctid(); j < nparts; j += kConsumerThreads) {
      const LmPart &p = g.lm_part[j];
      const int nc = __ldcg(&p.ncand);
      for (int c = 0; c < nc; ++c) {
        const float v = __ldcg(&p.cval[c]);
        const uint32_t key = order_key(v);
        bool take = key > prefix;
        if (key == prefix) take = atomicAdd(n_eq, 1) < remaining;
        if (take) {
          const int at = atomicAdd(&s.flag, 1);
          s.xs[at] = v;
          s.xs[kCandidates + at] = __int_as_float(__ldcg(&p.cid[c]));
        }
      }
    }
    consumer_sync();
    for (int k = ctid(); k < kCandidates; k += kConsumerThreads) {
      s.out[k] = k < K ? s.xs[k] : -CUDART_INF_F;
      s.ids[k] = k < K ? __float_as_int(s.xs[kCandidates + k]) : INT_MAX;
    }
    consumer_sync();
    bitonic_sort_desc(s.out, s.ids, kCandidates);
    return K;
  }

  // Returns false: SAMPLE bumps its instruction's counter itself as soon as the token and the stop decision are out,
  // before it streams the token to the host (a system-scope fence), which is then off the next token's path.
  __device__ static bool run(const Globals &g, Smem &s, PageCursor &, const int *a, int, int step) {
    if (step < g.sample_from_step) {  // a prompt step: nothing to sample (run_op ends synchronised)
      consumer_sync();
      return true;
    }
    const int nparts = a[0], gen = step - g.sample_from_step;
    const SampleParams &sp = g.sp;
    // The host's cancel flag is in pinned host memory (a PCIe round trip): read now, used at the end.
    const int cancel = ctid() == 0 ? *g.host.cancel : 0;
    // One pass over the parts: global max / argmax, and the partition functions relative to this thread's running
    // max (rescaled to the global max after the reduction), so the parts are read once.
    float best = -CUDART_INF_F, m_t = -CUDART_INF_F, z1 = 0.f, zT = 0.f;
    int best_id = INT_MAX;
    for (int j = ctid(); j < nparts; j += kConsumerThreads) {
      const LmPart &p = g.lm_part[j];
      const float v = __ldcg(&p.max), s1 = __ldcg(&p.sumexp1), sT = __ldcg(&p.sumexpT);
      const int id = __ldcg(&p.argmax);
      if (better(v, id, best, best_id)) { best = v; best_id = id; }
      const float m_new = fmaxf(m_t, v);
      z1 = z1 * expf(m_t - m_new) + s1 * expf(v - m_new);
      if (sp.temperature > 0.f) zT = zT * expf((m_t - m_new) / sp.temperature) + sT * expf((v - m_new) / sp.temperature);
      m_t = m_new;
    }
    block_argmax(s, &best, &best_id);
    z1 = block_sum(s, m_t == -CUDART_INF_F ? 0.f : z1 * expf(m_t - best));
    if (sp.temperature > 0.f) zT = block_sum(s, m_t == -CUDART_INF_F ? 0.f : zT * expf((m_t - best) / sp.temperature));
    const float log_z1 = best + logf(z1);

    int token = best_id;
    int K = 0;
    if (sp.need_candidates) K = merge_candidates(g, s, nparts);
    if (sp.temperature > 0.f) {
      if (sp.gumbel) {
        float gb = -CUDART_INF_F;
        int gi = INT_MAX;
        for (int j = ctid(); j < nparts; j += kConsumerThreads) {
          const float v = __ldcg(&g.lm_part[j].gbest);
          const int id = __ldcg(&g.lm_part[j].gid);
          if (better(v, id, gb, gi)) { gb = v; gi = id; }
        }
        block_argmax(s, &gb, &gi);
        token = gi;
      } else if (ctid() == 0) {
        // top-k then top-p over the sorted candidates, HF order: the nucleus is measured after top-k renormalises.
        const float T = sp.temperature;
        const int kc = sp.top_k > 0 ? min(sp.top_k, K) : K;
        float z = zT;
        if (sp.top_k > 0) {
          z = 0.f;
          for (int i = 0; i < kc; ++i) z += expf((s.out[i] - best) / T);
        }
        float cum = 0.f;
        int keep = 0;
        while (keep < kc) {
          cum += expf((s.out[keep] - best) / T) / z;
          ++keep;
          if (sp.top_p < 1.f && cum >= sp.top_p) break;
        }
        float r = (float)uniform01(sp.seed, step, -1) * cum;
        token = s.ids[keep - 1];
        for (int i = 0; i < keep; ++i) {
          r -= expf((s.out[i] - best) / T) / z;
          if (r <= 0.f) { token = s.ids[i]; break; }
        }
        s.flag = token;
      }
      if (!sp.gumbel) {
        consumer_sync();
        token = s.flag;
      }
    }
    if (ctid() == 0) {
      const int next = step + 1;
      if (next <= g.n_steps) g.tokens[next] = token;
      const unsigned long long known_ns = global_ns();
      int finish = 0;
      for (int i = 0; i < sp.n_stop; ++i)
        if (token == sp.stop_ids[i]) finish = kFinishStop;
      if (!finish && gen + 1 >= g.max_tokens) finish = kFinishLength;
      if (!finish && cancel) finish = kFinishCancelled;
      if (!finish && next >= g.n_steps) finish = kFinishContext;
      if (finish) {
        g.ctrl->finish = finish;
        g.ctrl->stop_step = step;
      }
      // The next token may start: its id, the stop decision and this thread's stores are released with the signal.
      const int signal = a[MK_I_SIGNAL - MK_I_A0];
      if (signal >= 0) signal_counter(g.counters, signal, 1);
      const HostStream &h = g.host;
      if (gen < h.cap) {
        h.tokens[gen] = token;
        h.t_ns[gen] = known_ns;
        if (sp.logprobs > 0) {
          h.logprob[gen] = __ldcg(g.logits + token) - log_z1;
          for (int i = 0; i < sp.logprobs; ++i) {
            h.top_ids[gen * sp.logprobs + i] = i < K ? s.ids[i] : -1;
            h.top_lp[gen * sp.logprobs + i] = i < K ? s.out[i] - log_z1 : -CUDART_INF_F;
          }
        }
        __threadfence_system();
        *h.n = gen + 1;
      }
    }
    consumer_sync();
    return false;  // signalled above
  }
};

}  // namespace mk
