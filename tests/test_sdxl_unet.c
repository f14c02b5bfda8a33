/* test_sdxl_unet.c - the pieces SDXL adds to the UNet, without goldens:
 *   - a Transformer2DModel of depth 2 (linear projections) against a float64
 *     reference, and its gradients (input, context, weights of the second
 *     block) against central finite differences of that reference;
 *   - the text_time added conditioning (add_time_proj of the six time ids,
 *     concat with the pooled text embedding, add_embedding MLP) the same way;
 *   - the cross-attention layer list of a depth > 1 configuration, and the SGM
 *     key map of the SDXL configuration (every depth, label_emb);
 *   - a model with added conditioning refuses to build without it.
 * Tolerances: the SD ones of the golden tests (forward 1e-4, gradients 1e-3
 * relative L2) unless a bound below says more (large time-id arguments). */
#include <stdarg.h>

#include "models/keymap.h"
#include "models/unet.h"
#include "test.h"

/* ------------------------------------------------------------ weights */

typedef struct {
  cd_weights *w;
  uint64_t seed;
} wmaker;

/* a random weight: scale/sqrt(fan_in) for matrices, 1 + 0.1 N for norm scales, 0.1 N for biases */
static void mk(wmaker *m, const char *name, int ndim, const int64_t *ne, int kind) {
  int64_t n = cd_numel(ndim, ne);
  float *d = cd_malloc((size_t)n * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, ++m->seed * 7919);
  double s = kind == 0 ? 1.0 / sqrt((double)ne[ndim - 1]) : 0.1;
  for (int64_t i = 0; i < n; i++) d[i] = (float)((kind == 1 ? 1.0 : 0.0) + s * cd_rng_normal(&r));
  cd_weights_put(m->w, name, ndim, ne, d);
}

static void mk_linear(wmaker *m, const char *p, int64_t out, int64_t in, int bias) {
  char b[192];
  snprintf(b, sizeof b, "%s.weight", p);
  mk(m, b, 2, (int64_t[]){out, in}, 0);
  if (bias) {
    snprintf(b, sizeof b, "%s.bias", p);
    mk(m, b, 1, (int64_t[]){out}, 2);
  }
}

static void mk_norm(wmaker *m, const char *p, int64_t C) {
  char b[192];
  snprintf(b, sizeof b, "%s.weight", p);
  mk(m, b, 1, (int64_t[]){C}, 1);
  snprintf(b, sizeof b, "%s.bias", p);
  mk(m, b, 1, (int64_t[]){C}, 2);
}

static const double *W(cd_weights *w, const char *fmt, ...) CD_PRINTF(2, 3);

/* the weight's values as doubles (a per-name cache of converted copies) */
#define NCACHE 128
static struct {
  char name[192];
  double *v;
} cache[NCACHE];
static int ncache;

static void cache_clear(void) {
  for (int i = 0; i < ncache; i++) free(cache[i].v);
  ncache = 0;
}

static const double *W(cd_weights *w, const char *fmt, ...) {
  char name[192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  for (int i = 0; i < ncache; i++)
    if (!strcmp(cache[i].name, name)) return cache[i].v;
  cd_weight *x = cd_weights_get(w, name);
  if (!x || ncache == NCACHE) abort(); /* a bug in this test */
  int64_t n = cd_numel(x->ndim, x->ne);
  double *v = cd_malloc((size_t)n * sizeof(double));
  const float *f = cd_weight_f32(x);
  for (int64_t i = 0; i < n; i++) v[i] = f[i];
  snprintf(cache[ncache].name, sizeof cache[ncache].name, "%s", name);
  cache[ncache++].v = v;
  return v;
}

/* a weight perturbed by finite differences: drop its cached copy */
static double *W_mut(cd_weights *w, const char *name) { return (double *)W(w, "%s", name); }

/* ------------------------------------------------------------ float64 reference */

/* y[n, out] = x[n, in] A^T (+ b) */
static void lin(const double *x, int64_t n, int64_t in, const double *A, const double *b, int64_t out, double *y) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t o = 0; o < out; o++) {
      double s = b ? b[o] : 0;
      for (int64_t k = 0; k < in; k++) s += x[i * in + k] * A[o * in + k];
      y[i * out + o] = s;
    }
}

