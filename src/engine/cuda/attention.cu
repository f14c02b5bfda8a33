/* attention.cu - fused multi-head attention on CUDA, flash-attention style:
 * no kernel ever holds the [Tq, Tk] score matrix, only 32 x 32 tiles of it in
 * shared memory. Semantics (and the saved log-sum-exp) as cpu/attention.c:
 *
 *   q [B, Tq, H*D], k [B, Tk, H*D], v [B, Tk, H*D] -> y [B, Tq, H*D]
 *   head h uses channels [h*D, (h+1)*D); S = scale q k^T; causal: j <= i
 *   aux [B, H, Tq] = log-sum-exp of each row of S
 *
 * Forward: one block per (32 queries, b*H + h). 256 threads: thread t owns
 * query row i = t / 8 of the tile and output columns d = t % 8 + 8u; the
 * 8 threads of a row are 8 lanes of one warp, so the row's online softmax
 * (running max m, sum l, rescale exp(m_old - m_new)) needs only shuffles.
 *
 * Backward (flash-attention-2's formulas, as the CPU):
 *   P = exp(S - lse), Di = rowsum(dO * O), dV += P^T dO, dP = dO V^T,
 *   dS = P (dP - Di), dK += scale dS^T q, dQ += scale dS k.
 * Two kernels, each owning what it writes so that nothing needs atomics:
 * dK/dV per key tile (looping over the query tiles) and dQ per query tile
 * (looping over the key tiles); each recomputes P. Di comes first, into
 * planner-placed scratch.
 *
 * fp32 CUDA cores throughout: clear and exact, not fast. Tensor-core tiles
 * (bf16 mma/wgmma) are the next step (docs/cuda.md). Head widths up to 256. */
#include <math.h>

#include "engine/cuda/common.cuh"

#define BQ 32
#define BK 32
#define NTH 256
#define DMAX 256

typedef struct {
  int64_t B, Tq, Tk, H, D, C;
  float scale;
  int causal;
} attn_shape;

static int shape_of(const cd_node *n, attn_shape *s) {
  const cd_node *q = n->src[0], *k = n->src[1];
  s->B = q->ne[0];
  s->Tq = q->ne[1];
  s->Tk = k->ne[1];
  s->H = n->ip[0];
  s->causal = n->ip[1] != 0;
  s->scale = n->fp[0];
  s->C = q->ne[2];
  if (s->H <= 0 || s->C % s->H) return -1;
  s->D = s->C / s->H;
  return 0;
}

/* rows [r0, r0 + BQ) of head h of x [B, T, C] into sh[r][d] (stride ld) times
 * mul; rows past T are zero */
__device__ static void load_rows(const float *x, const attn_shape &s, int64_t T, int64_t b, int64_t h, int64_t r0, float mul,
                                 float *sh, int ld) {
  for (int e = threadIdx.x; e < BQ * s.D; e += blockDim.x) {
    const int r = e / (int)s.D, d = e % (int)s.D;
    const int64_t row = r0 + r;
    sh[r * ld + d] = row < T ? mul * x[((b * T + row) * s.C) + h * s.D + d] : 0.0f;
  }
}

/* key j of a tile at k0 is visible to query i of a tile at q0 */
__device__ static inline bool visible(const attn_shape &s, int64_t q0, int i, int64_t k0, int j) {
  return k0 + j < s.Tk && (!s.causal || k0 + j <= q0 + i);
}

/* ---------------------------------------------------------------- forward */

