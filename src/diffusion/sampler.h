/* sampler.h - the denoising loops of diffusers' DDIM, PNDM (PLMS), Euler,
 * Euler ancestral, DPM-Solver++ 2M and LCM schedulers and of k-diffusion's
 * Heun, DPM2, DPM++ 2S a and DPM++ SDE samplers, for eps- and v-prediction
 * models. The second-order samplers call the model twice per step: their
 * schedule lists every evaluation (sched.n = 2*steps-1), and the step at an
 * even index writes the point of the second evaluation into the latents.
 *
 * Whole loop (txt2img, what StableDiffusionPipeline does):
 *
 *   cd_sample_opts o = {.kind = CD_SAMPLER_EULER, .steps = 20, .seed = 42};
 *   // latents[n] = N(0,1) noise on entry, final latents on return
 *   if (cd_sample(&cfg, &o, latents, n, my_unet_cfg, ctx, NULL, NULL)) ...
 *
 * Step by step (tests, img2img, custom loops):
 *
 *   cd_sampler s;
 *   cd_sampler_init(&s, &cfg, &o, n);
 *   cd_sampler_init_latents(&s, noise, x);          // x = noise * init_noise_sigma
 *   for (int i = 0; i < s.sched.n; i++) {
 *     cd_sampler_scale_input(&s, i, x, x_in);       // what the UNet sees
 *     unet(x_in, s.sched.timesteps[i]) -> out;      // guided eps or v
 *     cd_sampler_step(&s, i, out, x);               // x <- x_{prev}
 *   }
 *   cd_sampler_free(&s);
 *
 * Scalars (alphas, sigmas and their combinations) are float32 as in
 * diffusers; the per-element arithmetic is in double, stored as float.
 */
#ifndef CD_SAMPLER_H
#define CD_SAMPLER_H

#include <stdint.h>

#include "core/common.h"
#include "diffusion/scheduler.h"

typedef struct {
  cd_sampler_kind kind;
  int steps;     /* num_inference_steps */
  float eta;     /* DDIM only (0 = deterministic); DDPM always uses 1, the
                  * ancestral/SDE samplers k-diffusion's default 1 */
  int sigma_sched; /* cd_sigma_sched: discrete (0), karras (1), exponential (2); sigma samplers */
  uint64_t seed; /* noise of DDIM eta > 0, DDPM, Euler a, DPM++ 2S a, DPM++ SDE, LCM */
  int begin;     /* cd_sample only: first schedule index (img2img); 0 = txt2img */
} cd_sample_opts;

typedef struct {
  cd_sched_config cfg;
  cd_sampler_kind kind;
  cd_schedule sched;
  float eta;
  float *ac;     /* alphas_cumprod [num_train_timesteps] */
  float final_ac; /* alpha_cumprod "before" t = 0: 1 or ac[0] */
  int64_t n;     /* elements per latent buffer */
  int next;      /* the step index cd_sampler_step expects next (-1 = any, first call) */
  cd_rng rng;
  float *noise;  /* [n] scratch for stochastic steps */
  /* PNDM: the last 4 model outputs (ets[0] newest) and the sample kept for the 2nd call */
  float *ets[4];
  int nets, counter;
  float *cur_sample;
  /* DPM-Solver++: the previous x0 prediction */
  float *prev_x0, *x0;
  int lower_order_nums;
  /* second-order samplers: the step's start point and first x0 prediction;
   * DPM++ SDE: the second Gaussian of the Brownian increments */
  float *x_start, *den1, *noise2;
} cd_sampler;

int cd_sampler_init(cd_sampler *s, const cd_sched_config *c, const cd_sample_opts *o, int64_t n);
void cd_sampler_free(cd_sampler *s); /* safe on a zeroed struct */

/* latents = noise * init_noise_sigma (noise == latents is fine) */
void cd_sampler_init_latents(const cd_sampler *s, const float *noise, float *latents);
/* img2img: noise x0 to the level of schedule index i (scheduler.add_noise) */
void cd_sampler_add_noise(const cd_sampler *s, int i, const float *x0, const float *noise,
                          float *out);
/* scale_model_input: x / sqrt(sigma^2 + 1) for the sigma samplers except DPM++ 2M,
 * a copy otherwise (x == x_in is fine) */
void cd_sampler_scale_input(const cd_sampler *s, int i, const float *x, float *x_in);
/* One step at schedule index i (0 <= i < sched.n, called in increasing order,
 * consecutively): latents <- the previous sample, from the model output
 * (eps or v, after guidance). */
int cd_sampler_step(cd_sampler *s, int i, const float *model_out, float *latents);

/* x_in: the model input [n] (scaled), t: the timestep; writes the guided
 * model output [n]. Returns 0, or -1 after cd_set_error. */
typedef int (*cd_model_fn)(void *ctx, const float *x_in, float t, float *out, int64_t n);
typedef void (*cd_progress_fn)(void *ctx, int step, int total);

/* The whole loop. latents: on entry the N(0,1) noise (begin == 0) or the
 * already noised latents at index begin (img2img, see cd_sampler_add_noise);
 * on return the final latents. progress (may be NULL) gets (i+1, n). */
int cd_sample(const cd_sched_config *c, const cd_sample_opts *o, float *latents, int64_t n,
              cd_model_fn f, void *fctx, cd_progress_fn p, void *pctx);

#endif