static void layer_norm(const double *x, int64_t n, int64_t C, const double *g, const double *b, double *y) {
  for (int64_t i = 0; i < n; i++) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; c++) m += x[i * C + c];
    m /= C;
    for (int64_t c = 0; c < C; c++) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    v /= C;
    double r = 1 / sqrt(v + 1e-5);
    for (int64_t c = 0; c < C; c++) y[i * C + c] = (x[i * C + c] - m) * r * g[c] + b[c];
  }
}

/* softmax(q k^T / sqrt(d)) v per head; q [n, C], k/v [m, C] after their projections */
static void mha(const double *q, int64_t n, const double *k, const double *v, int64_t m, int64_t C, int heads,
                double *o) {
  int64_t d = C / heads;
  double *s = cd_malloc((size_t)m * sizeof(double));
  for (int h = 0; h < heads; h++)
    for (int64_t i = 0; i < n; i++) {
      double mx = -1e300, z = 0;
      for (int64_t j = 0; j < m; j++) {
        double a = 0;
        for (int64_t t = 0; t < d; t++) a += q[i * C + h * d + t] * k[j * C + h * d + t];
        s[j] = a / sqrt((double)d);
        if (s[j] > mx) mx = s[j];
      }
      for (int64_t j = 0; j < m; j++) z += s[j] = exp(s[j] - mx);
      for (int64_t t = 0; t < d; t++) {
        double a = 0;
        for (int64_t j = 0; j < m; j++) a += s[j] * v[j * C + h * d + t];
        o[i * C + h * d + t] = a / z;
      }
    }
  free(s);
}

/* diffusers Attention: to_q/k/v without bias, to_out.0 with; adds its output to acc */
static void attn_ref(cd_weights *w, const char *p, const double *x, int64_t n, const double *c, int64_t m,
                     int64_t Cc, int64_t C, int heads, double *acc) {
  double *q = cd_malloc((size_t)(n * C) * sizeof(double)), *k = cd_malloc((size_t)(m * C) * sizeof(double));
  double *v = cd_malloc((size_t)(m * C) * sizeof(double)), *o = cd_malloc((size_t)(n * C) * sizeof(double));
  double *y = cd_malloc((size_t)(n * C) * sizeof(double));
  lin(x, n, C, W(w, "%s.to_q.weight", p), NULL, C, q);
  lin(c, m, Cc, W(w, "%s.to_k.weight", p), NULL, C, k);
  lin(c, m, Cc, W(w, "%s.to_v.weight", p), NULL, C, v);
  mha(q, n, k, v, m, C, heads, o);
  lin(o, n, C, W(w, "%s.to_out.0.weight", p), W(w, "%s.to_out.0.bias", p), C, y);
  for (int64_t i = 0; i < n * C; i++) acc[i] += y[i];
  free(q); free(k); free(v); free(o); free(y);
}

typedef struct {
  int64_t B, C, H, Wd, T, Cc;
  int heads, depth, groups;
} xf_shape;

