/* embed_loss.cu - TIMESTEP_EMBED, EMBEDDING, MSE and SUM on CUDA.
 * Semantics: src/engine/cpu/embed.c and loss.c. The reductions accumulate in
 * double (like the CPU) in a fixed order per launch configuration, and no
 * kernel uses atomics, so results repeat bit for bit. */
#include "engine/cuda/common.cuh"

#define T 256

/* ---- TIMESTEP_EMBED: t[B] -> [B, dim], the CPU's float32 steps in the same order ---- */
__global__ void k_tstep(const float *t, float *y, int64_t B, int64_t dim, int flip, float neg_log, float div) {
  const int64_t half = dim / 2;
  CU_FOR(k, B * half) {
    const int64_t b = k / half, i = k % half;
    const float ex = (neg_log * (float)i) / div;
    const float arg = t[b] * expf(ex);
    const float s = sinf(arg), c = cosf(arg);
    y[b * dim + i] = flip ? c : s;
    y[b * dim + half + i] = flip ? s : c;
    if (i == 0 && dim % 2) y[b * dim + dim - 1] = 0.0f;
  }
}
void cu_timestep_embed_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const int64_t B = n->src[0]->n, dim = n->ip[0], half = dim / 2;
  if (B <= 0 || half <= 0) return;
  k_tstep<<<cu_blocks(B * half, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->data, B, dim, n->ip[1], (float)-log(10000.0),
                                                             (float)half - n->fp[0]);
  CU_LAUNCHED("timestep_embed");
}

/* ---- EMBEDDING: ids (i32 or float) -> rows of table [V, D] or extra [E, D] ----
 * An id that is not an integer in [0, V + E) gives a zero row (as on the
 * CPU; the CPU also counts them, cd_cpu_embedding_bad_ids: CUDA does not). */
__device__ static inline int embed_row(double f, int64_t V, int64_t E, int64_t *row) {
  if (!(f >= 0.0 && f < (double)(V + E)) || f != floor(f)) return -1;
  const int64_t id = (int64_t)f;
  *row = id < V ? id : id - V;
  return id >= V;
}
__device__ static inline double id_at(const void *ids, cd_type t, int64_t i) {
  return t == CD_TYPE_I32 ? (double)((const int32_t *)ids)[i] : (double)((const float *)ids)[i];
}
__global__ void k_embed(const void *ids, cd_type it, const void *tab, cd_type tt, int64_t V, const void *ext, cd_type et,
                        int64_t E, int64_t D, float *y, int64_t n) {
  CU_FOR(k, n) {
    const int64_t i = k / D, d = k % D;
    int64_t row = 0;
    const int w = embed_row(id_at(ids, it, i), V, E, &row);
    y[k] = w < 0 ? 0.0f : w ? cu_load_typed(ext, et, row * D + d) : cu_load_typed(tab, tt, row * D + d);
  }
}
/* one thread per column: the ids in order, so repeated ids add in the CPU's order */
__global__ void k_embed_bwd(const void *ids, cd_type it, int64_t S, int64_t V, int64_t E, int64_t D, const float *dy, float *gt,
                            float *ge) {
  CU_FOR(d, D) {
    for (int64_t i = 0; i < S; i++) {
      int64_t row = 0;
      const int w = embed_row(id_at(ids, it, i), V, E, &row);
      float *g = w < 0 ? NULL : w ? ge : gt;
      if (g) g[row * D + d] += dy[i * D + d];
    }
  }
}
void cu_embedding_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *ids = n->src[0], *tab = n->src[1], *ext = n->src[2];
  const int64_t D = tab->ne[1];
  if (n->n <= 0 || D <= 0) return;
  k_embed<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(ids->data, ids->type, tab->data, tab->type, tab->ne[0],
                                                        ext ? ext->data : NULL, ext ? ext->type : CD_TYPE_F32,
                                                        ext ? ext->ne[0] : 0, D, n->data, n->n);
  CU_LAUNCHED("embedding");
}
void cu_embedding_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *ids = n->src[0], *tab = n->src[1], *ext = n->src[2];
  float *gt = tab->grad, *ge = ext ? ext->grad : NULL;
  const int64_t D = tab->ne[1];
  if ((!gt && !ge) || D <= 0 || ids->n <= 0) return;
  k_embed_bwd<<<cu_blocks(D, 128), 128, 0, cu_stream(ctx)>>>(ids->data, ids->type, ids->n, tab->ne[0], ext ? ext->ne[0] : 0, D,
                                                             n->grad, gt, ge);
  CU_LAUNCHED("embedding backward");
}

/* ---- MSE: pred[B, ...], target[B, ...], mask[B, 1, ...]|NULL -> [1] ----
 * L = 1/B sum_b num_b / den_b (Custom Diffusion's reduction, cpu/loss.c).
 * Forward is one block (the loss is small: a few latents); backward one
 * block per sample, which recomputes that sample's den (and num for the
 * mask's gradient). */
