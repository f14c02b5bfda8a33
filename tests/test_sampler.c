/* test_sampler.c - noise schedule, timestep/sigma tables and the sampler
 * steps against diffusers' golden trajectories (tiny-sd1: epsilon, tiny-sd2:
 * v-prediction), plus properties of the stochastic and Karras variants. */
#include "diffusion/sampler.h"
#include "diffusion/scheduler.h"
#include "test.h"

/* golden tensor `name` as floats (cd_malloc'd; I64 converted by value), *numel
 * its size; NULL if absent (not an error: DDIM has no sigmas) or unreadable */
static float *gold_f32(const cd_tensor_file *f, const char *name, size_t *numel) {
  int64_t n = 0;
  float *x = cd_tf_find(f, name) ? test_read_f32(f, name, &n) : NULL;
  if (numel) *numel = x ? (size_t)n : 0;
  return x;
}

/* opens golden_<model>.safetensors into f; skips the test when it is absent */
#define OPEN_GOLDEN(f, model) do { char r_[128], p_[1024]; \
    snprintf(r_, sizeof r_, "golden_%s.safetensors", (model)); NEED_GOLDEN(p_, r_); \
    if (cd_safetensors_open(p_, &(f))) FAILF("cannot read %.900s: %s", p_, cd_last_error()); } while (0)

static const char *MODELS[2] = {"tiny-sd1", "tiny-sd2"};

/* Error model of this file (test.h): everything here is elementwise or scalar
 * code with a fixed order of operations, so no result depends on the CPU's
 * vector width or BLAS kernel; the bounds count roundings (u = 2^-24 each).
 * Schedules are computed in double from float32 inputs and rounded once;
 * diffusers' golden values were computed in float32 (or float64 and rounded).
 * One sampler step is x' = sum_j c_j y_j over at most 5 terms (x, the model
 * output, PNDM's 3 earlier outputs) with coefficients built from float32
 * alphas: the golden's float32 evaluation rounds at most 9 times per element,
 * each relative to the largest term, and |c_j| <= sigma_max = 1/sqrt(acp[999])
 * = 14.6 for SD's schedule, with |y_j| of the size of x: a step's relative
 * error is <= 9 u (1 + 2 sigma_max) = 9 * 30.2 u, and per-step errors add
 * (the steps contract or keep the error of x, |c_x| <= 1 in relative terms). */
#define SIGMA_MAX 14.6146
static double step_tol(int steps) { return steps * 9 * (1 + 2 * SIGMA_MAX) * TEST_U32; }

/* ---- schedule ---- */

TEST(alphas_cumprod_golden) {
  cd_tensor_file *f;
  OPEN_GOLDEN(f, "tiny-sd1");
  size_t n1 = 0, n2 = 0;
  float *gb = gold_f32(f, "sched.betas", &n1), *ga = gold_f32(f, "sched.alphas_cumprod", &n2);
  cd_tensor_file_close(f);
  int ok = gb && ga && n1 == 1000 && n2 == 1000;
  cd_sched_config c;
  cd_sched_config_default(&c);
  float b[1000], a[1000];
  cd_sched_betas(&c, b);
  cd_sched_alphas_cumprod(&c, a);
  int exact = 0;
  double e1 = ok ? test_rel_err(b, gb, 1000) : 1, e2 = ok ? test_rel_err(a, ga, 1000) : 1;
  for (int i = 0; ok && i < 1000; i++) exact += a[i] == ga[i];
  free(gb);
  free(ga);
  CHECKF(ok, "sched.betas / sched.alphas_cumprod missing or not [1000]");
  /* betas: torch's float32 linspace (one fma) squared, reproduced: <= 3 u per
   * element. alphas_cumprod: the product in double of the float32 factors
   * (1 - b), rounded once (u), plus what a beta error of 3 u b does to it:
   * sum_i 3 u b_i / (1 - b_i) (= 5.4 * 3 u for SD's betas). */
  double sb = 0;
  for (int i = 0; i < 1000; i++) sb += b[i] / (1.0 - b[i]);
  const double tol_b = 3 * TEST_U32, tol_a = TEST_U32 + 3 * TEST_U32 * sb;
  CHECKF(e1 <= tol_b && e2 <= tol_a, "betas rel %g (tol %g), alphas_cumprod rel %g (tol %g)", e1, tol_b, e2, tol_a);
  printf("  alphas_cumprod: %d/1000 bit-exact, rel %.2g\n", exact, e2);
}

/* the scheduler config of golden sampler <s>, from the file's metadata */
static int golden_config(const cd_tensor_file *f, const char *s, cd_sched_config *c) {
  char key[128];
  snprintf(key, sizeof key, "sampler.%s.config", s);
  const char *js = cd_tf_meta(f, key);
  if (!js) return cd_set_error("golden metadata %s missing", key);
  return cd_sched_config_from_json(c, js, key, NULL);
}

/* golden tensor sampler.<s>.<field> (see gold_f32) */
static float *gold_sampler_f32(const cd_tensor_file *f, const char *s, const char *field, size_t *numel) {
  char key[128];
  snprintf(key, sizeof key, "sampler.%s.%s", s, field);
  return gold_f32(f, key, numel);
}

static const char *GOLD_S[4] = {"ddim", "euler", "dpmpp2m", "pndm"};
static const cd_sampler_kind GOLD_K[4] = {CD_SAMPLER_DDIM, CD_SAMPLER_EULER, CD_SAMPLER_DPMPP_2M,
                                          CD_SAMPLER_PNDM};

TEST(schedules_golden) {
  for (int m = 0; m < 2; m++) {
    cd_tensor_file *f;
    OPEN_GOLDEN(f, MODELS[m]);
    for (int s = 0; s < 4; s++) {
      cd_sched_config c;
      if (golden_config(f, GOLD_S[s], &c)) { cd_tensor_file_close(f); FAILF("%s", cd_last_error()); }
      cd_schedule sc;
      if (cd_schedule_make(&c, GOLD_K[s], 10, 0, &sc)) { cd_tensor_file_close(f); FAILF("%s", cd_last_error()); }
      size_t nt = 0, ns = 0, ni = 0;
      float *gt = gold_sampler_f32(f, GOLD_S[s], "timesteps", &nt);
      float *gs = gold_sampler_f32(f, GOLD_S[s], "sigmas", &ns);
      float *gi = gold_sampler_f32(f, GOLD_S[s], "init_noise_sigma", &ni);
      char why[256] = "";
      if (!gt || (int)nt != sc.n) snprintf(why, sizeof why, "timesteps: %d vs golden %zu", sc.n, nt);
      for (int i = 0; !why[0] && i < sc.n; i++)
        if (sc.timesteps[i] != gt[i]) snprintf(why, sizeof why, "timesteps[%d] %g vs %g", i, sc.timesteps[i], gt[i]);
      if (!why[0] && (gs != NULL) != (sc.sigmas != NULL)) snprintf(why, sizeof why, "sigmas presence differs");
      /* sigma = sqrt((1 - acp) / acp), interpolated in log sigma: a few double
       * operations on float32 acp, rounded once here and once in the golden */
      const double tol_s = 4 * TEST_U32;
      if (!why[0] && gs && ((int)ns != sc.n + 1 || test_rel_err(sc.sigmas, gs, ns) > tol_s))
        snprintf(why, sizeof why, "sigmas rel %g", (int)ns == sc.n + 1 ? test_rel_err(sc.sigmas, gs, ns) : -1.0);
      if (!why[0] && (!gi || fabsf(sc.init_noise_sigma - gi[0]) > tol_s * gi[0]))
        snprintf(why, sizeof why, "init_noise_sigma %g vs %g", sc.init_noise_sigma, gi ? gi[0] : -1);
      free(gt);
      free(gs);
      free(gi);
      cd_schedule_free(&sc);
      if (why[0]) { cd_tensor_file_close(f); FAILF("%s %s: %s", MODELS[m], GOLD_S[s], why); }
    }
    cd_tensor_file_close(f);
  }
}

