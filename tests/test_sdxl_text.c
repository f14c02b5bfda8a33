/* test_sdxl_text.c - SDXL's two text encoders: the pooled position, the penultimate
 * hidden states of both concatenated to one context, the pooled projected output of
 * the second (forward and the gradient of both encoders' added-token rows against
 * central finite differences of a double-precision reference), and loading both
 * encoders and tokenizers from a diffusers folder and from an SGM single file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "custom/delta.h"
#include "custom/compress.h"
#include "custom/merge.h"
#include "custom/train.h"
#include "diffusion/pipeline.h"
#include "diffusion/sdxl_cond.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/clip.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "models/tokenizer.h"
#include "test.h"

#define T CD_TOK_MAX_LEN

/* ------------------------------------------------------------ pooled position */

TEST(pool_select_rules) {
  cd_clip_config c = {0};
  int ids[2 * T] = {0};
  /* row 0: SOS a b EOS pad(0)...; row 1: SOS <new1> b EOS pad */
  ids[0] = 49406, ids[1] = 320, ids[2] = 321, ids[3] = 49407;
  ids[T + 0] = 49406, ids[T + 1] = 49408, ids[T + 2] = 321, ids[T + 3] = 49407;
  for (int j = 4; j < T; j++) ids[T + j] = 49407; /* EOS padding: argmax is the first EOS */
  float sel[2 * T];
  cd_clip_pool_select(&c, ids, 2, T, sel);
  for (int j = 0; j < T; j++) {
    CHECKF(sel[j] == (j == 3), "row 0 position %d: %g", j, sel[j]);
    /* argmax finds the added token, as transformers (eos_token_id 2) and SGM do */
    CHECKF(sel[T + j] == (j == 1), "row 1 position %d: %g", j, sel[T + j]);
  }
  c.pool_id = 49407; /* configs with a real eos_token_id: its first position */
  cd_clip_pool_select(&c, ids, 2, T, sel);
  for (int j = 0; j < T; j++) CHECKF(sel[T + j] == (j == 3), "eos rule, position %d", j);
}

/* ------------------------------------------------------------ tiny encoders */

typedef struct {
  cd_clip m;
  int vocab;
} tiny_enc;

static float *rnd(int64_t n, float scale, uint64_t seed) {
  float *x = cd_malloc((size_t)n * sizeof(float));
  test_fill_uniform(x, (size_t)n, -scale, scale, seed);
  return x;
}

static void put(cd_weights *w, const char *name, int ndim, const int64_t *ne, float scale, uint64_t seed) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= ne[i];
  cd_weights_put(w, name, ndim, ne, rnd(n, scale, seed));
}

/* LayerNorm gammas near 1, everything else small and random */
static void make_enc(tiny_enc *e, int vocab, int d, int heads, int layers, int mlp, int quick, int proj,
                     uint64_t seed) {
  memset(e, 0, sizeof *e);
  cd_clip_config *c = &e->m.cfg;
  c->vocab = vocab, c->width = d, c->layers = layers, c->heads = heads, c->mlp = mlp;
  c->max_pos = T, c->quick_gelu = quick, c->proj = proj;
  e->vocab = vocab;
  cd_weights *w = e->m.w = cd_weights_new();
  char k[128];
  put(w, "text_model.embeddings.token_embedding.weight", 2, (int64_t[]){vocab, d}, 1.0f, seed++);
  put(w, "text_model.embeddings.position_embedding.weight", 2, (int64_t[]){T, d}, 0.5f, seed++);
  for (int l = 0; l < layers; l++) {
    static const char *const lin[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int i = 0; i < 4; i++) {
      snprintf(k, sizeof k, "text_model.encoder.layers.%d.self_attn.%s.weight", l, lin[i]);
      put(w, k, 2, (int64_t[]){d, d}, 0.6f, seed++);
      snprintf(k, sizeof k, "text_model.encoder.layers.%d.self_attn.%s.bias", l, lin[i]);
      put(w, k, 1, (int64_t[]){d}, 0.1f, seed++);
    }
    for (int i = 1; i <= 2; i++) {
      float *g = rnd(d, 0.2f, seed++);
      for (int j = 0; j < d; j++) g[j] += 1.0f;
      snprintf(k, sizeof k, "text_model.encoder.layers.%d.layer_norm%d.weight", l, i);
      cd_weights_put(w, k, 1, (int64_t[]){d}, g);
      snprintf(k, sizeof k, "text_model.encoder.layers.%d.layer_norm%d.bias", l, i);
      put(w, k, 1, (int64_t[]){d}, 0.1f, seed++);
    }
    snprintf(k, sizeof k, "text_model.encoder.layers.%d.mlp.fc1.weight", l);
    put(w, k, 2, (int64_t[]){mlp, d}, 0.5f, seed++);
    snprintf(k, sizeof k, "text_model.encoder.layers.%d.mlp.fc1.bias", l);
    put(w, k, 1, (int64_t[]){mlp}, 0.1f, seed++);
    snprintf(k, sizeof k, "text_model.encoder.layers.%d.mlp.fc2.weight", l);
    put(w, k, 2, (int64_t[]){d, mlp}, 0.4f, seed++);
    snprintf(k, sizeof k, "text_model.encoder.layers.%d.mlp.fc2.bias", l);
    put(w, k, 1, (int64_t[]){d}, 0.1f, seed++);
  }
  float *g = rnd(d, 0.2f, seed++);
  for (int j = 0; j < d; j++) g[j] += 1.0f;
  cd_weights_put(w, "text_model.final_layer_norm.weight", 1, (int64_t[]){d}, g);
  put(w, "text_model.final_layer_norm.bias", 1, (int64_t[]){d}, 0.1f, seed++);
  if (proj) put(w, "text_projection.weight", 2, (int64_t[]){proj, d}, 0.5f, seed++);
}

/* appends one row (the added token) to the token table; the config counts it */
static void add_row(tiny_enc *e, const float *row) {
  cd_weight *t = cd_weights_get(e->m.w, "text_model.embeddings.token_embedding.weight");
  const int64_t V0 = t->ne[0], d = t->ne[1];
  float *n = cd_malloc(sizeof(float) * (size_t)(V0 + 1) * d);
  memcpy(n, cd_weight_f32(t), sizeof(float) * (size_t)V0 * d);
  memcpy(n + V0 * d, row, sizeof(float) * (size_t)d);
  cd_weights_put(e->m.w, "text_model.embeddings.token_embedding.weight", 2, (int64_t[]){V0 + 1, d}, n);
  e->m.cfg.vocab = (int)(V0 + 1);
}

/* ------------------------------------------------------------ double reference */

static const float *wf(const tiny_enc *e, const char *fmt, int l) {
  char k[128];
  snprintf(k, sizeof k, fmt, l);
  cd_weight *x = cd_weights_get(e->m.w, k);
  return x ? cd_weight_f32(x) : NULL;
}

static void ln_d(const double *x, double *y, int n, const float *g, const float *b) {
  double mu = 0, var = 0;
  for (int i = 0; i < n; i++) mu += x[i];
  mu /= n;
  for (int i = 0; i < n; i++) var += (x[i] - mu) * (x[i] - mu);
  var /= n;
  double r = 1 / sqrt(var + 1e-5);
  for (int i = 0; i < n; i++) y[i] = (x[i] - mu) * r * g[i] + b[i];
}

static void lin_d(const double *x, double *y, int in, int out, const float *W, const float *b) {
  for (int o = 0; o < out; o++) {
    double s = b ? b[o] : 0;
    for (int i = 0; i < in; i++) s += W[(size_t)o * in + i] * x[i];
    y[o] = s;
  }
}

