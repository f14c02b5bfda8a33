/* test_train_modes.c - the trainable sets of `cdiff train --train`: Custom
 * Diffusion's crossattn_kv and crossattn, and the paper's baselines token
 * (only the new token's row, like Textual Inversion) and full (every UNet
 * weight and the row, like DreamBooth):
 *   - the gradients of the new sets agree with finite differences of the
 *     training loss on tiny-sd1;
 *   - two AdamW steps change exactly the intended parameters (the delta holds
 *     them, every other UNet weight and the base vocabulary stay bit-exact);
 *   - the deltas save, load and apply in each mode (token: token files only,
 *     full: diffusers' unet/diffusion_pytorch_model.safetensors as well). */
#include "custom/delta.h"
#include "custom/train.h"

#include "engine/optim.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "test.h"

#define PX (3 * 64 * 64)
#define HW 64
#define PER (4 * 64)

/* one instance and one class example (prior preservation), fixed */
typedef struct {
  float pix[2][PX], mask[2][HW], noise[2][PER];
  int ids[2][77], ts[2];
} batch_data;

static void fill_batch(batch_data *d, int vocab) {
  cd_rng r;
  cd_rng_seed(&r, 77);
  static const int words[] = {320, 1125, 539, 2368, 1929, 530};
  for (int e = 0; e < 2; e++) {
    for (int i = 0; i < PX; i++) d->pix[e][i] = (float)(cd_rng_uniform(&r) * 2 - 1);
    for (int y = 0; y < 8; y++)
      for (int x = 0; x < 8; x++) d->mask[e][y * 8 + x] = e || (y > 0 && x > 1) ? 1.0f : 0.0f;
    int n = 0;
    d->ids[e][n++] = 49406;
    for (int j = 0; j < 5; j++) d->ids[e][n++] = j == 2 && !e ? vocab : words[(j + e) % 6]; /* the instance prompt has the new token */
    while (n < 77) d->ids[e][n++] = 49407;
    cd_rng_fill_normal(&r, d->noise[e], PER);
  }
  d->ts[0] = 310;
  d->ts[1] = 720;
}

static cd_batch as_batch(batch_data *d) {
  return (cd_batch){.pixels = d->pix[0], .mask = d->mask[0], .ids = d->ids[0], .noise = d->noise[0], .timesteps = d->ts};
}

/* tiny-sd1 and a trainer for mode; 1 skip, -1 fail, 0 ready */
static int setup(int mode, cd_sd_model **mo, cd_trainer *t, batch_data *bd) {
  char mp[1024];
  int g = test_golden_need(mp, sizeof mp, "tiny-sd1");
  if (g) return g;
  cd_load_opts lo = {0};
  if (cd_sd_load(mp, &lo, mo)) {
    snprintf(test_msg, sizeof test_msg, "load: %s", cd_last_error());
    return -1;
  }
  cd_sd_model *m = *mo;
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = 64;
  o.train = mode;
  o.sample_latents = 0;
  o.ntok = 1;
  o.lr = 1e-3f;
  o.weight_decay = 0; /* a decayed weight moves without a gradient; here only a gradient may move one */
  fill_batch(bd, m->clip.cfg.vocab);
  if (cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, (int[]){42170}, NULL, o.tok_id) || cd_trainer_init(t, m, &o)) {
    snprintf(test_msg, sizeof test_msg, "init (%s): %s", cd_train_mode_name(mode), cd_last_error());
    cd_sd_free(m);
    *mo = NULL;
    return -1;
  }
  return 0;
}

