/* elementwise.cu - the element-wise and data-movement ops on CUDA: ADD and
 * MUL with broadcasting, SCALE, PERMUTE, CONCAT, PAD2D, UPSAMPLE2X, DETACH_ROWS,
 * CAST. One thread per output element (grid-stride); every backward is a
 * gather over the gradient it writes, so no two threads add into the same
 * element and no atomics are needed. Semantics: src/engine/cpu/elementwise.c
 * and resample.c. */
#include "engine/cuda/common.cuh"

#define T 256

/* ---- broadcasting (ADD, MUL) ----
 * a has the output's shape; b's dims align to the right of a's, each equal to
 * a's or 1. bs[i] is b's element stride along a's dim i, 0 where b broadcasts. */
typedef struct {
  int nd;
  int64_t ne[CD_MAX_DIMS]; /* a's shape */
  int64_t bs[CD_MAX_DIMS];
} bcast;

static bcast bcast_of(const cd_node *a, const cd_node *b) {
  bcast q;
  memset(&q, 0, sizeof q);
  q.nd = a->ndim;
  const int off = a->ndim - b->ndim;
  int64_t st = 1;
  for (int i = a->ndim - 1; i >= 0; i--) {
    const int j = i - off;
    q.ne[i] = a->ne[i];
    q.bs[i] = (j < 0 || b->ne[j] == 1) ? 0 : st;
    if (j >= 0) st *= b->ne[j];
  }
  return q;
}

/* b's offset of a's element i */
__device__ static inline int64_t b_off(const bcast &q, int64_t i) {
  int64_t o = 0;
  for (int d = q.nd - 1; d >= 0; d--) {
    o += (i % q.ne[d]) * q.bs[d];
    i /= q.ne[d];
  }
  return o;
}

__global__ void k_binary_fwd(const float *a, const float *b, float *y, int64_t n, bcast q, int same, int mul) {
  CU_FOR(i, n) {
    const float bv = b[same ? i : b_off(q, i)];
    y[i] = mul ? a[i] * bv : a[i] + bv;
  }
}

/* ga += dy (ADD) or dy * b (MUL) */
__global__ void k_binary_bwd_a(const float *dy, const float *b, float *ga, int64_t n, bcast q, int same, int mul) {
  CU_FOR(i, n) ga[i] += mul ? dy[i] * b[same ? i : b_off(q, i)] : dy[i];
}
/* same shape: gb += dy (ADD) or dy * a (MUL) */
__global__ void k_binary_bwd_b_same(const float *dy, const float *a, float *gb, int64_t n, int mul) {
  CU_FOR(i, n) gb[i] += mul ? dy[i] * a[i] : dy[i];
}
/* broadcast: block k sums, over the cnt elements of a that read b[k], dy
 * (ADD) or dy * a (MUL), in double. b's element k decomposes over the dims
 * where b varies (bs != 0), the cnt elements over the others. */
__global__ void k_binary_bwd_b_reduce(const float *dy, const float *a, float *gb, int64_t nb, int64_t cnt, bcast q, int mul) {
  __shared__ double sh[32];
  int64_t ast[CD_MAX_DIMS];
  int64_t st = 1;
  for (int d = q.nd - 1; d >= 0; d--) {
    ast[d] = st;
    st *= q.ne[d];
  }
  for (int64_t k = blockIdx.x; k < nb; k += gridDim.x) {
    int64_t base = 0, r = k;
    for (int d = q.nd - 1; d >= 0; d--)
      if (q.bs[d]) {
        base += (r % q.ne[d]) * ast[d];
        r /= q.ne[d];
      }
    double s = 0;
    for (int64_t t = threadIdx.x; t < cnt; t += blockDim.x) {
      int64_t off = base, u = t;
      for (int d = q.nd - 1; d >= 0; d--)
        if (!q.bs[d]) {
          off += (u % q.ne[d]) * ast[d];
          u /= q.ne[d];
        }
      s += mul ? (double)dy[off] * a[off] : (double)dy[off];
    }
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) gb[k] += (float)s;
  }
}

