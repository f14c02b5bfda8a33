/* sampler.c - the step functions of diffusers' schedulers (see sampler.h).
 * Each step reproduces the scheduler's `step` formula; the comments name the
 * diffusers variables. Scalars are float32 like diffusers' 0-dim tensors. */
#include "diffusion/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float fsqrt0(float x) { return x > 0 ? sqrtf(x) : 0.0f; } /* round-off must not give NaN */

void cd_sampler_free(cd_sampler *s) {
  if (!s) return;
  cd_schedule_free(&s->sched);
  free(s->ac);
  free(s->noise);
  for (int i = 0; i < 4; i++) free(s->ets[i]);
  free(s->cur_sample);
  free(s->prev_x0);
  free(s->x0);
  memset(s, 0, sizeof *s);
}

int cd_sampler_init(cd_sampler *s, const cd_sched_config *c, const cd_sample_opts *o, int64_t n) {
  memset(s, 0, sizeof *s);
  if (n <= 0) return cd_set_error("sampler: latent size %lld must be positive", (long long)n);
  if (!(o->eta >= 0 && o->eta <= 10)) return cd_set_error("sampler: eta %g out of [0, 10]", o->eta);
  if (cd_schedule_make(c, o->kind, o->steps, o->karras, &s->sched)) return -1;
  s->cfg = *c;
  s->kind = o->kind;
  s->eta = o->kind == CD_SAMPLER_DDPM ? 1.0f : o->kind == CD_SAMPLER_DDIM ? o->eta : 0.0f;
  s->n = n;
  s->next = -1;
  s->ac = cd_malloc((size_t)c->num_train_timesteps * sizeof(float));
  cd_sched_alphas_cumprod(c, s->ac);
  s->final_ac = c->set_alpha_to_one ? 1.0f : s->ac[0];
  cd_rng_seed(&s->rng, o->seed);
  size_t nb = (size_t)n * sizeof(float);
  if (s->eta > 0 || o->kind == CD_SAMPLER_EULER_A) s->noise = cd_malloc(nb);
  if (o->kind == CD_SAMPLER_PNDM) {
    for (int i = 0; i < 4; i++) s->ets[i] = cd_malloc(nb);
    s->cur_sample = cd_malloc(nb);
  }
  if (o->kind == CD_SAMPLER_DPMPP_2M) {
    s->prev_x0 = cd_malloc(nb);
    s->x0 = cd_malloc(nb);
  }
  return 0;
}

void cd_sampler_init_latents(const cd_sampler *s, const float *noise, float *latents) {
  float k = s->sched.init_noise_sigma;
  for (int64_t i = 0; i < s->n; i++) latents[i] = (float)((double)noise[i] * k);
}

/* DPM-Solver's _sigma_to_alpha_sigma_t */
static void alpha_sigma(float sigma, float *alpha_t, float *sigma_t) {
  *alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
  *sigma_t = sigma * *alpha_t;
}

void cd_sampler_add_noise(const cd_sampler *s, int i, const float *x0, const float *noise,
                          float *out) {
  double a, b;
  if (i < 0) i = 0;
  if (i >= s->sched.n) i = s->sched.n - 1;
  if (s->kind == CD_SAMPLER_EULER || s->kind == CD_SAMPLER_EULER_A) {
    a = 1.0;
    b = s->sched.sigmas[i];
  } else if (s->kind == CD_SAMPLER_DPMPP_2M) {
    float at, st;
    alpha_sigma(s->sched.sigmas[i], &at, &st);
    a = at;
    b = st;
  } else {
    double ac = s->ac[(int)s->sched.timesteps[i]];
    a = sqrt(ac);
    b = sqrt(1.0 - ac);
  }
  for (int64_t j = 0; j < s->n; j++) out[j] = (float)(a * x0[j] + b * noise[j]);
}

void cd_sampler_scale_input(const cd_sampler *s, int i, const float *x, float *x_in) {
  if ((s->kind == CD_SAMPLER_EULER || s->kind == CD_SAMPLER_EULER_A) && i >= 0 && i < s->sched.n) {
    float sg = s->sched.sigmas[i];
    double d = sqrtf(sg * sg + 1.0f);
    for (int64_t j = 0; j < s->n; j++) x_in[j] = (float)(x[j] / d);
  } else if (x_in != x) {
    memcpy(x_in, x, (size_t)s->n * sizeof(float));
  }
}

