/* pretrain.c - `cdiff pretrain` (see pretrain.h for the objectives). */
#include "pretrain/pretrain.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/progress.h"
#include "diffusion/scheduler.h"
#include "io/fsutil.h"
#include "io/tensor_file.h"
#include "models/tokenizer.h"
#include "pretrain/paramset.h"
#include "pretrain/world_model.h"
#include "world/vocab.h"
#include "world/world.h"

void cd_pretrain_opts_default(cd_pretrain_opts *o) {
  memset(o, 0, sizeof *o);
  o->seed = 1;
  o->vae_steps = 1500;
  o->unet_steps = 5300;
  o->vae_batch = 8;
  o->unet_batch = 32;
  o->vae_lr = 1e-3f;
  o->unet_lr = 1e-3f;
  o->kl_weight = 1e-4f;
  o->uncond_prob = 0.1f;
  o->checkpoint_every = 100;
  o->scale_images = 256;
}

enum { PH_VAE = 0, PH_UNET = 1 };
static const char *const phase_name[2] = {"vae", "unet"};

static uint64_t step_seed(uint64_t seed, int phase, int step) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)phase * 0xbf58476d1ce4e5b9ULL + (uint64_t)step;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* ------------------------------------------------------------ the run */

typedef struct {
  const cd_pretrain_opts *o;
  cd_sd_model m;
  cd_tokenizer *tok;
  char state[4096], logp[4096];
  int phase, step;   /* next step to run in phase */
  cd_paramset ps[2]; /* the phase's parameters: VAE encoder + decoder, or text encoder + UNet */
  int nps;
  int opt_steps;     /* optimizer updates taken in this phase */
  FILE *log;
  int ran;           /* steps run by this process (stop_after) */
  /* EMA of the phase-2 parameters (o->ema > 0): ema[i] averages ema_w[i] */
  float **ema;
  cd_weight **ema_w;
  char **ema_name;   /* "ema/<component>/<weight name>" in the state file */
  int nema;
  long ema_n;        /* updates averaged so far */
} run_t;

/* ---- state file: weights, Adam moments, phase, step, scaling factor ---- */

/* The options that define the losses, kept in the state: a resumed run that
 * changed one would log losses of another objective under the same run, and
 * the documented command would no longer reproduce the model. States written
 * before these were kept carry none and are not checked. */
static const struct {
  const char *key, *flag;
  size_t off;
} loss_opts[] = {{"kl_weight", "--kl-weight", offsetof(cd_pretrain_opts, kl_weight)},
                 {"uncond_prob", "--uncond-prob", offsetof(cd_pretrain_opts, uncond_prob)},
                 {"offset_noise", "--offset-noise", offsetof(cd_pretrain_opts, offset_noise)},
                 {"object_weight", "--object-weight", offsetof(cd_pretrain_opts, object_weight)},
                 {"unet_sprites", "--unet-sprites", offsetof(cd_pretrain_opts, unet_sprites)}};
enum { NLOSS_OPTS = sizeof loss_opts / sizeof loss_opts[0] };

static void loss_opt_str(const cd_pretrain_opts *o, int i, char out[32]) {
  snprintf(out, 32, "%.9g", *(const float *)((const char *)o + loss_opts[i].off));
}

static int sync_all(run_t *r) {
  for (int i = 0; i < r->nps; i++)
    if (cd_paramset_sync(&r->ps[i])) return -1;
  return 0;
}

static int save_state(run_t *r) {
  if (sync_all(r)) return -1;
  cd_weights *ws[3] = {r->m.clip.w, r->m.unet.w, r->m.vae.w};
  static const char *const comp[3] = {"text_encoder", "unet", "vae"};
  int nt = 0, np = 0;
  for (int c = 0; c < 3; c++) nt += cd_weights_count(ws[c]);
  for (int i = 0; i < r->nps; i++) np += r->ps[i].n;
  nt += 2 * np + r->nema;
  cd_tensor_out *t = cd_calloc((size_t)nt, sizeof *t);
  char **names = cd_calloc((size_t)nt, sizeof *names);
  float **mv = cd_calloc((size_t)(2 * np + 1), sizeof *mv);
  int k = 0, rc = 0;
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < cd_weights_count(ws[c]); i++, k++) {
      cd_weight *x = cd_weights_at(ws[c], i);
      size_t L = strlen(comp[c]) + strlen(x->name) + 2;
      names[k] = cd_malloc(L);
      snprintf(names[k], L, "%s/%s", comp[c], x->name);
      t[k] = (cd_tensor_out){.name = names[k], .dtype = CD_DT_F32, .ndim = x->ndim, .data = cd_weight_f32(x)};
      for (int d = 0; d < x->ndim; d++) t[k].shape[d] = x->ne[d];
    }
  int q = 0;
  for (int s = 0; s < r->nps; s++)
    for (int i = 0; i < r->ps[s].n; i++)
      for (int w = 0; w < 2; w++, k++, q++) {
        const cd_weight *x = r->ps[s].w[i];
        int64_t n = cd_numel(x->ndim, x->ne);
        mv[q] = cd_malloc((size_t)n * sizeof(float));
        if (!rc) rc = cd_optim_read(r->ps[s].o, i, w ? CD_OPTIM_V : CD_OPTIM_M, mv[q]);
        size_t L = strlen(r->ps[s].name[i]) + 8;
        names[k] = cd_malloc(L);
        snprintf(names[k], L, "adam_%c/%s", w ? 'v' : 'm', r->ps[s].name[i]);
        t[k] = (cd_tensor_out){.name = names[k], .dtype = CD_DT_F32, .ndim = 1, .shape = {n}, .data = mv[q]};
      }
  for (int i = 0; i < r->nema; i++, k++) {
    const cd_weight *x = r->ema_w[i];
    t[k] = (cd_tensor_out){.name = r->ema_name[i], .dtype = CD_DT_F32, .ndim = 1,
                           .shape = {cd_numel(x->ndim, x->ne)}, .data = r->ema[i]};
  }
  char ph[8], st[32], sf[32], ad[32], en[32];
  snprintf(ph, sizeof ph, "%s", phase_name[r->phase]);
  snprintf(st, sizeof st, "%d", r->step);
  snprintf(sf, sizeof sf, "%.9g", r->m.vae.cfg.scaling_factor);
  snprintf(ad, sizeof ad, "%d", r->opt_steps);
  snprintf(en, sizeof en, "%ld", r->ema_n);
  char lv[NLOSS_OPTS][32];
  const char *meta[2 * (6 + NLOSS_OPTS)] = {"format", "cdiff-pretrain-state", "phase", ph, "step", st, "scaling_factor", sf,
                                            "adam_step", ad};
  int nm = 5;
  for (int i = 0; i < NLOSS_OPTS; i++) {
    loss_opt_str(r->o, i, lv[i]);
    meta[2 * nm] = loss_opts[i].key, meta[2 * nm + 1] = lv[i], nm++;
  }
  if (r->nema) meta[2 * nm] = "ema_updates", meta[2 * nm + 1] = en, nm++;
  if (!rc) rc = cd_safetensors_write(r->state, t, nt, meta, nm);
  for (int i = 0; i < nt - r->nema; i++) free(names[i]);
  for (int i = 0; i < q; i++) free(mv[i]);
  free(mv);
  free(names);
  free(t);
  if (!rc && fflush(r->log)) rc = cd_set_error("%s: write failed", r->logp);
  return rc;
}

