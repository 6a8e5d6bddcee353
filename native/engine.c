/*
 * engine.c — the ABI layer of native/mkchat.h: every export checks its arguments (so that no input from the caller can
 * crash the process), keeps the engine's state rules (loaded, program installed, one call at a time), maps the weights
 * and hands the work to the CPU engine (native/cpu/) or the CUDA backend (native/backend.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "bf16.h"
#include "cpu/cpu.h"
#include "engine_internal.h"

#ifndef MK_SOURCE_HASH
#define MK_SOURCE_HASH "unknown"
#endif
#ifdef MK_WITH_CUDA
#define MK_BUILD_DEVICES "cpu+cuda(sm_90a)"
#else
#define MK_BUILD_DEVICES "cpu"
#endif

// ---------------------------------------------------------------------------------------------------------------------
// errors and small helpers

static __thread char g_error[MK_ERROR_CAP]; /* errors raised before an engine exists, per calling thread */

int mk_set_error(mk_engine *e, int status, const char *fmt, ...) {
  char *dst = e ? e->last_error : g_error;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(dst, MK_ERROR_CAP, fmt, ap);
  va_end(ap);
  return status;
}

double mk_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

int32_t mk_abi_version(void) { return MK_ABI_VERSION; }

const char *mk_build_info(void) { return "mkchat " MK_VERSION " " MK_BUILD_DEVICES " src=" MK_SOURCE_HASH; }

const char *mk_last_error(const mk_engine *e) { return e ? e->last_error : g_error; }

void mk_default_engine_params(mk_engine_params *p) {
  if (!p) return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->device = MK_DEVICE_CPU;
  p->ctx_len = 4096;
  p->n_threads = 0;
  p->cpu_mode = MK_CPU_REFERENCE;
  p->gpu_index = 0;
  p->timeout_ms = 5000;
  p->interleave_seed = 0;
}

void mk_default_sampling_params(mk_sampling_params *p) {
  if (!p) return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->temperature = 0.0f;
  p->top_p = 1.0f;
  p->top_k = 0;
  p->max_tokens = 256;
  p->logprobs = 0;
}

int32_t mk_cuda_available(char *name_or_reason, int32_t cap) {
  if (!name_or_reason || cap <= 0) {
    char tmp[256];
    return mk_cuda_probe(tmp, (int)sizeof tmp);
  }
  return mk_cuda_probe(name_or_reason, cap);
}

// ---------------------------------------------------------------------------------------------------------------------
// create / free

static int check_config(const mk_model_config *c) {
#define CFG_BAD(...) mk_set_error(NULL, MK_ERR_INVALID, "model config: " __VA_ARGS__)
  if (c->vocab_size < 1 || c->vocab_size > (1 << 24)) return CFG_BAD("vocab_size %d out of range", c->vocab_size);
  if (c->dim < 1 || c->dim > (1 << 16)) return CFG_BAD("hidden_size %d out of range", c->dim);
  if (c->hidden_dim < 1 || c->hidden_dim > (1 << 18)) return CFG_BAD("intermediate_size %d out of range", c->hidden_dim);
  if (c->n_layers < 1 || c->n_layers > 1024) return CFG_BAD("num_hidden_layers %d out of range", c->n_layers);
  if (c->n_heads < 1 || c->n_heads > 1024) return CFG_BAD("num_attention_heads %d out of range", c->n_heads);
  if (c->n_kv_heads < 1 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
    return CFG_BAD("num_key_value_heads %d must divide num_attention_heads %d", c->n_kv_heads, c->n_heads);
  if (c->head_dim < 2 || c->head_dim > 1024 || c->head_dim % 2 != 0)
    return CFG_BAD("head_dim %d must be even, in [2, 1024]", c->head_dim);
  if (c->max_position < 1) return CFG_BAD("max_position_embeddings %d out of range", c->max_position);
  if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps)) return CFG_BAD("rms_norm_eps %g must be > 0", (double)c->rms_eps);
  if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta)) return CFG_BAD("rope_theta %g must be > 0", (double)c->rope_theta);
  if (c->rope_type != 0 && c->rope_type != 1) return CFG_BAD("rope_type %d (0 default, 1 llama3)", c->rope_type);
  if (c->rope_type == 1) {
    if (!(c->rope_factor > 0.0f)) return CFG_BAD("rope_scaling.factor %g must be > 0", (double)c->rope_factor);
    if (!(c->rope_low_freq_factor > 0.0f) || !(c->rope_high_freq_factor > c->rope_low_freq_factor))
      return CFG_BAD("rope_scaling needs 0 < low_freq_factor (%g) < high_freq_factor (%g)",
                     (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor);
    if (c->rope_original_max_position < 1)
      return CFG_BAD("rope_scaling.original_max_position_embeddings %d must be >= 1", c->rope_original_max_position);
  }
  if (c->tie_embeddings != 0 && c->tie_embeddings != 1) return CFG_BAD("tie_embeddings %d (0 or 1)", c->tie_embeddings);
  return MK_OK;
#undef CFG_BAD
}

