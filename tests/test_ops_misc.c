/* test_ops_misc.c - normalisation, activation, element-wise, embedding and
 * loss kernels against naive double references (test_check_op: forward vs the
 * reference, backward vs finite differences of the reference). */
#include "test.h"

#include "engine/cpu/cpu.h"

/* one op-check case plus the op's parameters; c.ctx points back at it */
typedef struct {
  op_check c;
  int ip[4];
  double fp[2];
  int flags;          /* op-specific options, see each op */
  const float *vals;  /* fixed values for source `vals_src` (ids, timesteps, masks) */
  int vals_src;
  double lo, hi;      /* uniform init range for perturbable sources when lo < hi */
  char name[128];
  /* for run_case's second pass */
  cd_node *(*build0)(cd_graph *g, cd_node **src, void *ctx);
  void (*ref0)(double **src, double *out, void *ctx);
  int64_t ny;
} tc;

/* y = f(x) + f(x) with two separate nodes: both backward kernels add into the
 * same source gradients, so a kernel that assigns instead of accumulating fails */
static cd_node *twice_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  cd_node *a = t->build0(g, s, ctx), *b = t->build0(g, s, ctx);
  t->ny = a->n;
  return cd_add(g, a, b);
}
static void twice_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  t->ref0(s, out, ctx);
  for (int64_t i = 0; i < t->ny; i++) out[i] *= 2;
}

/* the case as given, then (small trainable cases) the accumulation check */
static int run_case(tc *t) {
  t->c.ctx = t;
  if (test_check_op(&t->c)) return -1;
  if (!t->c.trainable_mask) return 0;
  op_check c2 = t->c;
  t->build0 = t->c.build;
  t->ref0 = t->c.ref;
  c2.build = twice_build;
  c2.ref = twice_ref;
  for (int i = 0; i < c2.nsrc; i++)
    if (cd_numel(c2.ndim[i], c2.ne[i]) > 4096) return 0;
  int rc = test_check_op(&c2);
  if (rc) {
    char m[sizeof test_msg];
    snprintf(m, sizeof m, "%s", test_msg);
    snprintf(test_msg, sizeof test_msg, "twice: %.1000s", m);
  }
  return rc;
}
#define RUNCASE(t) do { if (run_case(t)) { test_failed_flag = 1; return; } } while (0)

static int64_t nel(const tc *t, int i) { return cd_numel(t->c.ndim[i], t->c.ne[i]); }

static void set_src_shape(tc *t, int i, int nd, const int64_t *ne) {
  t->c.ndim[i] = nd;
  for (int d = 0; d < nd; d++) t->c.ne[i][d] = ne[d];
  if (i + 1 > t->c.nsrc) t->c.nsrc = i + 1;
}

/* fixed values are frozen (1); a custom range is perturbable (0); else default */
static int tc_init(int i, float *data, int64_t n, void *ctx) {
  tc *t = ctx;
  if (t->vals && i == t->vals_src) {
    memcpy(data, t->vals, n * sizeof(float));
    return 1;
  }
  if (t->lo < t->hi) {
    test_fill_uniform(data, n, (float)t->lo, (float)t->hi, 777 + i);
    return 0;
  }
  return -1;
}

/* multi-index helpers for references */
static void unravel(int64_t i, int nd, const int64_t *ne, int64_t *idx) {
  for (int d = nd - 1; d >= 0; d--) { idx[d] = i % ne[d]; i /= ne[d]; }
}
static int64_t ravel(int nd, const int64_t *ne, const int64_t *idx) {
  int64_t o = 0;
  for (int d = 0; d < nd; d++) o = o * ne[d] + idx[d];
  return o;
}

/* ================================================================ GROUP_NORM
 * flags: 1 = gamma present (src 1), 2 = beta present (after gamma) */
static cd_node *gn_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  cd_node *gamma = t->flags & 1 ? s[1] : NULL, *beta = t->flags & 2 ? s[t->flags & 1 ? 2 : 1] : NULL;
  return cd_group_norm(g, s[0], gamma, beta, t->ip[0], (float)t->fp[0]);
}
static void gn_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int64_t *ne = t->c.ne[0], N = ne[0], C = ne[1], S = nel(t, 0) / (N * C), G = t->ip[0], Cg = C / G;
  const double eps = (float)t->fp[0];
  const double *gamma = t->flags & 1 ? s[1] : NULL, *beta = t->flags & 2 ? s[t->flags & 1 ? 2 : 1] : NULL;
  for (int64_t n = 0; n < N; n++)
    for (int64_t gi = 0; gi < G; gi++) {
      const double *x = s[0] + (n * C + gi * Cg) * S;
      double m = 0, v = 0;
      for (int64_t j = 0; j < Cg * S; j++) m += x[j];
      m /= Cg * S;
      for (int64_t j = 0; j < Cg * S; j++) v += (x[j] - m) * (x[j] - m);
      v /= Cg * S;
      for (int64_t c = 0; c < Cg; c++)
        for (int64_t k = 0; k < S; k++) {
          const int64_t ch = gi * Cg + c;
          double y = (x[c * S + k] - m) / sqrt(v + eps);
          if (gamma) y *= gamma[ch];
          if (beta) y += beta[ch];
          out[(n * C + ch) * S + k] = y;
        }
    }
}
static void gn_case(tc *t, int nd, const int64_t *ne, int G, int flags, unsigned mask) {
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "group_norm nd=%d C=%ld G=%d flags=%d mask=%u", nd, (long)ne[1], G, flags, mask);
  t->c.name = t->name;
  set_src_shape(t, 0, nd, ne);
  int k = 1;
  if (flags & 1) set_src_shape(t, k++, 1, &ne[1]);
  if (flags & 2) set_src_shape(t, k++, 1, &ne[1]);
  t->c.trainable_mask = mask;
  t->c.build = gn_build;
  t->c.ref = gn_ref;
  t->c.init = tc_init;
  t->ip[0] = G;
  t->fp[0] = 1e-5;
  t->flags = flags;
}

