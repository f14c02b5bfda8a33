/* scheduler.h - the noise schedule of Stable Diffusion and the timestep /
 * sigma tables of its samplers, computed exactly as diffusers does.
 *
 * diffusers keeps betas, alphas_cumprod and sigmas as float32 tensors, so
 * the numbers here carry the same float32 rounding (bit-exact for
 * alphas_cumprod: torch.linspace in float32, then a cumprod that accumulates
 * in double and rounds every output to float32).
 *
 *   cd_sched_config c;  cd_sched_config_default(&c);   // SD 1.x values
 *   cd_schedule s;
 *   if (cd_schedule_make(&c, CD_SAMPLER_EULER, 20, 0, &s)) puts(cd_last_error());
 *   ... s.timesteps[0..s.n), s.sigmas[0..s.n] ...
 *   cd_schedule_free(&s);
 */
#ifndef CD_SCHEDULER_H
#define CD_SCHEDULER_H

#include <stdint.h>

typedef enum { CD_PRED_EPS, CD_PRED_V } cd_pred_type;

typedef enum {
  CD_SAMPLER_DDIM,     /* DDIMScheduler (eta from the options, default 0) */
  CD_SAMPLER_DDPM,     /* DDIMScheduler with eta 1 (stochastic, DDPM-like) */
  CD_SAMPLER_PNDM,     /* PNDMScheduler with skip_prk_steps (PLMS): n+1 model calls */
  CD_SAMPLER_EULER,    /* EulerDiscreteScheduler */
  CD_SAMPLER_EULER_A,  /* EulerAncestralDiscreteScheduler */
  CD_SAMPLER_DPMPP_2M, /* DPMSolverMultistepScheduler: dpmsolver++, order 2, midpoint */
  /* k-diffusion's second-order samplers (sample_heun, sample_dpm_2,
   * sample_dpmpp_2s_ancestral, sample_dpmpp_sde; churn 0, eta 1, s_noise 1, r 1/2):
   * two model calls per step except the last (an Euler step to sigma 0) */
  CD_SAMPLER_HEUN,
  CD_SAMPLER_DPM2,
  CD_SAMPLER_DPMPP_2S_A,
  CD_SAMPLER_DPMPP_SDE,
  CD_SAMPLER_LCM       /* LCMScheduler (original_inference_steps 50, timestep_scaling 10) */
} cd_sampler_kind;

/* The sigma table of the sigma-space samplers (k-diffusion's "schedulers"):
 * discrete = the model's own sigmas at the sampler's timesteps; karras = rho 7
 * (Karras et al. 2022); exponential = uniform in log sigma. Timesteps of
 * karras/exponential sigmas come from log-sigma interpolation. */
typedef enum { CD_SIGMAS_DISCRETE = 0, CD_SIGMAS_KARRAS = 1, CD_SIGMAS_EXPONENTIAL = 2 } cd_sigma_sched;

typedef enum {
  CD_SPACING_DEFAULT,  /* the scheduler class default: leading for DDIM/DDPM/PNDM, linspace otherwise */
  CD_SPACING_LEADING,
  CD_SPACING_LINSPACE,
  CD_SPACING_TRAILING
} cd_spacing;

typedef enum { CD_BETA_SCALED_LINEAR, CD_BETA_LINEAR } cd_beta_schedule;

typedef struct {
  int num_train_timesteps;     /* 1000 */
  double beta_start, beta_end; /* 0.00085, 0.012 (double: diffusers takes sqrt in double) */
  cd_beta_schedule beta_schedule;
  cd_pred_type pred;
  int steps_offset;            /* 1 in SD configs; used by "leading" spacing */
  int set_alpha_to_one;        /* 0 in SD configs: the last DDIM/PNDM step uses alphas_cumprod[0] */
  cd_spacing spacing;
} cd_sched_config;

/* SD 1.x/2.x values: 1000, 0.00085, 0.012, scaled_linear, eps, offset 1,
 * set_alpha_to_one 0, class-default spacing. (SD 2.x 768-v: pred = CD_PRED_V.) */
void cd_sched_config_default(cd_sched_config *c);

/* Reads a diffusers scheduler_config.json text over the defaults above.
 * Unknown keys are ignored; unsupported values (beta_schedule other than
 * scaled_linear/linear, trained_betas, prediction_type "sample", ...) are
 * errors naming `what` and the key. If class_kind is not NULL it receives the
 * sampler of "_class_name" (DDIM for unknown/absent classes). */
