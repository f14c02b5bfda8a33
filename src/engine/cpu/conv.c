/* conv.c - CONV2D forward and backward on the CPU: im2col + sgemm.
 *
 *   x [N, C, H, W], w [O, C, kh, kw], b [O] or NULL; ip[0] stride, ip[1] pad
 *   y [N, O, Ho, Wo], Ho = (H + 2p - kh) / s + 1
 *
 * Per image, y_n [O, P] = W [O, K] * col [K, P] with K = C*kh*kw, P = Ho*Wo.
 * The col matrix of a big layer is large (320 channels, 3x3, 64x64: 47 MB), so
 * it is built a band of output rows at a time; a band stays in cache between
 * im2col writing it and sgemm reading it, and the memory is bounded.
 * A 1x1 stride-1 unpadded conv needs no col at all: col == x_n.
 *
 * Backward per band: dW += dY_band * col_band^T, dcol = W^T * dY_band and
 * col2im adds dcol into dx. Only the gradients that are wanted are computed.
 *
 * A 16-bit W is widened a panel of output channels at a time (cpu.h):
 * each panel's rows of y (and its share of dcol/dx) come from one sgemm.
 *
 * Threads: the im2col/col2im loops use OpenMP; sgemm is called outside any
 * parallel region (OpenBLAS has its own threads).
 */
#include <cblas.h>
#include <string.h>

#include "core/common.h"
#include "engine/cpu/cpu.h"

/* Bytes of col per band. Large enough that sgemm sees a wide N (it splits N
 * between threads and amortises packing W), small enough to stay in the
 * outer caches and to bound memory. 4-8 MiB measured best for 320 channels
 * at 64x64 (dev/conv_band_sweep.c). Not static: tests shrink it to exercise
 * band edges, dev/ tools sweep it. */
size_t cd_cpu_conv_band_bytes = (size_t)6 << 20;

typedef struct {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo;
  int s, p;
  int64_t K, P; /* K = C*kh*kw, P = Ho*Wo */
} conv_shape;

static conv_shape conv_get_shape(const cd_node *n) {
  const cd_node *x = n->src[0], *w = n->src[1];
  conv_shape q;
  q.N = x->ne[0]; q.C = x->ne[1]; q.H = x->ne[2]; q.W = x->ne[3];
  q.O = w->ne[0]; q.kh = w->ne[2]; q.kw = w->ne[3];
  q.Ho = n->ne[2]; q.Wo = n->ne[3];
  q.s = n->ip[0]; q.p = n->ip[1];
  q.K = q.C * q.kh * q.kw;
  q.P = q.Ho * q.Wo;
  return q;
}

static int conv_is_direct(const conv_shape *q) {
  return q->kh == 1 && q->kw == 1 && q->s == 1 && q->p == 0;
}

/* output rows per band */
static int64_t conv_band_rows(const cd_kernel_ctx *ctx, const conv_shape *q) {
  const size_t bytes = ((const cd_cpu_state *)ctx->state)->conv_band_bytes;
  int64_t cols = (int64_t)(bytes / (sizeof(float) * (size_t)q->K));
  int64_t rows = cols / q->Wo;
  return CD_MAX(1, CD_MIN(q->Ho, rows));
}

/* Valid output columns [*lo, *hi) for kernel column kj: 0 <= ox*s - p + kj < W. */
static void conv_valid_cols(const conv_shape *q, int64_t kj, int64_t *lo, int64_t *hi) {
  int64_t a = q->p - kj; /* need ox*s >= a */
  int64_t l = a <= 0 ? 0 : (a + q->s - 1) / q->s;
  int64_t b = q->W - 1 + q->p - kj; /* need ox*s <= b */
  int64_t h = b < 0 ? 0 : b / q->s + 1;
  *lo = CD_MIN(l, q->Wo);
  *hi = CD_MAX(*lo, CD_MIN(h, q->Wo));
}