TEST(group_norm) {
  tc t;
  /* 3-D, groups 3, gamma and beta trainable */
  gn_case(&t, 3, (int64_t[]){2, 6, 5}, 3, 3, 7); RUNCASE(&t);
  /* 4-D, one group, only x trainable (affine frozen) */
  gn_case(&t, 4, (int64_t[]){2, 6, 3, 5}, 1, 3, 1); RUNCASE(&t);
  /* per-channel groups (G = C), only gamma / only beta trainable */
  gn_case(&t, 4, (int64_t[]){3, 4, 2, 3}, 4, 3, 2); RUNCASE(&t);
  gn_case(&t, 4, (int64_t[]){3, 4, 2, 3}, 4, 3, 4); RUNCASE(&t);
  /* no affine; beta only */
  gn_case(&t, 3, (int64_t[]){2, 6, 7}, 2, 0, 1); RUNCASE(&t);
  gn_case(&t, 2, (int64_t[]){3, 6}, 3, 2, 3); RUNCASE(&t);
  /* the SD size class: 8 groups, trainable everything */
  gn_case(&t, 4, (int64_t[]){2, 32, 8, 8}, 8, 3, 7); RUNCASE(&t);
  /* a large common offset must not lose the signal (two-pass statistics) */
  gn_case(&t, 4, (int64_t[]){2, 8, 5, 5}, 4, 3, 7);
  t.lo = 300; t.hi = 302;
  t.c.fd_eps = 1e-3;
  RUNCASE(&t);
}

/* ================================================================ LAYER_NORM */
static cd_node *ln_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  cd_node *gamma = t->flags & 1 ? s[1] : NULL, *beta = t->flags & 2 ? s[t->flags & 1 ? 2 : 1] : NULL;
  return cd_layer_norm(g, s[0], gamma, beta, (float)t->fp[0]);
}
static void ln_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int64_t C = t->c.ne[0][t->c.ndim[0] - 1], rows = nel(t, 0) / C;
  const double eps = (float)t->fp[0];
  const double *gamma = t->flags & 1 ? s[1] : NULL, *beta = t->flags & 2 ? s[t->flags & 1 ? 2 : 1] : NULL;
  for (int64_t r = 0; r < rows; r++) {
    const double *x = s[0] + r * C;
    double m = 0, v = 0;
    for (int64_t j = 0; j < C; j++) m += x[j];
    m /= C;
    for (int64_t j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
    v /= C;
    for (int64_t j = 0; j < C; j++)
      out[r * C + j] = (x[j] - m) / sqrt(v + eps) * (gamma ? gamma[j] : 1) + (beta ? beta[j] : 0);
  }
}
static void ln_case(tc *t, int nd, const int64_t *ne, int flags, unsigned mask) {
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "layer_norm nd=%d C=%ld flags=%d mask=%u", nd, (long)ne[nd - 1], flags, mask);
  t->c.name = t->name;
  set_src_shape(t, 0, nd, ne);
  int k = 1;
  if (flags & 1) set_src_shape(t, k++, 1, &ne[nd - 1]);
  if (flags & 2) set_src_shape(t, k++, 1, &ne[nd - 1]);
  t->c.trainable_mask = mask;
  t->c.build = ln_build;
  t->c.ref = ln_ref;
  t->c.init = tc_init;
  t->fp[0] = 1e-5;
  t->flags = flags;
}

TEST(layer_norm) {
  tc t;
  ln_case(&t, 3, (int64_t[]){2, 5, 7}, 3, 7); RUNCASE(&t);
  ln_case(&t, 3, (int64_t[]){2, 5, 7}, 3, 1); RUNCASE(&t);
  ln_case(&t, 3, (int64_t[]){2, 5, 7}, 3, 6); RUNCASE(&t);
  ln_case(&t, 2, (int64_t[]){3, 4}, 0, 1); RUNCASE(&t);
  ln_case(&t, 2, (int64_t[]){3, 9}, 2, 3); RUNCASE(&t);
  /* large enough for the threaded paths (rows * C > 16384) */
  ln_case(&t, 3, (int64_t[]){8, 40, 64}, 3, 7); RUNCASE(&t);
}