TEST(mode_names) {
  const char *names[] = {"token", "crossattn_kv", "crossattn", "full"};
  const int modes[] = {CD_TRAIN_NONE, CD_TRAIN_KV, CD_TRAIN_CROSSATTN, CD_TRAIN_FULL};
  for (int i = 0; i < 4; i++) {
    CHECK(cd_train_mode_parse(names[i]) == modes[i]);
    CHECK(!strcmp(cd_train_mode_name(modes[i]), names[i]));
  }
  CHECK(cd_train_mode_parse("lora") == -1 && cd_train_mode_parse(NULL) == -1 && cd_train_mode_name(9) == NULL);
  const char *kq = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight";
  const char *kk = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
  const char *k1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight";
  CHECK(!cd_train_mode_trains(CD_TRAIN_NONE, kk) && cd_train_mode_trains(CD_TRAIN_KV, kk) && !cd_train_mode_trains(CD_TRAIN_KV, kq));
  CHECK(cd_train_mode_trains(CD_TRAIN_CROSSATTN, kq) && !cd_train_mode_trains(CD_TRAIN_CROSSATTN, k1));
  CHECK(cd_train_mode_trains(CD_TRAIN_FULL, k1) && cd_train_mode_trains(CD_TRAIN_FULL, "conv_in.weight"));
}

/* Token-only training needs a token: otherwise nothing would train. */
TEST(token_mode_needs_a_token) {
  char mp[1024];
  NEED_GOLDEN(mp, "tiny-sd1");
  cd_sd_model *m = NULL;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = 64;
  o.train = CD_TRAIN_NONE;
  cd_trainer t;
  int rc = cd_trainer_init(&t, m, &o);
  cd_trainer_free(&t);
  cd_sd_free(m);
  CHECK(rc == -1);
  CHECKF(strstr(cd_last_error(), "--train token"), "message: %s", cd_last_error());
}

/* Finite differences along the gradient, one check per parameter tensor and
 * one over all of them at once (the engine computes in float32 only, so the
 * check is built to be meaningful in float32).
 *
 * For a set S of parameters with gradient g_S (from the engine's backward),
 * step along v = g_S / |g_S|: the central difference
 *   fd = (L(theta + h v) - L(theta - h v)) / (2 h)
 * approximates the directional derivative g_true . v, which equals |g_S| only
 * if the backward is right (a wrong scale, sign, or a gradient pointing
 * elsewhere all show). h is chosen so that the first-order change |g_S| h is
 * 1e-3 |L|. Error budget, relative to |g_S|:
 *   - rounding: L is a float32 evaluation of the same code at both points. Its
 *     predictions carry the errors of fewer than 40 reductions in sequence,
 *     each typically sqrt(K) u with K <= 576 (the tiny UNet's longest dot
 *     product, 3x3x64; test.h), independent roundings adding in quadrature:
 *     sqrt(40) * 24 * 6e-8 ~ 9e-6 |L| per evaluation; the difference of two
 *     divided by 2 |g_S| h = 2e-3 |L| gives ~9e-3;
 *   - the parameters round to float32 at theta +- h v: u relative per
 *     element, negligible next to the above;
 *   - truncation, h^2 / 6 |L'''| / |g_S|: the loss moves by 0.1%; at 10x
 *     this h (1%) the token row's difference was off by 9% (the denoising
 *     loss of random images is strongly curved), so ~1e-3 here.
 * 3e-2 is that budget with a margin of ~3. A gradient of the wrong set (a
 * parameter left out of the backward, a detached path) has relative error
 * ~1, and a missed factor (a mean instead of a sum) is O(1) as well. */
