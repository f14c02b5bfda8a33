/* vecmath.h - branch-free float exp and erf that GCC vectorises in element-wise
 * loops (libm's expf/erff are scalar calls; SiLU, GELU and GEGLU spent most of
 * their time in them).
 *
 * Needs -fvect-cost-model=dynamic (the Makefile sets it): GCC 12's -O2 default
 * vectorises no loop whose trip count is unknown.
 *
 * cd_vexpf: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2, then a
 *   degree-6 Taylor polynomial: relative error < 2e-7 over [-87, 88]; inputs
 *   beyond are clamped (exp underflows to ~1e-38, overflows to ~1.6e38).
 * cd_verff: Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 (absolute).
 */
#ifndef CD_VECMATH_H
#define CD_VECMATH_H

#include <math.h>
#include <stdint.h>

static inline float cd_vexpf(float x) {
  /* ternaries and the 1.5*2^23 rounding trick instead of fminf/fmaxf/floorf,
   * which strict IEEE semantics keep GCC from vectorising */
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln2) */
  const float r = (x - kf * 0.693145751953125f) - kf * 1.42860682030941723e-6f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale = {.i = ((int32_t)kf + 127) << 23}; /* 2^k (a union vectorises; memcpy through memory does not) */
  return p * scale.f;
}

static inline float cd_verff(float x) {
  const float a = fabsf(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * cd_vexpf(-a * a);
  return copysignf(y, x);
}

#endif
