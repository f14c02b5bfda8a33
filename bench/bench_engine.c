/* bench_engine.c - engine kernel throughput against the machine's sgemm peak.
 *
 *   build/bench/bench_engine            (threads: CDIFF_THREADS, default all cores)
 *
 * 1. sgemm peak: square 1024 and 2048 sgemm, best of several runs.
 * 2. conv2d 3x3, 320 -> 320 channels, 64x64, batch 1 (the SD UNet's first
 *    stage) through the graph API: forward, and forward + backward (dX and
 *    dW, as for a layer inside a trainable network). Reported as GFLOP/s and
 *    as a fraction of the sgemm peak; the target is >= 60% for the forward.
 * 3. A few more dense shapes of the UNet for context (not targets).
 * 4. Fused attention at SD and CLIP shapes, forward and backward.
 *
 * Two environment settings matter a lot on CPUs (both are read when the
 * libraries load, so they must be set before the process starts):
 *  - OMP_WAIT_POLICY=passive: by default OpenMP threads spin after each
 *    parallel region and steal the cores from OpenBLAS's own threads; with
 *    few cores this made the conv 2-4x slower here.
 *  - OPENBLAS_CORETYPE: OpenBLAS 0.3.21 does not recognise recent Xeons and
 *    falls back to its slow generic "Prescott" kernels; SkylakeX (AVX-512)
 *    or Haswell (AVX2) fixes it.
 * The benchmark prints what it runs with and warns about both (bench_print_env).
 */
#include <cblas.h>
#include <stdio.h>

#include "bench_common.h"
#include "core/common.h"
#include "engine/cpu/cpu.h"
#include "engine/graph.h"

#define REPS 8

static double sgemm_peak = 0;  /* best square sgemm of the whole run */
static double probe_peak = 0;  /* best square sgemm between the target conv runs */

static void row(const char *what, double flops, double sec) {
  double gf = flops / sec * 1e-9;
  if (sgemm_peak > 0)
    printf("  %-44s %9.2f ms %9.1f GFLOP/s %6.1f%%\n", what, sec * 1e3, gf, 100 * gf / sgemm_peak);
  else
    printf("  %-44s %9.2f ms %9.1f GFLOP/s\n", what, sec * 1e3, gf);
}

/* best time of REPS sgemm calls C[M,N] = A[M,K] B[K,N] (after one warm-up) */
static double time_sgemm(int M, int N, int K) { return bench_sgemm_seconds(M, N, K, REPS, 1); }

/* square sgemm; updates the peak. Run twice (start and end) because the
 * timing noise of shared machines comes in bursts. */
static void bench_sgemm(const char *when) {
  printf("sgemm (square, best of %d, %s)\n", REPS, when);
  int sizes[] = {1024, 2048};
  for (int i = 0; i < 2; i++) {
    int n = sizes[i];
    double t = time_sgemm(n, n, n), gf = 2.0 * n * n * n / t * 1e-9;
    char what[64];
    snprintf(what, sizeof what, "sgemm %dx%dx%d", n, n, n);
    printf("  %-44s %9.2f ms %9.1f GFLOP/s\n", what, t * 1e3, gf);
    if (gf > sgemm_peak) sgemm_peak = gf;
  }
  printf("  %-44s %22.1f GFLOP/s\n\n", "peak so far (reference for the % column)", sgemm_peak);
}

/* best seconds of a conv2d forward, and of forward + backward */
typedef struct { double fwd, train; } conv_times;

/* One 2048^3 sgemm that updates the peak. Called between the conv runs of the
 * target measurement so that both see the same machine state: timing noise
 * on shared machines comes in bursts of seconds. */
