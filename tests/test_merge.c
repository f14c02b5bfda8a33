/* test_merge.c - cdiff merge: the golden merge through cd_merge_matrix, a
 * merge of two synthetic tiny-sd1 deltas measured on the concepts' prompts
 * and on the regularisation captions, token renumbering, singular constraint
 * sets and --ridge, mismatched base models, and the CLI's argument errors. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lapacke.h>

#include "custom/delta.h"
#include "custom/merge.h"
#include "custom/trainer_run.h"
#include "io/image.h"
#include "diffusion/pipeline.h"
#include "io/tensor_file.h"
#include "delta_fixtures.h"
#include "test.h"

#define REG_FILE "data/reg_captions.txt"

/* ---- helpers ---- */

static double *read_f64(const cd_tensor_file *f, const char *name, int64_t numel) {
  const cd_tensor_info *t = cd_tf_find(f, name);
  if (!t || cd_tensor_numel(t) != numel) return NULL;
  double *x = malloc(sizeof(double) * numel);
  if (cd_tf_read_f64(f, t, x)) {
    free(x);
    return NULL;
  }
  return x;
}

/* A delta as if trained on m: every attn2 K/V = base + scale·N(0,1)/sqrt(d),
 * one modifier token `tok` (NULL: none) with a random embedding row. */
static cd_delta *synth_delta(const cd_sd_model *m, uint64_t seed, const char *tok, double scale) {
  cd_rng r;
  cd_rng_seed(&r, seed);
  cd_delta *d = cd_delta_new();
  for (int i = 0; i < cd_weights_count(m->unet.w); i++) {
    cd_weight *b = cd_weights_at(m->unet.w, i);
    if (!is_kv(b->name)) continue;
    int64_t n = cd_numel(b->ndim, b->ne);
    float *w = cd_malloc(sizeof(float) * n);
    /* row by row as f32 whatever the stored type (a fp16 model keeps data NULL) */
    for (int64_t row = 0; row < b->ne[0]; row++) cd_weight_row_f32(b, row, w + row * b->ne[1]);
    for (int64_t k = 0; k < n; k++) w[k] += (float)(scale * cd_rng_normal(&r) / sqrt((double)b->ne[1]));
    cd_weights_put(d->w, b->name, b->ndim, b->ne, w);
  }
  d->d = m->clip.cfg.width;
  if (tok) {
    d->ntok = 1;
    snprintf(d->tok[0], sizeof d->tok[0], "%s", tok);
    snprintf(d->init[0], sizeof d->init[0], "ktn");
    d->embeds = cd_malloc(sizeof(float) * d->d);
    for (int k = 0; k < d->d; k++) d->embeds[k] = (float)(cd_rng_normal(&r) / sqrt((double)d->d));
  }
  delta_set_base(d, m, "crossattn_kv");
  return d;
}

/* saves a synthetic delta and loads it back (the on-disk path of the CLI) */
static cd_delta *synth_saved(const cd_sd_model *m, uint64_t seed, const char *tok, double scale, const char *sub) {
  cd_delta *d = synth_delta(m, seed, tok, scale), *l = NULL;
  const char *dir = test_tmpdir(sub);
  int rc = cd_delta_save(dir, d);
  cd_delta_free(d);
  if (rc || cd_delta_load(dir, m, &l)) return NULL;
  return l;
}

static char **reg_lines(int count, int *n) {
  char **v = NULL;
  if (cd_merge_read_lines(REG_FILE, count, &v, n)) return NULL;
  return v;
}

/* ‖C (A − B)ᵀ‖_F² and ‖C Bᵀ‖_F² for C [m, d] (double), A, B [rows, d] (float; A NULL = 0) */
static void proj_err(const double *C, int m, const float *A, const float *B, int rows, int d, double *num, double *den) {
  for (int i = 0; i < m; i++)
    for (int o = 0; o < rows; o++) {
      double a = 0, b = 0;
      for (int k = 0; k < d; k++) {
        a += C[(size_t)i * d + k] * (A ? A[(size_t)o * d + k] : 0);
        b += C[(size_t)i * d + k] * B[(size_t)o * d + k];
      }
      *num += (a - b) * (a - b);
      *den += b * b;
    }
}


/* ‖R (W − W0)ᵀ‖_F² for W double [rows, d], W0 float */
static double change2(const double *R, int nr, const double *W, const float *W0, int rows, int d) {
  double s = 0;
  for (int i = 0; i < nr; i++)
    for (int o = 0; o < rows; o++) {
      double a = 0;
      for (int k = 0; k < d; k++) a += R[(size_t)i * d + k] * (W[(size_t)o * d + k] - W0[(size_t)o * d + k]);
      s += a * a;
    }
  return s;
}

/* Optimality through the whole pipeline: for a random Z with Z Cᵀ = 0 (C = the
 * constraint features, so W ± Z still meets every constraint), the caption
 * change of W ± Z must exceed that of W. Returns the smaller relative increase
 * (negative: W is not the minimiser on these captions), or NAN on failure. */
