/* test_pretrain.c - cdiff pretrain: the documented command's first steps
 * reproduce the shipped log; an interrupted and resumed run is bit for bit
 * the uninterrupted one and writes a model the loader reads; bad options
 * are refused naming the flag. */
#include <stddef.h>

#include "engine/backend.h"
#include "engine/graph.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/sd_model.h"
#include "models/unet.h"
#include "pretrain/pretrain.h"
#include "test.h"

#define SHIPPED "models/cdiff-world"

/* loss of each "step" line of a log, in order; returns the count */
static int read_losses(const char *path, const char *phase, double *loss, int cap) {
  char *txt;
  size_t n;
  if (cd_read_file(path, &txt, &n)) return -1;
  int k = 0;
  char key[32];
  snprintf(key, sizeof key, "\"phase\": \"%s\", \"step\"", phase);
  for (char *p = txt; p && *p && k < cap;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    char *l = strstr(p, "\"loss\": ");
    if (strstr(p, key) && l) loss[k++] = atof(l + 8);
    p = nl ? nl + 1 : NULL;
  }
  free(txt);
  return k;
}

/* The shipped weights' log starts with the losses that the documented commands
 * (docs/world.md: cdiff pretrain --out DIR --seed 1 --vae-steps 3000, stopped
 * after 500 steps and resumed with the defaults) compute.
 * The first steps start from the same seeded weights on the same rendered images,
 * so they differ between machines only by float32 summation order (SIMD width,
 * threads, BLAS kernels): about 1e-6 relative per reduction, a few hundred
 * reductions deep, plus AdamW's first updates, whose size is the learning rate
 * (1/150 of 1e-3 in warm-up) whatever the gradient's magnitude. 1e-3 relative
 * bounds that with a wide margin, while a changed renderer, initialisation,
 * objective or schedule moves the losses by far more (step 1 to 2 alone
 * changes the loss by more than 20%). */
TEST(reproduces_shipped_log) {
  char ref[512];
  snprintf(ref, sizeof ref, "%s/%s", SHIPPED, CD_PRETRAIN_LOG);
  if (!cd_file_exists(ref)) FAILF("%s is missing: the shipped model must come with its pretraining log", ref);
  double want[3], got[3];
  CHECK(read_losses(ref, "vae", want, 3) == 3);
  cd_pretrain_opts o;
  cd_pretrain_opts_default(&o);
  o.out = test_tmpdir("documented");
  o.seed = 1;
  o.vae_steps = 3000; /* the first command's schedule: its warm-up sets the first steps' learning rate */
  o.stop_after = 3;
  o.quiet = 1;
  CHECK_OK(cd_pretrain_run(&o));
  char log[512];
  snprintf(log, sizeof log, "%s/%s", o.out, CD_PRETRAIN_LOG);
  CHECK(read_losses(log, "vae", got, 3) == 3);
  for (int i = 0; i < 3; i++)
    CHECKF(fabs(got[i] - want[i]) <= 1e-3 * fabs(want[i]), "step %d: loss %.9g, shipped log %.9g", i + 1, got[i], want[i]);
}

static void small_opts(cd_pretrain_opts *o, const char *out) {
  cd_pretrain_opts_default(o);
  o->out = out;
  o->seed = 7;
  o->vae_steps = 3;
  o->unet_steps = 3;
  o->vae_batch = 2;
  o->unet_batch = 2;
  o->checkpoint_every = 0;
  o->scale_images = 4;
  o->offset_noise = 0.3f; /* the shipped run's last part: resuming must reproduce its draws too */
  o->quiet = 1;
}

static int file_eq(const char *a, const char *b) {
  char *x, *y;
  size_t nx, ny;
  if (cd_read_file(a, &x, &nx)) return 0;
  if (cd_read_file(b, &y, &ny)) { free(x); return 0; }
  int eq = nx == ny && !memcmp(x, y, nx);
  free(x);
  free(y);
  return eq;
}

/* Interrupted in each phase and resumed: the same log and the same model as
 * one uninterrupted run; the model loads with the world tokenizer. */
