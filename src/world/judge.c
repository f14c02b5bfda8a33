/* judge.c - the world-attribute classifier (see judge.h). */
#include "world/judge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/progress.h"
#include "io/tensor_file.h"
#include "pretrain/paramset.h"
#include "models/vae.h"

#define R CD_WORLD_RES
/* 3x3 convolutions: channels and strides. The first layers keep the full and
 * half resolution, where object outlines (a star's points, a cross's arms)
 * are still a few pixels wide; four stride-1 layers 64x64 -> 4x4 lost them. */
#define NCONV 6
static const int chans[NCONV + 1] = {3, 16, 32, 32, 64, 64, 64};
static const int strides[NCONV] = {1, 2, 1, 2, 2, 2};
#define HIDDEN 256
#define FLAT (64 * 4 * 4)

static void put(cd_judge *j, const char *name, int ndim, const int64_t *ne, int kind, uint64_t seed) {
  int64_t n = cd_numel(ndim, ne), fan = 1;
  for (int d = 1; d < ndim; d++) fan *= ne[d];
  float *x = cd_malloc((size_t)n * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, cd_fnv1a(name, strlen(name)) ^ (seed * 0x9e3779b97f4a7c15ULL));
  if (kind == 0) {
    cd_rng_fill_normal(&r, x, (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] *= (float)(1.0 / sqrt((double)fan));
  } else {
    for (int64_t i = 0; i < n; i++) x[i] = kind == 1 ? 1.0f : 0.0f;
  }
  cd_weights_put(j->w, name, ndim, ne, x);
}

int cd_judge_new(uint64_t seed, cd_judge **out) {
  cd_judge *j = cd_calloc(1, sizeof *j);
  j->w = cd_weights_new();
  char n[64];
  for (int i = 0; i < NCONV; i++) {
    snprintf(n, sizeof n, "conv%d.weight", i);
    put(j, n, 4, (int64_t[]){chans[i + 1], chans[i], 3, 3}, 0, seed);
    snprintf(n, sizeof n, "conv%d.bias", i);
    put(j, n, 1, (int64_t[]){chans[i + 1]}, 2, seed);
    snprintf(n, sizeof n, "norm%d.weight", i);
    put(j, n, 1, (int64_t[]){chans[i + 1]}, 1, seed);
    snprintf(n, sizeof n, "norm%d.bias", i);
    put(j, n, 1, (int64_t[]){chans[i + 1]}, 2, seed);
  }
  put(j, "fc1.weight", 2, (int64_t[]){HIDDEN, FLAT}, 0, seed);
  put(j, "fc1.bias", 1, (int64_t[]){HIDDEN}, 2, seed);
  put(j, "fc2.weight", 2, (int64_t[]){CD_JUDGE_NOUT, HIDDEN}, 0, seed);
  put(j, "fc2.bias", 1, (int64_t[]){CD_JUDGE_NOUT}, 2, seed);
  *out = j;
  return 0;
}

void cd_judge_free(cd_judge *j) {
  if (!j) return;
  cd_weights_free(j->w);
  free(j);
}

int cd_judge_save(const cd_judge *j, const char *path) {
  int n = cd_weights_count(j->w);
  cd_tensor_out *t = cd_calloc((size_t)n, sizeof *t);
  for (int i = 0; i < n; i++) {
    cd_weight *x = cd_weights_at(j->w, i);
    t[i] = (cd_tensor_out){.name = x->name, .dtype = CD_DT_F32, .ndim = x->ndim, .data = cd_weight_f32(x)};
    for (int d = 0; d < x->ndim; d++) t[i].shape[d] = x->ne[d];
  }
  const char *meta[] = {"format", "cdiff-world-judge"};
  int rc = cd_safetensors_write(path, t, n, meta, 1);
  free(t);
  return rc;
}

int cd_judge_load(const char *path, cd_judge **out) {
  *out = NULL;
  cd_tensor_file *f;
  if (cd_safetensors_open(path, &f)) return cd_prefix_error("judge");
  const char *fmt = cd_tf_meta(f, "format");
  if (!fmt || strcmp(fmt, "cdiff-world-judge")) {
    cd_tensor_file_close(f);
    return cd_set_error("judge %s: not a cdiff world judge (metadata format)", path);
  }
  cd_judge *j;
  cd_judge_new(0, &j);
  for (int i = 0; i < cd_weights_count(j->w); i++) {
    cd_weight *x = cd_weights_at(j->w, i);
    const cd_tensor_info *t = cd_tf_find(f, x->name);
    if (!t || cd_tensor_numel(t) != cd_numel(x->ndim, x->ne) || cd_tf_read_f32(f, t, cd_weight_f32(x))) {
      cd_tensor_file_close(f);
      cd_judge_free(j);
      return cd_set_error("judge %s: tensor %s missing or mis-shaped", path, x->name);
    }
  }
  cd_tensor_file_close(f);
  *out = j;
  return 0;
}

cd_node *cd_judge_build(cd_graph *g, cd_judge *j, cd_node *img) {
  int64_t B = img->ne[0];
  cd_node *h = img;
  for (int i = 0; i < NCONV; i++) {
    int64_t co = chans[i + 1], ci = chans[i];
    h = cd_conv2d(g, h, cd_w(g, j->w, CD_SHAPE(co, ci, 3, 3), "conv%d.weight", i), cd_w(g, j->w, CD_SHAPE(co), "conv%d.bias", i),
                  strides[i], 1);
    h = cd_silu(g, cd_group_norm(g, h, cd_w(g, j->w, CD_SHAPE(co), "norm%d.weight", i), cd_w(g, j->w, CD_SHAPE(co), "norm%d.bias", i), 8, 1e-5f));
  }
  h = cd_view(g, h, 2, (int64_t[]){B, FLAT});
  h = cd_silu(g, cd_linear(g, h, cd_w(g, j->w, CD_SHAPE(HIDDEN, FLAT), "fc1.weight"), cd_w(g, j->w, CD_SHAPE(HIDDEN), "fc1.bias")));
  return cd_linear(g, h, cd_w(g, j->w, CD_SHAPE(CD_JUDGE_NOUT, HIDDEN), "fc2.weight"), cd_w(g, j->w, CD_SHAPE(CD_JUDGE_NOUT), "fc2.bias"));
}

void cd_judge_targets(const cd_world_scene *s, float *t) {
  for (int i = 0; i < CD_JUDGE_NOUT; i++) t[i] = -1.0f;
  for (int k = 0; k < 2; k++) {
    float *slot = t + k * CD_JUDGE_SLOT;
    if (k < s->nobj) {
      slot[s->obj[k].kind] = 1.0f;
      slot[CD_WORLD_NKINDS + 1 + s->obj[k].colour] = 1.0f;
    } else {
      slot[CD_WORLD_NKINDS] = 1.0f; /* none */
    }
  }
  t[CD_JUDGE_BG + s->bg_colour] = 1.0f;
  t[CD_JUDGE_PATTERN + s->pattern] = 1.0f;
}

static int argmax(const float *x, int n) {
  int b = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[b]) b = i;
  return b;
}

