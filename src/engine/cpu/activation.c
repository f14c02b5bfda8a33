/* activation.c - element-wise activations on the CPU: SILU, GELU (exact erf),
 * QUICK_GELU and GEGLU. Backward recomputes from the input x (cheap) rather
 * than relying on the saved output. */
#include <math.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"
#include "engine/cpu/vecmath.h"

#define PAR_MIN 32768 /* below this many elements threads cost more than they save */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + cd_vexpf(-x)); }

/* exact GELU and its derivative: 0.5 x (1 + erf(x / sqrt 2)) */
static inline float gelu(float x) { return 0.5f * x * (1.0f + cd_verff(x * 0.70710678118654752f)); }
static inline float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + cd_verff(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * cd_vexpf(-0.5f * x * x); /* 1/sqrt(2 pi) */
  return cdf + x * pdf;
}

/* Element-wise loops run over spans with restrict pointers in their own
 * functions: inside an OpenMP body GCC reloads the shared pointers after each
 * store and will not vectorise. */
#define SPAN 8192
#define FOR_SPANS(n, call)                                                                          \
  do {                                                                                              \
    const int64_t n_ = (n), ns_ = (n_ + SPAN - 1) / SPAN;                                            \
    _Pragma("omp parallel for schedule(static) if (n_ > PAR_MIN)") for (int64_t s_ = 0; s_ < ns_; s_++) { \
      const int64_t lo = s_ * SPAN, len = n_ - lo < SPAN ? n_ - lo : SPAN;                           \
      call;                                                                                         \
    }                                                                                               \
  } while (0)

/* ---- SILU: x * sigmoid(x) ---- */
static void silu_span(const float *restrict x, float *restrict y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(x[i]);
}
static void silu_bwd_span(const float *restrict x, const float *restrict dy, float *restrict dx, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const float s = sigmoidf(x[i]);
    dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}
void cd_cpu_silu_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const float *x = n->src[0]->data;
  float *y = n->data;
  FOR_SPANS(n->n, silu_span(x + lo, y + lo, len));
}
void cd_cpu_silu_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float *x = n->src[0]->data, *dy = n->grad;
  FOR_SPANS(n->n, silu_bwd_span(x + lo, dy + lo, dx + lo, len));
}

/* ---- GELU (exact) ---- */
static void gelu_span(const float *restrict x, float *restrict y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = gelu(x[i]);
}
static void gelu_bwd_span(const float *restrict x, const float *restrict dy, float *restrict dx, int64_t n) {
  for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * gelu_grad(x[i]);
}
void cd_cpu_gelu_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const float *x = n->src[0]->data;
  float *y = n->data;
  FOR_SPANS(n->n, gelu_span(x + lo, y + lo, len));
}
void cd_cpu_gelu_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float *x = n->src[0]->data, *dy = n->grad;
  FOR_SPANS(n->n, gelu_bwd_span(x + lo, dy + lo, dx + lo, len));
}

/* ---- QUICK_GELU: x * sigmoid(1.702 x) (CLIP ViT-L of SD 1.x) ---- */
static void qgelu_span(const float *restrict x, float *restrict y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(1.702f * x[i]);
}
static void qgelu_bwd_span(const float *restrict x, const float *restrict dy, float *restrict dx, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const float s = sigmoidf(1.702f * x[i]);
    dx[i] += dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
  }
}
void cd_cpu_quick_gelu_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const float *x = n->src[0]->data;
  float *y = n->data;
  FOR_SPANS(n->n, qgelu_span(x + lo, y + lo, len));
}
void cd_cpu_quick_gelu_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float *x = n->src[0]->data, *dy = n->grad;
  FOR_SPANS(n->n, qgelu_bwd_span(x + lo, dy + lo, dx + lo, len));
}

/* ---- GEGLU: x[..., 2D] = [h | g] (value first, gate second) -> h * gelu(g), [..., D] ---- */
static void geglu_row(const float *restrict x, float *restrict y, int64_t D) {
  const float *h = x, *g = x + D;
  for (int64_t j = 0; j < D; j++) y[j] = h[j] * gelu(g[j]);
}
static void geglu_bwd_row(const float *restrict x, const float *restrict d, float *restrict dx, int64_t D) {
  const float *h = x, *g = x + D;
  float *dh = dx, *dg = dx + D;
  for (int64_t j = 0; j < D; j++) {
    dh[j] += d[j] * gelu(g[j]);
    dg[j] += d[j] * h[j] * gelu_grad(g[j]);
  }
}
void cd_cpu_geglu_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const int64_t D = n->ne[n->ndim - 1];
  if (D <= 0) return;
  const int64_t rows = n->n / D;
  const float *x = n->src[0]->data;
  float *y = n->data;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t r = 0; r < rows; r++) geglu_row(x + r * 2 * D, y + r * D, D);
}
void cd_cpu_geglu_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  const int64_t D = n->ne[n->ndim - 1];
  if (!dx || D <= 0) return;
  const int64_t rows = n->n / D;
  const float *x = n->src[0]->data, *dy = n->grad;
#pragma omp parallel for schedule(static) if (n->n > PAR_MIN)
  for (int64_t r = 0; r < rows; r++) geglu_bwd_row(x + r * 2 * D, dy + r * D, dx + r * 2 * D, D);
}
