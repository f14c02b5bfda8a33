/* train_mem.c - training memory from the planner at small resolutions (see
 * train_mem.h). */
#include "custom/train_mem.h"

#include <stdio.h>

#include "core/common.h"
#include "core/sysmem.h"
#include "diffusion/mem_estimate.h"

int cd_trainer_bytes(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes) {
  cd_train_opts c = *o;
  c.ntok = 0; /* a new token's row is a few KiB: not worth adding it to the tokenizer here */
  cd_trainer t;
  int rc = cd_trainer_init(&t, m, &c);
  double b = 0;
  if (!rc) {
    b = (double)cd_graph_arena_bytes(t.g) + (double)cd_graph_arena_bytes(t.enc);
    for (int i = 0; i < t.np; i++) b += 4.0 * t.p[i].n * (3 + (grad_accum > 1)); /* grad, m, v (, acc) */
    const double r2 = (double)o->res * o->res, lat = r2 / 64;
    /* the step's pixels, masks, noises, latents and posterior moments */
    b += 4.0 * t.B * (3 * r2 + lat + 3 * 4 * lat + 2 * 4 * lat);
  }
  cd_trainer_free(&t);
  *bytes = b;
  return rc ? cd_prefix_error("memory estimate (training graph)") : 0;
}

int cd_train_mem_estimate(cd_sd_model *m, const cd_train_opts *o, int grad_accum, double *bytes) {
  /* two resolutions the trainer accepts (multiples of 64) where the area terms already dominate */
  const int nl = m->unet.cfg.nlevels > 0 ? m->unet.cfg.nlevels : 1;
  int r1 = 8 * (2 << (nl - 1));
  r1 = (r1 + 63) / 64 * 64;
  const int r2 = 2 * r1;
  if (o->res <= r2) return cd_trainer_bytes(m, o, grad_accum, bytes);
  cd_train_opts c = *o;
  double b1, b2;
  c.res = r1;
  if (cd_trainer_bytes(m, &c, grad_accum, &b1)) return -1;
  c.res = r2;
  if (cd_trainer_bytes(m, &c, grad_accum, &b2)) return -1;
  *bytes = cd_mem_affine((double)r1 * r1, b1, (double)r2 * r2, b2, (double)o->res * o->res);
  return 0;
}

int cd_train_mem_check(cd_sd_model *m, const cd_train_opts *o, int grad_accum, int gen_class, const char *what) {
  double train;
  if (cd_train_mem_estimate(m, o, grad_accum, &train)) return -1;
  char a[32], detail[200];
  snprintf(detail, sizeof detail, "training graph, gradients and Adam moments %s", cd_mem_fmt(train, a, sizeof a));
  if (cd_mem_check(what, train, detail)) return -1;
  if (!gen_class) return 0;
  char w2[300];
  snprintf(w2, sizeof w2, "generating class images at %s", what);
  return cd_sample_mem_check(m, 1, 1, o->res, o->res, 0, 0, w2);
}