/* Reads the weights (all components) and the phase/step; Adam moments are read by load_moments. */
static int load_state(run_t *r, cd_tensor_file **fout) {
  cd_tensor_file *f;
  if (cd_safetensors_open(r->state, &f)) return cd_prefix_error("--resume");
  const char *fmt = cd_tf_meta(f, "format"), *ph = cd_tf_meta(f, "phase"), *st = cd_tf_meta(f, "step"),
             *sf = cd_tf_meta(f, "scaling_factor");
  if (!fmt || strcmp(fmt, "cdiff-pretrain-state") || !ph || !st || !sf) {
    cd_tensor_file_close(f);
    return cd_set_error("--resume: %s is not a cdiff pretrain state (metadata format/phase/step missing)", r->state);
  }
  for (int i = 0; i < NLOSS_OPTS; i++) {
    const char *was = cd_tf_meta(f, loss_opts[i].key);
    char now[32];
    loss_opt_str(r->o, i, now);
    if (was && strcmp(was, now)) {
      cd_set_error("--resume %s: %s %s differs from the run's %s (a resumed run keeps its losses; to change them, "
                   "start a new --out with --init)", r->state, loss_opts[i].flag, now, was);
      cd_tensor_file_close(f); /* after the message: was lives in f */
      return -1;
    }
  }
  r->phase = !strcmp(ph, "unet") ? PH_UNET : PH_VAE;
  r->step = atoi(st);
  r->m.vae.cfg.scaling_factor = (float)atof(sf);
  cd_weights *ws[3] = {r->m.clip.w, r->m.unet.w, r->m.vae.w};
  static const char *const comp[3] = {"text_encoder", "unet", "vae"};
  /* every component (phase 1 of a run from scratch leaves the text encoder and UNet at
   * their initial values; with --init they are the init's) */
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < cd_weights_count(ws[c]); i++) {
      cd_weight *x = cd_weights_at(ws[c], i);
      char nm[512];
      snprintf(nm, sizeof nm, "%s/%s", comp[c], x->name);
      const cd_tensor_info *t = cd_tf_find(f, nm);
      if (!t || cd_tensor_numel(t) != cd_numel(x->ndim, x->ne) || cd_tf_read_f32(f, t, cd_weight_f32(x))) {
        cd_tensor_file_close(f);
        return cd_set_error("--resume %s: tensor '%s' missing or mis-shaped (different model shapes?)", r->state, nm);
      }
      cd_weight_changed(x); /* a device holding a copy uploads the loaded value */
    }
  *fout = f;
  return 0;
}

static int load_moments(run_t *r, cd_tensor_file *f) {
  const char *ad = cd_tf_meta(f, "adam_step");
  r->opt_steps = ad ? atoi(ad) : 0;
  if (r->opt_steps == 0) return 0; /* saved at a phase's start: no moments yet */
  for (int s = 0; s < r->nps; s++) {
    cd_optim_set_steps(r->ps[s].o, r->opt_steps);
    for (int i = 0; i < r->ps[s].n; i++)
      for (int w = 0; w < 2; w++) {
        char nm[512];
        snprintf(nm, sizeof nm, "adam_%c/%s", w ? 'v' : 'm', r->ps[s].name[i]);
        const cd_tensor_info *t = cd_tf_find(f, nm);
        int64_t n = cd_numel(r->ps[s].w[i]->ndim, r->ps[s].w[i]->ne);
        float *buf = t && cd_tensor_numel(t) == n ? cd_malloc((size_t)n * sizeof(float)) : NULL;
        int rc = !buf || cd_tf_read_f32(f, t, buf) || cd_optim_write(r->ps[s].o, i, w ? CD_OPTIM_V : CD_OPTIM_M, buf);
        free(buf);
        if (rc) return cd_set_error("--resume %s: tensor '%s' missing or mis-shaped", r->state, nm);
      }
  }
  return 0;
}

static void free_params(run_t *r) {
  for (int i = 0; i < r->nps; i++) cd_paramset_free(&r->ps[i]);
  r->nps = 0;
  r->opt_steps = 0;
}

/* one AdamW update of every paramset at lr, all gradients clipped together to
 * total norm 1; *gnorm gets the norm before clipping */
static int update(run_t *r, double lr, double *gnorm) {
  double n[2], total = 0;
  for (int i = 0; i < r->nps; i++) {
    n[i] = cd_optim_grad_norm(r->ps[i].o);
    total += n[i] * n[i];
  }
  total = sqrt(total);
  *gnorm = total;
  if (!isfinite(total)) return cd_set_error("the gradient is not finite at %s step %d", phase_name[r->phase], r->step + 1);
  double coef = total > 1.0 ? 1.0 / (total + 1e-6) : 1.0;
  for (int i = 0; i < r->nps; i++) {
    /* the optimizer clips by min(1, max / (its norm + 1e-6)): this max gives the joint coefficient */
    cd_adamw_opts hp = {.lr = (float)lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0,
                        .max_grad_norm = coef < 1.0 ? (float)(coef * (n[i] + 1e-6)) : 0.0f};
    cd_optim_report rep;
    if (cd_optim_adamw_step(r->ps[i].o, &hp, &rep)) return -1;
    if (rep.nonfinite) return cd_set_error("the update made the parameters non-finite at %s step %d", phase_name[r->phase], r->step + 1);
  }
  r->opt_steps++;
  return 0;
}

/* ---- EMA of the phase-2 parameters ---- */

/* Starts the average over the parameters of ps[0]: from the state's
 * "ema/<name>" tensors when resuming one that has them, else from the current
 * values. */