static void binary_fwd(const cd_kernel_ctx *ctx, cd_node *n, int mul) {
  const cd_node *a = n->src[0], *b = n->src[1];
  if (n->n <= 0) return;
  k_binary_fwd<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(a->data, b->data, n->data, n->n, bcast_of(a, b), b->n == a->n, mul);
  CU_LAUNCHED(mul ? "mul" : "add");
}

static void binary_bwd(const cd_kernel_ctx *ctx, cd_node *n, int mul) {
  const cd_node *a = n->src[0], *b = n->src[1];
  if (n->n <= 0) return;
  const bcast q = bcast_of(a, b);
  const int same = b->n == a->n;
  /* a and b may be the same node (x * x): the two kernels run one after the other */
  if (a->grad) k_binary_bwd_a<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->grad, b->data, a->grad, n->n, q, same, mul);
  if (b->grad) {
    if (same) k_binary_bwd_b_same<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->grad, a->data, b->grad, n->n, mul);
    else if (b->n > 0) {
      const int64_t cnt = a->n / b->n;
      const int threads = cnt >= 4096 ? 256 : 32;
      k_binary_bwd_b_reduce<<<cu_blocks(b->n, 1), threads, 0, cu_stream(ctx)>>>(n->grad, a->data, b->grad, b->n, cnt, q, mul);
    }
  }
  CU_LAUNCHED(mul ? "mul backward" : "add backward");
}

void cu_add_fwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_fwd(ctx, n, 0); }
void cu_add_bwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_bwd(ctx, n, 0); }
void cu_mul_fwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_fwd(ctx, n, 1); }
void cu_mul_bwd(const cd_kernel_ctx *ctx, cd_node *n) { binary_bwd(ctx, n, 1); }
/* the registry gives ADD and MUL scratch (the CPU's partial sums); CUDA needs none */
size_t cu_add_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) { return 0; }
size_t cu_mul_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) { return 0; }

/* ---- SCALE ---- */
__global__ void k_scale(const float *x, float *y, float s, int64_t n, int acc) {
  CU_FOR(i, n) y[i] = acc ? y[i] + s * x[i] : s * x[i];
}
void cu_scale_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  if (n->n <= 0) return;
  k_scale<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->data, n->fp[0], n->n, 0);
  CU_LAUNCHED("scale");
}
void cu_scale_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  if (n->n <= 0 || !n->src[0]->grad) return;
  k_scale<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->grad, n->src[0]->grad, n->fp[0], n->n, 1);
  CU_LAUNCHED("scale backward");
}

/* ---- PERMUTE: output dim i is input dim ip[i]; both directions gather ---- */
typedef struct {
  int nd;
  int64_t ne[CD_MAX_DIMS]; /* shape walked (destination) */
  int64_t st[CD_MAX_DIMS]; /* source stride for each destination dim */
} walk;

__global__ void k_gather(const float *src, float *dst, int64_t n, walk w, int acc) {
  CU_FOR(i, n) {
    int64_t off = 0, r = i;
    for (int d = w.nd - 1; d >= 0; d--) {
      off += (r % w.ne[d]) * w.st[d];
      r /= w.ne[d];
    }
    dst[i] = acc ? dst[i] + src[off] : src[off];
  }
}

static void strides(int nd, const int64_t *ne, int64_t *st) {
  st[nd - 1] = 1;
  for (int d = nd - 2; d >= 0; d--) st[d] = st[d + 1] * ne[d + 1];
}