void cd_judge_read(const float *o, cd_judge_verdict *v) {
  memset(v, 0, sizeof *v);
  for (int k = 0; k < 2; k++) {
    const float *slot = o + k * CD_JUDGE_SLOT;
    int kind = argmax(slot, CD_WORLD_NKINDS + 1);
    if (kind == CD_WORLD_NKINDS) continue;
    v->kind[kind] = 1;
    v->colour[argmax(slot + CD_WORLD_NKINDS + 1, CD_WORLD_NCOLOURS)] = 1;
  }
  v->bg = argmax(o + CD_JUDGE_BG, CD_WORLD_NCOLOURS);
  v->pattern = argmax(o + CD_JUDGE_PATTERN, CD_WORLD_NPATTERNS);
}

static void augment(cd_rng *r, float *px, float *tmp);

/* a CD_WORLD_ANY scene, blurred and noised as generations may be */
static void augmented(cd_rng *r, cd_world_scene *s, float *px, float *tmp) {
  cd_world_sample(r, CD_WORLD_ANY, s);
  cd_world_render(s, px);
  augment(r, px, tmp);
}

/* 0-2 box-filter passes and Gaussian noise of sigma up to 0.08, in place */
static void augment(cd_rng *r, float *px, float *tmp) {
  int passes = (int)(cd_rng_uniform(r) * 3);
  for (int p = 0; p < passes; p++)
    for (int c = 0; c < 3; c++) {
      float *x = px + c * R * R;
      memcpy(tmp, x, R * R * sizeof(float));
      for (int y = 0; y < R; y++)
        for (int xx = 0; xx < R; xx++) {
          float acc = 0;
          int cnt = 0;
          for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++) {
              int yy = y + dy, xq = xx + dx;
              if (yy < 0 || yy >= R || xq < 0 || xq >= R) continue;
              acc += tmp[yy * R + xq];
              cnt++;
            }
          x[y * R + xx] = acc / cnt;
        }
    }
  float sigma = (float)(cd_rng_uniform(r) * 0.08);
  for (int i = 0; i < 3 * R * R; i++) px[i] += sigma * (float)cd_rng_normal(r);
}


