/* backend.cu - the CUDA backend's table (backend.h): device memory, copies,
 * the per-graph context, profile timers, the optimizer ops, and the shared
 * helpers of common.cuh (errors, scratch, GEMM).
 *
 * One backend per process, on one device and one stream: every kernel,
 * memset and copy goes to that stream in program order, so the executor's
 * one-kernel-at-a-time contract holds without events. Host copies
 * synchronise (the host buffer may be reused as soon as they return). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/common.cuh"

cu_backend cu_be;
static int cu_opened = -1; /* -1 never tried, 0 failed, 1 open */
static char cu_open_err[512];
static int cu_debug_sync; /* CDIFF_CUDA_SYNC=1: synchronise after every kernel and name the one that failed */

/* ---------------------------------------------------------------- errors */

void cu_fail(const char *what, const char *detail) {
  if (cu_be.failed) return;
  cu_be.failed = 1;
  snprintf(cu_be.err, sizeof cu_be.err, "%s: %s", what, detail);
  if (cu_debug_sync) fprintf(stderr, "cdiff: cuda: %s\n", cu_be.err);
}

int cu_blas_ok(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return 1;
  cu_fail(what, cublasGetStatusString(s));
  return 0;
}

void *cu_take(cu_scratch *s, size_t bytes, const cd_node *n) {
  const size_t b = cu_align(bytes);
  if (!s->base || s->used + b > s->size) {
    /* a bug in a scratch function, never input-dependent: the CPU backend aborts here too */
    fprintf(stderr, "cdiff: internal error: cuda %s '%s' needs %zu more scratch bytes than it reported (%zu of %zu used)\n",
            cd_op_name(n->op), n->name, b, s->used, s->size);
    abort();
  }
  void *p = s->base + s->used;
  s->used += b;
  return p;
}

/* ---------------------------------------------------------------- memory */

static void track_peak(void) {
  size_t fr = 0, tot = 0;
  if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot - fr > cu_be.bytes_peak) cu_be.bytes_peak = tot - fr;
}

static void *cu_alloc(size_t n) {
  void *p = NULL;
  if (cudaMalloc(&p, n ? n : 256) != cudaSuccess) {
    cudaGetLastError(); /* an out-of-memory error is not sticky: clear it; the caller reports NULL */
    return NULL;
  }
  track_peak();
  return p; /* 256-byte aligned */
}

static void cu_free_(void *p) {
  if (p) cu_ok(cudaFree(p), "cudaFree");
}

static void cu_zero(const cd_kernel_ctx *ctx, void *p, size_t n) {
  if (n) cu_ok(cudaMemsetAsync(p, 0, n, cu_be.stream), "cudaMemsetAsync");
}

static void cu_upload(const cd_kernel_ctx *ctx, void *dst, const void *host, size_t n) {
  if (!n) return;
  if (cu_ok(cudaMemcpyAsync(dst, host, n, cudaMemcpyHostToDevice, cu_be.stream), "upload"))
    cu_ok(cudaStreamSynchronize(cu_be.stream), "upload");
}

static void cu_download(const cd_kernel_ctx *ctx, void *host, const void *src, size_t n) {
  if (!n) return;
  if (!cu_ok(cudaMemcpyAsync(host, src, n, cudaMemcpyDeviceToHost, cu_be.stream), "download") ||
      !cu_ok(cudaStreamSynchronize(cu_be.stream), "download"))
    memset(host, 0xff, n); /* NaN, never stale values that look right */
}

