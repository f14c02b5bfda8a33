/* norm.c - GROUP_NORM and LAYER_NORM on the CPU.
 *
 * Both normalise with the biased variance, then apply an optional per-channel
 * affine (gamma, beta). Forward saves mean and 1/sqrt(var + eps) in n->aux so
 * backward need not recompute the statistics. Statistics use double
 * accumulators and two passes (mean, then squared deviations): groups can hold
 * hundreds of thousands of elements with a large common offset.
 *
 * Backward, with xh = (x - mean) * rstd and d = dy * gamma over one group/row:
 *   dx = rstd * (d - mean(d) - xh * mean(d * xh))
 *   dgamma[c] += sum dy * xh,  dbeta[c] += sum dy
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* Mean and sum of squared deviations of n floats: float partial sums over
 * short chunks (vectorised through omp simd) added into a double. The mean
 * sums x - x[0] so a large common offset does not eat the float precision. */
#define CHUNK 512
static double mean_f(const float *x, int64_t n) {
  const float x0 = x[0];
  double tot = 0;
  for (int64_t i = 0; i < n; i += CHUNK) {
    const int64_t m = CD_MIN(CHUNK, n - i);
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; j++) s += x[i + j] - x0;
    tot += s;
  }
  return x0 + tot / (double)n;
}
static double sumsq_dev(const float *x, int64_t n, double mean) {
  const float mhi = (float)mean, mlo = (float)(mean - mhi);
  double tot = 0;
  for (int64_t i = 0; i < n; i += CHUNK) {
    const int64_t m = CD_MIN(CHUNK, n - i);
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; j++) { const float d = (x[i + j] - mhi) - mlo; s += d * d; }
    tot += s;
  }
  return tot;
}

/* ---- GROUP_NORM: x[N, C, *spatial]; aux = [mean (N*G) | rstd (N*G)] ---- */

void cd_cpu_group_norm_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t N = x->ne[0], C = x->ne[1], G = n->ip[0];
  if (N <= 0 || C <= 0 || G <= 0 || C % G || x->n <= 0) return; /* the builder rejects these */
  const int64_t S = x->n / (N * C), Cg = C / G, cnt = Cg * S;
  const double eps = n->fp[0];
  float *mean = n->aux, *rstd = n->aux + N * G;
  const float *gamma = gm ? gm->data : NULL, *beta = bt ? bt->data : NULL;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * G; i++) {
    /* channels of one group are contiguous: the group is one block of cnt */
    const float *xp = x->data + i * cnt;
    float *yp = n->data + i * cnt;
    const double m = mean_f(xp, cnt);
    const double r = 1.0 / sqrt(sumsq_dev(xp, cnt, m) / (double)cnt + eps);
    mean[i] = (float)m;
    rstd[i] = (float)r;
    const float mhi = (float)m, mlo = (float)(m - mhi);
    const int64_t c0 = (i % G) * Cg;
    for (int64_t c = 0; c < Cg; c++) {
      /* subtract the mean first (folding it into the bias cancels badly when
       * |mean| >> std), as a float pair hi + lo so x - mean stays exact-ish */
      const float af = (float)(r * (gamma ? gamma[c0 + c] : 1.0f));
      const float bf = beta ? beta[c0 + c] : 0.0f;
      const float *xc = xp + c * S;
      float *yc = yp + c * S;
      for (int64_t s2 = 0; s2 < S; s2++) yc[s2] = ((xc[s2] - mhi) - mlo) * af + bf;
    }
  }
}

void cd_cpu_group_norm_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t N = x->ne[0], C = x->ne[1], G = n->ip[0];
  if (N <= 0 || C <= 0 || G <= 0 || C % G || x->n <= 0) return;
  const int64_t S = x->n / (N * C), Cg = C / G, cnt = Cg * S;
  const float *mean = n->aux, *rstd = n->aux + N * G, *dy = n->grad;
  const float *gamma = gm ? gm->data : NULL;
  if (x->grad) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * G; i++) {
      const float *xp = x->data + i * cnt, *dp = dy + i * cnt;
      float *gp = x->grad + i * cnt;
      const float m = mean[i], r = rstd[i];
      const int64_t c0 = (i % G) * Cg;
      double sd = 0, sdx = 0;
      for (int64_t c = 0; c < Cg; c++) {
        const float ga = gamma ? gamma[c0 + c] : 1.0f;
        for (int64_t s = 0; s < S; s++) {
          const float d = dp[c * S + s] * ga, xh = (xp[c * S + s] - m) * r;
          sd += d;
          sdx += (double)d * xh;
        }
      }
      const float md = (float)(sd / (double)cnt), mdx = (float)(sdx / (double)cnt);
      for (int64_t c = 0; c < Cg; c++) {
        const float ga = gamma ? gamma[c0 + c] : 1.0f;
        for (int64_t s = 0; s < S; s++) {
          const int64_t j = c * S + s;
          const float xh = (xp[j] - m) * r;
          gp[j] += r * (dp[j] * ga - md - xh * mdx);
        }
      }
    }
  }
  float *dgamma = gm ? gm->grad : NULL, *dbeta = bt ? bt->grad : NULL;
  if (dgamma || dbeta) {
    /* one channel per iteration: its data over the batch are N contiguous runs */
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; c++) {
      double sg = 0, sb = 0;
      for (int64_t b = 0; b < N; b++) {
        const int64_t i = b * G + c / Cg, off = (b * C + c) * S;
        const float m = mean[i], r = rstd[i];
        for (int64_t s = 0; s < S; s++) {
          sg += (double)dy[off + s] * ((x->data[off + s] - m) * r);
          sb += dy[off + s];
        }
      }
      if (dgamma) dgamma[c] += (float)sg;
      if (dbeta) dbeta[c] += (float)sb;
    }
  }
}

