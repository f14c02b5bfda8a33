/* test_sample_golden.c - the whole txt2img path against diffusers'
 * StableDiffusionPipeline loop (golden README section 5): tokenizer, text
 * encoder, UNet with classifier-free guidance 6 (uncond first), and the DDIM,
 * PNDM, Euler and DPM++ 2M samplers over 10 steps, from the golden noise.
 * Tolerances: the golden README's, 1e-3 on the final latents (sampler
 * outputs after 10 steps with guidance 6), 1e-4 on the text conditioning (a
 * forward pass); both are relative L2 errors over the whole tensor. */
#define TOL_FORWARD 1e-4 /* golden README: forward passes */
#define TOL_FINAL 1e-3   /* golden README: sampler outputs after 10 steps */
#include "diffusion/pipeline.h"
#include "test.h"

static const struct {
  const char *model, *golden, *vocab;
} models[] = {
    {"tiny-sd1", "golden_tiny-sd1.safetensors", NULL},
    {"small4-sd1_original.safetensors", "golden_small4-sd1.safetensors", "bpe_simple_vocab_16e6.txt.gz"},
    {"tiny-sd2", "golden_tiny-sd2.safetensors", NULL},
};
static const struct {
  const char *golden_name;
  cd_sampler_kind kind;
} samplers[] = {{"ddim", CD_SAMPLER_DDIM}, {"pndm", CD_SAMPLER_PNDM}, {"euler", CD_SAMPLER_EULER}, {"dpmpp2m", CD_SAMPLER_DPMPP_2M}};

static void run_model(int mi) {
  char mp[1024], gp[1024], vp[1024];
  NEED_GOLDEN(mp, models[mi].model);
  NEED_GOLDEN(gp, models[mi].golden);
  cd_load_opts lo = {0};
  if (models[mi].vocab) {
    NEED_GOLDEN(vp, models[mi].vocab);
    lo.vocab = vp;
  }
  cd_sd_model *m = NULL;
  cd_tensor_file *gf = NULL;
  float *noise = NULL, *ref = NULL, *lat = NULL, *ctx = NULL;
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  if (cd_safetensors_open(gp, &gf)) { cd_sd_free(m); FAILF("%s", cd_last_error()); }
  int64_t n;
  /* text conditioning from the prompt strings, through our tokenizer */
  const char *prompts[2] = {"", "photo of a cat"};
  int64_t per = 77 * (int64_t)m->unet.cfg.context_dim;
  ctx = cd_malloc(2 * per * sizeof(float));
  if (cd_encode_prompts(m, prompts, 2, ctx)) { snprintf(test_msg, sizeof test_msg, "%s", cd_last_error()); goto fail; }
  ref = test_read_f32(gf, "sampler.uncond", &n);
  if (!ref || test_rel_err(ctx, ref, per) > TOL_FORWARD) { snprintf(test_msg, sizeof test_msg, "%s uncond context differs", models[mi].model); goto fail; }
  free(ref);
  ref = test_read_f32(gf, "sampler.cond", &n);
  if (!ref || test_rel_err(ctx + per, ref, per) > TOL_FORWARD) { snprintf(test_msg, sizeof test_msg, "%s cond context differs", models[mi].model); goto fail; }
  free(ref);
  ref = NULL;
  noise = test_read_f32(gf, "sampler.noise", &n);
  if (!noise) goto fail;
  lat = cd_malloc(n * sizeof(float));
  for (size_t si = 0; si < sizeof samplers / sizeof samplers[0]; si++) {
    cd_gen_opts o = {.prompt = "photo of a cat", .negative = "", .cfg = 6.0f, .width = 64, .height = 64, .n = 1,
                     .init_latents = noise, .quiet = 1};
    o.s.kind = samplers[si].kind;
    o.s.steps = 10;
    if (cd_generate_latents(m, &o, lat)) { snprintf(test_msg, sizeof test_msg, "%s", cd_last_error()); goto fail; }
    char nm[96];
    snprintf(nm, sizeof nm, "sampler.%s.final", samplers[si].golden_name);
    int64_t k;
    ref = test_read_f32(gf, nm, &k);
    if (!ref) goto fail;
    double e = test_rel_err(lat, ref, n);
    free(ref);
    ref = NULL;
    if (e > TOL_FINAL) { snprintf(test_msg, sizeof test_msg, "%s %s final latents: rel err %.3g > %g", models[mi].model, nm, e, TOL_FINAL); goto fail; }
  }
  goto done;
fail:
  test_failed_flag = 1;
done:
  free(noise); free(ref); free(lat); free(ctx);
  cd_tensor_file_close(gf);
  cd_sd_free(m);
}