static int cu_reachable(const void *p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/* ---------------------------------------------------------------- context */

static int cu_ctx_init(cd_kernel_ctx *ctx) {
  ctx->stream = cu_be.stream;
  ctx->handles = &cu_be;
  ctx->nthreads = 1;
  ctx->state = cd_calloc(1, sizeof(cu_graph_state));
  return 0;
}

static void cu_ctx_free(cd_kernel_ctx *ctx) {
  cu_graph_state *s = (cu_graph_state *)ctx->state;
  if (!s) return;
  for (int i = 0; i < 2 * s->cap; i++)
    if (s->ev[i]) cudaEventDestroy(s->ev[i]);
  free(s->ev);
  free(s->acc);
  free(s);
  ctx->state = NULL;
}

static int cu_finish(const cd_kernel_ctx *ctx) {
  cudaError_t e = cudaPeekAtLastError();
  if (e != cudaSuccess) cu_fail("kernel", cudaGetErrorString(e));
  if (!cu_be.failed) return 0;
  cu_be.failed = 0;
  return cd_set_error("cuda: %s", cu_be.err);
}

/* CDIFF_PROFILE: a pair of events around each kernel, resolved at flush */
static void cu_timer_begin(const cd_kernel_ctx *ctx) {
  cu_graph_state *s = (cu_graph_state *)ctx->state;
  if (s->n == s->cap) {
    int cap = s->cap ? 2 * s->cap : 256;
    s->ev = (cudaEvent_t *)cd_realloc(s->ev, 2 * cap * sizeof *s->ev);
    s->acc = (double **)cd_realloc(s->acc, cap * sizeof *s->acc);
    memset(s->ev + 2 * s->cap, 0, 2 * (cap - s->cap) * sizeof *s->ev);
    s->cap = cap;
  }
  cudaEvent_t *e = s->ev + 2 * s->n;
  if (!e[0]) cu_ok(cudaEventCreate(&e[0]), "cudaEventCreate");
  if (!e[1]) cu_ok(cudaEventCreate(&e[1]), "cudaEventCreate");
  cudaEventRecord(e[0], cu_be.stream);
}
static void cu_timer_end(const cd_kernel_ctx *ctx, double *acc) {
  cu_graph_state *s = (cu_graph_state *)ctx->state;
  cudaEventRecord(s->ev[2 * s->n + 1], cu_be.stream);
  s->acc[s->n++] = acc;
}
static void cu_timer_flush(const cd_kernel_ctx *ctx) {
  cu_graph_state *s = (cu_graph_state *)ctx->state;
  if (!s->n) return;
  cudaEventSynchronize(s->ev[2 * s->n - 1]);
  for (int i = 0; i < s->n; i++) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, s->ev[2 * i], s->ev[2 * i + 1]) == cudaSuccess) *s->acc[i] += ms * 1e-3;
  }
  s->n = 0;
}

/* ---------------------------------------------------------------- helpers */

void cu_gemm(const cd_kernel_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
             int64_t lda, int64_t sA, const float *B, int64_t ldb, int64_t sB, float beta, float *C, int64_t ldc, int64_t sC,
             int64_t batch) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX ||
      batch > INT32_MAX) {
    cu_fail("gemm", "a dimension exceeds 2^31");
    return;
  }
  /* cuBLAS is column-major: the row-major C (M x N) is the column-major C^T,
   * and C^T = op(B)^T op(A)^T, so B goes first with the same transposes */
  const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasStatus_t s;
  if (K == 0) { /* C = beta * C: cuBLAS accepts k = 0 */
  }
  if (batch == 1)
    s = cublasGemmEx(cu_be.blas, ob, oa, (int)N, (int)M, (int)K, &alpha, B, CUDA_R_32F, (int)ldb, A, CUDA_R_32F, (int)lda,
                     &beta, C, CUDA_R_32F, (int)ldc, cu_be.compute, CUBLAS_GEMM_DEFAULT);
  else
    s = cublasGemmStridedBatchedEx(cu_be.blas, ob, oa, (int)N, (int)M, (int)K, &alpha, B, CUDA_R_32F, (int)ldb, sB, A,
                                   CUDA_R_32F, (int)lda, sA, &beta, C, CUDA_R_32F, (int)ldc, sC, (int)batch, cu_be.compute,
                                   CUBLAS_GEMM_DEFAULT);
  cu_blas_ok(s, "cublasGemmEx");
}

void cu_colsum(const cd_kernel_ctx *ctx, const float *A, int64_t rows, int64_t n, int64_t lda, const float *ones, float *y) {
  if (rows <= 0 || n <= 0) return;
  /* row-major A [rows, n] is the column-major n x rows matrix: y += A_cm * ones */
  const float one = 1.0f;
  cu_blas_ok(cublasSgemv(cu_be.blas, CUBLAS_OP_N, (int)n, (int)rows, &one, A, (int)lda, ones, 1, &one, y, 1), "cublasSgemv");
}

__global__ void k_fill(float *p, float v, int64_t n) {
  CU_FOR(i, n) p[i] = v;
}
void cu_fill(const cd_kernel_ctx *ctx, float *p, float v, int64_t n) {
  if (n <= 0) return;
  k_fill<<<cu_blocks(n, 256), 256, 0, cu_be.stream>>>(p, v, n);
  CU_LAUNCHED("fill");
}

__global__ void k_to_f32(const void *src, cd_type t, int64_t n, float *dst) {
  CU_FOR(i, n) dst[i] = cu_load_typed(src, t, i);
}
void cu_to_f32(const cd_kernel_ctx *ctx, const void *src, cd_type t, int64_t n, float *dst) {
  if (n <= 0) return;
  k_to_f32<<<cu_blocks(n, 256), 256, 0, cu_be.stream>>>(src, t, n, dst);
  CU_LAUNCHED("to_f32");
}