/* col [K, (y1-y0)*Wo] from image x_n [C, H, W] for output rows [y0, y1). */
static void im2col_band(const conv_shape *q, const float *xn, float *col, int64_t y0, int64_t y1) {
  const int64_t cols = (y1 - y0) * q->Wo, kk = q->kh * q->kw;
#pragma omp parallel for schedule(static) if (q->K * cols > 32768)
  for (int64_t r = 0; r < q->K; r++) {
    int64_t c = r / kk, ki = (r % kk) / q->kw, kj = r % q->kw;
    int64_t lo, hi;
    conv_valid_cols(q, kj, &lo, &hi);
    const float *xc = xn + c * q->H * q->W;
    float *dst = col + r * cols;
    for (int64_t oy = y0; oy < y1; oy++, dst += q->Wo) {
      int64_t iy = oy * q->s - q->p + ki;
      if (iy < 0 || iy >= q->H || lo >= hi) {
        memset(dst, 0, (size_t)q->Wo * sizeof(float));
        continue;
      }
      const float *src = xc + iy * q->W + lo * q->s - q->p + kj; /* x[iy][lo*s-p+kj] */
      for (int64_t ox = 0; ox < lo; ox++) dst[ox] = 0;
      if (q->s == 1) memcpy(dst + lo, src, (size_t)(hi - lo) * sizeof(float));
      else for (int64_t t = 0; t < hi - lo; t++) dst[lo + t] = src[t * q->s];
      for (int64_t ox = hi; ox < q->Wo; ox++) dst[ox] = 0;
    }
  }
}

/* dx_n [C, H, W] += col2im(dcol [K, (y1-y0)*Wo]). One thread per channel, so
 * no two threads write the same element. */
static void col2im_band(const conv_shape *q, const float *dcol, float *dxn, int64_t y0, int64_t y1) {
  const int64_t cols = (y1 - y0) * q->Wo, kk = q->kh * q->kw;
#pragma omp parallel for schedule(static) if (q->K * cols > 32768)
  for (int64_t c = 0; c < q->C; c++) {
    float *dxc = dxn + c * q->H * q->W;
    for (int64_t k = 0; k < kk; k++) {
      int64_t ki = k / q->kw, kj = k % q->kw, lo, hi;
      conv_valid_cols(q, kj, &lo, &hi);
      const float *src = dcol + (c * kk + k) * cols;
      for (int64_t oy = y0; oy < y1; oy++, src += q->Wo) {
        int64_t iy = oy * q->s - q->p + ki;
        if (iy < 0 || iy >= q->H || lo >= hi) continue;
        float *dst = dxc + iy * q->W + lo * q->s - q->p + kj; /* dx[iy][lo*s-p+kj] */
        const float *sr = src + lo;
        if (q->s == 1)
          for (int64_t t = 0; t < hi - lo; t++) dst[t] += sr[t];
        else
          for (int64_t t = 0; t < hi - lo; t++) dst[t * q->s] += sr[t];
      }
    }
  }
}

/* scratch: forward one col band; backward a col band for dW and a dcol band
 * for dx, each only when that gradient is wanted (a 1x1 conv needs neither);
 * and the panel buffer of a 16-bit W. */
size_t cd_cpu_conv2d_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  conv_shape q = conv_get_shape(n);
  const cd_node *xn = n->src[0], *wn = n->src[1];
  if (n->n == 0 || q.K == 0) return 0;
  if (bwd && !cd_wants_grad(xn) && !cd_wants_grad(wn)) return 0;
  const size_t panels = cd_cpu_panels_scratch(wn, q.O, q.K);
  if (conv_is_direct(&q)) return panels;
  const size_t band = cd_cpu_align((size_t)q.K * conv_band_rows(ctx, &q) * q.Wo * sizeof(float));
  if (!bwd) return panels + band;
  return panels + (cd_wants_grad(wn) ? band : 0) + (cd_wants_grad(xn) ? band : 0);
}

void cd_cpu_conv2d_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *xn = n->src[0], *wn = n->src[1], *bn = n->src[2];
  conv_shape q = conv_get_shape(n);
  if (n->n == 0 || q.K == 0) {
    if (n->n) memset(n->data, 0, cd_nbytes(n));
    return;
  }
  const float *b = bn ? bn->data : NULL;
  int direct = conv_is_direct(&q);
  int64_t band = conv_band_rows(ctx, &q);
  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  float *col = direct ? NULL : cd_cpu_take(&sc, (size_t)q.K * band * q.Wo * sizeof(float), n);
  cd_cpu_panels wp;
  cd_cpu_panels_init(&wp, wn, q.O, q.K, &sc, n);
  for (int64_t i = 0; i < q.N; i++) {
    const float *x = xn->data + i * q.C * q.H * q.W;
    float *y = n->data + i * q.O * q.P;
    if (b) { /* y = bias, then sgemm accumulates (beta = 1) */
#pragma omp parallel for schedule(static) if (q.O * q.P > 32768)
      for (int64_t o = 0; o < q.O; o++)
        for (int64_t j = 0; j < q.P; j++) y[o * q.P + j] = b[o];
    }
    float beta = b ? 1.0f : 0.0f;
    if (direct) {
      for (int64_t o0 = 0; o0 < q.O; o0 += wp.per) {
        const int64_t ob = CD_MIN(wp.per, q.O - o0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)ob, (int)q.P, (int)q.K,
                    1.0f, cd_cpu_panels_get(&wp, o0, ob), (int)q.K, x, (int)q.P, beta, y + o0 * q.P, (int)q.P);
      }
      continue;
    }
    for (int64_t y0 = 0; y0 < q.Ho; y0 += band) {
      int64_t y1 = CD_MIN(q.Ho, y0 + band), cols = (y1 - y0) * q.Wo;
      im2col_band(&q, x, col, y0, y1);
      for (int64_t o0 = 0; o0 < q.O; o0 += wp.per) {
        const int64_t ob = CD_MIN(wp.per, q.O - o0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)ob, (int)cols, (int)q.K,
                    1.0f, cd_cpu_panels_get(&wp, o0, ob), (int)q.K, col, (int)cols, beta, y + o0 * q.P + y0 * q.Wo, (int)q.P);
      }
    }
  }
}

