/* sd_model.h - a whole Stable Diffusion pipeline as loaded from disk. */
#ifndef CD_SD_MODEL_H
#define CD_SD_MODEL_H

#include "diffusion/scheduler.h"
#include "models/clip.h"
#include "models/tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"

typedef enum { CD_FAMILY_SD1 = 1, CD_FAMILY_SD2 = 2, CD_FAMILY_SDXL = 3 } cd_family;

typedef struct {
  cd_family family;
  char path[1024];
  char layout[32];        /* "diffusers", "single-file safetensors", "single-file ckpt" */
  char dtype[3][16];      /* stored dtype of text encoder, unet, vae ("float16", ...) */
  char hash[17];          /* first 16 hex digits of sha256 over the text encoder's and UNet's names, shapes and bytes */
  cd_clip clip;
  cd_unet unet;
  cd_vae vae;
  cd_tokenizer *tok;      /* NULL if no vocabulary was found */
  cd_sched_config sched;
  cd_weights *unet_orig;  /* base values of UNet weights replaced by deltas (src/custom/delta.c), or NULL */
  int ndeltas;
} cd_sd_model;

typedef struct {
  const char *prediction; /* "eps" | "v" | NULL (from the scheduler config / .yaml / default eps) */
  const char *vocab;      /* tokenizer path override (folder or bpe_simple_vocab_16e6.txt.gz) */
  int no_vae, no_unet, no_text; /* skip loading a component */
  const char *weights_dtype; /* "f32" | "f16" | "bf16": storage of weights with 2+ dims; NULL: each tensor's own
                                (f16/bf16 stay 16-bit, anything else f32). 1-D weights are always f32. */
} cd_load_opts;

/* path: a diffusers folder (model_index.json), or a single-file checkpoint
 * (.safetensors or .ckpt, original LDM layout). Errors name the file and key. */
int cd_sd_load(const char *path, const cd_load_opts *opts, cd_sd_model **out);
void cd_sd_free(cd_sd_model *m);

#endif