/* Transformer2DModel with linear projections: x [B, C, H, W], ctx [B, T, Cc] -> y like x */
static void transformer_ref(cd_weights *w, const char *p, const xf_shape *s, const double *x, const double *ctx,
                            double *out) {
  const int64_t C = s->C, HW = s->H * s->Wd, G = s->groups, cg = C / G;
  double *hn = cd_malloc((size_t)(HW * C) * sizeof(double)), *h = cd_malloc((size_t)(HW * C) * sizeof(double));
  double *t = cd_malloc((size_t)(HW * C) * sizeof(double)), *ff = cd_malloc((size_t)(HW * 8 * C) * sizeof(double));
  double *f2 = cd_malloc((size_t)(HW * 4 * C) * sizeof(double));
  const double *gn = W(w, "%s.norm.weight", p), *gb = W(w, "%s.norm.bias", p);
  for (int64_t b = 0; b < s->B; b++) {
    const double *xb = x + b * C * HW;
    /* GroupNorm (eps 1e-6) into [HW, C] */
    for (int64_t gi = 0; gi < G; gi++) {
      double m = 0, v = 0;
      for (int64_t c = gi * cg; c < (gi + 1) * cg; c++)
        for (int64_t i = 0; i < HW; i++) m += xb[c * HW + i];
      m /= (double)(cg * HW);
      for (int64_t c = gi * cg; c < (gi + 1) * cg; c++)
        for (int64_t i = 0; i < HW; i++) v += (xb[c * HW + i] - m) * (xb[c * HW + i] - m);
      v /= (double)(cg * HW);
      for (int64_t c = gi * cg; c < (gi + 1) * cg; c++)
        for (int64_t i = 0; i < HW; i++) hn[i * C + c] = (xb[c * HW + i] - m) / sqrt(v + 1e-6) * gn[c] + gb[c];
    }
    lin(hn, HW, C, W(w, "%s.proj_in.weight", p), W(w, "%s.proj_in.bias", p), C, h);
    for (int d = 0; d < s->depth; d++) {
      char q[192];
      snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, d);
      char a[200];
      layer_norm(h, HW, C, W(w, "%s.norm1.weight", q), W(w, "%s.norm1.bias", q), t);
      snprintf(a, sizeof a, "%s.attn1", q);
      attn_ref(w, a, t, HW, t, HW, C, C, s->heads, h);
      layer_norm(h, HW, C, W(w, "%s.norm2.weight", q), W(w, "%s.norm2.bias", q), t);
      snprintf(a, sizeof a, "%s.attn2", q);
      attn_ref(w, a, t, HW, ctx + b * s->T * s->Cc, s->T, s->Cc, C, s->heads, h);
      layer_norm(h, HW, C, W(w, "%s.norm3.weight", q), W(w, "%s.norm3.bias", q), t);
      lin(t, HW, C, W(w, "%s.ff.net.0.proj.weight", q), W(w, "%s.ff.net.0.proj.bias", q), 8 * C, ff);
      /* GEGLU: hidden, gate = chunk(2); hidden * gelu(gate), exact (erf) GELU */
      for (int64_t i = 0; i < HW; i++)
        for (int64_t c = 0; c < 4 * C; c++) {
          double u = ff[i * 8 * C + c], gt = ff[i * 8 * C + 4 * C + c];
          f2[i * 4 * C + c] = u * 0.5 * gt * (1 + erf(gt / sqrt(2.0)));
        }
      lin(f2, HW, 4 * C, W(w, "%s.ff.net.2.weight", q), W(w, "%s.ff.net.2.bias", q), C, t);
      for (int64_t i = 0; i < HW * C; i++) h[i] += t[i];
    }
    lin(h, HW, C, W(w, "%s.proj_out.weight", p), W(w, "%s.proj_out.bias", p), C, t);
    for (int64_t c = 0; c < C; c++)
      for (int64_t i = 0; i < HW; i++) out[b * C * HW + c * HW + i] = t[i * C + c] + xb[c * HW + i];
  }
  free(hn); free(h); free(t); free(ff); free(f2);
}

/* ------------------------------------------------------------ gradient check */

/* One checked tensor: its float values (what the graph reads), its float64
 * copy (what the reference reads and finite differences perturb) and the
 * node whose gradient the graph computes. */
typedef struct {
  const char *what;
  float *f;
  double *d;
  int64_t n;
  cd_node *node;
} checked;

typedef double (*loss_fn)(void *ctx); /* sum(r * ref output) */

/* Makes the named weights trainable and fills ck[0..n) with them; 0, or -1
 * with test_msg naming the first one the builder never read. */
static int train_weights(cd_weights *w, const char *const *names, int n, checked *ck) {
  for (int i = 0; i < n; i++) {
    cd_weight *cw = cd_weights_get(w, names[i]);
    if (!cw || !cw->used || !cw->node) {
      snprintf(test_msg, sizeof test_msg, "%s is not part of the graph", names[i]);
      return -1;
    }
    cd_set_trainable(cw->node);
    ck[i] = (checked){names[i], cw->data, W_mut(w, names[i]), cd_numel(cw->ndim, cw->ne), cw->node};
  }
  return 0;
}