static int ema_setup(run_t *r, cd_tensor_file *resume_f) {
  if (!(r->o->ema > 0) || r->ema) return 0;
  const cd_paramset *p = &r->ps[0];
  r->ema = cd_calloc((size_t)p->n, sizeof *r->ema);
  r->ema_w = cd_calloc((size_t)p->n, sizeof *r->ema_w);
  r->ema_name = cd_calloc((size_t)p->n, sizeof *r->ema_name);
  r->nema = p->n;
  const char *en = resume_f ? cd_tf_meta(resume_f, "ema_updates") : NULL;
  r->ema_n = en ? atol(en) : 0;
  for (int i = 0; i < p->n; i++) {
    int64_t n = cd_numel(p->w[i]->ndim, p->w[i]->ne);
    size_t L = strlen(p->name[i]) + 5;
    r->ema_w[i] = p->w[i];
    r->ema[i] = cd_malloc((size_t)n * sizeof(float));
    r->ema_name[i] = cd_malloc(L);
    snprintf(r->ema_name[i], L, "ema/%s", p->name[i]);
    const cd_tensor_info *t = en ? cd_tf_find(resume_f, r->ema_name[i]) : NULL;
    if (en && (!t || cd_tensor_numel(t) != n || cd_tf_read_f32(resume_f, t, r->ema[i])))
      return cd_set_error("--resume %s: tensor '%s' missing or mis-shaped", r->state, r->ema_name[i]);
    if (!en && cd_optim_read(p->o, i, CD_OPTIM_VALUE, r->ema[i])) return -1;
  }
  if (resume_f && !en) fprintf(stderr, "pretrain: the state has no EMA; the average starts at step %d\n", r->step);
  return 0;
}

/* ema = d ema + (1 - d) w after an update, d warmed up as (1+n)/(10+n) */
static int ema_update(run_t *r) {
  if (!r->nema) return 0;
  double d = (1.0 + r->ema_n) / (10.0 + r->ema_n);
  if (d > r->o->ema) d = r->o->ema;
  const float a = (float)d, b = (float)(1.0 - d);
  float *w = NULL;
  size_t cap = 0;
  int rc = 0;
  for (int i = 0; i < r->nema && !rc; i++) {
    int64_t n = cd_numel(r->ema_w[i]->ndim, r->ema_w[i]->ne);
    if ((size_t)n > cap) {
      cap = (size_t)n;
      w = cd_realloc(w, cap * sizeof(float));
    }
    rc = cd_optim_read(r->ps[0].o, i, CD_OPTIM_VALUE, w);
    for (int64_t k = 0; k < n && !rc; k++) r->ema[i][k] = a * r->ema[i][k] + b * w[k];
  }
  free(w);
  r->ema_n++;
  return rc;
}

static void ema_free(run_t *r) {
  for (int i = 0; i < r->nema; i++) {
    free(r->ema[i]);
    free(r->ema_name[i]);
  }
  free(r->ema);
  free(r->ema_w);
  free(r->ema_name);
  r->ema = NULL;
  r->ema_w = NULL;
  r->ema_name = NULL;
  r->nema = 0;
}

/* Writes the model into OUT: with EMA the averaged weights (swapped into the
 * weights for the write, the training values put back after it). */
static int write_model(run_t *r) {
  if (!r->nema) return cd_wm_write(&r->m, r->o->out, !r->o->f32);
  if (sync_all(r)) return -1;
  float **keep = cd_calloc((size_t)r->nema, sizeof *keep);
  for (int i = 0; i < r->nema; i++) {
    size_t bytes = (size_t)cd_numel(r->ema_w[i]->ndim, r->ema_w[i]->ne) * sizeof(float);
    float *x = cd_weight_f32(r->ema_w[i]);
    keep[i] = cd_malloc(bytes);
    memcpy(keep[i], x, bytes);
    memcpy(x, r->ema[i], bytes);
    cd_weight_changed(r->ema_w[i]);
  }
  int rc = cd_wm_write(&r->m, r->o->out, !r->o->f32);
  for (int i = 0; i < r->nema; i++) {
    size_t bytes = (size_t)cd_numel(r->ema_w[i]->ndim, r->ema_w[i]->ne) * sizeof(float);
    memcpy(cd_weight_f32(r->ema_w[i]), keep[i], bytes);
    cd_weight_changed(r->ema_w[i]);
    free(keep[i]);
  }
  free(keep);
  return rc;
}

/* ---- --init: continue from a world model written earlier ---- */

/* The shapes a pretraining state holds, read in one opening of it: the UNet's
 * layers per block (how many unet/down_blocks.0.resnets.K it has) and the
 * block_out_channels of its VAE (4 levels) and UNet (2 levels), from the first
 * ResNet of each down block. All 0 when there is no readable state
 * (load_state reports that). */
static void state_shapes(const char *path, int *layers, int vae[4], int unet[2]) {
  cd_tensor_file *f;
  if (!cd_file_exists(path) || cd_safetensors_open(path, &f)) {
    cd_clear_error();
    return;
  }
  char n[128];
  for (*layers = 0; *layers < 8; ++*layers) {
    snprintf(n, sizeof n, "unet/down_blocks.0.resnets.%d.conv1.weight", *layers);
    if (!cd_tf_find(f, n)) break;
  }
  for (int i = 0; i < 6; i++) {
    if (i < 4) snprintf(n, sizeof n, "vae/encoder.down_blocks.%d.resnets.0.conv1.weight", i);
    else snprintf(n, sizeof n, "unet/down_blocks.%d.resnets.0.conv1.weight", i - 4);
    const cd_tensor_info *t = cd_tf_find(f, n);
    int ch = t && t->ndim == 4 ? (int)t->shape[0] : 0;
    if (i < 4) vae[i] = ch;
    else unet[i - 4] = ch;
  }
  cd_tensor_file_close(f);
}

/* the run's channels: the flag's when given (it must agree with what the run
 * continues: width does not grow), else those of the state or init */
static int pick_channels(const char *what, const int *flag, const int *cont, int n, int *out) {
  int given = 0, known = 1, same = 1; /* known: cont holds every level (a damaged state: load_state says so) */
  for (int i = 0; i < n; i++) given |= flag[i] != 0, known &= cont[i] > 0, same &= flag[i] == cont[i];
  if (given && known && !same)
    return cd_set_error("--%s-channels differs from the model this run continues (%d,...): a model's width cannot change",
                        what, cont[0]);
  for (int i = 0; i < n; i++)
    if (given) out[i] = flag[i];
    else if (known) out[i] = cont[i];
  return 0;
}