static void peak_probe(int release) {
  enum { PN = 2048 };
  static float *A, *B, *C;
  if (release) {
    cd_aligned_free(A); cd_aligned_free(B); cd_aligned_free(C);
    A = B = C = NULL;
    return;
  }
  if (!A) {
    A = cd_aligned_alloc((size_t)PN * PN * sizeof(float));
    B = cd_aligned_alloc((size_t)PN * PN * sizeof(float));
    C = cd_aligned_alloc((size_t)PN * PN * sizeof(float));
    cd_rng r;
    cd_rng_seed(&r, 5);
    cd_rng_fill_normal(&r, A, (size_t)PN * PN);
    cd_rng_fill_normal(&r, B, (size_t)PN * PN);
  }
  double t0 = cd_time();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, PN, PN, PN, 1.0f, A, PN, B, PN, 0.0f, C, PN);
  double gf = 2.0 * PN * PN * PN / (cd_time() - t0) * 1e-9;
  if (gf > sgemm_peak) sgemm_peak = gf;
  if (gf > probe_peak) probe_peak = gf;
}

/* conv2d through the graph API, best of REPS after a warm-up. With train, x,
 * w and b are trainable (so backward computes dX, dW and db) and the pass is
 * forward + backward of sum(conv(x)). With probe, peak_probe runs after each
 * pass. Returns 0, or -1 with the error in cd_last_error(). */
static int time_conv(int N, int C, int H, int W, int O, int k, int stride, int pad, int train, int probe,
                     conv_times *out) {
  int rc = -1;
  size_t nx = (size_t)N * C * H * W, nw = (size_t)O * C * k * k;
  float *x = cd_aligned_alloc(nx * sizeof(float)), *w = cd_aligned_alloc(nw * sizeof(float));
  float *b = cd_aligned_alloc((size_t)O * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, 2);
  cd_rng_fill_normal(&r, x, nx);
  cd_rng_fill_normal(&r, w, nw);
  cd_rng_fill_normal(&r, b, (size_t)O);
  cd_graph *g = cd_graph_new();
  cd_node *xn = cd_param(g, "x", x, 4, (int64_t[]){N, C, H, W});
  cd_node *wn = cd_param(g, "w", w, 4, (int64_t[]){O, C, k, k});
  cd_node *bn = cd_param(g, "b", b, 1, (int64_t[]){O});
  cd_node *y = cd_conv2d(g, xn, wn, bn, stride, pad);
  cd_node *loss = cd_sum(g, y);
  if (train) {
    cd_set_trainable(xn);
    cd_set_trainable(wn);
    cd_set_trainable(bn);
  }
  cd_graph_output(g, y);
  cd_plan_opts po = {.training = train, .loss = loss};
  if (cd_graph_plan(g, &po)) goto done;
  out->fwd = out->train = 1e30;
  for (int i = 0; i <= REPS; i++) {
    double t0 = cd_time();
    if (cd_graph_forward(g)) goto done;
    double t1 = cd_time();
    if (train && cd_graph_backward(g)) goto done;
    double t2 = cd_time();
    if (probe) peak_probe(0);
    if (i == 0) continue; /* warm-up */
    if (t1 - t0 < out->fwd) out->fwd = t1 - t0;
    if (train && t2 - t0 < out->train) out->train = t2 - t0;
  }
  rc = 0;
done:
  cd_graph_free(g);
  cd_aligned_free(x);
  cd_aligned_free(w);
  cd_aligned_free(b);
  return rc;
}

static int bench_conv(void) {
  printf("conv2d 3x3 stride 1 pad 1, 320 -> 320 channels, 64x64, batch 1 (graph API, best of %d)\n", REPS);
  const int C = 320, H = 64, W = 64, O = 320;
  const double flops = 2.0 * O * C * 9 * H * W; /* one GEMM-sized pass */
  conv_times ti, tt;
  int bad = time_conv(1, C, H, W, O, 3, 1, 1, 0, 1, &ti) || time_conv(1, C, H, W, O, 3, 1, 1, 1, 0, &tt);
  peak_probe(1);
  if (bad) {
    fprintf(stderr, "bench_engine: conv2d: %s\n", cd_last_error());
    return -1;
  }
  double gemm = time_sgemm(O, H * W, C * 9);
  row("same-shape sgemm 320 x 4096 x 2880", flops, gemm);
  row("conv2d forward", flops, ti.fwd);
  row("conv2d forward (training plan)", flops, tt.fwd);
  row("conv2d forward + backward (dX, dW, db)", 3 * flops, tt.train);
  row("conv2d backward only", 2 * flops, tt.train - tt.fwd);
  printf("\n");
  bench_sgemm("after the conv");
  /* the target compares with the sgemm probed in the same time window */
  double gf = flops / ti.fwd * 1e-9, frac = gf / probe_peak;
  printf("conv2d 3x3 320ch 64x64 forward: %.1f GFLOP/s = %.1f%% of the sgemm peak %.1f GFLOP/s\n"
         "  (sgemm 2048^3 timed between the conv runs; against the best sgemm of the whole run: %.1f%%)\n",
         gf, 100 * frac, probe_peak, 100 * gf / sgemm_peak);
  printf("target >= 60%%: %s\n\n", frac >= 0.6 ? "PASS" : "MISS");
  return 0;
}