typedef struct {
  int64_t B, M, R, C1;
} mse_dims;
static int mse_setup(const cd_node *n, mse_dims *d) {
  const cd_node *x = n->src[0], *m = n->src[2];
  d->B = x->ne[0];
  if (d->B <= 0 || x->n <= 0) return 0;
  d->M = x->n / d->B;
  d->R = m ? m->n / d->B : d->M;
  if (d->R <= 0 || d->M % d->R) return 0;
  d->C1 = d->M / d->R;
  return 1;
}

#define MT 1024
__global__ void k_mse(const float *x, const float *y, const float *m, mse_dims d, float *out) {
  __shared__ double sh[32];
  if (!m) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < d.B * d.M; i += blockDim.x) {
      const double e = (double)x[i] - y[i];
      s += e * e;
    }
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) out[0] = (float)(s / (double)(d.B * d.M));
    return;
  }
  double L = 0;
  for (int64_t b = 0; b < d.B; b++) {
    const float *mb = m + b * d.R;
    double den = 0, num = 0;
    for (int64_t r = threadIdx.x; r < d.R; r += blockDim.x) den += mb[r];
    den = cu_block_sum(den, sh);
    if (den == 0) continue;
    for (int64_t j = threadIdx.x; j < d.M; j += blockDim.x) {
      const double e = (double)x[b * d.M + j] - y[b * d.M + j];
      num += mb[j % d.R] * e * e;
    }
    num = cu_block_sum(num, sh);
    L += num / den;
  }
  if (threadIdx.x == 0) out[0] = (float)(L / (double)d.B);
}
void cu_mse_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  mse_dims d;
  if (!mse_setup(n, &d)) { /* nothing to average: 0, as on the CPU */
    cu_ok(cudaMemsetAsync(n->data, 0, sizeof(float), cu_stream(ctx)), "mse");
    return;
  }
  k_mse<<<1, MT, 0, cu_stream(ctx)>>>(n->src[0]->data, n->src[1]->data, n->src[2] ? n->src[2]->data : NULL, d, n->data);
  CU_LAUNCHED("mse");
}

__global__ void k_mse_bwd(const float *x, const float *y, const float *m, mse_dims d, const float *gout, float *gx, float *gy,
                          float *gm) {
  __shared__ double sh[32];
  const int64_t b = blockIdx.x;
  const double g = gout[0];
  const float *mb = m ? m + b * d.R : NULL;
  double den = (double)d.M;
  if (mb) {
    double s = 0;
    for (int64_t r = threadIdx.x; r < d.R; r += blockDim.x) s += mb[r];
    den = cu_block_sum(s, sh);
    if (den == 0) return; /* the whole block leaves together */
  }
  for (int pass = 0; pass < 2; pass++) {
    float *gp = pass ? gy : gx;
    if (!gp) continue;
    const float k = (float)((pass ? -1.0 : 1.0) * 2.0 * g / ((double)d.B * den));
    for (int64_t j = threadIdx.x; j < d.M; j += blockDim.x) {
      const int64_t i = b * d.M + j;
      const float e = x[i] - y[i];
      gp[i] += k * (mb ? mb[j % d.R] : 1.0f) * e;
    }
    __syncthreads(); /* x and y may be one node: gx and gy one buffer */
  }
  if (gm) { /* dL/dm[b,r] = g/B (sum_c e^2[b,c,r] / den - num / den^2) */
    double num = 0;
    for (int64_t j = threadIdx.x; j < d.M; j += blockDim.x) {
      const double e = (double)x[b * d.M + j] - y[b * d.M + j];
      num += mb[j % d.R] * e * e;
    }
    num = cu_block_sum(num, sh);
    for (int64_t r = threadIdx.x; r < d.R; r += blockDim.x) {
      double s = 0;
      for (int64_t c = 0; c < d.C1; c++) {
        const double e = (double)x[b * d.M + c * d.R + r] - y[b * d.M + c * d.R + r];
        s += e * e;
      }
      gm[b * d.R + r] += (float)(g / (double)d.B * (s / den - num / (den * den)));
    }
  }
}
void cu_mse_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0], *y = n->src[1], *m = n->src[2];
  float *gx = x->grad, *gy = y->grad, *gm = m ? m->grad : NULL;
  mse_dims d;
  if ((!gx && !gy && !gm) || !mse_setup(n, &d)) return;
  k_mse_bwd<<<(unsigned)d.B, MT, 0, cu_stream(ctx)>>>(x->data, y->data, m ? m->data : NULL, d, n->grad, gx, gy, gm);
  CU_LAUNCHED("mse backward");
}

/* ---- SUM: all elements -> [1], one block, double ---- */
__global__ void k_sum(const float *x, int64_t n, float *out) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = cu_block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = (float)s;
}
void cu_sum_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  k_sum<<<1, MT, 0, cu_stream(ctx)>>>(n->src[0]->data, n->src[0]->n, n->data);
  CU_LAUNCHED("sum");
}
__global__ void k_sum_bwd(const float *g, float *dx, int64_t n) {
  CU_FOR(i, n) dx[i] += g[0];
}
void cu_sum_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const cd_node *x = n->src[0];
  if (!x->grad || x->n <= 0) return;
  k_sum_bwd<<<cu_blocks(x->n, T), T, 0, cu_stream(ctx)>>>(n->grad, x->grad, x->n);
  CU_LAUNCHED("sum backward");
}