/* one prompt: pen [T, d] = hidden_states[-2]; pooled [proj] when e has a projection */
static void enc_ref(const tiny_enc *e, const int *ids, const double *extra, double *pen, double *pooled) {
  const cd_clip_config *c = &e->m.cfg;
  const int d = c->width, H = c->heads, hd = d / H, F = c->mlp;
  double *x = calloc((size_t)T * d, sizeof *x), *h = calloc((size_t)T * d, sizeof *h);
  double *q = calloc((size_t)T * d, sizeof *q), *k = calloc((size_t)T * d, sizeof *k);
  double *v = calloc((size_t)T * d, sizeof *v), *a = calloc((size_t)T * d, sizeof *a);
  double *f = calloc((size_t)F, sizeof *f), *s = calloc((size_t)T, sizeof *s), *o = calloc((size_t)d, sizeof *o);
  const float *tok = wf(e, "text_model.embeddings.token_embedding.weight", 0);
  const float *pos = wf(e, "text_model.embeddings.position_embedding.weight", 0);
  for (int t = 0; t < T; t++)
    for (int j = 0; j < d; j++)
      x[t * d + j] = (ids[t] < e->vocab ? tok[(size_t)ids[t] * d + j] : extra[(size_t)(ids[t] - e->vocab) * d + j]) +
                     pos[t * d + j];
  for (int l = 0; l < c->layers; l++) {
    for (int t = 0; t < T; t++) {
      ln_d(x + t * d, h + t * d, d, wf(e, "text_model.encoder.layers.%d.layer_norm1.weight", l),
           wf(e, "text_model.encoder.layers.%d.layer_norm1.bias", l));
      lin_d(h + t * d, q + t * d, d, d, wf(e, "text_model.encoder.layers.%d.self_attn.q_proj.weight", l),
            wf(e, "text_model.encoder.layers.%d.self_attn.q_proj.bias", l));
      lin_d(h + t * d, k + t * d, d, d, wf(e, "text_model.encoder.layers.%d.self_attn.k_proj.weight", l),
            wf(e, "text_model.encoder.layers.%d.self_attn.k_proj.bias", l));
      lin_d(h + t * d, v + t * d, d, d, wf(e, "text_model.encoder.layers.%d.self_attn.v_proj.weight", l),
            wf(e, "text_model.encoder.layers.%d.self_attn.v_proj.bias", l));
    }
    for (int hh = 0; hh < H; hh++)
      for (int t = 0; t < T; t++) {
        double mx = -1e300, z = 0;
        for (int u = 0; u <= t; u++) { /* causal */
          double dot = 0;
          for (int j = 0; j < hd; j++) dot += q[t * d + hh * hd + j] * k[u * d + hh * hd + j];
          s[u] = dot / sqrt((double)hd);
          if (s[u] > mx) mx = s[u];
        }
        for (int u = 0; u <= t; u++) z += s[u] = exp(s[u] - mx);
        for (int j = 0; j < hd; j++) {
          double acc = 0;
          for (int u = 0; u <= t; u++) acc += s[u] / z * v[u * d + hh * hd + j];
          a[t * d + hh * hd + j] = acc;
        }
      }
    for (int t = 0; t < T; t++) {
      lin_d(a + t * d, o, d, d, wf(e, "text_model.encoder.layers.%d.self_attn.out_proj.weight", l),
            wf(e, "text_model.encoder.layers.%d.self_attn.out_proj.bias", l));
      for (int j = 0; j < d; j++) x[t * d + j] += o[j];
      ln_d(x + t * d, h + t * d, d, wf(e, "text_model.encoder.layers.%d.layer_norm2.weight", l),
           wf(e, "text_model.encoder.layers.%d.layer_norm2.bias", l));
      lin_d(h + t * d, f, d, F, wf(e, "text_model.encoder.layers.%d.mlp.fc1.weight", l),
            wf(e, "text_model.encoder.layers.%d.mlp.fc1.bias", l));
      for (int j = 0; j < F; j++)
        f[j] = c->quick_gelu ? f[j] / (1 + exp(-1.702 * f[j])) : 0.5 * f[j] * (1 + erf(f[j] / sqrt(2.0)));
      lin_d(f, o, F, d, wf(e, "text_model.encoder.layers.%d.mlp.fc2.weight", l),
            wf(e, "text_model.encoder.layers.%d.mlp.fc2.bias", l));
      for (int j = 0; j < d; j++) x[t * d + j] += o[j];
    }
    if (l == c->layers - 2) memcpy(pen, x, (size_t)T * d * sizeof *x);
  }
  if (pooled) {
    int at = 0;
    for (int t = 1; t < T; t++)
      if (ids[t] > ids[at]) at = t;
    ln_d(x + at * d, o, d, wf(e, "text_model.final_layer_norm.weight", 0), wf(e, "text_model.final_layer_norm.bias", 0));
    lin_d(o, pooled, d, c->proj, wf(e, "text_projection.weight", 0), NULL);
  }
  free(x), free(h), free(q), free(k), free(v), free(a), free(f), free(s), free(o);
}

/* ------------------------------------------------------------ forward and gradient */

enum { V = 60, D1 = 8, D2 = 12, P2 = 6, NB = 2 };

/* two prompts: one with the added token (id V, which the pooled output then reads), one without */
static void prompt_ids(int *ids) {
  for (int b = 0; b < NB; b++) {
    int *r = ids + b * T;
    r[0] = V - 2; /* SOS */
    r[1] = 5 + b;
    r[2] = b == 0 ? V : 7; /* <new1> */
    r[3] = 11;
    r[4] = V - 1; /* EOS */
    for (int j = 5; j < T; j++) r[j] = 0; /* tokenizer_2's pad; encoder 1 sees the same ids here */
  }
}

/* loss = sum(r1 * concat(pen1, pen2)) + sum(r2 * pooled) in double */
static double loss_ref(const tiny_enc *e1, const tiny_enc *e2, const int *ids, const double *x1,
                       const double *x2, const float *r1, const float *r2, double *ctx, double *pooled) {
  double *p1 = malloc(T * D1 * sizeof *p1), *p2 = malloc(T * D2 * sizeof *p2);
  double L = 0;
  for (int b = 0; b < NB; b++) {
    enc_ref(e1, ids + b * T, x1, p1, NULL);
    enc_ref(e2, ids + b * T, x2, p2, pooled + b * P2);
    for (int t = 0; t < T; t++) {
      for (int j = 0; j < D1; j++) ctx[((size_t)b * T + t) * (D1 + D2) + j] = p1[t * D1 + j];
      for (int j = 0; j < D2; j++) ctx[((size_t)b * T + t) * (D1 + D2) + D1 + j] = p2[t * D2 + j];
    }
  }
  for (int i = 0; i < NB * T * (D1 + D2); i++) L += r1[i] * ctx[i];
  for (int i = 0; i < NB * P2; i++) L += r2[i] * pooled[i];
  free(p1), free(p2);
  return L;
}

