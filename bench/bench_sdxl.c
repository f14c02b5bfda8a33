/* bench_sdxl.c - the SDXL UNet at its native 1024 px: seconds per classifier-free
 * guidance evaluation and per Custom Diffusion training step of the UNet, the
 * memory plan of each and the process's peak resident memory.
 *
 *   build/tools/gen_sd_random --family sdxl --out /tmp/sdxl-random   (once: a random SDXL, 7 GB in f16)
 *   build/bench/bench_sdxl [MODEL] [--quick] [--res PX] [--weights-dtype f32|f16|bf16]
 *                          [--reps N] [--steps N] [--limit-gib G] [--force] [--no-train]
 *                          [--no-checkpointing] [--plan-only] [--no-eval]
 *
 * MODEL: default /tmp/sdxl-random (a diffusers folder or SGM single file); only
 * the UNet is loaded, in the checkpoint's own precision (16-bit weights for an
 * f16 checkpoint) unless --weights-dtype says. --quick: 512 px instead of 1024.
 *  - eval: x [2, 4, res/8, res/8], t [2], context [2, 77, 2048], text_embeds
 *    [2, 1280], time_ids [2, 6]: one warm-up and --reps (default 2) timed runs;
 *  - train: the same batch as 1 instance + 1 class image, attn2 K/V of every
 *    transformer block trainable (the start token's rows detached), the context
 *    and the pooled text_embeds carrying gradients back (where the new token's
 *    rows of both text encoders would take them), masked MSE; --steps (default
 *    1) timed forward+backward passes after one warm-up. The text encoders' own
 *    backward, the VAE encoder and the AdamW update are not in it (bench_train
 *    measures the whole `cdiff train` step of the SD families). The training
 *    graph is planned with activation checkpointing (the UNet's resnet and
 *    transformer blocks run forward again in backward, as `cdiff train
 *    --gradient-checkpointing`) unless --no-checkpointing; the plan without it
 *    is reported either way.
 * --plan-only: plan and report, run nothing. --no-eval: the training step only.
 * A graph whose planned memory plus the weights exceeds --limit-gib (default 20:
 * the bench must not swap the machine it runs on) is planned and reported, not
 * run, unless --force.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "core/common.h"
#include "engine/graph.h"
#include "models/sd_model.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

typedef struct {
  cd_graph *g;
  cd_node *x, *t, *ctx, *te, *ti, *target, *mask, *out, *loss;
  float *hc, *ht; /* host values of the trainable context and text_embeds (training) */
} sdxl_graph;

/* builds and plans the CFG evaluation (train = 0) or the training graph */
static int build(cd_sd_model *m, int res, int train, int ckpt, sdxl_graph *s) {
  const cd_unet_config *c = &m->unet.cfg;
  const int64_t B = 2, h = res / 8;
  memset(s, 0, sizeof *s);
  cd_graph *g = s->g = cd_graph_new();
  s->x = cd_input(g, "x", 4, (int64_t[]){B, c->in_channels, h, h});
  s->t = cd_input(g, "t", 1, (int64_t[]){B});
  s->ti = cd_input(g, "time_ids", 2, (int64_t[]){B, c->add_time_ids});
  cd_unet_mode mode = {CD_TRAIN_KV, 1};
  if (!train) {
    s->ctx = cd_input(g, "context", 3, (int64_t[]){B, 77, c->context_dim});
    s->te = cd_input(g, "text_embeds", 2, (int64_t[]){B, c->add_text_dim});
  } else { /* trainable stand-ins for the encoders' outputs: their gradients are computed */
    float *hc = cd_calloc((size_t)(B * 77 * c->context_dim), sizeof(float));
    float *ht = cd_calloc((size_t)(B * c->add_text_dim), sizeof(float));
    cd_rng r;
    cd_rng_seed(&r, 5);
    cd_rng_fill_normal(&r, hc, (size_t)(B * 77 * c->context_dim));
    cd_rng_fill_normal(&r, ht, (size_t)(B * c->add_text_dim));
    s->hc = hc;
    s->ht = ht;
    s->ctx = cd_param(g, "context", hc, 3, (int64_t[]){B, 77, c->context_dim});
    s->te = cd_param(g, "text_embeds", ht, 2, (int64_t[]){B, c->add_text_dim});
    cd_set_trainable(s->ctx);
    cd_set_trainable(s->te);
  }
  cd_unet_added add = {s->te, s->ti};
  s->out = cd_unet_build_cond(g, &m->unet, train ? &mode : NULL, s->x, s->t, s->ctx, &add);
  cd_plan_opts po = {0};
  if (train) {
    s->target = cd_input(g, "target", 4, s->out->ne);
    s->mask = cd_input(g, "mask", 4, (int64_t[]){B, 1, h, h});
    s->loss = cd_mse(g, s->out, s->target, s->mask);
    cd_graph_output(g, s->loss);
    po.training = 1;
    po.loss = s->loss;
    po.checkpoint = ckpt;
  } else {
    cd_graph_output(g, s->out);
  }
  return cd_graph_plan(g, &po);
}

