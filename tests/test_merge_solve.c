/* test_merge_solve.c - the closed-form multi-concept merge against the golden
 * merge.safetensors (float64) and against independent explicit-inverse and
 * optimality checks on random problems. */
#include <lapacke.h>

#include "custom/merge_solve.h"
#include "test.h"

/* cd_malloc'd copy of golden tensor `name` when it is F64 with `numel` elements, else NULL */
static double *gold_f64(const cd_tensor_file *f, const char *name, size_t numel) {
  const cd_tensor_info *t = cd_tf_find(f, name);
  if (!t || t->dtype != CD_DT_F64 || cd_tensor_numel(t) != (int64_t)numel) return NULL;
  double *x = cd_malloc(numel * sizeof(double));
  if (cd_tf_read_f64(f, t, x)) {
    free(x);
    return NULL;
  }
  return x;
}

/* ---- small dense helpers (naive, independent of BLAS) ---- */
/* C[n,p] = op(A) op(B) with op(X) = X or Xᵀ; A is [n,k] or [k,n], B is [k,p] or [p,k] */
static void mm(const double *A, int ta, const double *B, int tb, double *Cm, int n, int k, int p) {
  for (int i = 0; i < n; i++)
    for (int j = 0; j < p; j++) {
      double s = 0;
      for (int l = 0; l < k; l++) s += (ta ? A[(size_t)l * n + i] : A[(size_t)i * k + l]) *
                                       (tb ? B[(size_t)j * k + l] : B[(size_t)l * p + j]);
      Cm[(size_t)i * p + j] = s;
    }
}
static int inv(double *A, int n) { /* in place, explicit inverse */
  lapack_int *ip = malloc(sizeof(lapack_int) * n);
  int r = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, n, n, A, n, ip) || LAPACKE_dgetri(LAPACK_ROW_MAJOR, n, A, n, ip);
  free(ip);
  return r;
}
static double frob(const double *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += x[i] * x[i];
  return sqrt(s);
}
static double *randn(size_t n, cd_rng *r) {
  double *x = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) x[i] = cd_rng_normal(r);
  return x;
}

/* explicit-inverse reference: W0 + (Vᵀ − W0Cᵀ)(S + λ mean(diag S) I)⁻¹ C M⁻¹ */
static void ref_merge(const double *W0, int rows, int d, const double *C, int m, const double *V,
                      const double *Creg, int r, double ridge, double *W) {
  double *M = malloc(sizeof(double) * d * d), *CMi = malloc(sizeof(double) * m * d);
  double *S = malloc(sizeof(double) * m * m), *R = malloc(sizeof(double) * rows * m);
  double *T = malloc(sizeof(double) * rows * m);
  mm(Creg, 1, Creg, 0, M, d, r, d);
  inv(M, d);
  mm(C, 0, M, 0, CMi, m, d, d);  /* C M⁻¹ [m,d] */
  mm(CMi, 0, C, 1, S, m, d, m);  /* C M⁻¹ Cᵀ */
  double tr = 0;
  for (int i = 0; i < m; i++) tr += S[i * m + i];
  for (int i = 0; i < m; i++) S[i * m + i] += ridge * tr / m;
  inv(S, m);
  mm(W0, 0, C, 1, R, rows, d, m); /* W0 Cᵀ */
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < m; j++) R[i * m + j] = V[(size_t)j * rows + i] - R[i * m + j];
  mm(R, 0, S, 0, T, rows, m, m);
  mm(T, 0, CMi, 0, W, rows, m, d);
  for (size_t i = 0; i < (size_t)rows * d; i++) W[i] += W0[i];
  free(M); free(CMi); free(S); free(R); free(T);
}

/* a random problem: V from random fine-tuned weights, as in the real merge */
typedef struct { int rows, d, m, r; double *W0, *C, *V, *Creg; } problem;
static problem make_problem(int rows, int d, int m, int r, uint64_t seed) {
  cd_rng g;
  cd_rng_seed(&g, seed);
  problem p = {rows, d, m, r, randn((size_t)rows * d, &g), randn((size_t)m * d, &g), NULL, randn((size_t)r * d, &g)};
  double *W1 = randn((size_t)rows * d, &g);
  p.V = malloc(sizeof(double) * m * rows);
  mm(p.C, 0, W1, 1, p.V, m, d, rows); /* V = C W1ᵀ = (W1 Cᵀ)ᵀ */
  free(W1);
  return p;
}
static void free_problem(problem *p) { free(p->W0); free(p->C); free(p->V); free(p->Creg); }