static double feasible_increase(const double *const *F, const int *nf, int nc, const double *R, int nr, const float *Wf,
                                const float *W0, int rows, int d, uint64_t seed) {
  int m = 0;
  for (int c = 0; c < nc; c++) m += nf[c];
  double *C = malloc(sizeof(double) * m * d), *G = malloc(sizeof(double) * m * m), *Y = malloc(sizeof(double) * rows * d);
  double *T = malloc(sizeof(double) * rows * m), *W = malloc(sizeof(double) * rows * d);
  for (int c = 0, off = 0; c < nc; off += nf[c], c++) memcpy(C + (size_t)off * d, F[c], sizeof(double) * nf[c] * d);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < m; j++) {
      double s = 0;
      for (int k = 0; k < d; k++) s += C[i * d + k] * C[j * d + k];
      G[i * m + j] = s;
    }
  cd_rng r;
  cd_rng_seed(&r, seed);
  for (int i = 0; i < rows * d; i++) Y[i] = cd_rng_normal(&r);
  /* T = Y Cᵀ [rows, m]; solve G Xᵀ = Tᵀ; Z = Y − X C */
  for (int o = 0; o < rows; o++)
    for (int i = 0; i < m; i++) {
      double s = 0;
      for (int k = 0; k < d; k++) s += Y[o * d + k] * C[i * d + k];
      T[o * m + i] = s;
    }
  double res = NAN;
  if (LAPACKE_dposv(LAPACK_COL_MAJOR, 'U', m, rows, G, m, T, m) == 0) { /* T is Tᵀ in column-major: [m, rows] */
    for (int o = 0; o < rows; o++)
      for (int k = 0; k < d; k++) {
        double s = 0;
        for (int i = 0; i < m; i++) s += T[o * m + i] * C[i * d + k];
        Y[o * d + k] -= s;
      }
    for (int i = 0; i < rows * d; i++) W[i] = Wf[i];
    double base = change2(R, nr, W, W0, rows, d);
    /* scale Z to 10% of the merged change */
    double z2 = 0;
    for (int i = 0; i < nr; i++)
      for (int o = 0; o < rows; o++) {
        double a = 0;
        for (int k = 0; k < d; k++) a += R[(size_t)i * d + k] * Y[o * d + k];
        z2 += a * a;
      }
    double sc = 0.1 * sqrt(base / z2);
    res = INFINITY;
    for (int sgn = -1; sgn <= 1; sgn += 2) {
      for (int i = 0; i < rows * d; i++) W[i] = Wf[i] + sgn * sc * Y[i];
      res = fmin(res, change2(R, nr, W, W0, rows, d) / base - 1);
    }
  }
  free(C); free(G); free(Y); free(T); free(W);
  return res;
}

/* ---- (1) the golden problem through cd_merge_matrix ---- */
TEST(golden_via_matrix) {
  char path[1024];
  NEED_GOLDEN(path, "merge.safetensors");
  cd_tensor_file *f;
  CHECK_OK(cd_tensor_file_open(path, &f));
  const int rows = 32, d = 16, r = 300, m1 = 6;
  double *W0 = read_f64(f, "W0", rows * d), *W1 = read_f64(f, "W1", rows * d), *W2 = read_f64(f, "W2", rows * d);
  double *C1 = read_f64(f, "C1", m1 * d), *C2 = read_f64(f, "C2", m1 * d), *Creg = read_f64(f, "C_reg", r * d);
  double *Wref = read_f64(f, "W_hat", rows * d);
  cd_tensor_file_close(f);
  double *W = malloc(sizeof(double) * rows * d), *W3 = malloc(sizeof(double) * rows * d);
  int ok = W0 && W1 && W2 && C1 && C2 && Creg && Wref, rc = -1, rc3 = -1, mu = 0, mu3 = 0;
  double e = 1, e3 = 1;
  cd_merge_report rep = {0}, rep3 = {0};
  if (ok) {
    const double *Ws[3] = {W1, W2, W1}, *Cs[3] = {C1, C2, C1};
    int mi[3] = {m1, m1, m1};
    rc = cd_merge_matrix(W0, Ws, 2, rows, d, Cs, mi, Creg, r, 0.0, W, &rep, &mu);
    if (!rc) e = test_rel_err_d(W, Wref, (size_t)rows * d);
    /* concept 1 given twice: its rows are duplicates and must be removed, leaving the same problem */
    const double *Ws3[3] = {W1, W2, W1}, *Cs3[3] = {C1, C2, C1};
    rc3 = cd_merge_matrix(W0, Ws3, 3, rows, d, Cs3, mi, Creg, r, 0.0, W3, &rep3, &mu3);
    if (!rc3) e3 = test_rel_err_d(W3, Wref, (size_t)rows * d);
  }
  free(W0); free(W1); free(W2); free(C1); free(C2); free(Creg); free(Wref); free(W); free(W3);
  CHECKF(ok, "merge.safetensors: missing or mis-shaped tensors");
  CHECKF(rc == 0, "cd_merge_matrix: %s", cd_last_error());
  CHECKF(rc3 == 0, "cd_merge_matrix (duplicated concept): %s", cd_last_error());
  printf("  golden: W_hat rel err %.3g (m=%d), with a duplicated concept %.3g (m=%d), residual %.3g\n", e, mu, e3, mu3,
         rep.rel_residual);
  CHECKF(mu == 12 && mu3 == 12, "constraint rows %d / %d, expected 12", mu, mu3);
  CHECKF(e < 1e-10 && e3 < 1e-10, "W_hat rel err %.3g / %.3g", e, e3);
  CHECK(rep.rel_residual < 1e-13);
}

