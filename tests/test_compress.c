/* test_compress.c - cdiff compress: SVD factors of ΔW = W_ft − W0 at several
 * ratios, read back through cd_delta_load + cd_delta_resolve; file sizes; a
 * compressed delta applied to a model and merged with another. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "custom/compress.h"
#include "custom/delta.h"
#include "custom/merge.h"
#include "delta_fixtures.h"
#include "test.h"

/* K/V = base + Σ_j s_j a_j b_jᵀ (4 terms, s = 4, 3, 2, 1 relative) + noise; to_out biases
 * perturbed too (vectors stay whole); one token. */
static cd_delta *synth_lowrank(const cd_sd_model *m, uint64_t seed, double noise) {
  cd_rng r;
  cd_rng_seed(&r, seed);
  cd_delta *d = cd_delta_new();
  for (int i = 0; i < cd_weights_count(m->unet.w); i++) {
    cd_weight *b = cd_weights_at(m->unet.w, i);
    int64_t n = cd_numel(b->ndim, b->ne);
    if (is_kv(b->name)) {
      int rows = (int)b->ne[0], cols = (int)b->ne[1];
      float *w = cd_malloc(sizeof(float) * n);
      memcpy(w, b->data, sizeof(float) * n);
      for (int j = 0; j < 4; j++) {
        double *u = malloc(sizeof(double) * rows), *v = malloc(sizeof(double) * cols), s = (4 - j) * 0.1;
        for (int k = 0; k < rows; k++) u[k] = cd_rng_normal(&r) / sqrt((double)rows);
        for (int k = 0; k < cols; k++) v[k] = cd_rng_normal(&r) / sqrt((double)cols);
        for (int o = 0; o < rows; o++)
          for (int k = 0; k < cols; k++) w[(size_t)o * cols + k] += (float)(s * u[o] * v[k]);
        free(u);
        free(v);
      }
      for (int64_t k = 0; k < n; k++) w[k] += (float)(noise * cd_rng_normal(&r) / sqrt((double)cols));
      cd_weights_put(d->w, b->name, b->ndim, b->ne, w);
    } else if (strstr(b->name, ".attn2.to_out.0.bias")) {
      float *w = cd_malloc(sizeof(float) * n);
      for (int64_t k = 0; k < n; k++) w[k] = b->data[k] + 0.01f * (float)cd_rng_normal(&r);
      cd_weights_put(d->w, b->name, b->ndim, b->ne, w);
    }
  }
  d->d = m->clip.cfg.width;
  d->ntok = 1;
  snprintf(d->tok[0], sizeof d->tok[0], "<new1>");
  d->embeds = cd_malloc(sizeof(float) * d->d);
  for (int k = 0; k < d->d; k++) d->embeds[k] = (float)(cd_rng_normal(&r) / sqrt((double)d->d));
  delta_set_base(d, m, "crossattn");
  return d;
}

static long file_size(const char *dir) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, CD_DELTA_FILE);
  struct stat st;
  return stat(p, &st) ? -1 : (long)st.st_size;
}

/* ‖W_rec − W_ft‖ / ‖W_ft − W0‖ over every weight of the reference delta */
static double delta_err(const cd_delta *ref, const cd_delta *got, const cd_sd_model *m, int *missing) {
  double num = 0, den = 0;
  *missing = 0;
  for (int i = 0; i < cd_weights_count(ref->w); i++) {
    cd_weight *x = cd_weights_at(ref->w, i), *y = cd_weights_get(got->w, x->name), *b = cd_weights_get(m->unet.w, x->name);
    if (!y || !b) {
      (*missing)++;
      continue;
    }
    for (int64_t k = 0; k < cd_numel(x->ndim, x->ne); k++) {
      double e = (double)y->data[k] - x->data[k], dd = (double)x->data[k] - b->data[k];
      num += e * e;
      den += dd * dd;
    }
  }
  return sqrt(num / den);
}

