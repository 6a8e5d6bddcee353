/*
 * engine_internal.h — internal, not ABI: the engine struct that native/engine.c (the ABI layer), native/cpu/ (the
 * CPU reference engine and interpreter) and native/cuda/ (the megakernel backend, see backend.h) share.
 *
 * Ownership: engine.c creates and frees the struct, declares and maps the weights (e->w) and validates and keeps the
 * instruction program (e->program). The CPU engine keeps its state behind e->cpu, the CUDA backend behind e->cuda.
 * e->pos (tokens in the KV cache) is advanced by whichever backend runs the tokens.
 */
#ifndef MKCHAT_ENGINE_INTERNAL_H
#define MKCHAT_ENGINE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mkchat.h"
#include "program.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MK_VERSION "0.1.0"
#define MK_ERROR_CAP 512

/* ---- declared tensors (mk_engine_add_tensor) -------------------------------------------------------------------- */
typedef struct mk_tensor_decl {
  char *name;              /* HF name, e.g. "model.layers.3.mlp.up_proj.weight" */
  char *path;              /* safetensors file */
  uint64_t offset, nbytes; /* absolute byte range of the data in the file */
  int32_t dtype;           /* mk_dtype */
  int64_t d0, d1;          /* shape (d1 = 0 for 1-D) */
  const uint16_t **slot;   /* where the bf16 host pointer goes (a field of e->w) */
} mk_tensor_decl;

/* One mapped weights file (several tensors share it). */
typedef struct mk_mapped_file {
  char *path;
  void *base;  /* mmap of the whole file, read-only */
  size_t size;
} mk_mapped_file;

/* ---- the engine ------------------------------------------------------------------------------------------------- */
struct mk_layer_weights {
  const uint16_t *attn_norm; /* (dim)                        input_layernorm */
  const uint16_t *wq;        /* (n_heads*hd, dim) */
  const uint16_t *wk;        /* (n_kv*hd, dim) */
  const uint16_t *wv;        /* (n_kv*hd, dim) */
  const uint16_t *wo;        /* (dim, n_heads*hd) */
  const uint16_t *ffn_norm;  /* (dim)                        post_attention_layernorm */
  const uint16_t *w_gate;    /* (hidden, dim) */
  const uint16_t *w_up;      /* (hidden, dim) */
  const uint16_t *w_down;    /* (dim, hidden) */
};

struct mk_engine {
  mk_model_config cfg;
  mk_engine_params params; /* n_threads resolved (> 0) by engine.c at create */

  /* declared tensors and the files they live in */
  mk_tensor_decl *tensors;
  int32_t n_tensors, cap_tensors;
  mk_mapped_file *files;
  int32_t n_files;
  void **owned; /* bf16 copies made at load for F16/F32 tensors, freed with the engine */
  int32_t n_owned;

  /* ALL weights as bf16 host pointers: into the mmap when the tensor is BF16, else into a converted copy */
  struct {
    const uint16_t *embed;            /* (vocab, dim) */
    struct mk_layer_weights *layers;  /* [n_layers] */
    const uint16_t *final_norm;       /* (dim) */
    const uint16_t *lm_head;          /* (vocab, dim); == embed when tied */
  } w;
  int32_t loaded; /* mk_engine_load succeeded */

  /* the instruction program, validated by mk_program_parse at mk_engine_set_program; owned copy */
  int32_t *program;
  int32_t program_words;

  int32_t pos;      /* tokens in the KV cache */
  int32_t busy;     /* a prefill/generate is running (the ABI allows one call at a time) */
  char last_error[MK_ERROR_CAP];

  void *cpu;  /* native/cpu/ state (KV cache, activations, thread pool) */
  void *cuda; /* native/cuda/ state */
};

/*
 * Record a one-line error message (printf format) on e, or on the calling thread's engine-less error slot when e is
 * NULL, and return status. Usage: return mk_set_error(e, MK_ERR_WEIGHTS, "tensor %s: ...", name);
 */
int mk_set_error(mk_engine *e, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- the instruction program, parsed (see program.h) ------------------------------------------------------------ */
typedef struct mk_program_view {
  const int32_t *header;      /* [MK_PROG_HEADER_WORDS] */
  const int32_t *per_token;   /* [n_counters] increments of each counter per token */
  const int32_t *queue_start; /* [n_queues + 1] */
  const int32_t *instr;       /* [n_instructions][MK_INSTR_WORDS] */
  int32_t n_queues, n_counters, n_instructions;
  int32_t attn_splits, down_chunk, n_lm_parts;
  int32_t attn_per_head;      /* header MK_PH_ATTN_PER_HEAD: 0 or 1 */
} mk_program_view;

/*
 * Check words against program.h and e->cfg (magic, version, sizes, queue bounds, opcodes, counter ids, argument
 * ranges) and fill *out with pointers into words. On failure: MK_ERR_INVALID naming the instruction index.
 * e may be NULL only for the header/size checks; argument ranges need e->cfg and e->params.ctx_len.
 */
int mk_program_parse(mk_engine *e, const int32_t *words, int32_t n_words, mk_program_view *out);

/* "QKV", "ATTN", ... for messages; "?" when op is not an opcode */
const char *mk_op_name(int op);

/* Monotonic clock in microseconds (CLOCK_MONOTONIC). */
double mk_now_us(void);

#ifdef __cplusplus
}
#endif
#endif /* MKCHAT_ENGINE_INTERNAL_H */
