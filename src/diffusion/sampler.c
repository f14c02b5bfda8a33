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
  free(s->x_start);
  free(s->den1);
  free(s->noise2);
  memset(s, 0, sizeof *s);
}

int cd_sampler_init(cd_sampler *s, const cd_sched_config *c, const cd_sample_opts *o, int64_t n) {
  memset(s, 0, sizeof *s);
  if (n <= 0) return cd_set_error("sampler: latent size %lld must be positive", (long long)n);
  if (!(o->eta >= 0 && o->eta <= 10)) return cd_set_error("sampler: eta %g out of [0, 10]", o->eta);
  if (cd_schedule_make(c, o->kind, o->steps, o->sigma_sched, &s->sched)) return -1;
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
  if (cd_sampler_stochastic(o->kind, s->eta)) s->noise = cd_malloc(nb);
  if (o->kind == CD_SAMPLER_DPMPP_SDE) s->noise2 = cd_malloc(nb);
  if (s->sched.order == 2) {
    s->x_start = cd_malloc(nb);
    s->den1 = cd_malloc(nb);
  }
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
  if (s->kind == CD_SAMPLER_DPMPP_2M) {
    float at, st;
    alpha_sigma(s->sched.sigmas[i], &at, &st);
    a = at;
    b = st;
  } else if (s->sched.sigmas) {
    a = 1.0;
    b = s->sched.sigmas[i];
  } else {
    double ac = s->ac[(int)s->sched.timesteps[i]];
    a = sqrt(ac);
    b = sqrt(1.0 - ac);
  }
  cd_noise_mix(a, x0, b, noise, s->n, out);
}