/* Float32 error model (test.h) of a compressed delta at full rank k (16 here):
 * the factors U s and V^T are rounded once each from double (2 u per product
 * term, <= 2 u sqrt(k) ||dW|| for the sum, as ||U s||_F ||V^T||_F = sqrt(k)
 * ||dW|| at most); rebuilding W0 + (U s) V^T in float32 adds a sum of k + 1
 * terms (gamma_{k+1} sqrt(k) ||dW|| + u ||W||) and dW = W_ft - W0 was itself
 * rounded (u ||W||). Relative to ||dW||: rank_tol(k) + 2 u ||W|| / ||dW||. */
#define FULL_RANK 16
static double rank_tol(int k) { return (2 * TEST_U32 + test_gamma(k + 1)) * sqrt((double)k); }
/* ||W_ft|| / ||W_ft - W0|| over the delta's weights */
static double weight_to_delta(const cd_delta *d, const cd_sd_model *m) {
  double w = 0, dd = 0;
  for (int i = 0; i < cd_weights_count(d->w); i++) {
    cd_weight *x = cd_weights_at(d->w, i), *b = cd_weights_get(m->unet.w, x->name);
    for (int64_t k = 0; b && k < cd_numel(x->ndim, x->ne); k++) {
      w += (double)x->data[k] * x->data[k];
      dd += ((double)x->data[k] - b->data[k]) * ((double)x->data[k] - b->data[k]);
    }
  }
  return sqrt(w / dd);
}

TEST(ratios) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  cd_delta *d = synth_lowrank(m, 3, 1e-3);
  const char *full_dir = test_tmpdir("full");
  CHECK_OK(cd_delta_save(full_dir, d));
  long full_size = file_size(full_dir);
  static const double ratios[4] = {0.3, 0.6, 0.9, 1.0};
  double err[4], lerr[4];
  long size[4];
  int rank0[4], ok = 1;
  for (int t = 0; t < 4 && ok; t++) {
    cd_delta *c = NULL, *l = NULL;
    cd_compress_layer *L = NULL;
    int nl = 0, miss = 0;
    const char *dir = test_tmpdir(t == 0 ? "r0" : t == 1 ? "r1" : t == 2 ? "r2" : "r3");
    int rc = cd_delta_compress(d, m, ratios[t], 0, &c, &L, &nl);
    rc = rc || cd_delta_save(dir, c) || cd_delta_load(dir, m, &l);
    int lr = l && l->lowrank == 1 && fabs(l->ratio - ratios[t]) < 1e-9;
    rc = rc || cd_delta_resolve(l, m);
    if (rc) {
      ok = 0;
    } else {
      err[t] = delta_err(d, l, m, &miss);
      size[t] = file_size(dir);
      rank0[t] = L[0].rank;
      lerr[t] = 0;
      for (int i = 0; i < nl; i++) lerr[t] = fmax(lerr[t], L[i].rel_err);
      ok = miss == 0 && lr && nl == cd_weights_count(d->w) && l->ntok == 1 && !strcmp(l->tok[0], "<new1>") &&
           !memcmp(l->embeds, d->embeds, sizeof(float) * d->d);
      /* the diffusers files are not written for a low-rank delta */
      char p[1024];
      snprintf(p, sizeof p, "%s/%s", dir, CD_DIFFUSERS_DELTA_FILE);
      ok = ok && access(p, F_OK) != 0;
      printf("  ratio %.1f: rank %d (layer 0), rel err %.3e (max layer %.3e), file %ld bytes (full %ld)\n", ratios[t],
             rank0[t], err[t], lerr[t], size[t], full_size);
    }
    free(L);
    cd_delta_free(c);
    cd_delta_free(l);
    if (!ok) break;
  }
  const double tol = rank_tol(FULL_RANK) + 2 * TEST_U32 * weight_to_delta(d, m);
  cd_delta_free(d);
  cd_sd_free(m);
  CHECKF(ok, "compress/save/load/resolve: %s", cd_last_error());
  for (int t = 1; t < 4; t++) CHECKF(err[t] < err[t - 1], "error did not fall: ratio %.1f %.3g, ratio %.1f %.3g", ratios[t - 1], err[t - 1], ratios[t], err[t]);
  CHECKF(rank0[0] < rank0[1] && rank0[1] < rank0[2] && rank0[3] == 16, "ranks %d %d %d %d", rank0[0], rank0[1], rank0[2], rank0[3]);
  CHECKF(err[3] < tol, "ratio 1.0 does not reproduce the delta: rel err %.3g > %.3g", err[3], tol);
  /* singular values 0.4 0.3 0.2 0.1 (+ noise): the truncation errors are sqrt(0.09+0.04+0.01)/sqrt(0.3) = 0.68 at rank 1
   * and sqrt(0.01)/sqrt(0.3) = 0.18 at rank 3, whatever the rounding */
  CHECKF(err[2] < 0.2 && err[0] > 0.3, "errors %.3g (0.3) / %.3g (0.9) do not match singular values about 4:3:2:1", err[0], err[2]);
  CHECKF(size[0] < size[1] && size[1] < size[2] && size[2] < full_size, "sizes %ld %ld %ld vs full %ld", size[0], size[1], size[2], full_size);
}