TEST(features_rows) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  /* rows 1..EOS: "a cat" -> a, cat, EOS; "photo of a cat" -> cat, EOS; "photo of an apple" keeps all */
  const char *p[3] = {"a cat", "photo of a cat", "photo of an apple"};
  double *F = NULL, *G = NULL;
  int rows = 0, per[3] = {0}, grows = 0;
  int rc = cd_merge_features(m, p, 3, &F, &rows, per);
  /* the same prompts one at a time give the same rows (batching does not matter) */
  int rc2 = rc ? -1 : cd_merge_features(m, p + 1, 1, &G, &grows, NULL);
  double e = rc || rc2 ? 1 : test_rel_err_d(G, F + (size_t)3 * 16, (size_t)grows * 16);
  /* and rows equal the encoder output rows 4.. of the padded sequence */
  float *full = malloc(sizeof(float) * 77 * 16);
  int rc3 = cd_encode_prompts(m, p + 1, 1, full);
  double e2 = 0, fmax_row = 1;
  for (int k = 0; !rc3 && !rc && k < 2 * 16; k++) {
    e2 = fmax(e2, fabs(F[3 * 16 + k] - full[4 * 16 + k]));
    fmax_row = fmax(fmax_row, fabs(full[4 * 16 + k]));
  }
  /* with pad 3 each prompt gains its first 3 padding rows, equal to the encoder's rows after
   * EOS ("photo of a cat": EOS at 5, padding 6..8); 100 is cut to the 75 - k rows there are */
  double *P = NULL, *Q = NULL, e3 = 1;
  int prow = 0, pper[3] = {0}, qrow = 0;
  int rc5 = cd_merge_features_pad(m, p, 3, 3, &P, &prow, pper);
  int rc6 = rc5 ? -1 : cd_merge_features_pad(m, p + 1, 1, 100, &Q, &qrow, NULL);
  if (!rc5 && !rc3) {
    e3 = 0;
    for (int k = 0; k < 5 * 16; k++) e3 = fmax(e3, fabs(P[6 * 16 + k] - full[4 * 16 + k]));
  }
  int padok = !rc5 && !rc6 && pper[0] == 6 && pper[1] == 5 && pper[2] == 8 && prow == 19 && qrow == 2 + 71;
  free(P); free(Q);
  char pr[2][512];
  int rc4 = cd_merge_concept_prompts("<new1>", "cat", pr);
  int ok4 = !rc4 && !strcmp(pr[0], "<new1> cat") && !strcmp(pr[1], "photo of a <new1> cat");
  rc4 = cd_merge_concept_prompts("<new2>", "watercolor art", pr);
  ok4 = ok4 && !rc4 && !strcmp(pr[1], "painting in the style of <new2> watercolor art");
  rc4 = cd_merge_concept_prompts(NULL, "dog", pr);
  ok4 = ok4 && !rc4 && !strcmp(pr[0], "dog") && !strcmp(pr[1], "photo of a dog");
  free(F); free(G); free(full);
  cd_sd_free(m);
  CHECKF(rc == 0 && rc2 == 0 && rc3 == 0, "features: %s", cd_last_error());
  CHECKF(per[0] == 3 && per[1] == 2 && per[2] == 5 && rows == 10, "rows per prompt %d %d %d (total %d), expected 3 2 5",
         per[0], per[1], per[2], rows);
  /* Batched (B = 3) and single (B = 1) encodings reduce in different orders
   * (GEMM blocking depends on B * 77 rows; kernels differ between CPUs), so
   * they agree to the float32 error of the encoder, not bit for bit. Per
   * layer of tiny-sd1's text model (width 16, head 8, MLP 32, 77 tokens) an
   * output entry passes through reductions of K = 16 (LN), 16 (qkv), 8
   * (scores), 77 (softmax sum), 77 (p.v), 16 (out), 16 (LN), 16 (fc1), 32
   * (fc2): 274 per layer, 2 layers + the final LN (16) = 564. Worst case
   * for the two runs together: 2 gamma_564 = 6.7e-5 relative to the O(1)
   * LayerNorm outputs, both for the L2 error and for the largest entry (the
   * tolerance is 1.5 times that). A
   * batching bug (rows shifted, padding leaking) moves rows by O(1). */
  double tol = 1.5 * 2 * test_gamma(564);
  CHECKF(e < tol && e2 < tol * fmax_row, "batched vs single rel err %.3g, vs encoder rows %.3g (max |row| %.3g, tol %.3g)", e, e2,
         fmax_row, tol);
  CHECK(ok4);
  CHECKF(padok, "padding rows per prompt %d %d %d (total %d; pad 100: %d), expected 6 5 8 (19; 73): %s", pper[0],
         pper[1], pper[2], prow, qrow, cd_last_error());
  CHECKF(e3 < tol * fmax_row, "padding rows differ from the encoder's rows by %.3g (tol %.3g)", e3, tol * fmax_row);
}

/* ---- (2) two concepts on tiny-sd1: merged outputs on each concept's prompts
 * equal its own delta's; on the captions the merge is the constrained optimum.
 * d1/d2 are consumed. ---- */