static int check_engine_params(const mk_model_config *c, const mk_engine_params *p) {
#define PAR_BAD(...) mk_set_error(NULL, MK_ERR_INVALID, "engine params: " __VA_ARGS__)
  if (p->struct_size < sizeof(mk_engine_params))
    return PAR_BAD("struct_size %u, expected %zu (use mk_default_engine_params)", p->struct_size, sizeof(mk_engine_params));
  if (p->device != MK_DEVICE_CPU && p->device != MK_DEVICE_CUDA) return PAR_BAD("device %d (0 cpu, 1 cuda)", p->device);
  if (p->ctx_len < 1 || p->ctx_len > c->max_position)
    return PAR_BAD("ctx_len %d out of range [1, max_position_embeddings %d]", p->ctx_len, c->max_position);
  if (p->n_threads < 0 || p->n_threads > 1024) return PAR_BAD("n_threads %d out of range [0, 1024]", p->n_threads);
  if (p->cpu_mode != MK_CPU_REFERENCE && p->cpu_mode != MK_CPU_INTERPRETER)
    return PAR_BAD("cpu_mode %d (0 reference, 1 interpreter)", p->cpu_mode);
  if (p->gpu_index < 0) return PAR_BAD("gpu_index %d must be >= 0", p->gpu_index);
  if (p->timeout_ms < 0) return PAR_BAD("timeout_ms %d must be >= 0", p->timeout_ms);
  return MK_OK;
#undef PAR_BAD
}

void mk_engine_free(mk_engine *e) {
  if (!e) return;
  if (e->cuda) mk_cuda_free(e);
  if (e->cpu) mk_cpu_free(e);
  for (int32_t i = 0; i < e->n_tensors; i++) { free(e->tensors[i].name); free(e->tensors[i].path); }
  free(e->tensors);
  for (int32_t i = 0; i < e->n_files; i++) {
    if (e->files[i].base) munmap(e->files[i].base, e->files[i].size);
    free(e->files[i].path);
  }
  free(e->files);
  for (int32_t i = 0; i < e->n_owned; i++) free(e->owned[i]);
  free(e->owned);
  free(e->w.layers);
  free(e->program);
  free(e);
}

