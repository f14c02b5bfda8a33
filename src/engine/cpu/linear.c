/* linear.c - LINEAR and BMM forward and backward on the CPU (sgemm).
 *
 * LINEAR: x [..., K] (leading dims flattened to R rows), w [M, K], b [M]|NULL
 *         y [R, M] = x * w^T + b
 *         dx += dy * w;  dw += dy^T * x;  db += colsum(dy)
 *
 * BMM:    y[i] = op(a[i]) * op(b[i]) for i < B, op(a) [M, K], op(b) [K, N];
 *         a is stored [B, M, K], or [B, K, M] when ip[0] (op = transpose);
 *         b is stored [B, K, N], or [B, N, K] when ip[1].
 *
 * A 16-bit w is widened a panel of rows (output features) at a time
 * (cpu.h): y[:, panel] = x * panel^T; dx += dy[:, panel] * panel.
 *
 * sgemm is always called outside OpenMP regions (OpenBLAS has its own threads).
 */
#include <cblas.h>
#include <string.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* ---- LINEAR ---- */

/* scratch: the panel buffer of a 16-bit w, forward and for dx */
size_t cd_cpu_linear_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  const cd_node *xn = n->src[0], *wn = n->src[1];
  const int64_t M = wn->ne[0], K = wn->ne[1];
  if (n->n == 0 || K == 0 || (bwd && !cd_wants_grad(xn))) return 0;
  return cd_cpu_panels_scratch(wn, M, K);
}

void cd_cpu_linear_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *xn = n->src[0], *wn = n->src[1], *bn = n->src[2];
  const int64_t M = wn->ne[0], K = wn->ne[1];
  const int64_t R = M ? n->n / M : 0;
  float *y = n->data;
  if (n->n == 0) return;
  float beta = 0.0f;
  if (bn) { /* y = b, then sgemm accumulates */
    const float *b = bn->data;
#pragma omp parallel for schedule(static) if (n->n > 32768)
    for (int64_t r = 0; r < R; r++) memcpy(y + r * M, b, (size_t)M * sizeof(float));
    beta = 1.0f;
  }
  if (K == 0) {
    if (!bn) memset(y, 0, cd_nbytes(n));
    return;
  }
  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  cd_cpu_panels wp;
  cd_cpu_panels_init(&wp, wn, M, K, &sc, n);
  for (int64_t m0 = 0; m0 < M; m0 += wp.per) {
    const int64_t mb = CD_MIN(wp.per, M - m0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)mb, (int)K,
                1.0f, xn->data, (int)K, cd_cpu_panels_get(&wp, m0, mb), (int)K, beta, y + m0, (int)M);
  }
}

void cd_cpu_linear_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *xn = n->src[0], *wn = n->src[1], *bn = n->src[2];
  const int64_t M = wn->ne[0], K = wn->ne[1];
  const int64_t R = M ? n->n / M : 0;
  const float *dy = n->grad;
  if (n->n == 0) return;
  if (xn->grad && K) { /* dx [R, K] += dy [R, M] * w [M, K], a panel of w's rows at a time */
    cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
    cd_cpu_panels wp;
    cd_cpu_panels_init(&wp, wn, M, K, &sc, n);
    for (int64_t m0 = 0; m0 < M; m0 += wp.per) {
      const int64_t mb = CD_MIN(wp.per, M - m0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)K, (int)mb,
                  1.0f, dy + m0, (int)M, cd_cpu_panels_get(&wp, m0, mb), (int)K, 1.0f, xn->grad, (int)K);
    }
  }
  if (wn->grad && K) /* dw [M, K] += dy^T [M, R] * x [R, K] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)M, (int)K, (int)R,
                1.0f, dy, (int)M, xn->data, (int)K, 1.0f, wn->grad, (int)K);
  if (bn && bn->grad) {
    /* db [M] += sum over rows of dy; columns split between threads, double sums */
    float *db = bn->grad;
    const int64_t CB = 64;