void cu_permute_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  if (n->n <= 0 || n->ndim != x->ndim) return;
  int64_t xst[CD_MAX_DIMS];
  strides(x->ndim, x->ne, xst);
  walk w;
  memset(&w, 0, sizeof w);
  w.nd = n->ndim;
  for (int i = 0; i < n->ndim; i++) w.ne[i] = n->ne[i], w.st[i] = xst[n->ip[i]];
  k_gather<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(x->data, n->data, n->n, w, 0);
  CU_LAUNCHED("permute");
}
void cu_permute_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  if (n->n <= 0 || !x->grad || n->ndim != x->ndim) return;
  int64_t yst[CD_MAX_DIMS];
  strides(n->ndim, n->ne, yst);
  walk w;
  memset(&w, 0, sizeof w);
  w.nd = x->ndim;
  for (int i = 0; i < x->ndim; i++) w.ne[i] = x->ne[i];
  for (int i = 0; i < n->ndim; i++) w.st[n->ip[i]] = yst[i]; /* input dim ip[i] is output dim i */
  k_gather<<<cu_blocks(x->n, T), T, 0, cu_stream(ctx)>>>(n->grad, x->grad, x->n, w, 1);
  CU_LAUNCHED("permute backward");
}

/* ---- CONCAT along dim ip0: per outer index, a's block (ia) then b's (ib) ---- */
__global__ void k_concat(const float *a, const float *b, float *y, int64_t n, int64_t ia, int64_t ib) {
  CU_FOR(i, n) {
    const int64_t o = i / (ia + ib), r = i % (ia + ib);
    y[i] = r < ia ? a[o * ia + r] : b[o * ib + r - ia];
  }
}
/* g (the source's gradient, outer x w) += dy's columns [c0, c0 + w) of rows of ia + ib */
__global__ void k_concat_bwd(const float *dy, float *g, int64_t n, int64_t w, int64_t c0, int64_t row) {
  CU_FOR(i, n) g[i] += dy[(i / w) * row + c0 + i % w];
}
static int concat_dims(const cd_node *n, int64_t *outer, int64_t *ia, int64_t *ib) {
  const int d = n->ip[0];
  if (d < 0 || d >= n->ndim) return 0;
  int64_t o = 1;
  for (int i = 0; i < d; i++) o *= n->ne[i];
  if (o <= 0) return 0;
  *outer = o;
  *ia = n->src[0]->n / o;
  *ib = n->src[1]->n / o;
  return 1;
}
void cu_concat_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t outer, ia, ib;
  if (!concat_dims(n, &outer, &ia, &ib) || n->n <= 0) return;
  k_concat<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->src[1]->data, n->data, n->n, ia, ib);
  CU_LAUNCHED("concat");
}
void cu_concat_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t outer, ia, ib;
  if (!concat_dims(n, &outer, &ia, &ib)) return;
  /* a and b may be the same node: two kernels in order */
  if (n->src[0]->grad && outer * ia > 0)
    k_concat_bwd<<<cu_blocks(outer * ia, T), T, 0, cu_stream(ctx)>>>(n->grad, n->src[0]->grad, outer * ia, ia, 0, ia + ib);
  if (n->src[1]->grad && outer * ib > 0)
    k_concat_bwd<<<cu_blocks(outer * ib, T), T, 0, cu_stream(ctx)>>>(n->grad, n->src[1]->grad, outer * ib, ib, ia, ia + ib);
  CU_LAUNCHED("concat backward");
}

/* ---- PAD2D: the last two dims; ip = left, right, top, bottom ---- */
static void plane_hw(const cd_node *x, int64_t *H, int64_t *W) {
  *H = x->ndim >= 2 ? x->ne[x->ndim - 2] : 1;
  *W = x->ne[x->ndim - 1];
}
__global__ void k_pad(const float *x, float *y, int64_t n, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t l, int64_t t) {
  CU_FOR(i, n) {
    const int64_t ox = i % Wo, oy = i / Wo % Ho, pl = i / (Wo * Ho);
    const int64_t ix = ox - l, iy = oy - t;
    y[i] = (ix >= 0 && ix < W && iy >= 0 && iy < H) ? x[(pl * H + iy) * W + ix] : 0.0f;
  }
}
__global__ void k_pad_bwd(const float *dy, float *dx, int64_t n, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t l, int64_t t) {
  CU_FOR(i, n) {
    const int64_t ix = i % W, iy = i / W % H, pl = i / (W * H);
    dx[i] += dy[(pl * Ho + iy + t) * Wo + ix + l];
  }
}
void cu_pad2d_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t H, W;
  plane_hw(n->src[0], &H, &W);
  if (n->n <= 0) return;
  k_pad<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->data, n->n, H, W, n->ne[n->ndim - 2],
                                                      n->ne[n->ndim - 1], n->ip[0], n->ip[2]);
  CU_LAUNCHED("pad2d");
}
void cu_pad2d_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  int64_t H, W;
  plane_hw(x, &H, &W);
  if (x->n <= 0 || !x->grad) return;
  k_pad_bwd<<<cu_blocks(x->n, T), T, 0, cu_stream(ctx)>>>(n->grad, x->grad, x->n, H, W, n->ne[n->ndim - 2], n->ne[n->ndim - 1],
                                                          n->ip[0], n->ip[2]);
  CU_LAUNCHED("pad2d backward");
}

