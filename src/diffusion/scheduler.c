/* scheduler.c - betas, alphas_cumprod and the timestep/sigma tables of the
 * samplers, reproducing diffusers' float32 arithmetic and numpy's rounding
 * (np.round = half to even = rint, np.linspace = i*step + start). */
#include "diffusion/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "core/common.h"

void cd_sched_config_default(cd_sched_config *c) {
  memset(c, 0, sizeof *c);
  c->num_train_timesteps = 1000;
  c->beta_start = 0.00085;
  c->beta_end = 0.012;
  c->beta_schedule = CD_BETA_SCALED_LINEAR;
  c->pred = CD_PRED_EPS;
  c->steps_offset = 1;
  c->set_alpha_to_one = 0;
  c->spacing = CD_SPACING_DEFAULT;
}

/* ---- names ---- */

static const struct { const char *name; cd_sampler_kind k; } SAMPLER_NAMES[] = {
  /* canonical names first (cd_sampler_name returns these) */
  {"ddim", CD_SAMPLER_DDIM}, {"ddpm", CD_SAMPLER_DDPM}, {"pndm", CD_SAMPLER_PNDM},
  {"euler", CD_SAMPLER_EULER}, {"euler_a", CD_SAMPLER_EULER_A}, {"dpmpp_2m", CD_SAMPLER_DPMPP_2M},
  {"heun", CD_SAMPLER_HEUN}, {"dpm2", CD_SAMPLER_DPM2}, {"dpmpp_2s_a", CD_SAMPLER_DPMPP_2S_A},
  {"dpmpp_sde", CD_SAMPLER_DPMPP_SDE}, {"lcm", CD_SAMPLER_LCM},
  /* aliases: A1111/PLMS, stable-diffusion.cpp, ComfyUI */
  {"plms", CD_SAMPLER_PNDM}, {"dpmpp2m", CD_SAMPLER_DPMPP_2M}, {"dpm++2m", CD_SAMPLER_DPMPP_2M},
  {"euler_ancestral", CD_SAMPLER_EULER_A}, {"dpm_2", CD_SAMPLER_DPM2},
  {"dpm++2s_a", CD_SAMPLER_DPMPP_2S_A}, {"dpmpp_2s_ancestral", CD_SAMPLER_DPMPP_2S_A},
  {"dpm++sde", CD_SAMPLER_DPMPP_SDE}, {"dpm++_sde", CD_SAMPLER_DPMPP_SDE},
};
#define NSAMPLER_NAMES (sizeof SAMPLER_NAMES / sizeof *SAMPLER_NAMES)

int cd_sampler_parse(const char *name, cd_sampler_kind *out) {
  if (!name) return cd_set_error("sampler: no name given");
  for (size_t i = 0; i < NSAMPLER_NAMES; i++)
    if (!strcmp(name, SAMPLER_NAMES[i].name)) { *out = SAMPLER_NAMES[i].k; return 0; }
  return cd_set_error("unknown sampler \"%s\" (expected ddim, ddpm, pndm/plms, euler, euler_a, dpmpp_2m, "
                      "heun, dpm2, dpmpp_2s_a, dpmpp_sde, lcm)", name);
}

const char *cd_sampler_name(cd_sampler_kind k) {
  for (size_t i = 0; i < NSAMPLER_NAMES; i++)
    if (SAMPLER_NAMES[i].k == k) return SAMPLER_NAMES[i].name;
  return "?";
}

int cd_sampler_sigma_based(cd_sampler_kind k) {
  return k == CD_SAMPLER_EULER || k == CD_SAMPLER_EULER_A || k == CD_SAMPLER_DPMPP_2M ||
         k == CD_SAMPLER_HEUN || k == CD_SAMPLER_DPM2 || k == CD_SAMPLER_DPMPP_2S_A ||
         k == CD_SAMPLER_DPMPP_SDE;
}