const float *cu_as_f32(const cd_kernel_ctx *ctx, const cd_node *src, cu_scratch *sc, const cd_node *n) {
  if (src->type == CD_TYPE_F32) return src->data;
  float *buf = (float *)cu_take(sc, (size_t)src->n * 4, n);
  cu_to_f32(ctx, src->data, src->type, src->n, buf);
  return buf;
}

/* ---------------------------------------------------------------- optimizer ops */

#define RED_BLOCKS 264 /* two per SM on an H100/H200; partials summed on the host in block order */

__global__ void k_sumsq(const float *x, int64_t n, double *part) {
  __shared__ double sh[32];
  double a = 0;
  CU_FOR(i, n) a += (double)x[i] * x[i];
  a = cu_block_sum(a, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = a;
}
static void cu_sumsq(const cd_kernel_ctx *ctx, const float *x, int64_t n, double *acc) {
  if (n <= 0) return;
  const unsigned nb = cu_blocks(n, 256) < RED_BLOCKS ? cu_blocks(n, 256) : RED_BLOCKS;
  k_sumsq<<<nb, 256, 0, cu_be.stream>>>(x, n, cu_be.red_dev);
  if (!CU_LAUNCHED("sumsq")) return;
  if (!cu_ok(cudaMemcpyAsync(cu_be.red_host, cu_be.red_dev, nb * sizeof(double), cudaMemcpyDeviceToHost, cu_be.stream), "sumsq") ||
      !cu_ok(cudaStreamSynchronize(cu_be.stream), "sumsq")) {
    *acc = NAN; /* the optimizer then refuses the step */
    return;
  }
  double t = *acc;
  for (unsigned b = 0; b < nb; b++) t += cu_be.red_host[b];
  *acc = t;
}

/* the CPU's formula (cpu/optim.c) element for element, in double */
__global__ void k_adamw(cd_adamw_args a, float *w, const float *g, float *m, float *v, int64_t n) {
  CU_FOR(k, n) {
    double gk = g[k] * a.coef;
    double mk = a.b1 * m[k] + (1 - a.b1) * gk, vk = a.b2 * v[k] + (1 - a.b2) * gk * gk;
    m[k] = (float)mk;
    v[k] = (float)vk;
    double x = w[k] * a.decay;
    x -= a.step_size * mk / (sqrt(vk) / a.sbc2 + a.eps);
    w[k] = (float)x;
  }
}
static void cu_adamw(const cd_kernel_ctx *ctx, const cd_adamw_args *a, float *w, const float *g, float *m, float *v, int64_t n) {
  if (n <= 0) return;
  k_adamw<<<cu_blocks(n, 256), 256, 0, cu_be.stream>>>(*a, w, g, m, v, n);
  CU_LAUNCHED("adamw");
}

__global__ void k_nonfinite(const float *x, int64_t n, long long *part) {
  __shared__ double sh[32];
  double c = 0;
  CU_FOR(i, n) c += !isfinite(x[i]);
  c = cu_block_sum(c, sh); /* exact: counts below 2^53 */
  if (threadIdx.x == 0) part[blockIdx.x] = (long long)c;
}
static int64_t cu_nonfinite(const cd_kernel_ctx *ctx, const float *x, int64_t n) {
  if (n <= 0) return 0;
  const unsigned nb = cu_blocks(n, 256) < RED_BLOCKS ? cu_blocks(n, 256) : RED_BLOCKS;
  k_nonfinite<<<nb, 256, 0, cu_be.stream>>>(x, n, cu_be.cnt_dev);
  if (!CU_LAUNCHED("nonfinite")) return n;
  if (!cu_ok(cudaMemcpyAsync(cu_be.cnt_host, cu_be.cnt_dev, nb * sizeof(long long), cudaMemcpyDeviceToHost, cu_be.stream),
             "nonfinite") ||
      !cu_ok(cudaStreamSynchronize(cu_be.stream), "nonfinite"))
    return n; /* unknown: report everything as bad rather than nothing */
  int64_t t = 0;
  for (unsigned b = 0; b < nb; b++) t += cu_be.cnt_host[b];
  return t;
}

/* float sums in micro-batch order and a float mean, as cpu/optim.c */
__global__ void k_accumulate(float *acc, float *g, int64_t n, int k, int K) {
  CU_FOR(j, n) {
    acc[j] = k ? acc[j] + g[j] : g[j];
    if (k == K - 1) g[j] = acc[j] / (float)K;
  }
}
static void cu_accumulate(const cd_kernel_ctx *ctx, float *acc, float *g, int64_t n, int k, int K) {
  if (n <= 0) return;
  k_accumulate<<<cu_blocks(n, 256), 256, 0, cu_be.stream>>>(acc, g, n, k, K);
  CU_LAUNCHED("accumulate");
}

/* ---------------------------------------------------------------- the table */

/* the kernels (one op family per file); weak so that a missing one is
 * reported by cd_graph_plan ("backend cuda has no forward kernel for ...")
 * and by test_cuda's completeness check, not by the linker */
#define CD_OP(E, nm, ns, fl, aux)                                                        \
  __attribute__((weak)) void cu_##nm##_fwd(const cd_kernel_ctx *ctx, cd_node *n);      \
  __attribute__((weak)) void cu_##nm##_bwd(const cd_kernel_ctx *ctx, cd_node *n);      \
  __attribute__((weak)) size_t cu_##nm##_scratch(const cd_kernel_ctx *ctx, const cd_node *n, int bwd);
#include "engine/ops.def"
#undef CD_OP

/* CDIFF_CUDA_SYNC=1 runs every kernel through these: synchronise and name
 * the op and node that failed (slow; for debugging) */
static void sync_check(const cd_node *n, const char *dir) {
  cudaError_t e = cudaStreamSynchronize(cu_be.stream);
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e != cudaSuccess || cu_be.failed) {
    char what[160];
    snprintf(what, sizeof what, "%s %s '%s'", cd_op_name(n->op), dir, n->name);
    if (cu_be.failed) {
      char prev[512];
      snprintf(prev, sizeof prev, "%s", cu_be.err);
      snprintf(cu_be.err, sizeof cu_be.err, "%s: %s", what, prev);
    } else
      cu_fail(what, cudaGetErrorString(e));
  }
}
static cd_kernel real_fwd[CD_OP_COUNT], real_bwd[CD_OP_COUNT];
static void debug_fwd(const cd_kernel_ctx *ctx, cd_node *n) {
  real_fwd[n->op](ctx, n);
  sync_check(n, "forward");
}
static void debug_bwd(const cd_kernel_ctx *ctx, cd_node *n) {
  real_bwd[n->op](ctx, n);
  sync_check(n, "backward");
}

