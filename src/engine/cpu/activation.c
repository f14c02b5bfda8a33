/* activation.c - element-wise activations on the CPU: SILU, GELU (exact erf),
 * QUICK_GELU and GEGLU. Backward recomputes from the input x (cheap) rather
 * than relying on the saved output. */
#include <math.h>

#include "core/common.h"
#include "engine/backend.h"

#define PAR_MIN 32768 /* below this many elements threads cost more than they save */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* exact GELU and its derivative: 0.5 x (1 + erf(x / sqrt 2)) */
static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
static inline float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * expf(-0.5f * x * x); /* 1/sqrt(2 pi) */
  return cdf + x * pdf;
}

/* ---- SILU: x * sigmoid(x) ---- */
void cd_cpu_silu_fwd(cd_node *n) {
  const float *x = n->src[0]->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) y[i] = x[i] * sigmoidf(x[i]);
}
void cd_cpu_silu_bwd(cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float *x = n->src[0]->data, *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) {
    const float s = sigmoidf(x[i]);
    dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

/* ---- GELU (exact) ---- */
void cd_cpu_gelu_fwd(cd_node *n) {
  const float *x = n->src[0]->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) y[i] = gelu(x[i]);
}
void cd_cpu_gelu_bwd(cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float *x = n->src[0]->data, *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) dx[i] += dy[i] * gelu_grad(x[i]);
}

/* ---- QUICK_GELU: x * sigmoid(1.702 x) (CLIP ViT-L of SD 1.x) ---- */
void cd_cpu_quick_gelu_fwd(cd_node *n) {
  const float *x = n->src[0]->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) y[i] = x[i] * sigmoidf(1.702f * x[i]);
}
void cd_cpu_quick_gelu_bwd(cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float *x = n->src[0]->data, *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t i = 0; i < n->n; i++) {
    const float s = sigmoidf(1.702f * x[i]);
    dx[i] += dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
  }
}

/* ---- GEGLU: x[..., 2D] = [h | g] (value first, gate second) -> h * gelu(g), [..., D] ---- */
void cd_cpu_geglu_fwd(cd_node *n) {
  const int64_t D = n->ne[n->ndim - 1];
  if (D <= 0) return;
  const int64_t rows = n->n / D;
  const float *x = n->src[0]->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *h = x + r * 2 * D, *g = h + D;
    float *yr = y + r * D;
    for (int64_t j = 0; j < D; j++) yr[j] = h[j] * gelu(g[j]);
  }
}
void cd_cpu_geglu_bwd(cd_node *n) {
  float *dx = n->src[0]->grad;
  const int64_t D = n->ne[n->ndim - 1];
  if (!dx || D <= 0) return;
  const int64_t rows = n->n / D;
  const float *x = n->src[0]->data, *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *h = x + r * 2 * D, *g = h + D, *d = dy + r * D;
    float *dh = dx + r * 2 * D, *dg = dh + D;
    for (int64_t j = 0; j < D; j++) {
      dh[j] += d[j] * gelu(g[j]);
      dg[j] += d[j] * h[j] * gelu_grad(g[j]);
    }
  }
}