/* analytic gradients (float32 graph) against central differences of the
 * float64 reference; relative L2 over up to 48 spread elements per tensor */
static int grad_check(cd_graph *g, checked *c, int nc, loss_fn L, void *ctx, double tol) {
  const double eps = 1e-4; /* truncation O(eps^2) ~ 1e-8 relative: far below tol */
  for (int i = 0; i < nc; i++) {
    float *an = cd_malloc((size_t)c[i].n * sizeof(float));
    if (cd_graph_get_grad(g, c[i].node, an)) {
      snprintf(test_msg, sizeof test_msg, "%s: %s", c[i].what, cd_last_error());
      free(an);
      return -1;
    }
    double num = 0, den = 0;
    int64_t stride = c[i].n > 48 ? c[i].n / 48 : 1;
    for (int64_t j = stride / 2; j < c[i].n; j += stride) {
      double x0 = c[i].d[j];
      c[i].d[j] = x0 + eps;
      double lp = L(ctx);
      c[i].d[j] = x0 - eps;
      double lm = L(ctx);
      c[i].d[j] = x0;
      double fd = (lp - lm) / (2 * eps);
      num += (an[j] - fd) * (an[j] - fd);
      den += fd * fd;
    }
    free(an);
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(e <= tol) || den == 0) {
      snprintf(test_msg, sizeof test_msg, "gradient of %s: rel err %.3g > %.3g (|fd| %.3g)", c[i].what, e, tol,
               sqrt(den));
      return -1;
    }
  }
  return 0;
}

/* ------------------------------------------------------------ transformer depth 2 */

typedef struct {
  cd_weights *w;
  xf_shape s;
  double *x, *ctx, *r, *y;
} xf_case;

static double xf_loss(void *p) {
  xf_case *k = p;
  transformer_ref(k->w, "t", &k->s, k->x, k->ctx, k->y);
  double l = 0;
  for (int64_t i = 0; i < k->s.B * k->s.C * k->s.H * k->s.Wd; i++) l += k->r[i] * k->y[i];
  return l;
}