int32_t mk_engine_create(const mk_model_config *cfg, const mk_engine_params *params, mk_engine **out) {
  if (!out) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_create: out is NULL");
  *out = NULL;
  if (!cfg || !params) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_create: config or params is NULL");
  if (cfg->struct_size < sizeof(mk_model_config))
    return mk_set_error(NULL, MK_ERR_INVALID, "model config: struct_size %u, expected %zu", cfg->struct_size,
                        sizeof(mk_model_config));
  int rc = check_config(cfg);
  if (rc == MK_OK) rc = check_engine_params(cfg, params);
  if (rc != MK_OK) return rc;

  mk_engine *e = (mk_engine *)calloc(1, sizeof *e);
  if (!e) return mk_set_error(NULL, MK_ERR_OOM, "mk_engine_create: out of host memory");
  memcpy(&e->cfg, cfg, sizeof e->cfg);
  e->cfg.struct_size = sizeof e->cfg;
  memcpy(&e->params, params, sizeof e->params);
  e->params.struct_size = sizeof e->params;
  if (e->params.n_threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    e->params.n_threads = n > 0 ? (int32_t)(n > 256 ? 256 : n) : 1;
  }
  if (e->params.timeout_ms == 0) e->params.timeout_ms = 5000;
  e->w.layers = (struct mk_layer_weights *)calloc((size_t)cfg->n_layers, sizeof(struct mk_layer_weights));
  if (!e->w.layers) { free(e); return mk_set_error(NULL, MK_ERR_OOM, "mk_engine_create: out of host memory"); }

  rc = e->params.device == MK_DEVICE_CUDA ? mk_cuda_create(e) : mk_cpu_create(e);
  if (rc != MK_OK) {
    mk_set_error(NULL, rc, "%s", e->last_error); /* the caller has no engine to ask: move the message */
    mk_engine_free(e);
    return rc;
  }
  *out = e;
  return MK_OK;
}

// ---------------------------------------------------------------------------------------------------------------------
// weights: declaring tensors (HF names -> slots) and loading them

static const char *dtype_name(int32_t dt) {
  return dt == MK_DTYPE_BF16 ? "BF16" : dt == MK_DTYPE_F16 ? "F16" : dt == MK_DTYPE_F32 ? "F32" : "?";
}
static int dtype_size(int32_t dt) { return dt == MK_DTYPE_F32 ? 4 : 2; }

/* The slot of an HF tensor name and the shape the config implies; 0 when the name is not a Llama tensor. *ignored is
   set for lm_head.weight of a tied model (some checkpoints carry the copy; the embedding is used). */
static int slot_for(mk_engine *e, const char *name, const uint16_t ***slot, int64_t *d0, int64_t *d1, int *ignored) {
  const mk_model_config *c = &e->cfg;
  const int64_t dim = c->dim, qdim = (int64_t)c->n_heads * c->head_dim, kvdim = (int64_t)c->n_kv_heads * c->head_dim;
  *ignored = 0;
  *d1 = 0;
  if (strcmp(name, "model.embed_tokens.weight") == 0) { *slot = &e->w.embed; *d0 = c->vocab_size; *d1 = dim; return 1; }
  if (strcmp(name, "model.norm.weight") == 0) { *slot = &e->w.final_norm; *d0 = dim; return 1; }
  if (strcmp(name, "lm_head.weight") == 0) {
    *slot = &e->w.lm_head; *d0 = c->vocab_size; *d1 = dim;
    *ignored = c->tie_embeddings;
    return 1;
  }
  int layer = -1, n = 0;
  if (sscanf(name, "model.layers.%d.%n", &layer, &n) != 1 || n == 0 || layer < 0 || layer >= c->n_layers) return 0;
  const char *rest = name + n;
  struct mk_layer_weights *w = &e->w.layers[layer];
  static const struct { const char *suffix; int kind; } T[] = {
      {"input_layernorm.weight", 0}, {"self_attn.q_proj.weight", 1}, {"self_attn.k_proj.weight", 2},
      {"self_attn.v_proj.weight", 3}, {"self_attn.o_proj.weight", 4}, {"post_attention_layernorm.weight", 5},
      {"mlp.gate_proj.weight", 6}, {"mlp.up_proj.weight", 7}, {"mlp.down_proj.weight", 8}};
  for (size_t k = 0; k < sizeof T / sizeof T[0]; k++) {
    if (strcmp(rest, T[k].suffix) != 0) continue;
    switch (T[k].kind) {
      case 0: *slot = &w->attn_norm; *d0 = dim; break;
      case 1: *slot = &w->wq; *d0 = qdim; *d1 = dim; break;
      case 2: *slot = &w->wk; *d0 = kvdim; *d1 = dim; break;
      case 3: *slot = &w->wv; *d0 = kvdim; *d1 = dim; break;
      case 4: *slot = &w->wo; *d0 = dim; *d1 = qdim; break;
      case 5: *slot = &w->ffn_norm; *d0 = dim; break;
      case 6: *slot = &w->w_gate; *d0 = c->hidden_dim; *d1 = dim; break;
      case 7: *slot = &w->w_up; *d0 = c->hidden_dim; *d1 = dim; break;
      case 8: *slot = &w->w_down; *d0 = dim; *d1 = c->hidden_dim; break;
    }
    return 1;
  }
  return 0;
}

