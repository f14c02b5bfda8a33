/* bench_train.c - memory and time of one Custom Diffusion training step at
 * SD 1.5 shapes: batch 1 instance + 1 class (prior preservation) image, K/V of
 * the cross-attention layers and one new token trainable, as `cdiff train`.
 * An SDXL model (gen_sd_random --family sdxl; --res 1024) trains the token in
 * both encoders, with time ids of the uncropped image.
 *
 *   build/tools/gen_sd_random --out /tmp/sd15-random      (once: a random SD 1.5)
 *   build/bench/bench_train [MODEL] [--quick] [--res PX] [--weights-dtype f32|f16|bf16] [--steps N] [--limit-gib G] [--force]
 *
 * MODEL defaults to /tmp/sd15-random; --quick trains at 256 px instead of 512.
 * Token ids are made up ([49406, 320, 49408, 2368, 49407, pad...], the new token
 * 49408 starting from row 42170), so no tokenizer is needed. Prints:
 *  - the memory plan: fp32 weights, the training graph's arena (all activations,
 *    saved values and gradients, planned with reuse), the VAE encoder's arena,
 *    the trainable parameters with their gradients and AdamW moments, and their
 *    sum, compared with the 24 GiB budget of the issue (PASS/MISS);
 *  - where the arena goes: the 10 largest nodes (value + gradient + saved state)
 *    and the bytes of values kept for the backward pass, by op;
 *  - when the estimate is under --limit-gib (default 20: this bench must not
 *    swap the machine it runs on; --force overrides), N steps (default 2; the
 *    first one pays the page faults): seconds per step (forward+backward, and
 *    the clip+AdamW update), the loss, and the process's peak resident memory,
 *    the figure that decides PASS/MISS.
 *
 * Run with OPENBLAS_CORETYPE and OMP_WAIT_POLICY=passive in effect (cd_env_tune
 * sets them by re-executing unless CDIFF_NO_REEXEC is set).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/common.h"
#include "custom/train.h"
#include "engine/graph.h"
#include "models/sd_model.h"
#include "models/token_table.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define BUDGET_GIB 24.0

static size_t node_bytes(const cd_node *x) {
  size_t b = 0;
  if (x->data_off >= 0) b += cd_nbytes(x);
  if (x->grad_off >= 0) b += cd_nbytes(x);
  if (x->aux_off >= 0) b += (size_t)x->naux * sizeof(float);
  return b;
}

static int cmp_node_bytes(const void *a, const void *b) {
  size_t x = node_bytes(*(cd_node *const *)a), y = node_bytes(*(cd_node *const *)b);
  return x < y ? 1 : x > y ? -1 : 0;
}

static void shape_str(const cd_node *x, char *buf, size_t cap) {
  size_t k = (size_t)snprintf(buf, cap, "[");
  for (int d = 0; d < x->ndim && k < cap; d++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? "," : "", (long long)x->ne[d]);
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* A label for an unnamed node: its own name, else the weight it applies
 * ("w=..."), else the same for its first source, and so on ("after ..."). */
static const char *where(const cd_node *x) {
  static char buf[200];
  const cd_node *p = x;
  for (int depth = 0; p && depth < 8; depth++, p = p->nsrc ? p->src[0] : NULL) {
    const char *nm = p->name[0] ? p->name : NULL;
    for (int s = 1; !nm && s < p->nsrc; s++)
      if (p->src[s] && (p->src[s]->flags & CD_FLAG_PARAM) && p->src[s]->name[0]) nm = p->src[s]->name;
    if (!nm) continue;
    snprintf(buf, sizeof buf, "%s%s%s", depth ? "after " : "", p->name[0] ? "" : "w=", nm);
    return buf;
  }
  return "";
}

/* The 10 largest arena users, and the values the backward pass reads (a node's
 * value is kept when it or one of its consumers needs a gradient), by op. */