TEST(resume_bit_exact) {
  char a[512], b[512], la[600], lb[600];
  snprintf(a, sizeof a, "%s", test_tmpdir("whole"));
  snprintf(b, sizeof b, "%s", test_tmpdir("parts"));
  cd_pretrain_opts o;
  small_opts(&o, a);
  CHECK_OK(cd_pretrain_run(&o));
  small_opts(&o, b);
  o.stop_after = 2; /* in the VAE phase */
  CHECK_OK(cd_pretrain_run(&o));
  o.resume = 1;
  /* a resume that changes a loss is refused, naming the flag; the state is untouched */
  o.object_weight = 2;
  CHECKF(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--object-weight 2 differs from the run's 0"), "%s", cd_last_error());
  o.object_weight = 0;
  o.unet_sprites = 0.5f; /* the UNet's data is part of its objective too */
  CHECKF(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--unet-sprites 0.5 differs from the run's 0"), "%s", cd_last_error());
  o.unet_sprites = 0;
  o.kl_weight *= 2;
  CHECKF(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--kl-weight"), "%s", cd_last_error());
  o.kl_weight /= 2;
  o.stop_after = 2; /* VAE step 3, then UNet step 1 */
  CHECK_OK(cd_pretrain_run(&o));
  o.stop_after = 0;
  CHECK_OK(cd_pretrain_run(&o));
  snprintf(la, sizeof la, "%s/%s", a, CD_PRETRAIN_LOG);
  snprintf(lb, sizeof lb, "%s/%s", b, CD_PRETRAIN_LOG);
  CHECK(file_eq(la, lb));
  double l[8];
  CHECK(read_losses(la, "vae", l, 8) == 3 && read_losses(la, "unet", l, 8) == 3);
  static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                      "text_encoder/model.safetensors", "vae/config.json", "tokenizer/vocab.json"};
  for (int i = 0; i < 5; i++) {
    snprintf(la, sizeof la, "%s/%s", a, files[i]);
    snprintf(lb, sizeof lb, "%s/%s", b, files[i]);
    CHECKF(file_eq(la, lb), "%s differs after resuming", files[i]);
  }
  cd_sd_model *m;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(a, &lo, &m));
  int ok = m->tok && m->clip.cfg.vocab == cd_tokenizer_vocab_size(m->tok) && m->unet.cfg.context_dim == m->clip.cfg.width &&
           m->clip.cfg.pad_id == m->clip.cfg.vocab - 1 && m->vae.cfg.scaling_factor > 0 && m->unet.cfg.sample_size == 8;
  cd_sd_free(m);
  CHECK(ok);
  /* a finished run is not silently overwritten */
  small_opts(&o, a);
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--resume"));
}

TEST(bad_options) {
  cd_pretrain_opts o;
  small_opts(&o, NULL);
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--out"));
  small_opts(&o, test_tmpdir("bad"));
  o.vae_steps = -1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--vae-steps"));
  small_opts(&o, test_tmpdir("bad"));
  o.unet_lr = 0;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--lr"));
  small_opts(&o, test_tmpdir("bad2"));
  o.resume = 1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--resume"));
  small_opts(&o, test_tmpdir("bad3"));
  o.offset_noise = 2;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--offset-noise"));
  small_opts(&o, test_tmpdir("bad4"));
  o.object_weight = -1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--object-weight"));
  small_opts(&o, test_tmpdir("bad5"));
  o.unet_sprites = -0.1f;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--unet-sprites"));
}

/* two small runs that differ only in the float option at `field` (va, then vb):
 * the VAE phase's losses are the same, the UNet phase's first loss is not */
static void unet_only_differs(const char *tag, size_t field, float va_, float vb_) {
  char a[512], b[512], ta[64], tb[64];
  double va[3], vb[3], ua[3], ub[3];
  snprintf(ta, sizeof ta, "%s_a", tag);
  snprintf(tb, sizeof tb, "%s_b", tag);
  snprintf(a, sizeof a, "%s", test_tmpdir(ta));
  snprintf(b, sizeof b, "%s", test_tmpdir(tb));
  cd_pretrain_opts o;
  small_opts(&o, a);
  *(float *)((char *)&o + field) = va_;
  CHECK_OK(cd_pretrain_run(&o));
  small_opts(&o, b);
  *(float *)((char *)&o + field) = vb_;
  CHECK_OK(cd_pretrain_run(&o));
  snprintf(a + strlen(a), sizeof a - strlen(a), "/%s", CD_PRETRAIN_LOG);
  snprintf(b + strlen(b), sizeof b - strlen(b), "/%s", CD_PRETRAIN_LOG);
  CHECK(read_losses(a, "vae", va, 3) == 3 && read_losses(b, "vae", vb, 3) == 3);
  CHECK(read_losses(a, "unet", ua, 3) == 3 && read_losses(b, "unet", ub, 3) == 3);
  for (int i = 0; i < 3; i++) CHECK(va[i] == vb[i] && isfinite(ub[i]) && ub[i] > 0);
  CHECK(ua[0] != ub[0]);
}

/* offset noise changes the UNet phase's noise (so its losses), nothing of the VAE phase */
TEST(offset_noise) { unet_only_differs("off", offsetof(cd_pretrain_opts, offset_noise), 0, 0.3f); }

/* --unet-sprites: generic sprites (captioned "toy") among the UNet's images
 * change its batches, not the VAE phase's; 0 keeps the draws of before (the
 * shipped log, reproduces_shipped_log) */
TEST(unet_sprites) { unet_only_differs("spr", offsetof(cd_pretrain_opts, unet_sprites), 0, 1.0f); }

/* --object-weight X: the UNet loss is, per image, the mean of (pred - noise)^2
 * over channels and latent cells with weight 1 + X on the cells an object
 * touches, averaged over the batch (checked on the graph pretrain builds,
 * against that sum in double); X = 0 is the plain MSE (all weights 1 give the
 * same number). In a run it changes the UNet losses and not the VAE's. */
TEST(object_weight) {
  enum { B = 2, Z = 4, H = 8 };
  static float x[B * Z * H * H], y[B * Z * H * H], w[B * H * H], ones[B * H * H];
  cd_rng r;
  cd_rng_seed(&r, 3);
  cd_rng_fill_normal(&r, x, B * Z * H * H);
  cd_rng_fill_normal(&r, y, B * Z * H * H);
  for (int k = 0; k < B * H * H; k++) w[k] = cd_rng_uniform(&r) < 0.3 ? 5.0f : 1.0f, ones[k] = 1.0f;
  cd_graph *g = cd_graph_new();
  cd_node *xn = cd_input(g, "x", 4, (int64_t[]){B, Z, H, H}), *yn = cd_input(g, "y", 4, (int64_t[]){B, Z, H, H});
  cd_node *mn = cd_input(g, "m", 4, (int64_t[]){B, 1, H, H});
  cd_node *wl = cd_scale(g, cd_mse(g, xn, yn, mn), 1.0f / Z), *pl = cd_mse(g, xn, yn, NULL);
  cd_graph_output(g, wl);
  cd_graph_output(g, pl);
  CHECK_OK(cd_graph_plan(g, NULL));
  CHECK_OK(cd_graph_set_input(g, xn, x));
  CHECK_OK(cd_graph_set_input(g, yn, y));
  CHECK_OK(cd_graph_set_input(g, mn, ones));
  CHECK_OK(cd_graph_forward(g));
  double plain = cd_graph_get_scalar(g, pl);
  CHECK(fabs(cd_graph_get_scalar(g, wl) - plain) <= 1e-6 * plain);
  CHECK_OK(cd_graph_set_input(g, mn, w));
  CHECK_OK(cd_graph_forward(g));
  double want = 0;
  for (int b = 0; b < B; b++) {
    double num = 0, den = 0;
    for (int k = 0; k < H * H; k++) {
      den += Z * w[b * H * H + k];
      for (int c = 0; c < Z; c++) {
        double e = (double)x[(b * Z + c) * H * H + k] - y[(b * Z + c) * H * H + k];
        num += w[b * H * H + k] * e * e;
      }
    }
    want += num / den / B;
  }
  CHECK(fabs(cd_graph_get_scalar(g, wl) - want) <= 1e-6 * want);
  CHECK(fabs(want - plain) > 1e-3 * plain); /* the weights matter */
  cd_graph_free(g);

  unet_only_differs("obj", offsetof(cd_pretrain_opts, object_weight), 0, 4);
}

/* values of tensor `name` of a safetensors file into a new array (NULL when absent) */
static float *read_tensor(const char *path, const char *name, int64_t *n) {
  cd_tensor_file *f;
  if (cd_safetensors_open(path, &f)) return NULL;
  float *v = test_read_f32(f, name, n);
  cd_tensor_file_close(f);
  return v;
}

/* --init continues a model written earlier (VAE kept, no VAE steps) and --ema
 * keeps ema = d ema + (1 - d) w with d = min(D, (1+n)/(10+n)) after update n
 * (0-based), starting from the shipped model: checked against the live weights the state holds after steps 1
 * and 2. Interrupted and resumed, the run writes the same model as one
 * uninterrupted run, and that model holds the average, not the last weights. */
TEST(init_and_ema) {
  const char *base = SHIPPED; /* fp16: read as f32 by both the init and this test */
  char a[512], b[512], p[700], q[700];
  snprintf(a, sizeof a, "%s", test_tmpdir("ema_whole"));
  snprintf(b, sizeof b, "%s", test_tmpdir("ema_parts"));
  cd_pretrain_opts o;
  /* a weight that trains in every step (the UNet's output convolution) */
  const char *wn = "conv_out.weight";
  char sw[64], se[64];
  snprintf(sw, sizeof sw, "unet/%s", wn);
  snprintf(se, sizeof se, "ema/unet/%s", wn);
  int64_t n0 = 0, n1 = 0, n2 = 0, ne1 = 0, ne2 = 0, nm = 0;
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", base);
  float *w0 = read_tensor(p, wn, &n0);
  CHECK(w0 != NULL);

  small_opts(&o, b);
  o.init = base;
  o.vae_steps = 1000; /* ignored: the VAE phase is skipped */
  o.ema = 0.9f;
  o.f32 = 1;
  o.stop_after = 1;
  CHECK_OK(cd_pretrain_run(&o));
  snprintf(p, sizeof p, "%s/%s", b, CD_PRETRAIN_STATE);
  float *w1 = read_tensor(p, sw, &n1), *e1 = read_tensor(p, se, &ne1);
  o.resume = 1;
  CHECK_OK(cd_pretrain_run(&o));
  float *w2 = read_tensor(p, sw, &n2), *e2 = read_tensor(p, se, &ne2);
  CHECK(w1 && e1 && w2 && e2 && n1 == n0 && n2 == n0 && ne1 == n0 && ne2 == n0);
  double d0 = 0.1, d1 = 2.0 / 11, err = 0, moved = 0;
  for (int64_t k = 0; k < n0; k++) {
    double x1 = d0 * w0[k] + (1 - d0) * w1[k], x2 = d1 * x1 + (1 - d1) * w2[k];
    /* float32 rounding of two multiply-adds on values of this size */
    double tol = 4 * 6e-8 * (fabs(w0[k]) + fabs(w1[k]) + fabs(w2[k])) + 1e-30;
    if (fabs(e1[k] - x1) > tol || fabs(e2[k] - x2) > tol) err++;
    moved += fabs(w2[k] - w0[k]);
  }
  CHECKF(err == 0, "%g elements of the EMA off the formula", err);
  CHECK(moved > 0);
  o.stop_after = 0;
  CHECK_OK(cd_pretrain_run(&o));
  o.resume = 0;
  o.out = a;
  CHECK_OK(cd_pretrain_run(&o));
  static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", CD_PRETRAIN_LOG};
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", a, files[i]);
    snprintf(q, sizeof q, "%s/%s", b, files[i]);
    CHECKF(file_eq(p, q), "%s differs after resuming", files[i]);
  }
  /* the VAE is the init's, unchanged (written in f32 here, shipped in f16) */
  snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", a);
  snprintf(q, sizeof q, "%s/vae/diffusion_pytorch_model.safetensors", base);
  float *va = read_tensor(p, "decoder.conv_out.weight", &n1), *vb = read_tensor(q, "decoder.conv_out.weight", &n2);
  CHECK(va && vb && n1 == n2 && !memcmp(va, vb, (size_t)n1 * sizeof(float)));
  free(va), free(vb);
  double l[8];
  snprintf(p, sizeof p, "%s/%s", a, CD_PRETRAIN_LOG);
  CHECK(read_losses(p, "vae", l, 8) == 0 && read_losses(p, "unet", l, 8) == 3);
  /* the written model is the average (the state's ema/), not the last weights */
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", a);
  snprintf(q, sizeof q, "%s/%s", a, CD_PRETRAIN_STATE);
  float *model = read_tensor(p, wn, &nm), *ema = read_tensor(q, se, &n1), *last = read_tensor(q, sw, &n2);
  CHECK(model && ema && last && nm == n0 && n1 == n0 && n2 == n0);
  int same_ema = 1, same_last = 1;
  for (int64_t k = 0; model && ema && last && k < n0; k++) {
    same_ema &= model[k] == ema[k];
    same_last &= model[k] == last[k];
  }
  CHECK(same_ema && !same_last);
  free(w0), free(w1), free(w2), free(e1), free(e2), free(model), free(ema), free(last);
  /* bad --init / --ema */
  small_opts(&o, test_tmpdir("bad_init"));
  o.init = "/nonexistent/world";
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--init"));
  small_opts(&o, test_tmpdir("bad_ema"));
  o.ema = 1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--ema"));
}

