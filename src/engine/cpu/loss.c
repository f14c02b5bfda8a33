/* loss.c - MSE (with Custom Diffusion's optional mask) and SUM on the CPU.
 * Both reduce to one float with double accumulators. */
#include <math.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* ---- MSE: pred[B, ...], target[B, ...], mask[B, 1, ...]|NULL -> [1] ----
 * Without a mask: the mean of (x - y)^2 over everything (every sample has the
 * same count, so this equals the mean over samples of per-sample means).
 * With a mask m[b, r] (r = the position after dim 1):
 *   L = 1/B sum_b  num_b / den_b,  num_b = sum_{c,r} m[b,r] (x - y)^2,  den_b = sum_r m[b,r]
 * The mask broadcasts over dim 1 in num but not in den (4x the masked mean for
 * 4 latent channels: what train_custom_diffusion.py computes). A sample with
 * den_b == 0 contributes 0. */

typedef struct {
  int64_t B, M, R, C1; /* samples, elements per sample, mask elements per sample, dim-1 size */
} mse_dims;

static int mse_setup(const cd_node *n, mse_dims *d) {
  const cd_node *x = n->src[0], *m = n->src[2];
  d->B = x->ne[0];
  if (d->B <= 0 || x->n <= 0) return 0;
  d->M = x->n / d->B;
  d->R = m ? m->n / d->B : d->M;
  if (d->R <= 0 || d->M % d->R) return 0;
  d->C1 = d->M / d->R;
  return 1;
}

void cd_cpu_mse_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *y = n->src[1], *m = n->src[2];
  mse_dims d;
  n->data[0] = 0.0f;
  if (!mse_setup(n, &d)) return;
  if (!m) {
    double s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s) if (x->n > 32768)
    for (int64_t i = 0; i < x->n; i++) {
      const double e = (double)x->data[i] - y->data[i];
      s += e * e;
    }
    n->data[0] = (float)(s / (double)x->n);
    return;
  }
  double L = 0;
  for (int64_t b = 0; b < d.B; b++) {
    const float *mb = m->data + b * d.R;
    double num = 0, den = 0;
    for (int64_t r = 0; r < d.R; r++) den += mb[r];
    if (den == 0) continue;
#pragma omp parallel for schedule(static) reduction(+ : num) if (d.M > 32768)
    for (int64_t j = 0; j < d.M; j++) {
      const double e = (double)x->data[b * d.M + j] - y->data[b * d.M + j];
      num += mb[j % d.R] * e * e;
    }
    L += num / den;
  }
  n->data[0] = (float)(L / (double)d.B);
}

void cd_cpu_mse_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *y = n->src[1], *m = n->src[2];
  float *gx = x->grad, *gy = y->grad, *gm = m ? m->grad : NULL;
  mse_dims d;
  if ((!gx && !gy && !gm) || !mse_setup(n, &d)) return;
  const double g = n->grad[0];
  /* x and y may be the same node: accumulate gx and gy in separate passes */
  for (int pass = 0; pass < 2; pass++) {
    float *gp = pass ? gy : gx;
    if (!gp) continue;
    const double sign = pass ? -1.0 : 1.0;
    for (int64_t b = 0; b < d.B; b++) {
      const float *mb = m ? m->data + b * d.R : NULL;
      double den = d.M;
      if (mb) {
        den = 0;
        for (int64_t r = 0; r < d.R; r++) den += mb[r];
        if (den == 0) continue;
      }
      const float k = (float)(sign * 2.0 * g / ((double)d.B * den));
#pragma omp parallel for schedule(static) if (d.M > 32768)
      for (int64_t j = 0; j < d.M; j++) {
        const int64_t i = b * d.M + j;
        const float e = x->data[i] - y->data[i];
        gp[i] += k * (mb ? mb[j % d.R] : 1.0f) * e;
      }
    }
  }
  if (gm) { /* dL/dm[b,r] = g/B (sum_c e^2[b,c,r] / den - num / den^2) */
    for (int64_t b = 0; b < d.B; b++) {
      const float *mb = m->data + b * d.R;
      double den = 0, num = 0;
      for (int64_t r = 0; r < d.R; r++) den += mb[r];
      if (den == 0) continue;
      for (int64_t j = 0; j < d.M; j++) {
        const double e = (double)x->data[b * d.M + j] - y->data[b * d.M + j];
        num += mb[j % d.R] * e * e;
      }
      for (int64_t r = 0; r < d.R; r++) {
        double s = 0;
        for (int64_t c = 0; c < d.C1; c++) {
          const double e = (double)x->data[b * d.M + c * d.R + r] - y->data[b * d.M + c * d.R + r];
          s += e * e;
        }
        gm[b * d.R + r] += (float)(g / (double)d.B * (s / den - num / (den * den)));
      }
    }
  }
}

/* ---- SUM: all elements -> [1] ---- */
void cd_cpu_sum_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  double s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s) if (x->n > 32768)
  for (int64_t i = 0; i < x->n; i++) s += x->data[i];
  n->data[0] = (float)s;
}

void cd_cpu_sum_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx) return;
  const float g = n->grad[0];
  const int64_t cnt = n->src[0]->n;
#pragma omp parallel for schedule(static) if (cnt > 32768)
  for (int64_t i = 0; i < cnt; i++) dx[i] += g;
}
