/* gemm.cu - LINEAR, BMM and CONV2D on CUDA through cuBLAS (cu_gemm, in the
 * backend's math mode: fp32, tf32 or bf16 tensor cores, always float32
 * accumulation and float32 values in memory).
 *
 * LINEAR: x [R, K], w [M, K] (f32, f16 or bf16), b [M]|NULL -> y [R, M]
 *         y = x w^T + b;  dx += dy w;  dw += dy^T x;  db += colsum(dy)
 * BMM:    y[i] = op(a[i]) op(b[i]) (linear.c has the transposed cases)
 * CONV2D: im2col + GEMM, as src/engine/cpu/conv.c, with the column matrix of
 *         a group of images (or of a band of output rows of one image, when
 *         one image's columns exceed cd_cuda_conv_band_bytes) in scratch:
 *           y_i [O, P] = W [O, K] col_i [K, P]      (one batched GEMM)
 *           dW += dY_i col_i^T;  dcol_i = W^T dY_i;  dx_i += col2im(dcol_i)
 *         col2im is a gather (one thread per input element sums the column
 *         entries it fed), so nothing is added twice and no atomics are used.
 *         A 1x1 stride-1 unpadded conv needs no columns.
 * A 16-bit weight is widened into scratch once per call (exact); the CPU does
 * the same a panel at a time. This is the correctness-first path: cuDNN or an
 * implicit-GEMM kernel with bf16 operands is the next step (docs/cuda.md). */
#include "engine/cuda/common.cuh"

#define T 256

/* column-matrix bytes per band; not static so that tests can shrink it to
 * exercise band edges */
extern "C" {
size_t cd_cuda_conv_band_bytes = (size_t)256 << 20;
}

/* y[r, :] = b for every row */
__global__ void k_rows_bias(float *y, const float *b, int64_t rows, int64_t M) {
  CU_FOR(i, rows * M) y[i] = b[i % M];
}
/* y[n, o, :] = b[o] */
__global__ void k_chan_bias(float *y, const float *b, int64_t n, int64_t O, int64_t P) {
  CU_FOR(i, n) y[i] = b[i / P % O];
}

/* ---- LINEAR ---- */
size_t cu_linear_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  const cd_node *x = n->src[0], *w = n->src[1], *b = n->src[2];
  const int64_t M = w->ne[0], K = w->ne[1], R = M ? n->n / M : 0;
  if (n->n == 0) return 0;
  if (!bwd) return K ? cu_as_f32_bytes(w) : 0;
  return (cd_wants_grad(x) && K ? cu_as_f32_bytes(w) : 0) + (cd_wants_grad(b) ? cu_align((size_t)R * 4) : 0);
}

void cu_linear_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *w = n->src[1], *b = n->src[2];
  const int64_t M = w->ne[0], K = w->ne[1], R = M ? n->n / M : 0;
  if (n->n == 0) return;
  if (b) {
    k_rows_bias<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->data, b->data, R, M);
    CU_LAUNCHED("linear bias");
  } else if (K == 0)
    cu_ok(cudaMemsetAsync(n->data, 0, cd_nbytes(n), cu_stream(ctx)), "linear");
  if (K == 0) return;
  cu_scratch sc = cu_scratch_of(ctx);
  const float *wf = cu_as_f32(ctx, w, &sc, n);
  cu_gemm(ctx, 0, 1, R, M, K, 1.0f, x->data, K, 0, wf, K, 0, b ? 1.0f : 0.0f, n->data, M, 0, 1);
}

void cu_linear_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *x = n->src[0], *w = n->src[1], *b = n->src[2];
  const int64_t M = w->ne[0], K = w->ne[1], R = M ? n->n / M : 0;
  if (n->n == 0) return;
  cu_scratch sc = cu_scratch_of(ctx);
  if (x->grad && K) { /* dx [R, K] += dy [R, M] w [M, K] */
    const float *wf = cu_as_f32(ctx, w, &sc, n);
    cu_gemm(ctx, 0, 0, R, K, M, 1.0f, n->grad, M, 0, wf, K, 0, 1.0f, x->grad, K, 0, 1);
  }
  if (w->grad && K) /* dw [M, K] += dy^T [M, R] x [R, K] */
    cu_gemm(ctx, 1, 0, M, K, R, 1.0f, n->grad, M, 0, x->data, K, 0, 1.0f, w->grad, K, 0, 1);
  if (b && b->grad) {
    float *ones = (float *)cu_take(&sc, (size_t)R * 4, n);
    cu_fill(ctx, ones, 1.0f, R);
    cu_colsum(ctx, n->grad, R, M, M, ones, b->grad);
  }
}