/* --decoder-only: phase 1 trains the decoder of the --init model alone; the encoder,
 * the scaling factor and the UNet stay the init's, also across an interruption
 * in that phase (the state restores every component, not only the VAE). */
static void decoder_opts(cd_pretrain_opts *o, const char *out) {
  small_opts(o, out);
  o->init = SHIPPED;
  o->decoder_only = 1;
  o->vae_steps = 2;
  o->unet_steps = 0;
  o->f32 = 1;
}

/* which weights of a run's model in dir differ from the shipped model's
 * (changed) and which are the same bytes; and the VAE scaling factor is the
 * shipped one (runs that keep the latent scale) */
typedef struct {
  const char *file, *name;
  int changed;
} wcheck;

static void check_vs_shipped(const char *dir, const wcheck *w, int n) {
  char p[700], q[700];
  for (int i = 0; i < n; i++) {
    int64_t n1 = 0, n2 = 0;
    snprintf(p, sizeof p, "%s/%s", dir, w[i].file);
    snprintf(q, sizeof q, "%s/%s", SHIPPED, w[i].file);
    float *x = read_tensor(p, w[i].name, &n1), *y = read_tensor(q, w[i].name, &n2);
    CHECKF(x && y && n1 == n2, "%s: %s", w[i].file, w[i].name);
    int same = x && y && n1 == n2 && !memcmp(x, y, (size_t)n1 * sizeof(float));
    CHECKF(same == !w[i].changed, "%s %s", w[i].name, w[i].changed ? "did not train" : "changed");
    free(x), free(y);
  }
  cd_sd_model *m, *s;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(dir, &lo, &m));
  CHECK_OK(cd_sd_load(SHIPPED, &lo, &s));
  CHECK(m->vae.cfg.scaling_factor == s->vae.cfg.scaling_factor);
  cd_sd_free(m);
  cd_sd_free(s);
}