/* ================================================================ activations
 * ip[0]: 0 silu, 1 gelu, 2 quick_gelu, 3 geglu */
static double sig(double x) { return 1 / (1 + exp(-x)); }
static double gelu_d(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static cd_node *act_build(cd_graph *g, cd_node **s, void *ctx) {
  switch (((tc *)ctx)->ip[0]) {
  case 0: return cd_silu(g, s[0]);
  case 1: return cd_gelu(g, s[0]);
  case 2: return cd_quick_gelu(g, s[0]);
  default: return cd_geglu(g, s[0]);
  }
}
static void act_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int64_t n = nel(t, 0);
  const double *x = s[0];
  if (t->ip[0] == 3) {
    const int64_t D = t->c.ne[0][t->c.ndim[0] - 1] / 2, rows = n / (2 * D);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < D; j++) out[r * D + j] = x[r * 2 * D + j] * gelu_d(x[r * 2 * D + D + j]);
    return;
  }
  for (int64_t i = 0; i < n; i++)
    out[i] = t->ip[0] == 0 ? x[i] * sig(x[i]) : t->ip[0] == 1 ? gelu_d(x[i]) : x[i] * sig(1.702 * x[i]);
}
static void act_case(tc *t, int op, int nd, const int64_t *ne, double lo, double hi) {
  static const char *names[] = {"silu", "gelu", "quick_gelu", "geglu"};
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s nd=%d n=%ld", names[op], nd, (long)cd_numel(nd, ne));
  t->c.name = t->name;
  set_src_shape(t, 0, nd, ne);
  t->c.trainable_mask = 1;
  t->c.build = act_build;
  t->c.ref = act_ref;
  t->c.init = tc_init;
  t->ip[0] = op;
  t->lo = lo;
  t->hi = hi;
}

TEST(activations) {
  tc t;
  for (int op = 0; op < 4; op++) {
    act_case(&t, op, 3, (int64_t[]){3, 5, 8}, -5, 5); RUNCASE(&t);
    act_case(&t, op, 1, (int64_t[]){14}, -1, 1); RUNCASE(&t);
    /* big enough for the threaded path */
    act_case(&t, op, 3, (int64_t[]){4, 66, 130}, -6, 6);
    t.c.max_fd = 16;
    RUNCASE(&t);
  }
  /* saturated tails must stay finite */
  act_case(&t, 0, 1, (int64_t[]){8}, -100, 100); RUNCASE(&t);
  act_case(&t, 2, 1, (int64_t[]){8}, -100, 100); RUNCASE(&t);
}

/* ================================================================ ADD / MUL
 * ip[0]: 0 add, 1 mul; flags 1: one source used twice (x op x) */
static cd_node *bin_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  cd_node *b = t->flags & 1 ? s[0] : s[1];
  return t->ip[0] ? cd_mul(g, s[0], b) : cd_add(g, s[0], b);
}
static void bin_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int na = t->c.ndim[0], nb = t->flags & 1 ? na : t->c.ndim[1];
  const int64_t *nea = t->c.ne[0], *neb = t->flags & 1 ? nea : t->c.ne[1];
  const double *b = t->flags & 1 ? s[0] : s[1];
  int64_t ia[4], ib[4];
  for (int64_t i = 0; i < nel(t, 0); i++) {
    unravel(i, na, nea, ia);
    for (int d = 0; d < nb; d++) ib[d] = neb[d] == 1 ? 0 : ia[na - nb + d];
    const double bv = b[ravel(nb, neb, ib)];
    out[i] = t->ip[0] ? s[0][i] * bv : s[0][i] + bv;
  }
}
static void bin_case(tc *t, int mul, int na, const int64_t *nea, int nb, const int64_t *neb, unsigned mask) {
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s a.n=%ld b.nd=%d b.n=%ld mask=%u", mul ? "mul" : "add",
           (long)cd_numel(na, nea), nb, (long)(nb ? cd_numel(nb, neb) : 0), mask);
  t->c.name = t->name;
  set_src_shape(t, 0, na, nea);
  if (nb) set_src_shape(t, 1, nb, neb);
  else t->flags = 1;
  t->c.trainable_mask = mask;
  t->c.build = bin_build;
  t->c.ref = bin_ref;
  t->ip[0] = mul;
}