static cd_backend cu_table = {
    .name = "cuda",
    .alloc = cu_alloc,
    .free = cu_free_,
    .zero = cu_zero,
    .upload = cu_upload,
    .download = cu_download,
    .ctx_init = cu_ctx_init,
    .ctx_free = cu_ctx_free,
    .timer_begin = cu_timer_begin,
    .timer_end = cu_timer_end,
    .timer_flush = cu_timer_flush,
#define CD_OP(E, nm, ns, fl, aux) cu_##nm##_fwd,
    .forward = {
#include "engine/ops.def"
    },
#undef CD_OP
#define CD_OP(E, nm, ns, fl, aux) cu_##nm##_bwd,
    .backward = {
#include "engine/ops.def"
    },
#undef CD_OP
#define CD_OP(E, nm, ns, fl, aux) cu_##nm##_scratch,
    .scratch = {
#include "engine/ops.def"
    },
#undef CD_OP
    .sumsq = cu_sumsq,
    .adamw = cu_adamw,
    .nonfinite = cu_nonfinite,
    .accumulate = cu_accumulate,
    .reachable = cu_reachable,
    .finish = cu_finish,
};

/* ---------------------------------------------------------------- open */

static int open_fail(const char *fmt, const char *a, const char *b) {
  snprintf(cu_open_err, sizeof cu_open_err, fmt, a, b);
  cu_opened = 0;
  return -1;
}

