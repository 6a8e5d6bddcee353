/*
 * no_cuda.c — the CUDA backend of a library built without nvcc (native/build.ts links this file instead of
 * native/cuda/). Every entry point says so honestly; mk_cuda_available() reports the same reason.
 */
#include <stdio.h>

#include "../backend.h"

#define NO_CUDA "this libmkchat was built without CUDA (no nvcc at build time)"

int mk_cuda_probe(char *name_or_reason, int cap) {
  if (name_or_reason && cap > 0) snprintf(name_or_reason, (size_t)cap, "%s", NO_CUDA);
  return 0;
}

int mk_cuda_create(mk_engine *e) { return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA); }
int mk_cuda_load(mk_engine *e) { return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA); }
int mk_cuda_set_program(mk_engine *e, const int32_t *words, int32_t n_words) {
  (void)words; (void)n_words;
  return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA);
}
int mk_cuda_device_info(const mk_engine *e, int32_t *n_queues, char *name, int32_t cap) {
  (void)e; (void)n_queues;
  if (name && cap > 0) snprintf(name, (size_t)cap, "%s", NO_CUDA);
  return MK_ERR_NO_DEVICE;
}
int mk_cuda_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits) {
  (void)tokens; (void)n; (void)logits;
  return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA);
}
int mk_cuda_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                     mk_stream *stream, const mk_stream_arrays *arrays) {
  (void)prompt; (void)n_prompt; (void)sp; (void)stream; (void)arrays;
  return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA);
}
int mk_cuda_truncate(mk_engine *e, int32_t n) { (void)n; return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA); }
int mk_cuda_read_bandwidth(mk_engine *e, double *gbps) {
  (void)gbps;
  return mk_set_error(e, MK_ERR_NO_DEVICE, NO_CUDA);
}
void mk_cuda_free(mk_engine *e) { (void)e; }
