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
  CHECKF(e1 <= 1e-6 && e2 <= 1e-6, "betas rel %g, alphas_cumprod rel %g", e1, e2);
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
      if (!why[0] && gs && ((int)ns != sc.n + 1 || test_rel_err(sc.sigmas, gs, ns) > 1e-6))
        snprintf(why, sizeof why, "sigmas rel %g", (int)ns == sc.n + 1 ? test_rel_err(sc.sigmas, gs, ns) : -1.0);
      if (!why[0] && (!gi || fabsf(sc.init_noise_sigma - gi[0]) > 1e-6f * gi[0]))
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
        double tol = 1e-5; /* README: 1e-4 / 1e-3; this code reaches ~1e-7 */
        if (!(e <= tol)) snprintf(why, sizeof why, "latents[%d] rel err %.3g > %g", i, e, tol);
      }
      double ef = test_rel_err(x, fin, per);
      if (!why[0] && !(ef <= 1e-5)) snprintf(why, sizeof why, "final rel err %.3g", ef);
      if (!why[0]) printf("  %s %-8s per-step max rel %.2g, final %.2g\n", model, GOLD_S[s], worst, ef);
      /* the whole loop gives the same result and calls the model once per step */
      if (!why[0]) {
        replay_ctx r = {.outs = outs, .per = per, .max_calls = n, .first_x_in = xin};
        memcpy(x, noise, per * sizeof(float));
        if (cd_sample(&c, &o, x, per, replay_model, &r, NULL, NULL)) snprintf(why, sizeof why, "cd_sample: %s", cd_last_error());
        else if (r.calls != n) snprintf(why, sizeof why, "cd_sample made %d model calls, expected %d", r.calls, n);
        else if (test_rel_err(x, fin, per) > 1e-3) snprintf(why, sizeof why, "cd_sample final rel %.3g", test_rel_err(x, fin, per));
        for (int i = 0; !why[0] && i < n && i < 32; i++)
          if (r.ts[i] != sm.sched.timesteps[i]) snprintf(why, sizeof why, "model got t=%g at step %d, expected %g", r.ts[i], i, sm.sched.timesteps[i]);
        if (!why[0]) {
          /* first model input: noise * init_noise_sigma / sqrt(sigma^2 + 1) for Euler, the noise otherwise */
          double k = sm.sched.init_noise_sigma;
          if (GOLD_K[s] == CD_SAMPLER_EULER) k /= sqrt((double)sm.sched.sigmas[0] * sm.sched.sigmas[0] + 1);
          float *want = malloc(per * sizeof(float));
          for (int64_t j = 0; j < per; j++) want[j] = (float)(noise[j] * k);
          double e = test_rel_err(xin, want, per);
          if (e > 1e-6) snprintf(why, sizeof why, "first model input rel err %.3g (scale %g)", e, k);
          if (GOLD_K[s] == CD_SAMPLER_EULER && fabs(k - 14.6146 / sqrt(14.6146 * 14.6146 + 1)) > 1e-4)
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
    CHECKF(e1 <= 1e-6, "%s: add_noise rel %g", MODELS[m], e1);
    CHECKF(e2 <= 1e-6, "%s: target rel %g", MODELS[m], e2);
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
  const char *names[] = {"ddim", "ddpm", "pndm", "euler", "euler_a", "dpmpp_2m"};
  for (int i = 0; i < 6; i++) {
    CHECK_OK(cd_sampler_parse(names[i], &k));
    CHECK(!strcmp(cd_sampler_name(k), names[i]));
  }
  CHECK(cd_sampler_parse("heun", &k) == -1);
  CHECKF(strstr(cd_last_error(), "heun") != NULL, "error does not name the value: %s", cd_last_error());
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
                          CD_SAMPLER_EULER_A, CD_SAMPLER_DPMPP_2M};
  int steps[] = {1, 2, 3, 7, 10, 25, 50, 333, 500};
  for (int sp = 0; sp < 4; sp++)
    for (size_t ki = 0; ki < 6; ki++)
      for (size_t si = 0; si < sizeof steps / sizeof *steps; si++) {
        c.spacing = (cd_spacing)sp;
        cd_schedule s;
        CHECKF(cd_schedule_make(&c, ks[ki], steps[si], 0, &s) == 0, "%s spacing %d steps %d: %s",
               cd_sampler_name(ks[ki]), sp, steps[si], cd_last_error());
        int bad = s.n < 1;
        for (int i = 0; i < s.n; i++) {
          bad |= !(s.timesteps[i] >= 0 && s.timesteps[i] <= 999);
          if (i) bad |= s.timesteps[i] > s.timesteps[i - 1];
          if (s.sigmas) bad |= !(s.sigmas[i] > s.sigmas[i + 1]);
        }
        bad |= !(s.init_noise_sigma > 0); /* Euler with 1 linspace step starts at sigma(t=0) < 1, as diffusers */
        int n = s.n;
        cd_schedule_free(&s);
        CHECKF(!bad, "%s spacing %d steps %d: bad table (n %d)", cd_sampler_name(ks[ki]), sp, steps[si], n);
      }
  /* 1000 "leading" steps with offset 1 reach t = 1000: diffusers fails there too */
  cd_schedule s;
  c.spacing = CD_SPACING_DEFAULT;
  CHECK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 1000, 0, &s) == -1);
  c.spacing = CD_SPACING_LINSPACE;
  CHECK_OK(cd_schedule_make(&c, CD_SAMPLER_DDIM, 1000, 0, &s));
  int ok = s.n == 1000 && s.timesteps[0] == 999 && s.timesteps[999] == 0;
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
      CHECKF(e0 < 1e-6 && e1 < 1e-6, "%s karras endpoints rel %g %g", cd_sampler_name(ks[ki]), e0, e1);
      CHECKF(last == 0, "final sigma %g", last);
      CHECKF(fabsf(t0 - 999) < 1e-3 && fabsf(t1) < 1e-3, "timesteps ends %g %g", t0, t1);
      CHECK(steps < 3 || mid < 0.5 * (smax + smin));
      CHECK(ks[ki] == CD_SAMPLER_DPMPP_2M ? ins == 1.0f : fabs(ins - smax) < 1e-5 * smax);
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
    {CD_SAMPLER_EULER_A, 0}, {CD_SAMPLER_DDPM, 0}, {CD_SAMPLER_DDIM, 1.0f}, {CD_SAMPLER_DDIM, 0.5f}};
  for (int ci = 0; ci < 4; ci++) {
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
    CHECKF(test_rel_err(d, a, N) > 1e-3, "%s eta %g: seed has no effect", cd_sampler_name(cases[ci].k), cases[ci].eta);
  }
  /* DDPM is DDIM with eta 1 */
  float a[N], b[N];
  int r1, r2;
  run_toy(CD_SAMPLER_DDPM, 0, 5, a, N, &r1);
  run_toy(CD_SAMPLER_DDIM, 1.0f, 5, b, N, &r2);
  CHECK(r1 == 0 && r2 == 0 && !memcmp(a, b, sizeof a));
  /* deterministic samplers ignore the seed */
  cd_sampler_kind det[] = {CD_SAMPLER_DDIM, CD_SAMPLER_PNDM, CD_SAMPLER_EULER, CD_SAMPLER_DPMPP_2M};
  for (int i = 0; i < 4; i++) {
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
  int ok = fabsf(x[0] - (float)(sqrt(1 - a) * noise[0])) < 1e-6f;
  cd_sampler_free(&s);
  CHECK(ok);
  memcpy(y, x, sizeof x);
  o.begin = begin;
  CHECK_OK(cd_sample(&c, &o, x, N, zero_x0_model, ac, NULL, NULL));
  float want[N];
  for (int i = 0; i < N; i++) want[i] = (float)(sqrt(1.0 - ac[0]) * noise[i]);
  CHECK_REL(x, want, N, 1e-5);
  c.set_alpha_to_one = 1;
  CHECK_OK(cd_sample(&c, &o, y, N, zero_x0_model, ac, NULL, NULL));
  double mx = 0;
  for (int i = 0; i < N; i++) mx = fmax(mx, fabs(y[i]));
  CHECKF(mx < 1e-5, "DDIM img2img did not return to x0 (max |x| %g)", mx);
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
  return test_summary();
}