/* ---- replay of the golden trajectories ---- */

typedef struct {
  const float *outs; /* [n_steps, per] golden guided outputs */
  int64_t per;
  int calls, max_calls;
  float *first_x_in; /* copy of the first model input */
  float ts[32];
} replay_ctx;

static int replay_model(void *ctx, const float *x_in, float t, float *out, int64_t n) {
  replay_ctx *r = ctx;
  if (n != r->per) return cd_set_error("replay: n %lld != %lld", (long long)n, (long long)r->per);
  if (r->calls >= r->max_calls) return cd_set_error("replay: more than %d model calls", r->max_calls);
  if (r->calls == 0 && r->first_x_in) memcpy(r->first_x_in, x_in, n * sizeof(float));
  if (r->calls < 32) r->ts[r->calls] = t;
  memcpy(out, r->outs + r->calls * n, n * sizeof(float));
  r->calls++;
  return 0;
}

static void replay_one(const char *model) {
  cd_tensor_file *f;
  OPEN_GOLDEN(f, model);
  size_t nn = 0;
  float *noise = gold_f32(f, "sampler.noise", &nn);
  if (!noise || nn != 256) { cd_tensor_file_close(f); free(noise); FAILF("%s: sampler.noise missing", model); }
  int64_t per = (int64_t)nn;
  for (int s = 0; s < 4; s++) {
    char why[512] = "";
    cd_sched_config c;
    if (golden_config(f, GOLD_S[s], &c)) { cd_tensor_file_close(f); free(noise); FAILF("%s", cd_last_error()); }
    if (c.pred != (strcmp(model, "tiny-sd2") ? CD_PRED_EPS : CD_PRED_V)) snprintf(why, sizeof why, "prediction type from config");
    size_t no = 0, nl = 0, nf = 0;
    float *outs = gold_sampler_f32(f, GOLD_S[s], "guided_model_output", &no);
    float *lat = gold_sampler_f32(f, GOLD_S[s], "latents", &nl);
    float *fin = gold_sampler_f32(f, GOLD_S[s], "final", &nf);
    cd_sample_opts o = {.kind = GOLD_K[s], .steps = 10, .seed = 1};
    cd_sampler sm;
    float *x = malloc(per * sizeof(float)), *xin = malloc(per * sizeof(float));
    if (!why[0] && (!outs || !lat || !fin || nf != (size_t)per)) snprintf(why, sizeof why, "golden tensors missing");
    if (!why[0] && cd_sampler_init(&sm, &c, &o, per)) snprintf(why, sizeof why, "init: %s", cd_last_error());
    else if (!why[0]) {
      int n = sm.sched.n;
      if (no != (size_t)n * per || nl != (size_t)n * per) snprintf(why, sizeof why, "golden has %zu steps, schedule %d", no / per, n);
      cd_sampler_init_latents(&sm, noise, x);
      double worst = 0;
      for (int i = 0; !why[0] && i < n; i++) {
        cd_sampler_scale_input(&sm, i, x, xin);
        if (cd_sampler_step(&sm, i, outs + i * per, x)) { snprintf(why, sizeof why, "step %d: %s", i, cd_last_error()); break; }
        double e = test_rel_err(x, lat + i * per, per);
        if (e > worst) worst = e;
        double tol = step_tol(i + 1); /* the model outputs are the golden's: only the step arithmetic differs */
        if (!(e <= tol)) snprintf(why, sizeof why, "latents[%d] rel err %.3g > %g", i, e, tol);
      }
      double ef = test_rel_err(x, fin, per);
      if (!why[0] && !(ef <= step_tol(n))) snprintf(why, sizeof why, "final rel err %.3g > %.3g", ef, step_tol(n));
      if (!why[0]) printf("  %s %-8s per-step max rel %.2g, final %.2g\n", model, GOLD_S[s], worst, ef);
      /* the whole loop gives the same result and calls the model once per step */
      if (!why[0]) {
        replay_ctx r = {.outs = outs, .per = per, .max_calls = n, .first_x_in = xin};
        memcpy(x, noise, per * sizeof(float));
        if (cd_sample(&c, &o, x, per, replay_model, &r, NULL, NULL)) snprintf(why, sizeof why, "cd_sample: %s", cd_last_error());
        else if (r.calls != n) snprintf(why, sizeof why, "cd_sample made %d model calls, expected %d", r.calls, n);
        else if (test_rel_err(x, fin, per) > step_tol(n)) snprintf(why, sizeof why, "cd_sample final rel %.3g", test_rel_err(x, fin, per));
        for (int i = 0; !why[0] && i < n && i < 32; i++)
          if (r.ts[i] != sm.sched.timesteps[i]) snprintf(why, sizeof why, "model got t=%g at step %d, expected %g", r.ts[i], i, sm.sched.timesteps[i]);
        if (!why[0]) {
          /* first model input: noise * init_noise_sigma / sqrt(sigma^2 + 1) for Euler, the noise otherwise */
          double k = sm.sched.init_noise_sigma;
          if (GOLD_K[s] == CD_SAMPLER_EULER) k /= sqrt((double)sm.sched.sigmas[0] * sm.sched.sigmas[0] + 1);
          float *want = malloc(per * sizeof(float));
          for (int64_t j = 0; j < per; j++) want[j] = (float)(noise[j] * k);
          double e = test_rel_err(xin, want, per);
          if (e > 4 * TEST_U32) snprintf(why, sizeof why, "first model input rel err %.3g (scale %g)", e, k); /* scale: 3 roundings, product: 1 */
          /* SIGMA_MAX has 6 digits (+-5e-5): k = s / sqrt(s^2 + 1) moves by 5e-5 / (s^2 + 1)^1.5 = 1.6e-8 */
          if (GOLD_K[s] == CD_SAMPLER_EULER && fabs(k - SIGMA_MAX / sqrt(SIGMA_MAX * SIGMA_MAX + 1)) > 1.6e-8 + 4 * TEST_U32)
            snprintf(why, sizeof why, "Euler first input scale %g", k);
          free(want);
        }
      }
      cd_sampler_free(&sm);
    }
    free(outs);
    free(lat);
    free(fin);
    free(x);
    free(xin);
    if (why[0]) { cd_tensor_file_close(f); free(noise); FAILF("%s %s: %s", model, GOLD_S[s], why); }
  }
  cd_tensor_file_close(f);
  free(noise);
}

TEST(replay_tiny_sd1) { replay_one("tiny-sd1"); }
TEST(replay_tiny_sd2) { replay_one("tiny-sd2"); }

/* ---- training helpers against the Custom Diffusion golden step ---- */