/* ---- BMM ---- */
typedef struct {
  int64_t B, M, K, N;
  int ta, tb;
} bmm_shape;
static bmm_shape bmm_of(const cd_node *n) {
  const cd_node *a = n->src[0], *b = n->src[1];
  bmm_shape q;
  q.ta = n->ip[0] != 0;
  q.tb = n->ip[1] != 0;
  q.B = a->ne[0];
  q.M = q.ta ? a->ne[2] : a->ne[1];
  q.K = q.ta ? a->ne[1] : a->ne[2];
  q.N = q.tb ? b->ne[1] : b->ne[2];
  return q;
}

void cu_bmm_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const bmm_shape q = bmm_of(n);
  if (n->n == 0) return;
  if (q.K == 0) {
    cu_ok(cudaMemsetAsync(n->data, 0, cd_nbytes(n), cu_stream(ctx)), "bmm");
    return;
  }
  cu_gemm(ctx, q.ta, q.tb, q.M, q.N, q.K, 1.0f, n->src[0]->data, q.ta ? q.M : q.K, q.M * q.K, n->src[1]->data, q.tb ? q.K : q.N,
          q.K * q.N, 0.0f, n->data, q.N, q.M * q.N, q.B);
}

/* With C = op(A) op(B) and G = dL/dC: d op(A) = G op(B)^T, d op(B) = op(A)^T G;
 * a transposed operand's stored gradient is the transpose (cpu/linear.c). */
void cu_bmm_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *an = n->src[0], *bn = n->src[1];
  const bmm_shape q = bmm_of(n);
  if (n->n == 0 || q.K == 0) return;
  const int64_t M = q.M, N = q.N, K = q.K, lda = q.ta ? M : K, ldb = q.tb ? K : N;
  const int64_t sA = M * K, sB = K * N, sG = M * N;
  const float *A = an->data, *Bm = bn->data, *G = n->grad;
  if (an->grad) {
    if (!q.ta) /* dA [M, K] += G [M, N] op(B)^T */
      cu_gemm(ctx, 0, q.tb ? 0 : 1, M, K, N, 1.0f, G, N, sG, Bm, ldb, sB, 1.0f, an->grad, K, sA, q.B);
    else /* dA [K, M] += op(B) [K, N] G^T */
      cu_gemm(ctx, q.tb ? 1 : 0, 1, K, M, N, 1.0f, Bm, ldb, sB, G, N, sG, 1.0f, an->grad, M, sA, q.B);
  }
  if (bn->grad) {
    if (!q.tb) /* dB [K, N] += op(A)^T [K, M] G [M, N] */
      cu_gemm(ctx, q.ta ? 0 : 1, 0, K, N, M, 1.0f, A, lda, sA, G, N, sG, 1.0f, bn->grad, N, sB, q.B);
    else /* dB [N, K] += G^T [N, M] op(A) [M, K] */
      cu_gemm(ctx, 1, q.ta ? 1 : 0, N, K, M, 1.0f, G, N, sG, A, lda, sA, 1.0f, bn->grad, K, sB, q.B);
  }
}

/* ---- CONV2D ---- */
typedef struct {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo;
  int64_t s, p;
  int64_t K, P; /* K = C*kh*kw, P = Ho*Wo */
  int64_t group, rows; /* images per band (several only when rows == Ho), output rows per band */
} conv_shape;

static conv_shape conv_of(const cd_node *n) {
  const cd_node *x = n->src[0], *w = n->src[1];
  conv_shape q;
  q.N = x->ne[0]; q.C = x->ne[1]; q.H = x->ne[2]; q.W = x->ne[3];
  q.O = w->ne[0]; q.kh = w->ne[2]; q.kw = w->ne[3];
  q.Ho = n->ne[2]; q.Wo = n->ne[3];
  q.s = n->ip[0]; q.p = n->ip[1];
  q.K = q.C * q.kh * q.kw;
  q.P = q.Ho * q.Wo;
  const int64_t per_image = q.K * q.P * 4;
  const int64_t budget = (int64_t)cd_cuda_conv_band_bytes;
  if (per_image <= budget) {
    q.rows = q.Ho;
    q.group = CD_MAX(1, CD_MIN(q.N, budget / CD_MAX(1, per_image)));
  } else {
    q.group = 1;
    q.rows = CD_MAX(1, CD_MIN(q.Ho, budget / CD_MAX(1, q.K * q.Wo * 4)));
  }
  return q;
}
static int conv_direct(const conv_shape *q) { return q->kh == 1 && q->kw == 1 && q->s == 1 && q->p == 0; }
static size_t band_bytes(const conv_shape *q) { return cu_align((size_t)q->group * q->K * q->rows * q->Wo * 4); }