static void fd_check(int mode) {
  cd_sd_model *m = NULL;
  cd_trainer t;
  batch_data *bd = cd_malloc(sizeof *bd);
  int s = setup(mode, &m, &t, bd);
  if (s) {
    free(bd);
    GOLDEN_STATUS(s);
  }
  cd_batch b = as_batch(bd);
  cd_step_report rep;
  int rc = cd_trainer_grad(&t, &b, &rep);
  const double L0 = rep.loss;
  float **g = cd_calloc(t.np, sizeof *g), **v0 = cd_calloc(t.np, sizeof *v0);
  for (int i = 0; i < t.np && !rc; i++) {
    g[i] = cd_malloc(t.p[i].n * sizeof(float));
    v0[i] = cd_malloc(t.p[i].n * sizeof(float));
    rc = cd_optim_read(t.opt, i, CD_OPTIM_GRAD, g[i]) || cd_optim_read(t.opt, i, CD_OPTIM_VALUE, v0[i]);
  }
  /* L at theta + s h v over the tensors [lo, hi) */
  float *tmp = NULL;
  int64_t maxn = 0;
  for (int i = 0; i < t.np; i++) maxn = t.p[i].n > maxn ? t.p[i].n : maxn;
  tmp = cd_malloc((size_t)maxn * sizeof(float));
  double worst = 0;
  char worst_name[200] = "";
  int checked = 0;
  /* every tensor (every 61st of the 495 in full mode, to stay fast under ASan), the token row always, then all at once */
#if defined(__SANITIZE_ADDRESS__)
  const int stride = mode == CD_TRAIN_FULL ? 1000 : 1; /* sanitized runs are ~10x slower: the row and all at once */
#else
  const int stride = mode == CD_TRAIN_FULL ? 61 : 1;
#endif
  for (int c = 0; c <= t.np && !rc; c++) {
    int lo, hi;
    if (c < t.np) {
      if (c % stride && c != t.np - 1) continue;
      lo = c, hi = c + 1;
    } else {
      lo = 0, hi = t.np;
    }
    double gn = 0;
    for (int i = lo; i < hi; i++)
      for (int64_t k = 0; k < t.p[i].n; k++) gn += (double)g[i][k] * g[i][k];
    gn = sqrt(gn);
    if (gn == 0) continue; /* a zero gradient has no direction; the set test below still checks it moves or not */
    const double h = 1e-3 * fabs(L0) / gn;
    double Lpm[2];
    for (int sgn = 0; sgn < 2 && !rc; sgn++) {
      const double sh = (sgn ? -h : h) / gn;
      for (int i = lo; i < hi && !rc; i++) {
        for (int64_t k = 0; k < t.p[i].n; k++) tmp[k] = (float)(v0[i][k] + sh * g[i][k]);
        rc = cd_optim_write(t.opt, i, CD_OPTIM_VALUE, tmp);
      }
      if (!rc) rc = cd_graph_forward(t.g);
      Lpm[sgn] = cd_graph_get_scalar(t.g, t.loss);
    }
    for (int i = lo; i < hi && !rc; i++) rc = cd_optim_write(t.opt, i, CD_OPTIM_VALUE, v0[i]);
    const double fd = (Lpm[0] - Lpm[1]) / (2 * h), e = fabs(fd - gn) / gn;
    checked++;
    if (e > worst) {
      worst = e;
      snprintf(worst_name, sizeof worst_name, "%s (|g| %.3g, fd %.3g)", c < t.np ? t.p[c].name : "all parameters", gn, fd);
    }
  }
  const int np = t.np;
  for (int i = 0; i < np; i++) free(g[i]), free(v0[i]);
  free(g), free(v0), free(tmp), free(bd);
  cd_trainer_free(&t);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECKF(checked >= 2, "only %d sets checked", checked);
  CHECKF(worst <= 3e-2, "finite differences disagree with the gradient of %s: rel err %.3g", worst_name, worst);
  printf("  %s: %d sets, worst rel err %.2g (%s)\n", cd_train_mode_name(mode), checked, worst, worst_name);
}

TEST(token_gradient_matches_finite_differences) { fd_check(CD_TRAIN_NONE); }
TEST(full_gradient_matches_finite_differences) { fd_check(CD_TRAIN_FULL); }

/* Two AdamW steps change exactly the mode's set: the delta holds every weight
 * of the set (each moved) and nothing else; every UNet weight outside it, and
 * the vocabulary's rows, keep their loaded values bit for bit. */