/* the k-diffusion samplers with a second model call per step */
static int second_order(cd_sampler_kind k) {
  return k == CD_SAMPLER_HEUN || k == CD_SAMPLER_DPM2 || k == CD_SAMPLER_DPMPP_2S_A ||
         k == CD_SAMPLER_DPMPP_SDE;
}

int cd_sampler_stochastic(cd_sampler_kind k, float eta) {
  return k == CD_SAMPLER_DDPM || (k == CD_SAMPLER_DDIM && eta > 0) || k == CD_SAMPLER_EULER_A ||
         k == CD_SAMPLER_DPMPP_2S_A || k == CD_SAMPLER_DPMPP_SDE || k == CD_SAMPLER_LCM;
}

int cd_sigma_sched_parse(const char *name, cd_sigma_sched *out) {
  if (name && !strcmp(name, "discrete")) *out = CD_SIGMAS_DISCRETE;
  else if (name && !strcmp(name, "karras")) *out = CD_SIGMAS_KARRAS;
  else if (name && !strcmp(name, "exponential")) *out = CD_SIGMAS_EXPONENTIAL;
  else return cd_set_error("unknown scheduler \"%s\" (expected discrete, karras, exponential)",
                           name ? name : "(null)");
  return 0;
}

const char *cd_sigma_sched_name(cd_sigma_sched s) {
  return s == CD_SIGMAS_KARRAS ? "karras" : s == CD_SIGMAS_EXPONENTIAL ? "exponential" : "discrete";
}

int cd_spacing_parse(const char *name, cd_spacing *out) {
  if (name && !strcmp(name, "leading")) *out = CD_SPACING_LEADING;
  else if (name && !strcmp(name, "linspace")) *out = CD_SPACING_LINSPACE;
  else if (name && !strcmp(name, "trailing")) *out = CD_SPACING_TRAILING;
  else return cd_set_error("unknown timestep_spacing \"%s\" (expected leading, linspace, trailing)",
                           name ? name : "(null)");
  return 0;
}

int cd_pred_parse(const char *name, cd_pred_type *out) {
  if (name && !strcmp(name, "epsilon")) *out = CD_PRED_EPS;
  else if (name && (!strcmp(name, "v_prediction") || !strcmp(name, "v"))) *out = CD_PRED_V;
  else return cd_set_error("unsupported prediction_type \"%s\" (expected epsilon or v_prediction)",
                           name ? name : "(null)");
  return 0;
}

/* ---- scheduler_config.json ---- */

static int json_num(const cJSON *root, const char *key, const char *what, double *v, int *found) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
  *found = 0;
  if (!it || cJSON_IsNull(it)) return 0;
  if (cJSON_IsBool(it)) { *v = cJSON_IsTrue(it); *found = 1; return 0; }
  if (!cJSON_IsNumber(it)) return cd_set_error("%s: \"%s\" is not a number", what, key);
  *v = it->valuedouble;
  *found = 1;
  return 0;
}

static const char *json_str(const cJSON *root, const char *key) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
  return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* Python's json writes -Infinity / Infinity / NaN (e.g. DPM-Solver's
 * lambda_min_clipped), which cJSON rejects: turn them into null outside strings. */
static char *json_sanitize(const char *js) {
  size_t n = strlen(js);
  char *o = cd_malloc(2 * n + 1); /* "NaN" -> "null" grows by 4/3 */
  size_t j = 0;
  int in_str = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = js[i];
    if (in_str) {
      o[j++] = ch;
      if (ch == '\\' && i + 1 < n) o[j++] = js[++i];
      else if (ch == '"') in_str = 0;
      continue;
    }
    if (ch == '"') in_str = 1;
    const char *w = NULL;
    if (!strncmp(js + i, "-Infinity", 9)) w = "-Infinity";
    else if (!strncmp(js + i, "Infinity", 8)) w = "Infinity";
    else if (!strncmp(js + i, "NaN", 3)) w = "NaN";
    if (w) {
      memcpy(o + j, "null", 4);
      j += 4;
      i += strlen(w) - 1;
      continue;
    }
    o[j++] = ch;
  }
  o[j] = 0;
  return o;
}