static void fmt_shape(char *buf, size_t cap, int64_t d0, int64_t d1) {
  if (d1 == 0) snprintf(buf, cap, "[%lld]", (long long)d0);
  else snprintf(buf, cap, "[%lld, %lld]", (long long)d0, (long long)d1);
}

int32_t mk_engine_add_tensor(mk_engine *e, const char *name, const char *path, uint64_t offset, uint64_t nbytes,
                             int32_t dtype, int64_t d0, int64_t d1) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_add_tensor: engine is NULL");
  if (!name || !path) return mk_set_error(e, MK_ERR_INVALID, "mk_engine_add_tensor: name or path is NULL");
  if (e->loaded) return mk_set_error(e, MK_ERR_STATE, "tensor %s: the engine is already loaded", name);
  if (dtype != MK_DTYPE_BF16 && dtype != MK_DTYPE_F16 && dtype != MK_DTYPE_F32)
    return mk_set_error(e, MK_ERR_WEIGHTS, "tensor %s: unsupported dtype %d (BF16, F16 or F32)", name, dtype);
  const uint16_t **slot = NULL;
  int64_t w0 = 0, w1 = 0;
  int ignored = 0;
  if (!slot_for(e, name, &slot, &w0, &w1, &ignored))
    return mk_set_error(e, MK_ERR_WEIGHTS, "tensor %s: not a tensor of this Llama model (%d layers)", name,
                        e->cfg.n_layers);
  char want[64], got[64];
  fmt_shape(want, sizeof want, w0, w1);
  fmt_shape(got, sizeof got, d0, d1);
  if (d0 != w0 || d1 != w1)
    return mk_set_error(e, MK_ERR_WEIGHTS, "tensor %s: expected shape %s, found %s", name, want, got);
  const uint64_t expect_bytes = (uint64_t)w0 * (uint64_t)(w1 ? w1 : 1) * (uint64_t)dtype_size(dtype);
  if (nbytes != expect_bytes)
    return mk_set_error(e, MK_ERR_WEIGHTS, "tensor %s: %llu bytes, but shape %s of %s needs %llu", name,
                        (unsigned long long)nbytes, got, dtype_name(dtype), (unsigned long long)expect_bytes);
  for (int32_t i = 0; i < e->n_tensors; i++)
    if (strcmp(e->tensors[i].name, name) == 0)
      return mk_set_error(e, MK_ERR_WEIGHTS, "tensor %s: declared twice (%s and %s)", name, e->tensors[i].path, path);
  if (e->n_tensors == e->cap_tensors) {
    int32_t cap = e->cap_tensors ? e->cap_tensors * 2 : 64;
    mk_tensor_decl *t = (mk_tensor_decl *)realloc(e->tensors, (size_t)cap * sizeof *t);
    if (!t) return mk_set_error(e, MK_ERR_OOM, "mk_engine_add_tensor: out of host memory");
    e->tensors = t;
    e->cap_tensors = cap;
  }
  mk_tensor_decl *t = &e->tensors[e->n_tensors];
  memset(t, 0, sizeof *t);
  t->name = strdup(name);
  t->path = strdup(path);
  if (!t->name || !t->path) {
    free(t->name); free(t->path);
    return mk_set_error(e, MK_ERR_OOM, "mk_engine_add_tensor: out of host memory");
  }
  t->offset = offset;
  t->nbytes = nbytes;
  t->dtype = dtype;
  t->d0 = d0;
  t->d1 = d1;
  t->slot = ignored ? NULL : slot;
  e->n_tensors++;
  return MK_OK;
}