TEST(add_noise_velocity_golden) {
  for (int m = 0; m < 2; m++) {
    cd_tensor_file *f;
    OPEN_GOLDEN(f, MODELS[m]);
    size_t nl = 0, nn = 0, nt = 0, nno = 0, ntg = 0;
    float *lat = gold_f32(f, "cd.latents", &nl), *noise = gold_f32(f, "cd.noise", &nn);
    float *ts = gold_f32(f, "cd.timesteps", &nt), *noisy = gold_f32(f, "cd.noisy_latents", &nno);
    float *tgt = gold_f32(f, "cd.target", &ntg);
    cd_tensor_file_close(f);
    int ok = lat && noise && ts && noisy && tgt && nt == 4 && nl == 4 * 256 && nn == nl && nno == nl && ntg == nl;
    double e1 = 1, e2 = 1;
    if (ok) {
      cd_sched_config c;
      cd_sched_config_default(&c);
      float ac[1000], *out = malloc(nl * sizeof(float));
      cd_sched_alphas_cumprod(&c, ac);
      int t[4];
      for (int i = 0; i < 4; i++) t[i] = (int)ts[i];
      cd_add_noise(ac, lat, noise, t, 4, 256, out);
      e1 = test_rel_err(out, noisy, nl);
      if (m == 1) {
        cd_get_velocity(ac, lat, noise, t, 4, 256, out);
        e2 = test_rel_err(out, tgt, nl);
      } else {
        e2 = test_rel_err(noise, tgt, nl); /* epsilon target = the noise */
      }
      free(out);
    }
    free(lat);
    free(noise);
    free(ts);
    free(noisy);
    free(tgt);
    CHECKF(ok, "%s: cd.* tensors missing", MODELS[m]);
    /* a x0 + b noise (velocity: a noise - b x0) with float32 a, b: <= 4 roundings
     * each side (ours, the golden's torch float32); relative to |a x0| + |b n|,
     * which in L2 is <= sqrt(2) |a x0 + b n| for independent x0 and noise */
    const double tol = 2 * 4 * sqrt(2.0) * TEST_U32;
    CHECKF(e1 <= tol, "%s: add_noise rel %g", MODELS[m], e1);
    CHECKF(e2 <= tol, "%s: target rel %g", MODELS[m], e2);
  }
}

TEST(config_json_files) {
  for (int m = 0; m < 2; m++) {
    char p[1024], rel[128];
    snprintf(rel, sizeof rel, "%s/scheduler/scheduler_config.json", MODELS[m]);
    NEED_GOLDEN(p, rel);
    FILE *fp = fopen(p, "rb");
    CHECKF(fp, "cannot open %.900s", p);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    cd_sched_config c;
    cd_sampler_kind k;
    CHECK_OK(cd_sched_config_from_json(&c, buf, p, &k));
    CHECK(c.num_train_timesteps == 1000 && c.beta_start == 0.00085 && c.beta_end == 0.012);
    CHECK(c.steps_offset == 1 && c.set_alpha_to_one == 0 && c.spacing == CD_SPACING_DEFAULT);
    CHECK(c.pred == (m ? CD_PRED_V : CD_PRED_EPS));
    CHECK(k == (m ? CD_SAMPLER_DDIM : CD_SAMPLER_PNDM));
  }
  cd_sched_config c;
  CHECK(cd_sched_config_from_json(&c, "{\"beta_schedule\": \"squaredcos_cap_v2\"}", "x.json", NULL) == -1);
  CHECK(strstr(cd_last_error(), "squaredcos_cap_v2") && strstr(cd_last_error(), "x.json"));
  CHECK(cd_sched_config_from_json(&c, "{\"prediction_type\": \"sample\"}", "x.json", NULL) == -1);
  CHECK(cd_sched_config_from_json(&c, "[1,2", "x.json", NULL) == -1);
  CHECK(cd_sched_config_from_json(&c, "{\"num_train_timesteps\": \"many\"}", "x.json", NULL) == -1);
  CHECK_OK(cd_sched_config_from_json(&c, "{\"timestep_spacing\": \"trailing\"}", "x.json", NULL));
  CHECK(c.spacing == CD_SPACING_TRAILING);
}

/* ---- names and argument errors ---- */

TEST(parse_and_errors) {
  cd_sampler_kind k;
  CHECK_OK(cd_sampler_parse("euler_a", &k));
  CHECK(k == CD_SAMPLER_EULER_A);
  CHECK_OK(cd_sampler_parse("plms", &k));
  CHECK(k == CD_SAMPLER_PNDM);
  CHECK_OK(cd_sampler_parse("dpmpp_2m", &k));
  CHECK(k == CD_SAMPLER_DPMPP_2M);
  const char *names[] = {"ddim", "ddpm", "pndm", "euler", "euler_a", "dpmpp_2m",
                         "heun", "dpm2", "dpmpp_2s_a", "dpmpp_sde", "lcm"};
  for (int i = 0; i < 11; i++) {
    CHECK_OK(cd_sampler_parse(names[i], &k));
    CHECK(!strcmp(cd_sampler_name(k), names[i]));
  }
  /* stable-diffusion.cpp and ComfyUI spellings */
  struct { const char *alias; cd_sampler_kind k; } al[] = {
    {"dpm++2m", CD_SAMPLER_DPMPP_2M}, {"dpm++2s_a", CD_SAMPLER_DPMPP_2S_A},
    {"dpmpp_2s_ancestral", CD_SAMPLER_DPMPP_2S_A}, {"dpm_2", CD_SAMPLER_DPM2},
    {"dpm++sde", CD_SAMPLER_DPMPP_SDE}, {"euler_ancestral", CD_SAMPLER_EULER_A}};
  for (size_t i = 0; i < sizeof al / sizeof *al; i++) {
    CHECK_OK(cd_sampler_parse(al[i].alias, &k));
    CHECKF(k == al[i].k, "alias %s", al[i].alias);
  }
  CHECK(cd_sampler_parse("heunpp", &k) == -1);
  CHECKF(strstr(cd_last_error(), "heunpp") != NULL, "error does not name the value: %s", cd_last_error());
  cd_sigma_sched ss;
  CHECK_OK(cd_sigma_sched_parse("exponential", &ss));
  CHECK(ss == CD_SIGMAS_EXPONENTIAL && !strcmp(cd_sigma_sched_name(ss), "exponential"));
  CHECK_OK(cd_sigma_sched_parse("discrete", &ss));
  CHECK(ss == CD_SIGMAS_DISCRETE);
  CHECK(cd_sigma_sched_parse("polyexponential", &ss) == -1 && strstr(cd_last_error(), "polyexponential"));
  CHECK(cd_sampler_parse(NULL, &k) == -1);
  cd_spacing sp;
  CHECK(cd_spacing_parse("weird", &sp) == -1 && strstr(cd_last_error(), "weird"));
  cd_sched_config c;
  cd_sched_config_default(&c);
  cd_schedule s;
  CHECK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 0, 0, &s) == -1);
  CHECK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 1001, 0, &s) == -1);
  CHECK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 10, 1, &s) == -1); /* karras needs a sigma sampler */
  CHECK(strstr(cd_last_error(), "karras") != NULL);
  CHECK(cd_schedule_make(&c, CD_SAMPLER_LCM, 4, CD_SIGMAS_EXPONENTIAL, &s) == -1);
  CHECK(cd_schedule_make(&c, CD_SAMPLER_LCM, 51, 0, &s) == -1); /* more than its 50 distillation steps */
  CHECK(strstr(cd_last_error(), "50") != NULL);
  cd_sampler sm;
  cd_sample_opts o = {.kind = CD_SAMPLER_DDIM, .steps = 10};
  CHECK(cd_sampler_init(&sm, &c, &o, 0) == -1);
  CHECK_OK(cd_sampler_init(&sm, &c, &o, 4));
  float x[4] = {0}, m[4] = {0};
  CHECK(cd_sampler_step(&sm, 10, m, x) == -1);
  CHECK_OK(cd_sampler_step(&sm, 0, m, x));
  CHECK(cd_sampler_step(&sm, 2, m, x) == -1); /* not consecutive */
  cd_sampler_free(&sm);
  cd_sampler_free(&sm); /* twice is fine */
}

