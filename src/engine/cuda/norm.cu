/* norm.cu - GROUP_NORM and LAYER_NORM on CUDA (semantics: cpu/norm.c).
 *
 * One block per group (GROUP_NORM: the group's channels are one contiguous
 * run of Cg*S values) or per row (LAYER_NORM). Statistics in double, two
 * passes (mean, then squared deviations), so a large common offset costs no
 * precision; aux keeps mean and 1/sqrt(var + eps) as floats for backward.
 * Backward, with xh = (x - mean) rstd and d = dy gamma over a group or row:
 *   dx += rstd (d - mean(d) - xh mean(d xh));  dgamma += sum dy xh;  dbeta += sum dy
 * The gamma/beta sums run one block per channel (GROUP_NORM) or one thread
 * column per feature (LAYER_NORM), in double, without atomics. */
#include "engine/cuda/common.cuh"

#define NT 512

/* ---- statistics of one run of cnt values (a block's) ---- */
__device__ static void stats(const float *x, int64_t cnt, double eps, double *sh, double *mean, double *rstd) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < cnt; i += blockDim.x) s += x[i];
  const double m = cu_block_sum(s, sh) / (double)cnt;
  double v = 0;
  for (int64_t i = threadIdx.x; i < cnt; i += blockDim.x) {
    const double d = (double)x[i] - m;
    v += d * d;
  }
  v = cu_block_sum(v, sh);
  *mean = m;
  *rstd = 1.0 / sqrt(v / (double)cnt + eps);
}

/* ---- backward through one normalised run of cnt values (a block's): adds
 * rstd (d - mean(d) - xh mean(d xh)) to dx, with d = dy gamma. gamma (NULL: 1)
 * is read at k / S: the group's channels of S values each (GROUP_NORM, gamma
 * from the group's first channel) or the row's features (LAYER_NORM, S = 1). */
__device__ static void bwd_x_run(const float *xp, const float *dp, const float *gamma, float *gp, int64_t cnt, int64_t S, float m,
                                 float r, double *sh) {
  double sd = 0, sdx = 0;
  for (int64_t k = threadIdx.x; k < cnt; k += blockDim.x) {
    const float d = dp[k] * (gamma ? gamma[k / S] : 1.0f), xh = (xp[k] - m) * r;
    sd += d;
    sdx += (double)d * xh;
  }
  sd = cu_block_sum(sd, sh);
  sdx = cu_block_sum(sdx, sh);
  const float md = (float)(sd / (double)cnt), mdx = (float)(sdx / (double)cnt);
  for (int64_t k = threadIdx.x; k < cnt; k += blockDim.x) {
    const float xh = (xp[k] - m) * r;
    gp[k] += r * (dp[k] * (gamma ? gamma[k / S] : 1.0f) - md - xh * mdx);
  }
}

/* ---- GROUP_NORM: x[N, C, *spatial]; aux = [mean (N*G) | rstd (N*G)] ---- */
__global__ void k_gn_fwd(const float *x, const float *gamma, const float *beta, float *y, float *aux, int64_t NG, int64_t G,
                         int64_t Cg, int64_t S, double eps) {
  __shared__ double sh[32];
  const int64_t i = blockIdx.x, cnt = Cg * S;
  const float *xp = x + i * cnt;
  float *yp = y + i * cnt;
  double m, r;
  stats(xp, cnt, eps, sh, &m, &r);
  if (threadIdx.x == 0) {
    aux[i] = (float)m;
    aux[NG + i] = (float)r;
  }
  const float mhi = (float)m, mlo = (float)(m - mhi);
  const int64_t c0 = (i % G) * Cg;
  for (int64_t k = threadIdx.x; k < cnt; k += blockDim.x) {
    const int64_t c = c0 + k / S;
    const float af = (float)(r * (gamma ? gamma[c] : 1.0f)), bf = beta ? beta[c] : 0.0f;
    yp[k] = ((xp[k] - mhi) - mlo) * af + bf;
  }
}

__global__ void k_gn_bwd_x(const float *x, const float *gamma, const float *dy, const float *aux, float *dx, int64_t NG, int64_t G,
                           int64_t Cg, int64_t S) {
  __shared__ double sh[32];
  const int64_t i = blockIdx.x, cnt = Cg * S, c0 = (i % G) * Cg;
  bwd_x_run(x + i * cnt, dy + i * cnt, gamma ? gamma + c0 : NULL, dx + i * cnt, cnt, S, aux[i], aux[NG + i], sh);
}

/* block c: channel c over every image */
__global__ void k_gn_bwd_affine(const float *x, const float *dy, const float *aux, float *dgamma, float *dbeta, int64_t N,
                                int64_t C, int64_t G, int64_t S) {
  __shared__ double sh[32];
  const int64_t c = blockIdx.x, Cg = C / G, NG = N * G;
  double sg = 0, sb = 0;
  for (int64_t t = threadIdx.x; t < N * S; t += blockDim.x) {
    const int64_t b = t / S, s = t % S, i = b * G + c / Cg, off = (b * C + c) * S + s;
    const float m = aux[i], r = aux[NG + i];
    sg += (double)dy[off] * ((x[off] - m) * r);
    sb += dy[off];
  }
  sg = cu_block_sum(sg, sh);
  sb = cu_block_sum(sb, sh);
  if (threadIdx.x == 0) {
    if (dgamma) dgamma[c] += (float)sg;
    if (dbeta) dbeta[c] += (float)sb;
  }
}