static void set_check(int mode) {
  cd_sd_model *m = NULL;
  cd_trainer t;
  batch_data *bd = cd_malloc(sizeof *bd);
  /* the loaded values, before the trainer converts anything */
  char mp[1024];
  int s = test_golden_need(mp, sizeof mp, "tiny-sd1");
  if (s) {
    free(bd);
    GOLDEN_STATUS(s);
  }
  cd_sd_model *ref = NULL;
  cd_load_opts lo = {0};
  if (cd_sd_load(mp, &lo, &ref)) {
    free(bd);
    FAILF("load: %s", cd_last_error());
  }
  s = setup(mode, &m, &t, bd);
  if (s) {
    free(bd);
    cd_sd_free(ref);
    GOLDEN_STATUS(s);
  }
  cd_batch b = as_batch(bd);
  int rc = cd_trainer_step(&t, &b, NULL) || cd_trainer_step(&t, &b, NULL);
  cd_delta *d = NULL;
  const char toks[1][32] = {"<new1>"}, inits[1][32] = {"ktn"};
  if (!rc) rc = cd_trainer_to_delta(&t, toks, inits, &d);
  cd_trainer_free(&t);
  int wrong_set = 0, unmoved = 0, moved_frozen = 0, in_set = 0;
  char what[300] = "";
  for (int i = 0; !rc && i < cd_weights_count(ref->unet.w); i++) {
    cd_weight *r0 = cd_weights_at(ref->unet.w, i);
    const int64_t n = cd_numel(r0->ndim, r0->ne);
    const float *a = cd_weight_f32(r0);
    cd_weight *dx = cd_weights_get(d->w, r0->name);
    const int want = cd_train_mode_trains(mode, r0->name);
    in_set += want;
    if (!!dx != want) {
      if (!wrong_set++) snprintf(what, sizeof what, "%s %s in the delta", r0->name, dx ? "is" : "is not");
      continue;
    }
    if (dx) { /* trained: at least one element moved (AdamW's first steps move every element with a gradient by ~lr) */
      int mv = 0;
      for (int64_t k = 0; k < n; k++) mv |= dx->data[k] != a[k];
      if (!mv && !unmoved++) snprintf(what, sizeof what, "trained %s did not move", r0->name);
    } else { /* frozen: the model's copy is bit-exact */
      const float *c = cd_weight_f32(cd_weights_get(m->unet.w, r0->name));
      if (memcmp(c, a, (size_t)n * sizeof(float)) && !moved_frozen++) snprintf(what, sizeof what, "frozen %s changed", r0->name);
    }
  }
  /* the token row moved; the vocabulary's rows did not */
  int tok_moved = 0, vocab_same = 0;
  if (!rc) {
    const char *tn = "text_model.embeddings.token_embedding.weight";
    cd_weight *e0 = cd_weights_get(ref->clip.w, tn), *e1 = cd_weights_get(m->clip.w, tn);
    vocab_same = e1->ne[0] == e0->ne[0] + 1 && !memcmp(cd_weight_f32(e0), cd_weight_f32(e1), (size_t)cd_numel(e0->ndim, e0->ne) * sizeof(float));
    const float *init = cd_weight_f32(e0) + (int64_t)42170 * e0->ne[1];
    for (int k = 0; k < d->d; k++) tok_moved |= d->embeds[k] != init[k];
  }
  const int nd = d ? cd_weights_count(d->w) : -1;
  char train[32] = "";
  if (d) snprintf(train, sizeof train, "%s", d->train);
  cd_delta_free(d);
  cd_sd_free(m);
  cd_sd_free(ref);
  free(bd);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECKF(!wrong_set && !unmoved && !moved_frozen, "%s: %s (%d wrong, %d unmoved, %d frozen changed)", cd_train_mode_name(mode), what,
         wrong_set, unmoved, moved_frozen);
  CHECKF(nd == in_set, "delta holds %d weights, the set has %d", nd, in_set);
  CHECK(!strcmp(train, cd_train_mode_name(mode)));
  CHECK(tok_moved && vocab_same);
  CHECK(mode == CD_TRAIN_NONE ? in_set == 0 : in_set > 0);
  printf("  %s: %d UNet weights trained\n", cd_train_mode_name(mode), in_set);
}

TEST(token_changes_only_the_row) { set_check(CD_TRAIN_NONE); }
TEST(crossattn_kv_changes_only_kv) { set_check(CD_TRAIN_KV); }
TEST(crossattn_changes_only_attn2) { set_check(CD_TRAIN_CROSSATTN); }
TEST(full_changes_every_unet_weight) { set_check(CD_TRAIN_FULL); }

