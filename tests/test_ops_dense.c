/* test_ops_dense.c - CONV2D, LINEAR, BMM, PAD2D, UPSAMPLE2X against naive
 * double references (forward) and finite differences (backward). */
#include "test.h"

/* conv.c: bytes of im2col per band of output rows; shrunk here so that small
 * images are split into several bands. */
extern size_t cd_cpu_conv_band_bytes;

/* ---- CONV2D ---- */

typedef struct {
  int64_t N, C, H, W, O, kh, kw;
  int s, p, bias;
} conv_ctx;

static int64_t conv_out(int64_t in, int64_t k, int s, int p) { return (in + 2 * p - k) / s + 1; }

static cd_node *conv_build(cd_graph *g, cd_node **src, void *ctx) {
  conv_ctx *c = ctx;
  return cd_conv2d(g, src[0], src[1], c->bias ? src[2] : NULL, c->s, c->p);
}

static void conv_ref(double **src, double *out, void *ctx) {
  conv_ctx *c = ctx;
  int64_t Ho = conv_out(c->H, c->kh, c->s, c->p), Wo = conv_out(c->W, c->kw, c->s, c->p);
  const double *x = src[0], *w = src[1], *b = c->bias ? src[2] : NULL;
  for (int64_t n = 0; n < c->N; n++)
    for (int64_t o = 0; o < c->O; o++)
      for (int64_t oy = 0; oy < Ho; oy++)
        for (int64_t ox = 0; ox < Wo; ox++) {
          double acc = b ? b[o] : 0;
          for (int64_t ci = 0; ci < c->C; ci++)
            for (int64_t ki = 0; ki < c->kh; ki++)
              for (int64_t kj = 0; kj < c->kw; kj++) {
                int64_t iy = oy * c->s - c->p + ki, ix = ox * c->s - c->p + kj;
                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                acc += x[((n * c->C + ci) * c->H + iy) * c->W + ix] *
                       w[((o * c->C + ci) * c->kh + ki) * c->kw + kj];
              }
          out[((n * c->O + o) * Ho + oy) * Wo + ox] = acc;
        }
}

static op_check conv_check(conv_ctx *c, unsigned mask) {
  op_check k = {.name = "conv2d", .nsrc = c->bias ? 3 : 2, .ndim = {4, 4, 1},
                .ne = {{c->N, c->C, c->H, c->W}, {c->O, c->C, c->kh, c->kw}, {c->O}},
                .trainable_mask = mask, .build = conv_build, .ref = conv_ref, .ctx = c};
  return k;
}

/* every trainable/frozen combination of x, w (and b) */
static int conv_all_masks(conv_ctx *c) {
  unsigned nmask = c->bias ? 8 : 4;
  for (unsigned m = 0; m < nmask; m++) {
    op_check k = conv_check(c, m);
    if (test_check_op(&k)) {
      size_t l = strlen(test_msg);
      snprintf(test_msg + l, sizeof test_msg - l, " [mask %u, C=%ld H=%ld W=%ld k=%ldx%ld s=%d p=%d]", m,
               (long)c->C, (long)c->H, (long)c->W, (long)c->kh, (long)c->kw, c->s, c->p);
      return -1;
    }
  }
  return 0;
}
#define CONV_ALL(...) do { conv_ctx c_ = {__VA_ARGS__}; if (conv_all_masks(&c_)) { test_failed_flag = 1; return; } } while (0)