/* ---- LAYER_NORM: x[..., C] over the last dim; aux = [mean (rows) | rstd (rows)] ---- */

void cd_cpu_layer_norm_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t C = x->ne[x->ndim - 1];
  if (C <= 0) return;
  const int64_t rows = x->n / C;
  const double eps = n->fp[0];
  float *mean = n->aux, *rstd = n->aux + rows;
  const float *gamma = gm ? gm->data : NULL, *beta = bt ? bt->data : NULL;
#pragma omp parallel for schedule(static) if (x->n > 16384)
  for (int64_t i = 0; i < rows; i++) {
    const float *xp = x->data + i * C;
    float *yp = n->data + i * C;
    const double m = mean_f(xp, C);
    const double r = 1.0 / sqrt(sumsq_dev(xp, C, m) / (double)C + eps);
    mean[i] = (float)m;
    rstd[i] = (float)r;
    const float mhi = (float)m, mlo = (float)(m - mhi), rf = (float)r;
    for (int64_t j = 0; j < C; j++) {
      const float xh = ((xp[j] - mhi) - mlo) * rf;
      yp[j] = xh * (gamma ? gamma[j] : 1.0f) + (beta ? beta[j] : 0.0f);
    }
  }
}

/* threads of the gamma/beta reduction: per-thread double partials */
static int ln_partial_threads(const cd_kernel_ctx *ctx, const cd_node *x) {
  const int64_t C = x->ne[x->ndim - 1];
#ifdef _OPENMP
  return x->n / C * C > 16384 ? ctx->nthreads : 1;
#else
  return 1;
#endif
}

/* scratch: the gamma/beta partials (backward only) */
size_t cd_cpu_layer_norm_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  const cd_node *x = n->src[0];
  const int64_t C = x->ne[x->ndim - 1];
  if (!bwd || C <= 0 || (!cd_wants_grad(n->src[1]) && !cd_wants_grad(n->src[2]))) return 0;
  return cd_cpu_align((size_t)ln_partial_threads(ctx, x) * 2 * C * sizeof(double));
}

void cd_cpu_layer_norm_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t C = x->ne[x->ndim - 1];
  if (C <= 0) return;
  const int64_t rows = x->n / C;
  const float *mean = n->aux, *rstd = n->aux + rows, *dy = n->grad;
  const float *gamma = gm ? gm->data : NULL;
  if (x->grad) {
#pragma omp parallel for schedule(static) if (x->n > 16384)
    for (int64_t i = 0; i < rows; i++) {
      const float *xp = x->data + i * C, *dp = dy + i * C;
      float *gp = x->grad + i * C;
      const float m = mean[i], r = rstd[i];
      double sd = 0, sdx = 0;
      for (int64_t j = 0; j < C; j++) {
        const float d = dp[j] * (gamma ? gamma[j] : 1.0f), xh = (xp[j] - m) * r;
        sd += d;
        sdx += (double)d * xh;
      }
      const float md = (float)(sd / (double)C), mdx = (float)(sdx / (double)C);
      for (int64_t j = 0; j < C; j++) {
        const float xh = (xp[j] - m) * r;
        gp[j] += r * (dp[j] * (gamma ? gamma[j] : 1.0f) - md - xh * mdx);
      }
    }
  }
  float *dgamma = gm ? gm->grad : NULL, *dbeta = bt ? bt->grad : NULL;
  if (!dgamma && !dbeta) return;
  /* rows reduce into the same C sums: per-thread double partials, then a
   * serial reduction (deterministic for a fixed thread count) */
  const int nt = ln_partial_threads(ctx, x);
  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  double *part = cd_cpu_take(&sc, (size_t)nt * 2 * C * sizeof(double), n);
  memset(part, 0, (size_t)nt * 2 * C * sizeof(double));
#pragma omp parallel num_threads(nt)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    double *pg = part + (size_t)t * 2 * C, *pb = pg + C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
      const float *xp = x->data + i * C, *dp = dy + i * C;
      const float m = mean[i], r = rstd[i];
      for (int64_t j = 0; j < C; j++) {
        pg[j] += (double)dp[j] * ((xp[j] - m) * r);
        pb[j] += dp[j];
      }
    }
  }
  for (int64_t j = 0; j < C; j++) {
    double sg = 0, sb = 0;
    for (int t = 0; t < nt; t++) { sg += part[(size_t)t * 2 * C + j]; sb += part[(size_t)t * 2 * C + C + j]; }
    if (dgamma) dgamma[j] += (float)sg;
    if (dbeta) dbeta[j] += (float)sb;
  }
}
