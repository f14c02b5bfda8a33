/* bench_dist.c - data-parallel training over MPI: the time of one training
 * step and of its gradient all-reduce, per rank count.
 *
 *   make MPI=1 build-mpi/bench/bench_dist
 *   CDIFF_THREADS=1 mpirun -np 1 build-mpi/bench/bench_dist [MODEL] [--res PX] [--steps N] [--allreduce-mb MB]
 *   CDIFF_THREADS=1 mpirun -np 2 build-mpi/bench/bench_dist ...
 *
 * MODEL defaults to models/cdiff-world (the shipped SD 1.x world model), res
 * to 64 px. Every rank trains 1 instance + 1 class example per step (weak
 * scaling: the global batch grows with the ranks), as `cdiff train` does
 * under mpirun: forward+backward, the trainable gradients copied into one
 * bucket, weighted, all-reduced in place (MPI_Allreduce), copied back, and the
 * same AdamW step on every rank. Rank 0 prints per step the slowest rank's
 * times (max over ranks) and at the end the mean over the timed steps (the
 * first is a warm-up). Scaling efficiency = step time on 1 rank / step time on
 * N ranks (weak scaling: 1.0 is perfect).
 *
 * --allreduce-mb MB (default 76, SD 1.5's 19 M trainable floats) also times a
 * standalone all-reduce of a buffer that size, best of 5, to show what the
 * gradients of SD 1.5 would cost between these ranks.
 * The default build (no MPI) runs it as one rank.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/common.h"
#include "custom/train.h"
#include "dist/dist.h"
#include "engine/optim.h"
#include "models/sd_model.h"
#include "models/token_table.h"
#include "models/tokenizer.h"

static double max_over_ranks(double x) {
  /* the max through a sum of one-hot vectors would be wasteful: the ranks are few, gather them */
  int n = cd_dist_size();
  double *all = cd_calloc(n, sizeof(double)), m = x;
  all[cd_dist_rank()] = x;
  if (!cd_dist_allreduce_sum_f64(all, n))
    for (int i = 0; i < n; i++) m = all[i] > m ? all[i] : m;
  free(all);
  return m;
}

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  if (cd_dist_init(&argc, &argv)) {
    fprintf(stderr, "bench_dist: %s\n", cd_last_error());
    return 1;
  }
  const int rank = cd_dist_rank(), size = cd_dist_size();
  cd_silent = rank != 0;
  const char *path = "models/cdiff-world";
  int res = 64, steps = 6;
  double mb = 76;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--res") && i + 1 < argc) res = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--allreduce-mb") && i + 1 < argc) mb = atof(argv[++i]);
    else if (argv[i][0] == '-') {
      if (!rank) fprintf(stderr, "usage: bench_dist [MODEL] [--res PX] [--steps N] [--allreduce-mb MB]\n");
      cd_dist_finalize();
      return 2;
    } else path = argv[i];
  }
  if (steps < 2) steps = 2;
  if (!rank) bench_print_env("bench_dist");
  if (!cd_file_exists(path)) {
    if (!rank) fprintf(stderr, "bench_dist: model %s not found\n", path);
    cd_dist_finalize();
    return 2;
  }
  cd_load_opts lo = {0};
  cd_sd_model *m = bench_load_model("bench_dist", path, &lo);
  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = res;
  o.ntok = 1;
  cd_trainer t;
  memset(&t, 0, sizeof t);
  int rc = !m || cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, (int[]){cd_tokenizer_lookup(m->tok, "a</w>") > 0 ? cd_tokenizer_lookup(m->tok, "a</w>") : 1}, NULL, o.tok_id) ||
           cd_trainer_init(&t, m, &o);
  if (cd_dist_agree(!rc)) {
    if (!rank) fprintf(stderr, "bench_dist: %s\n", cd_last_error());
    if (t.g) cd_trainer_free(&t);
    cd_sd_free(m);
    cd_dist_finalize();
    return 1;
  }
  const int B = t.B, hw = (int)(t.h * t.w);
  const int64_t lat = (int64_t)B * m->unet.cfg.in_channels * hw;
  float *pix = cd_malloc((size_t)B * 3 * res * res * sizeof(float)), *mask = cd_malloc((size_t)B * hw * sizeof(float));
  float *noise = cd_malloc((size_t)lat * sizeof(float)), *lnoise = cd_malloc((size_t)lat * sizeof(float));
  int *ids = cd_malloc((size_t)B * CD_TOK_MAX_LEN * sizeof(int)), ts[64];
  cd_rng r;
  cd_rng_seed(&r, 3 + (uint64_t)rank);
  for (int64_t k = 0; k < (int64_t)B * 3 * res * res; k++) pix[k] = (float)(2 * cd_rng_uniform(&r) - 1);
  for (int k = 0; k < B * hw; k++) mask[k] = 1.0f;
  for (int b = 0; b < B; b++) cd_tokenize_padded(m->tok, b < B / 2 ? "photo of a <new1> toy" : "photo of a toy", ids + b * CD_TOK_MAX_LEN, NULL);
  const int64_t nb = cd_optim_numel(t.opt);
  float *bucket = cd_malloc((size_t)nb * sizeof(float));
  if (!rank)
    printf("%s at %dx%d, %d rank(s) x (1 instance + 1 class) examples, %d thread(s) per rank, %lld trainable floats (%.2f MB)\n", path,
           res, res, size, cd_threads(), (long long)nb, nb * 4 / 1e6);
  double sum_step = 0, sum_ar = 0;
  int timed = 0;
  for (int s = 0; s < steps && !rc; s++) {
    cd_rng_fill_normal(&r, noise, (size_t)lat);
    cd_rng_fill_normal(&r, lnoise, (size_t)lat);
    for (int b = 0; b < B; b++) ts[b] = (int)(cd_rng_uniform(&r) * 1000) % 1000;
    cd_batch bt = {.pixels = pix, .mask = mask, .ids = ids, .noise = noise, .latent_noise = lnoise, .timesteps = ts};
    cd_step_report rep;
    cd_dist_barrier();
    double a = cd_time();
    rc = cd_trainer_grad(&t, &bt, &rep);
    double b = cd_time();
    if (!rc && size > 1) {
      rc = cd_optim_grads_get(t.opt, bucket);
      for (int64_t k = 0; k < nb; k++) bucket[k] *= 1.0f / size;
      if (!rc) rc = cd_dist_allreduce_sum_f32(bucket, nb) || cd_optim_grads_set(t.opt, bucket);
    }
    double c = cd_time();
    if (!rc) rc = cd_trainer_update(&t, &rep);
    double d = cd_time();
    double step = max_over_ranks(d - a), fb = max_over_ranks(b - a), ar = max_over_ranks(c - b);
    if (!rank)
      printf("  step %d%s: %.3f s (forward+backward %.3f s, all-reduce %.4f s, update %.4f s)\n", s, s ? "" : " (warm-up)", step, fb, ar,
             d - c);
    if (s > 0) sum_step += step, sum_ar += ar, timed++;
  }
  if (rc) fprintf(stderr, "bench_dist: rank %d: %s\n", rank, cd_last_error());
  else if (!rank)
    printf("result: %d rank(s): %.3f s per step, all-reduce %.4f s (%.1f%% of the step), %.2f examples/s\n", size, sum_step / timed,
           sum_ar / timed, 100 * sum_ar / sum_step, 2.0 * size * timed / sum_step);
  /* SD 1.5's gradients between these ranks */
  if (!rc && size > 1 && mb > 0) {
    int64_t n = (int64_t)(mb * 1e6 / 4);
    float *x = cd_malloc((size_t)n * sizeof(float));
    for (int64_t k = 0; k < n; k++) x[k] = 1e-3f * (float)(k % 1000);
    double best = 1e30;
    for (int i = 0; i < 5; i++) {
      cd_dist_barrier();
      double a = cd_time();
      cd_dist_allreduce_sum_f32(x, n);
      double dt = max_over_ranks(cd_time() - a);
      best = dt < best ? dt : best;
    }
    if (!rank)
      printf("all-reduce of %.0f MB (fp32) over %d ranks: %.3f s, %.2f GB/s algorithm bandwidth (bytes / time)\n", mb, size, best,
             mb / 1e3 / best);
    free(x);
  }
  free(pix), free(mask), free(noise), free(lnoise), free(ids), free(bucket);
  cd_trainer_free(&t);
  cd_sd_free(m);
  cd_dist_finalize();
  return rc ? 1 : 0;
}
