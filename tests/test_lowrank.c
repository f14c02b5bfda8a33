/* test_lowrank.c - SVD compression of weight deltas: error vs ratio, rank
 * rule against a brute-force cumulative sum, exact reconstruction at ratio 1. */
#include <float.h>
#include <lapacke.h>

#include "custom/lowrank.h"
#include "test.h"

/* dW [rows, cols] = A [rows, rank] B [rank, cols] + noise·N(0,1), rounded to float */
static float *low_rank_plus_noise(int rows, int cols, int rank, double noise, uint64_t seed) {
  cd_rng g;
  cd_rng_seed(&g, seed);
  double *A = malloc(sizeof(double) * rows * rank), *B = malloc(sizeof(double) * rank * cols);
  for (int i = 0; i < rows * rank; i++) A[i] = cd_rng_normal(&g) / (1 + i % rank); /* spread spectrum */
  for (int i = 0; i < rank * cols; i++) B[i] = cd_rng_normal(&g);
  float *x = malloc(sizeof(float) * rows * cols);
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) {
      double s = noise * cd_rng_normal(&g);
      for (int l = 0; l < rank; l++) s += A[i * rank + l] * B[l * cols + j];
      x[(size_t)i * cols + j] = (float)s;
    }
  free(A);
  free(B);
  return x;
}

/* singular values of the float matrix in double, by a different LAPACK driver */
static double *svals(const float *x, int rows, int cols) {
  int k = CD_MIN(rows, cols);
  double *a = malloc(sizeof(double) * rows * cols), *s = malloc(sizeof(double) * k), *sup = malloc(sizeof(double) * k);
  for (int i = 0; i < rows * cols; i++) a[i] = x[i];
  if (LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', rows, cols, a, cols, s, NULL, 1, NULL, 1, sup)) s[0] = NAN;
  free(a);
  free(sup);
  return s;
}

/* the rank rule of lowrank.h, spelled out */
static int brute_rank(const double *s, int n, int rows, int cols, double ratio) {
  double total = 0;
  for (int i = 0; i < n; i++) total += s[i];
  int nr = 0;
  for (int i = 0; i < n; i++) nr += s[i] > s[0] * CD_MAX(rows, cols) * DBL_EPSILON;
  if (ratio >= 1) return nr;
  for (int k = 1; k <= n; k++) {
    double cum = 0;
    for (int i = 0; i < k; i++) cum += s[i];
    if (cum >= ratio * total) return CD_MIN(k, nr);
  }
  return nr;
}

/* ‖dW − Us Vt‖/‖dW‖ recomputed here with naive loops */
static double recon_err(const float *dW, const float *Us, const float *Vt, int rows, int cols, int k) {
  double num = 0, den = 0;
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) {
      double r = dW[(size_t)i * cols + j];
      for (int l = 0; l < k; l++) r -= (double)Us[(size_t)i * k + l] * Vt[(size_t)l * cols + j];
      num += r * r;
      den += (double)dW[(size_t)i * cols + j] * dW[(size_t)i * cols + j];
    }
  return sqrt(num / den);
}

/* Float32 error model (test.h): the SVD runs in double; the kept factors
 * U s and V^T are rounded to float once per element, which moves U s V^T by
 * at most 2 u sum_l |U s|_il |V^T|_lj, in Frobenius norm <= 2 u ||U s||_F
 * ||V^T||_F = 2 u sqrt(k) ||s_1..k|| <= 2 u sqrt(k) ||dW||. Anything computed
 * in double (the reported error, the reference singular values) is exact at
 * this scale (k * 2^-53). */
static double factor_tol(int k) { return 2 * TEST_U32 * sqrt((double)k) + 1e-12; }

