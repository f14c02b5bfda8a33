/* sd_model.h - a whole Stable Diffusion pipeline as loaded from disk. */
#ifndef CD_SD_MODEL_H
#define CD_SD_MODEL_H

#include "diffusion/scheduler.h"
#include "models/clip.h"
#include "models/tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"

typedef enum { CD_FAMILY_SD1 = 1, CD_FAMILY_SD2 = 2, CD_FAMILY_SDXL = 3 } cd_family;

#define CD_SD_MAX_TEXT 2 /* text encoders of one model: SD 1.x/2.x 1, SDXL 2 */

typedef struct {
  cd_family family;
  char path[1024];
  char layout[32];        /* "diffusers", "single-file safetensors", "single-file ckpt" */
  char dtype[4][16];      /* stored dtype of text encoder, unet, vae, text encoder 2 ("float16", ...) */
  char hash[17];          /* first 16 hex digits of sha256 over the text encoders' and UNet's names, shapes and bytes */
  cd_clip clip;           /* text_encoder (SDXL: CLIP ViT-L) */
  cd_unet unet;
  cd_vae vae;
  cd_tokenizer *tok;      /* NULL if no vocabulary was found */
  /* SDXL's second text encoder and tokenizer (text_encoder_2/, tokenizer_2/; SGM
   * conditioner.embedders.1): OpenCLIP ViT-bigG with text_projection; its tokenizer pads
   * with 0. clip2.w is NULL and tok2 NULL for the families with one encoder. */
  cd_clip clip2;
  cd_tokenizer *tok2;
  int force_zeros_empty;  /* SDXL: an empty negative prompt conditions on zeros (model_index.json's
                             force_zeros_for_empty_prompt; default 1, as SDXL base) */
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

/* The model's text encoders in conditioning order (SDXL: the 768 then the 1280 wide
 * one, whose features are concatenated): cd_sd_text(m, i) for 0 <= i < cd_sd_ntext(m). */
static inline int cd_sd_ntext(const cd_sd_model *m) { return m->family == CD_FAMILY_SDXL ? 2 : 1; }
static inline cd_clip *cd_sd_text(cd_sd_model *m, int i) { return i ? &m->clip2 : &m->clip; }
static inline cd_tokenizer *cd_sd_tok(cd_sd_model *m, int i) { return i ? m->tok2 : m->tok; }
/* "SD 1.x", "SD 2.x", "SDXL" */
const char *cd_family_name(cd_family f);

#endif
