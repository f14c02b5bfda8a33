/* activation.cu - SILU, GELU (exact erf), QUICK_GELU, GEGLU on CUDA, one
 * thread per element; backward recomputes from the input, as
 * src/engine/cpu/activation.c. CUDA's expf/erff (no fast-math) are within 2
 * ulp; the CPU's polynomial versions within 2e-7: the parity test's
 * tolerance covers both. */
#include "engine/cuda/common.cuh"

#define T 256

__device__ static inline float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ static inline float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}

enum { A_SILU, A_GELU, A_QGELU };

__global__ void k_act(const float *x, float *y, int64_t n, int kind) {
  CU_FOR(i, n) {
    const float v = x[i];
    y[i] = kind == A_SILU ? v * sigm(v) : kind == A_GELU ? gelu(v) : v * sigm(1.702f * v);
  }
}
__global__ void k_act_bwd(const float *x, const float *dy, float *dx, int64_t n, int kind) {
  CU_FOR(i, n) {
    const float v = x[i];
    float d;
    if (kind == A_SILU) {
      const float s = sigm(v);
      d = s * (1.0f + v * (1.0f - s));
    } else if (kind == A_GELU) {
      d = gelu_grad(v);
    } else {
      const float s = sigm(1.702f * v);
      d = s + 1.702f * v * s * (1.0f - s);
    }
    dx[i] += dy[i] * d;
  }
}

static void act_fwd(const cd_kernel_ctx *ctx, cd_node *n, int kind) {
  if (n->n <= 0) return;
  k_act<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->data, n->n, kind);
  CU_LAUNCHED(cd_op_name(n->op));
}
static void act_bwd(const cd_kernel_ctx *ctx, cd_node *n, int kind) {
  if (n->n <= 0 || !n->src[0]->grad) return;
  k_act_bwd<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->grad, n->src[0]->grad, n->n, kind);
  CU_LAUNCHED(cd_op_name(n->op));
}

void cu_silu_fwd(const cd_kernel_ctx *ctx, cd_node *n) { act_fwd(ctx, n, A_SILU); }
void cu_silu_bwd(const cd_kernel_ctx *ctx, cd_node *n) { act_bwd(ctx, n, A_SILU); }
void cu_gelu_fwd(const cd_kernel_ctx *ctx, cd_node *n) { act_fwd(ctx, n, A_GELU); }
void cu_gelu_bwd(const cd_kernel_ctx *ctx, cd_node *n) { act_bwd(ctx, n, A_GELU); }
void cu_quick_gelu_fwd(const cd_kernel_ctx *ctx, cd_node *n) { act_fwd(ctx, n, A_QGELU); }
void cu_quick_gelu_bwd(const cd_kernel_ctx *ctx, cd_node *n) { act_bwd(ctx, n, A_QGELU); }

/* ---- GEGLU: x[..., 2D] = [h | g] -> h * gelu(g) ---- */
__global__ void k_geglu(const float *x, float *y, int64_t n, int64_t D) {
  CU_FOR(i, n) {
    const int64_t r = i / D, j = i % D;
    y[i] = x[r * 2 * D + j] * gelu(x[r * 2 * D + D + j]);
  }
}
__global__ void k_geglu_bwd(const float *x, const float *dy, float *dx, int64_t n, int64_t D) {
  CU_FOR(i, n) {
    const int64_t r = i / D, j = i % D;
    const float h = x[r * 2 * D + j], g = x[r * 2 * D + D + j];
    dx[r * 2 * D + j] += dy[i] * gelu(g);
    dx[r * 2 * D + D + j] += dy[i] * h * gelu_grad(g);
  }
}
void cu_geglu_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const int64_t D = n->ne[n->ndim - 1];
  if (D <= 0 || n->n <= 0) return;
  k_geglu<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->data, n->n, D);
  CU_LAUNCHED("geglu");
}
void cu_geglu_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  const int64_t D = n->ne[n->ndim - 1];
  if (D <= 0 || n->n <= 0 || !n->src[0]->grad) return;
  k_geglu_bwd<<<cu_blocks(n->n, T), T, 0, cu_stream(ctx)>>>(n->src[0]->data, n->grad, n->src[0]->grad, n->n, D);
  CU_LAUNCHED("geglu backward");
}
