/* lowrank.c - SVD compression of a weight delta (see lowrank.h). The SVD runs
 * in float64 (dgesdd, thin factors) so the kept factors are accurate to float
 * rounding even for ratio = 1. */
#include "custom/lowrank.h"

#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>

#include "core/common.h"

int cd_lowrank(const float *dW, int rows, int cols, double ratio, int *rank, float **Us, float **Vt,
               double *rel_err) {
  if (!dW || !rank || !Us || !Vt) return cd_set_error("lowrank: NULL argument");
  *rank = 0;
  *Us = *Vt = NULL;
  if (rel_err) *rel_err = 0;
  if (rows <= 0 || cols <= 0) return cd_set_error("lowrank: bad shape [%d, %d]", rows, cols);
  if (!(ratio > 0 && ratio <= 1))
    return cd_set_error("lowrank: ratio must be in (0, 1] (got %g)", ratio);
  size_t n = (size_t)rows * cols;
  for (size_t i = 0; i < n; i++)
    if (!isfinite(dW[i])) return cd_set_error("lowrank: delta [%d, %d] has non-finite values", rows, cols);

  int kmax = CD_MIN(rows, cols);
  double *A = cd_malloc(sizeof(double) * n);          /* [rows, cols], destroyed by dgesdd */
  double *U = cd_malloc(sizeof(double) * rows * kmax); /* [rows, kmax] */
  double *VT = cd_malloc(sizeof(double) * kmax * cols); /* [kmax, cols] */
  double *s = cd_malloc(sizeof(double) * kmax);
  int rc = -1;
  for (size_t i = 0; i < n; i++) A[i] = dW[i];
  lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', rows, cols, A, cols, s, U, kmax, VT, cols);
  if (info != 0) {
    cd_set_error("lowrank: SVD of [%d, %d] failed (dgesdd info %d%s)", rows, cols, (int)info,
                 info > 0 ? ": did not converge" : "");
    goto done;
  }

  /* rank rule (lowrank.h) */
  double total = 0;
  for (int i = 0; i < kmax; i++) total += s[i];
  int numrank = 0;
  double tiny = s[0] * CD_MAX(rows, cols) * DBL_EPSILON;
  while (numrank < kmax && s[numrank] > tiny) numrank++;
  int k = numrank;
  if (ratio < 1) {
    double cum = 0, target = ratio * total;
    for (k = 0; k < numrank;) {
      cum += s[k++];
      if (cum >= target) break;
    }
  }

  if (k > 0) {
    float *us = cd_malloc(sizeof(float) * rows * k), *vt = cd_malloc(sizeof(float) * k * cols);
    for (int i = 0; i < rows; i++)
      for (int j = 0; j < k; j++) us[(size_t)i * k + j] = (float)(U[(size_t)i * kmax + j] * s[j]);
    for (int j = 0; j < k; j++)
      for (int c = 0; c < cols; c++) vt[(size_t)j * cols + c] = VT[(size_t)j * cols + c];
    *Us = us;
    *Vt = vt;
  }
  *rank = k;

  if (rel_err) {
    /* error of what is actually stored: ΔW − Us·Vt from the float factors */
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) A[i] = dW[i];
    if (k > 0) {
      double *ud = U, *vd = VT; /* reuse: float factors widened to double */
      for (size_t i = 0; i < (size_t)rows * k; i++) ud[i] = (*Us)[i];
      for (size_t i = 0; i < (size_t)k * cols; i++) vd[i] = (*Vt)[i];
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, k, -1.0, ud, k, vd, cols, 1.0, A,
                  cols);
    }
    for (size_t i = 0; i < n; i++) {
      num += A[i] * A[i];
      den += (double)dW[i] * dW[i];
    }
    *rel_err = den > 0 ? sqrt(num / den) : 0;
  }
  rc = 0;

done:
  free(A);
  free(U);
  free(VT);
  free(s);
  return rc;
}

void cd_lowrank_apply(const float *Us, const float *Vt, int rows, int cols, int k, float *W) {
  if (k <= 0 || rows <= 0 || cols <= 0 || !Us || !Vt || !W) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, k, 1.0f, Us, k, Vt, cols, 1.0f, W, cols);
}