/* ---- every sampler and spacing: sane tables; a few step counts ---- */

TEST(schedule_tables_sane) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  cd_sampler_kind ks[] = {CD_SAMPLER_DDIM, CD_SAMPLER_DDPM, CD_SAMPLER_PNDM, CD_SAMPLER_EULER,
                          CD_SAMPLER_EULER_A, CD_SAMPLER_DPMPP_2M, CD_SAMPLER_HEUN, CD_SAMPLER_DPM2,
                          CD_SAMPLER_DPMPP_2S_A, CD_SAMPLER_DPMPP_SDE, CD_SAMPLER_LCM};
  const size_t nks = sizeof ks / sizeof *ks;
  int steps[] = {1, 2, 3, 7, 10, 25, 50, 333, 500};
  for (int sp = 0; sp < 4; sp++)
    for (size_t ki = 0; ki < nks; ki++)
      for (size_t si = 0; si < sizeof steps / sizeof *steps; si++) {
        c.spacing = (cd_spacing)sp;
        cd_schedule s;
        if (ks[ki] == CD_SAMPLER_LCM && steps[si] > 50) continue; /* an error, checked above */
        CHECKF(cd_schedule_make(&c, ks[ki], steps[si], 0, &s) == 0, "%s spacing %d steps %d: %s",
               cd_sampler_name(ks[ki]), sp, steps[si], cd_last_error());
        int two = ks[ki] == CD_SAMPLER_HEUN || ks[ki] == CD_SAMPLER_DPM2 || ks[ki] == CD_SAMPLER_DPMPP_2S_A ||
                  ks[ki] == CD_SAMPLER_DPMPP_SDE;
        int bad = s.n < 1 || s.order != (two ? 2 : 1) || (two && s.n != 2 * steps[si] - 1 && sp != CD_SPACING_TRAILING);
        int o = two ? 2 : 1;
        for (int i = 0; i < s.n; i++) {
          bad |= !(s.timesteps[i] >= 0 && s.timesteps[i] <= 999);
          /* the steps (even evaluations of a second-order sampler) descend */
          if (i % o == 0 && i >= o) bad |= s.timesteps[i] > s.timesteps[i - o];
          if (s.sigmas && i % o == 0) bad |= !(s.sigmas[i] > s.sigmas[i + o < s.n ? i + o : s.n]);
          /* a second evaluation lies below its step's sigma: Heun at the next
           * step's sigma, DPM2/SDE between the two, DPM++ 2S a between the
           * step's sigma and its sigma_down (which may be below the next sigma) */
          if (s.sigmas && i % o == 1) {
            bad |= !(s.sigmas[i] < s.sigmas[i - 1] && s.sigmas[i] > 0 && s.timesteps[i] <= s.timesteps[i - 1]);
            if (ks[ki] == CD_SAMPLER_HEUN) bad |= s.sigmas[i] != s.sigmas[i + 1] || s.timesteps[i] != s.timesteps[i + 1];
            else if (ks[ki] != CD_SAMPLER_DPMPP_2S_A) bad |= !(s.sigmas[i] > s.sigmas[i + 1]);
          }
        }
        bad |= !(s.init_noise_sigma > 0); /* Euler with 1 linspace step starts at sigma(t=0) < 1, as diffusers */
        int n = s.n;
        cd_schedule_free(&s);
        CHECKF(!bad, "%s spacing %d steps %d: bad table (n %d)", cd_sampler_name(ks[ki]), sp, steps[si], n);
      }
  /* 1000 "leading" steps with offset 1 would reach t = 1000 (diffusers fails there with an
   * IndexError): the offset is lowered to 0, so ddpm/ddim run the full chain 999..0, as
   * linspace does; 999 steps keep the offset (999..1), and DPM++ 2M's n+1 points likewise */
  cd_schedule s;
  int ok = 1;
  for (int sp = 0; sp < 2; sp++) {
    c.spacing = sp ? CD_SPACING_LINSPACE : CD_SPACING_DEFAULT;
    CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DDPM, 1000, 0, &s));
    ok &= s.n == 1000 && s.timesteps[0] == 999 && s.timesteps[999] == 0;
    cd_schedule_free(&s);
  }
  CHECK(ok);
  c.spacing = CD_SPACING_DEFAULT;
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 999, 0, &s));
  ok = s.n == 999 && s.timesteps[0] == 999 && s.timesteps[998] == 1;
  cd_schedule_free(&s);
  CHECK(ok);
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DPMPP_2M, 999, 0, &s));
  ok = s.timesteps[0] == 999;
  cd_schedule_free(&s);
  CHECK(ok);
  /* diffusers values for the SD default: 50 DDIM steps = 981, 961, ..., 1 */
  c.spacing = CD_SPACING_DEFAULT;
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 50, 0, &s));
  ok = s.n == 50 && s.timesteps[0] == 981 && s.timesteps[49] == 1;
  cd_schedule_free(&s);
  CHECK(ok);
  /* trailing spacing: 10 steps = 999, 899, ..., 99 */
  c.spacing = CD_SPACING_TRAILING;
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 10, 0, &s));
  ok = s.n == 10 && s.timesteps[0] == 999 && s.timesteps[9] == 99;
  cd_schedule_free(&s);
  CHECK(ok);
  /* Euler linspace with 7 steps keeps fractional timesteps (999, 832.5, ...) */
  c.spacing = CD_SPACING_DEFAULT;
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_EULER, 7, 0, &s));
  ok = s.n == 7 && s.timesteps[1] == 832.5f && s.sigmas[1] > 0;
  cd_schedule_free(&s);
  CHECK(ok);
  /* img2img starting index (diffusers: t_start = steps - int(steps * strength)) */
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 10, 0, &s));
  ok = cd_schedule_begin_for_strength(&s, 1.0) == 0 && cd_schedule_begin_for_strength(&s, 0.75) == 3 &&
       cd_schedule_begin_for_strength(&s, 0.0) == 10;
  cd_schedule_free(&s);
  CHECK(ok);
  /* second order: diffusers' t_start * order, on the even (step) evaluations */
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_HEUN, 10, 0, &s));
  ok = s.n == 19 && cd_schedule_begin_for_strength(&s, 1.0) == 0 && cd_schedule_begin_for_strength(&s, 0.6) == 8 &&
       cd_schedule_begin_for_strength(&s, 0.0) == 19;
  cd_schedule_free(&s);
  CHECK(ok);
}