/* ---- the autoencoder round trip: what generations look like after decoding ---- */

typedef struct {
  cd_vae *vae;
  int n;
  cd_graph *ge, *gd;
  cd_node *img, *mom, *z, *rec;
  float *mh, *eps, *zb;
} roundtrip;

static void rt_free(roundtrip *t) {
  cd_graph_free(t->ge);
  cd_graph_free(t->gd);
  free(t->mh);
  free(t->eps);
  free(t->zb);
  memset(t, 0, sizeof *t);
}

static int rt_init(roundtrip *t, cd_vae *vae, int n) {
  memset(t, 0, sizeof *t);
  t->vae = vae;
  t->n = n;
  const int Z = vae->cfg.latent_channels, h = R / 8;
  cd_paramset_clear_nodes(vae->w);
  t->ge = cd_graph_new();
  t->gd = cd_graph_new();
  t->img = cd_input(t->ge, "image", 4, (int64_t[]){n, 3, R, R});
  t->mom = cd_vae_encode_build(t->ge, vae, t->img);
  cd_graph_output(t->ge, t->mom);
  t->z = cd_input(t->gd, "z", 4, (int64_t[]){n, Z, h, h});
  t->rec = cd_vae_decode_build(t->gd, vae, t->z);
  cd_graph_output(t->gd, t->rec);
  t->mh = cd_malloc((size_t)n * 2 * Z * h * h * sizeof(float));
  t->eps = cd_malloc((size_t)n * Z * h * h * sizeof(float));
  t->zb = cd_malloc((size_t)n * Z * h * h * sizeof(float));
  if (cd_graph_plan(t->ge, NULL) || cd_graph_plan(t->gd, NULL)) {
    rt_free(t);
    return cd_prefix_error("judge: autoencoder round trip");
  }
  return 0;
}

/* px [n, 3, R, R]: encoded, a posterior sample decoded, clamped to [-1, 1], in place */
static int rt_run(roundtrip *t, cd_rng *r, float *px) {
  const int64_t per = (int64_t)t->vae->cfg.latent_channels * (R / 8) * (R / 8);
  if (cd_graph_set_input(t->ge, t->img, px) || cd_graph_forward(t->ge) || cd_graph_get(t->ge, t->mom, t->mh)) return -1;
  cd_rng_fill_normal(r, t->eps, (size_t)(t->n * per));
  for (int b = 0; b < t->n; b++) cd_vae_latent_sample(t->mh + b * 2 * per, t->eps + b * per, 1.0f, per, t->zb + b * per);
  if (cd_graph_set_input(t->gd, t->z, t->zb) || cd_graph_forward(t->gd) || cd_graph_get(t->gd, t->rec, px)) return -1;
  for (int64_t i = 0; i < (int64_t)t->n * 3 * R * R; i++) px[i] = px[i] < -1 ? -1 : px[i] > 1 ? 1 : px[i];
  return 0;
}