static void two_concepts_case(cd_sd_model *m, cd_sd_model *m2, cd_delta *d1, cd_delta *d2, int require_close, int pad) {
  int nreg = 0;
  char **reg = reg_lines(CD_MERGE_REG_COUNT, &nreg);
  cd_delta *mg = NULL;
  cd_delta *ds[2] = {d1, d2};
  const char *cats[2] = {"cat", "dog"};
  cd_merge_info info = {0};
  int rc = -1, rca = -1, rcf = -1, nf[2] = {0}, nr = 0;
  double *F[2] = {0}, *R = NULL;
  if (reg && d1 && d2) {
    cd_merge_opts o = {.reg = (const char *const *)reg, .nreg = nreg, .ridge = 0, .pad_rows = pad};
    rc = cd_merge_deltas(m, ds, cats, 2, &o, &mg, &info);
  }
  /* the merged model: a fresh tiny-sd1 with the merged delta applied */
  if (!rc) rca = cd_delta_apply(m2, mg);
  if (!rca) {
    const char *p1[2] = {"<new1> cat", "photo of a <new1> cat"}, *p2[2] = {"<new2> dog", "photo of a <new2> dog"};
    rcf = cd_merge_features_pad(m2, p1, 2, pad, &F[0], &nf[0], NULL) ||
          cd_merge_features_pad(m2, p2, 2, pad, &F[1], &nf[1], NULL) ||
          cd_merge_features_pad(m2, (const char *const *)reg, nreg, pad, &R, &nr, NULL);
  }
  double worst[2] = {0, 0}, reg_num[4] = {0}, reg_den = 0, min_inc = INFINITY;
  int nkv = 0;
  for (int i = 0; !rcf && i < cd_weights_count(m2->unet_orig); i++) {
    cd_weight *b = cd_weights_at(m2->unet_orig, i);
    if (!is_kv(b->name)) continue;
    cd_weight *w = cd_weights_get(m2->unet.w, b->name);
    cd_weight *w1 = cd_weights_get(d1->w, b->name), *w2 = cd_weights_get(d2->w, b->name);
    int rows = (int)b->ne[0], d = (int)b->ne[1];
    nkv++;
    /* on concept i's prompts the merged outputs are concept i's own */
    for (int c = 0; c < 2; c++) {
      double num = 0, den = 0;
      proj_err(F[c], nf[c], w->data, (c ? w2 : w1)->data, rows, d, &num, &den);
      worst[c] = fmax(worst[c], sqrt(num / den));
    }
    /* on the captions: distance from the base outputs of merged, naive sum, each single delta */
    int64_t n = (int64_t)rows * d;
    float *naive = malloc(sizeof(float) * n);
    for (int64_t k = 0; k < n; k++) naive[k] = w1->data[k] + w2->data[k] - b->data[k];
    const float *cand[4] = {w->data, naive, w1->data, w2->data};
    for (int c = 0; c < 4; c++) {
      double num = 0, den = 0;
      proj_err(R, nr, cand[c], b->data, rows, d, &num, &den);
      reg_num[c] += num;
      if (!c) reg_den += den;
    }
    free(naive);
    double inc = feasible_increase((const double *const *)F, nf, 2, R, nr, w->data, b->data, rows, d, 100 + nkv);
    min_inc = isnan(inc) ? -1 : fmin(min_inc, inc);
  }
  int tok_ok = mg && mg->ntok == 2 && !strcmp(mg->tok[0], "<new1>") && !strcmp(mg->tok[1], "<new2>") &&
               mg->d == d1->d && !memcmp(mg->embeds, d1->embeds, sizeof(float) * mg->d) &&
               !memcmp(mg->embeds + mg->d, d2->embeds, sizeof(float) * mg->d);
  int nlayers = info.nlayers, mtot = info.m_total;
  double res = info.max_rel_residual, res_st = info.max_rel_residual_stored;
  for (int c = 0; c < 2; c++) free(F[c]);
  free(R);
  cd_merge_info_free(&info);
  cd_merge_free_lines(reg, nreg);
  cd_delta_free(d1); cd_delta_free(d2); cd_delta_free(mg);
  cd_sd_free(m); cd_sd_free(m2);
  CHECKF(reg && nreg == CD_MERGE_REG_COUNT, "cannot read %s (run the tests from the repository root)", REG_FILE);
  CHECKF(rc == 0, "merge: %s", cd_last_error());
  CHECKF(rca == 0 && rcf == 0, "apply/encode merged: %s", cd_last_error());
  double rn = sqrt(reg_num[0] / reg_den), rs = sqrt(reg_num[1] / reg_den);
  printf("  %d K/V matrices, %d constraint rows, residual float64 %.2e, as stored (float32) %.2e\n", nlayers, mtot,
         res, res_st);
  printf("  concept prompts, merged vs own delta: cat %.2e, dog %.2e\n", worst[0], worst[1]);
  printf("  captions, rel change from base: merged %.3e, naive sum %.3e, delta 1 %.3e, delta 2 %.3e\n", rn, rs,
         sqrt(reg_num[2] / reg_den), sqrt(reg_num[3] / reg_den));
  CHECKF(nkv == nlayers && nkv > 0, "%d K/V weights in the merged model, %d merged", nkv, nlayers);
  CHECKF(mtot == 12 + 4 * pad, "constraint rows %d, expected 2 x (3 + 3) + 4 x %d padding rows", mtot, pad);
  CHECKF(res < 1e-12, "float64 residual %.3g", res);
  CHECKF(worst[0] <= fmax(1e-6, 10 * res_st) && worst[1] <= fmax(1e-6, 10 * res_st),
         "merged outputs on the concept prompts differ from the deltas' by %.3g / %.3g (reported %.3g)", worst[0],
         worst[1], res_st);
  printf("  captions, change of merged ± a constraint-preserving perturbation (10%%): at least +%.3g%%\n", 100 * min_inc);
  /* With d = 16 and 12 constraint rows the tiny model leaves 4 free directions, and random (not concept-local)
   * perturbations: the merged weights may well move the caption outputs more than the naive sum (which breaks
   * the constraints). What must hold is that no other weight meeting the constraints does better. */
  CHECKF(min_inc > 1e-4, "merged is not the constrained minimiser on the captions (increase %.3g)", min_inc);
  CHECK(tok_ok);
  /* with room to spare (context 64, 12 constraints) the merge keeps the captions
   * closer to the base than adding the two deltas' changes does */
  if (require_close) CHECKF(rn < rs, "captions: merged moved %.3g from base, the naive sum %.3g", rn, rs);
}

TEST(two_concepts) {
  cd_sd_model *m = load_tiny("tiny-sd1"), *m2 = load_tiny("tiny-sd1");
  if (!m || !m2) { cd_sd_free(m); cd_sd_free(m2); TINY_MISSING(); }
  two_concepts_case(m, m2, synth_saved(m, 11, "<new1>", 0.3, "c1"), synth_saved(m, 22, "<new2>", 0.3, "c2"), 0, 0);
}