TEST(decoder_only) {
  char a[512], b[512], p[700], q[700];
  snprintf(a, sizeof a, "%s", test_tmpdir("dec_whole"));
  snprintf(b, sizeof b, "%s", test_tmpdir("dec_parts"));
  cd_pretrain_opts o;
  decoder_opts(&o, a);
  CHECK_OK(cd_pretrain_run(&o));
  decoder_opts(&o, b);
  o.stop_after = 1;
  CHECK_OK(cd_pretrain_run(&o));
  o.resume = 1;
  o.stop_after = 0;
  CHECK_OK(cd_pretrain_run(&o));
  static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                      "text_encoder/model.safetensors", "vae/config.json"};
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/%s", a, files[i]);
    snprintf(q, sizeof q, "%s/%s", b, files[i]);
    CHECKF(file_eq(p, q), "%s differs after resuming", files[i]);
  }
  /* kept: encoder, UNet, text encoder; changed: decoder */
  static const wcheck w[] = {
      {"vae/diffusion_pytorch_model.safetensors", "encoder.conv_in.weight", 0},
      {"vae/diffusion_pytorch_model.safetensors", "quant_conv.weight", 0},
      {"vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.weight", 1},
      {"vae/diffusion_pytorch_model.safetensors", "post_quant_conv.weight", 1},
      {"unet/diffusion_pytorch_model.safetensors", "conv_out.weight", 0},
      {"text_encoder/model.safetensors", "text_model.final_layer_norm.weight", 0}};
  check_vs_shipped(a, w, 6);
  small_opts(&o, test_tmpdir("dec_bad"));
  o.decoder_only = 1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--init"));
}