static void arena_report(const cd_graph *g) {
  int n = cd_graph_nnodes(g);
  cd_node **v = cd_malloc((size_t)n * sizeof *v);
  for (int i = 0; i < n; i++) v[i] = cd_graph_node(g, i);
  qsort(v, (size_t)n, sizeof *v, cmp_node_bytes);
  printf("  largest nodes (value + gradient + saved state):\n");
  for (int i = 0; i < 10 && i < n; i++) {
    char sh[64];
    shape_str(v[i], sh, sizeof sh);
    printf("    %8.1f MiB  %-12s %-18s %s%s\n", node_bytes(v[i]) / 1048576.0, cd_op_name(v[i]->op), sh,
           where(v[i]), v[i]->grad_off >= 0 ? " (value + grad)" : "");
  }
  free(v);
  char *kept = cd_calloc((size_t)n, 1);
  for (int i = 0; i < n; i++) {
    cd_node *x = cd_graph_node(g, i);
    if (!(x->flags & CD_FLAG_NEEDS_GRAD)) continue;
    kept[i] = 1;
    for (int s = 0; s < x->nsrc; s++)
      if (x->src[s]) kept[x->src[s]->id] = 1;
  }
  double by_op[CD_OP_COUNT] = {0}, aux = 0, total = 0;
  for (int i = 0; i < n; i++) {
    cd_node *x = cd_graph_node(g, i);
    if (x->aux_off >= 0) aux += (double)x->naux * sizeof(float);
    if (!kept[i] || x->data_off < 0) continue;
    by_op[x->op] += (double)cd_nbytes(x);
    total += (double)cd_nbytes(x);
  }
  free(kept);
  printf("  values read by the backward pass: %.2f GiB (+ %.2f GiB saved norm/attention statistics), by op:\n",
         total / GIB, aux / GIB);
  for (int k = 0; k < 6; k++) { /* the largest few */
    int best = -1;
    for (int o = 0; o < CD_OP_COUNT; o++)
      if (by_op[o] > 0 && (best < 0 || by_op[o] > by_op[best])) best = o;
    if (best < 0) break;
    printf("    %-14s %6.2f GiB\n", cd_op_name((cd_op)best), by_op[best] / GIB);
    by_op[best] = 0;
  }
}

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  cd_threads_init();
  bench_model_args a;
  bench_model_args_default(&a);
  int steps = 2, force = 0, batch = 1;
  double limit = 20;
  for (int i = 1; i < argc; i++) {
    int rc = 0;
    if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--limit-gib") && i + 1 < argc) limit = atof(argv[++i]);
    else if (!strcmp(argv[i], "--force")) force = 1;
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
    else if ((rc = bench_model_arg("bench_train", "[--steps N] [--limit-gib G] [--force] [--batch N]", argc, argv, &i, &a))) return rc == 1 ? 0 : 2;
  }
  const char *path = a.path;
  int res = a.res;
  if (res < 64 || res % 64 || steps < 0 || steps > 100 || !(limit > 0) || batch < 1 || batch > 32) {
    fprintf(stderr, "bench_train: --res must be a positive multiple of 64, --steps 0..100, --limit-gib > 0, --batch 1..32\n");
    return 2;
  }
  bench_print_env("bench_train");
  if (bench_model_missing("bench_train", &a)) return a.given ? 2 : 0;
  const int gpu = bench_on_gpu(&a);
  if (bench_open_device("bench_train", &a)) return 1;
  double t0 = cd_time();
  cd_load_opts lo = {.weights_dtype = a.wdtype};
  cd_sd_model *m = bench_load_model("bench_train", path, &lo);
  if (!m) return 1;
  double wbytes = (double)(cd_weights_bytes(m->unet.w) + cd_weights_bytes(m->vae.w) + cd_weights_bytes(m->clip.w) +
                           (m->clip2.w ? cd_weights_bytes(m->clip2.w) : 0));
  printf("loaded %s (%s) in %.1fs: %.2f GiB of weights (%s)\n", path, cd_family_name(m->family),
         cd_time() - t0, wbytes / GIB, a.wdtype ? a.wdtype : "as stored");

  cd_train_opts o;
  cd_train_opts_default(&o);
  o.res = res;
  o.batch = batch; /* instance examples; prior preservation adds as many class examples */
  o.ntok = 1; /* <new1>: 49408, from the row of "ktn" (42170) */
  cd_trainer t;
  t0 = cd_time();
  if (cd_sd_add_tokens(m, 1, (const char *[]){"<new1>"}, (int[]){42170}, NULL, o.tok_id) || cd_trainer_init(&t, m, &o)) {
    fprintf(stderr, "bench_train: %s\n", cd_last_error());
    cd_trainer_free(&t);
    cd_sd_free(m);
    return 1;
  }
  int64_t ntrain = 0;
  for (int i = 0; i < t.np; i++) ntrain += t.p[i].n;
  double arena = (double)cd_graph_arena_bytes(t.g), enc = (double)cd_graph_arena_bytes(t.enc);
  double opt = 3.0 * 4.0 * (double)ntrain; /* gradient, AdamW m and v */
  double est = wbytes + arena + enc + opt;
  printf("trainer at %dx%d, %d examples per step (1 instance + 1 class), planned in %.1fs\n", res, res, t.B,
         cd_time() - t0);
  printf("memory plan\n");
  printf("  weights (text, UNet, VAE)            %7.2f GiB\n", wbytes / GIB);
  printf("  training graph arena (%5d nodes)    %7.2f GiB  (unplanned %.2f GiB)\n", cd_graph_nnodes(t.g), arena / GIB,
         cd_graph_naive_bytes(t.g) / GIB);
  printf("  VAE encoder arena                    %7.2f GiB\n", enc / GIB);
  printf("  %5.1fM trainable: grad + AdamW m, v  %7.2f GiB\n", ntrain / 1e6, opt / GIB);
  printf("  estimate                             %7.2f GiB  -> %s (budget %.0f GiB)\n", est / GIB,
         est <= BUDGET_GIB * GIB ? "PASS" : "MISS", BUDGET_GIB);
  if (est > BUDGET_GIB * GIB) printf("  over the budget by %.2f GiB\n", (est - BUDGET_GIB * GIB) / GIB);
  arena_report(t.g);

  int rc = 0;
  if (steps > 0 && est > limit * GIB && !force) {
    printf("\nnot running steps: the estimate %.2f GiB exceeds --limit-gib %.1f (use --quick, or --force)\n", est / GIB,
           limit);
    steps = 0;
  }
  if (steps > 0) {
    const int B = t.B, hw = (int)(t.h * t.w);
    const int64_t lat = (int64_t)B * m->unet.cfg.in_channels * hw;
    float *pix = cd_malloc((size_t)B * 3 * res * res * sizeof(float));
    float *mask = cd_malloc((size_t)B * hw * sizeof(float));
    float *noise = cd_malloc((size_t)lat * sizeof(float)), *lnoise = cd_malloc((size_t)lat * sizeof(float));
    int *ids = cd_malloc((size_t)B * 77 * sizeof(int)), *ids2 = cd_malloc((size_t)B * 77 * sizeof(int)), ts[64];
    float *tids = cd_malloc((size_t)B * 6 * sizeof(float)); /* SDXL: the full image, uncropped */
    for (int b = 0; b < B; b++)
      for (int k = 0; k < 6; k++) tids[b * 6 + k] = k == 2 || k == 3 ? 0.0f : (float)res;
    cd_rng r;
    cd_rng_seed(&r, 3);
    for (int64_t k = 0; k < (int64_t)B * 3 * res * res; k++) pix[k] = (float)(2 * cd_rng_uniform(&r) - 1);
    for (int k = 0; k < B * hw; k++) mask[k] = 1.0f;
    const int pad = m->clip.cfg.pad_id;
    static const int inst[5] = {49406, 320, 49408, 2368, 49407}, cls[4] = {49406, 320, 2368, 49407};
    for (int b = 0; b < B; b++)
      for (int k = 0; k < 77; k++) {
        int ninst = b < B / 2;
        ids[b * 77 + k] = ninst ? (k < 5 ? inst[k] : pad) : (k < 4 ? cls[k] : pad);
        ids2[b * 77 + k] = ninst ? (k < 5 ? inst[k] : m->clip2.cfg.pad_id) : (k < 4 ? cls[k] : m->clip2.cfg.pad_id);
      }
    printf("\nsteps\n");
    double best = 1e30, sum = 0;
    int timed = 0;
    for (int s = 0; s < steps; s++) {
      cd_rng_fill_normal(&r, noise, (size_t)lat);
      cd_rng_fill_normal(&r, lnoise, (size_t)lat);
      for (int b = 0; b < B; b++) ts[b] = (int)(cd_rng_uniform(&r) * 1000);
      const int xl = m->family == CD_FAMILY_SDXL;
      cd_batch bt = {.pixels = pix, .mask = mask, .ids = ids, .ids2 = xl ? ids2 : NULL, .time_ids = xl ? tids : NULL,
                     .noise = noise, .latent_noise = lnoise, .timesteps = ts};
      cd_step_report rep;
      double a = cd_time();
      if (cd_trainer_grad(&t, &bt, &rep)) { rc = 1; break; }
      double b = cd_time();
      if (cd_trainer_update(&t, &rep)) { rc = 1; break; }
      double c = cd_time();
      printf("  step %d%s: %.2f s (forward+backward %.2f s, update %.3f s)  loss %.4f  grad norm %.3g  RSS %.2f GiB\n",
             s, s == 0 ? " (warm-up)" : "", c - a, b - a, c - b, rep.loss, rep.grad_norm, cd_peak_rss_bytes() / GIB);
      fflush(stdout);
      if (s > 0 || steps == 1) {
        if (c - a < best) best = c - a;
        sum += c - a;
        timed++;
      }
    }
    if (rc) fprintf(stderr, "bench_train: %s\n", cd_last_error());
    free(pix);
    free(mask);
    free(noise);
    free(lnoise);
    free(ids);
    free(ids2);
    free(tids);
    if (!rc) {
      double peak = cd_peak_rss_bytes() / GIB;
      printf("\nresult (%s, %dx%d, %d threads)\n", path, res, res, cd_threads());
      printf("  seconds per step      best %.2f, mean %.2f (%d timed%s)\n", best, sum / timed, timed,
             steps == 1 ? ", incl. warm-up" : "");
      printf("  training arena        %.2f GiB planned\n", arena / GIB);
      printf("  peak RSS              %.2f GiB  -> %s (budget %.0f GiB)\n", peak, peak <= BUDGET_GIB ? "PASS" : "MISS",
             BUDGET_GIB);
      if (gpu) {
        /* issue 9's count for diffusers' step at 512 px and batch 8 (VAE encode, text encoder, UNet
         * forward and backward), scaled by the batch; other sizes: no nominal count */
        const double tflop = res == 512 ? 22.95 * t.B / 8.0 : 0;
        printf("  GPU                   %.1f ms per step at batch %d", best * 1e3, t.B);
        if (tflop > 0)
          printf(", %.1f TFLOP/s, MFU %.1f%% of %.0f TFLOP/s bf16 dense (nominal %.2f TFLOP per step)", tflop / best,
                 100 * tflop / best / BENCH_GPU_PEAK_TFLOPS, BENCH_GPU_PEAK_TFLOPS, tflop);
        printf("\n");
        if (cd_backend_cuda_peak_bytes) printf("  GPU peak memory       %.2f GiB (device-wide)\n", cd_backend_cuda_peak_bytes() / GIB);
        printf("BENCH train_step res=%d batch=%d ms=%.3f tflops=%.2f mfu=%.4f gpu_peak_gib=%.2f\n", res, t.B, best * 1e3,
               tflop > 0 ? tflop / best : 0, tflop > 0 ? tflop / best / BENCH_GPU_PEAK_TFLOPS : 0,
               cd_backend_cuda_peak_bytes ? cd_backend_cuda_peak_bytes() / GIB : 0);
      }
    }
  }
  cd_trainer_free(&t);
  cd_sd_free(m);
  return rc;
}