/* the same with deltas that cdiff train produced for two concepts trained apart */
static cd_delta *train_concept(const char *model, const char *vocab, const char *sub, const char *tok, const char *prompt,
                               uint64_t seed, const cd_sd_model *base) {
  char img[600], out[600], cmd[1400];
  snprintf(img, sizeof img, "%s/img", test_tmpdir(sub));
  snprintf(out, sizeof out, "%s/delta", test_tmpdir(sub));
  snprintf(cmd, sizeof cmd, "mkdir -p %s", img);
  if (system(cmd)) return NULL;
  for (int i = 0; i < 3; i++) { /* three flat-coloured 64x64 photos */
    cd_image im = {.w = 64, .h = 64, .c = 3, .px = malloc(64 * 64 * 3)};
    for (int k = 0; k < 64 * 64 * 3; k++) im.px[k] = (uint8_t)((seed * 37 + i * 50 + (k % 3) * 80 + (k / 192) * 2) & 255);
    char p[700];
    snprintf(p, sizeof p, "%s/%d.png", img, i);
    int rc = cd_image_save_png(p, &im, NULL, 0);
    cd_image_free(&im);
    if (rc) return NULL;
  }
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = model;
  o.vocab = vocab;
  o.images = img;
  o.prompt = prompt;
  o.class_prompt = "thing";
  o.prior = 0;
  o.modifier_tokens = tok;
  o.steps = TEST_SANITIZED ? 4 : 20; /* the sanitized pass: the same training and merge code, shorter */
  o.lr = 1e-3f;
  o.scale_lr = 0;
  o.res = 64;
  o.seed = seed;
  o.out = out;
  o.quiet = 1;
  cd_delta *d = NULL;
  if (cd_train_run(&o) || cd_delta_load(out, base, &d)) return NULL;
  return d;
}

/* <new1> cat and <new2> dog trained apart on model (sub-folders <pre>1, <pre>2), then two_concepts_case */
static void two_trained_case(const char *model, const char *vocab, const char *pre, cd_sd_model *m, cd_sd_model *m2,
                             int require_close) {
  char s1[32], s2[32];
  snprintf(s1, sizeof s1, "%s1", pre);
  snprintf(s2, sizeof s2, "%s2", pre);
  cd_delta *d1 = train_concept(model, vocab, s1, "<new1>", "photo of a <new1> cat", 1, m);
  cd_delta *d2 = train_concept(model, vocab, s2, "<new2>", "photo of a <new2> dog", 2, m);
  if (!d1 || !d2) {
    cd_delta_free(d1); cd_delta_free(d2); cd_sd_free(m); cd_sd_free(m2);
    FAILF("training the concepts failed: %s", cd_last_error());
  }
  two_concepts_case(m, m2, d1, d2, require_close, 0);
}

TEST(two_trained_concepts) {
  cd_sd_model *m = load_tiny("tiny-sd1"), *m2 = load_tiny("tiny-sd1");
  if (!m || !m2) { cd_sd_free(m); cd_sd_free(m2); TINY_MISSING(); }
  char mp[1024];
  test_golden_path(mp, sizeof mp, "tiny-sd1");
  /* context 16 with 12 constraint rows leaves 4 free directions: no closeness claim */
  two_trained_case(mp, NULL, "t", m, m2, 0);
}

/* A model with room for the constraints: gen_sd_random --tiny has context and
 * text width 64 (the golden tiny models have 16), loaded twice into *m, *m2
 * (model: its folder). 1 skip (no vocabulary), -1 fail, with test_msg set. */
static int load_ctx64(const char *sub, const char *gen_flags, char *vocab, size_t vcap, char *model, size_t mcap,
                      cd_sd_model **m, cd_sd_model **m2) {
  char cmd[1400];
  *m = *m2 = NULL;
  int g = test_golden_need(vocab, vcap, "bpe_simple_vocab_16e6.txt.gz");
  if (g) return g;
  const char *gen = test_build_path("tools/gen_sd_random");
  snprintf(model, mcap, "%s/model", test_tmpdir(sub));
  snprintf(cmd, sizeof cmd, "'%s' --tiny %s --out %s >/dev/null 2>&1", gen, gen_flags, model);
  if (access(gen, X_OK) || system(cmd)) {
    snprintf(test_msg, sizeof test_msg, "%s was not built or failed", gen);
    return -1;
  }
  cd_load_opts lo = {.no_vae = 1, .vocab = vocab};
  if (cd_sd_load(model, &lo, m) || cd_sd_load(model, &lo, m2)) {
    snprintf(test_msg, sizeof test_msg, "load %s: %s", model, cd_last_error());
    cd_sd_free(*m);
    *m = NULL;
    return -1;
  }
  return 0;
}

/* Two concepts trained apart on the context-64 model, merged: concept prompts
 * exact, captions closer to the base than the naive sum. */
TEST(two_trained_concepts_ctx64) {
  char vocab[1024], model[600];
  cd_sd_model *m, *m2;
  GOLDEN_STATUS(load_ctx64("g64", "--seed 5", vocab, sizeof vocab, model, sizeof model, &m, &m2));
  two_trained_case(model, vocab, "g", m, m2, 1);
}

/* --pad-rows: the merged layer also answers as each concept's own on the first
 * padding rows of its prompts (the rows the UNet attends to after the end
 * token), and is still the constrained minimiser on the captions (whose
 * features then hold their padding rows too). Context 64: 12 + 8 rows fit.
 * The generated model keeps fp16 weights, as checkpoints do: synth_delta
 * reads them row by row as f32. */
TEST(pad_rows_ctx64) {
  char vocab[1024], model[600];
  cd_sd_model *m, *m2;
  GOLDEN_STATUS(load_ctx64("p64", "--seed 6", vocab, sizeof vocab, model, sizeof model, &m, &m2));
  two_concepts_case(m, m2, synth_saved(m, 11, "<new1>", 0.3, "p1"), synth_saved(m, 22, "<new2>", 0.3, "p2"), 0, 2);
}