TEST(error_falls_with_ratio) {
  const int rows = 48, cols = 40;
  float *dW = low_rank_plus_noise(rows, cols, 8, 0.05, 1);
  double *s = svals(dW, rows, cols);
  const double ratios[5] = {0.3, 0.5, 0.6, 0.8, 0.95};
  double errs[5], mine[5], theory[5];
  int ranks[5], fail = 0;
  for (int t = 0; t < 5 && !fail; t++) {
    float *Us, *Vt;
    if (cd_lowrank(dW, rows, cols, ratios[t], &ranks[t], &Us, &Vt, &errs[t])) { fail = 1; break; }
    mine[t] = recon_err(dW, Us, Vt, rows, cols, ranks[t]);
    double tail = 0, all = 0;
    for (int i = 0; i < CD_MIN(rows, cols); i++) {
      all += s[i] * s[i];
      if (i >= ranks[t]) tail += s[i] * s[i];
    }
    theory[t] = sqrt(tail / all); /* Eckart-Young: the truncated SVD error */
    free(Us);
    free(Vt);
  }
  free(dW);
  free(s);
  CHECKF(!fail, "cd_lowrank: %s", cd_last_error());
  for (int t = 0; t < 5; t++) {
    /* the same double computation from the same float factors, summed in another order */
    CHECKF(fabs(errs[t] - mine[t]) < 1e-12, "ratio %g: reported err %.6g, recomputed %.6g", ratios[t], errs[t], mine[t]);
    CHECKF(fabs(errs[t] - theory[t]) <= factor_tol(ranks[t]), "ratio %g: err %.6g, optimal %.6g", ratios[t], errs[t], theory[t]);
    if (t > 0) { /* optimal errors fall with the rank; each reported one is within factor_tol of its optimum */
      CHECKF(ranks[t] >= ranks[t - 1] && errs[t] <= errs[t - 1] + factor_tol(ranks[t]) + factor_tol(ranks[t - 1]), "ratio %g: rank %d err %.4g after rank %d err %.4g",
             ratios[t], ranks[t], errs[t], ranks[t - 1], errs[t - 1]);
    }
  }
  CHECKF(ranks[4] > ranks[0] && errs[4] < errs[0], "ranks %d..%d", ranks[0], ranks[4]);
}

TEST(full_ratio_reproduces) {
  const int shapes[3][2] = {{30, 17}, {17, 30}, {25, 25}};
  for (int t = 0; t < 3; t++) {
    int rows = shapes[t][0], cols = shapes[t][1], k;
    float *dW = low_rank_plus_noise(rows, cols, 20, 0.3, 10 + t), *Us, *Vt;
    double err;
    int rc = cd_lowrank(dW, rows, cols, 1.0, &k, &Us, &Vt, &err);
    float *W = calloc((size_t)rows * cols, sizeof(float));
    if (rc == 0) cd_lowrank_apply(Us, Vt, rows, cols, k, W);
    double e2 = rc == 0 ? test_rel_err(W, dW, (size_t)rows * cols) : 1;
    free(dW); free(Us); free(Vt); free(W);
    CHECKF(rc == 0, "%s", cd_last_error());
    CHECKF(k == CD_MIN(rows, cols), "[%d,%d] rank %d", rows, cols, k);
    /* full rank: the optimum is 0; applying adds float32 sums of k terms (gamma_k per |U s||V^T|) */
    const double tol = factor_tol(k), tol2 = factor_tol(k) + test_gamma(k) * sqrt((double)k);
    CHECKF(err <= tol && e2 <= tol2, "[%d,%d] rel err %.3g / applied %.3g (tol %.3g / %.3g)", rows, cols, err, e2, tol, tol2);
  }
  /* an exactly rank-3 delta (3 nonzero rows): ratio 1 keeps the numerical rank */
  float *dW = calloc(20 * 10, sizeof(float)), *Us, *Vt;
  test_fill_uniform(dW, 3 * 10, -1, 1, 5);
  int k;
  double err;
  int rc = cd_lowrank(dW, 20, 10, 1.0, &k, &Us, &Vt, &err);
  free(dW); free(Us); free(Vt);
  CHECKF(rc == 0 && k == 3 && err <= factor_tol(3), "rank-3 delta: rc %d rank %d err %.3g", rc, k, err);
}