TEST(conv_3x3_pad1) { CONV_ALL(.N = 2, .C = 3, .H = 7, .W = 5, .O = 4, .kh = 3, .kw = 3, .s = 1, .p = 1, .bias = 1); }
TEST(conv_3x3_pad1_nobias) { CONV_ALL(.N = 2, .C = 3, .H = 7, .W = 5, .O = 4, .kh = 3, .kw = 3, .s = 1, .p = 1); }
TEST(conv_3x3_stride2_pad1) { CONV_ALL(.N = 2, .C = 3, .H = 9, .W = 7, .O = 5, .kh = 3, .kw = 3, .s = 2, .p = 1, .bias = 1); }
TEST(conv_3x3_stride2_pad0) { CONV_ALL(.N = 1, .C = 2, .H = 8, .W = 9, .O = 3, .kh = 3, .kw = 3, .s = 2, .p = 0, .bias = 1); }
TEST(conv_3x3_pad0) { CONV_ALL(.N = 2, .C = 3, .H = 6, .W = 5, .O = 2, .kh = 3, .kw = 3, .s = 1, .p = 0, .bias = 1); }
TEST(conv_1x1) { CONV_ALL(.N = 2, .C = 5, .H = 3, .W = 7, .O = 3, .kh = 1, .kw = 1, .s = 1, .p = 0, .bias = 1); }
TEST(conv_1x1_stride2) { CONV_ALL(.N = 1, .C = 3, .H = 5, .W = 6, .O = 2, .kh = 1, .kw = 1, .s = 2, .p = 0, .bias = 1); }
TEST(conv_2x3_pad2) { CONV_ALL(.N = 1, .C = 2, .H = 4, .W = 5, .O = 3, .kh = 2, .kw = 3, .s = 1, .p = 2, .bias = 1); }

/* several bands per image: a tiny band budget splits the output rows into
 * bands of 1 and 2 rows (and a remainder band) */
TEST(conv_banded) {
  size_t saved = cd_cpu_conv_band_bytes;
  int64_t budgets[] = {1, 27 * 4 * 12};
  for (int i = 0; i < 2; i++) {
    cd_cpu_conv_band_bytes = (size_t)budgets[i];
    conv_ctx a = {.N = 2, .C = 3, .H = 7, .W = 5, .O = 4, .kh = 3, .kw = 3, .s = 1, .p = 1, .bias = 1};
    conv_ctx b = {.N = 1, .C = 3, .H = 9, .W = 7, .O = 2, .kh = 3, .kw = 3, .s = 2, .p = 1, .bias = 0};
    int bad = conv_all_masks(&a) || conv_all_masks(&b);
    cd_cpu_conv_band_bytes = saved;
    if (bad) { test_failed_flag = 1; return; }
  }
}

/* a layer-sized case: C=32 at 16x16 (K = 288 per output), forward and a
 * sampled gradient check */
TEST(conv_big) {
  conv_ctx c = {.N = 1, .C = 32, .H = 16, .W = 16, .O = 32, .kh = 3, .kw = 3, .s = 1, .p = 1, .bias = 1};
  op_check k = conv_check(&c, 0);
  CHECK_OP(&k);
  k = conv_check(&c, 7);
  k.max_fd = 12;
  CHECK_OP(&k);
  conv_ctx d = {.N = 1, .C = 32, .H = 17, .W = 15, .O = 24, .kh = 3, .kw = 3, .s = 2, .p = 1, .bias = 1};
  k = conv_check(&d, 0);
  CHECK_OP(&k);
}

/* ---- LINEAR ---- */

typedef struct {
  int ndim;
  int64_t xne[4];
  int64_t M, K;
  int bias;
} lin_ctx;

static cd_node *lin_build(cd_graph *g, cd_node **src, void *ctx) {
  lin_ctx *c = ctx;
  return cd_linear(g, src[0], src[1], c->bias ? src[2] : NULL);
}

static void lin_ref(double **src, double *out, void *ctx) {
  lin_ctx *c = ctx;
  int64_t R = cd_numel(c->ndim, c->xne) / c->K;
  for (int64_t r = 0; r < R; r++)
    for (int64_t m = 0; m < c->M; m++) {
      double acc = c->bias ? src[2][m] : 0;
      for (int64_t k = 0; k < c->K; k++) acc += src[0][r * c->K + k] * src[1][m * c->K + k];
      out[r * c->M + m] = acc;
    }
}

