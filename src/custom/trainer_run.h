/* trainer_run.h - a whole Custom Diffusion training run (`cdiff train`)
 * around the single step of train.h: data, class images, modifier tokens,
 * checkpoints, resume, logs, validation, and the final delta.
 *
 *   cd_run_opts o;
 *   cd_run_opts_default(&o);
 *   o.model = "sd15"; o.images = "dog/"; o.prompt = "photo of a <new1> dog";
 *   o.class_prompt = "dog"; o.out = "out/";
 *   if (cd_train_run(&o)) fprintf(stderr, "%s\n", cd_last_error());
 *
 * Determinism: every random draw of step s (which images, augmentation,
 * timesteps, noise, the VAE posterior sample) comes from a cd_rng seeded from
 * (seed, s); image order is a per-epoch permutation seeded from (seed,
 * concept, epoch); class images are listed sorted by name. A run resumed
 * from a checkpoint therefore continues bit for bit as if uninterrupted.
 *
 * Multi-concept: step s trains concept s % n (batches never mix concepts).
 */
#ifndef CD_TRAINER_RUN_H
#define CD_TRAINER_RUN_H

#include <stdint.h>

typedef struct {
  const char *model;          /* diffusers folder or single-file checkpoint (required) */
  const char *vocab;          /* tokenizer override for single-file checkpoints, or NULL */
  /* data: a concepts JSON file, or one concept from the four fields below */
  const char *concepts;
  const char *images, *prompt, *class_prompt, *class_images;
  int prior;                  /* prior preservation (default 1) */
  int num_class_images;       /* per concept (default 200) */
  int class_steps;            /* sampler steps of generated class images (default 50) */
  const char *train;          /* "crossattn_kv" (default) | "crossattn" */
  const char *modifier_tokens;/* "<new1>,<new2>" ('+' also separates); NULL: <new1>..<newN>, one per concept */
  const char *initializers;   /* comma-separated vocabulary tokens; NULL: ktn, pll, ucd */
  int steps;                  /* 0: 250 for one concept, 500 for more */
  int batch;                  /* instance images per step (default 1) */
  float lr;                   /* default 1e-5 */
  int scale_lr;               /* default 1: lr *= images per step */
  float prior_weight;         /* default 1 */
  int res;                    /* default 512 */
  int hflip, aug;             /* default 0, 1 */
  uint64_t seed;              /* default 42 */
  int checkpoint_every;       /* N > 0: OUT/checkpoint every N steps and at the end; 0: none (the final delta is always written) */
  const char *resume;         /* OUT dir or its checkpoint dir, or NULL */
  int validate_every;         /* 0: never */
  const char *validation_prompt;
  const char *out;            /* output folder (required) */
  int quiet;                  /* no progress bars */
  int stop_after;             /* tests: stop (like an interruption) after this step, 0 = off */
} cd_run_opts;

void cd_run_opts_default(cd_run_opts *o);
/* 0, or -1 with cd_last_error() set (naming the flag, file or step). */
int cd_train_run(const cd_run_opts *o);

/* File names inside OUT. */
#define CD_RUN_CHECKPOINT_DIR "checkpoint"
#define CD_RUN_STATE_FILE "state.safetensors"
#define CD_RUN_LOG_FILE "log.jsonl"

#endif