template <int NU>
__global__ void __launch_bounds__(NTH) k_attn_fwd(const float *q, const float *k, const float *v, float *y, float *lse, attn_shape s) {
  extern __shared__ float smem[];
  const int ld = (int)s.D + 1; /* odd row stride: no bank conflicts between rows */
  float *Qs = smem, *Ks = Qs + BQ * ld, *Vs = Ks + BK * ld, *Ps = Vs + BK * ld;
  const int t = threadIdx.x, i = t >> 3, lane8 = t & 7;
  const int64_t bh = blockIdx.y, b = bh / s.H, h = bh % s.H, q0 = (int64_t)blockIdx.x * BQ;
  load_rows(q, s, s.Tq, b, h, q0, s.scale, Qs, ld);
  float o[NU];
#pragma unroll
  for (int u = 0; u < NU; u++) o[u] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int64_t kend = s.causal ? CD_MIN(s.Tk, q0 + BQ) : s.Tk;
  for (int64_t k0 = 0; k0 < kend; k0 += BK) {
    __syncthreads(); /* Qs loaded; the previous tile's Ks/Vs/Ps no longer read */
    load_rows(k, s, s.Tk, b, h, k0, 1.0f, Ks, ld);
    load_rows(v, s, s.Tk, b, h, k0, 1.0f, Vs, ld);
    __syncthreads();
    /* this thread's 4 scores of row i: keys lane8 + 8u */
    float sc[4] = {0, 0, 0, 0};
    for (int d = 0; d < s.D; d++) {
      const float qd = Qs[i * ld + d];
#pragma unroll
      for (int u = 0; u < 4; u++) sc[u] += qd * Ks[(lane8 + 8 * u) * ld + d];
    }
    float mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < 4; u++) {
      if (!visible(s, q0, i, k0, lane8 + 8 * u)) sc[u] = -INFINITY;
      mx = fmaxf(mx, sc[u]);
    }
    for (int w = 1; w < 8; w <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
    const float mnew = fmaxf(m, mx);
    /* a row with nothing visible yet keeps m = -inf: subtract 0 so p and alpha are 0, not NaN */
    const float msub = mnew == -INFINITY ? 0.0f : mnew;
    const float alpha = expf(m - msub);
    float ps = 0;
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const float p = expf(sc[u] - msub);
      Ps[i * (BK + 1) + lane8 + 8 * u] = p;
      ps += p;
    }
    for (int w = 1; w < 8; w <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, w);
    l = l * alpha + ps;
    m = mnew;
    __syncwarp(); /* the row's P was written by the 8 lanes of this warp */
#pragma unroll
    for (int u = 0; u < NU; u++) {
      const int d = lane8 + 8 * u;
      if (d < s.D) {
        float acc = o[u] * alpha;
        for (int j = 0; j < BK; j++) acc += Ps[i * (BK + 1) + j] * Vs[j * ld + d];
        o[u] = acc;
      }
    }
  }
  const int64_t row = q0 + i;
  if (row < s.Tq) {
    const float inv = 1.0f / l;
    float *dst = y + (b * s.Tq + row) * s.C + h * s.D;
#pragma unroll
    for (int u = 0; u < NU; u++) {
      const int d = lane8 + 8 * u;
      if (d < s.D) dst[d] = o[u] * inv;
    }
    if (lse && lane8 == 0) lse[bh * s.Tq + row] = m + logf(l);
  }
}

static size_t fwd_smem(const attn_shape &s) { return sizeof(float) * ((size_t)(BQ + 2 * BK) * (s.D + 1) + BQ * (BK + 1)); }
static size_t bwd_smem(const attn_shape &s) {
  return sizeof(float) * ((size_t)(2 * BQ + 2 * BK) * (s.D + 1) + 2 * BQ * (BK + 1) + 2 * BQ);
}

/* the template instance for head width D (NU = columns per thread) */
#define DISPATCH(D, KERNEL, ...)                           \
  do {                                                     \
    if ((D) <= 32) KERNEL<4> __VA_ARGS__;                  \
    else if ((D) <= 64) KERNEL<8> __VA_ARGS__;             \
    else if ((D) <= 128) KERNEL<16> __VA_ARGS__;           \
    else if ((D) <= 160) KERNEL<20> __VA_ARGS__;           \
    else KERNEL<32> __VA_ARGS__;                           \
  } while (0)

template <typename K>
static int smem_allow(K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return 1;
  return cu_ok(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes), "attention shared memory");
}
#define ALLOW(D, KERNEL, bytes)                                     \
  ((D) <= 32    ? smem_allow(KERNEL<4>, bytes)                       \
   : (D) <= 64  ? smem_allow(KERNEL<8>, bytes)                       \
   : (D) <= 128 ? smem_allow(KERNEL<16>, bytes)                      \
   : (D) <= 160 ? smem_allow(KERNEL<20>, bytes)                      \
                : smem_allow(KERNEL<32>, bytes))