/* --vae-tune with sprites: the whole VAE trains (encoder too) on a mix of
 * world scenes and generic sprites, the scaling factor and the UNet stay, an
 * interrupted run resumes to the same files; the sprites change what it
 * trains on (another loss from step 1), and the two VAE modes exclude each
 * other. */
static void tune_opts(cd_pretrain_opts *o, const char *out, float sprites) {
  decoder_opts(o, out);
  o->decoder_only = 0;
  o->vae_tune = 1;
  o->vae_sprites = sprites;
}

TEST(vae_tune) {
  char a[512], b[512], c[512], p[700], q[700];
  snprintf(a, sizeof a, "%s", test_tmpdir("tune_whole"));
  snprintf(b, sizeof b, "%s", test_tmpdir("tune_parts"));
  snprintf(c, sizeof c, "%s", test_tmpdir("tune_nospr"));
  cd_pretrain_opts o;
  tune_opts(&o, a, 0.5f);
  CHECK_OK(cd_pretrain_run(&o));
  tune_opts(&o, b, 0.5f);
  o.stop_after = 1;
  CHECK_OK(cd_pretrain_run(&o));
  o.resume = 1;
  o.stop_after = 0;
  CHECK_OK(cd_pretrain_run(&o));
  snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", a);
  snprintf(q, sizeof q, "%s/vae/diffusion_pytorch_model.safetensors", b);
  CHECK(file_eq(p, q));
  static const wcheck w[] = {
      {"vae/diffusion_pytorch_model.safetensors", "encoder.conv_in.weight", 1},
      {"vae/diffusion_pytorch_model.safetensors", "quant_conv.weight", 1},
      {"vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.weight", 1},
      {"unet/diffusion_pytorch_model.safetensors", "conv_out.weight", 0},
      {"text_encoder/model.safetensors", "text_model.final_layer_norm.weight", 0}};
  check_vs_shipped(a, w, 5);
  tune_opts(&o, c, 0);
  CHECK_OK(cd_pretrain_run(&o));
  double l1[2], l0[2];
  snprintf(p, sizeof p, "%s/%s", a, CD_PRETRAIN_LOG);
  snprintf(q, sizeof q, "%s/%s", c, CD_PRETRAIN_LOG);
  CHECK(read_losses(p, "vae", l1, 2) == 2 && read_losses(q, "vae", l0, 2) == 2);
  CHECKF(l1[0] != l0[0], "sprites did not change the first batch (loss %.9g both)", l1[0]);
  tune_opts(&o, test_tmpdir("tune_bad"), 0.5f);
  o.decoder_only = 1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--decoder-only"));
  tune_opts(&o, test_tmpdir("tune_bad2"), 1.5f);
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--vae-sprites"));
  tune_opts(&o, test_tmpdir("tune_bad3"), 0.5f);
  o.init = NULL;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--init"));
}