/* full_if_larger keeps matrices whole where factors would be larger: ratio 1.0 then never grows the file */
TEST(full_if_larger) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  cd_delta *d = synth_lowrank(m, 4, 1e-3), *c = NULL, *l = NULL;
  cd_compress_layer *L = NULL;
  int nl = 0, miss = 0, nfull = 0;
  const char *dir = test_tmpdir("fil");
  int rc = cd_delta_compress(d, m, 1.0, 1, &c, &L, &nl) || cd_delta_save(dir, c) || cd_delta_load(dir, m, &l) ||
           cd_delta_resolve(l, m);
  double e = rc ? 1 : delta_err(d, l, m, &miss), tol = 2 * TEST_U32 * weight_to_delta(d, m); /* whole: only dW's rounding */
  for (int i = 0; !rc && i < nl; i++) nfull += L[i].rank < 0;
  size_t bd = cd_delta_bytes(d), bc = c ? cd_delta_bytes(c) : 0;
  free(L);
  cd_delta_free(c); cd_delta_free(l); cd_delta_free(d);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECKF(e <= tol && miss == 0, "rel err %.3g (tol %.3g), %d missing", e, tol, miss);
  CHECKF(nfull == nl, "%d of %d weights kept whole (all should be: rank 16 factors are larger)", nfull, nl);
  CHECKF(bc <= bd, "%zu bytes > %zu", bc, bd);
}

