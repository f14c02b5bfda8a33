/* optim.c - the CPU backend's optimizer ops (optim.h): squared-norm
 * accumulation, the AdamW element update, the finite check, gradient
 * accumulation. The arithmetic
 * is the host trainer's as it was (double per element), so results are
 * identical bit for bit. */
#include <math.h>

#include "engine/cpu/cpu.h"

/* one running double sum in index order: a fixed order keeps the norm, and so
 * the clipping factor, the same for any thread count */
void cd_cpu_sumsq(const cd_kernel_ctx *ctx, const float *x, int64_t n, double *acc) {
  double total = *acc;
  for (int64_t k = 0; k < n; k++) total += (double)x[k] * x[k];
  *acc = total;
}

void cd_cpu_adamw(const cd_kernel_ctx *ctx, const cd_adamw_args *a, float *w, const float *g, float *m, float *v, int64_t n) {
  const double coef = a->coef, b1 = a->b1, b2 = a->b2, eps = a->eps, decay = a->decay, step_size = a->step_size, sbc2 = a->sbc2;
  #pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < n; k++) {
    double gk = g[k] * coef;
    double mk = b1 * m[k] + (1 - b1) * gk, vk = b2 * v[k] + (1 - b2) * gk * gk;
    m[k] = (float)mk;
    v[k] = (float)vk;
    double x = w[k] * decay;
    x -= step_size * mk / (sqrt(vk) / sbc2 + eps);
    w[k] = (float)x;
  }
}

int64_t cd_cpu_nonfinite(const cd_kernel_ctx *ctx, const float *x, int64_t n) {
  int64_t bad = 0;
  #pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t k = 0; k < n; k++) bad += !isfinite(x[k]);
  return bad;
}

/* float sums in micro-batch order and a float mean, as the host trainer did */
void cd_cpu_accumulate(const cd_kernel_ctx *ctx, float *acc, float *g, int64_t n, int k, int K) {
  #pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t j = 0; j < n; j++) {
    acc[j] = k ? acc[j] + g[j] : g[j];
    if (k == K - 1) g[j] = acc[j] / (float)K;
  }
}