/* the output groups read by argmax: [start, start + n) */
static const int group_start[6] = {0, CD_WORLD_NKINDS + 1, CD_JUDGE_SLOT, CD_JUDGE_SLOT + CD_WORLD_NKINDS + 1, CD_JUDGE_BG,
                                   CD_JUDGE_PATTERN};
static const int group_n[6] = {CD_WORLD_NKINDS + 1, CD_WORLD_NCOLOURS, CD_WORLD_NKINDS + 1, CD_WORLD_NCOLOURS, CD_WORLD_NCOLOURS,
                               CD_WORLD_NPATTERNS};

/* Softmax cross-entropy of each group against the class whose target is +1
 * (a group without one, the colour of an empty slot, is left out), averaged
 * over the batch. gout receives d(loss)/d(out). Returns the loss. */
static double cross_entropy(const float *out, const float *t, int B, float *gout) {
  double loss = 0;
  for (int b = 0; b < B; b++)
    for (int q = 0; q < 6; q++) {
      const float *o = out + (int64_t)b * CD_JUDGE_NOUT + group_start[q], *tg = t + (int64_t)b * CD_JUDGE_NOUT + group_start[q];
      float *g = gout + (int64_t)b * CD_JUDGE_NOUT + group_start[q];
      int n = group_n[q], y = -1;
      for (int i = 0; i < n; i++)
        if (tg[i] > 0) y = i;
      if (y < 0) {
        for (int i = 0; i < n; i++) g[i] = 0;
        continue;
      }
      double mx = o[0], z = 0;
      for (int i = 1; i < n; i++) mx = o[i] > mx ? o[i] : mx;
      for (int i = 0; i < n; i++) z += exp(o[i] - mx);
      loss += (log(z) + mx - o[y]) / B;
      for (int i = 0; i < n; i++) g[i] = (float)((exp(o[i] - mx) / z - (i == y)) / B);
    }
  return loss;
}

int cd_judge_train(cd_judge *j, int steps, int batch, float lr, uint64_t seed, int quiet) {
  cd_judge_train_opts o = {.steps = steps, .batch = batch, .lr = lr, .seed = seed, .quiet = quiet};
  return cd_judge_train_ex(j, &o);
}