TEST(transformer_depth2_matches_float64) {
  xf_case k = {0};
  k.s = (xf_shape){.B = 2, .C = 32, .H = 3, .Wd = 4, .T = 5, .Cc = 24, .heads = 2, .depth = 2, .groups = 8};
  const int64_t C = k.s.C, nx = k.s.B * C * k.s.H * k.s.Wd, nc = k.s.B * k.s.T * k.s.Cc;
  cd_unet m = {0};
  m.cfg.norm_groups = k.s.groups;
  m.cfg.linear_proj = 1;
  m.w = k.w = cd_weights_new();
  wmaker mw = {k.w, 11};
  mk_norm(&mw, "t.norm", C);
  mk_linear(&mw, "t.proj_in", C, C, 1);
  for (int d = 0; d < k.s.depth; d++) {
    char p[96], q[128];
    snprintf(p, sizeof p, "t.transformer_blocks.%d", d);
    for (int i = 1; i <= 3; i++) {
      snprintf(q, sizeof q, "%s.norm%d", p, i);
      mk_norm(&mw, q, C);
    }
    for (int a = 1; a <= 2; a++) {
      static const char *const nm[4] = {"to_q", "to_k", "to_v", "to_out.0"};
      for (int i = 0; i < 4; i++) {
        snprintf(q, sizeof q, "%s.attn%d.%s", p, a, nm[i]);
        mk_linear(&mw, q, C, a == 2 && (i == 1 || i == 2) ? k.s.Cc : C, i == 3);
      }
    }
    snprintf(q, sizeof q, "%s.ff.net.0.proj", p);
    mk_linear(&mw, q, 8 * C, C, 1);
    snprintf(q, sizeof q, "%s.ff.net.2", p);
    mk_linear(&mw, q, C, 4 * C, 1);
  }
  mk_linear(&mw, "t.proj_out", C, C, 1);

  float *xf = cd_malloc((size_t)nx * sizeof(float)), *cf = cd_malloc((size_t)nc * sizeof(float));
  float *rf = cd_malloc((size_t)nx * sizeof(float)), *yf = cd_malloc((size_t)nx * sizeof(float));
  test_fill_uniform(xf, (size_t)nx, -1, 1, 1);
  test_fill_uniform(cf, (size_t)nc, -1, 1, 2);
  test_fill_uniform(rf, (size_t)nx, -1, 1, 3);
  k.x = cd_malloc((size_t)nx * sizeof(double));
  k.ctx = cd_malloc((size_t)nc * sizeof(double));
  k.r = cd_malloc((size_t)nx * sizeof(double));
  k.y = cd_malloc((size_t)nx * sizeof(double));
  for (int64_t i = 0; i < nx; i++) { k.x[i] = xf[i]; k.r[i] = rf[i]; }
  for (int64_t i = 0; i < nc; i++) k.ctx[i] = cf[i];

  cd_graph *g = cd_graph_new();
  cd_node *x = cd_param(g, "x", xf, 4, (int64_t[]){k.s.B, C, k.s.H, k.s.Wd});
  cd_node *ctx = cd_param(g, "ctx", cf, 3, (int64_t[]){k.s.B, k.s.T, k.s.Cc});
  cd_node *rn = cd_param(g, "r", rf, 4, x->ne);
  cd_set_trainable(x);
  cd_set_trainable(ctx);
  cd_node *y = cd_unet_transformer(g, &m, NULL, x, ctx, k.s.heads, k.s.depth, "t");
  cd_graph_output(g, y);
  /* weights of the second block train too: the depth loop must wire them in */
  static const char *const wn[2] = {"t.transformer_blocks.1.attn2.to_k.weight",
                                    "t.transformer_blocks.1.ff.net.0.proj.weight"};
  checked ck[4] = {{"x", xf, k.x, nx, x}, {"ctx", cf, k.ctx, nc, ctx}};
  const int wok = !train_weights(k.w, wn, 2, ck + 2);
  cd_node *loss = cd_sum(g, cd_mul(g, y, rn));
  cd_plan_opts po = {.training = 1, .loss = loss};
  int ok = wok && !cd_graph_plan(g, &po) && !cd_graph_forward(g) && !cd_graph_get(g, y, yf) && !cd_graph_backward(g);
  char err[1024];
  snprintf(err, sizeof err, "%s", ok ? "" : wok ? cd_last_error() : test_msg);
  double fe = -1;
  int gok = 0;
  if (ok) {
    transformer_ref(k.w, "t", &k.s, k.x, k.ctx, k.y);
    double num = 0, den = 0;
    for (int64_t i = 0; i < nx; i++) { num += (yf[i] - k.y[i]) * (yf[i] - k.y[i]); den += k.y[i] * k.y[i]; }
    fe = sqrt(num / den);
    gok = !grad_check(g, ck, 4, xf_loss, &k, 1e-3);
  }
  cd_graph_free(g);
  cache_clear();
  cd_weights_free(k.w);
  free(xf); free(cf); free(rf); free(yf);
  free(k.x); free(k.ctx); free(k.r); free(k.y);
  CHECKF(ok, "%s", err);
  CHECKF(fe >= 0 && fe <= 1e-4, "forward rel err %.3g > 1e-4", fe);
  CHECK(gok);
}

/* ------------------------------------------------------------ text_time embedding */

typedef struct {
  cd_weights *w;
  int64_t B, P, n, D, T;
  double *te, *ids, *r, *y;
} add_case;

/* diffusers: emb = TimestepEmbedding(concat[text_embeds, Timesteps(D, flip=True, shift=0)(ids)]) */
static void add_ref(add_case *k) {
  const int64_t in = k->P + k->n * k->D, half = k->D / 2;
  double *a = cd_malloc((size_t)in * sizeof(double)), *h = cd_malloc((size_t)k->T * sizeof(double));
  for (int64_t b = 0; b < k->B; b++) {
    for (int64_t i = 0; i < k->P; i++) a[i] = k->te[b * k->P + i];
    for (int64_t j = 0; j < k->n; j++)
      for (int64_t i = 0; i < half; i++) {
        double arg = k->ids[b * k->n + j] * exp(-log(10000.0) * (double)i / (double)half);
        a[k->P + j * k->D + i] = cos(arg); /* flip_sin_to_cos: cos first */
        a[k->P + j * k->D + half + i] = sin(arg);
      }
    lin(a, 1, in, W(k->w, "add_embedding.linear_1.weight"), W(k->w, "add_embedding.linear_1.bias"), k->T, h);
    for (int64_t i = 0; i < k->T; i++) h[i] = h[i] / (1 + exp(-h[i]));
    lin(h, 1, k->T, W(k->w, "add_embedding.linear_2.weight"), W(k->w, "add_embedding.linear_2.bias"), k->T,
        k->y + b * k->T);
  }
  free(a);
  free(h);
}

