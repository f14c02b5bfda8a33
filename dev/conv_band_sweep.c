/* conv_band_sweep.c - how the im2col band size of src/engine/cpu/conv.c
 * affects conv2d 3x3 320->320 @64x64 (forward, and forward + backward).
 * Build and run: see dev/README.md. Sizes are interleaved per round and the
 * best time of all rounds is kept, because the timing noise on shared
 * machines is large. */
#include <stdio.h>
#include <stdlib.h>

#include "core/common.h"
#include "engine/graph.h"

extern size_t cd_cpu_conv_band_bytes;

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 5;
  const int C = 320, H = 64, O = 320;
  size_t nx = (size_t)C * H * H, nw = (size_t)O * C * 9;
  float *x = cd_malloc(nx * 4), *w = cd_malloc(nw * 4), *b = cd_calloc(O, 4);
  cd_rng r;
  cd_rng_seed(&r, 1);
  cd_rng_fill_normal(&r, x, nx);
  cd_rng_fill_normal(&r, w, nw);
  cd_graph *g = cd_graph_new();
  cd_node *xn = cd_param(g, "x", x, 4, (int64_t[]){1, C, H, H});
  cd_node *wn = cd_param(g, "w", w, 4, (int64_t[]){O, C, 3, 3});
  cd_node *bn = cd_param(g, "b", b, 1, (int64_t[]){O});
  cd_node *y = cd_conv2d(g, xn, wn, bn, 1, 1);
  cd_node *loss = cd_sum(g, y);
  cd_set_trainable(xn);
  cd_set_trainable(wn);
  cd_plan_opts po = {.training = 1, .loss = loss};
  if (cd_graph_plan(g, &po)) { fprintf(stderr, "%s\n", cd_last_error()); return 1; }
  size_t kb[] = {256, 512, 1024, 2048, 4096, 6144, 8192, 16384, 49152};
  enum { NB = sizeof kb / sizeof kb[0] };
  double bf[NB], bt[NB];
  for (int i = 0; i < NB; i++) bf[i] = bt[i] = 1e30;
  double flops = 2.0 * O * C * 9 * H * H;
  for (int it = 0; it < rounds; it++)
    for (int i = 0; i < NB; i++) {
      cd_cpu_conv_band_bytes = kb[i] << 10;
      if (cd_graph_plan(g, &po)) return 1; /* the plan sizes the conv's scratch for this band */
      double t0 = cd_time();
      cd_graph_forward(g);
      double t1 = cd_time();
      cd_graph_backward(g);
      double t2 = cd_time();
      if (t1 - t0 < bf[i]) bf[i] = t1 - t0;
      if (t2 - t0 < bt[i]) bt[i] = t2 - t0;
    }
  printf("%10s %12s %12s %14s\n", "band KiB", "fwd ms", "fwd GF/s", "fwd+bwd GF/s");
  for (int i = 0; i < NB; i++)
    printf("%10zu %12.2f %12.1f %14.1f\n", kb[i], bf[i] * 1e3, flops / bf[i] * 1e-9, 3 * flops / bt[i] * 1e-9);
  cd_graph_free(g);
  free(x); free(w); free(b);
  return 0;
}