/* A UNet of an --init model with fewer layers per block (slpb) than this run's
 * (lpb) grows by blocks that start as the identity, so the grown model computes
 * what the init computed and training goes on from there (Chen et al. 2016,
 * Net2DeeperNet). Down block i keeps its resnets/attentions 0..slpb-1 and gets
 * new ones after them; their skips are copies of the last old skip. Up block i
 * (lpb + 1 of each) pops those copies first: its block 0 is the old block 0,
 * blocks 1..lpb-slpb are new and drop their copied skip, the rest are the old
 * blocks 1..slpb. A new block's residual branch ends in a zero layer (conv2,
 * proj_out: cd_wm_init), and a new up ResNet's 1x1 shortcut passes the hidden
 * state and drops the skip (grow_shortcut). Sets src to the init's name of
 * weight `name`; 0 when the weight is new. */
static int grown_source(const char *name, int slpb, int lpb, char *src, size_t cap) {
  int i = 0, j = 0, n = 0, down = !strncmp(name, "down_blocks.", 12);
  char kind[16];
  if ((down || !strncmp(name, "up_blocks.", 10)) &&
      sscanf(name + (down ? 12 : 10), "%d.%15[a-z].%d.%n", &i, kind, &j, &n) == 3 && n > 0 &&
      (!strcmp(kind, "resnets") || !strcmp(kind, "attentions"))) {
    int gap = lpb - slpb;
    if (down ? j >= slpb : j >= 1 && j <= gap) return 0;
    if (!down && j > gap) j -= gap;
    snprintf(src, cap, "%s%d.%s.%d.%s", down ? "down_blocks." : "up_blocks.", i, kind, j, name + (down ? 12 : 10) + n);
    return 1;
  }
  snprintf(src, cap, "%s", name);
  return 1;
}

/* w: [C, 2C, 1, 1], the shortcut of a new up ResNet over cat(h, skip): h through, skip dropped */
static void grow_shortcut(cd_weight *w) {
  int64_t C = w->ne[0], in = w->ne[1];
  float *x = cd_weight_f32(w);
  for (int64_t o = 0; o < C; o++)
    for (int64_t c = 0; c < in; c++) x[o * in + c] = c == o ? 1.0f : 0.0f;
  cd_weight_changed(w);
}

/* Copies (or grows) src, the --init model loaded from dir, into r's model. */
static int init_from(run_t *r, const char *dir, const cd_sd_model *src) {
  cd_weights *dst[3] = {r->m.clip.w, r->m.unet.w, r->m.vae.w}, *from[3] = {src->clip.w, src->unet.w, src->vae.w};
  static const char *const comp[3] = {"text_encoder", "unet", "vae"};
  int slpb = src->unet.cfg.layers_per_block, lpb = r->m.unet.cfg.layers_per_block;
  int rc = 0;
  if (slpb > lpb)
    rc = cd_set_error("--init %s: its UNet has %d layers per block, more than the %d of this run (--unet-layers)", dir,
                      slpb, lpb);
  for (int c = 0; c < 3 && !rc; c++) {
    int grow = c == 1 && slpb < lpb;
    if (!from[c] || (!grow && cd_weights_count(from[c]) != cd_weights_count(dst[c]))) {
      rc = cd_set_error("--init %s: its %s has %d weights, the world model %d (not a world model of these shapes)", dir,
                        comp[c], from[c] ? cd_weights_count(from[c]) : 0, cd_weights_count(dst[c]));
      break;
    }
    for (int i = 0; i < cd_weights_count(dst[c]) && !rc; i++) {
      cd_weight *x = cd_weights_at(dst[c], i);
      char sname[192];
      if (!(grow ? grown_source(x->name, slpb, lpb, sname, sizeof sname) : (snprintf(sname, sizeof sname, "%s", x->name), 1))) {
        if (strstr(x->name, ".conv_shortcut.weight")) grow_shortcut(x); /* the rest keep cd_wm_init's values */
        continue;
      }
      cd_weight *y = cd_weights_get(from[c], sname);
      int same = y && y->ndim == x->ndim;
      for (int d = 0; same && d < x->ndim; d++) same = y->ne[d] == x->ne[d];
      if (!same) {
        rc = cd_set_error("--init %s: %s weight '%s' missing or mis-shaped", dir, comp[c], sname);
        break;
      }
      memcpy(cd_weight_f32(x), cd_weight_f32(y), (size_t)cd_numel(x->ndim, x->ne) * sizeof(float));
      cd_weight_changed(x);
    }
  }
  if (!rc) r->m.vae.cfg.scaling_factor = src->vae.cfg.scaling_factor;
  if (!rc && slpb < lpb)
    fprintf(stderr, "pretrain: UNet grown from %d to %d layers per block by identity blocks\n", slpb, lpb);
  return rc;
}

/* Keeps the log lines before (phase, step) and reopens it for appending. */
static int open_log(run_t *r) {
  char *txt = NULL;
  size_t n = 0;
  if (r->o->resume && cd_file_exists(r->logp) && cd_read_file(r->logp, &txt, &n)) return -1;
  char *keep = cd_malloc(n + 1);
  size_t k = 0;
  for (char *p = txt; p && p < txt + n;) {
    char *nl = memchr(p, '\n', (size_t)(txt + n - p));
    size_t len = nl ? (size_t)(nl - p) + 1 : (size_t)(txt + n - p);
    char ph[8] = "";
    int st = 0;
    const char *q = strstr(p, "\"phase\": \""), *s = strstr(p, "\"step\": ");
    if (q && q < p + len) {
      sscanf(q + 10, "%5[a-z]", ph);
      st = s && s < p + len ? atoi(s + 8) : 1 << 30; /* no step: a line written at the phase's end */
      int pi = !strcmp(ph, "unet") ? PH_UNET : PH_VAE;
      if (pi < r->phase || (pi == r->phase && st <= r->step)) {
        memcpy(keep + k, p, len);
        k += len;
      }
    }
    p += len;
  }
  int rc = cd_write_file_atomic(r->logp, keep, k);
  free(txt);
  free(keep);
  if (rc) return -1;
  r->log = fopen(r->logp, "a");
  if (!r->log) return cd_set_error("%s: cannot open for appending", r->logp);
  return 0;
}

static int log_step(run_t *r, double loss, double lr, double gnorm, const char *extra) {
  fprintf(r->log, "{\"phase\": \"%s\", \"step\": %d, \"loss\": %.9g, \"lr\": %.6g, \"grad_norm\": %.6g%s}\n",
          phase_name[r->phase], r->step + 1, loss, lr, gnorm, extra ? extra : "");
  return 0;
}