int cd_judge_train_ex(cd_judge *j, const cd_judge_train_opts *op) {
  const int steps = op->steps, batch = op->batch, quiet = op->quiet, nv = op->vae ? op->vae_images : 0;
  const float lr = op->lr;
  const uint64_t seed = op->seed;
  if (nv < 0 || nv > batch) return cd_set_error("judge: %d autoencoder images of a batch of %d", nv, batch);
  roundtrip rt = {0};
  if (nv && rt_init(&rt, op->vae, nv)) return -1;
  cd_paramset_clear_nodes(j->w);
  cd_graph *g = cd_graph_new();
  cd_node *img = cd_input(g, "image", 4, (int64_t[]){batch, 3, R, R});
  cd_node *out = cd_judge_build(g, j, img);
  /* the loss is computed on the host; the graph's loss sum(out * gout) has its gradient */
  cd_node *gin = cd_input(g, "dloss_dout", 2, (int64_t[]){batch, CD_JUDGE_NOUT});
  cd_node *loss = cd_sum(g, cd_mul(g, out, gin));
  cd_graph_output(g, out);
  cd_graph_output(g, gin);
  cd_paramset_mark_trainable(j->w);
  cd_plan_opts po = {.training = 1, .loss = loss};
  if (cd_graph_plan(g, &po)) { cd_graph_free(g); return cd_prefix_error("judge training graph"); }
  cd_paramset ps;
  cd_paramset_init(&ps, g);
  int rc = cd_paramset_add(&ps, j->w, "judge", NULL);
  float *tmp = cd_malloc(R * R * sizeof(float)), *px = cd_malloc((size_t)batch * 3 * R * R * sizeof(float));
  float *t = cd_malloc((size_t)batch * CD_JUDGE_NOUT * sizeof(float)), *o = cd_malloc((size_t)batch * CD_JUDGE_NOUT * sizeof(float));
  float *go = cd_malloc((size_t)batch * CD_JUDGE_NOUT * sizeof(float));
  cd_progress pg;
  cd_progress_start(&pg, "judge", steps);
  pg.quiet = quiet;
  for (int s = 0; s < steps && !rc; s++) {
    cd_rng r;
    cd_rng_seed(&r, seed * 0x9e3779b97f4a7c15ULL + (uint64_t)s);
    for (int b = 0; b < batch; b++) {
      cd_world_scene sc;
      if (b < nv) { /* clean renders, through the autoencoder below */
        cd_world_sample(&r, CD_WORLD_ANY, &sc);
        cd_world_render(&sc, px + (int64_t)b * 3 * R * R);
      } else {
        augmented(&r, &sc, px + (int64_t)b * 3 * R * R, tmp);
      }
      cd_judge_targets(&sc, t + (int64_t)b * CD_JUDGE_NOUT);
    }
    if (nv && rt_run(&rt, &r, px)) { rc = -1; break; }
    rc = cd_graph_set_input(g, img, px) || cd_graph_forward(g) || cd_graph_get(g, out, o) ? -1 : 0;
    double l = rc ? 0 : cross_entropy(o, t, batch, go);
    if (!rc) rc = cd_graph_set_input(g, gin, go) || cd_graph_backward(g) ? -1 : 0;
    cd_adamw_opts hp = {.lr = (float)cd_pretrain_lr(lr, s, steps), .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .max_grad_norm = 1.0f};
    cd_optim_report rep;
    if (!rc) rc = cd_optim_adamw_step(ps.o, &hp, &rep);
    cd_progress_set_loss(&pg, l);
    cd_progress_update(&pg, s + 1);
  }
  cd_progress_finish(&pg);
  if (!rc) rc = cd_paramset_sync(&ps);
  cd_paramset_free(&ps);
  free(tmp);
  free(px);
  free(t);
  free(o);
  free(go);
  cd_graph_free(g);
  rt_free(&rt);
  return rc;
}

int cd_judge_classify(cd_judge *j, const float *rgb, int n, cd_judge_verdict *v) {
  cd_paramset_clear_nodes(j->w);
  cd_graph *g = cd_graph_new();
  cd_node *img = cd_input(g, "image", 4, (int64_t[]){n, 3, R, R});
  cd_node *out = cd_judge_build(g, j, img);
  cd_graph_output(g, out);
  float *o = cd_malloc((size_t)n * CD_JUDGE_NOUT * sizeof(float));
  int rc = cd_graph_plan(g, NULL) ? cd_prefix_error("judge graph") : 0;
  if (!rc) rc = cd_graph_set_input(g, img, rgb) || cd_graph_forward(g) || cd_graph_get(g, out, o) ? -1 : 0;
  for (int i = 0; i < n && !rc; i++) cd_judge_read(o + (int64_t)i * CD_JUDGE_NOUT, &v[i]);
  free(o);
  cd_graph_free(g);
  return rc;
}

int cd_judge_test(cd_judge *j, int n, uint64_t seed, cd_judge_accuracy *acc) { return cd_judge_test_vae(j, n, seed, NULL, acc); }