/* all masks, or only "everything trainable" when only_all */
static int lin_all_masks(lin_ctx *c, int max_fd, int only_all) {
  unsigned nmask = c->bias ? 8 : 4;
  for (unsigned m = only_all ? nmask - 1 : 0; m < nmask; m++) {
    op_check k = {.name = "linear", .nsrc = c->bias ? 3 : 2, .ndim = {c->ndim, 2, 1},
                  .ne = {{0}, {c->M, c->K}, {c->M}}, .trainable_mask = m,
                  .build = lin_build, .ref = lin_ref, .ctx = c, .max_fd = max_fd};
    memcpy(k.ne[0], c->xne, sizeof c->xne);
    if (test_check_op(&k)) {
      size_t l = strlen(test_msg);
      snprintf(test_msg + l, sizeof test_msg - l, " [mask %u, M=%ld K=%ld]", m, (long)c->M, (long)c->K);
      return -1;
    }
  }
  return 0;
}

TEST(linear_2d) {
  lin_ctx c = {.ndim = 2, .xne = {5, 7}, .M = 3, .K = 7, .bias = 1};
  if (lin_all_masks(&c, 0, 0)) { test_failed_flag = 1; return; }
  lin_ctx d = {.ndim = 2, .xne = {4, 6}, .M = 5, .K = 6, .bias = 0};
  if (lin_all_masks(&d, 0, 0)) { test_failed_flag = 1; return; }
}
TEST(linear_3d) {
  lin_ctx c = {.ndim = 3, .xne = {2, 3, 5}, .M = 4, .K = 5, .bias = 1};
  if (lin_all_masks(&c, 0, 0)) { test_failed_flag = 1; return; }
  lin_ctx d = {.ndim = 4, .xne = {2, 1, 3, 4}, .M = 3, .K = 4, .bias = 1};
  if (lin_all_masks(&d, 0, 0)) { test_failed_flag = 1; return; }
}
TEST(linear_big) { /* 77 tokens x 320 -> 130 outputs, bias column sums over many rows */
  lin_ctx c = {.ndim = 3, .xne = {2, 77, 320}, .M = 130, .K = 320, .bias = 1};
  if (lin_all_masks(&c, 16, 1)) { test_failed_flag = 1; return; }
}

/* ---- BMM ---- */

typedef struct {
  int64_t B, M, K, N;
  int ta, tb;
} bmm_ctx;

static cd_node *bmm_build(cd_graph *g, cd_node **src, void *ctx) {
  bmm_ctx *c = ctx;
  return cd_bmm(g, src[0], src[1], c->ta, c->tb);
}

static void bmm_ref(double **src, double *out, void *ctx) {
  bmm_ctx *c = ctx;
  int64_t M = c->M, K = c->K, N = c->N;
  for (int64_t b = 0; b < c->B; b++) {
    const double *A = src[0] + b * M * K, *Bm = src[1] + b * K * N;
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double acc = 0;
        for (int64_t k = 0; k < K; k++)
          acc += (c->ta ? A[k * M + i] : A[i * K + k]) * (c->tb ? Bm[j * K + k] : Bm[k * N + j]);
        out[(b * M + i) * N + j] = acc;
      }
  }
}

static int bmm_case(int64_t B, int64_t M, int64_t K, int64_t N, int max_fd) {
  for (int t = 0; t < 4; t++)
    for (unsigned m = 0; m < 4; m++) {
      bmm_ctx c = {B, M, K, N, t & 1, t >> 1};
      op_check k = {.name = "bmm", .nsrc = 2, .ndim = {3, 3},
                    .ne = {{B, c.ta ? K : M, c.ta ? M : K}, {B, c.tb ? N : K, c.tb ? K : N}},
                    .trainable_mask = m, .build = bmm_build, .ref = bmm_ref, .ctx = &c, .max_fd = max_fd};
      if (test_check_op(&k)) {
        size_t l = strlen(test_msg);
        snprintf(test_msg + l, sizeof test_msg - l, " [ta=%d tb=%d mask %u]", c.ta, c.tb, m);
        return -1;
      }
    }
  return 0;
}