/* the mapping of path, mapping it on first use */
static int map_file(mk_engine *e, const char *path, const mk_mapped_file **out) {
  for (int32_t i = 0; i < e->n_files; i++)
    if (strcmp(e->files[i].path, path) == 0) { *out = &e->files[i]; return MK_OK; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return mk_set_error(e, MK_ERR_IO, "cannot open weights file %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return mk_set_error(e, MK_ERR_IO, "cannot stat weights file %s: %s", path, strerror(err));
  }
  void *base = NULL;
  if (st.st_size > 0) {
    base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      int err = errno;
      close(fd);
      return mk_set_error(e, MK_ERR_IO, "cannot map weights file %s: %s", path, strerror(err));
    }
  }
  close(fd); /* the mapping keeps the file alive */
  mk_mapped_file *f = (mk_mapped_file *)realloc(e->files, (size_t)(e->n_files + 1) * sizeof *f);
  if (!f) {
    if (base) munmap(base, (size_t)st.st_size);
    return mk_set_error(e, MK_ERR_OOM, "out of host memory mapping %s", path);
  }
  e->files = f;
  f = &e->files[e->n_files];
  f->path = strdup(path);
  f->base = base;
  f->size = (size_t)st.st_size;
  if (!f->path) {
    if (base) munmap(base, (size_t)st.st_size);
    return mk_set_error(e, MK_ERR_OOM, "out of host memory mapping %s", path);
  }
  e->n_files++;
  *out = f;
  return MK_OK;
}

static void *own(mk_engine *e, size_t bytes) {
  void **o = (void **)realloc(e->owned, (size_t)(e->n_owned + 1) * sizeof(void *));
  if (!o) return NULL;
  e->owned = o;
  void *p = malloc(bytes ? bytes : 1);
  if (p) e->owned[e->n_owned++] = p;
  return p;
}

/* point t's slot at bf16 data: the mapping itself for aligned BF16, else a converted (or aligned) copy */
static int bind_tensor(mk_engine *e, const mk_tensor_decl *t) {
  const mk_mapped_file *f = NULL;
  int rc = map_file(e, t->path, &f);
  if (rc != MK_OK) return rc;
  if (t->offset > f->size || t->nbytes > f->size - t->offset)
    return mk_set_error(e, MK_ERR_IO,
                        "weights file %s is truncated: tensor %s needs bytes [%llu, %llu), the file has %llu", t->path,
                        t->name, (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                        (unsigned long long)f->size);
  if (!t->slot) return MK_OK; /* declared but not used (lm_head of a tied model) */
  const uint8_t *src = (const uint8_t *)f->base + t->offset;
  const size_t n = (size_t)t->d0 * (size_t)(t->d1 ? t->d1 : 1);
  if (t->dtype == MK_DTYPE_BF16 && ((uintptr_t)src & 1u) == 0) {
    *t->slot = (const uint16_t *)src;
    return MK_OK;
  }
  uint16_t *dst = (uint16_t *)own(e, n * sizeof(uint16_t));
  if (!dst) return mk_set_error(e, MK_ERR_OOM, "tensor %s: out of host memory for a bf16 copy", t->name);
  for (size_t i = 0; i < n; i++) {
    if (t->dtype == MK_DTYPE_BF16) {
      memcpy(&dst[i], src + 2 * i, 2);
    } else if (t->dtype == MK_DTYPE_F16) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      dst[i] = mk_f32_to_bf16(mk_f16_to_f32(h));
    } else {
      float x;
      memcpy(&x, src + 4 * i, 4);
      dst[i] = mk_f32_to_bf16(x);
    }
  }
  *t->slot = dst;
  return MK_OK;
}