static int cu_open(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return open_fail("no usable CUDA driver or GPU (%s: %s)", cudaGetErrorName(e), cudaGetErrorString(e));
  if (count == 0) return open_fail("no CUDA GPU found%s%s", "", "");
  if (device >= count) {
    char d[64];
    snprintf(d, sizeof d, "%d (this machine has %d)", device, count);
    return open_fail("no CUDA device %s%s", d, "");
  }
  memset(&cu_be, 0, sizeof cu_be);
  cu_be.device = device;
  if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaGetDeviceProperties(&cu_be.prop, device)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&cu_be.stream, cudaStreamNonBlocking)) != cudaSuccess)
    return open_fail("CUDA device setup failed (%s: %s)", cudaGetErrorName(e), cudaGetErrorString(e));
  if (cu_be.prop.major < 7) {
    char d[160];
    snprintf(d, sizeof d, "%s has compute capability %d.%d", cu_be.prop.name, cu_be.prop.major, cu_be.prop.minor);
    return open_fail("%s; cdiff's CUDA kernels need 7.0 or newer%s", d, "");
  }
  cublasStatus_t s = cublasCreate(&cu_be.blas);
  if (s != CUBLAS_STATUS_SUCCESS) return open_fail("cuBLAS could not start (%s)%s", cublasGetStatusString(s), "");
  cublasSetStream(cu_be.blas, cu_be.stream);
  /* cuBLAS's workspace comes from us (the backend owns its memory): 32 MiB
   * is what NVIDIA recommends for Hopper */
  cu_be.blas_ws_bytes = (size_t)32 << 20;
  if (cudaMalloc(&cu_be.blas_ws, cu_be.blas_ws_bytes) != cudaSuccess ||
      cublasSetWorkspace(cu_be.blas, cu_be.blas_ws, cu_be.blas_ws_bytes) != CUBLAS_STATUS_SUCCESS)
    return open_fail("out of GPU memory for the cuBLAS workspace%s%s", "", "");
  if (cudaMalloc(&cu_be.red_dev, RED_BLOCKS * sizeof(double)) != cudaSuccess ||
      cudaMalloc(&cu_be.cnt_dev, RED_BLOCKS * sizeof(long long)) != cudaSuccess ||
      cudaMallocHost(&cu_be.red_host, RED_BLOCKS * sizeof(double)) != cudaSuccess ||
      cudaMallocHost(&cu_be.cnt_host, RED_BLOCKS * sizeof(long long)) != cudaSuccess)
    return open_fail("out of memory for the reduction buffers%s%s", "", "");
  const char *m = getenv("CDIFF_CUDA_MATH");
  if (cd_backend_cuda_set_math(m && *m ? m : "fp32"))
    return open_fail("CDIFF_CUDA_MATH=%s: expected fp32, tf32 or bf16%s", m, "");
  cu_debug_sync = getenv("CDIFF_CUDA_SYNC") && atoi(getenv("CDIFF_CUDA_SYNC")) > 0;
  if (cu_debug_sync) {
    for (int o = 0; o < CD_OP_COUNT; o++) {
      real_fwd[o] = cu_table.forward[o];
      real_bwd[o] = cu_table.backward[o];
      if (real_fwd[o]) cu_table.forward[o] = debug_fwd;
      if (real_bwd[o]) cu_table.backward[o] = debug_bwd;
    }
  }
  track_peak();
  cu_opened = 1;
  return 0;
}

extern "C" const cd_backend *cd_backend_cuda_open(int device) {
  if (cu_opened < 0) cu_open(device);
  if (cu_opened == 0) {
    cd_set_error("%s", cu_open_err);
    return NULL;
  }
  if (device != cu_be.device) {
    cd_set_error("the CUDA backend is already open on device %d (one device per process)", cu_be.device);
    return NULL;
  }
  return &cu_table;
}

extern "C" const cd_backend *cd_backend_cuda_table(void) { return &cu_table; }

extern "C" int cd_backend_cuda_set_math(const char *mode) {
  if (!strcmp(mode, "fp32")) cu_be.compute = CUBLAS_COMPUTE_32F;
  else if (!strcmp(mode, "tf32")) cu_be.compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  else if (!strcmp(mode, "bf16")) cu_be.compute = CUBLAS_COMPUTE_32F_FAST_16BF;
  else return -1;
  snprintf(cu_be.math, sizeof cu_be.math, "%s", mode);
  return 0;
}
extern "C" const char *cd_backend_cuda_math(void) { return cu_be.math; }

extern "C" const char *cd_backend_cuda_describe(void) {
  static char buf[256];
  if (cu_opened != 1) return "cuda: not open";
  snprintf(buf, sizeof buf, "%s, %.1f GiB, compute capability %d.%d, %d SMs, math %s", cu_be.prop.name,
           cu_be.prop.totalGlobalMem / 1073741824.0, cu_be.prop.major, cu_be.prop.minor, cu_be.prop.multiProcessorCount,
           cu_be.math);
  return buf;
}

extern "C" size_t cd_backend_cuda_peak_bytes(void) { return cu_be.bytes_peak; }
extern "C" void cd_backend_cuda_reset_peak(void) {
  cu_be.bytes_peak = 0;
  track_peak();
}