/* Saved deltas: the files of each mode, and the cdiff file loads back and
 * applies (what `cdiff sample --delta` does). */
static void save_check(int mode) {
  cd_sd_model *m = NULL;
  cd_trainer t;
  batch_data *bd = cd_malloc(sizeof *bd);
  int s = setup(mode, &m, &t, bd);
  free(bd);
  GOLDEN_STATUS(s);
  cd_delta *d = NULL, *back = NULL;
  const char toks[1][32] = {"<new1>"}, inits[1][32] = {"ktn"};
  int rc = cd_trainer_to_delta(&t, toks, inits, &d);
  cd_trainer_free(&t);
  const char *dir = test_tmpdir(cd_train_mode_name(mode));
  /* an earlier delta of another mode in the same folder leaves nothing behind */
  if (!rc && mode != CD_TRAIN_KV) {
    char p[1100];
    snprintf(p, sizeof p, "%s/unet", dir);
    FILE *f = (cd_mkdir_p(p), fopen(test_path_in(dir, CD_DIFFUSERS_DELTA_FILE), "wb"));
    if (f) fclose(f);
    f = fopen(test_path_in(dir, "unet/diffusion_pytorch_model.safetensors"), "wb");
    if (f) fclose(f);
  }
  if (!rc) rc = cd_delta_save(dir, d);
  const int has_cd = cd_file_exists(test_path_in(dir, CD_DIFFUSERS_DELTA_FILE));
  const int has_unet = cd_file_exists(test_path_in(dir, "unet/diffusion_pytorch_model.safetensors"));
  const int has_tok = cd_file_exists(test_path_in(dir, "<new1>.safetensors"));
  int unet_keys = -1;
  if (has_unet) {
    cd_tensor_file *f;
    if (!cd_tensor_file_open(test_path_in(dir, "unet/diffusion_pytorch_model.safetensors"), &f)) {
      unet_keys = cd_tf_count(f);
      /* diffusers' UNet state-dict keys: the model's own names */
      for (int i = 0; i < cd_tf_count(f); i++)
        if (!cd_weights_get(m->unet.w, cd_tf_at(f, i)->name)) unet_keys = -2;
      cd_tensor_file_close(f);
    }
  }
  /* onto a fresh model, as cdiff sample --delta does */
  cd_sd_model *m2 = NULL;
  cd_load_opts lo = {0};
  if (!rc) rc = cd_sd_load(m->path, &lo, &m2) || cd_delta_load(dir, m2, &back);
  int same = 0;
  if (!rc) {
    same = !strcmp(back->train, d->train) && cd_weights_count(back->w) == cd_weights_count(d->w) && back->ntok == 1;
    rc = cd_delta_resolve(back, m2) || cd_delta_apply(m2, back);
  }
  cd_sd_free(m2);
  const int nd = d ? cd_weights_count(d->w) : 0;
  cd_delta_free(d);
  cd_delta_free(back);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECK(same && has_tok);
  CHECKF(has_cd == (mode == CD_TRAIN_KV || mode == CD_TRAIN_CROSSATTN), "%s: custom diffusion file %d", cd_train_mode_name(mode), has_cd);
  CHECKF(has_unet == (mode == CD_TRAIN_FULL), "%s: unet file %d", cd_train_mode_name(mode), has_unet);
  if (mode == CD_TRAIN_FULL) CHECKF(unet_keys == nd, "unet file: %d keys, delta %d", unet_keys, nd);
}

TEST(token_delta_files) { save_check(CD_TRAIN_NONE); }
TEST(full_delta_files) { save_check(CD_TRAIN_FULL); }
TEST(kv_delta_files) { save_check(CD_TRAIN_KV); }

/* Sequential training through the CLI: concept 1 (crossattn), then concept 2
 * (crossattn_kv) from its delta. The result alone holds both tokens (the
 * first one's row as the first delta left it), the second run's K/V and the
 * first run's to_q/to_out, which the second did not train; a second <new1>
 * is refused by name. */