TEST(trajectories_tiny_sd1) { run_model(0); }
TEST(trajectories_small4_sd1_single_file) { run_model(1); }
TEST(trajectories_tiny_sd2_vpred) { run_model(2); }

/* Sizes that are multiples of 8 but not of the UNet's downsampling (diffusers
 * accepts them: its upsamplers are sized to the skip connections). 72x56 is a
 * 9x7 latent: 5x4, 3x2 (and 2x1 on small4) below. The run must give finite,
 * non-constant, reproducible latents and decode to an image of that size. */
static void odd_sizes(int mi) {
  char mp[1024], vp[1024];
  if (test_golden_path(mp, sizeof mp, models[mi].model)) SKIP("golden folder not found");
  cd_load_opts lo = {0};
  if (models[mi].vocab) {
    if (test_golden_path(vp, sizeof vp, models[mi].vocab)) SKIP("golden vocabulary not found");
    lo.vocab = vp;
  }
  cd_sd_model *m = NULL;
  CHECK_OK(cd_sd_load(mp, &lo, &m));
  const int sizes[][2] = {{72, 56}, {40, 24}, {8, 8}};
  for (int si = 0; si < 3; si++) {
    int W = sizes[si][0], H = sizes[si][1], h = H / 8, w = W / 8;
    int64_t per = 4 * (int64_t)h * w;
    float *a = cd_malloc(2 * per * sizeof(float)), *b = cd_malloc(2 * per * sizeof(float));
    float *img = cd_malloc(2 * 3 * (size_t)H * W * sizeof(float));
    cd_gen_opts o = {.prompt = "photo of a cat", .negative = "", .cfg = 6.0f, .width = W, .height = H, .n = 2, .quiet = 1};
    o.s.kind = CD_SAMPLER_EULER;
    o.s.steps = 3;
    o.s.seed = 3;
    int rc = cd_generate_latents(m, &o, a) || cd_generate_latents(m, &o, b) || cd_decode_latents(m, a, 2, h, w, 0, img);
    char why[512] = "";
    if (rc) snprintf(why, sizeof why, "%dx%d: %s", W, H, cd_last_error());
    int finite = 1;
    double lo_ = 1e30, hi = -1e30;
    for (int64_t i = 0; !rc && i < 2 * per; i++) {
      finite &= isfinite(a[i]);
      lo_ = fmin(lo_, a[i]);
      hi = fmax(hi, a[i]);
    }
    for (int64_t i = 0; !rc && i < 2 * 3 * (int64_t)H * W; i++) finite &= isfinite(img[i]);
    if (!why[0] && !finite) snprintf(why, sizeof why, "%dx%d: non-finite values", W, H);
    if (!why[0] && !(hi > lo_)) snprintf(why, sizeof why, "%dx%d: constant latents", W, H);
    if (!why[0] && memcmp(a, b, 2 * per * sizeof(float))) snprintf(why, sizeof why, "%dx%d: not reproducible", W, H);
    if (!why[0] && !memcmp(a, a + per, per * sizeof(float))) snprintf(why, sizeof why, "%dx%d: seeds i and i+1 gave one image", W, H);
    free(a);
    free(b);
    free(img);
    if (why[0]) { cd_sd_free(m); FAILF("%s %s", models[mi].model, why); }
  }
  cd_sd_free(m);
}

TEST(odd_sizes_tiny_sd1) { odd_sizes(0); }
TEST(odd_sizes_small4_sd1) { odd_sizes(1); }
TEST(odd_sizes_tiny_sd2) { odd_sizes(2); }

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
  RUN(trajectories_tiny_sd1);
  RUN(trajectories_small4_sd1_single_file);
  RUN(trajectories_tiny_sd2_vpred);
  RUN(odd_sizes_tiny_sd1);
  RUN(odd_sizes_small4_sd1);
  RUN(odd_sizes_tiny_sd2);
  return test_summary();
}