int cd_sched_config_from_json(cd_sched_config *c, const char *json, const char *what,
                              cd_sampler_kind *class_kind) {
  cd_sched_config_default(c);
  if (!what) what = "scheduler config";
  char *clean = json_sanitize(json ? json : "");
  cJSON *root = cJSON_Parse(clean);
  free(clean);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return cd_set_error("%s: not a JSON object", what);
  }
  int rc = -1, f;
  double v;
  const char *s;
  if (json_num(root, "num_train_timesteps", what, &v, &f)) goto done;
  if (f) {
    if (!(v >= 2 && v <= 100000) || v != floor(v)) {
      cd_set_error("%s: num_train_timesteps %g out of range", what, v);
      goto done;
    }
    c->num_train_timesteps = (int)v;
  }
  if (json_num(root, "beta_start", what, &v, &f)) goto done;
  if (f) c->beta_start = v;
  if (json_num(root, "beta_end", what, &v, &f)) goto done;
  if (f) c->beta_end = v;
  if (!(c->beta_start > 0 && c->beta_end > c->beta_start && c->beta_end < 1)) {
    cd_set_error("%s: need 0 < beta_start < beta_end < 1 (got %g, %g)", what, c->beta_start,
                 c->beta_end);
    goto done;
  }
  if ((s = json_str(root, "beta_schedule"))) {
    if (!strcmp(s, "scaled_linear")) c->beta_schedule = CD_BETA_SCALED_LINEAR;
    else if (!strcmp(s, "linear")) c->beta_schedule = CD_BETA_LINEAR;
    else {
      cd_set_error("%s: unsupported beta_schedule \"%s\" (expected scaled_linear or linear)", what, s);
      goto done;
    }
  }
  const cJSON *tb = cJSON_GetObjectItemCaseSensitive(root, "trained_betas");
  if (tb && !cJSON_IsNull(tb)) {
    cd_set_error("%s: trained_betas are not supported", what);
    goto done;
  }
  if ((s = json_str(root, "prediction_type")) && cd_pred_parse(s, &c->pred)) {
    cd_prefix_error("%s", what);
    goto done;
  }
  if (json_num(root, "steps_offset", what, &v, &f)) goto done;
  if (f) {
    if (!(v >= 0 && v < c->num_train_timesteps) || v != floor(v)) {
      cd_set_error("%s: steps_offset %g out of range", what, v);
      goto done;
    }
    c->steps_offset = (int)v;
  }
  if (json_num(root, "set_alpha_to_one", what, &v, &f)) goto done;
  if (f) c->set_alpha_to_one = v != 0;
  if ((s = json_str(root, "timestep_spacing")) && cd_spacing_parse(s, &c->spacing)) {
    cd_prefix_error("%s", what);
    goto done;
  }
  const cJSON *rz = cJSON_GetObjectItemCaseSensitive(root, "rescale_betas_zero_snr");
  if (cJSON_IsTrue(rz)) {
    cd_set_error("%s: rescale_betas_zero_snr is not supported", what);
    goto done;
  }
  if (class_kind) {
    s = json_str(root, "_class_name");
    *class_kind = CD_SAMPLER_DDIM;
    if (s && !strcmp(s, "PNDMScheduler")) *class_kind = CD_SAMPLER_PNDM;
    else if (s && !strcmp(s, "EulerDiscreteScheduler")) *class_kind = CD_SAMPLER_EULER;
    else if (s && !strcmp(s, "EulerAncestralDiscreteScheduler")) *class_kind = CD_SAMPLER_EULER_A;
    else if (s && !strcmp(s, "DPMSolverMultistepScheduler")) *class_kind = CD_SAMPLER_DPMPP_2M;
    else if (s && !strcmp(s, "HeunDiscreteScheduler")) *class_kind = CD_SAMPLER_HEUN;
    else if (s && !strcmp(s, "KDPM2DiscreteScheduler")) *class_kind = CD_SAMPLER_DPM2;
    else if (s && !strcmp(s, "DPMSolverSDEScheduler")) *class_kind = CD_SAMPLER_DPMPP_SDE;
    else if (s && !strcmp(s, "LCMScheduler")) *class_kind = CD_SAMPLER_LCM;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}