/* After step r->step + 1 finished: checkpoint if due; 1 when stop_after says stop. */
static int after_step(run_t *r, int total) {
  r->step++;
  r->ran++;
  int due = r->o->checkpoint_every > 0 && r->step % r->o->checkpoint_every == 0 && r->step < total;
  if (due && save_state(r)) return -1;
  /* in phase 2 every checkpoint is also a usable model */
  if (due && r->phase == PH_UNET && write_model(r)) return -1;
  if (r->o->stop_after && r->ran >= r->o->stop_after) {
    if (save_state(r)) return -1;
    return 1;
  }
  return 0;
}

/* B images (and captions when caps != NULL) of the pretraining world from rng;
 * a fraction `sprites` of them with generic sprites (the rng stream is the
 * same as before sprites existed when it is 0) */
static void render_batch(cd_rng *rng, int B, float *px, char (*caps)[256], float sprites, float *cells) {
  const int64_t per = 3 * CD_WORLD_RES * CD_WORLD_RES;
  for (int b = 0; b < B; b++) {
    cd_world_scene s;
    int spr = sprites > 0 && cd_rng_uniform(rng) < sprites;
    cd_world_sample(rng, spr ? CD_WORLD_SPRITES : CD_WORLD_PRETRAIN, &s);
    cd_world_render(&s, px + b * per);
    if (caps) cd_world_caption(&s, NULL, NULL, caps[b], 256);
    if (cells) cd_world_object_cells(&s, 8, cells + b * (CD_WORLD_RES / 8) * (CD_WORLD_RES / 8));
  }
}

/* ---- phase 1 ---- */

/* the VAE's weights by graph: encoder (and quant_conv), decoder (and post_quant_conv) */
static int is_decoder(const char *name) { return !strncmp(name, "decoder.", 8) || !strncmp(name, "post_quant_conv.", 16); }
static int is_encoder(const char *name) { return !is_decoder(name); }

static int vae_phase(run_t *r, cd_tensor_file *resume_f) {
  const cd_pretrain_opts *o = r->o;
  cd_vae *vae = &r->m.vae;
  const int B = o->vae_batch, R = CD_WORLD_RES, Z = vae->cfg.latent_channels, h = R / 8;
  const int64_t per = (int64_t)Z * h * h, px = 3 * R * R;
  int rc = -1;
  cd_paramset_clear_nodes(vae->w);
  const int dec_only = o->decoder_only; /* the encoder frozen: the latent space the UNet knows stays */
  cd_graph *ge = cd_graph_new(), *gd = cd_graph_new();
  cd_node *img = cd_input(ge, "image", 4, (int64_t[]){B, 3, R, R});
  cd_node *mom = cd_vae_encode_build(ge, vae, img);
  cd_node *gmom = dec_only ? NULL : cd_input(ge, "dloss_dmoments", 4, (int64_t[]){B, 2 * Z, h, h});
  cd_node *le = dec_only ? NULL : cd_sum(ge, cd_mul(ge, mom, gmom));
  cd_graph_output(ge, mom);
  if (!dec_only) cd_graph_output(ge, gmom);
  float *zbuf = cd_calloc((size_t)B * per, sizeof(float)), *eps = cd_malloc((size_t)B * per * sizeof(float));
  float *pix = cd_malloc((size_t)B * px * sizeof(float)), *mh = cd_malloc((size_t)B * 2 * per * sizeof(float));
  float *gm = cd_malloc((size_t)B * 2 * per * sizeof(float)), *dz = cd_malloc((size_t)B * per * sizeof(float));
  cd_node *z = cd_param(gd, "z", zbuf, 4, (int64_t[]){B, Z, h, h});
  cd_set_trainable(z);
  cd_node *rec = cd_vae_decode_build(gd, vae, z);
  cd_node *target = cd_input(gd, "target", 4, (int64_t[]){B, 3, R, R});
  cd_node *ld = cd_mse(gd, rec, target, NULL);
  cd_graph_output(gd, ld);
  cd_paramset_mark_trainable(vae->w);
  cd_plan_opts pe = {.training = 1, .loss = le}, pd = {.training = 1, .loss = ld};
  cd_optim *zo = NULL; /* writes z's value (never steps) */
  if (cd_graph_plan(ge, dec_only ? NULL : &pe) || cd_graph_plan(gd, &pd)) {
    cd_prefix_error("VAE training graph");
    goto done;
  }
  zo = cd_optim_new(gd);
  if (dec_only) {
    cd_paramset_init(&r->ps[0], gd);
    r->nps = 1;
    if (cd_optim_add(zo, z) || cd_paramset_add(&r->ps[0], vae->w, "vae", is_decoder)) goto done;
  } else {
    cd_paramset_init(&r->ps[0], ge);
    cd_paramset_init(&r->ps[1], gd);
    r->nps = 2;
    if (cd_optim_add(zo, z) || cd_paramset_add(&r->ps[0], vae->w, "vae", is_encoder) ||
        cd_paramset_add(&r->ps[1], vae->w, "vae", is_decoder))
      goto done;
  }
  if (resume_f && load_moments(r, resume_f)) goto done;
  const double c = o->kl_weight / (double)px; /* KL per image, relative to the per-pixel MSE */
  cd_progress pg;
  cd_progress_start(&pg, "pretrain vae", o->vae_steps);
  pg.quiet = o->quiet || !o->vae_steps;
  cd_progress_update(&pg, r->step);
  while (r->step < o->vae_steps) {
    cd_rng rng;
    cd_rng_seed(&rng, step_seed(o->seed, PH_VAE, r->step));
    render_batch(&rng, B, pix, NULL, o->vae_sprites, NULL);
    cd_rng_fill_normal(&rng, eps, (size_t)B * per);
    if (cd_graph_set_input(ge, img, pix) || cd_graph_forward(ge) || cd_graph_get(ge, mom, mh)) goto done;
    double kl = 0;
    for (int b = 0; b < B; b++)
      for (int64_t k = 0; k < per; k++) {
        float mu = mh[b * 2 * per + k], lv = mh[b * 2 * per + per + k];
        float lvc = lv < -30 ? -30 : lv > 20 ? 20 : lv;
        zbuf[b * per + k] = mu + expf(0.5f * lvc) * eps[b * per + k];
        kl += 0.5 * ((double)mu * mu + exp(lvc) - 1 - lvc);
      }
    if (cd_optim_write(zo, 0, CD_OPTIM_VALUE, zbuf) || cd_graph_set_input(gd, target, pix) || cd_graph_forward(gd) ||
        cd_graph_backward(gd) || cd_graph_get_grad(gd, z, dz))
      goto done;
    for (int b = 0; b < B; b++)
      for (int64_t k = 0; k < per; k++) {
        float lv = mh[b * 2 * per + per + k], in = lv >= -30 && lv <= 20;
        float lvc = lv < -30 ? -30 : lv > 20 ? 20 : lv, sd = expf(0.5f * lvc), d = dz[b * per + k];
        gm[b * 2 * per + k] = d + (float)(c / B) * mh[b * 2 * per + k];
        gm[b * 2 * per + per + k] = in * (d * eps[b * per + k] * 0.5f * sd + (float)(c / B * 0.5) * (sd * sd - 1));
      }
    if (!dec_only && (cd_graph_set_input(ge, gmom, gm) || cd_graph_backward(ge))) goto done;
    double mse = cd_graph_get_scalar(gd, ld), loss = mse + c * kl / B, lr = cd_pretrain_lr(o->vae_lr, r->step, o->vae_steps), gn;
    if (!isfinite(loss)) { cd_set_error("VAE loss is not finite at step %d", r->step + 1); goto done; }
    if (update(r, lr, &gn)) goto done;
    char extra[96];
    snprintf(extra, sizeof extra, ", \"mse\": %.9g, \"kl\": %.6g", mse, kl / B);
    log_step(r, loss, lr, gn, extra);
    cd_progress_set_loss(&pg, mse);
    cd_progress_update(&pg, r->step + 1);
    int s = after_step(r, o->vae_steps);
    if (s < 0) goto done;
    if (s > 0) { rc = 1; cd_progress_finish(&pg); goto done; }
  }
  cd_progress_finish(&pg);
  rc = sync_all(r);
done:
  free_params(r);
  cd_optim_free(zo);
  free(zbuf);
  free(eps);
  free(pix);
  free(mh);
  free(gm);
  free(dz);
  cd_graph_free(ge);
  cd_graph_free(gd);
  return rc;
}