/* other dense shapes of the SD UNet / VAE, for context */
static int bench_more(void) {
  printf("other dense shapes (forward, graph API)\n");
  struct { const char *what; int C, H, O, k, s, p; } cs[] = {
      {"conv2d 3x3 s2 320@64x64 -> 32x32 (downsample)", 320, 64, 320, 3, 2, 1},
      {"conv2d 1x1 320 -> 320 @64x64", 320, 64, 320, 1, 1, 0},
      {"conv2d 3x3 640 -> 640 @32x32", 640, 32, 640, 3, 1, 1},
      {"conv2d 3x3 4 -> 320 @64x64 (conv_in)", 4, 64, 320, 3, 1, 1},
  };
  for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
    conv_times t;
    if (time_conv(1, cs[i].C, cs[i].H, cs[i].H, cs[i].O, cs[i].k, cs[i].s, cs[i].p, 0, 0, &t)) {
      fprintf(stderr, "bench_engine: %s: %s\n", cs[i].what, cd_last_error());
      return -1;
    }
    int64_t ho = (cs[i].H + 2 * cs[i].p - cs[i].k) / cs[i].s + 1;
    row(cs[i].what, 2.0 * cs[i].O * cs[i].C * cs[i].k * cs[i].k * ho * ho, t.fwd);
  }

  /* linear [2*4096, 320] x [1280, 320]^T, as in a transformer feed-forward */
  const int R = 2 * 4096, K = 320, M = 1280;
  float *x = cd_aligned_alloc((size_t)R * K * sizeof(float)), *w = cd_aligned_alloc((size_t)M * K * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, 3);
  cd_rng_fill_normal(&r, x, (size_t)R * K);
  cd_rng_fill_normal(&r, w, (size_t)M * K);
  cd_graph *g = cd_graph_new();
  cd_node *y = cd_linear(g, cd_param(g, "x", x, 3, (int64_t[]){2, 4096, K}),
                         cd_param(g, "w", w, 2, (int64_t[]){M, K}), NULL);
  cd_graph_output(g, y);
  int rc = cd_graph_plan(g, NULL);
  double best = 1e30;
  for (int i = 0; rc == 0 && i <= REPS; i++) {
    double t0 = cd_time();
    rc = cd_graph_forward(g);
    double dt = cd_time() - t0;
    if (i > 0 && dt < best) best = dt;
  }
  if (rc) fprintf(stderr, "bench_engine: linear: %s\n", cd_last_error());
  else row("linear [2,4096,320] -> 1280", 2.0 * R * K * M, best);
  cd_graph_free(g);
  cd_aligned_free(x);
  cd_aligned_free(w);
  printf("\n");
  return rc;
}

/* cd_attention through the graph API at SD shapes (self-attention at 4096
 * and 1024 tokens, 77-token cross-attention) and CLIP's causal 77 tokens,
 * with the fused kernel's scratch memory */