static int fill_inputs(sdxl_graph *s, int res) {
  cd_rng r;
  cd_rng_seed(&r, 1);
  cd_node *in[5] = {s->x, s->ctx, s->te, s->target, s->mask};
  for (int i = 0; i < 5; i++) {
    if (!in[i] || in[i] == (s->hc ? s->ctx : NULL) || in[i] == (s->ht ? s->te : NULL)) continue;
    float *h = cd_malloc((size_t)in[i]->n * sizeof(float));
    if (in[i] == s->mask) for (int64_t k = 0; k < in[i]->n; k++) h[k] = 1.0f;
    else cd_rng_fill_normal(&r, h, (size_t)in[i]->n);
    int rc = cd_graph_set_input(s->g, in[i], h);
    free(h);
    if (rc) return -1;
  }
  const float t[2] = {500, 500};
  const float ids[12] = {(float)res, (float)res, 0, 0, (float)res, (float)res,
                         (float)res, (float)res, 0, 0, (float)res, (float)res};
  return cd_graph_set_input(s->g, s->t, t) || cd_graph_set_input(s->g, s->ti, ids) ? -1 : 0;
}

static void free_graph(sdxl_graph *s) {
  if (!s->g) return;
  cd_graph_free(s->g);
  free(s->hc);
  free(s->ht);
  s->g = NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* runs warm-up + n timed passes; best and median seconds into best and med */
static int time_runs(sdxl_graph *s, int train, int n, double *best, double *med) {
  double *ts = cd_malloc((size_t)(n + 1) * sizeof(double));
  for (int i = 0; i <= n; i++) {
    double a = cd_time();
    if (cd_graph_forward(s->g) || (train && cd_graph_backward(s->g))) {
      free(ts);
      return -1;
    }
    ts[i] = cd_time() - a;
    printf("  %s %d%s: %.2f s\n", train ? "step" : "eval", i, i ? "" : " (warm-up)", ts[i]);
    fflush(stdout);
  }
  qsort(ts + 1, (size_t)n, sizeof *ts, cmp_double);
  *best = ts[1];
  *med = n % 2 ? ts[1 + n / 2] : 0.5 * (ts[n / 2] + ts[1 + n / 2]);
  free(ts);
  return 0;
}

int main(int argc, char **argv) {
  cd_env_tune(argc, argv);
  cd_threads_init();
  bench_model_args a;
  bench_model_args_default(&a);
  a.path = "/tmp/sdxl-random";
  a.res = 1024;
  int reps = 2, steps = 1, force = 0, no_train = 0, ckpt = 1, plan_only = 0, no_eval = 0;
  double limit = 20;
  for (int i = 1; i < argc; i++) {
    int rc = 0;
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--limit-gib") && i + 1 < argc) limit = atof(argv[++i]);
    else if (!strcmp(argv[i], "--force")) force = 1;
    else if (!strcmp(argv[i], "--no-train")) no_train = 1;
    else if (!strcmp(argv[i], "--no-checkpointing")) ckpt = 0;
    else if (!strcmp(argv[i], "--plan-only")) plan_only = 1;
    else if (!strcmp(argv[i], "--no-eval")) no_eval = 1;
    else if (!strcmp(argv[i], "--quick")) a.res = 512;
    else if ((rc = bench_model_arg("bench_sdxl", "[--reps N] [--steps N] [--limit-gib G] [--force] [--no-train] [--no-checkpointing] [--plan-only] [--no-eval]", argc,
                                   argv, &i, &a)))
      return rc == 1 ? 0 : 2;
  }
  if (no_eval && no_train) {
    fprintf(stderr, "bench_sdxl: --no-eval and --no-train leave nothing to run\n");
    return 2;
  }
  if (a.res < 64 || a.res % 64 || reps < 1 || reps > 100 || steps < 1 || steps > 100 || !(limit > 0)) {
    fprintf(stderr, "bench_sdxl: --res must be a positive multiple of 64, --reps and --steps 1..100, --limit-gib > 0\n");
    return 2;
  }
  bench_print_env("bench_sdxl");
  if (!cd_file_exists(a.path)) {
    fprintf(stderr, "bench_sdxl: model %s not found; make a random SDXL with\n"
                    "  build/tools/gen_sd_random --family sdxl --out %s\n", a.path, a.path);
    return a.given ? 2 : 0;
  }
  double t0 = cd_time();
  cd_load_opts lo = {.no_vae = 1, .no_text = 1, .weights_dtype = a.wdtype};
  cd_sd_model *m = bench_load_model("bench_sdxl", a.path, &lo);
  if (!m) return 1;
  if (m->unet.cfg.add_time_dim <= 0) {
    fprintf(stderr, "bench_sdxl: %s is not an SDXL model (no text_time added conditioning)\n", a.path);
    cd_sd_free(m);
    return 2;
  }
  double wb = (double)cd_weights_bytes(m->unet.w);
  if (a.res < 256) a.res = 256; /* the plan is extrapolated from 128 and 256 px */
  printf("loaded the UNet of %s (%s, %.1fM parameters) in %.1fs: %.2f GiB resident (weights %s)\n", a.path,
         m->dtype[1], cd_weights_numel(m->unet.w) / 1e6, cd_time() - t0, wb / GIB, a.wdtype ? a.wdtype : "as stored");

  /* the weights Custom Diffusion trains are f32 master weights, as `cdiff train` widens them */
  if (!no_train) {
    char names[256][96];
    int nl = cd_unet_attn2_layers(&m->unet.cfg, names, 256);
    for (int i = 0; i < nl; i++)
      for (int k = 0; k < 2; k++) {
        char key[128];
        snprintf(key, sizeof key, "%s.%s.weight", names[i], k ? "to_v" : "to_k");
        cd_weight *x = cd_weights_get(m->unet.w, key);
        if (x) cd_weight_f32(x);
      }
  }
  double wbt = (double)cd_weights_bytes(m->unet.w);
  int rc = 0;
  double res_s[2][2] = {{-1, -1}, {-1, -1}}, plan[2] = {0, 0};
  for (int train = no_eval; train <= !no_train && !rc; train++) {
    sdxl_graph s;
    /* the plan grows affinely with the image area (docs/architecture.md): planned at two
     * small sizes first, so a graph that cannot fit is never allocated */
    double ab[2][2] = {{0, 0}, {0, 0}}, sc = 0;
    static const int small[2] = {128, 256};
    const int ck = train && ckpt;
    for (int v = 0; v <= train && !rc; v++) /* training: the plan with checkpointing (v = 1) and without */
      for (int k = 0; k < 2 && !rc; k++) {
        if (build(m, small[k], train, v, &s)) {
          fprintf(stderr, "bench_sdxl: %s\n", cd_last_error());
          rc = 1;
        } else {
          ab[v][k] = (double)cd_graph_arena_bytes(s.g);
          sc = CD_MAX(sc, (double)cd_graph_scratch_bytes(s.g));
        }
        free_graph(&s);
      }
    if (rc) break;
    const double a1 = 128.0 * 128, a2 = 256.0 * 256, ar = (double)a.res * a.res;
    double pre = ab[ck][0] + (ab[ck][1] - ab[ck][0]) * (ar - a1) / (a2 - a1) + sc;
    if (train)
      printf("\ntraining graph at %dx%d extrapolated from %d and %d px: %.2f GiB without activation checkpointing, "
             "%.2f GiB with it (+ %.2f GiB scratch)\n", a.res, a.res, small[0], small[1],
             (ab[0][0] + (ab[0][1] - ab[0][0]) * (ar - a1) / (a2 - a1)) / GIB,
             (ab[1][0] + (ab[1][1] - ab[1][0]) * (ar - a1) / (a2 - a1)) / GIB, sc / GIB);
    if ((train ? wbt : wb) + pre > limit * GIB && !force) {
      plan[train] = pre;
      printf("\n%s graph at %dx%d: about %.2f GiB planned (extrapolated from %d and %d px): with the weights over "
             "--limit-gib %.3g, not built (use --quick, or --force)\n", train ? "training" : "CFG evaluation", a.res,
             a.res, pre / GIB, small[0], small[1], limit);
      continue;
    }
    t0 = cd_time();
    if (build(m, a.res, train, ck, &s)) {
      fprintf(stderr, "bench_sdxl: %s\n", cd_last_error());
      free_graph(&s);
      rc = 1;
      break;
    }
    plan[train] = (double)(cd_graph_arena_bytes(s.g) + cd_graph_scratch_bytes(s.g));
    printf("\n%s graph at %dx%d, batch 2%s%s: %d nodes, planned %.2f GiB (arena %.2f + scratch %.2f; unplanned %.2f), "
           "in %.1fs\n", train ? "training" : "CFG evaluation", a.res, a.res, train ? " (1 instance + 1 class)" : "",
           ck ? ", activation checkpointing" : "",
           cd_graph_nnodes(s.g), plan[train] / GIB, cd_graph_arena_bytes(s.g) / GIB, cd_graph_scratch_bytes(s.g) / GIB,
           cd_graph_naive_bytes(s.g) / GIB, cd_time() - t0);
    double est = (train ? wbt : wb) + plan[train];
    if (plan_only) {
      printf("  not run (--plan-only)\n");
    } else if (est > limit * GIB && !force) {
      printf("  not run: weights + plan %.2f GiB exceed --limit-gib %.1f (use --quick, or --force)\n", est / GIB, limit);
    } else if (fill_inputs(&s, a.res) || time_runs(&s, train, train ? steps : reps, &res_s[train][0], &res_s[train][1])) {
      fprintf(stderr, "bench_sdxl: %s\n", cd_last_error());
      rc = 1;
    } else if (train) {
      double l = cd_graph_get_scalar(s.g, s.loss);
      printf("  loss %.4f%s\n", l, isfinite(l) ? "" : " (NOT FINITE)");
      if (!isfinite(l)) rc = 1;
    }
    free_graph(&s);
  }
  printf("\nresult (%s, %d threads, %dx%d)\n", a.path, cd_threads(), a.res, a.res);
  printf("  UNet weights             %.2f GiB (%s; %.2f GiB with the trained K/V in f32)\n", wb / GIB, m->dtype[1],
         wbt / GIB);
  static const char *const what[2] = {"seconds per CFG eval    ", "seconds per train step  "};
  for (int k = no_eval; k <= !no_train; k++) {
    if (res_s[k][0] >= 0)
      printf("  %s best %.2f, median %.2f (planned %.2f GiB)\n", what[k], res_s[k][0], res_s[k][1], plan[k] / GIB);
    else
      printf("  %s not run (planned %.2f GiB)\n", what[k], plan[k] / GIB);
  }
  printf("  peak RSS                 %.2f GiB\n", cd_peak_rss_bytes() / GIB);
  cd_sd_free(m);
  return rc;
}