TEST(golden_merge) {
  char path[1024];
  NEED_GOLDEN(path, "merge.safetensors");
  cd_tensor_file *f;
  CHECKF(cd_safetensors_open(path, &f) == 0, "cannot read %.300s: %s", path, cd_last_error());
  const int rows = 32, d = 16, m = 12, r = 300, m1 = 6;
  double *W0 = gold_f64(f, "W0", rows * d), *W1 = gold_f64(f, "W1", rows * d), *W2 = gold_f64(f, "W2", rows * d);
  double *C = gold_f64(f, "C", m * d), *C1 = gold_f64(f, "C1", m1 * d), *C2 = gold_f64(f, "C2", m1 * d);
  double *V = gold_f64(f, "V", m * rows), *Creg = gold_f64(f, "C_reg", r * d), *M = gold_f64(f, "M", d * d);
  double *Wref = gold_f64(f, "W_hat", rows * d), *res = gold_f64(f, "constraint_residual_max", 1);
  cd_tensor_file_close(f);
  double *G = malloc(sizeof(double) * d * d), *V2 = malloc(sizeof(double) * m * rows);
  double *W = malloc(sizeof(double) * rows * d);
  int ok = W0 && W1 && W2 && C && C1 && C2 && V && Creg && M && Wref && res;
  cd_merge_report rep;
  int rc = ok ? cd_merge_solve(W0, rows, d, C, m, V, Creg, r, 0.0, W, &rep) : -1;
  double eM = 0, eV = 0, eW = 0;
  if (ok) {
    cd_merge_gram(Creg, r, d, G);
    eM = test_rel_err_d(G, M, (size_t)d * d);
    /* the golden V is (W_i C_iᵀ)ᵀ stacked, and C is C1 on C2 */
    mm(C1, 0, W1, 1, V2, m1, d, rows);
    mm(C2, 0, W2, 1, V2 + m1 * rows, m1, d, rows);
    eV = test_rel_err_d(V2, V, (size_t)m * rows);
    ok = memcmp(C, C1, sizeof(double) * m1 * d) == 0 && memcmp(C + m1 * d, C2, sizeof(double) * m1 * d) == 0;
    if (rc == 0) eW = test_rel_err_d(W, Wref, (size_t)rows * d);
  }
  double gres = res ? res[0] : 0;
  free(W0); free(W1); free(W2); free(C); free(C1); free(C2); free(V); free(Creg); free(M);
  free(Wref); free(res); free(G); free(V2); free(W);
  CHECKF(ok, "merge.safetensors: missing/mis-shaped tensors or C != [C1; C2]");
  CHECKF(rc == 0, "cd_merge_solve: %s", cd_last_error());
  CHECKF(eM < 1e-13, "M = C_regᵀC_reg rel err %.3g", eM);
  CHECKF(eV < 1e-13, "V vs (W_i C_iᵀ)ᵀ rel err %.3g", eV);
  CHECKF(eW < 1e-10, "W_hat rel err %.3g", eW);
  CHECKF(rep.max_abs_residual < 1e-12, "constraint residual %.3g (golden %.3g)", rep.max_abs_residual, gres);
  CHECKF(rep.rel_residual < 1e-13, "relative constraint residual %.3g", rep.rel_residual);
  CHECK(rep.rcond > CD_MERGE_RCOND_MIN && rep.rcond <= 1 && rep.rcond_reg > CD_MERGE_RCOND_MIN);
}

/* Ŵ is the constrained minimiser: every feasible direction Δ (Δ Cᵀ = 0)
 * increases ‖(W − W0) C_regᵀ‖, and the result matches an explicit-inverse evaluation. */