void cd_sampler_scale_input(const cd_sampler *s, int i, const float *x, float *x_in) {
  if (s->sched.sigmas && s->kind != CD_SAMPLER_DPMPP_2M && i >= 0 && i < s->sched.n) {
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

/* ---- k-diffusion's second-order samplers (sigma space, denoiser = x0) ----
 * Evaluation 2j is step j at sigma s0 = sigmas[2j]; unless the next sigma s1
 * is 0 (then one Euler step ends the loop), it keeps x and the x0 prediction
 * and moves the latents to the point of evaluation 2j+1 at sigma sm. */

/* get_ancestral_step(sigma, next, eta 1) */
static void ancestral(double sigma, double next, double *down, double *up) {
  double u = next * next * (sigma * sigma - next * next) / (sigma * sigma);
  u = u > 0 ? sqrt(u) : 0.0;
  if (u > next) u = next;
  double d = next * next - u * u;
  *up = u;
  *down = d > 0 ? sqrt(d) : 0.0;
}

static void x0_of(const cd_sampler *s, float sigma, const float *m, const float *x, float *den) {
  float dn = sigma * sigma + 1.0f, c_out = -sigma / sqrtf(dn);
  for (int64_t j = 0; j < s->n; j++) den[j] = (float)euler_x0(s, sigma, c_out, dn, x[j], m[j]);
}

static void step_second_order(cd_sampler *s, int i, const float *m, float *x) {
  const int n = s->sched.n, j = i / 2;
  const float *sg = s->sched.sigmas;
  const double s0 = sg[2 * j], s1 = 2 * j + 2 <= n ? sg[2 * j + 2] : 0.0;
  const int64_t N = s->n;
  float *den = s->den1, *xs = s->x_start;
  if (i % 2 == 0) {
    x0_of(s, sg[i], m, x, den);
    if (s1 == 0.0) { /* Euler to sigma 0 */
      for (int64_t e = 0; e < N; e++) {
        double d = ((double)x[e] - den[e]) / s0;
        x[e] = (float)(x[e] + d * (0.0 - s0));
      }
      return;
    }
    const double sm = sg[i + 1];
    memcpy(xs, x, (size_t)N * sizeof(float));
    if (s->kind == CD_SAMPLER_HEUN || s->kind == CD_SAMPLER_DPM2) {
      /* x_2 = x + d * (sm - s0), d = (x - x0) / s0 (Heun: sm = s1) */
      for (int64_t e = 0; e < N; e++) x[e] = (float)(x[e] + ((double)x[e] - den[e]) / s0 * (sm - s0));
    } else if (s->kind == CD_SAMPLER_DPMPP_2S_A) {
      /* x_2 = (sm / s0) x - expm1(-h/2) x0, h = log(s0 / sigma_down), sm = sqrt(s0 sigma_down) */
      double down, up;
      ancestral(s0, s1, &down, &up);
      double h = log(s0) - log(down), a = sm / s0, b = -expm1(-0.5 * h);
      for (int64_t e = 0; e < N; e++) x[e] = (float)(a * x[e] + b * den[e]);
    } else { /* DPM++ SDE, step 1: ancestral DPM-Solver++ 1 step to sm = sqrt(s0 s1) */
      double down, up;
      ancestral(s0, sm, &down, &up);
      double a = down / s0;
      cd_rng_fill_normal(&s->rng, s->noise, (size_t)N);
      for (int64_t e = 0; e < N; e++) x[e] = (float)(a * x[e] + (1.0 - a) * den[e] + up * s->noise[e]);
    }
    return;
  }
  /* odd i: the second evaluation, at sm = sigmas[i]; x holds x_2 */
  const double sm = sg[i];
  if (s->kind == CD_SAMPLER_HEUN || s->kind == CD_SAMPLER_DPM2) {
    /* Heun: x = x_s + (d + d_2)/2 (s1 - s0); DPM2: x = x_s + d_2 (s1 - s0) */
    float dn = (float)(sm * sm) + 1.0f, c_out = -(float)sm / sqrtf(dn);
    for (int64_t e = 0; e < N; e++) {
      double x2 = x[e], d2 = (x2 - euler_x0(s, (float)sm, c_out, dn, x2, m[e])) / sm;
      double d = s->kind == CD_SAMPLER_HEUN ? 0.5 * (((double)xs[e] - den[e]) / s0 + d2) : d2;
      x[e] = (float)(xs[e] + d * (s1 - s0));
    }
  } else if (s->kind == CD_SAMPLER_DPMPP_2S_A) {
    /* x = (sigma_down / s0) x_s - expm1(-h) x0_2, then + sigma_up * noise */
    double down, up;
    ancestral(s0, s1, &down, &up);
    double h = log(s0) - log(down), a = down / s0, b = -expm1(-h);
    float dn = (float)(sm * sm) + 1.0f, c_out = -(float)sm / sqrtf(dn);
    cd_rng_fill_normal(&s->rng, s->noise, (size_t)N);
    for (int64_t e = 0; e < N; e++) {
      double d2 = euler_x0(s, (float)sm, c_out, dn, x[e], m[e]);
      x[e] = (float)(a * xs[e] + b * d2 + up * s->noise[e]);
    }
  } else {
    /* DPM++ SDE step 2 (r = 1/2, so the x0 used is the second one): ancestral
     * step s0 -> s1. The noise is the Brownian increment W(s1) - W(s0) over
     * sqrt(s0 - s1), sharing W(sm) - W(s0) with step 1: the law of
     * k-diffusion's BrownianTreeNoiseSampler (not its random numbers). */
    double down, up;
    ancestral(s0, s1, &down, &up);
    double a = down / s0, ra = sqrt(s0 - sm), rb = sqrt(sm - s1), rn = sqrt(s0 - s1);
    float dn = (float)(sm * sm) + 1.0f, c_out = -(float)sm / sqrtf(dn);
    cd_rng_fill_normal(&s->rng, s->noise2, (size_t)N);
    for (int64_t e = 0; e < N; e++) {
      double d2 = euler_x0(s, (float)sm, c_out, dn, x[e], m[e]);
      double z = (ra * s->noise[e] + rb * s->noise2[e]) / rn;
      x[e] = (float)(a * xs[e] + (1.0 - a) * d2 + up * z);
    }
  }
}

/* ---- LCM (LCMScheduler.step: consistency boundary condition, then re-noise) ---- */
static void step_lcm(cd_sampler *s, int i, const float *m, float *x) {
  const int n = s->sched.n;
  int t = (int)s->sched.timesteps[i];
  int prev = i + 1 < n ? (int)s->sched.timesteps[i + 1] : t;
  float a_t = s->ac[t], a_prev = prev >= 0 ? s->ac[prev] : s->final_ac;
  float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t);
  /* get_scalings_for_boundary_condition_discrete: sigma_data 0.5, timestep_scaling 10 */
  float st = (float)t * 10.0f;
  float c_skip = 0.25f / (st * st + 0.25f), c_out = st / sqrtf(st * st + 0.25f);
  int last = i == n - 1;
  float sap = sqrtf(a_prev), sbp = sqrtf(1.0f - a_prev);
  if (!last) cd_rng_fill_normal(&s->rng, s->noise, (size_t)s->n);
  for (int64_t j = 0; j < s->n; j++) {
    double xj = x[j], mj = m[j];
    double x0 = s->cfg.pred == CD_PRED_V ? (double)sa * xj - (double)sb * mj : (xj - (double)sb * mj) / sa;
    double den = (double)c_out * x0 + (double)c_skip * xj;
    x[j] = (float)(last ? den : (double)sap * den + (double)sbp * s->noise[j]);
  }
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
  case CD_SAMPLER_HEUN:
  case CD_SAMPLER_DPM2:
  case CD_SAMPLER_DPMPP_2S_A:
  case CD_SAMPLER_DPMPP_SDE: step_second_order(s, i, model_out, latents); break;
  case CD_SAMPLER_LCM: step_lcm(s, i, model_out, latents); break;
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