void cu_attention_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  attn_shape s;
  if (shape_of(n, &s)) return; /* the builder rejects such shapes */
  if (s.Tq == 0 || s.B == 0 || s.C == 0) return;
  if (s.Tk == 0) {
    cu_ok(cudaMemsetAsync(n->data, 0, cd_nbytes(n), cu_stream(ctx)), "attention");
    return;
  }
  if (s.D > DMAX || s.B * s.H > 65535) {
    cu_fail("attention", "head width above 256 or batch x heads above 65535: not supported by the CUDA kernel");
    return;
  }
  const size_t sm = fwd_smem(s);
  if (!ALLOW(s.D, k_attn_fwd, sm)) return;
  const dim3 grid((unsigned)((s.Tq + BQ - 1) / BQ), (unsigned)(s.B * s.H));
  float *lse = n->aux && n->naux >= s.B * s.H * s.Tq ? n->aux : NULL;
  DISPATCH(s.D, k_attn_fwd, <<<grid, NTH, sm, cu_stream(ctx)>>>(n->src[0]->data, n->src[1]->data, n->src[2]->data, n->data, lse, s));
  CU_LAUNCHED("attention");
}

/* ---------------------------------------------------------------- backward */

/* Di[bh, i] = sum_d dO * O over row i of head h: one warp per row */
__global__ void k_attn_di(const float *o, const float *dO, float *Di, attn_shape s) {
  const int64_t rows = s.B * s.H * s.Tq, nwarps = (int64_t)gridDim.x * blockDim.x >> 5;
  const int lane = threadIdx.x & 31;
  /* whole warps step together (the loop bound is the same for the 32 lanes) */
  for (int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; w < rows; w += nwarps) {
    const int64_t i = w % s.Tq, bh = w / s.Tq, b = bh / s.H, h = bh % s.H;
    const int64_t off = (b * s.Tq + i) * s.C + h * s.D;
    float acc = 0;
    for (int64_t d = lane; d < s.D; d += 32) acc += dO[off + d] * o[off + d];
    for (int x = 16; x; x >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, x);
    if (lane == 0) Di[w] = acc;
  }
}

/* P and dS of query tile q0 x key tile k0 into Ps, dSs (threads: row i = t/8,
 * keys lane8 + 8u); Qs holds scale * q, dOs dO, ls/dis the rows' lse and Di */
__device__ static void p_and_ds(const attn_shape &s, int64_t q0, int64_t k0, const float *Qs, const float *dOs, const float *Ks,
                                const float *Vs, const float *ls, const float *dis, float *Ps, float *dSs, int ld) {
  const int t = threadIdx.x, i = t >> 3, lane8 = t & 7;
  float sc[4] = {0, 0, 0, 0}, dp[4] = {0, 0, 0, 0};
  for (int d = 0; d < s.D; d++) {
    const float qd = Qs[i * ld + d], gd = dOs[i * ld + d];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      sc[u] += qd * Ks[(lane8 + 8 * u) * ld + d];
      dp[u] += gd * Vs[(lane8 + 8 * u) * ld + d];
    }
  }
#pragma unroll
  for (int u = 0; u < 4; u++) {
    const int j = lane8 + 8 * u;
    const float p = visible(s, q0, i, k0, j) && q0 + i < s.Tq ? expf(sc[u] - ls[i]) : 0.0f;
    if (Ps) Ps[i * (BK + 1) + j] = p;
    dSs[i * (BK + 1) + j] = p * (dp[u] - dis[i]);
  }
}

/* the query rows' lse and Di of tile q0 (rows past Tq: 0) */
__device__ static void load_row_stats(const attn_shape &s, int64_t bh, int64_t q0, const float *lse, const float *Di, float *ls,
                                      float *dis) {
  for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
    const int64_t row = q0 + r;
    ls[r] = row < s.Tq ? lse[bh * s.Tq + row] : 0.0f;
    dis[r] = row < s.Tq ? Di[bh * s.Tq + row] : 0.0f;
  }
}