#pragma omp parallel for schedule(static) if (n->n > 32768)
    for (int64_t m0 = 0; m0 < M; m0 += CB) {
      int64_t m1 = CD_MIN(M, m0 + CB);
      double acc[64] = {0};
      for (int64_t r = 0; r < R; r++) {
        const float *d = dy + r * M;
        for (int64_t m = m0; m < m1; m++) acc[m - m0] += d[m];
      }
      for (int64_t m = m0; m < m1; m++) db[m] += (float)acc[m - m0];
    }
  }
}

/* ---- BMM ---- */

typedef struct {
  int64_t B, M, K, N;
  int ta, tb;
} bmm_shape;

static bmm_shape bmm_get_shape(const cd_node *n) {
  const cd_node *a = n->src[0], *b = n->src[1];
  bmm_shape q;
  q.ta = n->ip[0] != 0;
  q.tb = n->ip[1] != 0;
  q.B = a->ne[0];
  q.M = q.ta ? a->ne[2] : a->ne[1];
  q.K = q.ta ? a->ne[1] : a->ne[2];
  q.N = q.tb ? b->ne[1] : b->ne[2];
  return q;
}

void cd_cpu_bmm_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *an = n->src[0], *bn = n->src[1];
  bmm_shape q = bmm_get_shape(n);
  if (n->n == 0) return;
  if (q.K == 0) {
    memset(n->data, 0, cd_nbytes(n));
    return;
  }
  int lda = (int)(q.ta ? q.M : q.K), ldb = (int)(q.tb ? q.K : q.N);
  for (int64_t i = 0; i < q.B; i++)
    cblas_sgemm(CblasRowMajor, q.ta ? CblasTrans : CblasNoTrans, q.tb ? CblasTrans : CblasNoTrans,
                (int)q.M, (int)q.N, (int)q.K, 1.0f, an->data + i * q.M * q.K, lda,
                bn->data + i * q.K * q.N, ldb, 0.0f, n->data + i * q.M * q.N, (int)q.N);
}

/* With C = op(A) op(B) and G = dL/dC [M, N]:
 *   d op(A) = G op(B)^T [M, K];  d op(B) = op(A)^T G [K, N].
 * A transposed operand's stored gradient is the transpose of those:
 *   ta: dA [K, M] = op(B) G^T;   tb: dB [N, K] = G^T op(A). */
void cd_cpu_bmm_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *an = n->src[0], *bn = n->src[1];
  bmm_shape q = bmm_get_shape(n);
  if (n->n == 0 || q.K == 0) return;
  const int M = (int)q.M, N = (int)q.N, K = (int)q.K;
  const int lda = q.ta ? M : K, ldb = q.tb ? K : N;
  for (int64_t i = 0; i < q.B; i++) {
    const float *A = an->data + i * q.M * q.K, *Bm = bn->data + i * q.K * q.N;
    const float *G = n->grad + i * q.M * q.N;
    if (an->grad) {
      float *dA = an->grad + i * q.M * q.K;
      if (!q.ta) /* dA [M, K] = G [M, N] * op(B)^T; op(B)^T is B^T (tb=0) or B (tb=1) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, q.tb ? CblasNoTrans : CblasTrans, M, K, N,
                    1.0f, G, N, Bm, ldb, 1.0f, dA, K);
      else /* dA [K, M] = op(B) [K, N] * G^T [N, M] */
        cblas_sgemm(CblasRowMajor, q.tb ? CblasTrans : CblasNoTrans, CblasTrans, K, M, N,
                    1.0f, Bm, ldb, G, N, 1.0f, dA, M);
    }
    if (bn->grad) {
      float *dB = bn->grad + i * q.K * q.N;
      if (!q.tb) /* dB [K, N] = op(A)^T [K, M] * G [M, N]; op(A)^T is A^T (ta=0) or A (ta=1) */
        cblas_sgemm(CblasRowMajor, q.ta ? CblasNoTrans : CblasTrans, CblasNoTrans, K, N, M,
                    1.0f, A, lda, G, N, 1.0f, dB, N);
      else /* dB [N, K] = G^T [N, M] * op(A) [M, K] */
        cblas_sgemm(CblasRowMajor, CblasTrans, q.ta ? CblasTrans : CblasNoTrans, N, K, M,
                    1.0f, G, N, A, lda, 1.0f, dB, K);
    }
  }
}