/* ---- betas and alphas_cumprod ---- */

/* torch.linspace(start, end, n, dtype=float32) on CPU: float step, the first
 * half counted from start, the second from end, each value one fused
 * multiply-add (this reproduces diffusers' betas bit for bit). */
static float torch_linspace_f32(float start, float end, int n, int i) {
  if (n == 1) return start;
  float step = (end - start) / (float)(n - 1);
  if (i < n / 2) return fmaf(step, (float)i, start);
  return fmaf(-step, (float)(n - 1 - i), end);
}

void cd_sched_betas(const cd_sched_config *c, float *betas) {
  int T = c->num_train_timesteps;
  if (c->beta_schedule == CD_BETA_LINEAR) {
    for (int i = 0; i < T; i++) betas[i] = torch_linspace_f32((float)c->beta_start, (float)c->beta_end, T, i);
    return;
  }
  float a = (float)sqrt(c->beta_start), b = (float)sqrt(c->beta_end);
  for (int i = 0; i < T; i++) {
    float r = torch_linspace_f32(a, b, T, i);
    betas[i] = r * r;
  }
}

void cd_sched_alphas_cumprod(const cd_sched_config *c, float *ac) {
  int T = c->num_train_timesteps;
  cd_sched_betas(c, ac);
  /* torch.cumprod on CPU accumulates float32 in double */
  double acc = 1.0;
  for (int i = 0; i < T; i++) {
    acc *= (double)(1.0f - ac[i]);
    ac[i] = (float)acc;
  }
}

/* ---- numpy helpers ---- */

static double np_linspace(double start, double stop, int num, int i) {
  if (num == 1) return start;
  if (i == num - 1) return stop;
  return (double)i * ((stop - start) / (num - 1)) + start;
}

/* "leading" spacing adds steps_offset (1 in SD's config) to every timestep; with as many
 * steps as training timesteps (ddpm --steps 1000) the first one would be T, past the table,
 * and diffusers fails with an IndexError. The offset is lowered just enough that the first
 * timestep is T - 1, so the full chain runs 999, 998, ..., 0 as a user expects. */
static int leading_offset(int offset, int top, int T) {
  return CD_MIN(offset, CD_MAX(T - 1 - top, 0)); /* offset >= 0: the config parser checks it */
}

/* np.arange(T, 0, -T/n).round() - 1 : the "trailing" timesteps, descending.
 * numpy fills start + i*delta with delta = (start + step) - start. */
static int np_trailing(int T, int n, double *out) {
  double step = -(double)T / n;
  double delta = ((double)T + step) - (double)T;
  int len = (int)ceil((0.0 - T) / step);
  if (len > n) len = n; /* float round-off could add a step at ~0; diffusers would then hand out -1 */
  for (int i = 0; i < len; i++) out[i] = rint((double)T + i * delta) - 1;
  return len;
}

/* sigma = sqrt((1 - ac)/ac) in float32 as diffusers' torch expression */
static void sigmas_all(const float *ac, int T, float *s) {
  for (int i = 0; i < T; i++) s[i] = sqrtf((1.0f - ac[i]) / ac[i]);
}

/* np.interp(x, arange(T), s) */
static double interp_sigma(const float *s, int T, double x) {
  if (x <= 0) return s[0];
  if (x >= T - 1) return s[T - 1];
  int j = (int)floor(x);
  double slope = ((double)s[j + 1] - (double)s[j]) / 1.0;
  return slope * (x - j) + (double)s[j];
}

