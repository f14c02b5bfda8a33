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
 * Determinism: every random draw of example i of step s (augmentation,
 * timestep, noise, the VAE posterior sample) comes from a cd_rng seeded from
 * (seed, s, i); image order is a per-epoch permutation seeded from (seed,
 * concept, epoch); class images are listed sorted by name. A run resumed
 * from a checkpoint therefore continues bit for bit as if uninterrupted, and
 * the examples of a step do not depend on the number of processes.
 *
 * Multi-concept: example s*batch + i comes from concept (s*batch + i) % n.
 *
 * Distributed (make MPI=1, under mpirun/srun; docs/distributed.md): the ranks
 * split the global --batch, all-reduce the gradients once per step and take
 * the same optimizer step; rank 0 writes every file. With `each`, the
 * concepts of the --concepts file are trained apart instead, one rank group
 * per concept, each into OUT/concept-K.
 */
#ifndef CD_TRAINER_RUN_H
#define CD_TRAINER_RUN_H

#include <stdint.h>

typedef struct {
  const char *model;          /* diffusers folder or single-file checkpoint (required) */
  const char *vocab;          /* tokenizer override for single-file checkpoints, or NULL */
  const char *weights_dtype;  /* storage of the frozen weights: f32|f16|bf16, NULL: the checkpoint's own */
  const char *init_delta;     /* --delta: start from this trained delta (sequential training), or NULL */
  /* data: a concepts JSON file, or one concept from the four fields below */
  const char *concepts;
  const char *images, *prompt, *class_prompt, *class_images;
  int prior;                  /* prior preservation (default 1) */
  int num_class_images;       /* per concept (default 200) */
  int class_steps;            /* sampler steps of generated class images (default 50) */
  const char *class_prompts;  /* file of class prompts, one per line (blank and '#' lines skipped): generated
                               * class image i uses line i mod L and keeps it as its caption; NULL: class_prompt */
  const char *train;          /* "crossattn_kv" (default) | "crossattn" | "token" | "full" (train.h) */
  const char *modifier_tokens;/* "<new1>,<new2>" ('+' also separates); NULL: <new1>..<newN>, one per concept */
  const char *initializers;   /* comma-separated vocabulary tokens; NULL: ktn, pll, ucd */
  int steps;                  /* 0: 250 for one concept, 500 for more */
  int batch;                  /* instance images per step (default 1) */
  float lr;                   /* default 1e-5 */
  int scale_lr;               /* default 1: lr *= images per step */
  float prior_weight;         /* default 1 */
  int res;                    /* 0 (default): the model's native size, 8 x the UNet's sample_size
                                 (512 SD 1.x, 768 SD 2.x-768, 1024 SDXL) */
  int grad_ckpt;              /* activation checkpointing (--gradient-checkpointing; turned on
                                 when the training step would not fit otherwise) */
  int hflip, aug;             /* default 0, 1 */
  uint64_t seed;              /* default 42 */
  /* diffusers' train_custom_diffusion.py flags (defaults as the script's, except lr_warmup_steps 0) */
  int grad_accum;             /* micro-batches per optimizer step (default 1) */
  const char *lr_scheduler;   /* constant (default) | constant_with_warmup | linear | cosine, see lr_schedule.h */
  int lr_warmup_steps;        /* default 0 */
  float adam_beta1, adam_beta2, adam_eps, adam_weight_decay; /* 0.9, 0.999, 1e-8, 1e-2 */
  float max_grad_norm;        /* default 1 */
  int center_crop;            /* class images: centre crop instead of a random crop (default 0) */
  int num_validation_images;  /* images per validation grid (default 2) */
  int real_prior;             /* class images are real ones listed in CLASS_DIR/images.txt + caption.txt (none generated) */
  int checkpoint_every;       /* N > 0 (default 50): OUT/checkpoint-N every N steps and at the end; 0: none (the final delta is always written) */
  int checkpoints_total_limit;/* keep the newest N checkpoints (default 2); 0: keep all */
  const char *resume;         /* "latest" (= OUT), a run folder (its newest complete checkpoint) or a checkpoint-N folder; NULL: new run */
  int overwrite;              /* OUT may hold an earlier run, which is removed (its class images stay) */
  int handle_signals;         /* SIGINT/SIGTERM finish the step, write a checkpoint and stop (see stopped_by) */
  int *stopped_by;            /* if not NULL: gets the signal that stopped the run (0: none) */
  int validate_every;         /* 0: never */
  const char *validation_prompt;
  const char *out;            /* output folder (required) */
  int quiet;                  /* no progress bars */
  int stop_after;             /* tests: stop as on a signal after this step (checkpoint, return -1), 0 = off */
  int clip_skip;              /* A1111's CLIP skip (cd_clip_set_skip); default 1 = the model's default layer */
  int each;                   /* with concepts: one independent delta per concept, OUT/concept-K (K from 1) */
  int each_index;             /* with each: train only concept K (1-based; a Slurm array task), 0 = all */
} cd_run_opts;

void cd_run_opts_default(cd_run_opts *o);
/* The checks of the options alone (no file is read): 0, or -1 with a message
 * that starts with the offending flag. cd_train_run makes them too. */
int cd_run_opts_check(const cd_run_opts *o);
/* 0, or -1 with cd_last_error() set (naming the flag, file or step). A run
 * stopped by a signal (or stop_after) also returns -1, after its checkpoint. */
int cd_train_run(const cd_run_opts *o);

/* File names inside OUT (checkpoint-N folders and the latest pointer: custom/run_dir.h). */
#define CD_RUN_CHECKPOINT_DIR "checkpoint" /* the single checkpoint folder of older versions, still resumable */
#define CD_RUN_STATE_FILE "state.safetensors"
#define CD_RUN_LOG_FILE "log.jsonl"

#endif