TEST(two_encoder_concat_and_pooled_gradient) {
  tiny_enc e1, e2;
  make_enc(&e1, V, D1, 2, 3, 16, 1, 0, 100);  /* CLIP-L-like: quick_gelu, no projection */
  make_enc(&e2, V, D2, 3, 3, 24, 0, P2, 200); /* bigG-like: gelu, projection */
  int ids[NB * T];
  prompt_ids(ids);
  float *x1 = rnd(D1, 1.0f, 7), *x2 = rnd(D2, 1.0f, 8); /* the added token's row in each table */
  const int64_t nc = (int64_t)NB * T * (D1 + D2);
  float *r1 = rnd(nc, 1.0f, 9), *r2 = rnd(NB * P2, 1.0f, 10);
  float *ctx = malloc((size_t)nc * sizeof *ctx), pooled[NB * P2], g1[D1], g2[D2];

  /* the added token is the tables' last row (id V), as cd_sd_add_tokens leaves it; the
   * graph trains it as its own node (cd_w_rows), the reference reads x1/x2 for id V */
  add_row(&e1, x1);
  add_row(&e2, x2);
  cd_graph *g = cd_graph_new();
  cd_node *in = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){NB, T});
  cd_node *sel = cd_input(g, "sel", 3, (int64_t[]){NB, 1, T});
  cd_node *n1 = cd_w_rows(g, e1.m.w, V, V + 1, "text_model.embeddings.token_embedding.weight");
  cd_node *n2 = cd_w_rows(g, e2.m.w, V, V + 1, "text_model.embeddings.token_embedding.weight");
  cd_set_trainable(n1);
  cd_set_trainable(n2);
  cd_node *pool = NULL;
  cd_node *h1 = cd_clip_build_sdxl(g, &e1.m, in, n1, NULL, NULL);
  cd_node *h2 = cd_clip_build_sdxl(g, &e2.m, in, n2, sel, &pool);
  cd_node *c = cd_concat(g, h1, h2, 2);
  cd_node *loss = cd_add(g, cd_sum(g, cd_mul(g, c, cd_param(g, "r1", r1, 3, (int64_t[]){NB, T, D1 + D2}))),
                         cd_sum(g, cd_mul(g, pool, cd_param(g, "r2", r2, 2, (int64_t[]){NB, P2}))));
  cd_graph_output(g, c);
  cd_graph_output(g, pool);
  float selv[NB * T];
  cd_clip_pool_select(&e2.m.cfg, ids, NB, T, selv);
  cd_plan_opts po = {.training = 1, .loss = loss};
  int ok = !cd_graph_plan(g, &po) && !cd_graph_set_input_i32(g, in, ids) && !cd_graph_set_input(g, sel, selv) &&
           !cd_graph_forward(g) && !cd_graph_backward(g) && !cd_graph_get(g, c, ctx) && !cd_graph_get(g, pool, pooled) &&
           !cd_graph_get_grad(g, n1, g1) && !cd_graph_get_grad(g, n2, g2);
  if (!ok) fprintf(stderr, "graph: %s\n", cd_last_error());

  double *xd1 = malloc(D1 * sizeof *xd1), *xd2 = malloc(D2 * sizeof *xd2);
  for (int j = 0; j < D1; j++) xd1[j] = x1[j];
  for (int j = 0; j < D2; j++) xd2[j] = x2[j];
  double *cref = malloc((size_t)nc * sizeof *cref), pref[NB * P2];
  loss_ref(&e1, &e2, ids, xd1, xd2, r1, r2, cref, pref);
  /* forward: each value is a chain of three float32 layers of at most 24-term dot
   * products, LayerNorms and softmaxes over <= 77 terms: test.h's gamma(77) covers the
   * rounding of the longest sum with a wide margin per layer */
  double ec = 0, nrm = 0, ep = 0, np = 0;
  for (int64_t i = 0; i < nc; i++) ec += (ctx[i] - cref[i]) * (ctx[i] - cref[i]), nrm += cref[i] * cref[i];
  for (int i = 0; i < NB * P2; i++) ep += (pooled[i] - pref[i]) * (pooled[i] - pref[i]), np += pref[i] * pref[i];
  double ftol = 10 * test_gamma(77);
  /* central differences of the double reference (h = 1e-5: truncation O(h^2) and
   * cancellation O(1e-16/h) both far below the float32 gradient's own error) */
  double fd1[D1], fd2[D2], h = 1e-5, gn = 0, gd = 0, *tc = malloc((size_t)nc * sizeof *tc), tp[NB * P2];
  for (int j = 0; j < D1 + D2; j++) {
    double *x = j < D1 ? xd1 + j : xd2 + (j - D1), x0 = *x;
    *x = x0 + h;
    double lp = loss_ref(&e1, &e2, ids, xd1, xd2, r1, r2, tc, tp);
    *x = x0 - h;
    double lm = loss_ref(&e1, &e2, ids, xd1, xd2, r1, r2, tc, tp);
    *x = x0;
    double fd = (lp - lm) / (2 * h), an = j < D1 ? g1[j] : g2[j - D1];
    if (j < D1) fd1[j] = fd;
    else fd2[j - D1] = fd;
    gn += (an - fd) * (an - fd), gd += fd * fd;
  }
  double n1g = 0, n2g = 0;
  for (int j = 0; j < D1; j++) n1g += fd1[j] * fd1[j];
  for (int j = 0; j < D2; j++) n2g += fd2[j] * fd2[j];
  cd_graph_free(g);
  cd_weights_free(e1.m.w), cd_weights_free(e2.m.w);
  free(x1), free(x2), free(r1), free(r2), free(ctx), free(xd1), free(xd2), free(cref), free(tc);
  CHECK(ok);
  CHECKF(sqrt(ec / nrm) <= ftol, "context rel err %.3g > %.3g", sqrt(ec / nrm), ftol);
  CHECKF(sqrt(ep / np) <= ftol, "pooled rel err %.3g > %.3g", sqrt(ep / np), ftol);
  /* both tables' added rows get a gradient: encoder 1 through the context only,
   * encoder 2 through the context and the pooled output that reads the added token */
  CHECK(n1g > 0 && n2g > 0);
  /* test.h's op-check bound for gradients through a few float32 layers (1e-3 relative L2) */
  CHECKF(sqrt(gn / gd) <= 1e-3, "gradient rel err %.3g vs central differences", sqrt(gn / gd));
}

/* the penultimate output without a pooled one leaves the last layer and the final LayerNorm
 * unread but known (no unknown-key error), and needs no projection */
TEST(penultimate_marks_unread_weights) {
  tiny_enc e;
  make_enc(&e, V, D1, 2, 2, 16, 1, 4, 300);
  cd_graph *g = cd_graph_new();
  cd_node *in = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){1, T});
  cd_weights_clear_used(e.m.w);
  cd_node *y = cd_clip_build_sdxl(g, &e.m, in, NULL, NULL, NULL);
  cd_graph_output(g, y);
  int rc = cd_graph_plan(g, NULL);
  int unused = cd_weights_check_unused(e.m.w, "text encoder", "test");
  const char *err = cd_last_error();
  int shape_ok = y->ndim == 3 && y->ne[2] == D1;
  /* clip skip 2 (diffusers' SDXL clip_skip 1) reads hidden_states[-3] */
  CHECK_OK(cd_clip_set_skip(&e.m, 2));
  cd_graph *g2 = cd_graph_new();
  cd_node *in2 = cd_input_typed(g2, "ids", CD_TYPE_I32, 2, (int64_t[]){1, T});
  cd_node *y2 = cd_clip_build_sdxl(g2, &e.m, in2, NULL, NULL, NULL);
  int rc2 = cd_graph_plan(g2, NULL);
  const char *err2 = rc2 ? cd_last_error() : "";
  /* clip skip 2 of 2 layers reads the embeddings (hidden_states[0]); 3 is out of range */
  int y2_ok = y2->ndim == 3 && y2->ne[2] == D1;
  int bad3 = cd_clip_set_skip(&e.m, 3) != 0 && strstr(cd_last_error(), "--clip-skip") != NULL;
  cd_graph_free(g), cd_graph_free(g2);
  cd_weights_free(e.m.w);
  CHECKF(rc == 0, "plan: %s", err);
  CHECKF(unused == 0, "unused: %s", err);
  CHECK(shape_ok);
  CHECKF(rc2 == 0 && y2, "skip 2: %s", err2);
  CHECK(y2_ok);
  CHECK(bad3);
}

/* ------------------------------------------------------------ loading both layouts */

static int copy_file(const char *src, const char *dst) {
  char *d;
  size_t n;
  if (cd_read_file(src, &d, &n)) return -1;
  int rc = cd_write_file_atomic(dst, d, n);
  free(d);
  return rc;
}

static int write_text(const char *path, const char *s) { return cd_write_file_atomic(path, s, strlen(s)); }

/* An SDXL folder of text parts: text_encoder = tiny-sd1's (quick_gelu, EOS padding),
 * text_encoder_2 = tiny-sd2's encoder plus a random text_projection (gelu, "!" padding). */