/* `cdiff pretrain --device`: every graph of a run on a backend that keeps its
 * own copies of the weights (host_memory 0; here the CPU's kernels on copies,
 * the way the CUDA backend holds them in GPU memory). A run that read or
 * wrote the host arrays where the device holds the values (the optimizer's
 * weights, the EMA, the model written, the state) would write other files
 * than the CPU run; with both phases, EMA, offset noise and a resume in
 * between, they are the same bytes. */
static cd_backend devcopy;

TEST(device_copies) {
  devcopy = *cd_backend_cpu();
  devcopy.name = "device-copies";
  devcopy.host_memory = 0;
  char a[512], b[512], p[700], q[700];
  snprintf(a, sizeof a, "%s", test_tmpdir("dev_cpu"));
  snprintf(b, sizeof b, "%s", test_tmpdir("dev_copies"));
  cd_pretrain_opts o;
  small_opts(&o, a);
  o.ema = 0.9f;
  CHECK_OK(cd_pretrain_run(&o));
  cd_backend_set_default(&devcopy);
  small_opts(&o, b);
  o.ema = 0.9f;
  o.stop_after = 4; /* into the UNet phase */
  int rc1 = cd_pretrain_run(&o);
  o.resume = 1;
  o.stop_after = 0;
  int rc2 = cd_pretrain_run(&o);
  cd_backend_set_default(NULL);
  CHECK_OK(rc1);
  CHECK_OK(rc2);
  static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                      "text_encoder/model.safetensors", "vae/config.json", CD_PRETRAIN_STATE};
  for (int i = 0; i < 5; i++) {
    snprintf(p, sizeof p, "%s/%s", a, files[i]);
    snprintf(q, sizeof q, "%s/%s", b, files[i]);
    CHECKF(file_eq(p, q), "%s differs between the CPU and the device-copies run", files[i]);
  }
  double l1[3], l2[3];
  snprintf(p, sizeof p, "%s/%s", a, CD_PRETRAIN_LOG);
  snprintf(q, sizeof q, "%s/%s", b, CD_PRETRAIN_LOG);
  CHECK(read_losses(p, "unet", l1, 3) == 3 && read_losses(q, "unet", l2, 3) == 3);
  for (int i = 0; i < 3; i++) CHECKF(l1[i] == l2[i], "UNet step %d: loss %.9g vs %.9g", i + 1, l1[i], l2[i]);
}