int cd_judge_test_vae(cd_judge *j, int n, uint64_t seed, cd_vae *vae, cd_judge_accuracy *acc) {
  float *px = cd_malloc((size_t)n * 3 * R * R * sizeof(float)), *tmp = cd_malloc(R * R * sizeof(float));
  cd_world_scene *sc = cd_malloc((size_t)n * sizeof *sc);
  cd_judge_verdict *v = cd_malloc((size_t)n * sizeof *v);
  cd_rng r;
  cd_rng_seed(&r, seed);
  int rc = 0;
  for (int i = 0; i < n; i++) {
    if (vae) { /* clean renders through the autoencoder, as generations are decoded */
      cd_world_sample(&r, CD_WORLD_ANY, &sc[i]);
      cd_world_render(&sc[i], px + (int64_t)i * 3 * R * R);
    } else {
      augmented(&r, &sc[i], px + (int64_t)i * 3 * R * R, tmp);
    }
  }
  if (vae) { /* in chunks of 50: the autoencoder's activations at 64x64 are large */
    roundtrip rt;
    for (int i = 0; i < n && !rc; i += 50) {
      int k = n - i < 50 ? n - i : 50;
      rc = rt_init(&rt, vae, k);
      if (!rc) {
        rc = rt_run(&rt, &r, px + (int64_t)i * 3 * R * R);
        rt_free(&rt);
      }
    }
  }
  if (!rc) rc = cd_judge_classify(j, px, n, v);
  memset(acc, 0, sizeof *acc);
  int robots = 0, ducks = 0, kinds_seen = 0;
  for (int i = 0; i < n && !rc; i++) {
    int kind[CD_WORLD_NKINDS] = {0}, col[CD_WORLD_NCOLOURS] = {0}, ok = 1, okc = 1;
    for (int k = 0; k < sc[i].nobj; k++) {
      kind[sc[i].obj[k].kind] = 1;
      col[sc[i].obj[k].colour] = 1;
    }
    for (int k = 0; k < CD_WORLD_NKINDS; k++) ok &= v[i].kind[k] == kind[k];
    for (int k = 0; k < CD_WORLD_NCOLOURS; k++) okc &= v[i].colour[k] == col[k];
    if (kind[CD_WORLD_ROBOT]) { robots++; acc->robot_hit += v[i].kind[CD_WORLD_ROBOT]; }
    else acc->robot_false += v[i].kind[CD_WORLD_ROBOT];
    if (kind[CD_WORLD_DUCK]) { ducks++; acc->duck_hit += v[i].kind[CD_WORLD_DUCK]; }
    else acc->duck_false += v[i].kind[CD_WORLD_DUCK];
    for (int k = 0; k < sc[i].nobj; k++) {
      kinds_seen++;
      acc->kind_recall += v[i].kind[sc[i].obj[k].kind];
    }
    acc->kinds += ok;
    acc->colours += okc;
    acc->bg += v[i].bg == sc[i].bg_colour;
    acc->pattern += v[i].pattern == sc[i].pattern;
  }
  acc->robot_hit /= robots > 0 ? robots : 1;
  acc->robot_false /= n - robots > 0 ? n - robots : 1;
  acc->duck_hit /= ducks > 0 ? ducks : 1;
  acc->duck_false /= n - ducks > 0 ? n - ducks : 1;
  acc->kind_recall /= kinds_seen > 0 ? kinds_seen : 1;
  acc->kinds /= n;
  acc->colours /= n;
  acc->bg /= n;
  acc->pattern /= n;
  free(px);
  free(tmp);
  free(sc);
  free(v);
  return rc;
}

int cd_judge_verdict_format(const cd_judge_verdict *v, char *out, size_t cap) {
  char kinds[256] = "", cols[128] = "";
  size_t a = 0, b = 0;
  for (int k = 0; k < CD_WORLD_NKINDS; k++)
    if (v->kind[k]) a += (size_t)snprintf(kinds + a, sizeof kinds - a, "%s%s", a ? " " : "", cd_world_kind_name(k));
  for (int k = 0; k < CD_WORLD_NCOLOURS; k++)
    if (v->colour[k]) b += (size_t)snprintf(cols + b, sizeof cols - b, " %s", cd_world_colour_name(k));
  return snprintf(out, cap, "%s%s| colours%s | background %s %s", kinds, a ? " " : "", cols, cd_world_colour_name(v->bg),
                  cd_world_pattern_name(v->pattern));
}