static double add_loss(void *p) {
  add_case *k = p;
  add_ref(k);
  double l = 0;
  for (int64_t i = 0; i < k->B * k->T; i++) l += k->r[i] * k->y[i];
  return l;
}

TEST(text_time_embedding_matches_float64) {
  add_case k = {.B = 2, .P = 12, .n = 6, .D = 8, .T = 32};
  cd_unet m = {0};
  m.cfg.block_out[0] = (int)k.T / 4;
  m.cfg.flip_sin_to_cos = 1;
  m.cfg.add_time_dim = (int)k.D;
  m.cfg.add_text_dim = (int)k.P;
  m.cfg.add_time_ids = (int)k.n;
  CHECK(cd_unet_add_in_dim(&m.cfg) == 12 + 6 * 8);
  m.w = k.w = cd_weights_new();
  wmaker mw = {k.w, 5};
  mk_linear(&mw, "add_embedding.linear_1", k.T, cd_unet_add_in_dim(&m.cfg), 1);
  mk_linear(&mw, "add_embedding.linear_2", k.T, k.T, 1);
  /* SDXL-like ids: original size, crop top-left, target size */
  const float ids[12] = {1024, 768, 0, 16, 1024, 1024, 512, 640, 32, 0, 512, 512};
  float *tf = cd_malloc((size_t)(k.B * k.P) * sizeof(float)), *rf = cd_malloc((size_t)(k.B * k.T) * sizeof(float));
  float *yf = cd_malloc((size_t)(k.B * k.T) * sizeof(float));
  test_fill_uniform(tf, (size_t)(k.B * k.P), -1, 1, 7);
  test_fill_uniform(rf, (size_t)(k.B * k.T), -1, 1, 8);
  k.te = cd_malloc((size_t)(k.B * k.P) * sizeof(double));
  k.ids = cd_malloc(12 * sizeof(double));
  k.r = cd_malloc((size_t)(k.B * k.T) * sizeof(double));
  k.y = cd_malloc((size_t)(k.B * k.T) * sizeof(double));
  for (int64_t i = 0; i < k.B * k.P; i++) k.te[i] = tf[i];
  for (int i = 0; i < 12; i++) k.ids[i] = ids[i];
  for (int64_t i = 0; i < k.B * k.T; i++) k.r[i] = rf[i];

  cd_graph *g = cd_graph_new();
  cd_node *te = cd_param(g, "text_embeds", tf, 2, (int64_t[]){k.B, k.P});
  cd_node *ti = cd_input(g, "time_ids", 2, (int64_t[]){k.B, k.n});
  cd_node *rn = cd_param(g, "r", rf, 2, (int64_t[]){k.B, k.T});
  cd_set_trainable(te);
  cd_unet_added add = {te, ti};
  cd_node *y = cd_unet_add_embedding(g, &m, &add, k.B);
  cd_graph_output(g, y);
  static const char *const wn[2] = {"add_embedding.linear_1.weight", "add_embedding.linear_2.weight"};
  checked ck[3] = {{"text_embeds", tf, k.te, k.B * k.P, te}};
  const int wok = !train_weights(k.w, wn, 2, ck + 1);
  cd_node *loss = cd_sum(g, cd_mul(g, y, rn));
  cd_plan_opts po = {.training = 1, .loss = loss};
  int ok = wok && !cd_graph_plan(g, &po) && !cd_graph_set_input(g, ti, ids) && !cd_graph_forward(g) &&
           !cd_graph_get(g, y, yf) && !cd_graph_backward(g);
  char err[1024];
  snprintf(err, sizeof err, "%s", ok ? "" : wok ? cd_last_error() : test_msg);
  double fe = -1;
  int gok = 0;
  /* float32 rounds the sinusoid's argument t * f (t up to 1024) to a few ulps of
   * 1024: an absolute error of ~4 * 1024 * u in sin/cos, whose values are O(1);
   * the rest of the chain is two short dot products (typical bound). */
  const double ftol = 4 * 1024 * TEST_U32 + 1e-5;
  if (ok) {
    add_ref(&k);
    double num = 0, den = 0;
    for (int64_t i = 0; i < k.B * k.T; i++) { num += (yf[i] - k.y[i]) * (yf[i] - k.y[i]); den += k.y[i] * k.y[i]; }
    fe = sqrt(num / den);
    gok = !grad_check(g, ck, 3, add_loss, &k, 1e-3);
  }
  cd_graph_free(g);
  cache_clear();
  cd_weights_free(k.w);
  free(tf); free(rf); free(yf);
  free(k.te); free(k.ids); free(k.r); free(k.y);
  CHECKF(ok, "%s", err);
  CHECKF(fe >= 0 && fe <= ftol, "forward rel err %.3g > %.3g", fe, ftol);
  CHECK(gok);
}