TEST(add_mul_broadcast) {
  tc t;
  const int64_t a4[] = {2, 3, 4, 5}, a3[] = {2, 5, 7};
  for (int mul = 0; mul < 2; mul++) {
    bin_case(&t, mul, 4, a4, 4, a4, 3); RUNCASE(&t);                          /* same shape */
    bin_case(&t, mul, 4, a4, 4, (int64_t[]){2, 3, 1, 1}, 3); RUNCASE(&t);     /* ResNet time embedding */
    bin_case(&t, mul, 4, a4, 1, (int64_t[]){5}, 3); RUNCASE(&t);              /* last dim */
    bin_case(&t, mul, 4, a4, 3, (int64_t[]){3, 1, 1}, 3); RUNCASE(&t);        /* per channel */
    bin_case(&t, mul, 4, a4, 4, (int64_t[]){1, 3, 4, 1}, 3); RUNCASE(&t);     /* mixed */
    bin_case(&t, mul, 3, a3, 1, (int64_t[]){7}, 3); RUNCASE(&t);              /* bias over [B,T,C] */
    bin_case(&t, mul, 3, a3, 1, (int64_t[]){7}, 2); RUNCASE(&t);              /* only b trainable */
    bin_case(&t, mul, 3, a3, 1, (int64_t[]){7}, 1); RUNCASE(&t);              /* only a trainable */
    bin_case(&t, mul, 3, a3, 3, (int64_t[]){2, 1, 7}, 3); RUNCASE(&t);
    bin_case(&t, mul, 3, a3, 1, (int64_t[]){1}, 3); RUNCASE(&t);              /* scalar */
    bin_case(&t, mul, 3, a3, 0, NULL, 1); RUNCASE(&t);                        /* x op x */
    /* threaded paths, including the per-thread partial sums for b */
    bin_case(&t, mul, 4, (int64_t[]){2, 64, 17, 16}, 4, (int64_t[]){2, 64, 1, 1}, 3); RUNCASE(&t);
    bin_case(&t, mul, 3, (int64_t[]){4, 130, 70}, 1, (int64_t[]){70}, 3); RUNCASE(&t);
  }
}

/* ================================================================ SCALE, SUM */
static cd_node *scale_build(cd_graph *g, cd_node **s, void *ctx) { return cd_scale(g, s[0], (float)((tc *)ctx)->fp[0]); }
static void scale_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  for (int64_t i = 0; i < nel(t, 0); i++) out[i] = (float)t->fp[0] * s[0][i];
}
static cd_node *sum_build(cd_graph *g, cd_node **s, void *ctx) { return cd_sum(g, s[0]); }
static void sum_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  out[0] = 0;
  for (int64_t i = 0; i < nel(t, 0); i++) out[0] += s[0][i];
}

TEST(scale_sum) {
  tc t;
  const int64_t shapes[2][3] = {{3, 7, 1}, {5, 80, 100}};
  for (int k = 0; k < 2; k++) {
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "scale n=%ld", (long)cd_numel(3, shapes[k]));
    t.c.name = t.name;
    set_src_shape(&t, 0, 3, shapes[k]);
    t.c.trainable_mask = 1;
    t.c.build = scale_build;
    t.c.ref = scale_ref;
    t.fp[0] = -2.5;
    RUNCASE(&t);
    t.c.build = sum_build;
    t.c.ref = sum_ref;
    snprintf(t.name, sizeof t.name, "sum n=%ld", (long)cd_numel(3, shapes[k]));
    RUNCASE(&t);
  }
}

/* ================================================================ PERMUTE */
static cd_node *perm_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  return cd_permute(g, s[0], t->ip[0], t->ip[1], t->ip[2], t->ip[3]);
}
static void perm_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int nd = t->c.ndim[0];
  const int64_t *ne = t->c.ne[0];
  int64_t one[4], io[4], ii[4];
  for (int i = 0; i < nd; i++) one[i] = ne[t->ip[i]];
  for (int64_t o = 0; o < nel(t, 0); o++) {
    unravel(o, nd, one, io);
    for (int i = 0; i < nd; i++) ii[t->ip[i]] = io[i];
    out[o] = s[0][ravel(nd, ne, ii)];
  }
}
static void perm_case(tc *t, int nd, const int64_t *ne, const int *p) {
  memset(t, 0, sizeof *t);
  int k = snprintf(t->name, sizeof t->name, "permute nd=%d (", nd);
  for (int i = 0; i < nd; i++) k += snprintf(t->name + k, sizeof t->name - k, i ? ",%d" : "%d", p[i]);
  snprintf(t->name + k, sizeof t->name - k, ")");
  t->c.name = t->name;
  set_src_shape(t, 0, nd, ne);
  t->c.trainable_mask = 1;
  t->c.build = perm_build;
  t->c.ref = perm_ref;
  for (int i = 0; i < 4; i++) t->ip[i] = i < nd ? p[i] : i;
}

TEST(permute) {
  tc t;
  perm_case(&t, 3, (int64_t[]){2, 3, 5}, (int[]){0, 2, 1}); RUNCASE(&t);
  perm_case(&t, 3, (int64_t[]){2, 3, 5}, (int[]){2, 0, 1}); RUNCASE(&t);
  perm_case(&t, 4, (int64_t[]){2, 3, 4, 5}, (int[]){0, 2, 3, 1}); RUNCASE(&t); /* NCHW -> NHWC */
  perm_case(&t, 4, (int64_t[]){2, 4, 5, 3}, (int[]){0, 3, 1, 2}); RUNCASE(&t); /* and back */
  perm_case(&t, 4, (int64_t[]){2, 3, 4, 5}, (int[]){0, 2, 1, 3}); RUNCASE(&t); /* heads split */
  perm_case(&t, 2, (int64_t[]){3, 7}, (int[]){1, 0}); RUNCASE(&t);
  perm_case(&t, 3, (int64_t[]){2, 64, 300}, (int[]){0, 2, 1}); RUNCASE(&t);   /* threaded */
}