TEST(karras_sigmas) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  float ac[1000];
  cd_sched_alphas_cumprod(&c, ac);
  double smax = sqrt((1.0 - ac[999]) / ac[999]), smin = sqrt((1.0 - ac[0]) / ac[0]);
  cd_sampler_kind ks[2] = {CD_SAMPLER_EULER, CD_SAMPLER_DPMPP_2M};
  for (int ki = 0; ki < 2; ki++)
    for (int steps = 2; steps <= 30; steps += 7) {
      cd_schedule s;
      CHECK_OK(cd_schedule_make(&c, ks[ki], steps, 1, &s));
      int n = s.n, bad = 0;
      for (int i = 0; i < n; i++) {
        bad |= !(s.sigmas[i] > s.sigmas[i + 1]);
        if (i) bad |= !(s.timesteps[i] <= s.timesteps[i - 1]);
        if (ks[ki] == CD_SAMPLER_DPMPP_2M) bad |= s.timesteps[i] != rintf(s.timesteps[i]);
      }
      double e0 = fabs(s.sigmas[0] - smax) / smax, e1 = fabs(s.sigmas[n - 1] - smin) / smin;
      float t0 = s.timesteps[0], t1 = s.timesteps[n - 1], last = s.sigmas[n], ins = s.init_noise_sigma;
      /* Karras spacing is denser at low noise than the linear schedule: the
       * middle sigma is well below the arithmetic midpoint */
      float mid = s.sigmas[n / 2];
      cd_schedule_free(&s);
      CHECKF(!bad, "%s karras %d steps: not decreasing", cd_sampler_name(ks[ki]), steps);
      /* endpoints: (s^(1/7))^7 in double, rounded once: u (4 u allowed for the
       * reference's own sqrt/divide of float32 acp) */
      CHECKF(e0 < 4 * TEST_U32 && e1 < 4 * TEST_U32, "%s karras endpoints rel %g %g", cd_sampler_name(ks[ki]), e0, e1);
      CHECKF(last == 0, "final sigma %g", last);
      /* t(sigma) interpolates log sigma: an error of 4 u in sigma moves t by
       * 4 u / (slope of log sigma per timestep, >= 0.0061 at t = 999) = 4e-5 */
      const double tol_t = 4 * TEST_U32 / 0.0061 + 999 * TEST_U32;
      CHECKF(fabsf(t0 - 999) < tol_t && fabsf(t1) < tol_t, "timesteps ends %g %g", t0, t1);
      CHECK(steps < 3 || mid < 0.5 * (smax + smin));
      CHECK(ks[ki] == CD_SAMPLER_DPMPP_2M ? ins == 1.0f : fabs(ins - smax) < 4 * TEST_U32 * smax);
    }
}

/* ---- stochastic samplers: same seed, same result; another seed differs ---- */

static int toy_model(void *ctx, const float *x_in, float t, float *out, int64_t n) {
  (void)ctx;
  for (int64_t i = 0; i < n; i++) out[i] = 0.5f * x_in[i] + 0.001f * t * ((i % 3) - 1);
  return 0;
}

static int failing_model(void *ctx, const float *x_in, float t, float *out, int64_t n) {
  int *calls = ctx;
  if (++*calls == 3) return cd_set_error("unet exploded");
  return toy_model(NULL, x_in, t, out, n);
}

static void run_toy(cd_sampler_kind k, float eta, uint64_t seed, float *x, int64_t n, int *rc) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  test_fill_uniform(x, n, -1, 1, 99);
  cd_sample_opts o = {.kind = k, .steps = 8, .eta = eta, .seed = seed};
  *rc = cd_sample(&c, &o, x, n, toy_model, NULL, NULL, NULL);
}

TEST(stochastic_seeded) {
  enum { N = 64 };
  struct { cd_sampler_kind k; float eta; } cases[] = {
    {CD_SAMPLER_EULER_A, 0}, {CD_SAMPLER_DDPM, 0}, {CD_SAMPLER_DDIM, 1.0f}, {CD_SAMPLER_DDIM, 0.5f},
    {CD_SAMPLER_DPMPP_2S_A, 0}, {CD_SAMPLER_DPMPP_SDE, 0}, {CD_SAMPLER_LCM, 0}};
  for (int ci = 0; ci < (int)(sizeof cases / sizeof *cases); ci++) {
    CHECK(cd_sampler_stochastic(cases[ci].k, cases[ci].eta));
    float a[N], b[N], d[N];
    int r1, r2, r3;
    run_toy(cases[ci].k, cases[ci].eta, 7, a, N, &r1);
    run_toy(cases[ci].k, cases[ci].eta, 7, b, N, &r2);
    run_toy(cases[ci].k, cases[ci].eta, 8, d, N, &r3);
    CHECK(r1 == 0 && r2 == 0 && r3 == 0);
    int finite = 1;
    for (int i = 0; i < N; i++) finite &= isfinite(a[i]);
    CHECKF(finite, "%s: non-finite result", cd_sampler_name(cases[ci].k));
    CHECKF(!memcmp(a, b, sizeof a), "%s eta %g: same seed, different result", cd_sampler_name(cases[ci].k), cases[ci].eta);
    /* another seed's noise changes the result by O(eta * sigma): far above any rounding */
    CHECKF(test_rel_err(d, a, N) > 1e-3, "%s eta %g: seed has no effect", cd_sampler_name(cases[ci].k), cases[ci].eta);
  }
  /* DDPM is DDIM with eta 1 */
  float a[N], b[N];
  int r1, r2;
  run_toy(CD_SAMPLER_DDPM, 0, 5, a, N, &r1);
  run_toy(CD_SAMPLER_DDIM, 1.0f, 5, b, N, &r2);
  CHECK(r1 == 0 && r2 == 0 && !memcmp(a, b, sizeof a));
  /* deterministic samplers ignore the seed */
  cd_sampler_kind det[] = {CD_SAMPLER_DDIM, CD_SAMPLER_PNDM, CD_SAMPLER_EULER, CD_SAMPLER_DPMPP_2M,
                           CD_SAMPLER_HEUN, CD_SAMPLER_DPM2};
  for (int i = 0; i < 6; i++) {
    CHECK(!cd_sampler_stochastic(det[i], 0));
    run_toy(det[i], 0, 1, a, N, &r1);
    run_toy(det[i], 0, 2, b, N, &r2);
    CHECKF(r1 == 0 && r2 == 0 && !memcmp(a, b, sizeof a), "%s depends on the seed", cd_sampler_name(det[i]));
  }
}

TEST(model_error_propagates) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  float x[16] = {0};
  int calls = 0;
  cd_sample_opts o = {.kind = CD_SAMPLER_EULER, .steps = 5};
  CHECK(cd_sample(&c, &o, x, 16, failing_model, &calls, NULL, NULL) == -1);
  CHECK(calls == 3);
  CHECKF(strstr(cd_last_error(), "unet exploded") && strstr(cd_last_error(), "step 3"), "%s", cd_last_error());
  o.begin = 99;
  CHECK(cd_sample(&c, &o, x, 16, toy_model, NULL, NULL, NULL) == -1);
}

/* img2img from index begin with x0 = 0: the true noise is eps = x_t /
 * sqrt(1 - ac[t]) at every step, so DDIM ends at x0 exactly with
 * set_alpha_to_one, and at sqrt(1 - ac[0])·noise without it. */
static int zero_x0_model(void *ctx, const float *x_in, float t, float *out, int64_t n) {
  const float *ac = ctx;
  double a = ac[(int)t];
  for (int64_t i = 0; i < n; i++) out[i] = (float)(x_in[i] / sqrt(1.0 - a));
  return 0;
}