/* the first tensor the config needs that was not declared: name and expected shape */
static int find_missing(mk_engine *e, char *name, size_t cap, int64_t *d0, int64_t *d1) {
  const mk_model_config *c = &e->cfg;
  const uint16_t **slot;
  int ignored;
  char cand[128];
  const char *top[] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  static const char *const per_layer[] = {"input_layernorm.weight", "self_attn.q_proj.weight",
                                          "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                          "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                                          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
  for (int k = 0; k < 3; k++) {
    if (k == 2 && c->tie_embeddings) continue;
    slot_for(e, top[k], &slot, d0, d1, &ignored);
    if (!*slot) { snprintf(name, cap, "%s", top[k]); return 1; }
  }
  for (int l = 0; l < c->n_layers; l++) {
    for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++) {
      snprintf(cand, sizeof cand, "model.layers.%d.%s", l, per_layer[k]);
      slot_for(e, cand, &slot, d0, d1, &ignored);
      if (!*slot) { snprintf(name, cap, "%s", cand); return 1; }
    }
  }
  return 0;
}

int32_t mk_engine_load(mk_engine *e) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_load: engine is NULL");
  if (e->loaded) return mk_set_error(e, MK_ERR_STATE, "mk_engine_load: already loaded");
  /* bind every declared tensor (a failure leaves the slots it set; the engine stays unloaded and is freed whole) */
  for (int32_t i = 0; i < e->n_tensors; i++) {
    int rc = bind_tensor(e, &e->tensors[i]);
    if (rc != MK_OK) return rc;
  }
  if (e->cfg.tie_embeddings) e->w.lm_head = e->w.embed;
  char missing[160];
  int64_t d0, d1;
  if (find_missing(e, missing, sizeof missing, &d0, &d1)) {
    char shape[64];
    fmt_shape(shape, sizeof shape, d0, d1);
    return mk_set_error(e, MK_ERR_WEIGHTS, "missing tensor %s (expected shape %s)%s", missing, shape,
                        strcmp(missing, "lm_head.weight") == 0 ? " and tie_word_embeddings is false" : "");
  }
  if (e->params.device == MK_DEVICE_CUDA) {
    int rc = mk_cuda_load(e);
    if (rc != MK_OK) return rc;
  }
  e->loaded = 1;
  e->pos = 0;
  return MK_OK;
}

// ---------------------------------------------------------------------------------------------------------------------
// program, info, position

int32_t mk_engine_set_program(mk_engine *e, const int32_t *words, int32_t n_words) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_set_program: engine is NULL");
  if (e->busy) return mk_set_error(e, MK_ERR_STATE, "mk_engine_set_program: a call is in flight");
  mk_program_view v;
  int rc = mk_program_parse(e, words, n_words, &v);
  if (rc != MK_OK) return rc;
  int32_t *copy = (int32_t *)malloc((size_t)n_words * sizeof(int32_t));
  if (!copy) return mk_set_error(e, MK_ERR_OOM, "mk_engine_set_program: out of host memory");
  memcpy(copy, words, (size_t)n_words * sizeof(int32_t));
  if (e->params.device == MK_DEVICE_CUDA) {
    rc = mk_cuda_set_program(e, copy, n_words);
    if (rc != MK_OK) { free(copy); return rc; }
  }
  free(e->program);
  e->program = copy;
  e->program_words = n_words;
  return MK_OK;
}

int32_t mk_engine_device_info(const mk_engine *e, int32_t *n_queues, char *name, int32_t cap) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_device_info: engine is NULL");
  if (e->params.device == MK_DEVICE_CUDA) return mk_cuda_device_info(e, n_queues, name, cap);
  if (n_queues) *n_queues = e->params.n_threads; /* a suggestion: the interpreter runs any number of queues */
  if (name && cap > 0) snprintf(name, (size_t)cap, "cpu (%d threads)", e->params.n_threads);
  return MK_OK;
}

int32_t mk_engine_position(const mk_engine *e) { return e ? e->pos : 0; }