/* --vae-channels / --unet-channels: a model of other widths trains, is
 * written with them and loads; a resume without the flags keeps the state's
 * widths (same files as an uninterrupted run); a width that differs from the
 * state's or the init's is refused (width does not grow). */
TEST(channels) {
  char a[512], b[512], p[700], q[700];
  snprintf(a, sizeof a, "%s", test_tmpdir("wide_whole"));
  snprintf(b, sizeof b, "%s", test_tmpdir("wide_parts"));
  static const int vc[4] = {8, 16, 24, 32}, uc[2] = {32, 64};
  cd_pretrain_opts o;
  small_opts(&o, a);
  memcpy(o.vae_channels, vc, sizeof vc);
  memcpy(o.unet_channels, uc, sizeof uc);
  CHECK_OK(cd_pretrain_run(&o));
  small_opts(&o, b);
  memcpy(o.vae_channels, vc, sizeof vc);
  memcpy(o.unet_channels, uc, sizeof uc);
  o.stop_after = 4;
  CHECK_OK(cd_pretrain_run(&o));
  small_opts(&o, b); /* no width flags: the state's */
  o.resume = 1;
  CHECK_OK(cd_pretrain_run(&o));
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", a);
  snprintf(q, sizeof q, "%s/unet/diffusion_pytorch_model.safetensors", b);
  CHECK(file_eq(p, q));
  cd_sd_model *m = NULL;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(a, &lo, &m));
  if (m) {
    for (int i = 0; i < 4; i++) CHECKF(m->vae.cfg.block_out[i] == vc[i], "VAE level %d: %d channels", i, m->vae.cfg.block_out[i]);
    for (int i = 0; i < 2; i++) CHECKF(m->unet.cfg.block_out[i] == uc[i], "UNet level %d: %d channels", i, m->unet.cfg.block_out[i]);
    cd_sd_free(m);
  }
  small_opts(&o, b); /* the state's widths differ from the flag's */
  o.resume = 1;
  o.unet_channels[0] = 48, o.unet_channels[1] = 96;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--unet-channels"));
  small_opts(&o, test_tmpdir("wide_init")); /* the shipped model is 16,32,32,64 */
  o.init = SHIPPED;
  memcpy(o.vae_channels, vc, sizeof vc);
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--vae-channels"));
  small_opts(&o, test_tmpdir("wide_bad"));
  o.vae_channels[0] = 12, o.vae_channels[1] = o.vae_channels[2] = o.vae_channels[3] = 16;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "multiple of 8"));
}

/* one UNet evaluation of model dir on fixed inputs into y (2*4*8*8 floats); 0 ok */
static int unet_eval(const char *dir, float *y) {
  cd_sd_model *m = NULL;
  cd_load_opts lo = {.weights_dtype = "f32"};
  if (cd_sd_load(dir, &lo, &m)) return -1;
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 4, (int64_t[]){2, 4, 8, 8}), *t = cd_input(g, "t", 1, (int64_t[]){2});
  cd_node *c = cd_input(g, "c", 3, (int64_t[]){2, 77, m->unet.cfg.context_dim});
  cd_node *out = cd_unet_build(g, &m->unet, NULL, x, t, c);
  cd_graph_output(g, out);
  int rc = cd_graph_plan(g, NULL);
  if (!rc) {
    test_fill_uniform(x->data, x->n, -1.5f, 1.5f, 11);
    test_fill_uniform(c->data, c->n, -1, 1, 12);
    t->data[0] = 250, t->data[1] = 800;
    rc = cd_graph_forward(g);
  }
  if (!rc) rc = cd_graph_get(g, out, y);
  cd_graph_free(g);
  cd_sd_free(m);
  return rc;
}