TEST(img2img_begin) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  float ac[1000];
  cd_sched_alphas_cumprod(&c, ac);
  enum { N = 32 };
  float x0[N] = {0}, noise[N], x[N], y[N];
  test_fill_uniform(noise, N, -1, 1, 3);
  cd_sample_opts o = {.kind = CD_SAMPLER_DDIM, .steps = 10};
  cd_sampler s;
  CHECK_OK(cd_sampler_init(&s, &c, &o, N));
  int begin = cd_schedule_begin_for_strength(&s.sched, 0.6);
  CHECK(begin == 4);
  cd_sampler_add_noise(&s, begin, x0, noise, x);
  double a = ac[(int)s.sched.timesteps[begin]];
  /* sqrt(1 - a) noise from float32 a: 3 roundings */
  int ok = fabs(x[0] - sqrt(1 - a) * noise[0]) <= 3 * TEST_U32 * fabs(noise[0]);
  cd_sampler_free(&s);
  CHECK(ok);
  memcpy(y, x, sizeof x);
  o.begin = begin;
  CHECK_OK(cd_sample(&c, &o, x, N, zero_x0_model, ac, NULL, NULL));
  float want[N];
  for (int i = 0; i < N; i++) want[i] = (float)(sqrt(1.0 - ac[0]) * noise[i]);
  CHECK_REL(x, want, N, step_tol(o.steps - begin));
  c.set_alpha_to_one = 1;
  CHECK_OK(cd_sample(&c, &o, y, N, zero_x0_model, ac, NULL, NULL));
  double mx = 0;
  for (int i = 0; i < N; i++) mx = fmax(mx, fabs(y[i]));
  /* x0 = 0 is recovered up to the steps' roundings of |x| <= 1 (|noise| <= 1) */
  CHECKF(mx <= step_tol(o.steps - begin), "DDIM img2img did not return to x0 (max |x| %g)", mx);
}


/* ---- k-diffusion samplers on an analytic denoiser ----
 * Data x0 ~ N(mu_e, S^2) per element. In sigma space (x = x0 + sigma*eps) the
 * exact denoiser is D(x, sigma) = (S^2 x + sigma^2 mu) / (S^2 + sigma^2), and
 * the probability-flow ODE dx/dsigma = (x - D)/sigma has the solution
 * (x - mu) / sqrt(S^2 + sigma^2) = const. */

#define GS 1.0 /* S, the data standard deviation */

static double gauss_den(double x, double sigma, double mu) {
  return (GS * GS * x + sigma * sigma * mu) / (GS * GS + sigma * sigma);
}

typedef struct {
  const cd_schedule *sc; /* the sampler's evaluation table */
  const double *mu;
  cd_pred_type pred;
  int calls;
  int bad_t;             /* the model got a timestep other than sc->timesteps[call] */
} gauss_ctx;

/* The model of a sigma sampler: it sees x / sqrt(sigma^2 + 1) and answers eps
 * (or v = alpha*eps - sigma_t*x0 with alpha = 1/sqrt(sigma^2+1), sigma_t = sigma*alpha). */
static int gauss_model(void *ctx, const float *x_in, float t, float *out, int64_t n) {
  gauss_ctx *g = ctx;
  if (g->calls >= g->sc->n) return cd_set_error("gauss model: more than %d calls", g->sc->n);
  if (t != g->sc->timesteps[g->calls]) g->bad_t = 1;
  double sg = g->sc->sigmas[g->calls++], k = sqrt(sg * sg + 1);
  for (int64_t i = 0; i < n; i++) {
    double x = x_in[i] * k, d = gauss_den(x, sg, g->mu[i]), eps = (x - d) / sg;
    out[i] = (float)(g->pred == CD_PRED_V ? (eps - sg * d) / k : eps);
  }
  return 0;
}

static void ref_ancestral(double s, double nx, double *down, double *up) {
  double u = sqrt(nx * nx * (s * s - nx * nx) / (s * s));
  if (u > nx) u = nx;
  *up = u;
  *down = sqrt(nx * nx - u * u);
}

/* k-diffusion's sample_euler / sample_heun / sample_dpm_2 /
 * sample_dpmpp_2s_ancestral / sample_dpmpp_sde (churn 0, eta 1, r 1/2), written
 * from the published rules in double over the step sigmas sig[0..len]
 * (sig[len] = 0), stopping after step `stop` (len: the whole loop). Noise:
 * the same N(0,1) stream as the C sampler (draws per step: 2S a one after
 * its second evaluation, SDE one per evaluation; none on the last step). */
static void ref_sample(cd_sampler_kind k, const double *sig, int len, int stop, const double *mu,
                       uint64_t seed, double *x, int64_t n) {
  cd_rng rng;
  cd_rng_seed(&rng, seed);
  float *z1 = malloc(n * sizeof(float)), *z2 = malloc(n * sizeof(float));
  double *den = malloc(n * sizeof(double)), *x2 = malloc(n * sizeof(double));
  for (int i = 0; i < stop; i++) {
    double s = sig[i], sn = sig[i + 1];
    for (int64_t e = 0; e < n; e++) den[e] = gauss_den(x[e], s, mu[e]);
    if (sn == 0 || k == CD_SAMPLER_EULER) {
      for (int64_t e = 0; e < n; e++) x[e] += (x[e] - den[e]) / s * (sn - s);
      continue;
    }
    if (k == CD_SAMPLER_HEUN) {
      for (int64_t e = 0; e < n; e++) {
        double d = (x[e] - den[e]) / s, xx = x[e] + d * (sn - s);
        double d2 = (xx - gauss_den(xx, sn, mu[e])) / sn;
        x[e] += (d + d2) / 2 * (sn - s);
      }
    } else if (k == CD_SAMPLER_DPM2) {
      double sm = exp(0.5 * (log(s) + log(sn)));
      for (int64_t e = 0; e < n; e++) {
        double d = (x[e] - den[e]) / s, xx = x[e] + d * (sm - s);
        double d2 = (xx - gauss_den(xx, sm, mu[e])) / sm;
        x[e] += d2 * (sn - s);
      }
    } else if (k == CD_SAMPLER_DPMPP_2S_A) {
      double down, up;
      ref_ancestral(s, sn, &down, &up);
      double t = -log(s), tn = -log(down), h = tn - t, sm = exp(-(t + h / 2));
      for (int64_t e = 0; e < n; e++) {
        double xx = sm / s * x[e] - expm1(-h / 2) * den[e];
        x[e] = down / s * x[e] - expm1(-h) * gauss_den(xx, sm, mu[e]);
      }
      cd_rng_fill_normal(&rng, z1, (size_t)n);
      for (int64_t e = 0; e < n; e++) x[e] += z1[e] * up;
    } else { /* DPM++ SDE */
      double t = -log(s), tn = -log(sn), h = tn - t, sm = exp(-(t + h / 2)), d1, u1, d2, u2;
      ref_ancestral(s, sm, &d1, &u1);
      ref_ancestral(s, sn, &d2, &u2);
      cd_rng_fill_normal(&rng, z1, (size_t)n);
      cd_rng_fill_normal(&rng, z2, (size_t)n);
      for (int64_t e = 0; e < n; e++) {
        /* Brownian increments: W(sm)-W(s) = sqrt(s-sm) z1, W(sn)-W(sm) = sqrt(sm-sn) z2 */
        double w1 = z1[e], w2 = (sqrt(s - sm) * z1[e] + sqrt(sm - sn) * z2[e]) / sqrt(s - sn);
        double s_ = -log(d1);
        x2[e] = exp(-s_) / s * x[e] - expm1(t - s_) * den[e] + w1 * u1;
        double dd = gauss_den(x2[e], sm, mu[e]); /* fac = 1: only the second x0 counts */
        double tn_ = -log(d2);
        x[e] = exp(-tn_) / s * x[e] - expm1(t - tn_) * dd + w2 * u2;
      }
    }
  }
  free(z1);
  free(z2);
  free(den);
  free(x2);
}