/* dK, dV of one key tile: thread owns key row j = t/8, columns lane8 + 8u */
template <int NU>
__global__ void __launch_bounds__(NTH) k_attn_dkv(const float *q, const float *k, const float *v, const float *dO, const float *lse,
                                                   const float *Di, float *dk, float *dv, attn_shape s) {
  extern __shared__ float smem[];
  const int ld = (int)s.D + 1;
  float *Ks = smem, *Vs = Ks + BK * ld, *Qs = Vs + BK * ld, *dOs = Qs + BQ * ld;
  float *Ps = dOs + BQ * ld, *dSs = Ps + BQ * (BK + 1), *ls = dSs + BQ * (BK + 1), *dis = ls + BQ;
  const int t = threadIdx.x, j = t >> 3, lane8 = t & 7;
  const int64_t bh = blockIdx.y, b = bh / s.H, h = bh % s.H, k0 = (int64_t)blockIdx.x * BK;
  load_rows(k, s, s.Tk, b, h, k0, 1.0f, Ks, ld);
  load_rows(v, s, s.Tk, b, h, k0, 1.0f, Vs, ld);
  float dka[NU], dva[NU];
#pragma unroll
  for (int u = 0; u < NU; u++) dka[u] = dva[u] = 0.0f;
  /* causal: queries before k0 see none of these keys */
  for (int64_t q0 = s.causal ? k0 / BQ * BQ : 0; q0 < s.Tq; q0 += BQ) {
    __syncthreads(); /* previous tile's Qs/dOs/Ps/dSs no longer read */
    load_rows(q, s, s.Tq, b, h, q0, s.scale, Qs, ld);
    load_rows(dO, s, s.Tq, b, h, q0, 1.0f, dOs, ld);
    load_row_stats(s, bh, q0, lse, Di, ls, dis);
    __syncthreads();
    p_and_ds(s, q0, k0, Qs, dOs, Ks, Vs, ls, dis, Ps, dSs, ld);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < NU; u++) {
      const int d = lane8 + 8 * u;
      if (d < s.D) {
        float a = dva[u], c = dka[u];
        for (int i = 0; i < BQ; i++) {
          a += Ps[i * (BK + 1) + j] * dOs[i * ld + d];
          c += dSs[i * (BK + 1) + j] * Qs[i * ld + d];
        }
        dva[u] = a;
        dka[u] = c;
      }
    }
  }
  const int64_t row = k0 + j;
  if (row >= s.Tk) return;
  const int64_t off = (b * s.Tk + row) * s.C + h * s.D;
#pragma unroll
  for (int u = 0; u < NU; u++) {
    const int d = lane8 + 8 * u;
    if (d < s.D) {
      if (dk) dk[off + d] += dka[u];
      if (dv) dv[off + d] += dva[u];
    }
  }
}