/* the shipped model (2 layers per block) grown to 3, trained `steps` steps, written in f32 to out */
static void grow_opts(cd_pretrain_opts *o, const char *out, int steps) {
  small_opts(o, out);
  o->init = SHIPPED;
  o->unet_layers = 3;
  o->unet_steps = steps;
  o->f32 = 1;
}

/* --unet-layers 3 with an --init of 2 layers per block inserts blocks that
 * start as the identity: before any step the grown UNet computes what the
 * shipped one computes. Exactly: every new block adds a residual branch whose
 * last layer is zero (x + 0 = x), and a new up ResNet's shortcut multiplies
 * by 1 and 0. Then it trains (its new blocks move), and a grown model cannot
 * shrink back. */
TEST(grow_identity) {
  char a[512], p[700];
  snprintf(a, sizeof a, "%s", test_tmpdir("grown"));
  cd_pretrain_opts o;
  grow_opts(&o, a, 0);
  CHECK_OK(cd_pretrain_run(&o));
  enum { N = 2 * 4 * 8 * 8 };
  float y0[N], y1[N];
  CHECK_OK(unet_eval(SHIPPED, y0));
  CHECK_OK(unet_eval(a, y1));
  double worst = 0, mag = 0;
  for (int i = 0; i < N; i++) worst = fmax(worst, fabs((double)y1[i] - y0[i])), mag = fmax(mag, fabs(y0[i]));
  CHECKF(worst == 0 && mag > 0.1, "grown UNet differs from its init by %g (output magnitude %g)", worst, mag);
  /* the grown UNet has the new blocks, and they train */
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", a);
  int64_t n0 = 0, n1 = 0;
  float *z = read_tensor(p, "down_blocks.0.resnets.2.conv2.weight", &n0);
  CHECK(z && n0 == 48 * 48 * 9);
  int64_t nonzero = 0;
  for (int64_t k = 0; z && k < n0; k++) nonzero += z[k] != 0;
  CHECK(nonzero == 0);
  snprintf(a, sizeof a, "%s", test_tmpdir("grown_trained"));
  grow_opts(&o, a, 2);
  CHECK_OK(cd_pretrain_run(&o));
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", a);
  float *z1 = read_tensor(p, "down_blocks.0.resnets.2.conv2.weight", &n1);
  double moved = 0;
  for (int64_t k = 0; z1 && k < n1; k++) moved += fabs(z1[k]);
  CHECK(z1 && n1 == n0 && moved > 0);
  free(z), free(z1);
  /* without the flag, --init and --resume keep the depth they find */
  small_opts(&o, test_tmpdir("keep_depth"));
  o.init = a;
  o.stop_after = 1;
  CHECK_OK(cd_pretrain_run(&o));
  o.resume = 1;
  o.stop_after = 0;
  CHECKF(cd_pretrain_run(&o) == 0, "resuming a grown state: %s", cd_last_error());
  /* fewer layers than the init: refused, naming the flag */
  small_opts(&o, test_tmpdir("shrink"));
  o.init = a;
  o.unet_layers = 1;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--unet-layers"));
  small_opts(&o, test_tmpdir("bad_layers"));
  o.unet_layers = 9;
  CHECK(cd_pretrain_run(&o) == -1 && strstr(cd_last_error(), "--unet-layers"));
}

int main(void) {
  test_pin_threads(); /* resumed and whole runs are compared bit for bit (test.h) */
  cd_threads_init();
  RUN(reproduces_shipped_log);
  RUN(resume_bit_exact);
  RUN(bad_options);
  RUN(offset_noise);
  RUN(object_weight);
  RUN(unet_sprites);
  RUN(init_and_ema);
  RUN(decoder_only);
  RUN(vae_tune);
  RUN(device_copies);
  RUN(channels);
  RUN(grow_identity);
  test_tmp_cleanup();
  return test_summary();
}