int32_t mk_engine_truncate(mk_engine *e, int32_t n) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_truncate: engine is NULL");
  if (e->busy) return mk_set_error(e, MK_ERR_STATE, "mk_engine_truncate: a call is in flight");
  if (n < 0 || n > e->pos) return mk_set_error(e, MK_ERR_INVALID, "mk_engine_truncate: %d outside [0, position %d]", n, e->pos);
  if (e->params.device == MK_DEVICE_CUDA) {
    int rc = mk_cuda_truncate(e, n);
    if (rc != MK_OK) return rc;
  }
  e->pos = n; /* the cache beyond n is simply overwritten by the next tokens */
  return MK_OK;
}

// ---------------------------------------------------------------------------------------------------------------------
// prefill and generate

/* the checks every run shares: engine ready, tokens valid, room in the context, no call in flight */
static int check_run(mk_engine *e, const char *fn, const int32_t *tokens, int32_t n) {
  if (!e->loaded) return mk_set_error(e, MK_ERR_STATE, "%s: the engine is not loaded (mk_engine_load)", fn);
  if (!tokens) return mk_set_error(e, MK_ERR_INVALID, "%s: tokens is NULL", fn);
  if (n < 1) return mk_set_error(e, MK_ERR_INVALID, "%s: %d tokens (at least 1)", fn, n);
  for (int32_t i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= e->cfg.vocab_size)
      return mk_set_error(e, MK_ERR_INVALID, "%s: token %d at index %d is outside the vocabulary [0, %d)", fn,
                          tokens[i], i, e->cfg.vocab_size);
  if ((int64_t)e->pos + n > e->params.ctx_len)
    return mk_set_error(e, MK_ERR_CONTEXT, "%s: %d tokens at position %d would overflow the context of %d", fn, n,
                        e->pos, e->params.ctx_len);
  if ((e->params.device == MK_DEVICE_CUDA || e->params.cpu_mode == MK_CPU_INTERPRETER) && !e->program)
    return mk_set_error(e, MK_ERR_STATE, "%s: no instruction program installed (mk_engine_set_program)", fn);
  if (__atomic_exchange_n(&e->busy, 1, __ATOMIC_ACQ_REL))
    return mk_set_error(e, MK_ERR_STATE, "%s: another call is in flight on this engine", fn);
  return MK_OK;
}

int32_t mk_engine_prefill(mk_engine *e, const int32_t *tokens, int32_t n, float *logits) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_prefill: engine is NULL");
  int rc = check_run(e, "mk_engine_prefill", tokens, n);
  if (rc != MK_OK) return rc;
  rc = e->params.device == MK_DEVICE_CUDA ? mk_cuda_prefill(e, tokens, n, logits) : mk_cpu_prefill(e, tokens, n, logits);
  __atomic_store_n(&e->busy, 0, __ATOMIC_RELEASE);
  return rc;
}

static int check_sampling(mk_engine *e, const mk_sampling_params *sp) {
#define SP_BAD(...) mk_set_error(e, MK_ERR_INVALID, "sampling params: " __VA_ARGS__)
  if (sp->struct_size < sizeof(mk_sampling_params))
    return SP_BAD("struct_size %u, expected %zu (use mk_default_sampling_params)", sp->struct_size, sizeof(mk_sampling_params));
  if (!(sp->temperature >= 0.0f) || !isfinite(sp->temperature)) return SP_BAD("temperature %g must be >= 0", (double)sp->temperature);
  if (!(sp->top_p > 0.0f && sp->top_p <= 1.0f)) return SP_BAD("top_p %g must be in (0, 1]", (double)sp->top_p);
  if (sp->top_k < 0) return SP_BAD("top_k %d must be >= 0", sp->top_k);
  if (sp->max_tokens < 1) return SP_BAD("max_tokens %d must be >= 1", sp->max_tokens);
  if (sp->n_stop_ids < 0 || sp->n_stop_ids > MK_MAX_STOP_IDS)
    return SP_BAD("n_stop_ids %d out of range [0, %d]", sp->n_stop_ids, MK_MAX_STOP_IDS);
  for (int32_t k = 0; k < sp->n_stop_ids; k++)
    if (sp->stop_ids[k] < 0 || sp->stop_ids[k] >= e->cfg.vocab_size)
      return SP_BAD("stop id %d is outside the vocabulary [0, %d)", sp->stop_ids[k], e->cfg.vocab_size);
  if (sp->logprobs < 0 || sp->logprobs > MK_MAX_LOGPROBS)
    return SP_BAD("logprobs %d out of range [0, %d]", sp->logprobs, MK_MAX_LOGPROBS);
  if (sp->logprobs > e->cfg.vocab_size) return SP_BAD("logprobs %d exceeds the vocabulary %d", sp->logprobs, e->cfg.vocab_size);
  return MK_OK;
#undef SP_BAD
}