/* dQ of one query tile: thread owns query row i = t/8, columns lane8 + 8u */
template <int NU>
__global__ void __launch_bounds__(NTH) k_attn_dq(const float *q, const float *k, const float *v, const float *dO, const float *lse,
                                                  const float *Di, float *dq, attn_shape s) {
  extern __shared__ float smem[];
  const int ld = (int)s.D + 1;
  float *Ks = smem, *Vs = Ks + BK * ld, *Qs = Vs + BK * ld, *dOs = Qs + BQ * ld;
  float *dSs = dOs + BQ * ld + BQ * (BK + 1), *ls = dSs + BQ * (BK + 1), *dis = ls + BQ; /* same layout as k_attn_dkv */
  const int t = threadIdx.x, i = t >> 3, lane8 = t & 7;
  const int64_t bh = blockIdx.y, b = bh / s.H, h = bh % s.H, q0 = (int64_t)blockIdx.x * BQ;
  load_rows(q, s, s.Tq, b, h, q0, s.scale, Qs, ld);
  load_rows(dO, s, s.Tq, b, h, q0, 1.0f, dOs, ld);
  load_row_stats(s, bh, q0, lse, Di, ls, dis);
  float acc[NU];
#pragma unroll
  for (int u = 0; u < NU; u++) acc[u] = 0.0f;
  const int64_t kend = s.causal ? CD_MIN(s.Tk, q0 + BQ) : s.Tk;
  for (int64_t k0 = 0; k0 < kend; k0 += BK) {
    __syncthreads();
    load_rows(k, s, s.Tk, b, h, k0, 1.0f, Ks, ld);
    load_rows(v, s, s.Tk, b, h, k0, 1.0f, Vs, ld);
    __syncthreads();
    p_and_ds(s, q0, k0, Qs, dOs, Ks, Vs, ls, dis, NULL, dSs, ld);
    __syncwarp(); /* row i's dS was written by the 8 lanes of this warp */
#pragma unroll
    for (int u = 0; u < NU; u++) {
      const int d = lane8 + 8 * u;
      if (d < s.D) {
        float a = acc[u];
        for (int jj = 0; jj < BK; jj++) a += dSs[i * (BK + 1) + jj] * Ks[jj * ld + d];
        acc[u] = a;
      }
    }
  }
  const int64_t row = q0 + i;
  if (row >= s.Tq) return;
  float *dst = dq + (b * s.Tq + row) * s.C + h * s.D;
#pragma unroll
  for (int u = 0; u < NU; u++) {
    const int d = lane8 + 8 * u;
    if (d < s.D) dst[d] += s.scale * acc[u];
  }
}

/* scratch: Di [B*H*Tq] for the backward */
size_t cu_attention_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd) {
  attn_shape s;
  if (!bwd || shape_of(n, &s) || s.Tq == 0 || s.Tk == 0) return 0;
  if (!cd_wants_grad(n->src[0]) && !cd_wants_grad(n->src[1]) && !cd_wants_grad(n->src[2])) return 0;
  return cu_align((size_t)s.B * s.H * s.Tq * sizeof(float));
}

void cu_attention_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  attn_shape s;
  if (shape_of(n, &s) || s.Tk == 0 || s.Tq == 0 || s.B == 0 || s.C == 0) return;
  cd_node *qn = n->src[0], *kn = n->src[1], *vn = n->src[2];
  float *dq = qn->grad, *dk = kn->grad, *dv = vn->grad;
  if (!dq && !dk && !dv) return;
  if (s.D > DMAX || s.B * s.H > 65535) {
    cu_fail("attention backward", "head width above 256 or batch x heads above 65535: not supported by the CUDA kernel");
    return;
  }
  if (!n->aux || n->naux < s.B * s.H * s.Tq) {
    cu_fail("attention backward", "no log-sum-exp saved by the forward");
    return;
  }
  cudaStream_t st = cu_stream(ctx);
  cu_scratch sc = cu_scratch_of(ctx);
  float *Di = (float *)cu_take(&sc, (size_t)s.B * s.H * s.Tq * sizeof(float), n);
  const int64_t rows = s.B * s.H * s.Tq;
  k_attn_di<<<cu_blocks(rows * 32, 256), 256, 0, st>>>(n->data, n->grad, Di, s);
  if (!CU_LAUNCHED("attention backward (Di)")) return;
  const size_t sm = bwd_smem(s);
  const float *q = qn->data, *k = kn->data, *v = vn->data;
  if (dk || dv) {
    if (!ALLOW(s.D, k_attn_dkv, sm)) return;
    const dim3 grid((unsigned)((s.Tk + BK - 1) / BK), (unsigned)(s.B * s.H));
    DISPATCH(s.D, k_attn_dkv, <<<grid, NTH, sm, st>>>(q, k, v, n->grad, n->aux, Di, dk, dv, s));
    if (!CU_LAUNCHED("attention backward (dK, dV)")) return;
  }
  if (dq) {
    if (!ALLOW(s.D, k_attn_dq, sm)) return;
    const dim3 grid((unsigned)((s.Tq + BQ - 1) / BQ), (unsigned)(s.B * s.H));
    DISPATCH(s.D, k_attn_dq, <<<grid, NTH, sm, st>>>(q, k, v, n->grad, n->aux, Di, dq, s));
    CU_LAUNCHED("attention backward (dQ)");
  }
}