/* ---- UPSAMPLE2X: y[oy][ox] = x[oy/2][ox/2], Ho in {2H-1, 2H} ---- */
__global__ void k_up(const float *x, float *y, int64_t n, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  CU_FOR(i, n) {
    const int64_t ox = i % Wo, oy = i / Wo % Ho, pl = i / (Wo * Ho);
    y[i] = x[(pl * H + (oy >> 1)) * W + (ox >> 1)];
  }
}
/* dx[iy][ix] += the (cropped) 2x2 block of dy, summed in the CPU's order */
__global__ void k_up_bwd(const float *dy, float *dx, int64_t n, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  CU_FOR(i, n) {
    const int64_t ix = i % W, iy = i / W % H, pl = i / (W * H);
    const float *a = dy + (pl * Ho + 2 * iy) * Wo;
    const int64_t ox = 2 * ix;
    float s = a[ox] + (ox + 1 < Wo ? a[ox + 1] : 0.0f);
    if (2 * iy + 1 < Ho) s += a[Wo + ox] + (ox + 1 < Wo ? a[Wo + ox + 1] : 0.0f);
    dx[i] += s;
  }
}
void cu_upsample2x_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  int64_t H, W;
  plane_hw(n->src[0], &H, &W);
  if (n->n <= 0) return;
  k_up<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->data, n->n, H, W, n->ne[n->ndim - 2], n->ne[n->ndim - 1]);
  CU_LAUNCHED("upsample2x");
}
void cu_upsample2x_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  int64_t H, W;
  plane_hw(x, &H, &W);
  if (x->n <= 0 || !x->grad) return;
  k_up_bwd<<<cu_blocks(x->n, T), T, 0, cu_stream(ctx)>>>(n->grad, x->grad, x->n, H, W, n->ne[n->ndim - 2], n->ne[n->ndim - 1]);
  CU_LAUNCHED("upsample2x backward");
}

/* ---- DETACH_ROWS: identity on [B, T, ...]; backward drops rows t < ip0 ---- */
void cu_detach_rows_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  if (n->n > 0 && n->data != n->src[0]->data)
    cu_ok(cudaMemcpyAsync(n->data, n->src[0]->data, cd_nbytes(n), cudaMemcpyDeviceToDevice, cu_stream(ctx)), "detach_rows");
}
__global__ void k_detach_bwd(const float *dy, float *dx, int64_t n, int64_t Tn, int64_t C, int64_t k) {
  CU_FOR(i, n) if (i / C % Tn >= k) dx[i] += dy[i];
}
void cu_detach_rows_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  float *dx = n->src[0]->grad;
  if (!dx || n->ndim < 2 || n->ne[0] <= 0 || n->ne[1] <= 0 || n->n <= 0) return;
  const int64_t Tn = n->ne[1], C = n->n / (n->ne[0] * Tn);
  const int64_t k = CD_MAX(0, CD_MIN((int64_t)n->ip[0], Tn));
  k_detach_bwd<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->grad, dx, n->n, Tn, C, k);
  CU_LAUNCHED("detach_rows backward");
}

/* ---- CAST: any storage type -> f32 ---- */
void cu_cast_fwd(const cd_kernel_ctx *ctx, cd_node *n) { cu_to_f32(ctx, n->src[0]->data, n->src[0]->type, n->n, n->data); }
