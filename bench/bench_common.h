/* bench_common.h - pieces shared by the benchmarks: the sgemm peak they
 * measure against, the environment report, and the MODEL argument and model
 * loading of the model benches. Header-only (static inline): the Makefile
 * builds every bench/bench_*.c as its own program. */
#ifndef CD_BENCH_COMMON_H
#define CD_BENCH_COMMON_H

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/common.h"
#include "engine/device.h"
#include "io/fsutil.h"
#include "models/sd_model.h"

/* OpenBLAS introspection, when linked against it */
extern char *openblas_get_corename(void) __attribute__((weak));

/* best time in seconds of `reps` sgemm calls C[M,N] = A[M,K] B[K,N] after one
 * warm-up, on normal data from `seed` */
static inline double bench_sgemm_seconds(int M, int N, int K, int reps, uint64_t seed) {
  float *A = cd_aligned_alloc((size_t)M * K * sizeof(float));
  float *B = cd_aligned_alloc((size_t)K * N * sizeof(float));
  float *C = cd_aligned_alloc((size_t)M * N * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, seed);
  cd_rng_fill_normal(&r, A, (size_t)M * K);
  cd_rng_fill_normal(&r, B, (size_t)K * N);
  double best = 1e30;
  for (int i = 0; i <= reps; i++) {
    double t0 = cd_time();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    double dt = cd_time() - t0;
    if (i > 0 && dt < best) best = dt;
  }
  cd_aligned_free(A);
  cd_aligned_free(B);
  cd_aligned_free(C);
  return best;
}

/* best GFLOP/s of `reps` square n x n x n sgemms after one warm-up */
static inline double bench_sgemm_gflops(int n, int reps) {
  return 2.0 * n * n * (double)n / bench_sgemm_seconds(n, n, n, reps, 7) * 1e-9;
}

/* threads, OpenBLAS core and OpenMP wait policy, with a warning for each
 * setting that makes the timings slow or noisy */
static inline void bench_print_env(const char *prog) {
  const char *core = openblas_get_corename ? openblas_get_corename() : "unknown";
  const char *wait = getenv("OMP_WAIT_POLICY"), *ct = getenv("OPENBLAS_CORETYPE");
  printf("%s: %d threads, OpenBLAS core %s (OPENBLAS_CORETYPE=%s), OMP_WAIT_POLICY=%s\n", prog, cd_threads(),
         core, ct ? ct : "(unset)", wait ? wait : "(unset)");
  if (!ct || !strcasecmp(core, "Prescott") || !strcasecmp(core, "Core2") || !strcasecmp(core, "Nehalem"))
    printf("  warning: OPENBLAS_CORETYPE is unset or OpenBLAS runs generic kernels: Debian's OpenBLAS 0.3.21\n"
           "           does not recognise recent Xeons; set OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell\n");
  if (!wait || strcasecmp(wait, "passive"))
    printf("  warning: OMP_WAIT_POLICY is not passive: spinning OpenMP threads steal OpenBLAS's cores\n");
}

/* ---- the model benches: bench PROG [MODEL] [--quick] [--res PX] [own flags] ---- */
#define BENCH_DEFAULT_MODEL "/tmp/sd15-random"

typedef struct {
  const char *path; /* MODEL, default BENCH_DEFAULT_MODEL */
  int given;        /* MODEL was on the command line */
  int res;          /* image size in pixels: 512, --quick 256, --res PX */
  const char *wdtype; /* --weights-dtype f32|f16|bf16, NULL: the checkpoint's own */
  const char *device; /* --device cpu|cuda (NULL: cpu) */
} bench_model_args;

/* the CUDA backend's reports (engine/cuda/cuda.h), in a CUDA=1 build only */
extern const char *cd_backend_cuda_describe(void) __attribute__((weak));
extern size_t cd_backend_cuda_peak_bytes(void) __attribute__((weak));
/* dense bf16 tensor-core rate of an H100/H200 SXM measured on this project's
 * device machines (KINDS.md: 769-798 TFLOP/s on random data): the MFU reference */