/* ================================================================ CONCAT */
static cd_node *cat_build(cd_graph *g, cd_node **s, void *ctx) { return cd_concat(g, s[0], s[1], ((tc *)ctx)->ip[0]); }
static void cat_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int nd = t->c.ndim[0], d = t->ip[0];
  int64_t ne[4], idx[4];
  for (int i = 0; i < nd; i++) ne[i] = t->c.ne[0][i] + (i == d ? t->c.ne[1][i] : 0);
  const int64_t n = cd_numel(nd, ne), da = t->c.ne[0][d];
  for (int64_t o = 0; o < n; o++) {
    unravel(o, nd, ne, idx);
    if (idx[d] < da) {
      out[o] = s[0][ravel(nd, t->c.ne[0], idx)];
    } else {
      idx[d] -= da;
      out[o] = s[1][ravel(nd, t->c.ne[1], idx)];
    }
  }
}
static void cat_case(tc *t, int nd, const int64_t *nea, const int64_t *neb, int dim, unsigned mask) {
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "concat nd=%d dim=%d mask=%u", nd, dim, mask);
  t->c.name = t->name;
  set_src_shape(t, 0, nd, nea);
  set_src_shape(t, 1, nd, neb);
  t->c.trainable_mask = mask;
  t->c.build = cat_build;
  t->c.ref = cat_ref;
  t->ip[0] = dim;
}

TEST(concat) {
  tc t;
  cat_case(&t, 3, (int64_t[]){2, 3, 4}, (int64_t[]){2, 5, 4}, 1, 3); RUNCASE(&t);
  cat_case(&t, 3, (int64_t[]){2, 3, 4}, (int64_t[]){2, 3, 6}, 2, 3); RUNCASE(&t);
  cat_case(&t, 3, (int64_t[]){2, 3, 4}, (int64_t[]){1, 3, 4}, 0, 3); RUNCASE(&t);
  cat_case(&t, 4, (int64_t[]){2, 3, 2, 3}, (int64_t[]){2, 1, 2, 3}, 1, 1); RUNCASE(&t);
  cat_case(&t, 4, (int64_t[]){2, 3, 2, 3}, (int64_t[]){2, 1, 2, 3}, 1, 2); RUNCASE(&t);
  cat_case(&t, 4, (int64_t[]){2, 64, 16, 17}, (int64_t[]){2, 32, 16, 17}, 1, 3); RUNCASE(&t);
}

/* ================================================================ TIMESTEP_EMBED
 * flags 1: pure double reference (no float32 rounding of t * freq) */
static cd_node *temb_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  return cd_timestep_embed(g, s[0], t->ip[0], t->ip[1], (float)t->fp[0]);
}
static void temb_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int64_t B = nel(t, 0), dim = t->ip[0], half = dim / 2;
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < half; i++) {
      double arg;
      if (t->flags & 1) {
        arg = s[0][b] * exp(-log(10000.0) * (double)i / ((double)half - t->fp[0]));
      } else { /* diffusers rounds the frequency and t * freq to float32 */
        const float fr = expf(((float)-log(10000.0) * (float)i) / ((float)half - (float)t->fp[0]));
        arg = (float)((float)s[0][b] * fr);
      }
      out[b * dim + i] = t->ip[1] ? cos(arg) : sin(arg);
      out[b * dim + half + i] = t->ip[1] ? sin(arg) : cos(arg);
    }
}

TEST(timestep_embed) {
  static const float t_int[] = {0, 1, 17, 423, 999};
  static const float t_frac[] = {0.5f, 3.25f, 500.7f, 999.0f, 0.0013f};
  tc t;
  for (int frac = 0; frac < 2; frac++)
    for (int flip = 0; flip < 2; flip++)
      for (int shift = 0; shift < 2; shift++)
        for (int exact = 0; exact < 2; exact++) {
          const int dim = shift ? 10 : 32;
          memset(&t, 0, sizeof t);
          snprintf(t.name, sizeof t.name, "timestep_embed %s flip=%d shift=%d dim=%d %s", frac ? "fractional" : "integer",
                   flip, shift, dim, exact ? "vs double" : "vs float32 args");
          t.c.name = t.name;
          set_src_shape(&t, 0, 1, (int64_t[]){5});
          t.c.build = temb_build;
          t.c.ref = temb_ref;
          t.c.init = tc_init;
          t.vals = frac ? t_frac : t_int;
          t.ip[0] = dim;
          t.ip[1] = flip;
          t.fp[0] = shift;
          t.flags = exact;
          /* vs the exact formula the float32 argument (|t freq| up to 999)
           * costs ~1e-5; vs the float32-argument reference only sinf/cosf differ */
          t.c.fwd_tol = exact ? 1e-4 : 1e-6;
          RUNCASE(&t);
        }
}