int32_t mk_engine_generate(mk_engine *e, const int32_t *prompt, int32_t n_prompt, const mk_sampling_params *sp,
                           mk_stream *stream, const mk_stream_arrays *arrays) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_engine_generate: engine is NULL");
  if (!sp || !stream || !arrays) return mk_set_error(e, MK_ERR_INVALID, "mk_engine_generate: sampling params, stream or arrays is NULL");
  int rc = check_sampling(e, sp);
  if (rc != MK_OK) return rc;
  if (stream->struct_size < sizeof(mk_stream))
    return mk_set_error(e, MK_ERR_INVALID, "stream: struct_size %u, expected %zu", stream->struct_size, sizeof(mk_stream));
  if (arrays->struct_size < sizeof(mk_stream_arrays))
    return mk_set_error(e, MK_ERR_INVALID, "stream arrays: struct_size %u, expected %zu", arrays->struct_size,
                        sizeof(mk_stream_arrays));
  if (arrays->capacity < sp->max_tokens)
    return mk_set_error(e, MK_ERR_INVALID, "stream arrays: capacity %d is below max_tokens %d", arrays->capacity, sp->max_tokens);
  if (!arrays->tokens) return mk_set_error(e, MK_ERR_INVALID, "stream arrays: tokens is NULL");
  rc = check_run(e, "mk_engine_generate", prompt, n_prompt);
  if (rc != MK_OK) return rc;
  /* the header the caller polls starts clean; cancel is the caller's and is left as set */
  __atomic_store_n(&stream->n_tokens, 0, __ATOMIC_RELEASE);
  __atomic_store_n(&stream->finish, 0, __ATOMIC_RELEASE);
  stream->n_prefill = 0;
  stream->position = e->pos;
  stream->prefill_us = 0.0;
  stream->decode_us = 0.0;
  rc = e->params.device == MK_DEVICE_CUDA ? mk_cuda_generate(e, prompt, n_prompt, sp, stream, arrays)
                                          : mk_cpu_generate(e, prompt, n_prompt, sp, stream, arrays);
  stream->position = e->pos;
  __atomic_store_n(&e->busy, 0, __ATOMIC_RELEASE);
  return rc;
}

// ---------------------------------------------------------------------------------------------------------------------
// diagnostics

int32_t mk_measure_read_bandwidth(mk_engine *e, double *gbps) {
  if (!e) return mk_set_error(NULL, MK_ERR_INVALID, "mk_measure_read_bandwidth: engine is NULL");
  if (!gbps) return mk_set_error(e, MK_ERR_INVALID, "mk_measure_read_bandwidth: gbps is NULL");
  if (__atomic_exchange_n(&e->busy, 1, __ATOMIC_ACQ_REL))
    return mk_set_error(e, MK_ERR_STATE, "mk_measure_read_bandwidth: another call is in flight on this engine");
  int rc = e->params.device == MK_DEVICE_CUDA ? mk_cuda_read_bandwidth(e, gbps) : mk_cpu_read_bandwidth(e, gbps);
  __atomic_store_n(&e->busy, 0, __ATOMIC_RELEASE);
  return rc;
}
