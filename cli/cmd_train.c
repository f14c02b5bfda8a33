/* cmd_train.c - cdiff train: Custom Diffusion fine-tuning (src/custom/trainer_run.h does the work). */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "cli_device.h"
#include "commands.h"
#include "core/common.h"
#include "custom/lr_schedule.h"
#include "custom/trainer_run.h"

static const cli_cmd spec = {
    "train", "--model PATH (--concepts FILE.json | --images DIR --prompt TEXT --class-prompt TEXT) --out DIR [flags]"};

int cmd_train(int argc, char **argv) {
  cd_run_opts o;
  cd_run_opts_default(&o);
  int no_prior = 0, no_scale_lr = 0, no_aug = 0, with_prior = 0, scale_lr = 0;
  const char *device = NULL;
  cli_opt opts[] = {
      {"--model", CLI_STR, &o.model, "PATH", "base model: diffusers folder or single-file .safetensors/.ckpt (required)", "-m --pretrained_model_name_or_path", CLI_REQUIRED},
      {"--vocab", CLI_STR, &o.vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
      {"--delta", CLI_STR, &o.init_delta, "DIR", "start from this trained delta (sequential training: the result holds its tokens and weights too)"},
      {"--weights-dtype", CLI_STR, &o.weights_dtype, "f32|f16|bf16", "storage of the frozen weights (default: the checkpoint's own)", NULL, CLI_CHOICES("f32|f16|bf16")},
      CLI_DEVICE_OPT(&device),
      {"--concepts", CLI_STR, &o.concepts, "FILE.json", "list of {instance_prompt, class_prompt, instance_data_dir, class_data_dir}", "--concepts_list"},
      {"--each", CLI_FLAG, &o.each, "", "train each concept of --concepts apart: one delta per concept in OUT/concept-K (under MPI, one rank group per concept)"},
      {"--each-index", CLI_INT, &o.each_index, "K", "with --each: train only concept K of the list (1-based; e.g. $SLURM_ARRAY_TASK_ID)", NULL, CLI_MIN(1)},
      {"--images", CLI_STR, &o.images, "DIR", "instance images of the one concept", "--instance_data_dir"},
      {"--prompt", CLI_STR, &o.prompt, "TEXT", "instance prompt, containing the modifier token (e.g. \"photo of a <new1> dog\")", "-p --instance_prompt"},
      {"--class-prompt", CLI_STR, &o.class_prompt, "TEXT", "class prompt (e.g. \"dog\"), also used to generate class images", "--class_prompt"},
      {"--class-prompts", CLI_STR, &o.class_prompts, "FILE", "class prompts, one per line: generated class image i uses line i (cycling) and keeps it as its caption (e.g. captions in the model's own grammar)"},
      {"--class-images", CLI_STR, &o.class_images, "DIR", "class images (missing ones are generated into it; default OUT/class_images/0)", "--class_data_dir"},
      {"--num-class-images", CLI_INT, &o.num_class_images, "N", "class images per concept (default 200)", "--num_class_images", CLI_MIN(1)},
      {"--class-steps", CLI_INT, &o.class_steps, "N", "DDIM steps (eta 1, guidance 6) of generated class images (default 50)", NULL, CLI_RANGE(1, 1000)},
      {"--no-prior", CLI_FLAG, &no_prior, "", "no prior preservation (no class images)"},
      {"--prior-loss-weight", CLI_FLOAT, &o.prior_weight, "X", "weight of the class-image loss (default 1)", "--prior_loss_weight", CLI_ABOVE(0)},
      {"--train", CLI_STR, &o.train, "WHAT", "crossattn_kv (default: K/V of cross-attention), crossattn (all of it); baselines: token (only the new token, like Textual Inversion), full (every UNet weight, like DreamBooth)", "--freeze_model", CLI_CHOICES("crossattn_kv|crossattn|token|full")},
      {"--modifier-token", CLI_STR, &o.modifier_tokens, "T", "new token(s), comma-separated (default <new1>, <new2>, ... one per concept)", "--modifier_token"},
      {"--initializer-token", CLI_STR, &o.initializers, "W", "vocabulary token(s) the new rows start from (default ktn, pll, ucd)", "--initializer_token"},
      {"--steps", CLI_INT, &o.steps, "N", "optimisation steps (default 250; 500 with several concepts)", "--max_train_steps", CLI_MIN(1)},
      {"--batch", CLI_INT, &o.batch, "N", "instance images per step (prior preservation adds as many class images; default 1)", "--train_batch_size", CLI_MIN(1)},
      {"--lr", CLI_FLOAT, &o.lr, "X", "learning rate (default 1e-5, multiplied by the images per step)", "--learning_rate", CLI_ABOVE(0)},
      {"--no-scale-lr", CLI_FLAG, &no_scale_lr, "", "use --lr as it is"},
      {"--resolution", CLI_INT, &o.res, "R", "training resolution, a multiple of 64 (default: the model's native size, 512 for SD 1.x, 1024 for SDXL)", NULL, CLI_MIN(8)},
      {"--gradient-checkpointing", CLI_FLAG, &o.grad_ckpt, "", "recompute the UNet blocks' activations in backward instead of keeping them: same gradients, much less memory, a slower step (on by itself when a step would not fit)", "--gradient_checkpointing"},
      {"--hflip", CLI_FLAG, &o.hflip, "", "random horizontal flips"},
      {"--no-aug", CLI_FLAG, &no_aug, "", "no random rescaling of instance images", "--noaug"},
      {"--seed", CLI_SEED, &o.seed, "N", "seed of every random choice (default 42; -1: random)", "-s"},
      {"--grad-accum", CLI_INT, &o.grad_accum, "K", "gradient accumulation: K micro-batches of --batch per optimizer step (default 1)", "--gradient_accumulation_steps", CLI_RANGE(1, 1024)},
      {"--lr_scheduler", CLI_STR, &o.lr_scheduler, "NAME", "constant (default), constant_with_warmup, linear or cosine (diffusers' formulas)"},
      {"--lr_warmup_steps", CLI_INT, &o.lr_warmup_steps, "N", "linear warmup from 0 over N optimizer steps (default 0; not with constant)", NULL, CLI_MIN(0)},
      {"--adam_beta1", CLI_FLOAT, &o.adam_beta1, "X", "AdamW beta1, in [0, 1) (default 0.9)", NULL, CLI_RANGE(0, 1)},
      {"--adam_beta2", CLI_FLOAT, &o.adam_beta2, "X", "AdamW beta2, in [0, 1) (default 0.999)", NULL, CLI_RANGE(0, 1)},
      {"--adam_epsilon", CLI_FLOAT, &o.adam_eps, "X", "AdamW epsilon (default 1e-8)", NULL, CLI_ABOVE(0)},
      {"--adam_weight_decay", CLI_FLOAT, &o.adam_weight_decay, "X", "AdamW weight decay (default 1e-2)", NULL, CLI_MIN(0)},
      {"--max_grad_norm", CLI_FLOAT, &o.max_grad_norm, "X", "clip the gradients to this total norm (default 1)", NULL, CLI_ABOVE(0)},
      {"--center_crop", CLI_FLAG, &o.center_crop, "", "centre-crop class images (default: random crop)"},
      {"--real_prior", CLI_FLAG, &o.real_prior, "", "class images are real photos listed in CLASS_DIR/images.txt with CLASS_DIR/caption.txt"},
      {"--num_validation_images", CLI_INT, &o.num_validation_images, "N", "images per validation grid (default 2)", NULL, CLI_RANGE(1, 16)},
      /* diffusers' switches for what cdiff does by default (its other spellings are aliases above) */
      {"--with_prior_preservation", CLI_FLAG, &with_prior, "", "prior preservation (cdiff's default; --no-prior turns it off)"},
      {"--scale_lr", CLI_FLAG, &scale_lr, "", "scale --lr by the images per step (cdiff's default; --no-scale-lr turns it off)"},
      {"--checkpoint-every", CLI_INT, &o.checkpoint_every, "N", "write OUT/checkpoint-N every N steps, at the end and on Ctrl-C (default 50; 0: only then)", "--checkpointing_steps", CLI_MIN(0)},
      {"--checkpoints-total-limit", CLI_INT, &o.checkpoints_total_limit, "N", "keep the newest N checkpoints (default 2; 0: all)", "--checkpoints_total_limit", CLI_MIN(0)},
      {"--resume", CLI_STR, &o.resume, "latest|DIR", "continue a run: latest (= --out), a run folder, or a checkpoint-N folder", "--resume_from_checkpoint"},
      {"--overwrite", CLI_FLAG, &o.overwrite, "", "replace the run already in --out (its class images are kept)"},
      {"--validate-every", CLI_INT, &o.validate_every, "N", "sample --validation-prompt every N steps into OUT/validation (0: never)", "--validation_steps", CLI_MIN(0)},
      {"--validation-prompt", CLI_STR, &o.validation_prompt, "TEXT", "prompt of the validation images", "--validation_prompt"},
      {"--clip-skip", CLI_INT, &o.clip_skip, "N", "text-encoder layer as in sample (default 1); sample with the same N", NULL, CLI_MIN(1)},
      {"--out", CLI_STR, &o.out, "DIR", "output folder (required)", "-o --output --output_dir", CLI_REQUIRED},
      {0}};
  int r = cli_parse(argc, argv, opts, &spec, NULL);
  if (r != CLI_GO) return r;
  if ((r = cli_device(opts, &spec, device)) != CLI_GO) return r;
  if (no_prior && with_prior) return cli_error(opts, &spec, "--with_prior_preservation", "contradicts --no-prior");
  if (no_scale_lr && scale_lr) return cli_error(opts, &spec, "--scale_lr", "contradicts --no-scale-lr");
  o.prior = !no_prior;
  o.scale_lr = !no_scale_lr;
  o.aug = !no_aug;
  /* the run's option checks (the prompts' UTF-8 among them) are usage errors: exit 2 with the flag's line, before anything is read */
  cd_lr_kind lr_kind;
  if (cd_run_opts_check(&o) || cd_lr_parse(o.lr_scheduler, &lr_kind)) return cli_error_msg(opts, &spec, cd_last_error());
  if (no_prior) {
    static const char *const class_flags[] = {"--class-prompt", "--class-prompts", "--class-images", "--num-class-images", "--class-steps",
                                              "--prior-loss-weight", "--center_crop"};
    for (size_t i = 0; i < sizeof class_flags / sizeof class_flags[0]; i++)
      cli_warn_unused(opts, class_flags[i], "with --no-prior (no class images are used)");
  }
  if (!o.validate_every) {
    cli_warn_unused(opts, "--validation-prompt", "without --validate-every");
    cli_warn_unused(opts, "--num_validation_images", "without --validate-every");
  }
  o.quiet = getenv("CDIFF_QUIET") != NULL;
  int sig = 0;
  o.handle_signals = 1;
  o.stopped_by = &sig;
  if (cd_train_run(&o)) {
    fprintf(stderr, "cdiff train: %s\n", cd_last_error());
    return sig ? 128 + sig : 1; /* 130 after SIGINT, 143 after SIGTERM, as a shell reports them */
  }
  return 0;
}