/* ---- DDIM (eta 0: deterministic; eta > 0 adds std_dev_t * noise) ---- */
static void step_ddim(cd_sampler *s, int i, const float *m, float *x) {
  int T = s->cfg.num_train_timesteps;
  int t = (int)s->sched.timesteps[i];
  int prev = t - T / s->sched.steps;
  float a_t = s->ac[t];
  float a_prev = prev >= 0 ? s->ac[prev] : s->final_ac;
  float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  float sa = sqrtf(a_t), sb = sqrtf(b_t);
  float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
  float std = s->eta * fsqrt0(variance);
  float dir = fsqrt0(1.0f - a_prev - std * std);
  float sap = sqrtf(a_prev);
  if (s->eta > 0) cd_rng_fill_normal(&s->rng, s->noise, (size_t)s->n);
  for (int64_t j = 0; j < s->n; j++) {
    double xj = x[j], mj = m[j], x0, eps;
    if (s->cfg.pred == CD_PRED_V) {
      x0 = (double)sa * xj - (double)sb * mj;
      eps = (double)sa * mj + (double)sb * xj;
    } else {
      x0 = (xj - (double)sb * mj) / sa;
      eps = mj;
    }
    double r = (double)sap * x0 + (double)dir * eps;
    if (s->eta > 0) r += (double)std * s->noise[j];
    x[j] = (float)r;
  }
}

/* ---- PNDM with skip_prk_steps: linear multistep (PLMS) on eps ---- */
static void step_pndm(cd_sampler *s, int i, const float *m, float *x) {
  int T = s->cfg.num_train_timesteps, ratio = T / s->sched.steps;
  int t = (int)s->sched.timesteps[i];
  int prev = t - ratio;
  if (s->counter != 1) {
    /* ets = ets[-3:] + [model_output]; ets[0] is the newest */
    float *old = s->ets[3];
    memmove(&s->ets[1], &s->ets[0], 3 * sizeof(float *));
    s->ets[0] = old;
    memcpy(s->ets[0], m, (size_t)s->n * sizeof(float));
    if (s->nets < 4) s->nets++;
  } else {
    /* the second call re-evaluates the first step from the kept sample */
    prev = t;
    t = t + ratio;
  }
  const float *sample = x;
  int mode = s->nets; /* 1..4 */
  if (s->nets == 1 && s->counter == 0) {
    memcpy(s->cur_sample, x, (size_t)s->n * sizeof(float));
    mode = 0;
  } else if (s->nets == 1 && s->counter == 1) {
    sample = s->cur_sample;
    mode = -1;
  }
  if (t > T - 1) t = T - 1; /* only with a single inference step */
  float a_t = s->ac[t];
  float a_prev = prev >= 0 ? s->ac[prev] : s->final_ac;
  float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  float sa = sqrtf(a_t), sb = sqrtf(b_t);
  float coef = sqrtf(a_prev / a_t);
  float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
  float diff = a_prev - a_t;
  const float *e0 = s->ets[0], *e1 = s->ets[1], *e2 = s->ets[2], *e3 = s->ets[3];
  for (int64_t j = 0; j < s->n; j++) {
    double e;
    switch (mode) {
    case 0: e = m[j]; break;
    case -1: e = ((double)m[j] + e0[j]) / 2; break;
    case 2: e = (3.0 * e0[j] - e1[j]) / 2; break;
    case 3: e = (23.0 * e0[j] - 16.0 * e1[j] + 5.0 * e2[j]) / 12; break;
    default: e = (1.0 / 24) * (55.0 * e0[j] - 59.0 * e1[j] + 37.0 * e2[j] - 9.0 * e3[j]); break;
    }
    double xj = sample[j];
    if (s->cfg.pred == CD_PRED_V) e = (double)sa * e + (double)sb * xj;
    x[j] = (float)((double)coef * xj - (double)diff * e / denom);
  }
  s->counter++;
}

/* x0 prediction of the Euler schedulers (latents in sigma space) */
static double euler_x0(const cd_sampler *s, float sigma, float c_out, double den, double xj,
                       double mj) {
  if (s->cfg.pred == CD_PRED_V) return mj * c_out + xj / den;
  return xj - (double)sigma * mj;
}

/* ---- Euler (churn 0) and Euler ancestral ---- */
static void step_euler(cd_sampler *s, int i, const float *m, float *x) {
  float sigma = s->sched.sigmas[i], next = s->sched.sigmas[i + 1];
  float den = sigma * sigma + 1.0f;
  float c_out = -sigma / sqrtf(den);
  float down = next, up = 0.0f;
  if (s->kind == CD_SAMPLER_EULER_A) {
    up = fsqrt0(next * next * (sigma * sigma - next * next) / (sigma * sigma));
    down = fsqrt0(next * next - up * up);
    cd_rng_fill_normal(&s->rng, s->noise, (size_t)s->n);
  }
  float dt = down - sigma;
  for (int64_t j = 0; j < s->n; j++) {
    double xj = x[j];
    double x0 = euler_x0(s, sigma, c_out, den, xj, m[j]);
    double d = (xj - x0) / sigma;
    double r = xj + d * dt;
    if (s->kind == CD_SAMPLER_EULER_A) r += (double)s->noise[j] * up;
    x[j] = (float)r;
  }
}