/* the step sigmas of a schedule: the even evaluations of a second-order one */
static int step_sigmas(const cd_schedule *sc, double *sig) {
  int len = sc->order == 2 ? (sc->n + 1) / 2 : sc->n;
  for (int i = 0; i < len; i++) sig[i] = sc->sigmas[i * sc->order];
  sig[len] = 0;
  return len;
}

/* Runs sampler k through cd_sample's step API on the Gaussian model from x
 * (at the schedule's first sigma), stopping after step `stop` of `len`. */
static int run_gauss(cd_sampler_kind k, int steps, int sig, cd_pred_type pred, const double *mu,
                     const float *x_init, float *x, int64_t n, int stop_early, char *why, size_t cap) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  c.pred = pred;
  cd_sample_opts o = {.kind = k, .steps = steps, .sigma_sched = sig, .seed = 77};
  cd_sampler sm;
  if (cd_sampler_init(&sm, &c, &o, n)) { snprintf(why, cap, "init: %s", cd_last_error()); return -1; }
  gauss_ctx g = {.sc = &sm.sched, .mu = mu, .pred = pred};
  float *xin = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
  memcpy(x, x_init, n * sizeof(float));
  int N = sm.sched.n - (stop_early ? 1 : 0), rc = 0;
  for (int i = 0; i < N && !rc; i++) {
    cd_sampler_scale_input(&sm, i, x, xin);
    rc = gauss_model(&g, xin, sm.sched.timesteps[i], out, n) || cd_sampler_step(&sm, i, out, x);
  }
  if (rc) snprintf(why, cap, "%s: %s", cd_sampler_name(k), cd_last_error());
  free(xin);
  free(out);
  cd_sampler_free(&sm);
  return rc;
}

enum { GN = 64 };

static void gauss_setup(double *mu, float *z) {
  test_fill_uniform(z, GN, -1, 1, 5);
  for (int i = 0; i < GN; i++) mu[i] = 0.5 * z[i];
  cd_rng r;
  cd_rng_seed(&r, 6);
  cd_rng_fill_normal(&r, z, GN);
}

/* The C samplers against the double-precision reference of the published
 * rule: every sampler, both prediction types, all three sigma schedules. */
TEST(second_order_vs_reference) {
  cd_sampler_kind ks[] = {CD_SAMPLER_EULER, CD_SAMPLER_HEUN, CD_SAMPLER_DPM2, CD_SAMPLER_DPMPP_2S_A,
                          CD_SAMPLER_DPMPP_SDE};
  double mu[GN];
  float z[GN], x0[GN], x[GN];
  gauss_setup(mu, z);
  for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
    for (int sig = 0; sig < 3; sig++)
      for (int pv = 0; pv < 2; pv++) {
        cd_sched_config c;
        cd_sched_config_default(&c);
        cd_schedule sc;
        int steps = 12;
        CHECK_OK(cd_schedule_make(&c, ks[ki], steps, sig, &sc));
        double sig_d[64], ref[GN];
        int len = step_sigmas(&sc, sig_d);
        float s0 = sc.sigmas[0];
        int n_eval = sc.n;
        cd_schedule_free(&sc);
        CHECK(len == steps && n_eval == (ks[ki] == CD_SAMPLER_EULER ? steps : 2 * steps - 1));
        for (int i = 0; i < GN; i++) x0[i] = (float)(mu[i] + sqrt(GS * GS + (double)s0 * s0) * z[i]);
        char why[256] = "";
        if (run_gauss(ks[ki], steps, sig, pv ? CD_PRED_V : CD_PRED_EPS, mu, x0, x, GN, 0, why, sizeof why))
          FAILF("%s", why);
        for (int i = 0; i < GN; i++) ref[i] = x0[i];
        ref_sample(ks[ki], sig_d, len, len, mu, 77, ref, GN);
        double num = 0, den = 0;
        for (int i = 0; i < GN; i++) {
          num += (x[i] - ref[i]) * (x[i] - ref[i]);
          den += ref[i] * ref[i];
        }
        /* n_eval float32 steps against the same rule in double */
        double e = sqrt(num / den);
        CHECKF(e <= step_tol(n_eval), "%s %s %s: rel err vs reference %.3g", cd_sampler_name(ks[ki]),
               cd_sigma_sched_name((cd_sigma_sched)sig), pv ? "v" : "eps", e);
      }
}

/* Convergence order on the exact ODE solution at the last nonzero sigma (the
 * final Euler step to sigma 0 is the same for all and is left out): error
 * ratio between N and 2N steps ~2 for Euler, ~4 for Heun and DPM2. */
TEST(convergence_order) {
  struct { cd_sampler_kind k; double order; } cs[] = {
    {CD_SAMPLER_EULER, 1}, {CD_SAMPLER_HEUN, 2}, {CD_SAMPLER_DPM2, 2}};
  double mu[GN];
  float z[GN], x0[GN], x[GN];
  gauss_setup(mu, z);
  for (size_t ci = 0; ci < sizeof cs / sizeof *cs; ci++)
    for (int sig = 0; sig < 3; sig++) {
      double err[2], err_ref[2];
      for (int r = 0; r < 2; r++) {
        int steps = 32 << r;
        cd_sched_config c;
        cd_sched_config_default(&c);
        cd_schedule sc;
        CHECK_OK(cd_schedule_make(&c, cs[ci].k, steps, sig, &sc));
        double sg[160], ref[GN];
        int len = step_sigmas(&sc, sg);
        cd_schedule_free(&sc);
        double smax = sg[0], smin = sg[len - 1];
        for (int i = 0; i < GN; i++) x0[i] = (float)(mu[i] + sqrt(GS * GS + smax * smax) * z[i]);
        char why[256] = "";
        if (run_gauss(cs[ci].k, steps, sig, CD_PRED_EPS, mu, x0, x, GN, 1, why, sizeof why)) FAILF("%s", why);
        for (int i = 0; i < GN; i++) ref[i] = x0[i];
        ref_sample(cs[ci].k, sg, len, len - 1, mu, 0, ref, GN);
        double e = 0, er = 0;
        for (int i = 0; i < GN; i++) {
          double exact = mu[i] + ((double)x0[i] - mu[i]) * sqrt(GS * GS + smin * smin) / sqrt(GS * GS + smax * smax);
          e = fmax(e, fabs(x[i] - exact));
          er = fmax(er, fabs(ref[i] - exact));
        }
        err[r] = e;
        err_ref[r] = er;
      }
      double p = log2(err[0] / err[1]), pr = log2(err_ref[0] / err_ref[1]);
      printf("  %-5s %-11s error %.3g -> %.3g: order %.2f (reference %.2f)\n", cd_sampler_name(cs[ci].k),
             cd_sigma_sched_name((cd_sigma_sched)sig), err[0], err[1], p, pr);
      /* DPM2 steps in log sigma: on the discrete table the last steps (sigma
       * 0.03 -> 0.2 at 32 steps) stay large in log sigma, so 32 -> 64 steps is
       * not yet asymptotic there (observed 1.6); first order would give ~1. */
      double lo = cs[ci].k == CD_SAMPLER_DPM2 && sig == CD_SIGMAS_DISCRETE ? 1.45 : cs[ci].order - 0.25;
      CHECKF(p > lo && p < cs[ci].order + 0.25 && pr > lo && pr < cs[ci].order + 0.25,
             "%s %s: observed order %.2f (reference %.2f), expected %g", cd_sampler_name(cs[ci].k),
             cd_sigma_sched_name((cd_sigma_sched)sig), p, pr, cs[ci].order);
    }
}

