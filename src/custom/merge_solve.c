/* merge_solve.c - closed-form multi-concept merge (see merge_solve.h).
 *
 * With M = C_regᵀ C_reg [d, d] and B = M⁻¹ Cᵀ [d, m]:
 *   S  = C B                    [m, m]   (symmetric positive definite when C has full row rank)
 *   Y  = S⁻¹ (V − C W0ᵀ)        [m, rows]
 *   Ŵ  = W0 + Yᵀ Bᵀ             [rows, d]
 * which is W0 + (Vᵀ − W0 Cᵀ) S⁻¹ C M⁻¹ written with solves only.
 */
#include "custom/merge_solve.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

static int all_finite(const double *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return 0;
  return 1;
}

/* max column sum of |A| for symmetric A [n, n] (what dpocon wants) */
static double norm1_sym(const double *A, int n) {
  double best = 0;
  for (int j = 0; j < n; j++) {
    double s = 0;
    for (int i = 0; i < n; i++) s += fabs(A[(size_t)i * n + j]);
    if (s > best) best = s;
  }
  return best;
}

/* Cholesky-factorizes the symmetric A [n, n] in place (lower triangle) and
 * estimates its reciprocal condition number; *rcond = 0 when not positive definite. */
static int chol_rcond(double *A, int n, double *rcond) {
  double anorm = norm1_sym(A, n);
  *rcond = 0;
  lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', n, A, n);
  if (info > 0) return 1; /* not positive definite */
  if (info < 0) return cd_set_error("merge: dpotrf argument %d invalid", (int)-info);
  if (anorm == 0) return 1;
  info = LAPACKE_dpocon(LAPACK_ROW_MAJOR, 'L', n, A, n, anorm, rcond);
  if (info != 0) return cd_set_error("merge: dpocon failed (info %d)", (int)info);
  return 0;
}

void cd_merge_gram(const double *X, int n, int d, double *G) {
  /* G = Xᵀ X: dsyrk fills the upper triangle; mirror it so G is exactly symmetric */
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, n, 1.0, X, d, 0.0, G, d);
  for (int i = 0; i < d; i++)
    for (int j = 0; j < i; j++) G[(size_t)i * d + j] = G[(size_t)j * d + i];
}