void cd_cpu_conv2d_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *xn = n->src[0], *wn = n->src[1], *bn = n->src[2];
  conv_shape q = conv_get_shape(n);
  const float *dy = n->grad;
  float *dx = xn->grad, *dw = wn->grad, *db = bn ? bn->grad : NULL;
  if (n->n == 0 || q.K == 0) return;

  if (db) { /* db[o] += sum over images and pixels of dy */
#pragma omp parallel for schedule(static) if (q.O * q.P * q.N > 32768)
    for (int64_t o = 0; o < q.O; o++) {
      double s = 0;
      for (int64_t i = 0; i < q.N; i++) {
        const float *d = dy + (i * q.O + o) * q.P;
        float t = 0;
        for (int64_t j = 0; j < q.P; j++) t += d[j];
        s += t;
      }
      db[o] += (float)s;
    }
  }
  if (!dx && !dw) return;

  cd_cpu_scratch sc = cd_cpu_scratch_of(ctx);
  cd_cpu_panels wp; /* W for dx (dw implies an f32, trainable W) */
  cd_cpu_panels_init(&wp, wn, q.O, q.K, &sc, n);
  int direct = conv_is_direct(&q);
  int64_t band = conv_band_rows(ctx, &q);
  size_t band_floats = (size_t)q.K * band * q.Wo;
  float *col = !direct && dw ? cd_cpu_take(&sc, band_floats * sizeof(float), n) : NULL;
  float *dcol = !direct && dx ? cd_cpu_take(&sc, band_floats * sizeof(float), n) : NULL;
  for (int64_t i = 0; i < q.N; i++) {
    const float *x = xn->data + i * q.C * q.H * q.W;
    const float *dyi = dy + i * q.O * q.P;
    float *dxi = dx ? dx + i * q.C * q.H * q.W : NULL;
    if (direct) {
      /* dW [O, C] += dY [O, P] * x^T [P, C];  dx [C, P] += W^T [C, O] * dY [O, P] */
      if (dw)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)q.O, (int)q.K, (int)q.P,
                    1.0f, dyi, (int)q.P, x, (int)q.P, 1.0f, dw, (int)q.K);
      if (dxi)
        for (int64_t o0 = 0; o0 < q.O; o0 += wp.per) {
          const int64_t ob = CD_MIN(wp.per, q.O - o0);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)q.K, (int)q.P, (int)ob,
                      1.0f, cd_cpu_panels_get(&wp, o0, ob), (int)q.K, dyi + o0 * q.P, (int)q.P, 1.0f, dxi, (int)q.P);
        }
      continue;
    }
    for (int64_t y0 = 0; y0 < q.Ho; y0 += band) {
      int64_t y1 = CD_MIN(q.Ho, y0 + band), cols = (y1 - y0) * q.Wo;
      const float *dyb = dyi + y0 * q.Wo; /* [O, cols] with row stride P */
      if (dw) {
        im2col_band(&q, x, col, y0, y1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)q.O, (int)q.K, (int)cols,
                    1.0f, dyb, (int)q.P, col, (int)cols, 1.0f, dw, (int)q.K);
      }
      if (dxi) { /* dcol = W^T dY_band, summed over panels of W's rows */
        for (int64_t o0 = 0; o0 < q.O; o0 += wp.per) {
          const int64_t ob = CD_MIN(wp.per, q.O - o0);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)q.K, (int)cols, (int)ob,
                      1.0f, cd_cpu_panels_get(&wp, o0, ob), (int)q.K, dyb + o0 * q.P, (int)q.P, o0 ? 1.0f : 0.0f, dcol, (int)cols);
        }
        col2im_band(&q, dcol, dxi, y0, y1);
      }
    }
  }
}