/* diffusers' _sigma_to_t: linear interpolation of log sigma (ls = float32 logs). */
static double sigma_to_t(double sigma, const float *ls, int T) {
  double l = log(sigma > 1e-10 ? sigma : 1e-10);
  int low = 0;
  for (int i = 0; i < T; i++)
    if (l - (double)ls[i] >= 0) low = i; /* argmax of the cumsum = last index with dist >= 0 */
  if (low > T - 2) low = T - 2;
  double lo = ls[low], hi = ls[low + 1];
  double w = (lo - l) / (lo - hi);
  if (w < 0) w = 0;
  if (w > 1) w = 1;
  return (1 - w) * low + w * (low + 1);
}

/* _convert_to_karras with rho 7 */
static double karras_sigma(double smin, double smax, int n, int i) {
  double ramp = np_linspace(0, 1, n, i);
  double min_inv = pow(smin, 1.0 / 7.0), max_inv = pow(smax, 1.0 / 7.0);
  return pow(max_inv + ramp * (min_inv - max_inv), 7.0);
}

/* ---- schedules ---- */

void cd_schedule_free(cd_schedule *s) {
  if (!s) return;
  free(s->timesteps);
  free(s->sigmas);
  memset(s, 0, sizeof *s);
}

int cd_schedule_begin_for_strength(const cd_schedule *s, double strength) {
  if (!(strength >= 0)) strength = 0;
  if (strength > 1) strength = 1;
  int init = (int)(s->steps * strength);
  if (init > s->steps) init = s->steps;
  int start = s->steps - init;
  if (start < 0) start = 0;
  start *= s->order > 1 ? s->order : 1; /* diffusers: t_start * scheduler.order */
  return start < s->n ? start : s->n;
}

/* exp(linspace(log smax, log smin, n))[i] (k-diffusion's get_sigmas_exponential) */
static double exponential_sigma(double smin, double smax, int n, int i) {
  return exp(np_linspace(log(smax), log(smin), n, i));
}

/* get_ancestral_step(sigma, next, eta 1): the deterministic part sigma_down */
static double ancestral_down(double sigma, double next) {
  double up = sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma));
  if (up > next) up = next;
  double d = next * next - up * up;
  return d > 0 ? sqrt(d) : 0.0;
}

/* LCMScheduler.set_timesteps: the 50 (original_inference_steps) distillation
 * timesteps k-1, 2k-1, ..., 999 (k = T / 50), descending, then `steps` of
 * them at indices floor(linspace(0, 50, steps, endpoint=False)). */
static int lcm_timesteps(int T, int steps, double *t) {
  const int orig = 50;
  int k = T / orig;
  if (k < 1) return cd_set_error("scheduler lcm: num_train_timesteps %d < 50", T);
  if (steps > orig) return cd_set_error("scheduler lcm: steps %d > %d (its original_inference_steps)", steps, orig);
  for (int i = 0; i < steps; i++) {
    int idx = (int)floor((double)i * ((double)orig / steps));
    t[i] = (double)(orig - idx) * k - 1;
  }
  return 0;
}