int cd_merge_solve(const double *W0, int rows, int d, const double *C, int m, const double *V,
                   const double *Creg, int r, double ridge, double *W_hat, cd_merge_report *rep) {
  if (!W0 || !C || !V || !Creg || !W_hat)
    return cd_set_error("merge: NULL argument");
  if (rows <= 0 || d <= 0 || m <= 0 || r <= 0)
    return cd_set_error("merge: bad sizes (rows %d, d %d, constraints %d, regularisation rows %d)",
                        rows, d, m, r);
  if (!(ridge >= 0) || !isfinite(ridge))
    return cd_set_error("merge: ridge must be a finite number >= 0 (got %g)", ridge);
  if (!all_finite(W0, (size_t)rows * d)) return cd_set_error("merge: W0 has non-finite values");
  if (!all_finite(C, (size_t)m * d)) return cd_set_error("merge: constraint features C have non-finite values");
  if (!all_finite(V, (size_t)m * rows)) return cd_set_error("merge: targets V have non-finite values");
  if (!all_finite(Creg, (size_t)r * d))
    return cd_set_error("merge: regularisation features C_reg have non-finite values");
  if (r < d)
    return cd_set_error("merge: regularisation matrix M = C_regᵀC_reg is singular: %d regularisation "
                        "features for context dim %d (need at least %d independent ones; use more captions)",
                        r, d, d);

  int rc = -1;
  double *M = cd_malloc(sizeof(double) * d * d);      /* [d, d], then its Cholesky factor */
  double *B = cd_malloc(sizeof(double) * d * m);      /* [d, m] = M⁻¹ Cᵀ */
  double *S = cd_malloc(sizeof(double) * m * m);      /* [m, m] = C B (+ ridge), then its factor */
  double *Y = cd_malloc(sizeof(double) * m * rows);   /* [m, rows] = S⁻¹ (V − C W0ᵀ), then residual */
  cd_merge_report rp = {0};

  /* M and B = M⁻¹ Cᵀ */
  cd_merge_gram(Creg, r, d, M);
  int f = chol_rcond(M, d, &rp.rcond_reg);
  if (f < 0) goto done;
  if (f > 0 || rp.rcond_reg < CD_MERGE_RCOND_MIN) {
    cd_set_error("merge: regularisation matrix M = C_regᵀC_reg is singular or ill-conditioned "
                 "(%d features, d=%d, rcond=%.3g): use more or more varied regularisation captions",
                 r, d, rp.rcond_reg);
    goto done;
  }
  for (int i = 0; i < m; i++)
    for (int k = 0; k < d; k++) B[(size_t)k * m + i] = C[(size_t)i * d + k];
  lapack_int info = LAPACKE_dpotrs(LAPACK_ROW_MAJOR, 'L', d, m, M, d, B, m);
  if (info) { cd_set_error("merge: dpotrs(M) failed (info %d)", (int)info); goto done; }

  /* S = C M⁻¹ Cᵀ, symmetrized against rounding, plus the optional ridge */
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, m, d, 1.0, C, d, B, m, 0.0, S, m);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < i; j++) {
      double a = 0.5 * (S[(size_t)i * m + j] + S[(size_t)j * m + i]);
      S[(size_t)i * m + j] = S[(size_t)j * m + i] = a;
    }
  if (ridge > 0) {
    double tr = 0;
    for (int i = 0; i < m; i++) tr += S[(size_t)i * m + i];
    double add = ridge * tr / m;
    for (int i = 0; i < m; i++) S[(size_t)i * m + i] += add;
  }
  f = chol_rcond(S, m, &rp.rcond);
  if (f < 0) goto done;
  if (f > 0 || rp.rcond < CD_MERGE_RCOND_MIN) {
    cd_set_error("merge: constraint matrix is singular or ill-conditioned (%d constraints, rcond=%.3g): "
                 "use fewer/different prompts or --ridge", m, rp.rcond);
    goto done;
  }

  /* Y = S⁻¹ (V − C W0ᵀ) */
  memcpy(Y, V, sizeof(double) * m * rows);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, rows, d, -1.0, C, d, W0, d, 1.0, Y, rows);
  info = LAPACKE_dpotrs(LAPACK_ROW_MAJOR, 'L', m, rows, S, m, Y, rows);
  if (info) { cd_set_error("merge: dpotrs(S) failed (info %d)", (int)info); goto done; }

  /* Ŵ = W0 + Yᵀ Bᵀ */
  memcpy(W_hat, W0, sizeof(double) * rows * d);
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, rows, d, m, 1.0, Y, rows, B, m, 1.0, W_hat, d);

  /* residual E = C Ŵᵀ − V [m, rows] (reusing Y) */
  memcpy(Y, V, sizeof(double) * m * rows);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, rows, d, 1.0, C, d, W_hat, d, -1.0, Y, rows);
  double num = 0, den = 0;
  for (size_t i = 0; i < (size_t)m * rows; i++) {
    num += Y[i] * Y[i];
    den += V[i] * V[i];
    if (fabs(Y[i]) > rp.max_abs_residual) rp.max_abs_residual = fabs(Y[i]);
  }
  rp.rel_residual = den > 0 ? sqrt(num / den) : sqrt(num);
  if (!all_finite(W_hat, (size_t)rows * d)) { cd_set_error("merge: result has non-finite values"); goto done; }
  rc = 0;

done:
  if (rep) *rep = rp;
  free(M);
  free(B);
  free(S);
  free(Y);
  return rc;
}

static double row_norm(const double *x, int d) {
  double s = 0;
  for (int k = 0; k < d; k++) s += x[k] * x[k];
  return sqrt(s);
}

int cd_dedup_rows_with(double *X, int m, int d, double *Y, int dy, double tol) {
  if (!X || m <= 0 || d <= 0) return m > 0 ? m : 0;
  if (!(tol >= 0)) tol = 0;
  int n = 0; /* rows kept so far, compacted into X[0..n) */
  for (int i = 0; i < m; i++) {
    const double *xi = X + (size_t)i * d;
    double ni = row_norm(xi, d);
    int dup = 0;
    for (int j = 0; j < n && !dup; j++) {
      const double *xj = X + (size_t)j * d;
      if (tol == 0) {
        dup = 1;
        for (int k = 0; k < d && dup; k++) dup = xi[k] == xj[k];
      } else {
        double s = 0;
        for (int k = 0; k < d; k++) s += (xi[k] - xj[k]) * (xi[k] - xj[k]);
        dup = sqrt(s) <= tol * CD_MAX(ni, row_norm(xj, d));
      }
    }
    if (dup) continue;
    if (n != i) {
      memmove(X + (size_t)n * d, xi, sizeof(double) * d);
      if (Y) memmove(Y + (size_t)n * dy, Y + (size_t)i * dy, sizeof(double) * dy);
    }
    n++;
  }
  return n;
}

int cd_dedup_rows(double *X, int m, int d, double tol) { return cd_dedup_rows_with(X, m, d, NULL, 0, tol); }