/* scaling_factor = 1 / std of posterior samples of o->scale_images fixed images */
static int set_scaling(run_t *r) {
  cd_vae *vae = &r->m.vae;
  const int R = CD_WORLD_RES, Z = vae->cfg.latent_channels, h = R / 8;
  const int64_t per = (int64_t)Z * h * h;
  cd_paramset_clear_nodes(vae->w);
  cd_graph *g = cd_graph_new();
  cd_node *img = cd_input(g, "image", 4, (int64_t[]){1, 3, R, R});
  cd_node *mom = cd_vae_encode_build(g, vae, img);
  cd_graph_output(g, mom);
  if (cd_graph_plan(g, NULL)) { cd_graph_free(g); return cd_prefix_error("VAE encoder"); }
  cd_rng rng;
  cd_rng_seed(&rng, step_seed(r->o->seed, 2, 0));
  float *eps = cd_malloc((size_t)per * sizeof(float)), *zz = cd_malloc((size_t)per * sizeof(float));
  float *pix = cd_malloc((size_t)3 * R * R * sizeof(float)), *mh = cd_malloc((size_t)2 * per * sizeof(float));
  double s1 = 0, s2 = 0;
  int rc = 0;
  for (int i = 0; i < r->o->scale_images && !rc; i++) {
    render_batch(&rng, 1, pix, NULL, 0, NULL);
    cd_rng_fill_normal(&rng, eps, (size_t)per);
    rc = cd_graph_set_input(g, img, pix) || cd_graph_forward(g) || cd_graph_get(g, mom, mh) ? -1 : 0;
    cd_vae_latent_sample(mh, eps, 1.0f, per, zz);
    for (int64_t k = 0; k < per; k++) { s1 += zz[k]; s2 += (double)zz[k] * zz[k]; }
  }
  if (!rc) {
    double n = (double)r->o->scale_images * per, var = s2 / n - (s1 / n) * (s1 / n);
    vae->cfg.scaling_factor = (float)(1.0 / sqrt(var > 1e-12 ? var : 1e-12));
    fprintf(r->log, "{\"phase\": \"vae\", \"latent_mean\": %.6g, \"latent_std\": %.6g, \"scaling_factor\": %.9g}\n", s1 / n,
            sqrt(var), vae->cfg.scaling_factor);
  }
  free(eps);
  free(zz);
  free(pix);
  free(mh);
  cd_graph_free(g);
  return rc;
}

/* ---- phase 2 ---- */