/* ---- DPM-Solver++ 2M (midpoint), lower_order_final, final sigma 0 ---- */
static void step_dpmpp2m(cd_sampler *s, int i, const float *m, float *x) {
  int n = s->sched.n;
  const float *sg = s->sched.sigmas;
  float a_s0, s_s0;
  alpha_sigma(sg[i], &a_s0, &s_s0);
  /* convert_model_output: x0 prediction */
  float *tmp = s->prev_x0;
  s->prev_x0 = s->x0;
  s->x0 = tmp;
  float *x0 = s->x0;
  for (int64_t j = 0; j < s->n; j++) {
    double xj = x[j], mj = m[j];
    x0[j] = (float)(s->cfg.pred == CD_PRED_V ? (double)a_s0 * xj - (double)s_s0 * mj
                                             : (xj - (double)s_s0 * mj) / a_s0);
  }
  int first = s->lower_order_nums < 1 || i == n - 1;
  if (sg[i + 1] == 0.0f) {
    /* sigma_t = 0: alpha_t = 1, exp(-h) = 0, the update is exactly x0 */
    memcpy(x, x0, (size_t)s->n * sizeof(float));
  } else {
    float a_t, s_t;
    alpha_sigma(sg[i + 1], &a_t, &s_t);
    float lam_t = logf(a_t) - logf(s_t), lam_s0 = logf(a_s0) - logf(s_s0);
    float h = lam_t - lam_s0;
    float c1 = s_t / s_s0, c2 = a_t * (expf(-h) - 1.0f);
    if (first) {
      for (int64_t j = 0; j < s->n; j++) x[j] = (float)((double)c1 * x[j] - (double)c2 * x0[j]);
    } else {
      float a_s1, s_s1;
      alpha_sigma(sg[i - 1], &a_s1, &s_s1);
      float lam_s1 = logf(a_s1) - logf(s_s1);
      float h0 = lam_s0 - lam_s1, r0 = h0 / h, inv_r0 = 1.0f / r0;
      float c3 = 0.5f * c2;
      const float *m1 = s->prev_x0;
      for (int64_t j = 0; j < s->n; j++) {
        double d1 = (double)inv_r0 * ((double)x0[j] - m1[j]);
        x[j] = (float)((double)c1 * x[j] - (double)c2 * x0[j] - (double)c3 * d1);
      }
    }
  }
  if (s->lower_order_nums < 2) s->lower_order_nums++;
}

int cd_sampler_step(cd_sampler *s, int i, const float *model_out, float *latents) {
  if (i < 0 || i >= s->sched.n)
    return cd_set_error("sampler: step index %d out of [0, %d)", i, s->sched.n);
  if (s->next >= 0 && i != s->next)
    return cd_set_error("sampler: step %d called after step %d (steps must be consecutive)", i,
                        s->next - 1);
  switch (s->kind) {
  case CD_SAMPLER_DDIM:
  case CD_SAMPLER_DDPM: step_ddim(s, i, model_out, latents); break;
  case CD_SAMPLER_PNDM: step_pndm(s, i, model_out, latents); break;
  case CD_SAMPLER_EULER:
  case CD_SAMPLER_EULER_A: step_euler(s, i, model_out, latents); break;
  case CD_SAMPLER_DPMPP_2M: step_dpmpp2m(s, i, model_out, latents); break;
  }
  s->next = i + 1;
  return 0;
}

int cd_sample(const cd_sched_config *c, const cd_sample_opts *o, float *latents, int64_t n,
              cd_model_fn f, void *fctx, cd_progress_fn p, void *pctx) {
  cd_sampler s;
  if (cd_sampler_init(&s, c, o, n)) return cd_prefix_error("sampler %s", cd_sampler_name(o->kind));
  int rc = 0, N = s.sched.n;
  if (o->begin < 0 || o->begin > N) {
    cd_sampler_free(&s);
    return cd_set_error("sampler: begin %d out of [0, %d]", o->begin, N);
  }
  if (o->begin == 0) cd_sampler_init_latents(&s, latents, latents);
  float *x_in = cd_malloc((size_t)n * sizeof(float));
  float *out = cd_malloc((size_t)n * sizeof(float));
  for (int i = o->begin; i < N && rc == 0; i++) {
    float t = s.sched.timesteps[i];
    cd_sampler_scale_input(&s, i, latents, x_in);
    if (f(fctx, x_in, t, out, n)) {
      rc = cd_prefix_error("sampler %s, step %d/%d (t=%g)", cd_sampler_name(o->kind), i + 1, N, t);
      break;
    }
    rc = cd_sampler_step(&s, i, out, latents);
    if (p) p(pctx, i + 1, N);
  }
  free(x_in);
  free(out);
  cd_sampler_free(&s);
  return rc;
}