TEST(bmm_transposes) {
  if (bmm_case(2, 3, 4, 5, 0)) { test_failed_flag = 1; return; }
  if (bmm_case(3, 1, 7, 2, 0)) { test_failed_flag = 1; return; }
}
TEST(bmm_big) { /* attention-like: 2 heads, 64 queries, 40 dims, 77 keys */
  if (bmm_case(2, 64, 40, 77, 16)) { test_failed_flag = 1; return; }
}

/* ---- PAD2D ---- */

typedef struct {
  int64_t N, C, H, W;
  int l, r, t, b;
} pad_ctx;

static cd_node *pad_build(cd_graph *g, cd_node **src, void *ctx) {
  pad_ctx *c = ctx;
  return cd_pad2d(g, src[0], c->l, c->r, c->t, c->b);
}

static void pad_ref(double **src, double *out, void *ctx) {
  pad_ctx *c = ctx;
  int64_t Ho = c->H + c->t + c->b, Wo = c->W + c->l + c->r;
  for (int64_t pl = 0; pl < c->N * c->C; pl++)
    for (int64_t y = 0; y < Ho; y++)
      for (int64_t x = 0; x < Wo; x++) {
        int64_t iy = y - c->t, ix = x - c->l;
        int in = iy >= 0 && iy < c->H && ix >= 0 && ix < c->W;
        out[(pl * Ho + y) * Wo + x] = in ? src[0][(pl * c->H + iy) * c->W + ix] : 0;
      }
}

static int pad_case(pad_ctx c) {
  for (unsigned m = 0; m < 2; m++) {
    op_check k = {.name = "pad2d", .nsrc = 1, .ndim = {4}, .ne = {{c.N, c.C, c.H, c.W}},
                  .trainable_mask = m, .build = pad_build, .ref = pad_ref, .ctx = &c};
    if (test_check_op(&k)) {
      size_t l = strlen(test_msg);
      snprintf(test_msg + l, sizeof test_msg - l, " [pads %d %d %d %d]", c.l, c.r, c.t, c.b);
      return -1;
    }
  }
  return 0;
}