TEST(sequential_training_from_a_delta) {
  char mp[1024], cmd[4096], out[8192];
  NEED_GOLDEN(mp, "tiny-sd1");
  const char *bin = test_cdiff_bin(), *dir = test_tmpdir("seq");
  const char *img = test_path_in(dir, "img");
  CHECK(test_write_noise_images(img, 2, 5) == 0);
  const char *common = "--num-class-images 2 --class-steps 2 --resolution 64 --steps 2 --lr 1e-3 --no-scale-lr --no-aug";
  snprintf(cmd, sizeof cmd,
           "CDIFF_QUIET=1 '%s' train --model '%s' --images '%s' --prompt 'photo of a <new1> cat' --class-prompt cat "
           "--class-images '%s/c1' --train crossattn %s --out '%s/a' 2>&1",
           bin, mp, img, dir, common, dir);
  CHECKF(test_run_cmd(cmd, out, sizeof out) == 0, "first run: %s", out);
  snprintf(cmd, sizeof cmd,
           "CDIFF_QUIET=1 '%s' train --model '%s' --delta '%s/a' --images '%s' --prompt 'photo of a <new2> dog' "
           "--modifier-token '<new2>' --initializer-token pll --class-prompt dog --class-images '%s/c2' %s --out '%s/b' 2>&1",
           bin, mp, dir, img, dir, common, dir);
  CHECKF(test_run_cmd(cmd, out, sizeof out) == 0, "second run: %s", out);
  snprintf(cmd, sizeof cmd,
           "CDIFF_QUIET=1 '%s' train --model '%s' --delta '%s/a' --images '%s' --prompt 'photo of a <new1> dog' "
           "--class-prompt dog --class-images '%s/c2' %s --out '%s/c' 2>&1",
           bin, mp, dir, img, dir, common, dir);
  CHECKF(test_run_cmd(cmd, out, sizeof out) != 0 && strstr(out, "<new1>") && strstr(out, "--delta"), "a repeated token: %s", out);
  cd_sd_model *m = NULL;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  cd_delta *a = NULL, *b = NULL;
  int rc = cd_delta_load(test_path_in(dir, "a"), m, &a) || cd_delta_load(test_path_in(dir, "b"), m, &b);
  int ok_tok = 0, ok_q = 1, ok_kv = 1, nq = 0;
  if (!rc) {
    ok_tok = b->ntok == 2 && !strcmp(b->tok[0], "<new1>") && !strcmp(b->tok[1], "<new2>") &&
             !memcmp(b->embeds, a->embeds, (size_t)a->d * sizeof(float));
    for (int i = 0; i < cd_weights_count(a->w); i++) {
      const cd_weight *x = cd_weights_at(a->w, i), *y = cd_weights_get(b->w, x->name);
      const size_t n = (size_t)cd_numel(x->ndim, x->ne) * sizeof(float);
      if (!y) { ok_q = 0; continue; }
      if (cd_train_mode_trains(CD_TRAIN_KV, x->name)) ok_kv &= memcmp(x->data, y->data, n) != 0; /* trained on */
      else ok_q &= !memcmp(x->data, y->data, n), nq++;                                           /* kept */
    }
    ok_q &= cd_weights_count(b->w) == cd_weights_count(a->w);
  }
  cd_delta_free(a);
  cd_delta_free(b);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", cd_last_error());
  CHECK(ok_tok);
  CHECK(ok_q && nq > 0);
  CHECK(ok_kv);
}

int main(void) {
  RUN(mode_names);
  RUN(token_mode_needs_a_token);
  RUN(token_gradient_matches_finite_differences);
  RUN(full_gradient_matches_finite_differences);
  RUN(token_changes_only_the_row);
  RUN(crossattn_kv_changes_only_kv);
  RUN(crossattn_changes_only_attn2);
  RUN(full_changes_every_unet_weight);
  RUN(token_delta_files);
  RUN(full_delta_files);
  RUN(kv_delta_files);
  RUN(sequential_training_from_a_delta);
  test_tmp_cleanup();
  return test_summary();
}
