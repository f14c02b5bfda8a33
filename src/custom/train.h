/* train.h - one Custom Diffusion optimisation step, as diffusers'
 * train_custom_diffusion.py computes it (golden README section 4):
 *
 *   latents = VAE posterior (mean, or a sample) * scaling_factor
 *   noisy   = sqrt(a_t) latents + sqrt(1 - a_t) noise
 *   target  = noise (eps) | sqrt(a_t) noise - sqrt(1 - a_t) latents (v)
 *   pred    = unet(noisy, t, text_encoder(ids))       new-token rows trainable,
 *                                                      attn2 K/V trainable, start-token K/V detached
 *   loss    = mean_inst( sum(mask (pred-target)^2) / sum(mask) )          (4x masked mean, as the script)
 *           + prior_weight * mean over class samples' elements of (pred-target)^2
 *   grads clipped to total norm max_grad_norm over K/V and the new rows, then AdamW.
 *
 * SDXL (the original repository's diffusers_training_sdxl.py): the context is
 * both encoders' penultimate states concatenated, text_embeds the second one's
 * pooled output, time_ids per example; the modifier tokens' rows train in both
 * tables.
 *
 * Deliberate differences from the references: only the new-token rows are
 * parameters (diffusers decays all 49408 rows; here the base rows stay exact),
 * and every modifier token trains (the original never trains the last one).
 *
 * Two baselines of the paper's comparison train other sets with the same step:
 *   token (CD_TRAIN_NONE): only the new-token rows (Textual-Inversion-like);
 *   full  (CD_TRAIN_FULL): every UNet weight and the new-token rows
 *                          (DreamBooth-like; no start-token detaching).
 */
#ifndef CD_TRAIN_H
#define CD_TRAIN_H

#include "models/sd_model.h"

typedef struct {
  int batch;          /* instance examples per step */
  int prior;          /* 1: as many class examples follow the instance ones */
  int res;            /* pixels */
  int train;          /* what of the UNet trains: CD_TRAIN_KV | CROSSATTN | FULL | NONE (token only) */
  float lr;           /* already scaled (--scale-lr) */
  float beta1, beta2, eps, weight_decay, max_grad_norm, prior_weight;
  int sample_latents; /* 1: latent_dist.sample() (training); 0: the posterior mean (golden tests) */
  int ntok;
  int tok_id[16];     /* ids of the modifier tokens: the token table's last ntok rows, added by
                         cd_sd_add_tokens (models/token_table.h) from their initializers; SDXL:
                         the same ids and rows in text_encoder_2's table */
  int grad_ckpt;      /* activation checkpointing: the UNet's blocks run their forward again in
                         backward instead of keeping their activations (same gradients, less memory) */
} cd_train_opts;

void cd_train_opts_default(cd_train_opts *o);

/* --train names: "crossattn_kv", "crossattn", "token", "full" <-> CD_TRAIN_*; -1 / NULL if unknown */
int cd_train_mode_parse(const char *name);
const char *cd_train_mode_name(int train);
/* 1 if UNet weight `name` is a parameter under mode `train` */
int cd_train_mode_trains(int train, const char *name);

/* Trainable tensor i is the optimizer's parameter i: its value, gradient and
 * AdamW moments live in the backend (cd_optim_read/cd_optim_write). */
typedef struct {
  const char *name;
  cd_node *node;
  int64_t n;
} cd_train_param;

typedef struct {
  cd_sd_model *m;
  cd_train_opts o;
  int B;              /* examples per step (batch, or 2 x batch with prior) */
  int64_t h, w;       /* latent size */
  cd_graph *enc;      /* VAE encoder graph for one image (no gradients) */
  cd_node *enc_in, *enc_out;
  float *moments;     /* [B, 2*4, h, w] posterior moments of the step's examples */
  /* Class examples repeat (no augmentation; a flip at most): their moments are
   * cached by a hash of the pixels, which halves the VAE work with prior
   * preservation. Encoding is per image either way, so results are the same. */
  uint64_t *mkey;
  float **mval;
  int mcount, mcap;
  cd_graph *g;        /* text encoder + UNet + loss, training plan */
  cd_node *ids, *noisy, *t, *target, *mask_i, *mask_c, *loss, *inst, *prior_loss, *pred;
  cd_node *ids2, *pool_sel, *time_ids; /* SDXL: tokenizer_2's ids, the pooled position, the micro-conditioning */
  int p_rows, p_rows2;                 /* parameter indexes of the token rows of each table (-1: none) */
  cd_train_param *p;
  int np;
  float *stage;       /* host staging for the graph's inputs: max(B*C*h*w, B*77) floats */
  struct cd_optim *opt; /* AdamW state of the np parameters, in the graph's backend */
  float *ac;          /* alphas_cumprod [1000] */
  float *latents;     /* [B, 4, h, w] of the last step (scaled VAE latents), for logs and tests */
  int step;           /* optimizer steps taken (mirrors cd_optim_steps) */
} cd_trainer;

/* One step's inputs: B examples, instance ones first. */
typedef struct {
  const float *pixels; /* [B, 3, res, res] in [-1, 1] */
  const float *mask;   /* [B, 1, res/8, res/8] (class examples: ones) */
  const int *ids;      /* [B, 77] */
  const float *noise;  /* [B, 4, res/8, res/8] */
  const float *latent_noise; /* [B, 4, res/8, res/8] for the posterior sample, or NULL */
  const int *timesteps;/* [B] */
  /* SDXL only (last, so positional initializers of the fields above stay valid) */
  const int *ids2;       /* [B, 77] of tokenizer_2 (pads with 0) */
  const float *time_ids; /* [B, 6] original h, w, crop top, left, target h, w */
} cd_batch;

typedef struct {
  double loss, loss_inst, loss_prior, grad_norm, clip_coef;
} cd_step_report;

int cd_trainer_init(cd_trainer *t, cd_sd_model *m, const cd_train_opts *o);
void cd_trainer_free(cd_trainer *t);
/* Forward and backward only (gradients left in the backend, unclipped). */
int cd_trainer_grad(cd_trainer *t, const cd_batch *b, cd_step_report *r);
/* Gradient accumulation (diffusers' --gradient_accumulation_steps): call
 * after cd_trainer_grad of micro-batch k = 0..K-1. The gradients are summed
 * in an accumulator in the backend (cd_optim_accumulate), and after the last one the parameters' gradients are
 * replaced by the mean, so that cd_trainer_update then steps on the gradient
 * of the mean loss over all K micro-batches (= one batch K times as large, as
 * every loss term is a mean over its examples). K = 1 does nothing. */
int cd_trainer_accumulate(cd_trainer *t, int k, int K);
/* Clip and AdamW-update the parameters from the gradients of cd_trainer_grad
 * (one engine call, cd_optim_adamw_step). Refuses a non-finite gradient norm
 * (nothing changed) and reports parameters the update made non-finite. */
int cd_trainer_update(cd_trainer *t, cd_step_report *r);
/* Resume: the step count the optimizer continues from. */
void cd_trainer_set_step(cd_trainer *t, int step);
/* Both; refuses a non-finite loss (parameters untouched, error says so). */
int cd_trainer_step(cd_trainer *t, const cd_batch *b, cd_step_report *r);
/* Current values as a delta (copies). */
struct cd_delta;
int cd_trainer_to_delta(const cd_trainer *t, const char (*tokens)[32], const char (*inits)[32], struct cd_delta **out);

#endif
