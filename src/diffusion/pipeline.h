/* pipeline.h - text-to-image as StableDiffusionPipeline does it:
 * encode prompts, denoise with classifier-free guidance (uncond and cond in
 * one UNet batch, uncond first; sub-prompts joined by AND each a cond),
 * decode latents with the VAE. */
#ifndef CD_PIPELINE_H
#define CD_PIPELINE_H

#include "diffusion/sampler.h"
#include "diffusion/sdxl_cond.h"
#include "models/sd_model.h"

typedef struct {
  const char *prompt;
  const char *negative; /* "" or NULL: the empty prompt */
  cd_sample_opts s;     /* sampler kind, steps, eta, sigma schedule, seed */
  float cfg;            /* guidance scale; <= 1 disables the uncond pass */
  int width, height;    /* pixels, multiples of 8 */
  int n;                /* images */
  const float *init_latents; /* [n,4,h,w] N(0,1) noise instead of the seeded noise, or NULL */
  const float *init_image;   /* img2img: [3, height, width] in [-1, 1] for every image, or NULL */
  float strength;            /* img2img: 1 = start from noise, 0 = return the image (diffusers' meaning) */
  cd_sdxl_micro micro;       /* SDXL: original size, crop, target size (0: the image size, crop 0,0) */
  int quiet;            /* no progress bar */
} cd_gen_opts;

/* A prompt's "<newN>" that no loaded delta added would be split into "<", "new", "N", ">"
 * and silently mean something else: -1 with an error naming the token. */
int cd_prompt_check_tokens(cd_sd_model *m, const char *prompt);
/* Token ids of one prompt, padded to 77 (warns when truncated; errors if no tokenizer). */
int cd_prompt_ids(cd_sd_model *m, const char *prompt, int ids[CD_TOK_MAX_LEN]);
/* Text-encoder outputs of n prompts taken literally (no weighting syntax,
 * truncated to 75 tokens): out [n, 77, ctx]. */
int cd_encode_prompts(cd_sd_model *m, const char *const *prompts, int n, float *out);
/* Text-encoder outputs of n prompts with weighting and 75-token chunks
 * (models/prompt.h): *out [n, *T, ctx] (cd_malloc'd), *T = 77 x the most
 * chunks of any prompt; a prompt with fewer chunks is padded with the
 * encoding of "" (as A1111 pads cond and uncond to one length). A prompt of
 * at most 75 tokens without weighting syntax encodes exactly as before. */
int cd_encode_prompts_weighted(cd_sd_model *m, const char *const *prompts, int n, float **out, int *T);
/* Seeded noise for image i of a batch: N(0,1) from seed + i. */
void cd_seed_noise(uint64_t seed, int i, float *x, int64_t n);
/* UNet passes per image for a prompt of k sub-prompts at guidance scale cfg:
 * 1 + k when guided (cfg > 1, or k > 1: sub-prompts combine through the
 * uncond pass), else 1. The sampler's batch and the memory preflight both. */
int cd_guidance_passes(int k, float cfg);
/* Classifier-free guidance over the UNet outputs o [(1 + k) x half] laid out
 * [uncond | cond 1 | ... | cond k]: out [half] = u + cfg * sum_j w[j] * (c_j - u)
 * (k = 1, w = 1: the usual u + cfg * (c - u)). */
void cd_guidance_combine(const float *o, int k, const float *w, float cfg, int64_t half, float *out);
/* Runs the sampler (the prompt may join sub-prompts with AND: models/prompt.h);
 * latents [n, 4, H/8, W/8] receives the final latents. */
int cd_generate_latents(cd_sd_model *m, const cd_gen_opts *o, float *latents);
/* VAE decode of latents [n,4,h,w] (multiplied by 1/scaling_factor first) into
 * images [n,3,8h,8w] in about [-1,1]. tile > 0: decode in overlapping latent
 * tiles of that size to bound memory (seams blended linearly). */
int cd_decode_latents(cd_sd_model *m, const float *latents, int n, int h, int w, int tile, float *images);

#endif