/* a compressed delta applies like any other, and merges */
TEST(apply_and_merge) {
  cd_sd_model *m = load_tiny("tiny-sd1"), *m2 = load_tiny("tiny-sd1"), *m3 = load_tiny("tiny-sd1"), *m4 = load_tiny("tiny-sd1");
  if (!m || !m2 || !m3 || !m4) {
    cd_sd_free(m); cd_sd_free(m2); cd_sd_free(m3); cd_sd_free(m4);
    TINY_MISSING();
  }
  cd_delta *d = synth_lowrank(m, 5, 1e-3), *o = synth_lowrank(m, 6, 1e-3), *c = NULL;
  const char *dir = test_tmpdir("am"), *odir = test_tmpdir("other");
  int rc = cd_delta_compress(d, m, 1.0, 0, &c, NULL, NULL) || cd_delta_save(dir, c) || cd_delta_save(odir, o);
  /* cd_delta_apply_path: the model's K/V become the delta's weights */
  rc = rc || cd_delta_apply_path(m2, dir);
  /* relative to ||W_ft|| of each weight: (rank_tol ||dW|| + 2 u ||W||) / ||W|| */
  double eapply = 0, tol_apply = 0;
  for (int i = 0; !rc && i < cd_weights_count(d->w); i++) {
    cd_weight *x = cd_weights_at(d->w, i), *y = cd_weights_get(m2->unet.w, x->name), *b = cd_weights_get(m->unet.w, x->name);
    double w = 0, dd = 0;
    for (int64_t k = 0; k < cd_numel(x->ndim, x->ne); k++) {
      w += (double)x->data[k] * x->data[k];
      dd += ((double)x->data[k] - b->data[k]) * ((double)x->data[k] - b->data[k]);
    }
    eapply = fmax(eapply, test_rel_err(y->data, x->data, cd_numel(x->ndim, x->ne)));
    tol_apply = fmax(tol_apply, rank_tol(FULL_RANK) * sqrt(dd / w) + 2 * TEST_U32);
  }
  int tok = !rc && cd_tokenizer_lookup(m2->tok, "<new1>") == 49408;
  /* merging the compressed delta equals merging the original */
  int nreg = 0;
  char **reg = NULL;
  rc = rc || cd_merge_read_lines("data/reg_captions.txt", 100, &reg, &nreg);
  cd_delta *a1 = NULL, *a2 = NULL, *b1 = NULL, *ma = NULL, *mb = NULL;
  rc = rc || cd_delta_load(dir, m3, &a1) || cd_delta_load(odir, m3, &a2) ||
       cd_delta_load(odir, m4, &b1);
  cd_merge_opts mo = {.reg = (const char *const *)reg, .nreg = nreg};
  cd_merge_info info = {0};
  if (!rc) {
    cd_delta *da[2] = {a1, a2}, *db[2] = {d, b1};
    const char *cats[2] = {"cat", "dog"};
    rc = cd_merge_deltas(m3, da, cats, 2, &mo, &ma, &info) || cd_merge_deltas(m4, db, cats, 2, &mo, &mb, NULL);
  }
  double emerge = 0;
  int nw = 0;
  for (int i = 0; !rc && i < cd_weights_count(ma->w); i++) {
    cd_weight *x = cd_weights_at(ma->w, i), *y = cd_weights_get(mb->w, x->name);
    if (!y) { nw = -1; break; }
    emerge = fmax(emerge, test_rel_err(x->data, y->data, cd_numel(x->ndim, x->ne)));
    nw++;
  }
  int navg = info.naveraged;
  cd_merge_info_free(&info);
  cd_merge_free_lines(reg, nreg);
  cd_delta_free(d); cd_delta_free(o); cd_delta_free(c);
  cd_delta_free(a1); cd_delta_free(a2); cd_delta_free(b1); cd_delta_free(ma); cd_delta_free(mb);
  cd_sd_free(m); cd_sd_free(m2); cd_sd_free(m3); cd_sd_free(m4);
  CHECKF(rc == 0, "%s", cd_last_error());
  printf("  applied compressed delta vs original: %.3g; merged from compressed vs original: %.3g (%d weights, %d averaged)\n",
         eapply, emerge, nw, navg);
  CHECK(tok);
  CHECKF(eapply <= tol_apply, "applied weights differ by %.3g > %.3g", eapply, tol_apply);
  /* golden README: a float32 merge matches to 1e-4 (its inputs differ here by the compression's rounding only) */
  CHECKF(nw > 0 && emerge < 1e-4, "merge results differ by %.3g", emerge);
  CHECKF(navg > 0, "the to_out biases of crossattn deltas should be averaged");
}

TEST(bad_inputs) {
  cd_sd_model *m = load_tiny("tiny-sd1");
  if (!m) TINY_MISSING();
  cd_delta *d = synth_lowrank(m, 7, 1e-3), *c = NULL, *c2 = NULL;
  int r1 = cd_delta_compress(d, m, 0.0, 0, &c, NULL, NULL);
  int r2 = cd_delta_compress(d, m, 1.5, 0, &c, NULL, NULL);
  int r3 = cd_delta_compress(d, m, NAN, 0, &c, NULL, NULL);
  char e1[512];
  snprintf(e1, sizeof e1, "%s", cd_last_error());
  /* an unresolved low-rank delta is refused */
  int r4 = cd_delta_compress(d, m, 0.5, 0, &c, NULL, NULL);
  int r5 = r4 ? -1 : cd_delta_compress(c, m, 0.5, 0, &c2, NULL, NULL);
  /* a delta for another model */
  cd_sd_model *m2 = load_tiny("tiny-sd2");
  int r6 = m2 ? cd_delta_compress(d, m2, 0.5, 0, &c2, NULL, NULL) : -1;
  cd_delta_free(d); cd_delta_free(c); cd_delta_free(c2);
  cd_sd_free(m); cd_sd_free(m2);
  CHECK(r1 && r2 && r3 && strstr(e1, "--ratio"));
  CHECK(r4 == 0 && r5 != 0);
  CHECK(r6 != 0);
}

int main(void) {
  RUN(ratios);
  RUN(full_if_larger);
  RUN(apply_and_merge);
  RUN(bad_inputs);
  test_tmp_cleanup();
  return test_summary();
}