static void bench_attention(void) {
  struct { const char *what; int B, Tq, Tk, H, D, causal; } cs[] = {
      {"self 4096 tok, 8 heads x 40", 1, 4096, 4096, 8, 40, 0},
      {"cross 4096 x 77 tok, 8 heads x 40", 1, 4096, 77, 8, 40, 0},
      {"self 1024 tok, 8 heads x 80", 1, 1024, 1024, 8, 80, 0},
      {"CLIP causal 77 tok, 12 heads x 64, batch 2", 2, 77, 77, 12, 64, 1},
  };
  printf("attention (fused, graph API, best of %d; fwd flops 4*Tq*Tk*H*D, fwd+bwd 3.5x)\n", REPS);
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
    const int B = cs[c].B, Tq = cs[c].Tq, Tk = cs[c].Tk, H = cs[c].H, D = cs[c].D;
    const size_t nq = (size_t)B * Tq * H * D, nk = (size_t)B * Tk * H * D;
    float *q = cd_aligned_alloc(nq * sizeof(float)), *k = cd_aligned_alloc(nk * sizeof(float));
    float *v = cd_aligned_alloc(nk * sizeof(float));
    cd_rng r;
    cd_rng_seed(&r, 4);
    cd_rng_fill_normal(&r, q, nq);
    cd_rng_fill_normal(&r, k, nk);
    cd_rng_fill_normal(&r, v, nk);
    const double flops = 4.0 * Tq * Tk * H * D * B * (cs[c].causal ? 0.5 : 1);
    double best[2] = {1e30, 1e30}, bwd_best = 1e30;
    size_t sc[5] = {0}; /* cd_cpu_attention_scratch_bytes, what = 0..4 */
    for (int train = 0; train <= 1; train++) {
      cd_graph *g = cd_graph_new();
      cd_node *qn = cd_param(g, "q", q, 3, (int64_t[]){B, Tq, H * D});
      cd_node *kn = cd_param(g, "k", k, 3, (int64_t[]){B, Tk, H * D});
      cd_node *vn = cd_param(g, "v", v, 3, (int64_t[]){B, Tk, H * D});
      if (train) cd_set_trainable(qn), cd_set_trainable(kn), cd_set_trainable(vn);
      cd_node *y = cd_attention(g, qn, kn, vn, H, cs[c].causal, 1.0f / __builtin_sqrtf((float)D));
      cd_node *loss = cd_sum(g, y);
      cd_graph_output(g, y);
      cd_plan_opts po = {.training = train, .loss = loss};
      int rc = cd_graph_plan(g, &po);
      for (int i = 0; rc == 0 && i <= REPS; i++) {
        double t0 = cd_time();
        rc = cd_graph_forward(g);
        double t1 = cd_time();
        if (rc == 0 && train) rc = cd_graph_backward(g);
        double t2 = cd_time();
        if (i == 0) continue; /* warm-up */
        if (t2 - t0 < best[train]) best[train] = t2 - t0;
        if (train && t2 - t1 < bwd_best) bwd_best = t2 - t1;
      }
      if (train)
        for (int w = 0; w < 5; w++) sc[w] = cd_cpu_attention_scratch_bytes(y, w);
      cd_graph_free(g);
      if (rc) {
        fprintf(stderr, "bench_engine: attention: %s\n", cd_last_error());
        break;
      }
    }
    char what[96];
    snprintf(what, sizeof what, "%s fwd", cs[c].what);
    row(what, flops, best[0]);
    snprintf(what, sizeof what, "%s bwd (dq,dk,dv)", cs[c].what);
    row(what, 2.5 * flops, bwd_best);
    snprintf(what, sizeof what, "%s fwd+bwd", cs[c].what);
    row(what, 3.5 * flops, best[1]);
    printf("    scratch: score block %zu KiB; per thread %.0f KiB fwd, %.0f KiB bwd; shared %.1f MiB fwd, %.1f MiB bwd\n"
           "    (one [Tq, Tk] fp32 score matrix per head would be %.1f MiB; none is allocated)\n",
           sc[0] >> 10, sc[1] / 1024.0, sc[2] / 1024.0, sc[3] / 1048576.0, sc[4] / 1048576.0,
           (double)Tq * Tk * sizeof(float) / 1048576.0);
    cd_aligned_free(q);
    cd_aligned_free(k);
    cd_aligned_free(v);
  }
  printf("\n");
}

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  cd_threads_init();
  bench_print_env("bench_engine");
  printf("\n");
  bench_sgemm("before the conv");
  if (bench_conv()) return 1;
  if (bench_more()) return 1;
  bench_attention();
  return 0;
}