/* col [g][K][cols] for images [n0, n0 + g) and output rows [y0, y0 + rows) */
__global__ void k_im2col(const float *x, float *col, conv_shape q, int64_t y0, int64_t rows, int64_t g) {
  const int64_t cols = rows * q.Wo, total = g * q.K * cols;
  CU_FOR(i, total) {
    const int64_t j = i % cols, r = i / cols % q.K, im = i / (cols * q.K);
    const int64_t c = r / (q.kh * q.kw), ki = r / q.kw % q.kh, kj = r % q.kw;
    const int64_t oy = y0 + j / q.Wo, ox = j % q.Wo;
    const int64_t iy = oy * q.s - q.p + ki, ix = ox * q.s - q.p + kj;
    col[i] = (iy >= 0 && iy < q.H && ix >= 0 && ix < q.W) ? x[((im * q.C + c) * q.H + iy) * q.W + ix] : 0.0f;
  }
}
/* dx of images [n0, n0 + g), input rows [iy0, iy1): the sum of the dcol
 * entries each element fed within output rows [y0, y0 + rows) */
__global__ void k_col2im(const float *dcol, float *dx, conv_shape q, int64_t y0, int64_t rows, int64_t g, int64_t iy0, int64_t iy1) {
  const int64_t cols = rows * q.Wo, nr = iy1 - iy0, total = g * q.C * nr * q.W;
  CU_FOR(i, total) {
    const int64_t ix = i % q.W, iy = iy0 + i / q.W % nr, c = i / (q.W * nr) % q.C, im = i / (q.W * nr * q.C);
    float s = 0;
    for (int64_t ki = 0; ki < q.kh; ki++) {
      const int64_t ty = iy + q.p - ki;
      if (ty < 0 || ty % q.s) continue;
      const int64_t oy = ty / q.s;
      if (oy < y0 || oy >= y0 + rows) continue;
      for (int64_t kj = 0; kj < q.kw; kj++) {
        const int64_t tx = ix + q.p - kj;
        if (tx < 0 || tx % q.s) continue;
        const int64_t ox = tx / q.s;
        if (ox >= q.Wo) continue;
        s += dcol[(im * q.K + (c * q.kh + ki) * q.kw + kj) * cols + (oy - y0) * q.Wo + ox];
      }
    }
    dx[((im * q.C + c) * q.H + iy) * q.W + ix] += s;
  }
}

size_t cu_conv2d_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  const conv_shape q = conv_of(n);
  const cd_node *x = n->src[0], *w = n->src[1], *b = n->src[2];
  if (n->n == 0 || q.K == 0) return 0;
  const int direct = conv_direct(&q);
  if (!bwd) return cu_as_f32_bytes(w) + (direct ? 0 : band_bytes(&q));
  size_t s = 0;
  if (cd_wants_grad(x)) s += cu_as_f32_bytes(w) + (direct ? 0 : band_bytes(&q));
  if (cd_wants_grad(w) && !direct) s += band_bytes(&q);
  if (cd_wants_grad(b)) s += cu_align((size_t)q.P * 4);
  return s;
}

void cu_conv2d_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *w = n->src[1], *b = n->src[2];
  const conv_shape q = conv_of(n);
  cudaStream_t st = cu_stream(ctx);
  if (n->n == 0) return;
  if (b) {
    k_chan_bias<<<cu_blocks(n->n, T), T, 0, st>>>(n->data, b->data, n->n, q.O, q.P);
    CU_LAUNCHED("conv2d bias");
  } else
    cu_ok(cudaMemsetAsync(n->data, 0, cd_nbytes(n), st), "conv2d");
  if (q.K == 0) return;
  cu_scratch sc = cu_scratch_of(ctx);
  const float *wf = cu_as_f32(ctx, w, &sc, n);
  if (conv_direct(&q)) { /* y_i [O, P] += W [O, C] x_i [C, P], all images in one batched GEMM */
    cu_gemm(ctx, 0, 0, q.O, q.P, q.K, 1.0f, wf, q.K, 0, x->data, q.P, q.C * q.P, 1.0f, n->data, q.P, q.O * q.P, q.N);
    return;
  }
  float *col = (float *)cu_take(&sc, band_bytes(&q), n);
  for (int64_t n0 = 0; n0 < q.N; n0 += q.group) {
    const int64_t g = CD_MIN(q.group, q.N - n0);
    for (int64_t y0 = 0; y0 < q.Ho; y0 += q.rows) {
      const int64_t rows = CD_MIN(q.rows, q.Ho - y0), cols = rows * q.Wo;
      k_im2col<<<cu_blocks(g * q.K * cols, T), T, 0, st>>>(x->data + n0 * q.C * q.H * q.W, col, q, y0, rows, g);
      if (!CU_LAUNCHED("im2col")) return;
      cu_gemm(ctx, 0, 0, q.O, cols, q.K, 1.0f, wf, q.K, 0, col, cols, q.K * cols, 1.0f, n->data + n0 * q.O * q.P + y0 * q.Wo,
              q.P, q.O * q.P, g);
    }
  }
}