static int unet_phase(run_t *r, cd_tensor_file *resume_f) {
  const cd_pretrain_opts *o = r->o;
  cd_sd_model *m = &r->m;
  const int B = o->unet_batch, R = CD_WORLD_RES, Z = m->vae.cfg.latent_channels, h = R / 8, T = CD_TOK_MAX_LEN;
  const int64_t per = (int64_t)Z * h * h, px = 3 * R * R;
  int rc = -1;
  cd_paramset_clear_nodes(m->vae.w);
  cd_paramset_clear_nodes(m->clip.w);
  cd_paramset_clear_nodes(m->unet.w);
  cd_graph *ge = cd_graph_new(), *g = cd_graph_new();
  cd_node *img = cd_input(ge, "image", 4, (int64_t[]){B, 3, R, R});
  cd_node *mom = cd_vae_encode_build(ge, &m->vae, img);
  cd_graph_output(ge, mom);
  cd_node *ids = cd_input_typed(g, "ids", CD_TYPE_I32, 2, (int64_t[]){B, T});
  cd_node *ctx = cd_clip_build(g, &m->clip, ids, NULL, NULL);
  cd_node *noisy = cd_input(g, "noisy", 4, (int64_t[]){B, Z, h, h});
  cd_node *tt = cd_input(g, "t", 1, (int64_t[]){B});
  /* inference mode: every weight trains here, marked below */
  cd_node *pred = cd_unet_build(g, &m->unet, NULL, noisy, tt, ctx);
  cd_node *target = cd_input(g, "target", 4, (int64_t[]){B, Z, h, h});
  /* --object-weight: the masked MSE is a per-image weighted mean over cells
   * summed over the Z channels (loss.c), hence the 1/Z; X = 0 keeps plain MSE */
  cd_node *wmask = o->object_weight > 0 ? cd_input(g, "object_weight", 4, (int64_t[]){B, 1, h, h}) : NULL;
  cd_node *loss = wmask ? cd_scale(g, cd_mse(g, pred, target, wmask), 1.0f / Z) : cd_mse(g, pred, target, NULL);
  cd_graph_output(g, loss);
  cd_paramset_mark_trainable(m->clip.w);
  cd_paramset_mark_trainable(m->unet.w);
  cd_plan_opts po = {.training = 1, .loss = loss};
  float *ac = cd_malloc((size_t)m->sched.num_train_timesteps * sizeof(float));
  float *eps = cd_malloc((size_t)B * per * sizeof(float)), *lat = cd_malloc((size_t)B * per * sizeof(float));
  float *noise = cd_malloc((size_t)B * per * sizeof(float)), *st = cd_malloc((size_t)B * per * sizeof(float));
  float *pix = cd_malloc((size_t)B * px * sizeof(float)), *mh = cd_malloc((size_t)B * 2 * per * sizeof(float));
  char(*caps)[256] = cd_malloc((size_t)B * sizeof *caps);
  int *tv = cd_malloc((size_t)B * sizeof(int));
  int32_t *idv = cd_malloc((size_t)B * T * sizeof(int32_t));
  float *wv = wmask ? cd_malloc((size_t)B * h * h * sizeof(float)) : NULL;
  cd_progress pg;
  memset(&pg, 0, sizeof pg);
  if (cd_graph_plan(ge, NULL) || cd_graph_plan(g, &po)) {
    cd_prefix_error("UNet training graph");
    goto done;
  }
  cd_paramset_init(&r->ps[0], g);
  r->nps = 1;
  if (cd_paramset_add(&r->ps[0], m->clip.w, "text_encoder", NULL) || cd_paramset_add(&r->ps[0], m->unet.w, "unet", NULL)) goto done;
  if (resume_f && load_moments(r, resume_f)) goto done;
  if (ema_setup(r, resume_f)) goto done;
  cd_sched_alphas_cumprod(&m->sched, ac);
  cd_progress_start(&pg, "pretrain unet+text", o->unet_steps);
  pg.quiet = o->quiet || !o->unet_steps; /* --unet-steps 0 (grow, write): no empty bar */
  cd_progress_update(&pg, r->step);
  while (r->step < o->unet_steps) {
    cd_rng rng;
    cd_rng_seed(&rng, step_seed(o->seed, PH_UNET, r->step));
    render_batch(&rng, B, pix, caps, o->unet_sprites, wv);
    if (wv) {
      for (int64_t k = 0; k < (int64_t)B * h * h; k++) wv[k] = 1.0f + o->object_weight * wv[k];
      if (cd_graph_set_input(g, wmask, wv)) goto done;
    }
    cd_rng_fill_normal(&rng, eps, (size_t)B * per);
    cd_rng_fill_normal(&rng, noise, (size_t)B * per);
    for (int b = 0; b < B; b++) {
      tv[b] = (int)(cd_rng_uniform(&rng) * m->sched.num_train_timesteps);
      st[b] = (float)tv[b];
      if (cd_rng_uniform(&rng) < o->uncond_prob) caps[b][0] = 0;
      int one[CD_TOK_MAX_LEN];
      if (cd_tokenize_padded(r->tok, caps[b], one, NULL)) goto done;
      for (int k = 0; k < T; k++) idv[b * T + k] = one[k];
    }
    /* offset noise: SD's schedule leaves sqrt(alphas_cumprod[999]) = 0.07 of the
     * image in x_T, enough of an 8x8 latent's mean that the model learns to take
     * colours from the noise instead of the caption; a constant per channel in
     * the noise hides the mean (Guttenberg 2023) */
    if (o->offset_noise > 0)
      for (int b = 0; b < B; b++)
        for (int c = 0; c < Z; c++) {
          float off = o->offset_noise * (float)cd_rng_normal(&rng);
          for (int k = 0; k < h * h; k++) noise[(int64_t)b * per + c * h * h + k] += off;
        }
    if (cd_graph_set_input(g, tt, st) || cd_graph_set_input_i32(g, ids, idv)) goto done;
    if (cd_graph_set_input(ge, img, pix) || cd_graph_forward(ge) || cd_graph_get(ge, mom, mh)) goto done;
    for (int b = 0; b < B; b++)
      cd_vae_latent_sample(mh + b * 2 * per, eps + b * per, m->vae.cfg.scaling_factor, per, lat + b * per);
    cd_add_noise(ac, lat, noise, tv, B, per, st);
    if (cd_graph_set_input(g, noisy, st) || cd_graph_set_input(g, target, noise)) goto done;
    if (cd_graph_forward(g) || cd_graph_backward(g)) goto done;
    double l = cd_graph_get_scalar(g, loss), lr = cd_pretrain_lr(o->unet_lr, r->step, o->unet_steps), gn;
    if (!isfinite(l)) { cd_set_error("UNet loss is not finite at step %d", r->step + 1); goto done; }
    if (update(r, lr, &gn) || ema_update(r)) goto done;
    log_step(r, l, lr, gn, NULL);
    cd_progress_set_loss(&pg, l);
    cd_progress_update(&pg, r->step + 1);
    int s = after_step(r, o->unet_steps);
    if (s < 0) goto done;
    if (s > 0) { rc = 1; break; }
  }
  if (rc != 1) rc = sync_all(r);
done:
  if (pg.label) cd_progress_finish(&pg);
  free_params(r);
  free(ac);
  free(eps);
  free(lat);
  free(noise);
  free(st);
  free(pix);
  free(mh);
  free(caps);
  free(tv);
  free(idv);
  free(wv);
  cd_graph_free(ge);
  cd_graph_free(g);
  return rc;
}