#define BENCH_GPU_PEAK_TFLOPS 790.0

/* 1 when the benches run on the GPU (--device cuda opened) */
static inline int bench_on_gpu(const bench_model_args *a) { return a->device && strcmp(a->device, "cpu"); }

/* makes --device the backend of every graph; 0, or -1 with the error printed */
static inline int bench_open_device(const char *prog, const bench_model_args *a) {
  const cd_backend *be;
  if (!bench_on_gpu(a)) return 0;
  if (cd_backend_open(a->device, &be)) {
    fprintf(stderr, "%s: %s\n", prog, cd_last_error());
    return -1;
  }
  cd_backend_set_default(be);
  printf("%s: device %s: %s\n", prog, a->device, cd_backend_cuda_describe ? cd_backend_cuda_describe() : "");
  return 0;
}

/* the usage line of a model bench; own_flags: its flags after --res PX */
static inline void bench_model_usage(const char *prog, const char *own_flags) {
  fprintf(stderr, "usage: %s [MODEL] [--quick] [--res PX] [--weights-dtype f32|f16|bf16] [--device cpu|cuda] %s\n"
                  "  MODEL: diffusers folder or single file (default " BENCH_DEFAULT_MODEL ";\n"
                  "         make one with build/tools/gen_sd_random --out " BENCH_DEFAULT_MODEL ")\n", prog, own_flags);
}

static inline void bench_model_args_default(bench_model_args *a) {
  a->path = BENCH_DEFAULT_MODEL;
  a->given = 0;
  a->res = 512;
  a->wdtype = NULL;
  a->device = NULL;
}

/* takes argv[*i] if it is MODEL, --quick, --res PX or -h/--help (advancing *i
 * past a flag's value). Returns 0 when taken, 1 for --help (usage printed: exit
 * 0), 2 for an unknown flag (message and usage printed: exit 2). The caller
 * tries its own flags (own_flags, for the usage line) first. */
static inline int bench_model_arg(const char *prog, const char *own_flags, int argc, char **argv, int *i,
                                  bench_model_args *a) {
  const char *s = argv[*i];
  if (!strcmp(s, "--quick")) a->res = 256;
  else if (!strcmp(s, "--res") && *i + 1 < argc) a->res = atoi(argv[++*i]);
  else if (!strcmp(s, "--weights-dtype") && *i + 1 < argc) a->wdtype = argv[++*i];
  else if (!strcmp(s, "--device") && *i + 1 < argc) a->device = argv[++*i];
  else if (!strcmp(s, "-h") || !strcmp(s, "--help")) { bench_model_usage(prog, own_flags); return 1; }
  else if (s[0] == '-') {
    fprintf(stderr, "%s: unknown flag %s\n", prog, s);
    bench_model_usage(prog, own_flags);
    return 2;
  }
  else a->path = s, a->given = 1;
  return 0;
}

/* 1 (message printed) when the model is not there: the bench then exits 2 if
 * MODEL was given, else 0 (`make bench` without a model: skipped, not failed) */
static inline int bench_model_missing(const char *prog, const bench_model_args *a) {
  if (cd_file_exists(a->path)) return 0;
  fprintf(stderr, "%s: model %s not found; make a random SD 1.5 with\n"
                  "  build/tools/gen_sd_random --out %s\n", prog, a->path, a->path);
  return 1;
}

/* cd_sd_load with the error printed as "prog: ..."; NULL on failure */
static inline cd_sd_model *bench_load_model(const char *prog, const char *path, const cd_load_opts *lo) {
  cd_sd_model *m = NULL;
  if (cd_sd_load(path, lo, &m)) {
    fprintf(stderr, "%s: %s\n", prog, cd_last_error());
    return NULL;
  }
  return m;
}

#endif
