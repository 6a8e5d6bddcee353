/*
 * bf16.h — bfloat16 <-> float32 conversion, shared by the CPU engine, the ABI layer and the CUDA backend.
 *
 * bf16 is the top 16 bits of an IEEE float32. Widening is exact (shift left by 16). Narrowing rounds to nearest,
 * ties to even, like torch's .to(torch.bfloat16); NaN stays a (quiet) NaN instead of rounding into infinity.
 * memcpy is the type pun that is defined in both C and C++ and compiles to a register move.
 */
#ifndef MKCHAT_BF16_H
#define MKCHAT_BF16_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MK_HD __host__ __device__ __forceinline__
#else
#define MK_HD static inline
#endif

MK_HD float mk_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

MK_HD uint16_t mk_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* NaN: keep it a quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);                                              /* round to nearest, ties to even */
  return (uint16_t)(u >> 16);
}

/* IEEE half -> float32 (only used when a checkpoint stores F16 tensors; converted once at load). */
MK_HD float mk_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign; /* +-0 */
    } else {    /* subnormal half: normalise */
      int e = -1;
      do { man <<= 1; e++; } while ((man & 0x400u) == 0);
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13); /* inf / NaN */
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

#endif /* MKCHAT_BF16_H */