int cd_pretrain_run(const cd_pretrain_opts *o) {
  if (!o->out || !*o->out) return cd_set_error("--out is required");
  if (o->vae_steps < 0 || o->unet_steps < 0) return cd_set_error("--vae-steps and --unet-steps must not be negative");
  if (o->vae_batch < 1 || o->unet_batch < 1) return cd_set_error("--vae-batch and --batch must be at least 1");
  if (!(o->vae_lr > 0) || !(o->unet_lr > 0)) return cd_set_error("--vae-lr and --lr must be positive");
  if (!(o->kl_weight >= 0)) return cd_set_error("--kl-weight must not be negative");
  if (!(o->uncond_prob >= 0 && o->uncond_prob <= 1)) return cd_set_error("--uncond-prob must be in [0, 1]");
  if (!(o->offset_noise >= 0 && o->offset_noise <= 1)) return cd_set_error("--offset-noise must be in [0, 1]");
  if (!(o->object_weight >= 0 && o->object_weight <= 100)) return cd_set_error("--object-weight must be in [0, 100]");
  if (!(o->ema >= 0 && o->ema < 1)) return cd_set_error("--ema must be in [0, 1)");
  if (!(o->vae_sprites >= 0 && o->vae_sprites <= 1)) return cd_set_error("--vae-sprites must be in [0, 1]");
  if (!(o->unet_sprites >= 0 && o->unet_sprites <= 1)) return cd_set_error("--unet-sprites must be in [0, 1]");
  if (o->decoder_only && !o->init && !o->resume)
    return cd_set_error("--decoder-only fine-tunes the decoder of an --init model: pass --init DIR");
  if (o->vae_tune && !o->init && !o->resume)
    return cd_set_error("--vae-tune fine-tunes the VAE of an --init model: pass --init DIR");
  if (o->vae_tune && o->decoder_only) return cd_set_error("--vae-tune and --decoder-only exclude each other");
  if (o->scale_images < 1) return cd_set_error("scale_images must be at least 1");
  if (o->unet_layers < 0 || o->unet_layers > 4) return cd_set_error("--unet-layers must be 1 to 4 (0: the default)");
  /* GroupNorm: 8 groups in the VAE, 16 in the UNet (whose 4 heads then divide it too) */
  for (int i = 0; i < 4; i++)
    if (o->vae_channels[i] && (o->vae_channels[i] < 8 || o->vae_channels[i] > 1024 || o->vae_channels[i] % 8))
      return cd_set_error("--vae-channels: %d is not a multiple of 8 in 8..1024", o->vae_channels[i]);
  for (int i = 0; i < 2; i++)
    if (o->unet_channels[i] && (o->unet_channels[i] < 16 || o->unet_channels[i] > 2048 || o->unet_channels[i] % 16))
      return cd_set_error("--unet-channels: %d is not a multiple of 16 in 16..2048", o->unet_channels[i]);
  run_t r;
  memset(&r, 0, sizeof r);
  r.o = o;
  snprintf(r.state, sizeof r.state, "%s/%s", o->out, CD_PRETRAIN_STATE);
  snprintf(r.logp, sizeof r.logp, "%s/%s", o->out, CD_PRETRAIN_LOG);
  int rc = -1;
  cd_tensor_file *rf = NULL;
  cd_sd_model *init = NULL; /* the --init model, loaded once */
  char tokdir[4096];
  snprintf(tokdir, sizeof tokdir, "%s/tokenizer", o->out);
  int V;
  if (cd_mkdir_p(tokdir) || cd_world_vocab_write(tokdir, &V) || cd_tokenizer_load(tokdir, &r.tok)) goto done;
  if (cd_tokenizer_configure_from_dir(r.tok, tokdir)) goto done;
  cd_wm_config cfg;
  cd_wm_config_default(&cfg, V);
  if (o->init && !o->resume && !cd_file_exists(r.state)) {
    cd_load_opts lo = {.weights_dtype = "f32"};
    if (cd_sd_load(o->init, &lo, &init)) {
      cd_prefix_error("--init");
      goto done;
    }
  }
  /* without --unet-layers or the width flags a run keeps the shapes of what it continues */
  int layers = 0, cv[4] = {0}, cu[2] = {0};
  if (o->resume) state_shapes(r.state, &layers, cv, cu);
  else if (init) {
    layers = init->unet.cfg.layers_per_block;
    for (int i = 0; i < 4; i++) cv[i] = init->vae.cfg.nlevels == 4 ? init->vae.cfg.block_out[i] : 0;
    for (int i = 0; i < 2; i++) cu[i] = init->unet.cfg.nlevels == 2 ? init->unet.cfg.block_out[i] : 0;
  }
  if (o->unet_layers) layers = o->unet_layers;
  if (layers > 0) cfg.unet.layers_per_block = layers;
  if (pick_channels("vae", o->vae_channels, cv, 4, cfg.vae.block_out) ||
      pick_channels("unet", o->unet_channels, cu, 2, cfg.unet.block_out))
    goto done;
  if (cd_wm_init(&cfg, o->seed, &r.m)) goto done;
  if (o->resume) {
    if (!cd_file_exists(r.state)) {
      cd_set_error("--resume: no %s in %s", CD_PRETRAIN_STATE, o->out);
      goto done;
    }
    if (load_state(&r, &rf)) goto done;
    fprintf(stderr, "pretrain: resuming %s phase at step %d\n", phase_name[r.phase], r.step);
  } else if (cd_file_exists(r.state)) {
    cd_set_error("%s already holds a pretraining state: pass --resume to continue it, or choose another --out", o->out);
    goto done;
  } else if (o->init) {
    if (init_from(&r, o->init, init)) goto done;
    cd_sd_free(init); /* its weights are copied: not held through training */
    init = NULL;
    /* the init's VAE and scaling factor are kept; --decoder-only fine-tunes its
     * decoder first, --vae-tune all of it (the UNet then follows its latents) */
    r.phase = o->decoder_only || o->vae_tune ? PH_VAE : PH_UNET;
    r.step = 0;
    fprintf(stderr, "pretrain: starting from %s (%s, scaling factor %.6g)\n", o->init,
            o->decoder_only ? "VAE decoder fine-tuned, encoder kept"
            : o->vae_tune   ? "whole VAE fine-tuned"
                            : "VAE kept",
            r.m.vae.cfg.scaling_factor);
  }
  if (open_log(&r)) goto done;
  if (r.phase == PH_VAE) {
    int s = vae_phase(&r, rf);
    cd_tensor_file_close(rf);
    rf = NULL;
    if (s) { rc = s > 0 ? 0 : -1; goto done; }
    /* decoder-only: the latents are unchanged; vae-tune: the UNet knows their old scale */
    if (!o->decoder_only && !o->vae_tune && set_scaling(&r)) goto done;
    r.phase = PH_UNET;
    r.step = 0;
    if (save_state(&r) || cd_wm_write(&r.m, o->out, !o->f32)) goto done;
  }
  int s = unet_phase(&r, rf);
  if (s) { rc = s > 0 ? 0 : -1; goto done; }
  if (save_state(&r) || write_model(&r)) goto done;
  fprintf(stderr, "pretrain: model written to %s\n", o->out);
  rc = 0;
done:
  cd_sd_free(init);
  cd_tensor_file_close(rf);
  if (r.log) fclose(r.log);
  free_params(&r);
  ema_free(&r);
  cd_tokenizer_free(r.tok);
  cd_weights_free(r.m.clip.w);
  cd_weights_free(r.m.unet.w);
  cd_weights_free(r.m.vae.w);
  return rc;
}