void cu_conv2d_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  cd_node *x = n->src[0], *w = n->src[1], *b = n->src[2];
  const conv_shape q = conv_of(n);
  cudaStream_t st = cu_stream(ctx);
  const float *dy = n->grad;
  float *dx = x->grad, *dw = w->grad, *db = b ? b->grad : NULL;
  if (n->n == 0 || q.K == 0) return;
  cu_scratch sc = cu_scratch_of(ctx);
  const int direct = conv_direct(&q);
  const float *wf = dx ? cu_as_f32(ctx, w, &sc, n) : NULL;
  float *dcol = dx && !direct ? (float *)cu_take(&sc, band_bytes(&q), n) : NULL;
  float *col = dw && !direct ? (float *)cu_take(&sc, band_bytes(&q), n) : NULL;
  if (db) { /* db[o] += sum over images and pixels: row sums of each dY_i [O, P] */
    float *ones = (float *)cu_take(&sc, (size_t)q.P * 4, n);
    cu_fill(ctx, ones, 1.0f, q.P);
    const float one = 1.0f;
    for (int64_t i = 0; i < q.N; i++)
      cu_blas_ok(cublasSgemv(cu_be.blas, CUBLAS_OP_T, (int)q.P, (int)q.O, &one, dy + i * q.O * q.P, (int)q.P, ones, 1, &one, db, 1),
                 "cublasSgemv");
  }
  if (direct) {
    if (dw) /* dW [O, C] += dY_i [O, P] x_i^T [P, C] */
      for (int64_t i = 0; i < q.N; i++)
        cu_gemm(ctx, 0, 1, q.O, q.K, q.P, 1.0f, dy + i * q.O * q.P, q.P, 0, x->data + i * q.C * q.P, q.P, 0, 1.0f, dw, q.K, 0, 1);
    if (dx) /* dx_i [C, P] += W^T [C, O] dY_i [O, P] */
      cu_gemm(ctx, 1, 0, q.K, q.P, q.O, 1.0f, wf, q.K, 0, dy, q.P, q.O * q.P, 1.0f, dx, q.P, q.C * q.P, q.N);
    return;
  }
  for (int64_t n0 = 0; n0 < q.N; n0 += q.group) {
    const int64_t g = CD_MIN(q.group, q.N - n0);
    for (int64_t y0 = 0; y0 < q.Ho; y0 += q.rows) {
      const int64_t rows = CD_MIN(q.rows, q.Ho - y0), cols = rows * q.Wo;
      const float *dyb = dy + n0 * q.O * q.P + y0 * q.Wo; /* [g][O, cols], row stride P */
      if (dw) {
        k_im2col<<<cu_blocks(g * q.K * cols, T), T, 0, st>>>(x->data + n0 * q.C * q.H * q.W, col, q, y0, rows, g);
        if (!CU_LAUNCHED("im2col")) return;
        for (int64_t i = 0; i < g; i++) /* dW [O, K] += dY_band [O, cols] col^T [cols, K] */
          cu_gemm(ctx, 0, 1, q.O, q.K, cols, 1.0f, dyb + i * q.O * q.P, q.P, 0, col + i * q.K * cols, cols, 0, 1.0f, dw, q.K, 0, 1);
      }
      if (dx) { /* dcol_i [K, cols] = W^T [K, O] dY_band_i [O, cols], then gathered into dx */
        cu_gemm(ctx, 1, 0, q.K, cols, q.O, 1.0f, wf, q.K, 0, dyb, q.P, q.O * q.P, 0.0f, dcol, cols, q.K * cols, g);
        /* input rows this band's output rows read */
        const int64_t iy0 = CD_MAX(0, y0 * q.s - q.p), iy1 = CD_MIN(q.H, (y0 + rows - 1) * q.s - q.p + q.kh);
        if (iy1 > iy0) {
          k_col2im<<<cu_blocks(g * q.C * (iy1 - iy0) * q.W, T), T, 0, st>>>(dcol, dx + n0 * q.C * q.H * q.W, q, y0, rows, g, iy0, iy1);
          if (!CU_LAUNCHED("col2im")) return;
        }
      }
    }
  }
}
