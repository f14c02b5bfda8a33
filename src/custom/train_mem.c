/* train_mem.c - training memory from the planner at small resolutions (see
 * train_mem.h). */
#include "custom/train_mem.h"

#include <stdio.h>

#include "core/common.h"
#include "core/sysmem.h"
#include "diffusion/mem_estimate.h"

/* A trainer's bytes in three parts: *per_ex (the training graph's arena and
 * the step's buffers: grow with the area and the batch), *enc (the VAE
 * encoder's arena: grows with the area, one image at a time) and *params
 * (parameter gradients, Adam moments, accumulators: fixed). */
static int trainer_parts(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *per_ex, double *enc, double *params) {
  cd_train_opts c = *o;
  c.ntok = 0; /* a new token's row is a few KiB: not worth adding it to the tokenizer here */
  /* token-only training backpropagates through the same UNet to the row: planned as crossattn_kv,
   * whose K/V gradients and moments make it a slight over-estimate */
  if (c.train == CD_TRAIN_NONE) c.train = CD_TRAIN_KV;
  cd_trainer t;
  int rc = cd_trainer_init(&t, m, &c);
  *per_ex = *enc = *params = 0;
  if (!rc) {
    const double r2 = (double)o->res * o->res, lat = r2 / 64;
    /* the step's pixels, masks, noises, latents and posterior moments */
    *per_ex = (double)cd_graph_arena_bytes(t.g) + 4.0 * t.B * (3 * r2 + lat + 3 * 4 * lat + 2 * 4 * lat);
    *enc = (double)cd_graph_arena_bytes(t.enc);
    for (int i = 0; i < t.np; i++) *params += 4.0 * t.p[i].n * (3 + (grad_accum > 1)); /* grad, m, v (, acc) */
  }
  cd_trainer_free(&t);
  return rc ? cd_prefix_error("memory estimate (training graph)") : 0;
}

int cd_trainer_bytes(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes) {
  double a, e, f;
  if (trainer_parts(m, o, grad_accum, &a, &e, &f)) return -1;
  *bytes = a + e + f;
  return 0;
}

int cd_train_mem_estimate(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes) {
  /* two resolutions the trainer accepts (multiples of 64) where the area terms
   * already dominate, at batch 1 (every training-graph buffer is per example),
   * scaled to the batch: calibrating a large batch would itself reserve much
   * memory */
  const int nl = m->unet.cfg.nlevels > 0 ? m->unet.cfg.nlevels : 1;
  int r1 = 8 * (2 << (nl - 1));
  r1 = (r1 + 63) / 64 * 64;
  const int r2 = 2 * r1;
  cd_train_opts c = *o;
  c.batch = 1;
  double a1, a2, e1, e2, f;
  c.res = CD_MIN(r1, o->res);
  if (trainer_parts(m, &c, grad_accum, &a1, &e1, &f)) return -1;
  if (o->res <= r1) {
    *bytes = f + e1 + a1 * o->batch;
    return 0;
  }
  c.res = r2;
  if (trainer_parts(m, &c, grad_accum, &a2, &e2, &f)) return -1;
  const double x1 = (double)r1 * r1, x2 = (double)r2 * r2, x = (double)o->res * o->res;
  *bytes = f + cd_mem_affine(x1, e1, x2, e2, x) + o->batch * cd_mem_affine(x1, a1, x2, a2, x);
  return 0;
}

int cd_train_mem_fits(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes, int *fits) {
  cd_mem_limit l;
  if (cd_train_mem_estimate(m, o, grad_accum, bytes) || cd_mem_limit_get(&l)) return -1;
  double rss, vm;
  cd_mem_usage(&rss, &vm);
  const double have = l.env ? rss : (l.limit == l.as ? vm : rss); /* as cd_mem_check counts it */
  *fits = !l.limit || have + *bytes <= l.limit;
  return 0;
}

int cd_train_mem_check(cd_sd_model *m, const cd_train_opts *o, int grad_accum, int gen_class, const char *what) {
  double train;
  if (cd_train_mem_estimate(m, o, grad_accum, &train)) return -1;
  return cd_train_mem_check_bytes(m, o, train, gen_class, what);
}

int cd_train_mem_check_bytes(cd_sd_model *m, const cd_train_opts *o, double train, int gen_class, const char *what) {
  char a[32], detail[200];
  snprintf(detail, sizeof detail, "training graph, gradients and Adam moments %s", cd_mem_fmt(train, a, sizeof a));
  if (cd_mem_check(what, train, detail)) return -1;
  if (!gen_class) return 0;
  char w2[300];
  snprintf(w2, sizeof w2, "generating class images at %s", what);
  return cd_sample_mem_check(m, 1, 2, o->res, o->res, 0, 0, w2);
}