int cd_schedule_make(const cd_sched_config *c, cd_sampler_kind k, int steps, int sig,
                     cd_schedule *out) {
  memset(out, 0, sizeof *out);
  int T = c->num_train_timesteps;
  if (T < 2) return cd_set_error("scheduler: num_train_timesteps %d < 2", T);
  if (steps < 1 || steps > T)
    return cd_set_error("scheduler: steps %d out of range [1, %d]", steps, T);
  int sigma_based = cd_sampler_sigma_based(k), two = second_order(k);
  if (sig < CD_SIGMAS_DISCRETE || sig > CD_SIGMAS_EXPONENTIAL)
    return cd_set_error("scheduler: unknown sigma schedule %d", sig);
  if (sig != CD_SIGMAS_DISCRETE && !sigma_based)
    return cd_set_error("scheduler: %s sigmas need a sigma sampler (euler, euler_a, dpmpp_2m, heun, dpm2, "
                        "dpmpp_2s_a, dpmpp_sde), not %s", cd_sigma_sched_name((cd_sigma_sched)sig),
                        cd_sampler_name(k));
  cd_spacing sp = c->spacing;
  if (sp == CD_SPACING_DEFAULT) sp = sigma_based ? CD_SPACING_LINSPACE : CD_SPACING_LEADING;

  double *t = cd_calloc((size_t)steps + 2, sizeof(double));
  int len = steps;
  if (k == CD_SAMPLER_LCM) {
    if (lcm_timesteps(T, steps, t)) {
      free(t);
      return -1;
    }
  } else if (k == CD_SAMPLER_DPMPP_2M) {
    /* DPM-Solver: n+1 points, the last (0 / offset) dropped */
    if (sp == CD_SPACING_LINSPACE) {
      for (int i = 0; i < steps; i++) t[i] = rint(np_linspace(0, T - 1, steps + 1, steps - i));
    } else if (sp == CD_SPACING_LEADING) {
      int ratio = T / (steps + 1);
      int off = leading_offset(c->steps_offset, steps * ratio, T);
      for (int i = 0; i < steps; i++) t[i] = (double)(steps - i) * ratio + off;
    } else {
      len = np_trailing(T, steps, t);
    }
  } else if (sp == CD_SPACING_LEADING) {
    int ratio = T / steps;
    int off = leading_offset(c->steps_offset, (steps - 1) * ratio, T);
    for (int i = 0; i < steps; i++) t[i] = (double)(steps - 1 - i) * ratio + off;
  } else if (sp == CD_SPACING_LINSPACE) {
    for (int i = 0; i < steps; i++) {
      double v = np_linspace(0, T - 1, steps, steps - 1 - i);
      /* the sigma samplers keep the float32 values, the others round to integers */
      t[i] = sigma_based ? (double)(float)v : rint(v);
    }
  } else {
    len = np_trailing(T, steps, t);
  }
  if (len < 1) {
    free(t);
    return cd_set_error("scheduler: no timesteps for %d steps", steps);
  }
  for (int i = 0; i < len; i++)
    if (!(t[i] >= 0 && t[i] <= T - 1)) {
      double bad = t[i];
      free(t);
      return cd_set_error("scheduler: timestep %g out of [0, %d] (steps %d, offset %d)", bad, T - 1,
                          steps, c->steps_offset);
    }

  out->steps = steps;
  out->order = two ? 2 : 1;
  out->init_noise_sigma = 1.0f;
  if (k == CD_SAMPLER_PNDM) {
    /* PLMS: descending list with the second one repeated (901, 801, 801, 701, ...) */
    out->timesteps = cd_calloc((size_t)len + 1, sizeof(float));
    int j = 0;
    for (int i = 0; i < len; i++) {
      out->timesteps[j++] = (float)t[i];
      if (i == 1) out->timesteps[j++] = (float)t[1];
    }
    out->n = j;
    free(t);
    return 0;
  }
  if (!sigma_based) {
    out->n = len;
    out->timesteps = cd_calloc((size_t)len, sizeof(float));
    for (int i = 0; i < len; i++) out->timesteps[i] = (float)t[i];
    free(t);
    return 0;
  }

  /* sigma samplers: the step table bs[len+1] (bs[len] = 0, final_sigmas_type
   * "zero") with its timesteps bt[len], then the evaluation table */
  float *ac = cd_malloc((size_t)T * sizeof(float));
  float *sa = cd_malloc((size_t)T * sizeof(float));
  float *ls = cd_malloc((size_t)T * sizeof(float));
  float *bs = cd_calloc((size_t)len + 1, sizeof(float));
  float *bt = cd_calloc((size_t)len, sizeof(float));
  cd_sched_alphas_cumprod(c, ac);
  sigmas_all(ac, T, sa);
  for (int i = 0; i < T; i++) ls[i] = logf(sa[i]);
  if (sig != CD_SIGMAS_DISCRETE) {
    double smin, smax;
    /* DPM-Solver converts the whole training range, the others the ends of their table */
    if (k == CD_SAMPLER_DPMPP_2M) { smin = sa[0]; smax = sa[T - 1]; }
    else { smin = interp_sigma(sa, T, t[len - 1]); smax = interp_sigma(sa, T, t[0]); }
    for (int i = 0; i < len; i++) {
      double s = sig == CD_SIGMAS_KARRAS ? karras_sigma(smin, smax, len, i)
                                         : exponential_sigma(smin, smax, len, i);
      double ti = sigma_to_t(s, ls, T);
      bs[i] = (float)s;
      bt[i] = (float)(k == CD_SAMPLER_DPMPP_2M ? rint(ti) : ti);
    }
  } else {
    for (int i = 0; i < len; i++) {
      bs[i] = (float)interp_sigma(sa, T, t[i]);
      bt[i] = (float)t[i];
    }
  }
  bs[len] = 0.0f;
  int n = two ? 2 * len - 1 : len;
  out->n = n;
  out->timesteps = cd_calloc((size_t)n, sizeof(float));
  out->sigmas = cd_calloc((size_t)n + 1, sizeof(float));
  if (!two) {
    memcpy(out->timesteps, bt, (size_t)len * sizeof(float));
    memcpy(out->sigmas, bs, ((size_t)len + 1) * sizeof(float));
  } else {
    /* evaluation 2j: step j at bs[j]; 2j+1: its second evaluation, at the
     * sampler's intermediate sigma (Heun: the next sigma; DPM2, DPM++ SDE: the
     * geometric mean with the next; DPM++ 2S a: with sigma_down) */
    for (int j = 0; j < len; j++) {
      out->sigmas[2 * j] = bs[j];
      out->timesteps[2 * j] = bt[j];
      if (j == len - 1) break;
      double s0 = bs[j], s1 = bs[j + 1], mid;
      if (k == CD_SAMPLER_HEUN) mid = s1;
      else if (k == CD_SAMPLER_DPMPP_2S_A) mid = sqrt(s0 * ancestral_down(s0, s1));
      else mid = exp(0.5 * (log(s0) + log(s1)));
      out->sigmas[2 * j + 1] = (float)mid;
      out->timesteps[2 * j + 1] = k == CD_SAMPLER_HEUN ? bt[j + 1] : (float)sigma_to_t(mid, ls, T);
    }
    out->sigmas[n] = 0.0f;
  }
  if (k != CD_SAMPLER_DPMPP_2M) {
    float mx = 0;
    for (int i = 0; i <= n; i++) mx = CD_MAX(mx, out->sigmas[i]);
    out->init_noise_sigma = (sp == CD_SPACING_LINSPACE || sp == CD_SPACING_TRAILING)
                                ? mx : sqrtf(mx * mx + 1.0f);
  }
  free(ac);
  free(sa);
  free(ls);
  free(bs);
  free(bt);
  free(t);
  return 0;
}

/* ---- training helpers ---- */

void cd_noise_mix(double a, const float *x0, double b, const float *noise, int64_t n, float *out) {
  for (int64_t i = 0; i < n; i++) out[i] = (float)(a * x0[i] + b * noise[i]);
}

void cd_add_noise(const float *ac, const float *x0, const float *noise, const int *t, int B,
                  int64_t per, float *out) {
  for (int b = 0; b < B; b++) {
    double a = ac[t[b]];
    cd_noise_mix(sqrt(a), x0 + b * per, sqrt(1.0 - a), noise + b * per, per, out + b * per);
  }
}

void cd_get_velocity(const float *ac, const float *x0, const float *noise, const int *t, int B,
                     int64_t per, float *out) {
  for (int b = 0; b < B; b++) {
    double a = ac[t[b]];
    cd_noise_mix(-sqrt(1.0 - a), x0 + b * per, sqrt(a), noise + b * per, per, out + b * per);
  }
}