/* The stochastic samplers keep the data law: started from N(0, S^2 + sigma_max^2)
 * with the exact denoiser of N(0, S^2) data they must end at N(0, S^2). */
TEST(ancestral_marginals) {
  enum { M = 40000 };
  cd_sampler_kind ks[] = {CD_SAMPLER_EULER_A, CD_SAMPLER_DPMPP_2S_A, CD_SAMPLER_DPMPP_SDE};
  /* steps that bring each one's discretisation bias of the variance under 2%
   * (observed: Euler a -19% at 30 steps, -7% at 100, -1.4% at 300; DPM++ 2S a
   * -2.2% at 30, -0.6% at 100; DPM++ SDE 0.0% at 30) */
  const int ksteps[] = {300, 100, 30};
  double *mu = calloc(M, sizeof(double));
  float *x0 = malloc(M * sizeof(float)), *x = malloc(M * sizeof(float));
  cd_rng r;
  cd_rng_seed(&r, 9);
  cd_rng_fill_normal(&r, x0, M);
  for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
    cd_sched_config c;
    cd_sched_config_default(&c);
    cd_schedule sc;
    int steps = ksteps[ki];
    CHECK_OK(cd_schedule_make(&c, ks[ki], steps, CD_SIGMAS_KARRAS, &sc));
    double smax = sc.sigmas[0];
    cd_schedule_free(&sc);
    float *xs = malloc(M * sizeof(float));
    for (int i = 0; i < M; i++) xs[i] = (float)(x0[i] * sqrt(GS * GS + smax * smax));
    char why[256] = "";
    int rc = run_gauss(ks[ki], steps, CD_SIGMAS_KARRAS, CD_PRED_EPS, mu, xs, x, M, 0, why, sizeof why);
    free(xs);
    if (rc) { free(mu); free(x0); free(x); FAILF("%s", why); }
    double m = 0, v = 0;
    for (int i = 0; i < M; i++) m += x[i];
    m /= M;
    for (int i = 0; i < M; i++) v += (x[i] - m) * (x[i] - m);
    v /= M - 1;
    printf("  %-10s final mean %+.4f variance %.4f (data 0, %.4f)\n", cd_sampler_name(ks[ki]), m, v, GS * GS);
    /* standard errors: mean S/sqrt(M) = 0.005, variance S^2 sqrt(2/M) = 0.007;
     * 5 of them, plus 2% for the discretisation */
    if (!(fabs(m) < 5 * GS / sqrt(M) && fabs(v / (GS * GS) - 1) < 5 * sqrt(2.0 / M) + 0.02)) {
      free(mu); free(x0); free(x);
      FAILF("%s: final mean %g variance %g, data N(0, %g)", cd_sampler_name(ks[ki]), m, v, GS * GS);
    }
  }
  free(mu);
  free(x0);
  free(x);
}

/* LCMScheduler: the 4-step table of the LCM papers and one step by its rule */
TEST(lcm_schedule_and_step) {
  cd_sched_config c;
  cd_sched_config_default(&c);
  cd_schedule s;
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_LCM, 4, 0, &s));
  int ok = s.n == 4 && s.timesteps[0] == 999 && s.timesteps[1] == 759 && s.timesteps[2] == 499 &&
           s.timesteps[3] == 259 && !s.sigmas && s.init_noise_sigma == 1.0f;
  cd_schedule_free(&s);
  CHECK(ok);
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_LCM, 50, 0, &s));
  ok = s.n == 50 && s.timesteps[0] == 999 && s.timesteps[49] == 19;
  cd_schedule_free(&s);
  CHECK(ok);
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_LCM, 1, 0, &s));
  ok = s.n == 1 && s.timesteps[0] == 999;
  cd_schedule_free(&s);
  CHECK(ok);
  /* two steps on a fixed model output, against the rule in double:
   * x0 = (x - sqrt(1-a) m)/sqrt(a) (eps) or sqrt(a) x - sqrt(1-a) m (v);
   * den = c_out x0 + c_skip x with c_skip = 0.25/((10t)^2 + 0.25),
   * c_out = 10t/sqrt((10t)^2 + 0.25); x <- sqrt(a_prev) den + sqrt(1-a_prev) z
   * except on the last step (x <- den). */
  float ac[1000];
  cd_sched_alphas_cumprod(&c, ac);
  enum { N = 16 };
  for (int pv = 0; pv < 2; pv++) {
    c.pred = pv ? CD_PRED_V : CD_PRED_EPS;
    float x[N], m[N], z[N];
    double ref[N];
    test_fill_uniform(x, N, -1, 1, 31);
    test_fill_uniform(m, N, -1, 1, 32);
    for (int i = 0; i < N; i++) ref[i] = x[i];
    cd_sample_opts o = {.kind = CD_SAMPLER_LCM, .steps = 2, .seed = 5};
    cd_sampler sm;
    CHECK_OK(cd_sampler_init(&sm, &c, &o, N));
    int ts[2] = {(int)sm.sched.timesteps[0], (int)sm.sched.timesteps[1]};
    cd_rng r;
    cd_rng_seed(&r, 5);
    for (int st = 0; st < 2; st++) {
      CHECK_OK(cd_sampler_step(&sm, st, m, x));
      double a = ac[ts[st]], ap = ac[ts[st ? 1 : 1]], tt = 10.0 * ts[st];
      double cs = 0.25 / (tt * tt + 0.25), co = tt / sqrt(tt * tt + 0.25);
      if (st == 0) cd_rng_fill_normal(&r, z, N);
      for (int i = 0; i < N; i++) {
        double x0 = pv ? sqrt(a) * ref[i] - sqrt(1 - a) * m[i] : (ref[i] - sqrt(1 - a) * m[i]) / sqrt(a);
        double den = co * x0 + cs * ref[i];
        ref[i] = st == 1 ? den : sqrt(ap) * den + sqrt(1 - ap) * z[i];
      }
    }
    cd_sampler_free(&sm);
    CHECKF(ts[0] == 999 && ts[1] == 499, "lcm 2 steps: %d %d", ts[0], ts[1]);
    double num = 0, den = 0;
    for (int i = 0; i < N; i++) {
      num += (x[i] - ref[i]) * (x[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    CHECKF(sqrt(num / den) <= step_tol(2), "lcm %s: rel err %.3g vs the rule", pv ? "v" : "eps", sqrt(num / den));
  }
}

int main(void) {
  RUN(alphas_cumprod_golden);
  RUN(schedules_golden);
  RUN(replay_tiny_sd1);
  RUN(replay_tiny_sd2);
  RUN(add_noise_velocity_golden);
  RUN(config_json_files);
  RUN(parse_and_errors);
  RUN(schedule_tables_sane);
  RUN(karras_sigmas);
  RUN(stochastic_seeded);
  RUN(model_error_propagates);
  RUN(img2img_begin);
  RUN(second_order_vs_reference);
  RUN(convergence_order);
  RUN(ancestral_marginals);
  RUN(lcm_schedule_and_step);
  return test_summary();
}