TEST(rank_rule_brute_force) {
  const double ratios[7] = {0.05, 0.3, 0.5, 0.6, 0.8, 0.95, 0.999};
  for (int t = 0; t < 6; t++) {
    int rows = 20 + 7 * t, cols = 45 - 5 * t;
    float *dW = low_rank_plus_noise(rows, cols, 3 + t, t * 0.02, 100 + t);
    double *s = svals(dW, rows, cols);
    for (int q = 0; q < 7; q++) {
      int k;
      float *Us, *Vt;
      int rc = cd_lowrank(dW, rows, cols, ratios[q], &k, &Us, &Vt, NULL);
      free(Us);
      free(Vt);
      int kb = brute_rank(s, CD_MIN(rows, cols), rows, cols, ratios[q]);
      if (rc || k != kb) {
        free(dW);
        free(s);
        CHECKF(rc == 0, "%s", cd_last_error());
        FAILF("[%d,%d] ratio %g: rank %d, brute force %d", rows, cols, ratios[q], k, kb);
      }
    }
    free(dW);
    free(s);
  }
}

TEST(apply_adds) {
  const int rows = 9, cols = 13, k = 4;
  float Us[9 * 4], Vt[4 * 13], W[9 * 13], ref[9 * 13];
  test_fill_uniform(Us, sizeof Us / 4, -1, 1, 1);
  test_fill_uniform(Vt, sizeof Vt / 4, -1, 1, 2);
  test_fill_uniform(W, sizeof W / 4, -1, 1, 3);
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) {
      double s = W[i * cols + j];
      for (int l = 0; l < k; l++) s += (double)Us[i * k + l] * Vt[l * cols + j];
      ref[i * cols + j] = (float)s;
    }
  /* W + U V^T in float32: a sum of k + 1 terms per element, gamma_{k+1} times
   * their absolute sum, plus the reference's own rounding (u) */
  double na = 0, nr = 0;
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) {
      double a = fabs(W[i * cols + j]);
      for (int l = 0; l < k; l++) a += fabs((double)Us[i * k + l] * Vt[l * cols + j]);
      na += a * a;
      nr += (double)ref[i * cols + j] * ref[i * cols + j];
    }
  cd_lowrank_apply(Us, Vt, rows, cols, k, W);
  CHECK_REL(W, ref, (size_t)rows * cols, TEST_U32 + test_gamma(k + 1) * sqrt(na / nr));
  memcpy(ref, W, sizeof W);
  cd_lowrank_apply(Us, Vt, rows, cols, 0, W); /* k = 0: nothing */
  CHECK(memcmp(ref, W, sizeof W) == 0);
}

TEST(zero_delta) {
  float dW[6 * 4] = {0};
  float *Us = (float *)1, *Vt = (float *)1;
  int k = -1;
  double err = -1;
  CHECK_OK(cd_lowrank(dW, 6, 4, 0.5, &k, &Us, &Vt, &err));
  CHECK(k == 0 && Us == NULL && Vt == NULL && err == 0);
}

TEST(bad_inputs) {
  float dW[4 * 3];
  test_fill_uniform(dW, 12, -1, 1, 7);
  float *Us, *Vt;
  int k;
  double err;
  const double bad[5] = {0.0, -0.5, 1.0000001, NAN, INFINITY};
  for (int i = 0; i < 5; i++) {
    CHECKF(cd_lowrank(dW, 4, 3, bad[i], &k, &Us, &Vt, &err) == -1, "ratio %g accepted", bad[i]);
    CHECKF(strstr(cd_last_error(), "ratio"), "message: %s", cd_last_error());
  }
  CHECK(cd_lowrank(dW, 0, 3, 0.5, &k, &Us, &Vt, &err) == -1);
  CHECK(cd_lowrank(dW, 4, -3, 0.5, &k, &Us, &Vt, &err) == -1);
  CHECK(cd_lowrank(NULL, 4, 3, 0.5, &k, &Us, &Vt, &err) == -1);
  dW[5] = NAN;
  CHECK(cd_lowrank(dW, 4, 3, 0.5, &k, &Us, &Vt, &err) == -1);
  CHECK(Us == NULL && Vt == NULL);
}

int main(void) {
  RUN(error_falls_with_ratio);
  RUN(full_ratio_reproduces);
  RUN(rank_rule_brute_force);
  RUN(apply_adds);
  RUN(zero_delta);
  RUN(bad_inputs);
  return test_summary();
}