/* ---- (3) renumbering: both deltas use <new1> ---- */
TEST(renumbering) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  int nreg = 0;
  char **reg = reg_lines(100, &nreg);
  cd_delta *d1 = synth_delta(m, 5, "<new1>", 0.2), *d2 = synth_delta(m, 6, "<new1>", 0.2), *mg = NULL;
  cd_delta *ds[2] = {d1, d2};
  const char *cats[2] = {"cat", "wooden chair"};
  char *logbuf = NULL;
  size_t loglen = 0;
  FILE *log = open_memstream(&logbuf, &loglen);
  cd_merge_opts o = {.reg = (const char *const *)reg, .nreg = nreg, .log = log};
  int rc = reg ? cd_merge_deltas(m, ds, cats, 2, &o, &mg, NULL) : -1;
  fclose(log);
  /* the merged delta is a normal one: save, load, apply on a fresh model */
  cd_sd_model *m2 = load_tiny("tiny-sd1");
  const char *dir = test_tmpdir("renum");
  int rcs = rc || !m2 ? -1 : cd_delta_save(dir, mg) || cd_delta_apply_path(m2, dir);
  int id1 = m2 && m2->tok ? cd_tokenizer_lookup(m2->tok, "<new1>") : -1, id2 = m2 && m2->tok ? cd_tokenizer_lookup(m2->tok, "<new2>") : -1;
  int ok = mg && mg->ntok == 2 && !strcmp(mg->tok[0], "<new1>") && !strcmp(mg->tok[1], "<new2>") &&
           !memcmp(mg->embeds, d1->embeds, sizeof(float) * 16) && !memcmp(mg->embeds + 16, d2->embeds, sizeof(float) * 16) &&
           !strcmp(mg->init[1], "ktn");
  int table = logbuf && strstr(logbuf, "concept 1 (cat): <new1> -> <new1>") &&
              strstr(logbuf, "concept 2 (wooden chair): <new1> -> <new2>") && strstr(logbuf, "photo of a <new2> wooden chair");
  if (logbuf && !table) printf("%s", logbuf);
  free(logbuf);
  cd_merge_free_lines(reg, nreg);
  cd_delta_free(d1); cd_delta_free(d2); cd_delta_free(mg);
  cd_sd_free(m); cd_sd_free(m2);
  CHECKF(rc == 0, "merge: %s", cd_last_error());
  CHECKF(rcs == 0, "save/apply merged: %s", cd_last_error());
  CHECK(ok);
  CHECKF(table, "token table / prompts missing from the merge log");
  CHECKF(id1 == 49408 && id2 == 49409, "merged tokens got ids %d, %d", id1, id2);
}

/* ---- (4) more constraint rows than the context dim (16): singular without a ridge ---- */
TEST(singular_and_ridge) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  int nreg = 0;
  char **reg = reg_lines(CD_MERGE_REG_COUNT, &nreg);
  cd_delta *d[3] = {synth_delta(m, 7, "<new1>", 0.2), synth_delta(m, 8, "<new1>", 0.2), synth_delta(m, 9, "<new1>", 0.2)};
  const char *cats[3] = {"cat", "dog", "teddy bear"}; /* 6 + 6 + 8 = 20 rows > 16 */
  cd_delta *mg = NULL;
  cd_merge_opts o = {.reg = (const char *const *)reg, .nreg = nreg};
  int rc = reg ? cd_merge_deltas(m, d, cats, 3, &o, &mg, NULL) : 0;
  char err[1024];
  snprintf(err, sizeof err, "%s", cd_last_error());
  cd_sd_free(m);
  /* the same with a ridge on a fresh model */
  m = load_tiny("tiny-sd1");
  cd_merge_info info = {0};
  o.ridge = 1e-3;
  int rc2 = m && reg ? cd_merge_deltas(m, d, cats, 3, &o, &mg, &info) : -1;
  int finite = 1;
  for (int i = 0; mg && i < cd_weights_count(mg->w); i++) {
    cd_weight *x = cd_weights_at(mg->w, i);
    for (int64_t k = 0; k < cd_numel(x->ndim, x->ne); k++) finite &= isfinite(x->data[k]) != 0;
  }
  double res = info.max_rel_residual;
  int mtot = info.m_total;
  cd_merge_info_free(&info);
  cd_merge_free_lines(reg, nreg);
  for (int i = 0; i < 3; i++) cd_delta_free(d[i]);
  cd_delta_free(mg);
  cd_sd_free(m);
  printf("  without ridge: %s\n  ridge 1e-3: %d rows, rel residual %.3e\n", err, mtot, res);
  CHECKF(rc != 0, "a 20-row constraint set in a 16-dim context was accepted");
  CHECKF(strstr(err, "singular") && strstr(err, "--ridge") && strstr(err, "attn2"), "unclear error: %s", err);
  CHECKF(rc2 == 0, "merge with --ridge: %s", cd_last_error());
  CHECKF(mtot == 20, "constraint rows %d, expected 20", mtot);
  CHECKF(finite && res > 1e-6 && res < 0.5, "ridge result: finite %d, residual %.3g", finite, res);
}

/* merges d (categories cats) on a fresh tiny-sd1 with ridge; the stderr it wrote into err; 0 ok */
static int merge_stderr(cd_delta *const *d, const char *const *cats, int n, double ridge, char *err, size_t cap) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  int nreg = 0;
  char **reg = reg_lines(CD_MERGE_REG_COUNT, &nreg);
  cd_merge_opts o = {.reg = (const char *const *)reg, .nreg = nreg, .ridge = ridge};
  cd_delta *mg = NULL;
  FILE *tf = tmpfile();
  int rc = -1;
  if (m && reg && tf) {
    fflush(stderr);
    int saved = dup(2);
    dup2(fileno(tf), 2);
    rc = cd_merge_deltas(m, (cd_delta **)d, (const char **)cats, n, &o, &mg, NULL);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tf);
    size_t k = fread(err, 1, cap - 1, tf);
    err[k] = 0;
  }
  if (tf) fclose(tf);
  cd_delta_free(mg);
  cd_merge_free_lines(reg, nreg);
  cd_sd_free(m);
  return rc;
}

/* Two concepts of one category whose token embeddings nearly coincide give
 * nearly equal constraint rows with different targets: the exact solve meets
 * them with huge weights (the world model's three-concept merge, two "toy"
 * concepts, drew noise). The merge warns and names --ridge; with the ridge
 * it does not. */