int cd_sched_config_from_json(cd_sched_config *c, const char *json, const char *what,
                              cd_sampler_kind *class_kind);

/* "ddim", "ddpm", "pndm"/"plms", "euler", "euler_a", "dpmpp_2m", "heun", "dpm2",
 * "dpmpp_2s_a", "dpmpp_sde", "lcm", and the spellings of stable-diffusion.cpp and
 * ComfyUI ("dpm++2m", "dpmpp2m", "dpm++2s_a", "dpmpp_2s_ancestral", "dpm_2",
 * "dpm++sde"); error naming the value and the accepted names. */
int cd_sampler_parse(const char *name, cd_sampler_kind *out);
const char *cd_sampler_name(cd_sampler_kind k);
/* 1 for the samplers that work on a sigma table (Euler family, DPM++, Heun, DPM2) */
int cd_sampler_sigma_based(cd_sampler_kind k);
/* 1 for the samplers that draw noise at every step (need a seed) */
int cd_sampler_stochastic(cd_sampler_kind k, float eta);
/* "discrete", "karras", "exponential" (error naming the value) */
int cd_sigma_sched_parse(const char *name, cd_sigma_sched *out);
const char *cd_sigma_sched_name(cd_sigma_sched s);
int cd_spacing_parse(const char *name, cd_spacing *out);  /* "leading", "linspace", "trailing" */
int cd_pred_parse(const char *name, cd_pred_type *out);   /* "epsilon", "v_prediction" (or "v") */

/* betas[num_train] and alphas_cumprod[num_train] in float32 as diffusers. */
void cd_sched_betas(const cd_sched_config *c, float *betas);
void cd_sched_alphas_cumprod(const cd_sched_config *c, float *ac);

/* The timestep table of one sampler after diffusers' set_timesteps(steps). */
typedef struct {
  int n;                  /* model evaluations: steps, steps+1 for PNDM, 2*steps-1 for the
                           * second-order samplers (heun, dpm2, dpmpp_2s_a, dpmpp_sde) */
  int steps;              /* num_inference_steps as asked */
  int order;              /* model evaluations per step (diffusers' scheduler.order): 1 or 2 */
  float *timesteps;       /* [n]; integers except sigma samplers with non-integer spacing,
                           * Karras/exponential sigmas or a second-order midpoint */
  float *sigmas;          /* [n+1] for the sigma samplers: the sigma of evaluation i (second
                           * order: even i = step i/2, odd i = its midpoint), last = 0; else NULL */
  float init_noise_sigma; /* factor of the initial N(0,1) noise */
} cd_schedule;

/* steps in [1, num_train_timesteps] (lcm: [1, 50]); sig: the sigma table
 * (cd_sigma_sched; karras/exponential only for the sigma samplers). */
int cd_schedule_make(const cd_sched_config *c, cd_sampler_kind k, int steps, int sig,
                     cd_schedule *out);
void cd_schedule_free(cd_schedule *s); /* zeroes *s; safe on a zeroed struct */

/* diffusers' img2img start: the schedule index at which denoising begins for
 * strength in [0, 1] (1 = from pure noise = index 0; 0 = no step at all = n). */
int cd_schedule_begin_for_strength(const cd_schedule *s, double strength);

/* The one noising rule: out = a·x0 + b·noise over n elements, evaluated in
 * double. Forward noising (a = sqrt(ac), b = sqrt(1−ac)), the v-prediction
 * target (a = −sqrt(1−ac), b = sqrt(ac)) and a sampler's img2img start (its
 * own alpha/sigma scalings) are all this mix with different scalars. */
void cd_noise_mix(double a, const float *x0, double b, const float *noise, int64_t n, float *out);

/* ---- training helpers (DDPMScheduler.add_noise / get_velocity) ----
 * ac = alphas_cumprod; x0, noise, out: [B, per]; t[B] in [0, num_train). */
void cd_add_noise(const float *ac, const float *x0, const float *noise, const int *t, int B,
                  int64_t per, float *out);  /* sqrt(ac)·x0 + sqrt(1−ac)·noise */
void cd_get_velocity(const float *ac, const float *x0, const float *noise, const int *t, int B,
                     int64_t per, float *out);  /* sqrt(ac)·noise − sqrt(1−ac)·x0 */

#endif