/* ------------------------------------------------------------ structure */

/* SDXL: DownBlock2D, then CrossAttn at levels 1 and 2 with depths 2 and 10, mid 10 */
static void sdxl_config(cd_unet_config *c) {
  memset(c, 0, sizeof *c);
  c->nlevels = 3;
  c->layers_per_block = 2;
  static const int bo[3] = {320, 640, 1280}, dp[3] = {1, 2, 10};
  for (int i = 0; i < 3; i++) {
    c->block_out[i] = bo[i];
    c->heads[i] = bo[i] / 64;
    c->depth[i] = dp[i];
    c->down_attn[i] = i > 0;
    c->up_attn[i] = i < 2;
  }
  c->mid_attn = 1;
  c->mid_depth = 10;
}

TEST(attn2_layers_follow_depth) {
  cd_unet_config c;
  sdxl_config(&c);
  char names[128][96];
  int n = cd_unet_attn2_layers(&c, names, 128);
  /* down: 2x2 + 2x10; mid: 10; up (lowest resolution first): 3x10 + 3x2 */
  CHECKF(n == 4 + 20 + 10 + 30 + 6, "%d cross-attention layers", n);
  CHECK(!strcmp(names[0], "down_blocks.1.attentions.0.transformer_blocks.0.attn2"));
  CHECK(!strcmp(names[1], "down_blocks.1.attentions.0.transformer_blocks.1.attn2"));
  CHECK(!strcmp(names[4], "down_blocks.2.attentions.0.transformer_blocks.0.attn2"));
  CHECK(!strcmp(names[24], "mid_block.attentions.0.transformer_blocks.0.attn2"));
  CHECK(!strcmp(names[33], "mid_block.attentions.0.transformer_blocks.9.attn2"));
  CHECK(!strcmp(names[34], "up_blocks.0.attentions.0.transformer_blocks.0.attn2"));
  CHECK(!strcmp(names[63], "up_blocks.0.attentions.2.transformer_blocks.9.attn2"));
  CHECK(!strcmp(names[64], "up_blocks.1.attentions.0.transformer_blocks.0.attn2"));
  CHECK(!strcmp(names[69], "up_blocks.1.attentions.2.transformer_blocks.1.attn2"));
  /* unset depths read as 1 (SD 1.x/2.x configs) */
  cd_unet_config d = c;
  memset(d.depth, 0, sizeof d.depth);
  d.mid_depth = 0;
  CHECK(cd_unet_attn2_layers(&d, names, 128) == 2 + 2 + 1 + 3 + 3);
}