TEST(near_dependent_warns) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  cd_delta *d[2] = {synth_delta(m, 7, "<new1>", 0.2), synth_delta(m, 8, "<new1>", 0.2)};
  cd_sd_free(m);
  cd_rng r;
  cd_rng_seed(&r, 3);
  for (int k = 0; k < d[0]->d; k++) d[1]->embeds[k] = d[0]->embeds[k] + (float)(1e-4 * cd_rng_normal(&r));
  const char *cats[2] = {"cat", "cat"};
  char e0[4096], e1[4096];
  int rc0 = merge_stderr(d, cats, 2, 0, e0, sizeof e0), rc1 = merge_stderr(d, cats, 2, 0.01, e1, sizeof e1);
  for (int i = 0; i < 2; i++) cd_delta_free(d[i]);
  CHECKF(rc0 == 0 && rc1 == 0, "merge failed: %s", cd_last_error());
  CHECKF(strstr(e0, "ill-conditioned") && strstr(e0, "--ridge"), "no warning; stderr: %s", e0);
  CHECKF(!strstr(e1, "ill-conditioned"), "warned with --ridge: %s", e1);
}

/* ---- (4b) one delta of two jointly trained concepts: a category per token ---- */

/* the worst relative error of mg's K/V against d's on prompts p[0..1] of model m2 (mg applied) */
static double prompt_err(cd_sd_model *m2, const cd_delta *d, const char *p0, const char *p1) {
  const char *p[2] = {p0, p1};
  double *F = NULL, worst = 0;
  int nf = 0;
  if (cd_merge_features_pad(m2, p, 2, 0, &F, &nf, NULL)) return INFINITY;
  for (int i = 0; i < cd_weights_count(m2->unet_orig); i++) {
    cd_weight *b = cd_weights_at(m2->unet_orig, i), *x = is_kv(b->name) ? cd_weights_get(d->w, b->name) : NULL;
    if (!x) continue;
    double num = 0, den = 0;
    proj_err(F, nf, cd_weights_get(m2->unet.w, b->name)->data, x->data, (int)b->ne[0], (int)b->ne[1], &num, &den);
    worst = fmax(worst, sqrt(num / den));
  }
  free(F);
  return worst;
}

/* Merged alone with "cat,dog", a two-token delta keeps its outputs on both
 * tokens' prompts (12 constraint rows); with one category only the first
 * token's (6 rows, and a warning); a count that is not the token count is an
 * error naming it. */
TEST(joint_delta_categories) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  cd_delta *d = synth_delta(m, 31, "<new1>", 0.3);
  d->embeds = realloc(d->embeds, sizeof(float) * 2 * d->d);
  cd_rng r;
  cd_rng_seed(&r, 32);
  for (int k = 0; k < d->d; k++) d->embeds[d->d + k] = (float)(cd_rng_normal(&r) / sqrt((double)d->d));
  d->ntok = 2;
  snprintf(d->tok[1], sizeof d->tok[1], "<new2>");
  snprintf(d->init[1], sizeof d->init[1], "ktn");
  int nreg = 0;
  char **reg = reg_lines(CD_MERGE_REG_COUNT, &nreg);
  double err[2][2] = {{INFINITY, INFINITY}, {INFINITY, INFINITY}};
  int mtot[2] = {0, 0}, rc[2] = {-1, -1};
  const char *cats[2] = {"cat, dog", "cat"};
  for (int c = 0; c < 2 && reg; c++) {
    cd_sd_model *mm = c ? load_tiny("tiny-sd1") : m, *m2 = load_tiny("tiny-sd1");
    cd_delta *mg = NULL;
    cd_merge_info info = {0};
    cd_merge_opts o = {.reg = (const char *const *)reg, .nreg = nreg};
    rc[c] = mm && m2 ? cd_merge_deltas(mm, &d, &cats[c], 1, &o, &mg, &info) : -1;
    if (!rc[c] && !cd_delta_apply(m2, mg)) {
      err[c][0] = prompt_err(m2, d, "<new1> cat", "photo of a <new1> cat");
      err[c][1] = prompt_err(m2, d, "<new2> dog", "photo of a <new2> dog");
    }
    mtot[c] = info.m_total;
    cd_merge_info_free(&info);
    cd_delta_free(mg);
    cd_sd_free(m2);
    if (c) cd_sd_free(mm);
  }
  cd_sd_free(m);
  char e3[4096] = "", e1[4096] = "";
  const char *three = "cat,dog,bird", *empty = "cat,";
  int rc3 = merge_stderr(&d, &three, 1, 0, e3, sizeof e3);
  snprintf(e3, sizeof e3, "%s", cd_last_error());
  int rce = merge_stderr(&d, &empty, 1, 0, e1, sizeof e1);
  snprintf(e1, sizeof e1, "%s", cd_last_error());
  cd_merge_free_lines(reg, nreg);
  cd_delta_free(d);
  printf("  \"cat,dog\": %d rows, errors %.2e / %.2e; \"cat\": %d rows, errors %.2e / %.2e\n", mtot[0], err[0][0],
         err[0][1], mtot[1], err[1][0], err[1][1]);
  CHECKF(rc[0] == 0 && rc[1] == 0, "merge: %s", cd_last_error());
  CHECKF(mtot[0] == 12 && mtot[1] == 6, "constraint rows %d and %d, expected 12 and 6", mtot[0], mtot[1]);
  CHECKF(err[0][0] < 1e-5 && err[0][1] < 1e-5, "per-token categories: outputs off by %.3g / %.3g", err[0][0], err[0][1]);
  /* one category: the first token is kept, the second is not constrained at all */
  CHECKF(err[1][0] < 1e-5 && err[1][1] > 1e-3, "one category: outputs off by %.3g / %.3g", err[1][0], err[1][1]);
  CHECKF(rc3 != 0 && strstr(e3, "3 categories") && strstr(e3, "2 modifier token"), "unclear error: %s", e3);
  CHECKF(rce != 0 && strstr(e1, "empty category"), "unclear error: %s", e1);
}