static int make_folder(const char *dir, const char *g1, const char *g2) {
  char a[1200], b[1200];
  static const char *const sub[] = {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"};
  for (int i = 0; i < 4; i++) {
    snprintf(a, sizeof a, "%s/%s", dir, sub[i]);
    if (cd_mkdir_p(a)) return -1;
  }
  if (write_text(test_path_in(dir, "model_index.json"),
                 "{\"_class_name\": \"StableDiffusionXLPipeline\", \"text_encoder\": [\"transformers\", "
                 "\"CLIPTextModel\"], \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"]}"))
    return -1;
  static const char *const tokf[] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
  for (int i = 0; i < 4; i++) {
    snprintf(a, sizeof a, "%s/tokenizer/%s", g1, tokf[i]);
    snprintf(b, sizeof b, "%s/tokenizer/%s", dir, tokf[i]);
    if (cd_file_exists(a) && copy_file(a, b)) return -1;
    snprintf(a, sizeof a, "%s/tokenizer/%s", g2, tokf[i]);
    snprintf(b, sizeof b, "%s/tokenizer_2/%s", dir, tokf[i]);
    if (cd_file_exists(a) && copy_file(a, b)) return -1;
  }
  snprintf(a, sizeof a, "%s/text_encoder/config.json", g1);
  snprintf(b, sizeof b, "%s/text_encoder/config.json", dir);
  if (copy_file(a, b)) return -1;
  snprintf(a, sizeof a, "%s/text_encoder/model.safetensors", g1);
  snprintf(b, sizeof b, "%s/text_encoder/model.safetensors", dir);
  if (copy_file(a, b)) return -1;
  snprintf(a, sizeof a, "%s/text_encoder/config.json", g2);
  snprintf(b, sizeof b, "%s/text_encoder_2/config.json", dir);
  if (copy_file(a, b)) return -1;
  /* text_encoder_2 weights: tiny-sd2's plus text_projection.weight [8, width] */
  cd_tensor_file *f;
  snprintf(a, sizeof a, "%s/text_encoder/model.safetensors", g2);
  if (cd_tensor_file_open(a, &f)) return -1;
  int n = cd_tf_count(f), w = 0;
  cd_tensor_out *o = cd_calloc((size_t)n + 1, sizeof *o);
  for (int i = 0; i < n; i++) {
    const cd_tensor_info *t = cd_tf_at(f, i);
    o[i] = (cd_tensor_out){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
    memcpy(o[i].shape, t->shape, sizeof o[i].shape);
    if (strstr(t->name, "token_embedding")) w = (int)t->shape[1];
  }
  float *pj = rnd((int64_t)8 * w, 0.3f, 77);
  o[n] = (cd_tensor_out){.name = "text_projection.weight", .dtype = CD_DT_F32, .ndim = 2, .shape = {8, w}, .data = pj};
  snprintf(b, sizeof b, "%s/text_encoder_2/model.safetensors", dir);
  int rc = w > 0 ? cd_safetensors_write(b, o, n + 1, NULL, 0) : -1;
  cd_tensor_file_close(f);
  free(o), free(pj);
  return rc;
}

/* The same weights in SGM's single-file layout: conditioner.embedders.0.transformer.text_model.*
 * (HF names) and conditioner.embedders.1.model.* (OpenCLIP: fused in_proj, ln_1/ln_2,
 * mlp.c_fc/c_proj, text_projection as [width, proj] used as x @ P), plus the UNet keys of
 * unet_file (a single file needs one to be recognised; it is not loaded). */
static int make_single(const char *file, const cd_sd_model *m, const char *unet_file) {
  int cap = 4096, n = 0, rc = -1;
  cd_tensor_out *o = cd_calloc((size_t)cap, sizeof *o);
  char **names = cd_calloc((size_t)cap, sizeof *names);
  float **own = cd_calloc((size_t)cap, sizeof *own);
  int nown = 0;
  cd_tensor_file *uf = NULL;
#define ADD(nm, nd, sh, dp) do { names[n] = cd_strdup(nm); o[n] = (cd_tensor_out){.name = names[n], .dtype = CD_DT_F32, .ndim = (nd), .data = (dp)}; \
    memcpy(o[n].shape, (sh), (size_t)(nd) * sizeof(int64_t)); n++; } while (0)
  for (int i = 0; i < cd_weights_count(m->clip.w); i++) {
    cd_weight *x = cd_weights_at(m->clip.w, i);
    char k[256];
    snprintf(k, sizeof k, "conditioner.embedders.0.transformer.%s", x->name);
    ADD(k, x->ndim, x->ne, cd_weight_f32(x));
  }
  const cd_clip_config *c = &m->clip2.cfg;
  const int64_t d = c->width;
  cd_weights *w = m->clip2.w;
  char k[256], s[256];
  static const char *const ren[][2] = {{"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."},
                                       {"self_attn.out_proj.", "attn.out_proj."}, {"mlp.fc1.", "mlp.c_fc."},
                                       {"mlp.fc2.", "mlp.c_proj."}};
  for (int l = 0; l < c->layers; l++) {
    for (int r = 0; r < 5; r++)
      for (int wb = 0; wb < 2; wb++) {
        snprintf(s, sizeof s, "text_model.encoder.layers.%d.%s%s", l, ren[r][0], wb ? "bias" : "weight");
        snprintf(k, sizeof k, "conditioner.embedders.1.model.transformer.resblocks.%d.%s%s", l, ren[r][1], wb ? "bias" : "weight");
        cd_weight *x = cd_weights_get(w, s);
        if (!x) goto done;
        ADD(k, x->ndim, x->ne, cd_weight_f32(x));
      }
    for (int wb = 0; wb < 2; wb++) { /* in_proj = [q; k; v] */
      int64_t per = wb ? d : d * d;
      float *cat = own[nown++] = cd_malloc((size_t)(3 * per) * sizeof(float));
      static const char qkv[3] = {'q', 'k', 'v'};
      for (int p = 0; p < 3; p++) {
        snprintf(s, sizeof s, "text_model.encoder.layers.%d.self_attn.%c_proj.%s", l, qkv[p], wb ? "bias" : "weight");
        cd_weight *x = cd_weights_get(w, s);
        if (!x) goto done;
        memcpy(cat + p * per, cd_weight_f32(x), (size_t)per * sizeof(float));
      }
      snprintf(k, sizeof k, "conditioner.embedders.1.model.transformer.resblocks.%d.attn.in_proj_%s", l, wb ? "bias" : "weight");
      if (wb) ADD(k, 1, ((int64_t[]){3 * d}), cat);
      else ADD(k, 2, ((int64_t[]){3 * d, d}), cat);
    }
  }
  cd_weight *x = cd_weights_get(w, "text_model.embeddings.token_embedding.weight");
  ADD("conditioner.embedders.1.model.token_embedding.weight", 2, x->ne, cd_weight_f32(x));
  x = cd_weights_get(w, "text_model.embeddings.position_embedding.weight");
  ADD("conditioner.embedders.1.model.positional_embedding", 2, x->ne, cd_weight_f32(x));
  x = cd_weights_get(w, "text_model.final_layer_norm.weight");
  ADD("conditioner.embedders.1.model.ln_final.weight", 1, x->ne, cd_weight_f32(x));
  x = cd_weights_get(w, "text_model.final_layer_norm.bias");
  ADD("conditioner.embedders.1.model.ln_final.bias", 1, x->ne, cd_weight_f32(x));
  x = cd_weights_get(w, "text_projection.weight");
  float *pt = own[nown++] = cd_malloc((size_t)(x->ne[0] * x->ne[1]) * sizeof(float));
  for (int64_t i = 0; i < x->ne[0]; i++)
    for (int64_t j = 0; j < x->ne[1]; j++) pt[j * x->ne[0] + i] = cd_weight_f32(x)[i * x->ne[1] + j];
  ADD("conditioner.embedders.1.model.text_projection", 2, ((int64_t[]){x->ne[1], x->ne[0]}), pt);
  if (cd_tensor_file_open(unet_file, &uf)) goto done;
  for (int i = 0; i < cd_tf_count(uf); i++) {
    const cd_tensor_info *t = cd_tf_at(uf, i);
    if (strncmp(t->name, "model.diffusion_model.", 22)) continue;
    names[n] = cd_strdup(t->name);
    o[n] = (cd_tensor_out){.name = names[n], .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
    memcpy(o[n].shape, t->shape, sizeof o[n].shape);
    n++;
  }
#undef ADD
  rc = cd_safetensors_write(file, o, n, NULL, 0);
done:
  if (uf) cd_tensor_file_close(uf);
  for (int i = 0; i < n; i++) free(names[i]);
  for (int i = 0; i < nown; i++) free(own[i]);
  free(names), free(own), free(o);
  return rc;
}

static int same(const cd_weights *a, const cd_weights *b) {
  if (!a || !b || cd_weights_count(a) != cd_weights_count(b)) return 0;
  for (int i = 0; i < cd_weights_count(a); i++) {
    cd_weight *x = cd_weights_at(a, i), *y = cd_weights_get(b, x->name);
    if (!y || x->ndim != y->ndim || memcmp(x->ne, y->ne, sizeof x->ne)) return 0;
    if (memcmp(cd_weight_f32(x), cd_weight_f32(y), (size_t)cd_numel(x->ndim, x->ne) * sizeof(float))) return 0;
  }
  return 1;
}

/* tokenizer/ (EOS padding) and tokenizer_2/ ("!" padding) into dir, from the SD goldens */
static int copy_tokenizers(const char *dir, const char *g1, const char *g2) {
  static const char *const f[] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
  char a[1300], b[1300];
  for (int t = 0; t < 2; t++) {
    snprintf(b, sizeof b, "%s/tokenizer%s", dir, t ? "_2" : "");
    if (cd_mkdir_p(b)) return -1;
    for (int i = 0; i < 4; i++) {
      snprintf(a, sizeof a, "%s/tokenizer/%s", t ? g2 : g1, f[i]);
      snprintf(b, sizeof b, "%s/tokenizer%s/%s", dir, t ? "_2" : "", f[i]);
      if (copy_file(a, b)) return -1;
    }
  }
  return 0;
}

/* tools/gen_sd_random's tiny SDXL as DIR/xl (folder) and DIR/xl.safetensors (SGM), with
 * tokenizers beside both: 0, or GOLDEN_STATUS's 1 / -1 with test_msg set. Generated
 * once per process (seconds under ASan, and six tests use it) and copied into
 * each test's DIR, so that no test sees another's files. */
static int make_tiny(const char *dir) {
  static char src[1200]; /* the generated copy, once made */
  char g1[1024], g2[1024], cmd[4096], fold[1300], out[1024];
  int st = test_golden_need(g1, sizeof g1, "tiny-sd1");
  if (!st) st = test_golden_need(g2, sizeof g2, "tiny-sd2");
  if (st) return st;
  if (!src[0]) {
    const char *gen = test_build_path("tools/gen_sd_random"), *gdir = test_tmpdir("xltiny");
    snprintf(fold, sizeof fold, "%s/xl", gdir);
    snprintf(cmd, sizeof cmd, "'%s' --tiny --family sdxl --seed 5 --out '%s' --single-file '%s/xl.safetensors' >/dev/null 2>&1",
             gen, fold, gdir);
    if (cd_mkdir_p(gdir) || system(cmd) != 0 || copy_tokenizers(fold, g1, g2) || copy_tokenizers(gdir, g1, g2)) {
      snprintf(test_msg, sizeof test_msg, "making the tiny SDXL with %s failed (%s)", gen, cd_last_error());
      return -1;
    }
    snprintf(src, sizeof src, "%s", gdir);
  }
  snprintf(cmd, sizeof cmd, "cp -R '%s/.' '%s/' 2>&1", src, dir);
  if (cd_mkdir_p(dir) || test_run_cmd(cmd, out, sizeof out) != 0) {
    snprintf(test_msg, sizeof test_msg, "copying the tiny SDXL %s into %s failed: %s", src, dir, out);
    return -1;
  }
  return 0;
}

TEST(load_folder_and_single_file) {
  char dir[1200], g1[1024], g2[1024], p[1300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xlgen"));
  GOLDEN_STATUS(make_tiny(dir));
  NEED_GOLDEN(g1, "tiny-sd1");
  NEED_GOLDEN(g2, "tiny-sd2");
  cd_sd_model *m = NULL, *s = NULL, *t = NULL, *u = NULL;
  snprintf(p, sizeof p, "%s/xl", dir);
  int la = cd_sd_load(p, NULL, &m);
  char err[512];
  snprintf(err, sizeof err, "%s", la ? cd_last_error() : "");
  snprintf(p, sizeof p, "%s/xl.safetensors", dir);
  int lb = la ? -1 : cd_sd_load(p, NULL, &s);
  if (lb && !la) snprintf(err, sizeof err, "%s", cd_last_error());
  int fam = !la && m->family == CD_FAMILY_SDXL && cd_sd_ntext(m) == 2 && !strcmp(cd_family_name(m->family), "SDXL") &&
            m->force_zeros_empty;
  int cfg = !la && m->clip2.cfg.proj == 48 && m->clip2.cfg.width == 128 && !m->clip2.cfg.quick_gelu &&
            m->clip.cfg.quick_gelu && m->clip2.cfg.pool_id == 0 && m->unet.cfg.context_dim == cd_sd_context_dim(m) &&
            m->unet.cfg.add_text_dim == m->clip2.cfg.proj;
  /* tokenizer pads with EOS, tokenizer_2 with "!" (id 0), from their own files */
  int pads = !la && m->tok && m->tok2 && cd_tokenizer_pad(m->tok) == 49407 && cd_tokenizer_pad(m->tok2) == 0 &&
             m->clip.cfg.pad_id == 49407 && m->clip2.cfg.pad_id == 0 && !lb && cd_tokenizer_pad(s->tok2) == 0;
  int eq = !lb && same(m->clip.w, s->clip.w) && same(m->clip2.w, s->clip2.w) && !strcmp(m->hash, s->hash) &&
           s->clip2.cfg.proj == 48 && s->clip2.cfg.layers == m->clip2.cfg.layers && s->clip.cfg.layers == m->clip.cfg.layers;
  /* an SGM file written here (independently of the generator) from other encoders maps the same way */
  snprintf(p, sizeof p, "%s/mine", dir);
  int wr = cd_mkdir_p(p) || make_folder(p, g1, g2);
  cd_load_opts opt = {.no_unet = 1, .no_vae = 1};
  int lc = wr ? -1 : cd_sd_load(p, &opt, &t);
  snprintf(p, sizeof p, "%s/mine.safetensors", dir);
  char xf[1300];
  snprintf(xf, sizeof xf, "%s/xl.safetensors", dir);
  char ya[1300], yb[1300]; /* the generator's yaml states the tiny time-embedding width */
  snprintf(ya, sizeof ya, "%s/xl.yaml", dir);
  snprintf(yb, sizeof yb, "%s/mine.yaml", dir);
  int ld = lc || make_single(p, t, xf) || copy_file(ya, yb) ? -1 : cd_sd_load(p, &opt, &u);
  if (ld && !la && !lb) snprintf(err, sizeof err, "%s", cd_last_error());
  int eq2 = !ld && same(t->clip.w, u->clip.w) && same(t->clip2.w, u->clip2.w) && u->clip2.cfg.proj == 8;
  cd_sd_free(m), cd_sd_free(s), cd_sd_free(t), cd_sd_free(u);
  CHECKF(la == 0 && lb == 0, "%s", err);
  CHECK(fam);
  CHECK(cfg);
  CHECK(pads);
  CHECK(eq);
  CHECKF(ld == 0, "%s", err);
  CHECK(eq2);
}

static int run(cd_sd_model *m, const cd_sdxl_micro *mc, float cfg, float *lat) {
  cd_gen_opts go = {.prompt = "a photo of a cat", .cfg = cfg, .width = 64, .height = 64, .n = 1, .quiet = 1};
  go.s.kind = CD_SAMPLER_EULER;
  go.s.steps = 2;
  go.s.seed = 7;
  if (mc) go.micro = *mc;
  return cd_generate_latents(m, &go, lat);
}

static double maxdiff(const float *a, const float *b, int n) {
  double d = 0;
  for (int i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
  return d;
}

/* two Euler steps with guidance on the tiny SDXL: finite; the defaults of the
 * micro-conditioning are the image size and crop 0,0 (the same bits when given
 * explicitly); other numbers, or encoding "" instead of zeros for the empty negative
 * prompt, change the result */
TEST(sample_two_steps_micro) {
  char dir[1200], p[1300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xlsample"));
  GOLDEN_STATUS(make_tiny(dir));
  cd_sd_model *m = NULL;
  snprintf(p, sizeof p, "%s/xl", dir);
  CHECK_OK(cd_sd_load(p, NULL, &m));
  enum { N = 4 * 8 * 8 };
  float a[N], b[N], c[N], d[N], e[N];
  cd_sdxl_micro same_as_default = {.orig_w = 64, .orig_h = 64, .target_w = 64, .target_h = 64};
  cd_sdxl_micro other = {.orig_w = 80, .orig_h = 96, .crop_top = 8, .crop_left = 4};
  int rc = run(m, NULL, 5.0f, a) || run(m, &same_as_default, 5.0f, b) || run(m, &other, 5.0f, c);
  char err[512];
  snprintf(err, sizeof err, "%s", rc ? cd_last_error() : "");
  m->force_zeros_empty = 0;
  int rc2 = rc || run(m, NULL, 5.0f, d);
  int rc3 = rc || run(m, NULL, 1.0f, e); /* no guidance: no negative prompt at all */
  float tid[6];
  int bad = cd_sdxl_time_ids(&(cd_sdxl_micro){.crop_top = -1}, 64, 64, tid) != 0 && strstr(cd_last_error(), "--crop");
  cd_sd_free(m);
  CHECKF(rc == 0 && rc2 == 0 && rc3 == 0, "%s", err);
  int finite = 1;
  for (int i = 0; i < N; i++) finite &= isfinite(a[i]) && isfinite(c[i]) && isfinite(e[i]);
  CHECK(finite);
  CHECKF(maxdiff(a, b, N) == 0, "explicit defaults differ by %g", maxdiff(a, b, N));
  CHECKF(maxdiff(a, c, N) > 0, "micro-conditioning had no effect");
  CHECKF(maxdiff(a, d, N) > 0, "zeros vs encoded empty negative prompt: no difference");
  CHECKF(maxdiff(a, e, N) > 0, "guidance had no effect");
  CHECK(bad);
}

/* cdiff sample takes the micro-conditioning flags on SDXL, refuses malformed ones naming
 * the flag, and warns that they do nothing on SD 1.x */
TEST(cli_micro_flags) {
  char dir[1200], g1[1024], cmd[4096], out[8192];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xlcli"));
  GOLDEN_STATUS(make_tiny(dir));
  NEED_GOLDEN(g1, "tiny-sd1");
  const char *bin = test_cdiff_bin();
  snprintf(cmd, sizeof cmd,
           "'%s' sample --model '%s/xl' --prompt 'a cat' --steps 1 --width 64 --original-size 80,96 --crop 8,4 "
           "--target-size 64,64 --out '%s/a.png' 2>&1", bin, dir, dir);
  int ok = test_run_cmd(cmd, out, sizeof out);
  char o1[600];
  snprintf(o1, sizeof o1, "%.590s", out);
  snprintf(cmd, sizeof cmd, "'%s' sample --model '%s/xl' --prompt 'a cat' --crop 8 --out '%s/b.png' 2>&1", bin, dir, dir);
  int bad = test_run_cmd(cmd, out, sizeof out);
  int named = strstr(out, "--crop") != NULL;
  snprintf(cmd, sizeof cmd, "'%s' sample --model '%s' --prompt 'a cat' --steps 1 --width 64 --crop 8,4 --out '%s/c.png' 2>&1",
           bin, g1, dir);
  int sd1 = test_run_cmd(cmd, out, sizeof out);
  int warned = strstr(out, "--crop") && strstr(out, "no effect");
  snprintf(cmd, sizeof cmd, "'%s' info '%s/xl' 2>&1", bin, dir);
  int inf = test_run_cmd(cmd, out, sizeof out);
  int shows2 = inf == 0 && strstr(out, "family:       SDXL") && strstr(out, "text encoder 2: 6,737,920 parameters") &&
               strstr(out, "projection 48") && strstr(out, "tokenizer 2:  loaded");
  char o2[700];
  snprintf(o2, sizeof o2, "%.690s", out);
  CHECKF(ok == 0, "sdxl sample: %s", o1);
  CHECKF(shows2, "info: %s", o2);
  CHECK(bad == 2 && named);
  CHECKF(sd1 == 0 && warned, "sd1 sample: %.500s", out);
}

/* cdiff train runs on SDXL (two steps, the instance augmentation's crops in the time ids),
 * writes a delta with both rows, and cdiff sample applies it */
TEST(cli_train_then_sample) {
  char dir[1200], cmd[4096], out[8192], imgs[1300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xlclitrain"));
  GOLDEN_STATUS(make_tiny(dir));
  snprintf(imgs, sizeof imgs, "%s/imgs", dir);
  CHECK(cd_mkdir_p(imgs) == 0 && test_write_noise_images(imgs, 2, 3) == 0);
  const char *bin = test_cdiff_bin();
  snprintf(cmd, sizeof cmd,
           "'%s' train --model '%s/xl' --images '%s' --prompt 'photo of a <new1> cat' --no-prior --steps 2 --resolution 64 "
           "--out '%s/run' 2>&1", bin, dir, imgs, dir);
  int tr = test_run_cmd(cmd, out, sizeof out);
  char o1[700];
  snprintf(o1, sizeof o1, "%.690s", out);
  cd_delta *d = NULL;
  char run[1300];
  snprintf(run, sizeof run, "%s/run", dir);
  int ld = tr ? -1 : cd_delta_load(run, NULL, &d);
  int both = !ld && d->ntok == 1 && d->d == 64 && d->d2 == 128 && d->family == CD_FAMILY_SDXL;
  cd_delta_free(d);
  snprintf(cmd, sizeof cmd, "'%s' sample --model '%s/xl' --delta '%s/run' --prompt '<new1> cat' --steps 1 --width 64 --out '%s/s.png' 2>&1",
           bin, dir, dir, dir);
  int sm = tr ? -1 : test_run_cmd(cmd, out, sizeof out);
  CHECKF(tr == 0, "train: %s", o1);
  CHECK(both);
  CHECKF(sm == 0, "sample: %.600s", out);
}

/* the original repository's SDXL delta.bin ({'unet': ..., 'modifier_token': {tok: [row, row_2]}},
 * as the reader flattens it), in full and in its compress.py form (W = W0 + U V) */
TEST(repo_delta_bin) {
  char dir[1200], p[1300];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xlbin"));
  GOLDEN_STATUS(make_tiny(dir));
  snprintf(p, sizeof p, "%s/xl", dir);
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load(p, NULL, &m));
  const char *kn = "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k.weight";
  cd_weight *w0 = cd_weights_get(m->unet.w, kn);
  CHECK(w0 && w0->ndim == 2);
  const int R = (int)w0->ne[0], Cc = (int)w0->ne[1], K = 3;
  float *W = rnd((int64_t)R * Cc, 1.0f, 51), *U = rnd((int64_t)R * K, 1.0f, 52), *V = rnd((int64_t)K * Cc, 1.0f, 53);
  float *e1 = rnd(64, 1.0f, 54), *e2 = rnd(128, 1.0f, 55);
  char n1[200], n2[200], n3[200];
  snprintf(n1, sizeof n1, "unet.%s", kn);
  snprintf(n2, sizeof n2, "unet.%s.u", kn);
  snprintf(n3, sizeof n3, "unet.%s.v", kn);
  cd_tensor_out full[3] = {{n1, CD_DT_F32, 2, {R, Cc}, W}, {"modifier_token.<new1>.0", CD_DT_F32, 1, {64}, e1},
                           {"modifier_token.<new1>.1", CD_DT_F32, 1, {128}, e2}};
  cd_tensor_out low[4] = {{n2, CD_DT_F32, 2, {R, K}, U}, {n3, CD_DT_F32, 2, {K, Cc}, V},
                          {"modifier_token.<new1>.0", CD_DT_F32, 1, {64}, e1}, {"modifier_token.<new1>.1", CD_DT_F32, 1, {128}, e2}};
  char d1[1300], d2[1300], f1[1400], f2[1400];
  snprintf(d1, sizeof d1, "%s/full", dir);
  snprintf(d2, sizeof d2, "%s/low", dir);
  snprintf(f1, sizeof f1, "%s/delta.bin", d1);
  snprintf(f2, sizeof f2, "%s/delta.bin", d2);
  cd_delta *a = NULL, *b = NULL;
  int rc = cd_mkdir_p(d1) || cd_mkdir_p(d2) || cd_safetensors_write(f1, full, 3, NULL, 0) || cd_safetensors_write(f2, low, 4, NULL, 0) ||
           cd_delta_load(d1, m, &a) || cd_delta_load(d2, m, &b) || cd_delta_resolve(a, m) || cd_delta_resolve(b, m);
  char err[512];
  snprintf(err, sizeof err, "%s", rc ? cd_last_error() : "");
  int toks = !rc && a->ntok == 1 && !strcmp(a->tok[0], "<new1>") && a->d2 == 128 && !memcmp(a->embeds, e1, 64 * 4) &&
             !memcmp(a->embeds2, e2, 128 * 4) && b->d2 == 128;
  int wa = !rc && cd_weights_get(a->w, kn) && !memcmp(cd_weights_get(a->w, kn)->data, W, sizeof(float) * R * Cc);
  /* the compressed form resolves to W0 + U V (the float32 dot of K = 3 terms: within 3 ulp) */
  double md = -1;
  if (!rc && cd_weights_get(b->w, kn)) {
    const float *x = cd_weights_get(b->w, kn)->data, *b0 = cd_weight_f32(w0);
    md = 0;
    for (int i = 0; i < R; i++)
      for (int j = 0; j < Cc; j++) {
        double ref = b0[i * Cc + j];
        for (int k = 0; k < K; k++) ref += (double)U[i * K + k] * V[k * Cc + j];
        md = fmax(md, fabs(x[i * Cc + j] - ref) / (fabs(ref) + 1));
      }
  }
  free(W), free(U), free(V), free(e1), free(e2);
  cd_delta_free(a), cd_delta_free(b);
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", err);
  CHECK(toks);
  CHECK(wa);
  CHECKF(md >= 0 && md <= 8 * TEST_U32, "low-rank resolve error %g", md);
}

/* one tiny-SDXL training step's inputs: an instance example with a zoom-in crop's time ids,
 * and a class example */
typedef struct {
  float pix[2 * 3 * 64 * 64], mask[2 * 64], noise[2 * 4 * 64], tid[12];
  int ids[2 * T], ids2[2 * T], ts[2];
} xl_batch;

static int fill_batch(cd_sd_model *m, const char *tok, uint64_t seed, xl_batch *x, cd_batch *b) {
  char p[64];
  snprintf(p, sizeof p, "photo of a %s cat", tok);
  const char *pr[2] = {p, "photo of a cat"};
  for (int i = 0; i < 2; i++)
    if (cd_tokenize_padded(m->tok, pr[i], x->ids + i * T, NULL) || cd_tokenize_padded(m->tok2, pr[i], x->ids2 + i * T, NULL))
      return -1;
  test_fill_uniform(x->pix, sizeof x->pix / sizeof *x->pix, -1, 1, seed);
  test_fill_uniform(x->noise, sizeof x->noise / sizeof *x->noise, -2, 2, seed + 1);
  for (int i = 0; i < 128; i++) x->mask[i] = 1;
  static const float tid[12] = {64, 64, 8, 16, 64, 64, 64, 64, 0, 0, 64, 64};
  memcpy(x->tid, tid, sizeof tid);
  x->ts[0] = 321, x->ts[1] = 777;
  *b = (cd_batch){.pixels = x->pix, .mask = x->mask, .ids = x->ids, .ids2 = x->ids2, .noise = x->noise, .timesteps = x->ts,
                  .time_ids = x->tid};
  return 0;
}

/* Trains one concept on the tiny SDXL for two steps and returns its delta (NULL on error). */
static cd_delta *train_two(cd_sd_model *m, const char *tok, uint64_t seed, int check_grads, char *why, size_t cap) {
  int init = cd_tokenizer_lookup(m->tok, "ktn"), id = -1;
  const char *toks[1] = {tok};
  cd_trainer t;
  memset(&t, 0, sizeof t);
  cd_delta *d = NULL;
  if (cd_sd_add_tokens(m, 1, toks, &init, NULL, &id)) { snprintf(why, cap, "add: %s", cd_last_error()); return NULL; }
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = 64, o.ntok = 1, o.tok_id[0] = id, o.lr = 1e-3f, o.sample_latents = 0;
  xl_batch x;
  cd_batch b;
  cd_step_report r1 = {0}, r2 = {0};
  if (cd_trainer_init(&t, m, &o) || fill_batch(m, tok, seed, &x, &b) || cd_trainer_grad(&t, &b, &r1)) {
    snprintf(why, cap, "step 1: %s", cd_last_error());
    goto done;
  }
  if (check_grads) {
    /* both tables' rows and the K/V of a second transformer block (depth 2) get gradients */
    const char *kv = "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k.weight";
    int found = 0;
    for (int i = 0; i < t.np; i++) {
      int want = i == t.p_rows || i == t.p_rows2 || !strcmp(t.p[i].name, kv);
      if (!want) continue;
      found++;
      float *gr = cd_malloc(sizeof(float) * (size_t)t.p[i].n);
      double s = 0;
      int fin = 1;
      if (cd_graph_get_grad(t.g, t.p[i].node, gr)) { free(gr); snprintf(why, cap, "grad: %s", cd_last_error()); goto done; }
      for (int64_t k = 0; k < t.p[i].n; k++) s += (double)gr[k] * gr[k], fin &= isfinite(gr[k]);
      free(gr);
      if (!(s > 0) || !fin) { snprintf(why, cap, "%s: gradient norm^2 %g", t.p[i].name, s); goto done; }
    }
    if (found != 3 || t.p_rows < 0 || t.p_rows2 < 0) { snprintf(why, cap, "%d of the 3 parameters checked found", found); goto done; }
  }
  if (cd_trainer_update(&t, &r1) || cd_trainer_step(&t, &b, &r2)) { snprintf(why, cap, "steps: %s", cd_last_error()); goto done; }
  if (!isfinite(r1.loss) || !isfinite(r2.loss)) { snprintf(why, cap, "loss %g, %g", r1.loss, r2.loss); goto done; }
  char tks[1][32];
  snprintf(tks[0], sizeof tks[0], "%s", tok);
  if (cd_trainer_to_delta(&t, (const char(*)[32])tks, NULL, &d)) { snprintf(why, cap, "delta: %s", cd_last_error()); d = NULL; }
done:
  cd_trainer_free(&t);
  return d;
}

/* Custom Diffusion on the tiny SDXL: two steps train both rows of the token and the K/V of
 * every transformer block; the delta carries both rows, applies to a fresh model, compresses
 * and round-trips; two concepts merge with constraint residuals at float64 rounding */
TEST(train_merge_compress) {
  char dir[1200], p[1300], why[512] = "";
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xltrain"));
  GOLDEN_STATUS(make_tiny(dir));
  snprintf(p, sizeof p, "%s/xl", dir);
  cd_sd_model *m1 = NULL, *m2 = NULL, *base = NULL;
  CHECK_OK(cd_sd_load(p, NULL, &m1));
  cd_delta *d1 = train_two(m1, "<new1>", 11, 1, why, sizeof why);
  int ok1 = d1 && d1->ntok == 1 && d1->d == 64 && d1->d2 == 128 && d1->family == CD_FAMILY_SDXL &&
            cd_weights_get(d1->w, "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_v.weight") &&
            cd_weights_get(d1->w, "mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight");
  char why2[512] = "";
  int l2 = cd_sd_load(p, NULL, &m2);
  cd_delta *d2 = l2 ? NULL : train_two(m2, "<new1>", 12, 0, why2, sizeof why2);
  /* the delta applies to a fresh model: both tables get the trained rows */
  int lb = cd_sd_load(p, NULL, &base);
  char sd[1300];
  snprintf(sd, sizeof sd, "%s/d1", dir);
  cd_delta *rd = NULL;
  int rt = !d1 || lb || cd_delta_save(sd, d1) || cd_delta_load(sd, base, &rd) || cd_delta_resolve(rd, base) ||
           cd_delta_apply(base, rd);
  char rterr[512];
  snprintf(rterr, sizeof rterr, "%s", rt ? cd_last_error() : "");
  int rows = !rt && !memcmp(cd_weight_f32(cd_weights_get(base->clip.w, CD_TOKEN_TABLE)) + 49408 * 64, d1->embeds, 64 * 4) &&
             !memcmp(cd_weight_f32(cd_weights_get(base->clip2.w, CD_TOKEN_TABLE)) + 49408 * 128, d1->embeds2, 128 * 4);
  cd_sd_free(base);
  base = NULL;
  /* compress: low-rank factors of every K/V change, both rows kept, written and read back */
  cd_sd_model *b2 = NULL;
  cd_delta *c = NULL, *cr = NULL;
  snprintf(sd, sizeof sd, "%s/c1", dir);
  int cp = !d1 || cd_sd_load(p, NULL, &b2) || cd_delta_compress(d1, b2, 0.6, 1, &c, NULL, NULL) || cd_delta_save(sd, c) ||
           cd_delta_load(sd, b2, &cr) || cd_delta_resolve(cr, b2);
  char cperr[512];
  snprintf(cperr, sizeof cperr, "%s", cp ? cd_last_error() : "");
  int cok = !cp && cr->lowrank == 0 && cr->d2 == 128 && !memcmp(cr->embeds2, d1->embeds2, 128 * 4) &&
            cd_weights_count(cr->w) == cd_weights_count(d1->w);
  /* merge: a fresh base, both concepts */
  cd_sd_model *mb = NULL;
  cd_delta *merged = NULL;
  cd_merge_info info;
  memset(&info, 0, sizeof info);
  char **reg = NULL; /* the project's captions (tests run from the repository root) */
  int nreg = 0;
  int mg = !d1 || !d2 || cd_merge_read_lines("data/" CD_MERGE_REG_FILE, 200, &reg, &nreg) ||
           cd_sd_load(p, NULL, &mb);
  if (!mg) {
    cd_delta *ds[2] = {d1, d2};
    const char *cats[2] = {"cat", "dog"};
    cd_merge_opts mo = {.reg = (const char *const *)reg, .nreg = nreg};
    mg = cd_merge_deltas(mb, ds, cats, 2, &mo, &merged, &info);
  }
  char mgerr[512];
  snprintf(mgerr, sizeof mgerr, "%s", mg ? cd_last_error() : "");
  int mok = !mg && merged->ntok == 2 && merged->d2 == 128 && info.nlayers > 0 && info.max_rel_residual < 1e-10 &&
            !memcmp(merged->embeds2 + 128, d2->embeds2, 128 * 4);
  double mres = mg ? -1 : info.max_rel_residual;
  cd_merge_info_free(&info);
  cd_merge_free_lines(reg, nreg);
  cd_delta_free(d1), cd_delta_free(d2), cd_delta_free(rd), cd_delta_free(c), cd_delta_free(cr), cd_delta_free(merged);
  cd_sd_free(m1), cd_sd_free(m2), cd_sd_free(b2), cd_sd_free(mb);
  CHECKF(ok1, "concept 1: %s", why);
  CHECKF(!l2 && d2, "concept 2: %s", why2);
  CHECKF(!rt && rows, "delta round trip: %s", rterr);
  CHECKF(cok, "compress: %s", cperr);
  CHECKF(mok, "merge: %s (max rel residual %g)", mgerr, mres);
}

/* the text parts of a tiny SDXL: 0, or GOLDEN_STATUS's 1 (skip) / -1 (fail) with test_msg set */
static int load_text_folder(cd_sd_model **out) {
  char g1[1024], g2[1024];
  int st = test_golden_need(g1, sizeof g1, "tiny-sd1");
  if (!st) st = test_golden_need(g2, sizeof g2, "tiny-sd2");
  if (st) return st;
  static int k;
  char sub[16], dir[1200];
  snprintf(sub, sizeof sub, "xlt%d", k++);
  snprintf(dir, sizeof dir, "%s", test_tmpdir(sub));
  cd_load_opts opt = {.no_unet = 1, .no_vae = 1};
  cd_sd_model *m = NULL;
  if (cd_mkdir_p(dir) || make_folder(dir, g1, g2) || cd_sd_load(dir, &opt, &m)) {
    snprintf(test_msg, sizeof test_msg, "tiny SDXL text folder: %s", cd_last_error());
    return -1;
  }
  *out = m;
  return 0;
}

static int rows_equal(const cd_clip *c, int64_t a, const float *row) {
  cd_weight *t = cd_weights_get(c->w, CD_TOKEN_TABLE);
  return t && t->ne[0] > a && !memcmp(cd_weight_f32(t) + a * t->ne[1], row, sizeof(float) * (size_t)t->ne[1]);
}

/* a modifier token goes to both tokenizers and both tables, each row from its own table's
 * initializer row (diffusers_training_sdxl.py), with one id */
TEST(tokens_go_to_both_encoders) {
  cd_sd_model *m = NULL;
  GOLDEN_STATUS(load_text_folder(&m));
  const char *tok[1] = {"<new1>"};
  int init[1] = {cd_tokenizer_lookup(m->tok, "ktn")}, ids[1] = {-1};
  float r1[16], r2[24];
  cd_weight_row_f32(cd_weights_get(m->clip.w, CD_TOKEN_TABLE), init[0], r1);
  cd_weight_row_f32(cd_weights_get(m->clip2.w, CD_TOKEN_TABLE), init[0], r2);
  int rc = cd_sd_add_tokens(m, 1, tok, init, NULL, ids);
  char err[512];
  snprintf(err, sizeof err, "%s", rc ? cd_last_error() : "");
  int same_id = ids[0] == 49408 && cd_tokenizer_lookup(m->tok, "<new1>") == 49408 && cd_tokenizer_lookup(m->tok2, "<new1>") == 49408;
  int grown = m->clip.cfg.vocab == 49409 && m->clip2.cfg.vocab == 49409;
  int rows = rows_equal(&m->clip, 49408, r1) && rows_equal(&m->clip2, 49408, r2);
  /* rows for one table only cannot describe an SDXL token */
  const char *tok2[1] = {"<new2>"};
  int one_table = cd_sd_add_tokens(m, 1, tok2, NULL, r1, NULL) != 0 && strstr(cd_last_error(), "both text encoders") != NULL;
  int unchanged = m->clip.cfg.vocab == 49409 && m->clip2.cfg.vocab == 49409 && cd_tokenizer_lookup(m->tok2, "<new2>") < 0;
  cd_sd_free(m);
  CHECKF(rc == 0, "%s", err);
  CHECK(init[0] >= 0);
  CHECK(same_id);
  CHECK(grown);
  CHECK(rows);
  CHECK(one_table);
  CHECK(unchanged);
}

/* an SDXL delta carries each token's row for both encoders in both layouts written
 * (cdiff's modifier_tokens_2; diffusers' <tok>.safetensors {clip_l, clip_g}), SDXL's
 * attention processor names (a second transformer block), and applies to both tables */
TEST(delta_both_rows_roundtrip) {
  cd_sd_model *m = NULL;
  GOLDEN_STATUS(load_text_folder(&m));
  cd_delta *d = cd_delta_new();
  d->family = CD_FAMILY_SDXL;
  d->ntok = 1;
  snprintf(d->tok[0], sizeof d->tok[0], "<new1>");
  d->d = 16, d->d2 = 24;
  d->embeds = rnd(16, 1.0f, 41), d->embeds2 = rnd(24, 1.0f, 42);
  const char *kn = "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k.weight";
  cd_weights_put(d->w, kn, 2, (int64_t[]){8, 40}, rnd(8 * 40, 1.0f, 43));
  cd_weights_put(d->w, "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_v.weight", 2, (int64_t[]){8, 40},
                 rnd(8 * 40, 1.0f, 44));
  char dir[1200];
  snprintf(dir, sizeof dir, "%s", test_tmpdir("xldelta"));
  int sv = cd_delta_save(dir, d);
  cd_delta *a = NULL, *b = NULL;
  int la = sv ? -1 : cd_delta_load(dir, m, &a);
  char cf[1300], tf[1300];
  snprintf(cf, sizeof cf, "%s/%s", dir, CD_DELTA_FILE);
  snprintf(tf, sizeof tf, "%s/%s", dir, CD_DIFFUSERS_DELTA_FILE);
  int lb = la || remove(cf) ? -1 : cd_delta_load(tf, m, &b); /* diffusers' layout and its token file */
  char err[512];
  snprintf(err, sizeof err, "%s", lb ? cd_last_error() : "");
  int ok_a = a && a->family == CD_FAMILY_SDXL && a->ntok == 1 && a->d2 == 24 && !memcmp(a->embeds, d->embeds, 16 * 4) &&
             !memcmp(a->embeds2, d->embeds2, 24 * 4);
  int ok_b = b && b->ntok == 1 && !strcmp(b->tok[0], "<new1>") && b->d == 16 && b->d2 == 24 &&
             !memcmp(b->embeds, d->embeds, 16 * 4) && !memcmp(b->embeds2, d->embeds2, 24 * 4) && cd_weights_get(b->w, kn) &&
             !memcmp(cd_weights_get(b->w, kn)->data, cd_weights_get(d->w, kn)->data, 8 * 40 * 4);
  /* tokens only (this model has no UNet): applied to both tables */
  cd_delta *t = cd_delta_new();
  t->family = CD_FAMILY_SDXL, t->ntok = 1, t->d = 16, t->d2 = 24;
  snprintf(t->tok[0], sizeof t->tok[0], "<new1>");
  t->embeds = rnd(16, 1.0f, 45), t->embeds2 = rnd(24, 1.0f, 46);
  int ap = cd_delta_resolve(t, m) || cd_delta_apply(m, t);
  char aerr[512];
  snprintf(aerr, sizeof aerr, "%s", ap ? cd_last_error() : "");
  int applied = !ap && rows_equal(&m->clip, 49408, t->embeds) && rows_equal(&m->clip2, 49408, t->embeds2) &&
                cd_tokenizer_lookup(m->tok2, "<new1>") == 49408;
  /* a delta without the second rows does not fit SDXL */
  cd_delta *one = cd_delta_new();
  one->ntok = 1, one->d = 16;
  snprintf(one->tok[0], sizeof one->tok[0], "<new2>");
  one->embeds = rnd(16, 1.0f, 47);
  int refused = cd_delta_resolve(one, m) != 0 && strstr(cd_last_error(), "text_encoder_2") != NULL;
  cd_delta_free(d), cd_delta_free(a), cd_delta_free(b), cd_delta_free(t), cd_delta_free(one);
  cd_sd_free(m);
  CHECKF(sv == 0 && la == 0, "save/load: %s", cd_last_error());
  CHECKF(lb == 0, "diffusers layout: %s", err);
  CHECK(ok_a);
  CHECK(ok_b);
  CHECKF(applied, "apply: %s", aerr);
  CHECK(refused);
}

/* merge features of an SDXL model are rows of the concatenated context: width w1 + w2,
 * rows 1..EOS, "photo of a" left out */
TEST(merge_features_concat) {
  cd_sd_model *m = NULL;
  GOLDEN_STATUS(load_text_folder(&m));
  const char *pr[2] = {"a red cat", "photo of a red cat"};
  double *F = NULL;
  int rows = 0, per[2] = {0};
  int rc = cd_merge_features(m, pr, 2, &F, &rows, per);
  float *ctx = cd_malloc(sizeof(float) * 2 * T * 40);
  int rc2 = cd_sdxl_encode_literal(m, pr, 2, ctx, NULL);
  /* "a red cat": 3 tokens + EOS; "photo of a red cat": the same rows after "photo of a" */
  int shape = rc == 0 && per[0] == 4 && per[1] == 3 && rows == 7 && cd_sd_context_dim(m) == 40;
  int same = shape && rc2 == 0;
  for (int r = 0; same && r < 4; r++)
    for (int j = 0; j < 40; j++) same &= F[r * 40 + j] == (double)ctx[(1 + r) * 40 + j];
  for (int r = 0; same && r < 3; r++)
    for (int j = 0; j < 40; j++) same &= F[(4 + r) * 40 + j] == (double)ctx[(T + 4 + r) * 40 + j];
  free(F);
  free(ctx);
  cd_sd_free(m);
  CHECK(shape);
  CHECK(same);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(pool_select_rules);
  RUN(two_encoder_concat_and_pooled_gradient);
  RUN(penultimate_marks_unread_weights);
  RUN(load_folder_and_single_file);
  RUN(sample_two_steps_micro);
  RUN(cli_micro_flags);
  RUN(train_merge_compress);
  RUN(cli_train_then_sample);
  RUN(repo_delta_bin);
  RUN(tokens_go_to_both_encoders);
  RUN(delta_both_rows_roundtrip);
  RUN(merge_features_concat);
  test_tmp_cleanup(); /* its models and outputs: ~0.5 GB a run */
  return test_summary();
}