/* ================================================================ EMBEDDING
 * ids [2, 3] over table [7, 5] and extra [2, 5]; flags 1: no extra */
static const float emb_ids[] = {0, 8, 3, 7, 3, 6};
static cd_node *emb_build(cd_graph *g, cd_node **s, void *ctx) {
  tc *t = ctx;
  return cd_embedding(g, s[0], s[1], t->flags & 1 ? NULL : s[2]);
}
static void emb_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int64_t V = t->c.ne[1][0], D = t->c.ne[1][1];
  for (int64_t i = 0; i < nel(t, 0); i++) {
    const int64_t id = (int64_t)s[0][i];
    const double *row = id < V ? s[1] + id * D : s[2] + (id - V) * D;
    for (int64_t j = 0; j < D; j++) out[i * D + j] = row[j];
  }
}
static void emb_case(tc *t, const float *ids, int no_extra, unsigned mask) {
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "embedding extra=%d mask=%u", !no_extra, mask);
  t->c.name = t->name;
  set_src_shape(t, 0, 2, (int64_t[]){2, 3});
  set_src_shape(t, 1, 2, (int64_t[]){7, 5});
  if (!no_extra) set_src_shape(t, 2, 2, (int64_t[]){2, 5});
  t->c.trainable_mask = mask;
  t->c.build = emb_build;
  t->c.ref = emb_ref;
  t->c.init = tc_init;
  t->vals = ids;
  t->vals_src = 0;
  t->flags = no_extra;
}

TEST(embedding) {
  tc t;
  emb_case(&t, emb_ids, 0, 6); RUNCASE(&t);
  emb_case(&t, emb_ids, 0, 4); RUNCASE(&t); /* table frozen, extra rows trainable */
  emb_case(&t, emb_ids, 0, 2); RUNCASE(&t);
  static const float ids2[] = {6, 0, 0, 1, 5, 2};
  emb_case(&t, ids2, 1, 2); RUNCASE(&t);
}

/* gradient lands exactly on the rows used (x count), nowhere else */
TEST(embedding_grad_rows) {
  const int64_t V = 7, E = 2, D = 5;
  float ids[6], table[7 * 5], extra[2 * 5], r[6 * 5];
  memcpy(ids, emb_ids, sizeof ids);
  test_fill_uniform(table, V * D, -1, 1, 1);
  test_fill_uniform(extra, E * D, -1, 1, 2);
  for (int i = 0; i < 6 * 5; i++) r[i] = 1.0f;
  cd_graph *g = cd_graph_new();
  cd_node *ni = cd_param(g, "ids", ids, 2, (int64_t[]){2, 3});
  cd_node *nt = cd_param(g, "table", table, 2, (int64_t[]){V, D});
  cd_node *ne = cd_param(g, "extra", extra, 2, (int64_t[]){E, D});
  cd_node *nr = cd_param(g, "r", r, 3, (int64_t[]){2, 3, D});
  cd_set_trainable(nt);
  cd_set_trainable(ne);
  cd_node *loss = cd_sum(g, cd_mul(g, cd_embedding(g, ni, nt, ne), nr));
  cd_plan_opts po = {.training = 1, .loss = loss};
  int ok = !cd_graph_plan(g, &po) && !cd_graph_forward(g) && !cd_graph_backward(g);
  int bad = 0;
  if (ok) {
    const int tcount[7] = {1, 0, 0, 2, 0, 0, 1}, ecount[2] = {1, 1};
    for (int64_t v = 0; v < V; v++)
      for (int64_t j = 0; j < D; j++) bad += nt->grad[v * D + j] != (float)tcount[v];
    for (int64_t e = 0; e < E; e++)
      for (int64_t j = 0; j < D; j++) bad += ne->grad[e * D + j] != (float)ecount[e];
  }
  cd_graph_free(g);
  CHECKF(ok, "graph failed: %s", cd_last_error());
  CHECKF(bad == 0, "%d gradient entries differ from the use counts", bad);
}

