/*
 * generate.c — what every CPU generation loop shares: publishing a token to the caller's stream, stop ids, cancel.
 *
 * The stream header is memory the caller reads while we run: the arrays of token i are written first and n_tokens
 * is published after them with a release store, so a caller that acquire-loads n_tokens == i + 1 sees them complete.
 */
#include "cpu.h"

void mk_publish_token(mk_stream *stream, const mk_stream_arrays *arrays, int32_t logprobs, int32_t i, int32_t token,
                      double t_us, float logprob, const int32_t *top_ids, const float *top_lp) {
  arrays->tokens[i] = token;
  if (arrays->t_us) arrays->t_us[i] = t_us;
  if (arrays->logprob) arrays->logprob[i] = logprob;
  for (int32_t k = 0; k < logprobs; k++) {
    if (arrays->top_ids) arrays->top_ids[(size_t)i * logprobs + k] = top_ids[k];
    if (arrays->top_logprobs) arrays->top_logprobs[(size_t)i * logprobs + k] = top_lp[k];
  }
  __atomic_store_n(&stream->n_tokens, i + 1, __ATOMIC_RELEASE);
}

int mk_is_stop(const mk_sampling_params *sp, int32_t token) {
  for (int32_t k = 0; k < sp->n_stop_ids; k++)
    if (sp->stop_ids[k] == token) return 1;
  return 0;
}

int mk_cancelled(const mk_stream *stream) { return __atomic_load_n(&stream->cancel, __ATOMIC_ACQUIRE) != 0; }
