/* cmd_train.c - cdiff train: Custom Diffusion fine-tuning (src/custom/trainer_run.h does the work). */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "commands.h"
#include "core/common.h"
#include "custom/trainer_run.h"

int cmd_train(int argc, char **argv) {
  cd_run_opts o;
  cd_run_opts_default(&o);
  int no_prior = 0, no_scale_lr = 0, no_aug = 0, help = 0, with_prior = 0, scale_lr = 0;
  cli_opt opts[] = {
      {"--model", CLI_STR, &o.model, "PATH", "base model: diffusers folder or single-file .safetensors/.ckpt (required)"},
      {"--vocab", CLI_STR, &o.vocab, "PATH", "CLIP vocabulary for single-file checkpoints"},
      {"--weights-dtype", CLI_STR, &o.weights_dtype, "f32|f16|bf16", "storage of the frozen weights (default: the checkpoint's own)"},
      {"--concepts", CLI_STR, &o.concepts, "FILE.json", "list of {instance_prompt, class_prompt, instance_data_dir, class_data_dir}"},
      {"--images", CLI_STR, &o.images, "DIR", "instance images of the one concept"},
      {"--prompt", CLI_STR, &o.prompt, "TEXT", "instance prompt, containing the modifier token (e.g. \"photo of a <new1> dog\")"},
      {"--class-prompt", CLI_STR, &o.class_prompt, "TEXT", "class prompt (e.g. \"dog\"), also used to generate class images"},
      {"--class-images", CLI_STR, &o.class_images, "DIR", "class images (missing ones are generated into it; default OUT/class_images/0)"},
      {"--num-class-images", CLI_INT, &o.num_class_images, "N", "class images per concept (default 200)"},
      {"--class-steps", CLI_INT, &o.class_steps, "N", "DDIM steps (eta 1, guidance 6) of generated class images (default 50)"},
      {"--no-prior", CLI_FLAG, &no_prior, "", "no prior preservation (no class images)"},
      {"--prior-loss-weight", CLI_FLOAT, &o.prior_weight, "X", "weight of the class-image loss (default 1)"},
      {"--train", CLI_STR, &o.train, "WHAT", "crossattn_kv (default: K/V of cross-attention) or crossattn (all of it)"},
      {"--modifier-token", CLI_STR, &o.modifier_tokens, "T", "new token(s), comma-separated (default <new1>, <new2>, ... one per concept)"},
      {"--initializer-token", CLI_STR, &o.initializers, "W", "vocabulary token(s) the new rows start from (default ktn, pll, ucd)"},
      {"--steps", CLI_INT, &o.steps, "N", "optimisation steps (default 250; 500 with several concepts)"},
      {"--batch", CLI_INT, &o.batch, "N", "instance images per step (prior preservation adds as many class images; default 1)"},
      {"--lr", CLI_FLOAT, &o.lr, "X", "learning rate (default 1e-5, multiplied by the images per step)"},
      {"--no-scale-lr", CLI_FLAG, &no_scale_lr, "", "use --lr as it is"},
      {"--resolution", CLI_INT, &o.res, "R", "training resolution, a multiple of 64 (default 512)"},
      {"--hflip", CLI_FLAG, &o.hflip, "", "random horizontal flips"},
      {"--no-aug", CLI_FLAG, &no_aug, "", "no random rescaling of instance images"},
      {"--seed", CLI_U64, &o.seed, "N", "seed of every random choice (default 42)"},
      {"--grad-accum", CLI_INT, &o.grad_accum, "K", "gradient accumulation: K micro-batches of --batch per optimizer step (default 1)"},
      {"--lr_scheduler", CLI_STR, &o.lr_scheduler, "NAME", "constant (default), constant_with_warmup, linear or cosine (diffusers' formulas)"},
      {"--lr_warmup_steps", CLI_INT, &o.lr_warmup_steps, "N", "linear warmup from 0 over N optimizer steps (default 0; not with constant)"},
      {"--adam_beta1", CLI_FLOAT, &o.adam_beta1, "X", "AdamW beta1 (default 0.9)"},
      {"--adam_beta2", CLI_FLOAT, &o.adam_beta2, "X", "AdamW beta2 (default 0.999)"},
      {"--adam_epsilon", CLI_FLOAT, &o.adam_eps, "X", "AdamW epsilon (default 1e-8)"},
      {"--adam_weight_decay", CLI_FLOAT, &o.adam_weight_decay, "X", "AdamW weight decay (default 1e-2)"},
      {"--max_grad_norm", CLI_FLOAT, &o.max_grad_norm, "X", "clip the gradients to this total norm (default 1)"},
      {"--center_crop", CLI_FLAG, &o.center_crop, "", "centre-crop class images (default: random crop)"},
      {"--real_prior", CLI_FLAG, &o.real_prior, "", "class images are real photos listed in CLASS_DIR/images.txt with CLASS_DIR/caption.txt"},
      {"--num_validation_images", CLI_INT, &o.num_validation_images, "N", "images per validation grid (default 2)"},
      /* diffusers' train_custom_diffusion.py spellings of the flags above */
      {"--pretrained_model_name_or_path", CLI_STR, &o.model, "PATH", "= --model"},
      {"--instance_data_dir", CLI_STR, &o.images, "DIR", "= --images"},
      {"--instance_prompt", CLI_STR, &o.prompt, "TEXT", "= --prompt"},
      {"--class_prompt", CLI_STR, &o.class_prompt, "TEXT", "= --class-prompt"},
      {"--class_data_dir", CLI_STR, &o.class_images, "DIR", "= --class-images"},
      {"--concepts_list", CLI_STR, &o.concepts, "FILE.json", "= --concepts"},
      {"--with_prior_preservation", CLI_FLAG, &with_prior, "", "prior preservation (cdiff's default; --no-prior turns it off)"},
      {"--prior_loss_weight", CLI_FLOAT, &o.prior_weight, "X", "= --prior-loss-weight"},
      {"--num_class_images", CLI_INT, &o.num_class_images, "N", "= --num-class-images"},
      {"--freeze_model", CLI_STR, &o.train, "WHAT", "= --train"},
      {"--modifier_token", CLI_STR, &o.modifier_tokens, "T", "= --modifier-token ('+' separates tokens too)"},
      {"--initializer_token", CLI_STR, &o.initializers, "W", "= --initializer-token"},
      {"--max_train_steps", CLI_INT, &o.steps, "N", "= --steps"},
      {"--train_batch_size", CLI_INT, &o.batch, "N", "= --batch"},
      {"--learning_rate", CLI_FLOAT, &o.lr, "X", "= --lr"},
      {"--scale_lr", CLI_FLAG, &scale_lr, "", "scale --lr by the images per step (cdiff's default; --no-scale-lr turns it off)"},
      {"--gradient_accumulation_steps", CLI_INT, &o.grad_accum, "K", "= --grad-accum"},
      {"--noaug", CLI_FLAG, &no_aug, "", "= --no-aug"},
      {"--validation_prompt", CLI_STR, &o.validation_prompt, "TEXT", "= --validation-prompt"},
      {"--validation_steps", CLI_INT, &o.validate_every, "N", "= --validate-every"},
      {"--output_dir", CLI_STR, &o.out, "DIR", "= --out"},
      {"--checkpoint-every", CLI_INT, &o.checkpoint_every, "N", "write OUT/checkpoint every N steps (and at the end)"},
      {"--resume", CLI_STR, &o.resume, "DIR", "continue from a checkpoint (OUT or OUT/checkpoint)"},
      {"--validate-every", CLI_INT, &o.validate_every, "N", "sample --validation-prompt every N steps into OUT/validation"},
      {"--validation-prompt", CLI_STR, &o.validation_prompt, "TEXT", "prompt of the validation images"},
      {"--clip-skip", CLI_INT, &o.clip_skip, "N", "text-encoder layer as in sample (default 1); sample with the same N"},
      {"--out", CLI_STR, &o.out, "DIR", "output folder (required)"},
      {"--help", CLI_FLAG, &help, "", "this help"},
      {0}};
  if (cli_parse(argc, argv, opts, "train", NULL)) return 2;
  if (help) {
    cli_usage(opts, "train",
              "--model PATH (--concepts FILE.json | --images DIR --prompt TEXT --class-prompt TEXT) --out DIR [flags]");
    return 0;
  }
  if (no_prior && with_prior) {
    fprintf(stderr, "cdiff train: --no-prior and --with_prior_preservation contradict each other\n");
    return 2;
  }
  if (no_scale_lr && scale_lr) {
    fprintf(stderr, "cdiff train: --no-scale-lr and --scale_lr contradict each other\n");
    return 2;
  }
  o.prior = !no_prior;
  o.scale_lr = !no_scale_lr;
  o.aug = !no_aug;
  o.quiet = getenv("CDIFF_QUIET") != NULL;
  if (cd_train_run(&o)) {
    fprintf(stderr, "cdiff train: %s\n", cd_last_error());
    return 1;
  }
  return 0;
}