TEST(pad2d) {
  pad_ctx cases[] = {
      {2, 3, 4, 5, 1, 2, 0, 3},
      {1, 2, 5, 3, 0, 1, 0, 1},  /* VAE encoder: right and bottom by one */
      {1, 1, 3, 3, 0, 0, 0, 0},
      {1, 8, 33, 31, 1, 1, 1, 1}, /* big enough for the threaded path */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (pad_case(cases[i])) { test_failed_flag = 1; return; }
}

/* ---- UPSAMPLE2X ---- */

/* Ho, Wo: the output size, 0 = 2H, 2W (odd sizes: the UNet's upsampler sized to a skip) */
typedef struct { int64_t N, C, H, W, Ho, Wo; } up_ctx;

static int64_t up_ho(const up_ctx *c) { return c->Ho ? c->Ho : 2 * c->H; }
static int64_t up_wo(const up_ctx *c) { return c->Wo ? c->Wo : 2 * c->W; }

static cd_node *up_build(cd_graph *g, cd_node **src, void *ctx) {
  up_ctx *c = ctx;
  return c->Ho || c->Wo ? cd_upsample2x_to(g, src[0], up_ho(c), up_wo(c)) : cd_upsample2x(g, src[0]);
}

/* PyTorch's nearest interpolate(size=(Ho, Wo)): source index floor(o * in / out) */
static void up_ref(double **src, double *out, void *ctx) {
  up_ctx *c = ctx;
  int64_t Ho = up_ho(c), Wo = up_wo(c);
  for (int64_t pl = 0; pl < c->N * c->C; pl++)
    for (int64_t y = 0; y < Ho; y++)
      for (int64_t x = 0; x < Wo; x++) {
        int64_t sy = (int64_t)floor((double)y * c->H / Ho), sx = (int64_t)floor((double)x * c->W / Wo);
        out[(pl * Ho + y) * Wo + x] = src[0][(pl * c->H + sy) * c->W + sx];
      }
}

TEST(upsample2x) {
  up_ctx cases[] = {{2, 3, 3, 5, 0, 0}, {1, 1, 1, 1, 0, 0}, {1, 8, 32, 41, 0, 0},
                    {2, 3, 3, 5, 5, 9}, {1, 2, 4, 3, 8, 5}, {1, 2, 5, 4, 9, 8}, {1, 1, 1, 1, 1, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (unsigned m = 0; m < 2; m++) {
      up_ctx c = cases[i];
      op_check k = {.name = "upsample2x", .nsrc = 1, .ndim = {4}, .ne = {{c.N, c.C, c.H, c.W}},
                    .trainable_mask = m, .build = up_build, .ref = up_ref, .ctx = &c};
      CHECK_OP(&k);
    }
  /* only twice or twice minus one */
  int64_t sizes[2][2] = {{7, 6}, {4, 6}};
  for (int i = 0; i < 2; i++) {
    cd_graph *g = cd_graph_new();
    cd_node *x = cd_input(g, "x", 4, (int64_t[]){1, 1, 3, 3});
    cd_graph_output(g, cd_upsample2x_to(g, x, sizes[i][0], sizes[i][1]));
    int rc = cd_graph_plan(g, NULL);
    cd_graph_free(g);
    CHECKF(rc == -1 && strstr(cd_last_error(), "upsample2x"), "upsample to %ldx%ld from 3x3: %s", (long)sizes[i][0],
           (long)sizes[i][1], rc ? cd_last_error() : "accepted");
  }
}

/* conv chain as the VAE encoder downsamples: pad right/bottom, 3x3 stride 2 */
typedef struct { conv_ctx conv; pad_ctx pad; } vae_down_ctx;

static cd_node *vae_down_build(cd_graph *g, cd_node **src, void *ctx) {
  (void)ctx;
  return cd_conv2d(g, cd_pad2d(g, src[0], 0, 1, 0, 1), src[1], src[2], 2, 0);
}
static void vae_down_ref(double **src, double *out, void *ctx) {
  vae_down_ctx *c = ctx;
  int64_t n = c->pad.N * c->pad.C * (c->pad.H + 1) * (c->pad.W + 1);
  double *padded = cd_malloc((size_t)n * sizeof(double));
  pad_ref(src, padded, &c->pad);
  double *s2[3] = {padded, src[1], src[2]};
  conv_ref(s2, out, &c->conv);
  free(padded);
}

TEST(vae_downsample) {
  vae_down_ctx c = {.conv = {.N = 1, .C = 4, .H = 9, .W = 8, .O = 3, .kh = 3, .kw = 3, .s = 2, .p = 0, .bias = 1},
                    .pad = {1, 4, 8, 7, 0, 1, 0, 1}};
  op_check k = {.name = "vae_down", .nsrc = 3, .ndim = {4, 4, 1},
                .ne = {{1, 4, 8, 7}, {3, 4, 3, 3}, {3}}, .trainable_mask = 7,
                .build = vae_down_build, .ref = vae_down_ref, .ctx = &c};
  CHECK_OP(&k);
}

/* ---- accumulation: each kernel must ADD into its sources' gradients. The
 * op is applied twice to the same leaves and summed, so a kernel that
 * overwrites a gradient loses the first contribution. ---- */

typedef struct {
  cd_node *(*build)(cd_graph *, cd_node **, void *);
  void (*ref)(double **, double *, void *);
  void *ctx;
  int64_t ny; /* output elements of one application */
} twice_ctx;

static cd_node *twice_build(cd_graph *g, cd_node **src, void *ctx) {
  twice_ctx *t = ctx;
  return cd_add(g, t->build(g, src, t->ctx), t->build(g, src, t->ctx));
}
static void twice_ref(double **src, double *out, void *ctx) { /* y + y = 2y */
  twice_ctx *t = ctx;
  t->ref(src, out, t->ctx);
  for (int64_t i = 0; i < t->ny; i++) out[i] *= 2;
}
/* on failure test_msg names the op and the failed check; tag adds context */
#define TWICE(k, ny, ...) do { if (twice_check((k), (ny))) { size_t l_ = strlen(test_msg); \
    snprintf(test_msg + l_, sizeof test_msg - l_, " [applied twice] " __VA_ARGS__); test_failed_flag = 1; return; } } while (0)
static int twice_check(op_check k, int64_t ny) {
  twice_ctx t = {k.build, k.ref, k.ctx, ny};
  k.build = twice_build;
  k.ref = twice_ref;
  k.ctx = &t;
  return test_check_op(&k);
}

TEST(grads_accumulate) {
  conv_ctx c = {.N = 2, .C = 3, .H = 5, .W = 4, .O = 2, .kh = 3, .kw = 3, .s = 1, .p = 1, .bias = 1};
  conv_ctx c1 = {.N = 1, .C = 3, .H = 3, .W = 4, .O = 2, .kh = 1, .kw = 1, .s = 1, .p = 0, .bias = 1};
  TWICE(conv_check(&c, 7), 2 * 2 * 5 * 4, "3x3");
  TWICE(conv_check(&c1, 7), 1 * 2 * 3 * 4, "1x1");
  lin_ctx l = {.ndim = 3, .xne = {2, 3, 5}, .M = 4, .K = 5, .bias = 1};
  op_check kl = {.name = "linear", .nsrc = 3, .ndim = {3, 2, 1}, .ne = {{2, 3, 5}, {4, 5}, {4}},
                 .trainable_mask = 7, .build = lin_build, .ref = lin_ref, .ctx = &l};
  TWICE(kl, 2 * 3 * 4, "");
  for (int t = 0; t < 4; t++) {
    bmm_ctx b = {2, 3, 4, 5, t & 1, t >> 1};
    op_check kb = {.name = "bmm", .nsrc = 2, .ndim = {3, 3},
                   .ne = {{2, b.ta ? 4 : 3, b.ta ? 3 : 4}, {2, b.tb ? 5 : 4, b.tb ? 4 : 5}},
                   .trainable_mask = 3, .build = bmm_build, .ref = bmm_ref, .ctx = &b};
    TWICE(kb, 2 * 3 * 5, "ta=%d tb=%d", b.ta, b.tb);
  }
  pad_ctx p = {2, 3, 4, 5, 1, 2, 0, 3};
  op_check kp = {.name = "pad2d", .nsrc = 1, .ndim = {4}, .ne = {{2, 3, 4, 5}},
                 .trainable_mask = 1, .build = pad_build, .ref = pad_ref, .ctx = &p};
  TWICE(kp, 2 * 3 * 7 * 8, "");
  up_ctx u = {2, 3, 3, 5, 0, 0};
  op_check ku = {.name = "upsample2x", .nsrc = 1, .ndim = {4}, .ne = {{2, 3, 3, 5}},
                 .trainable_mask = 1, .build = up_build, .ref = up_ref, .ctx = &u};
  TWICE(ku, 2 * 3 * 6 * 10, "");
}

int main(void) {
  cd_threads_init();
  RUN(conv_3x3_pad1);
  RUN(conv_3x3_pad1_nobias);
  RUN(conv_3x3_stride2_pad1);
  RUN(conv_3x3_stride2_pad0);
  RUN(conv_3x3_pad0);
  RUN(conv_1x1);
  RUN(conv_1x1_stride2);
  RUN(conv_2x3_pad2);
  RUN(conv_banded);
  RUN(conv_big);
  RUN(linear_2d);
  RUN(linear_3d);
  RUN(linear_big);
  RUN(bmm_transposes);
  RUN(bmm_big);
  RUN(pad2d);
  RUN(upsample2x);
  RUN(vae_downsample);
  RUN(grads_accumulate);
  return test_summary();
}
