/* sdxl_cond.h - SDXL's conditioning, as diffusers' StableDiffusionXLPipeline assembles it:
 *   context     [B, 77, w1 + w2]  hidden_states[-2] of text_encoder and text_encoder_2
 *                                 (no final LayerNorm), concatenated along features
 *   text_embeds [B, proj]         text_encoder_2's pooled output times text_projection
 *   time_ids    [B, 6]            original (h, w), crop top-left (top, left), target (h, w):
 *                                 the micro-conditioning
 * An empty negative prompt conditions on zeros (context and text_embeds) when the model says
 * force_zeros_for_empty_prompt (SDXL base does; cd_sd_model.force_zeros_empty).
 */
#ifndef CD_SDXL_COND_H
#define CD_SDXL_COND_H

#include "models/sd_model.h"

/* Micro-conditioning in pixels; 0 for a size means "the image size" (diffusers' default). */
typedef struct {
  int orig_w, orig_h;      /* --original-size W,H */
  int crop_top, crop_left; /* --crop T,L */
  int target_w, target_h;  /* --target-size W,H */
} cd_sdxl_micro;

/* time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w), sizes left 0 taken
 * from the image (width x height). Error (naming the flag) for negative values. */
int cd_sdxl_time_ids(const cd_sdxl_micro *mc, int width, int height, float out[6]);

/* Context width of the model's text conditioning: the text encoder's width, or the sum of
 * both for SDXL. */
int cd_sd_context_dim(const cd_sd_model *m);

/* Encodes n prompts with both encoders (weighting syntax and 75-token chunks as
 * cd_encode_prompts_weighted: each chunk encoded on its own, chunk outputs concatenated
 * along the sequence, emphasis applied to the concatenated rows, shorter prompts padded
 * with the encoding of ""). *ctx [n, *T, w1 + w2] (cd_malloc'd), *T = 77 x chunks;
 * pooled [n, proj] (caller's; the first chunk's). zero (may be NULL): prompts with
 * zero[i] set get zeros for both. */
int cd_sdxl_encode(cd_sd_model *m, const char *const *prompts, int n, const unsigned char *zero, float **ctx,
                   int *T, float *pooled);

/* n prompts taken literally (no weighting syntax, truncated to 75 tokens, with a warning):
 * ctx [n, 77, w1 + w2], pooled [n, proj] (may be NULL); both caller's. */
int cd_sdxl_encode_literal(cd_sd_model *m, const char *const *prompts, int n, float *ctx, float *pooled);

#endif