/* ---- (5) a tiny-sd2 delta on tiny-sd1 ---- */
TEST(mismatched_base) {
  cd_sd_model *m1 = load_tiny("tiny-sd1"), *m2 = load_tiny("tiny-sd2");
  if (!m1 || !m2) { cd_sd_free(m1); cd_sd_free(m2); TINY_MISSING(); }
  int nreg = 0;
  char **reg = reg_lines(50, &nreg);
  cd_delta *a = synth_delta(m1, 1, "<new1>", 0.2), *b = synth_saved(m2, 2, "<new1>", 0.2, "sd2"), *mg = NULL;
  cd_delta *ds[2] = {a, b};
  const char *cats[2] = {"cat", "dog"};
  cd_merge_opts o = {.reg = (const char *const *)reg, .nreg = nreg};
  int rc = b && reg ? cd_merge_deltas(m1, ds, cats, 2, &o, &mg, NULL) : 0;
  char err[1024];
  snprintf(err, sizeof err, "%s", cd_last_error());
  /* without the family field the shapes (context 24 vs 16) still give it away */
  int rc2 = 0;
  char err2[1024] = "";
  if (b) {
    cd_delta *c = synth_delta(m2, 3, NULL, 0.2), *ds2[2] = {a, c};
    c->family = 0;
    rc2 = cd_merge_deltas(m1, ds2, cats, 2, &o, &mg, NULL);
    snprintf(err2, sizeof err2, "%s", cd_last_error());
    cd_delta_free(c);
  }
  cd_merge_free_lines(reg, nreg);
  cd_delta_free(a); cd_delta_free(b); cd_delta_free(mg);
  cd_sd_free(m1); cd_sd_free(m2);
  printf("  %s\n  %s\n", err, err2);
  CHECKF(rc != 0 && strstr(err, "concept 2") && strstr(err, "SD 2"), "unclear or no error: %s", err);
  CHECKF(rc2 != 0 && strstr(err2, "concept 2") && strstr(err2, "shape"), "unclear or no error: %s", err2);
}

/* ---- the binary: argument errors name the flag; a real run with the default captions ---- */
TEST(cli) {
  const char *bin = test_cdiff_bin();
  char model[1024], cmd[4096], out[16384];
  if (access(bin, X_OK)) FAILF("%s not built", bin);
  NEED_GOLDEN(model, "tiny-sd1");
  cd_sd_model *m = load_tiny("tiny-sd1");
  CHECKF(m != NULL, "load tiny-sd1: %s", cd_last_error());
  cd_delta *d1 = synth_delta(m, 31, "<new1>", 0.3), *d2 = synth_delta(m, 32, "<new1>", 0.3);
  const char *p1 = test_tmpdir("cli1"), *p2 = test_tmpdir("cli2"), *po = test_tmpdir("cli_out"), *pc = test_tmpdir("cli_c");
  int rs = cd_delta_save(p1, d1) || cd_delta_save(p2, d2);
  cd_delta_free(d1); cd_delta_free(d2);
  cd_sd_free(m);
  CHECK_OK(rs);
  static const struct { const char *args, *want; } bad[] = {
      {"merge --delta %s:cat --out %s", "--model"},
      {"merge --model %s --delta %s --out %s", "--delta"},
      {"merge --model %s --delta %s:cat --out %s --reg-count 0", "--reg-count"},
      {"compress --model %s --delta %s --ratio 1.5 --out %s", "--ratio"},
      {"compress --model %s --delta %s --ratio 0 --out %s", "--ratio"},
      {"compress --delta %s --out %s", "--model"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char a[2048];
    if (strstr(bad[i].args, "--model %s")) snprintf(a, sizeof a, bad[i].args, model, p1, po);
    else snprintf(a, sizeof a, bad[i].args, p1, po);
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin, a);
    int rc = test_run_cmd(cmd, out, sizeof out);
    CHECKF(rc != 0 && strstr(out, bad[i].want), "'%s' -> exit %d, output without %s:\n%s", a, rc, bad[i].want, out);
  }
  /* a full merge with the default caption file found next to the binary */
  snprintf(cmd, sizeof cmd, "env -u CDIFF_DATA %s merge --model %s --delta %s:cat --delta %s:dog --out %s 2>&1", bin,
           model, p1, p2, po);
  int rc = test_run_cmd(cmd, out, sizeof out);
  CHECKF(rc == 0, "cdiff merge exit %d:\n%s", rc, out);
  CHECKF(strstr(out, "<new1> -> <new2>") && strstr(out, "rel residual") && strstr(out, "200 captions"), "merge output:\n%s", out);
  printf("%.900s...\n", out);
  snprintf(cmd, sizeof cmd, "%s compress --model %s --delta %s --ratio 0.5 --out %s 2>&1", bin, model, po, pc);
  rc = test_run_cmd(cmd, out, sizeof out);
  CHECKF(rc == 0 && strstr(out, "bytes"), "cdiff compress exit %d:\n%s", rc, out);
  const char *last = strstr(out, "ratio 0.5");
  printf("%.600s\n", last ? last : out);
}

int main(void) {
  RUN(golden_via_matrix);
  RUN(features_rows);
  RUN(two_concepts);
  RUN(two_trained_concepts);
  RUN(two_trained_concepts_ctx64);
  RUN(pad_rows_ctx64);
  RUN(renumbering);
  RUN(singular_and_ridge);
  RUN(near_dependent_warns);
  RUN(joint_delta_categories);
  RUN(mismatched_base);
  RUN(cli);
  test_tmp_cleanup();
  return test_summary();
}
