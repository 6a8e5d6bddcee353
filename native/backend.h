/*
 * backend.h — internal, not ABI: what the ABI layer (native/engine.c) asks of the CUDA backend (native/cuda/).
 * Built without nvcc, native/cpu/no_cuda.c provides these and each returns MK_ERR_NO_DEVICE ("built without CUDA").
 * Every function records its own error text with mk_set_error() before returning a negative status.
 */
#ifndef MKCHAT_BACKEND_H
#define MKCHAT_BACKEND_H
#include "engine_internal.h"
#ifdef __cplusplus
extern "C" {
#endif
int mk_cuda_probe(char *name_or_reason, int cap);          /* 1 usable sm_90 GPU, 0 otherwise (reason written) */
int mk_cuda_create(mk_engine *e);                          /* device state for e->cfg / e->params; sets e->cuda */
int mk_cuda_load(mk_engine *e);                            /* upload the host weights in e->w */
int mk_cuda_set_program(mk_engine *e, const int32_t *words, int32_t n_words);
int mk_cuda_device_info(const mk_engine *e, int32_t *n_queues, char *name, int32_t cap);
int mk_cuda_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits);
int mk_cuda_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                     mk_stream *stream, const mk_stream_arrays *arrays);
int mk_cuda_truncate(mk_engine *e, int32_t n);
int mk_cuda_read_bandwidth(mk_engine *e, double *gbps);
void mk_cuda_free(mk_engine *e);
#ifdef __cplusplus
}
#endif
#endif