TEST(random_optimality) {
  problem p = make_problem(10, 12, 5, 40, 7);
  int rows = p.rows, d = p.d, m = p.m;
  double *W = malloc(sizeof(double) * rows * d), *Wr = malloc(sizeof(double) * rows * d);
  double *P = malloc(sizeof(double) * d * d), *CCt = malloc(sizeof(double) * m * m);
  double *T = malloc(sizeof(double) * m * d), *Dl = malloc(sizeof(double) * rows * d);
  double *X = malloc(sizeof(double) * rows * d), *E = malloc(sizeof(double) * rows * p.r);
  double *DC = malloc(sizeof(double) * rows * m);
  cd_merge_report rep;
  int rc = cd_merge_solve(p.W0, rows, d, p.C, m, p.V, p.Creg, p.r, 0.0, W, &rep);
  ref_merge(p.W0, rows, d, p.C, m, p.V, p.Creg, p.r, 0.0, Wr);
  double eref = test_rel_err_d(W, Wr, (size_t)rows * d);

  /* projector onto the null space of C: P = I − Cᵀ (C Cᵀ)⁻¹ C */
  mm(p.C, 0, p.C, 1, CCt, m, d, m);
  inv(CCt, m);
  mm(CCt, 0, p.C, 0, T, m, m, d);
  mm(p.C, 1, T, 0, P, d, m, d);
  for (int i = 0; i < d; i++)
    for (int j = 0; j < d; j++) P[i * d + j] = (i == j) - P[i * d + j];

  /* objective f(W) = ‖(W − W0) C_regᵀ‖_F */
#define OBJ(Wx, out) do { for (size_t i_ = 0; i_ < (size_t)rows * d; i_++) X[i_] = (Wx)[i_] - p.W0[i_]; \
    mm(X, 0, p.Creg, 1, E, rows, d, p.r); out = frob(E, (size_t)rows * p.r); } while (0)
  double f0;
  OBJ(W, f0);
  cd_rng g;
  cd_rng_seed(&g, 99);
  int worse = 0, trials = 0;
  double max_feas = 0;
  for (int t = 0; t < 8; t++) {
    double *G = randn((size_t)rows * d, &g);
    mm(G, 0, P, 0, Dl, rows, d, d); /* Δ = G P */
    free(G);
    mm(Dl, 0, p.C, 1, DC, rows, d, m);
    max_feas = fmax(max_feas, frob(DC, (size_t)rows * m) / frob(Dl, (size_t)rows * d));
    const double eps[3] = {1e-3, 1e-1, 1.0};
    for (int e = 0; e < 3; e++)
      for (int sgn = -1; sgn <= 1; sgn += 2) {
        for (size_t i = 0; i < (size_t)rows * d; i++) Wr[i] = W[i] + sgn * eps[e] * Dl[i];
        double f1;
        OBJ(Wr, f1);
        worse += f1 > f0;
        trials++;
      }
  }
#undef OBJ
  free_problem(&p);
  free(W); free(Wr); free(P); free(CCt); free(T); free(Dl); free(X); free(E); free(DC);
  CHECKF(rc == 0, "cd_merge_solve: %s", cd_last_error());
  CHECKF(eref < 1e-9, "vs explicit-inverse formula: rel err %.3g", eref);
  CHECKF(rep.max_abs_residual < 1e-12, "constraint residual %.3g", rep.max_abs_residual);
  CHECKF(max_feas < 1e-12, "test bug: perturbation not in the constraint null space (%.3g)", max_feas);
  CHECKF(worse == trials, "only %d of %d feasible perturbations increased the objective", worse, trials);
}

/* duplicate constraints make S singular: clear error; dedup or ridge fix it */
TEST(singular_duplicates) {
  problem p = make_problem(8, 16, 6, 50, 3);
  int rows = p.rows, d = p.d, m = p.m;
  memcpy(p.C + 3 * d, p.C + 1 * d, sizeof(double) * d); /* row 3 = row 1, same target too */
  memcpy(p.V + 3 * rows, p.V + 1 * rows, sizeof(double) * rows);
  double *W = malloc(sizeof(double) * rows * d), *Wr = malloc(sizeof(double) * rows * d);
  cd_merge_report rep;
  int rc1 = cd_merge_solve(p.W0, rows, d, p.C, m, p.V, p.Creg, p.r, 0.0, W, &rep);
  char msg[512];
  snprintf(msg, sizeof msg, "%s", cd_last_error());
  /* ridge: succeeds and matches the documented definition S + λ·mean(diag S)·I */
  int rc2 = cd_merge_solve(p.W0, rows, d, p.C, m, p.V, p.Creg, p.r, 1e-3, W, &rep);
  ref_merge(p.W0, rows, d, p.C, m, p.V, p.Creg, p.r, 1e-3, Wr);
  double eridge = test_rel_err_d(W, Wr, (size_t)rows * d), resid_ridge = rep.rel_residual;
  /* dedup (C and its targets together): 5 constraints left, exact solve works */
  int m2 = cd_dedup_rows_with(p.C, m, d, p.V, rows, 1e-6);
  int rc3 = cd_merge_solve(p.W0, rows, d, p.C, m2, p.V, p.Creg, p.r, 0.0, W, &rep);
  free_problem(&p);
  free(W); free(Wr);
  CHECKF(rc1 == -1, "duplicate constraints accepted");
  CHECKF(strstr(msg, "constraint matrix is singular or ill-conditioned (6 constraints") && strstr(msg, "--ridge"),
         "unclear message: %s", msg);
  CHECKF(rc2 == 0, "ridge solve: %s", cd_last_error());
  CHECKF(eridge < 1e-8, "ridge vs explicit formula: rel err %.3g", eridge);
  CHECKF(resid_ridge < 1e-2, "ridge 1e-3 residual %.3g", resid_ridge);
  CHECK(m2 == 5);
  CHECKF(rc3 == 0, "after dedup: %s", cd_last_error());
  CHECK(rep.max_abs_residual < 1e-10);
}