void cu_group_norm_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t N = x->ne[0], C = x->ne[1], G = n->ip[0];
  if (N <= 0 || C <= 0 || G <= 0 || C % G || x->n <= 0) return;
  const int64_t S = x->n / (N * C);
  k_gn_fwd<<<(unsigned)(N * G), NT, 0, cu_stream(ctx)>>>(x->data, gm ? gm->data : NULL, bt ? bt->data : NULL, n->data, n->aux,
                                                          N * G, G, C / G, S, (double)n->fp[0]);
  CU_LAUNCHED("group_norm");
}

void cu_group_norm_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t N = x->ne[0], C = x->ne[1], G = n->ip[0];
  if (N <= 0 || C <= 0 || G <= 0 || C % G || x->n <= 0) return;
  const int64_t S = x->n / (N * C);
  if (x->grad)
    k_gn_bwd_x<<<(unsigned)(N * G), NT, 0, cu_stream(ctx)>>>(x->data, gm ? gm->data : NULL, n->grad, n->aux, x->grad, N * G, G,
                                                              C / G, S);
  float *dgamma = gm ? gm->grad : NULL, *dbeta = bt ? bt->grad : NULL;
  if (dgamma || dbeta)
    k_gn_bwd_affine<<<(unsigned)C, NT, 0, cu_stream(ctx)>>>(x->data, n->grad, n->aux, dgamma, dbeta, N, C, G, S);
  CU_LAUNCHED("group_norm backward");
}

/* ---- LAYER_NORM: x[..., C] over the last dim; aux = [mean (rows) | rstd (rows)] ---- */
#define LT 128

__global__ void k_ln_fwd(const float *x, const float *gamma, const float *beta, float *y, float *aux, int64_t rows, int64_t C,
                         double eps) {
  __shared__ double sh[32];
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const float *xp = x + i * C;
    float *yp = y + i * C;
    double m, r;
    stats(xp, C, eps, sh, &m, &r);
    if (threadIdx.x == 0) {
      aux[i] = (float)m;
      aux[rows + i] = (float)r;
    }
    const float mhi = (float)m, mlo = (float)(m - mhi), rf = (float)r;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      const float xh = ((xp[j] - mhi) - mlo) * rf;
      yp[j] = xh * (gamma ? gamma[j] : 1.0f) + (beta ? beta[j] : 0.0f);
    }
  }
}

__global__ void k_ln_bwd_x(const float *x, const float *gamma, const float *dy, const float *aux, float *dx, int64_t rows, int64_t C) {
  __shared__ double sh[32];
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x)
    bwd_x_run(x + i * C, dy + i * C, gamma, dx + i * C, C, 1, aux[i], aux[rows + i], sh);
}

/* blocks of 32 features x 8 row lanes: lane ty sums rows ty, ty + 8, ... of
 * its feature, then the 8 lanes are added in order */
__global__ void k_ln_bwd_affine(const float *x, const float *dy, const float *aux, float *dgamma, float *dbeta, int64_t rows, int64_t C) {
  __shared__ double pg[8][33], pb[8][33];
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  double sg = 0, sb = 0;
  if (j < C)
    for (int64_t i = threadIdx.y; i < rows; i += 8) {
      const float m = aux[i], r = aux[rows + i];
      sg += (double)dy[i * C + j] * ((x[i * C + j] - m) * r);
      sb += dy[i * C + j];
    }
  pg[threadIdx.y][threadIdx.x] = sg;
  pb[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && j < C) {
    double tg = 0, tb = 0;
    for (int k = 0; k < 8; k++) tg += pg[k][threadIdx.x], tb += pb[k][threadIdx.x];
    if (dgamma) dgamma[j] += (float)tg;
    if (dbeta) dbeta[j] += (float)tb;
  }
}

size_t cu_layer_norm_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) { return 0; }

void cu_layer_norm_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t C = x->ne[x->ndim - 1];
  if (C <= 0 || x->n <= 0) return;
  const int64_t rows = x->n / C;
  k_ln_fwd<<<cu_blocks(rows, 1), LT, 0, cu_stream(ctx)>>>(x->data, gm ? gm->data : NULL, bt ? bt->data : NULL, n->data, n->aux,
                                                           rows, C, (double)n->fp[0]);
  CU_LAUNCHED("layer_norm");
}

void cu_layer_norm_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *gm = n->src[1], *bt = n->src[2];
  const int64_t C = x->ne[x->ndim - 1];
  if (C <= 0 || x->n <= 0) return;
  const int64_t rows = x->n / C;
  if (x->grad)
    k_ln_bwd_x<<<cu_blocks(rows, 1), LT, 0, cu_stream(ctx)>>>(x->data, gm ? gm->data : NULL, n->grad, n->aux, x->grad, rows, C);
  float *dgamma = gm ? gm->grad : NULL, *dbeta = bt ? bt->grad : NULL;
  if (dgamma || dbeta)
    k_ln_bwd_affine<<<(unsigned)((C + 31) / 32), dim3(32, 8), 0, cu_stream(ctx)>>>(x->data, n->grad, n->aux, dgamma, dbeta, rows, C);
  CU_LAUNCHED("layer_norm backward");
}
