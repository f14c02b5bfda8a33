/* mem_estimate.h - the memory a sampling run will need, estimated before it
 * starts, so that a size that cannot fit is refused with a message instead
 * of an out-of-memory abort after minutes of work.
 *
 * The engine's planner sizes each graph's arena exactly; every buffer of the
 * UNet and the VAE grows with the image area (convolutions, group norms,
 * attention with an online softmax: no buffer is quadratic in the number of
 * pixels), plus constants (text context, timestep embeddings). So each arena
 * is planned at two small sizes (one and two times the UNet's size step) and
 * extended affinely in the area to the requested size; tests/test_validate.c
 * checks the extension against the planner at larger sizes. */
#ifndef CD_MEM_ESTIMATE_H
#define CD_MEM_ESTIMATE_H

#include "models/sd_model.h"

typedef struct {
  double unet;    /* UNet arena for the whole batch */
  double sampler; /* sampler state: a few copies of the latents */
  double vae;     /* VAE decoder arena (one image, or one tile) */
  double encoder; /* VAE encoder arena (img2img), else 0 */
  double buffers; /* latents, context, decoded images, init image */
  double total;   /* peak: buffers + max(unet + sampler + encoder, vae) */
} cd_mem_plan;

/* n images of width x height pixels, each `passes` UNet rows a step (1
 * unguided, 2 guided: uncond + cond, 1 + k with k sub-prompts joined by AND),
 * decoded whole (tile 0) or in tiles of `tile` latent pixels; img2img adds
 * the encoder. Model weights are not included (they are loaded already). */
int cd_sample_mem_plan(cd_sd_model *m, int n, int passes, int width, int height, int tile, int img2img, cd_mem_plan *p);
/* The planned arena of the UNet at batch B and latent h x w (exact, for tests). */
int cd_unet_arena_bytes(cd_sd_model *m, int B, int64_t h, int64_t w, double *bytes);
/* The planned arena of the VAE decoder (dec 1) or encoder (dec 0) for one
 * image of latent h x w (exact, for tests). */
int cd_vae_arena_bytes(cd_sd_model *m, int dec, int64_t h, int64_t w, double *bytes);
/* Plans and checks with cd_mem_check; "what" names the request in the error. */
int cd_sample_mem_check(cd_sd_model *m, int n, int passes, int width, int height, int tile, int img2img, const char *what);

#endif