/* out-of-range and non-integer ids: zero rows, counted, no gradient, no crash */
TEST(embedding_bad_ids) {
  const int64_t V = 4, E = 1, D = 3;
  float ids[6] = {1, -1, 5, 2.5f, NAN, 4}; /* 4 = the extra row; 5 is past V + E */
  float table[4 * 3], extra[3], r[6 * 3];
  test_fill_uniform(table, V * D, -1, 1, 3);
  test_fill_uniform(extra, E * D, -1, 1, 4);
  for (int i = 0; i < 6 * 3; i++) r[i] = 1.0f;
  cd_graph *g = cd_graph_new();
  cd_node *ni = cd_param(g, "ids", ids, 1, (int64_t[]){6});
  cd_node *nt = cd_param(g, "table", table, 2, (int64_t[]){V, D});
  cd_node *ne = cd_param(g, "extra", extra, 2, (int64_t[]){E, D});
  cd_node *nr = cd_param(g, "r", r, 2, (int64_t[]){6, D});
  cd_set_trainable(nt);
  cd_set_trainable(ne);
  cd_node *y = cd_embedding(g, ni, nt, ne);
  cd_graph_output(g, y);
  cd_node *loss = cd_sum(g, cd_mul(g, y, nr));
  cd_plan_opts po = {.training = 1, .loss = loss};
  int ok = !cd_graph_plan(g, &po) && !cd_graph_forward(g) && !cd_graph_backward(g);
  int nbad = cd_cpu_embedding_bad_ids(g), wrong = 0;
  if (ok) {
    for (int64_t j = 0; j < D; j++) {
      wrong += y->data[0 * D + j] != table[1 * D + j];
      wrong += y->data[5 * D + j] != extra[j];
      for (int i = 1; i <= 4; i++) wrong += y->data[i * D + j] != 0.0f;
    }
    float gsum = 0;
    for (int64_t k = 0; k < V * D; k++) gsum += nt->grad[k];
    wrong += gsum != (float)D; /* only id 1 reached the table */
    for (int64_t j = 0; j < D; j++) wrong += ne->grad[j] != 1.0f;
  }
  cd_cpu_embedding_reset_bad_ids(g);
  int after_reset = cd_cpu_embedding_bad_ids(g);
  cd_graph_free(g);
  CHECKF(ok, "graph failed: %s", cd_last_error());
  CHECKF(nbad == 4, "bad id count %d, want 4", nbad);
  CHECKF(wrong == 0, "%d wrong values", wrong);
  CHECK(after_reset == 0);
}

/* ================================================================ DETACH_ROWS */
static cd_node *det_build(cd_graph *g, cd_node **s, void *ctx) { return cd_detach_rows(g, s[0], ((tc *)ctx)->ip[0]); }
static void det_ref(double **s, double *out, void *ctx) {
  for (int64_t i = 0; i < nel(ctx, 0); i++) out[i] = s[0][i];
}

TEST(detach_rows) {
  /* forward: identity (finite differences would see the un-detached op, so
   * the backward is checked by hand below) */
  tc t;
  memset(&t, 0, sizeof t);
  t.c.name = "detach_rows forward";
  set_src_shape(&t, 0, 3, (int64_t[]){2, 5, 3});
  t.c.build = det_build;
  t.c.ref = det_ref;
  t.ip[0] = 1;
  RUNCASE(&t);
  const int64_t B = 2, T = 5, C = 3;
  for (int rows = 0; rows <= 6; rows += 1) {
    float x[2 * 5 * 3], r[2 * 5 * 3];
    test_fill_uniform(x, B * T * C, -1, 1, 5);
    test_fill_uniform(r, B * T * C, -1, 1, 6);
    cd_graph *g = cd_graph_new();
    cd_node *nx = cd_param(g, "x", x, 3, (int64_t[]){B, T, C});
    cd_node *nr = cd_param(g, "r", r, 3, (int64_t[]){B, T, C});
    cd_set_trainable(nx);
    /* x is used twice: once detached, once directly, so rows t < k get r once */
    cd_node *loss = cd_add(g, cd_sum(g, cd_mul(g, cd_detach_rows(g, nx, rows), nr)), cd_sum(g, cd_mul(g, nx, nr)));
    cd_plan_opts po = {.training = 1, .loss = loss};
    int ok = !cd_graph_plan(g, &po) && !cd_graph_forward(g) && !cd_graph_backward(g);
    int wrong = 0;
    double lref = 0;
    for (int64_t i = 0; i < B * T * C; i++) {
      const int64_t tt = (i / C) % T;
      lref += 2.0 * x[i] * r[i];
      if (ok) wrong += fabsf(nx->grad[i] - (tt < rows ? r[i] : 2 * r[i])) > 1e-6f;
    }
    if (ok) wrong += fabs(loss->data[0] - lref) > 1e-5;
    cd_graph_free(g);
    CHECKF(ok, "rows=%d: graph failed: %s", rows, cd_last_error());
    CHECKF(wrong == 0, "rows=%d: %d wrong values", rows, wrong);
  }
}

/* ================================================================ MSE
 * flags 1: mask present (src 2); vals: the mask (frozen) unless lo < hi */
