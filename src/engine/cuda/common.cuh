/* common.cuh - what the CUDA backend's files share: the backend state, error
 * checking, launch shapes, the row-major GEMM wrapper and block reductions.
 *
 * Conventions (the same contract as the CPU kernels, backend.h):
 *   - every kernel runs on the backend's one stream (st->stream), so kernels,
 *     uploads and downloads are ordered without events;
 *   - backward kernels ACCUMULATE (+=) into the gradients that exist;
 *   - a CUDA or cuBLAS failure is recorded once (cu_fail) and reported by the
 *     backend's finish hook at the end of the pass (cd_graph_forward returns
 *     -1 with the message): kernels never abort the process.
 * The CPU kernels (src/engine/cpu/) are the reference for every formula. */
#ifndef CD_CUDA_COMMON_CUH
#define CD_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "core/common.h"
#include "engine/backend.h"
#include "engine/cuda/cuda.h"
#include "engine/ops.h"
}

/* the process's one CUDA backend */
typedef struct {
  int device;
  cudaDeviceProp prop;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_ws; /* cuBLAS workspace: backend memory like everything else */
  size_t blas_ws_bytes;
  cublasComputeType_t compute; /* fp32 / tf32 / bf16 (cd_backend_cuda_set_math) */
  char math[8];
  /* small device and pinned host buffers for the optimizer's reductions */
  double *red_dev;
  long long *cnt_dev;
  double *red_host;
  long long *cnt_host;
  /* first error since the last finish */
  int failed;
  char err[512];
  size_t bytes_now, bytes_peak;
} cu_backend;

extern cu_backend cu_be;

/* per-graph state (ctx->state): the profile's pending event pairs */
typedef struct {
  cudaEvent_t *ev; /* pairs: begin, end */
  double **acc;    /* per pair: the op kind's total */
  int n, cap, open;
} cu_graph_state;

/* records the first failure: "what: CUDA's message" */
void cu_fail(const char *what, const char *detail);
static inline int cu_ok(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 1;
  cu_fail(what, cudaGetErrorString(e));
  return 0;
}
int cu_blas_ok(cublasStatus_t s, const char *what);
/* after a launch: the launch's own error (bad configuration, no device) */
#define CU_LAUNCHED(what) cu_ok(cudaGetLastError(), what)

static inline cudaStream_t cu_stream(const cd_kernel_ctx *ctx) { return (cudaStream_t)ctx->stream; }

/* grid of blocks of `threads` covering n items, at most 65535*16 blocks
 * (kernels loop with a grid stride beyond that) */
static inline unsigned cu_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 1048560) b = 1048560;
  return (unsigned)b;
}
#define CU_FOR(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* scratch carving, as on the CPU: pieces in the order the scratch function
 * summed them, each 256-byte aligned */
static inline size_t cu_align(size_t b) { return (b + 255) & ~(size_t)255; }
typedef struct {
  char *base;
  size_t size, used;
} cu_scratch;
static inline cu_scratch cu_scratch_of(const cd_kernel_ctx *ctx) { return cu_scratch{(char *)ctx->scratch, ctx->scratch_bytes, 0}; }
void *cu_take(cu_scratch *s, size_t bytes, const cd_node *n);

/* Row-major GEMM on the backend's stream, batched with element strides:
 *   C[i] (M x N, ldc) = alpha * op(A[i]) (M x K) * op(B[i]) (K x N) + beta * C[i]
 * A is stored [M, K] (ta = 0, lda >= K) or [K, M] (ta = 1, lda >= M); B is
 * stored [K, N] (tb = 0) or [N, K] (tb = 1). All float32; the arithmetic is
 * the backend's math mode (fp32, tf32 or bf16 tensor cores, float32
 * accumulation either way). */
void cu_gemm(const cd_kernel_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
             int64_t lda, int64_t sA, const float *B, int64_t ldb, int64_t sB, float beta, float *C, int64_t ldc, int64_t sC,
             int64_t batch);
/* y (n) = alpha * A^T x + beta * y for row-major A [rows, n]: column sums
 * (bias gradients) with x a vector of ones */
void cu_colsum(const cd_kernel_ctx *ctx, const float *A, int64_t rows, int64_t n, int64_t lda, const float *ones, float *y);
/* fills n floats with v */
void cu_fill(const cd_kernel_ctx *ctx, float *p, float v, int64_t n);
/* widens n elements of a typed tensor (f32, f16, bf16, i32) into dst */
void cu_to_f32(const cd_kernel_ctx *ctx, const void *src, cd_type t, int64_t n, float *dst);
/* src as f32: src itself when it is f32, else widened into *buf (taken from sc) */
const float *cu_as_f32(const cd_kernel_ctx *ctx, const cd_node *src, cu_scratch *sc, const cd_node *n);
static inline size_t cu_as_f32_bytes(const cd_node *src) { return src->type == CD_TYPE_F32 ? 0 : cu_align((size_t)src->n * 4); }

/* ---- device helpers ---- */
__device__ static inline float cu_load_typed(const void *p, cd_type t, int64_t i) {
  switch (t) {
  case CD_TYPE_F16: return __half2float(((const __half *)p)[i]);
  case CD_TYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
  case CD_TYPE_I32: return (float)((const int32_t *)p)[i];
  default: return ((const float *)p)[i];
  }
}

/* sum over a block of T threads (T a multiple of 32, <= 1024); every thread
 * gets the total. sh: T/32 doubles of shared memory. */
__device__ static inline double cu_block_sum(double v, double *sh) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads(); /* sh may still be read by a previous call */
  if ((threadIdx.x & 31) == 0) sh[w] = v;
  __syncthreads();
  double t = 0;
  for (int i = 0; i < nw; i++) t += sh[i]; /* the same order in every thread */
  return t;
}

#endif