TEST(sgm_keys_map_to_diffusers) {
  cd_unet_config c;
  sdxl_config(&c);
  c.add_time_dim = 256;
  c.add_text_dim = 1280;
  c.add_time_ids = 6;
  cd_keymap km;
  CHECK_OK(cd_keymap_unet(&km, &c));
  static const char *const ok[][2] = {
      {"label_emb.0.0.weight", "add_embedding.linear_1.weight"},
      {"label_emb.0.2.bias", "add_embedding.linear_2.bias"},
      {"input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"},
      {"input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"},
      {"input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
       "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight"},
      {"input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.bias",
       "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj.bias"},
      {"input_blocks.8.1.proj_out.weight", "down_blocks.2.attentions.1.proj_out.weight"},
      {"middle_block.1.transformer_blocks.9.norm3.weight", "mid_block.attentions.0.transformer_blocks.9.norm3.weight"},
      {"middle_block.2.out_layers.3.weight", "mid_block.resnets.1.conv2.weight"},
      {"output_blocks.2.1.transformer_blocks.9.attn1.to_out.0.bias",
       "up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_out.0.bias"},
      {"output_blocks.2.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"},
      {"output_blocks.5.1.transformer_blocks.1.attn2.to_v.weight",
       "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_v.weight"},
      {"output_blocks.8.0.skip_connection.weight", "up_blocks.2.resnets.2.conv_shortcut.weight"},
  };
  /* blocks past a level's depth, attention at the level without it */
  static const char *const bad[] = {"input_blocks.8.1.transformer_blocks.10.norm1.weight",
                                    "output_blocks.5.1.transformer_blocks.2.norm1.weight",
                                    "input_blocks.1.1.proj_in.weight", "output_blocks.8.1.proj_in.weight",
                                    "label_emb.0.1.weight"};
  char msg[512] = "";
  for (size_t i = 0; i < sizeof ok / sizeof *ok && !msg[0]; i++) {
    cd_km_result r;
    if (cd_keymap_map(&km, ok[i][0], &r) != CD_KM_COPY || strcmp(r.dst[0], ok[i][1]))
      snprintf(msg, sizeof msg, "%s -> %s, expected %s", ok[i][0], r.n ? r.dst[0] : "(nothing)", ok[i][1]);
  }
  for (size_t i = 0; i < sizeof bad / sizeof *bad && !msg[0]; i++) {
    cd_km_result r;
    if (cd_keymap_map(&km, bad[i], &r) != CD_KM_UNKNOWN) snprintf(msg, sizeof msg, "%s was mapped to %s", bad[i], r.dst[0]);
  }
  cd_keymap_free(&km);
  CHECKF(!msg[0], "%s", msg);
}

TEST(added_conditioning_required) {
  cd_unet m = {0};
  m.cfg.nlevels = 1;
  m.cfg.in_channels = m.cfg.out_channels = 4;
  m.cfg.block_out[0] = 8;
  m.cfg.context_dim = 8;
  m.cfg.layers_per_block = 1;
  m.cfg.norm_groups = 4;
  m.cfg.add_time_dim = 8;
  m.cfg.add_text_dim = 4;
  m.cfg.add_time_ids = 6;
  m.w = cd_weights_new();
  wmaker mw = {m.w, 3}; /* the time embedding exists: the first missing piece is the added input */
  mk_linear(&mw, "time_embedding.linear_1", 32, 8, 1);
  mk_linear(&mw, "time_embedding.linear_2", 32, 32, 1);
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 4, (int64_t[]){1, 4, 4, 4}), *t = cd_input(g, "t", 1, (int64_t[]){1});
  cd_node *c = cd_input(g, "c", 3, (int64_t[]){1, 3, 8});
  cd_graph_output(g, cd_unet_build(g, &m, NULL, x, t, c));
  int rc = cd_graph_plan(g, NULL);
  char err[512];
  snprintf(err, sizeof err, "%s", rc ? cd_last_error() : "");
  cd_graph_free(g);
  cd_weights_free(m.w);
  CHECK(rc != 0);
  CHECKF(strstr(err, "text_embeds and time_ids are required"), "error: %s", err);
}

int main(void) {
  RUN(transformer_depth2_matches_float64);
  RUN(text_time_embedding_matches_float64);
  RUN(attn2_layers_follow_depth);
  RUN(sgm_keys_map_to_diffusers);
  RUN(added_conditioning_required);
  return test_summary();
}