static cd_node *mse_build(cd_graph *g, cd_node **s, void *ctx) {
  return cd_mse(g, s[0], s[1], ((tc *)ctx)->flags & 1 ? s[2] : NULL);
}
static void mse_ref(double **s, double *out, void *ctx) {
  tc *t = ctx;
  const int64_t B = t->c.ne[0][0], M = nel(t, 0) / B, C1 = t->c.ndim[0] > 1 ? t->c.ne[0][1] : 1, R = M / C1;
  double L = 0;
  for (int64_t b = 0; b < B; b++) {
    double num = 0, den = 0;
    for (int64_t c = 0; c < C1; c++)
      for (int64_t r = 0; r < R; r++) {
        const double e = s[0][b * M + c * R + r] - s[1][b * M + c * R + r];
        const double m = t->flags & 1 ? s[2][b * R + r] : 1.0;
        num += m * e * e;
        if (c == 0 || !(t->flags & 1)) den += m;
      }
    if (den != 0) L += num / den;
  }
  out[0] = L / B;
}
static void mse_case(tc *t, int nd, const int64_t *ne, const float *mask, unsigned tmask) {
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "mse nd=%d n=%ld mask=%d trainable=%u", nd, (long)cd_numel(nd, ne), mask != NULL, tmask);
  t->c.name = t->name;
  set_src_shape(t, 0, nd, ne);
  set_src_shape(t, 1, nd, ne);
  if (mask) {
    int64_t me[4] = {0};
    memcpy(me, ne, nd * sizeof *ne);
    if (nd > 1) me[1] = 1;
    set_src_shape(t, 2, nd, me);
    t->flags = 1;
    t->vals = mask;
    t->vals_src = 2;
  }
  t->c.trainable_mask = tmask;
  t->c.build = mse_build;
  t->c.ref = mse_ref;
  t->c.init = tc_init;
}

TEST(mse) {
  tc t;
  mse_case(&t, 3, (int64_t[]){3, 4, 5}, NULL, 3); RUNCASE(&t);
  mse_case(&t, 4, (int64_t[]){2, 4, 3, 3}, NULL, 1); RUNCASE(&t);
  mse_case(&t, 4, (int64_t[]){2, 4, 3, 3}, NULL, 2); RUNCASE(&t);
  /* mask [3, 1, 2, 3]: sample 1 all zeros (contributes 0, no NaN) */
  static const float m1[18] = {1, 0, 1, 1, 1, 0, /**/ 0, 0, 0, 0, 0, 0, /**/ 1, 1, 0, 0, 0, 1};
  mse_case(&t, 4, (int64_t[]){3, 2, 2, 3}, m1, 3); RUNCASE(&t);
  mse_case(&t, 4, (int64_t[]){3, 2, 2, 3}, m1, 2); RUNCASE(&t);
  /* the Custom Diffusion batch shape: [4, 4, 8, 8] with [4, 1, 8, 8] masks */
  static float m2[4 * 64];
  for (int b = 0; b < 4; b++)
    for (int i = 0; i < 64; i++) m2[b * 64 + i] = b >= 2 ? 1.0f : (i / 8 >= 2 + b && i / 8 <= 4 && i % 8 >= 3 - b && i % 8 <= 5);
  mse_case(&t, 4, (int64_t[]){4, 4, 8, 8}, m2, 3); RUNCASE(&t);
  /* [B, C] with a [B, 1] mask */
  static const float m3[3] = {1, 0, 2};
  mse_case(&t, 2, (int64_t[]){3, 6}, m3, 3); RUNCASE(&t);
  /* a continuous trainable mask exercises the mask gradient too */
  mse_case(&t, 3, (int64_t[]){2, 3, 4}, m3, 7);
  t.vals = NULL;
  t.lo = 0.5;
  t.hi = 1.5;
  RUNCASE(&t);
}

/* the golden Custom Diffusion instance-loss quirk, by hand: mask broadcast over
 * 4 channels in the numerator only gives 4x the masked per-element mean */
TEST(mse_mask_quirk) {
  float x[2 * 4 * 4], y[2 * 4 * 4], m[2 * 4];
  for (int i = 0; i < 32; i++) { x[i] = 1.0f; y[i] = 0.0f; }
  for (int i = 0; i < 8; i++) m[i] = i % 2; /* half the positions */
  cd_graph *g = cd_graph_new();
  cd_node *l = cd_mse(g, cd_param(g, "x", x, 3, (int64_t[]){2, 4, 4}), cd_param(g, "y", y, 3, (int64_t[]){2, 4, 4}),
                      cd_param(g, "m", m, 3, (int64_t[]){2, 1, 4}));
  cd_graph_output(g, l);
  cd_plan_opts po = {0};
  int ok = !cd_graph_plan(g, &po) && !cd_graph_forward(g);
  float v = ok ? l->data[0] : -1;
  cd_graph_free(g);
  CHECKF(ok, "graph failed: %s", cd_last_error());
  CHECKF(fabsf(v - 4.0f) < 1e-6f, "loss %g, want 4", v);
}

int main(void) {
  RUN(group_norm);
  RUN(layer_norm);
  RUN(activations);
  RUN(add_mul_broadcast);
  RUN(scale_sum);
  RUN(permute);
  RUN(concat);
  RUN(timestep_embed);
  RUN(embedding);
  RUN(embedding_grad_rows);
  RUN(embedding_bad_ids);
  RUN(detach_rows);
  RUN(mse);
  RUN(mse_mask_quirk);
  return test_summary();
}