/* more constraints than the context dim (m > d) cannot all hold */
TEST(singular_too_many) {
  problem p = make_problem(8, 6, 9, 30, 5);
  double *W = malloc(sizeof(double) * p.rows * p.d);
  cd_merge_report rep;
  int rc1 = cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, 0.0, W, &rep);
  char msg[512];
  snprintf(msg, sizeof msg, "%s", cd_last_error());
  int rc2 = cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, 1e-2, W, &rep);
  int fin = 1;
  for (int i = 0; i < p.rows * p.d; i++) fin &= isfinite(W[i]);
  free_problem(&p);
  free(W);
  CHECKF(rc1 == -1 && strstr(msg, "constraint matrix is singular"), "m > d: rc %d, %s", rc1, msg);
  CHECKF(rc2 == 0 && fin, "m > d with ridge: %s", cd_last_error());
  CHECK(rep.rel_residual > 0 && rep.rel_residual < 1);
}

/* too few / degenerate regularisation features make M singular */
TEST(singular_regularisation) {
  problem p = make_problem(8, 10, 3, 30, 9);
  double *W = malloc(sizeof(double) * p.rows * p.d);
  int rc1 = cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, 7, 0.0, W, NULL); /* r < d */
  char msg1[512];
  snprintf(msg1, sizeof msg1, "%s", cd_last_error());
  for (int i = 0; i < p.r; i++) p.Creg[i * p.d + 4] = 0; /* feature 4 never seen */
  int rc2 = cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, 0.0, W, NULL);
  char msg2[512];
  snprintf(msg2, sizeof msg2, "%s", cd_last_error());
  free_problem(&p);
  free(W);
  CHECKF(rc1 == -1 && strstr(msg1, "regularisation"), "r < d: %s", msg1);
  CHECKF(rc2 == -1 && strstr(msg2, "regularisation matrix M") && strstr(msg2, "singular"), "rank-deficient: %s",
         msg2);
}

TEST(bad_inputs) {
  problem p = make_problem(4, 5, 2, 10, 1);
  double *W = malloc(sizeof(double) * p.rows * p.d);
  int n_ok = 0;
  n_ok += cd_merge_solve(NULL, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, 0, W, NULL) == 0;
  n_ok += cd_merge_solve(p.W0, 0, p.d, p.C, p.m, p.V, p.Creg, p.r, 0, W, NULL) == 0;
  n_ok += cd_merge_solve(p.W0, p.rows, p.d, p.C, -1, p.V, p.Creg, p.r, 0, W, NULL) == 0;
  n_ok += cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, -1.0, W, NULL) == 0;
  n_ok += cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, NAN, W, NULL) == 0;
  p.V[3] = NAN;
  n_ok += cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, 0, W, NULL) == 0;
  char msg[512];
  snprintf(msg, sizeof msg, "%s", cd_last_error());
  p.V[3] = 0;
  int good = cd_merge_solve(p.W0, p.rows, p.d, p.C, p.m, p.V, p.Creg, p.r, 0, W, NULL);
  free_problem(&p);
  free(W);
  CHECKF(n_ok == 0, "%d bad calls succeeded", n_ok);
  CHECKF(strstr(msg, "targets V"), "message: %s", msg);
  CHECKF(good == 0, "%s", cd_last_error());
}

TEST(dedup_rows) {
  const int d = 3;
  double X[6 * 3] = {1, 2, 3,  4, 5, 6,  1, 2, 3,  1, 2, 3 + 1e-9,  0, 0, 0,  0, 0, 0};
  double Y[6] = {10, 11, 12, 13, 14, 15};
  double X2[6 * 3];
  memcpy(X2, X, sizeof X);
  int n0 = cd_dedup_rows(X2, 6, d, 0.0); /* exact: drops row 2 and the second zero row */
  int n1 = cd_dedup_rows_with(X, 6, d, Y, 1, 1e-6);
  CHECKF(n0 == 4, "exact dedup kept %d", n0);
  CHECK(X2[2 * d + 2] == 3 + 1e-9 && X2[3 * d] == 0);
  CHECKF(n1 == 3, "tolerant dedup kept %d", n1);
  CHECK(X[0] == 1 && X[d] == 4 && X[2 * d] == 0 && X[2 * d + 2] == 0);
  CHECK(Y[0] == 10 && Y[1] == 11 && Y[2] == 14);
  CHECK(cd_dedup_rows(X, 0, d, 0) == 0);
}

int main(void) {
  RUN(golden_merge);
  RUN(random_optimality);
  RUN(singular_duplicates);
  RUN(singular_too_many);
  RUN(singular_regularisation);
  RUN(bad_inputs);
  RUN(dedup_rows);
  return test_summary();
}
