/*
 * sampling.c — choosing the next token on the CPU, exact over the whole vocabulary, with HF generate's semantics:
 * logits / temperature, then top-k (keeps every token tied with the k-th logit), then top-p (drops the tokens whose
 * ascending cumulative probability is <= 1 - top_p, always keeping the most likely one), then one draw from the
 * renormalised distribution. temperature == 0 is greedy (the first maximum). The random stream is splitmix64 seeded
 * with the 64-bit seed at the start of each generation: same seed and same logits give the same tokens.
 *
 * Log-probabilities are those of the raw (T = 1, unfiltered) distribution, whatever the sampling settings.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

// ---------------------------------------------------------------------------------------------------------------------
// random numbers

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits */
static double uniform01(uint64_t *state) { return (double)(splitmix64(state) >> 11) * 0x1.0p-53; }

// ---------------------------------------------------------------------------------------------------------------------
// build / free

typedef struct { float p; int32_t id; } pid; /* a candidate token: unnormalised probability and id */

int mk_sampler_init(mk_sampler *s, const mk_sampling_params *sp, int32_t vocab) {
  s->sp = *sp;
  s->rng = ((uint64_t)sp->seed_hi << 32) | sp->seed_lo;
  s->vocab = vocab;
  s->prob = (float *)malloc((size_t)vocab * sizeof(float));
  s->cand = malloc((size_t)vocab * sizeof(pid));
  if (!s->prob || !s->cand) { mk_sampler_free(s); return MK_ERR_OOM; }
  return 0;
}

void mk_sampler_free(mk_sampler *s) {
  free(s->prob);
  free(s->cand);
  s->prob = NULL;
  s->cand = NULL;
}

// ---------------------------------------------------------------------------------------------------------------------
// helpers

double mk_logsumexp(const float *x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) if (x[i] > m) m = x[i];
  if (m == -INFINITY) return -INFINITY;
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += exp((double)x[i] - m);
  return m + log(s);
}

static int32_t argmax(const float *x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++) if (x[i] > x[best]) best = i;
  return best;
}

/* the K ids of largest x, sorted by x desc then id asc (insertion into a K-long list: K <= 20) */
static void top_k_ids(const float *x, int32_t n, int k, int32_t *ids) {
  int have = 0;
  for (int32_t i = 0; i < n; i++) {
    if (have == k && !(x[i] > x[ids[k - 1]])) continue;
    int j = have < k ? have++ : k - 1;
    while (j > 0 && x[i] > x[ids[j - 1]]) { ids[j] = ids[j - 1]; j--; }
    ids[j] = i;
  }
}

/* candidates sorted by probability desc, then id asc */
static int cmp_pid_desc(const void *a, const void *b) {
  const pid *x = (const pid *)a, *y = (const pid *)b;
  if (x->p != y->p) return x->p > y->p ? -1 : 1;
  return x->id < y->id ? -1 : (x->id > y->id);
}

// ---------------------------------------------------------------------------------------------------------------------
// the sampler

int32_t mk_sample(mk_sampler *s, const float *logits, double lse, float *logprob, int32_t *top_ids, float *top_lp) {
  const int32_t V = s->vocab;
  const mk_sampling_params *sp = &s->sp;
  int32_t token;

  if (sp->temperature == 0.0f) {
    token = argmax(logits, V);
  } else {
    /* probabilities of logits / T, unnormalised: p_i = exp((l_i - max) / T) */
    const float T = sp->temperature;
    float m = logits[argmax(logits, V)];
    float *p = s->prob;
    for (int32_t i = 0; i < V; i++) p[i] = expf((logits[i] - m) / T);

    /* top-k: keep every token whose scaled logit is >= the k-th largest (ties at the k-th are kept, as HF) */
    if (sp->top_k > 0 && sp->top_k < V) {
      /* the k-th largest probability by a selection over a copy (p is monotone in the logit) */
      float *tmp = (float *)s->cand; /* scratch: V floats fit in V candidates */
      for (int32_t i = 0; i < V; i++) tmp[i] = p[i];
      int32_t lo = 0, hi = V - 1, kth = sp->top_k - 1; /* quickselect for the element of desc rank kth */
      while (lo < hi) {
        float pivot = tmp[(lo + hi) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
          while (tmp[i] > pivot) i++;
          while (tmp[j] < pivot) j--;
          if (i <= j) { float t = tmp[i]; tmp[i] = tmp[j]; tmp[j] = t; i++; j--; }
        }
        if (kth <= j) hi = j;
        else if (kth >= i) lo = i;
        else break;
      }
      float thresh = tmp[kth];
      for (int32_t i = 0; i < V; i++) if (p[i] < thresh) p[i] = 0.0f;
    }

    /* candidates: the tokens still in (p > 0), and for top-p only those that can survive it. A token with
       probability < (1 - top_p) / V is always dropped: every token below it sums to at most V times its value.
       Their total mass still counts in the ascending cumulative sum. */
    double total = 0.0;
    for (int32_t i = 0; i < V; i++) total += p[i];
    const int use_top_p = sp->top_p < 1.0f;
    double below = 0.0; /* mass of the pre-dropped tokens (all smaller than any candidate) */
    pid *cand = (pid *)s->cand;
    int32_t nc = 0;
    {
      const double cut = use_top_p ? (1.0 - (double)sp->top_p) / V * total : 0.0;
      for (int32_t i = 0; i < V; i++) {
        if (p[i] <= 0.0f) continue;
        if (use_top_p && p[i] < cut) { below += p[i]; continue; }
        cand[nc].p = p[i];
        cand[nc].id = i;
        nc++;
      }
      qsort(cand, (size_t)nc, sizeof(pid), cmp_pid_desc);
      int32_t keep = nc;
      if (use_top_p) {
        /* ascending cumulative (normalised) probability: drop while it stays <= 1 - top_p; keep >= 1 */
        double cum = below, limit = (1.0 - (double)sp->top_p) * total;
        keep = nc;
        for (int32_t j = nc - 1; j >= 1; j--) {
          cum += cand[j].p;
          if (cum <= limit) keep = j;
          else break;
        }
      }
      double mass = 0.0;
      for (int32_t j = 0; j < keep; j++) mass += cand[j].p;
      double u = uniform01(&s->rng) * mass, acc = 0.0;
      token = cand[keep - 1].id;
      for (int32_t j = 0; j < keep; j++) {
        acc += cand[j].p;
        if (u < acc) { token = cand[j].id; break; }
      }
    }
  }

  /* log-probabilities of the raw distribution */
  if (logprob || (sp->logprobs > 0 && top_ids)) {
    if (isnan(lse)) lse = mk_logsumexp(logits, V);
    if (logprob) *logprob = (float)((double)logits[token] - lse);
    if (sp->logprobs > 0 && top_ids) {
      top_k_ids(logits, V, sp->logprobs, top_ids);
      if (top_lp) for (int k = 0; k < sp->logprobs; k++) top_lp[k] = (float)((double)logits[top_ids[k]] - lse);
    }
  }
  return token;
}
