/* test_cli.c - the cdiff tool end to end on the tiny golden models: sample
 * writes a PNG with its parameters, latents round-trip through
 * --save-latents/--init-latents, tiled decoding, info, tokenize, and bad
 * input gives a clear message and a non-zero exit. */
#include <limits.h>
#include <unistd.h>

#include "diffusion/pipeline.h"
#include "io/image.h"
#include "test.h"

static char tmpdir[256];

/* runs the tool of this test's build (test_cdiff_bin) with args (shell-quoted
 * by the caller); returns exit status, output in out */
static int cdiff(char *out, size_t cap, const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "CDIFF_QUIET=1 '%s' %s 2>&1", test_cdiff_bin(), args);
  return test_run_cmd(cmd, out, cap);
}

/* golden file rel in path (skip/fail as NEED_GOLDEN); the tool itself must exist */
#define HAVE(rel, buf) do { NEED_GOLDEN(buf, rel); \
    if (access(test_cdiff_bin(), X_OK)) FAILF("%s was not built", test_cdiff_bin()); } while (0)

TEST(sample_writes_png_with_metadata) {
  char m[1024], out[8192], args[4096], png[512], v[512];
  HAVE("tiny-sd1", m);
  snprintf(png, sizeof png, "%s/a.png", tmpdir);
  snprintf(args, sizeof args, "sample --model %s --prompt 'photo of a cat' --negative 'blurry' --sampler euler_a --steps 4 --cfg 5 --seed 11 --width 64 --height 64 --out %s", m, png);
  int rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  cd_image im;
  CHECK_OK(cd_image_load(png, &im));
  CHECK(im.w == 64 && im.h == 64);
  cd_image_free(&im);
  CHECK(cd_png_read_text(png, "prompt", v, sizeof v) == 0 && !strcmp(v, "photo of a cat"));
  CHECK(cd_png_read_text(png, "negative_prompt", v, sizeof v) == 0 && !strcmp(v, "blurry"));
  CHECK(cd_png_read_text(png, "seed", v, sizeof v) == 0 && !strcmp(v, "11"));
  CHECK(cd_png_read_text(png, "sampler", v, sizeof v) == 0 && !strcmp(v, "euler_a"));
  CHECK(cd_png_read_text(png, "steps", v, sizeof v) == 0 && !strcmp(v, "4"));
  CHECK(cd_png_read_text(png, "model_hash", v, sizeof v) == 0 && strlen(v) == 16);
}

TEST(latents_round_trip_and_seed) {
  char m[1024], out[8192], args[4096], l1[512], l2[512], l3[512];
  HAVE("tiny-sd1", m);
  snprintf(l1, sizeof l1, "%s/l1.safetensors", tmpdir);
  snprintf(l2, sizeof l2, "%s/l2.safetensors", tmpdir);
  snprintf(l3, sizeof l3, "%s/l3.safetensors", tmpdir);
  /* seeded noise written by one run, fed back as --init-latents, gives the same result */
  snprintf(args, sizeof args, "sample --model %s --prompt cat --steps 3 --seed 5 --width 64 --height 64 --save-latents %s --out %s/b.png", m, l1, tmpdir);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  float noise[256];
  cd_seed_noise(5, 0, noise, 256);
  cd_tensor_out t = {.name = "latents", .dtype = CD_DT_F32, .ndim = 4, .shape = {1, 4, 8, 8}, .data = noise};
  CHECK_OK(cd_safetensors_write(l2, &t, 1, NULL, 0));
  snprintf(args, sizeof args, "sample --model %s --prompt cat --steps 3 --seed 999 --width 64 --height 64 --init-latents %s --save-latents %s --out %s/c.png", m, l2, l3, tmpdir);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  cd_tensor_file *a, *b;
  CHECK_OK(cd_safetensors_open(l1, &a));
  CHECK_OK(cd_safetensors_open(l3, &b));
  int64_t n1, n3;
  float *x = test_read_f32(a, "latents", &n1), *y = test_read_f32(b, "latents", &n3);
  int same = x && y && n1 == n3 && !memcmp(x, y, n1 * sizeof(float));
  free(x); free(y);
  cd_tensor_file_close(a);
  cd_tensor_file_close(b);
  CHECK(same);
  /* wrong shape is refused with the file named */
  float bad[4 * 4 * 4] = {0};
  cd_tensor_out tb = {.name = "latents", .dtype = CD_DT_F32, .ndim = 4, .shape = {1, 4, 4, 4}, .data = bad};
  CHECK_OK(cd_safetensors_write(l2, &tb, 1, NULL, 0));
  snprintf(args, sizeof args, "sample --model %s --prompt cat --steps 2 --width 64 --height 64 --init-latents %s --out %s/d.png", m, l2, tmpdir);
  CHECK(cdiff(out, sizeof out, args) != 0);
  CHECKF(strstr(out, "--init-latents") && strstr(out, "l2.safetensors"), "%s", out);
}

TEST(tiled_decode_matches_when_tile_covers) {
  char m[1024];
  NEED_GOLDEN(m, "tiny-sd1");
  cd_sd_model *md;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(m, &lo, &md));
  const int h = 16, w = 24;
  float *z = cd_malloc(4 * h * w * sizeof(float)), *a = cd_malloc(3 * 64 * h * w * sizeof(float)), *b = cd_malloc(3 * 64 * h * w * sizeof(float));
  cd_seed_noise(3, 0, z, 4 * h * w);
  int ok = !cd_decode_latents(md, z, 1, h, w, 0, a) && !cd_decode_latents(md, z, 1, h, w, 32, b);
  int same = ok && !memcmp(a, b, 3 * 64 * h * w * sizeof(float));
  ok = ok && !cd_decode_latents(md, z, 1, h, w, 8, b);
  double e = ok ? test_rel_err(b, a, 3 * 64 * h * w) : 1e9;
  int finite = 1;
  for (int i = 0; ok && i < 3 * 64 * h * w; i++) finite &= isfinite(b[i]);
  free(z); free(a); free(b);
  cd_sd_free(md);
  CHECK(ok && same && finite);
  /* tiles see less context than the whole latent: close, not equal */
  CHECKF(e < 0.5, "tiled decode rel err %.3g", e);
}

TEST(info_and_tokenize) {
  char m[1024], out[8192], args[4096];
  HAVE("tiny-sd2", m);
  snprintf(args, sizeof args, "info %s", m);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  CHECKF(strstr(out, "2.") && strstr(out, "v"), "info output: %s", out);
  CHECKF(strstr(out, "default 64 px"), "the tiny model's sample_size 8 should give 64 px: %s", out);
  snprintf(args, sizeof args, "tokenize --model %s 'a photo of an astronaut riding a horse on mars'", m);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  const char *want = "320 1125 539 550 18376 6765 320 4558 525 7496\n";
  CHECKF(!strcmp(out, want), "ids: %s", out);
  snprintf(args, sizeof args, "tokenize --model %s --add-token '<new1>' '<new1> cat'", m);
  CHECKF(cdiff(out, sizeof out, args) == 0 && !strncmp(out, "49408 2368", 10), "ids: %s", out);
}

TEST(bad_input_is_reported) {
  char m[1024], v[1024], out[8192], args[4096];
  HAVE("tiny-sd1_original.safetensors", m);
  struct { const char *args, *expect; } cases[] = {
      {"sample --model %s --prompt cat --out /tmp/x.png --sampler foo", "foo"},
      {"sample --model %s --prompt cat --out /tmp/x.png --steps abc", "--steps"},
      {"sample --model %s --prompt cat --out /tmp/x.png --width 100 --height 64", "--width"},
      {"sample --model %s --prompt cat --out /tmp/x.png --bogus 1", "--bogus"},
      {"sample --model %s.missing --prompt cat --out /tmp/x.png", ".missing"},
      {"sample --model %s --prompt cat --out /tmp/x.png --delta /nonexistent", "/nonexistent"},
      {"frobnicate %s", "unknown command"},
      {"sample --model %s --prompt cat --out /tmp/x.png --init-image /nonexistent.png", "/nonexistent.png"},
      {"sample --model %s --prompt 'photo of a <new1> cat' --out /tmp/x.png", "<new1>"}, /* no delta defines it */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(args, sizeof args, cases[i].args, m);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc != 0 && rc != -1, "'%s' exited %d", args, rc);
    CHECKF(strstr(out, cases[i].expect), "'%s': message lacks '%s': %s", args, cases[i].expect, out);
    CHECKF(!strstr(out, "AddressSanitizer") && !strstr(out, "Segmentation"), "%s", out);
  }
  /* a single file with no tokenizer beside it (the golden folder has one) */
  char lone[512];
  snprintf(lone, sizeof lone, "%s/lone.safetensors", tmpdir);
  char abs[PATH_MAX];
  CHECK(realpath(m, abs) != NULL);
  CHECK(symlink(abs, lone) == 0 || access(lone, F_OK) == 0);
  char yaml[PATH_MAX + 8], lyaml[512]; /* its .yaml (8 GroupNorm groups) travels with it */
  snprintf(yaml, sizeof yaml, "%.*s.yaml", (int)(strlen(abs) - strlen(".safetensors")), abs);
  snprintf(lyaml, sizeof lyaml, "%s/lone.yaml", tmpdir);
  CHECK(symlink(yaml, lyaml) == 0 || access(lyaml, F_OK) == 0);
  snprintf(args, sizeof args, "sample --model %s --prompt cat --width 64 --height 64 --out %s/x.png", lone, tmpdir);
  CHECK(cdiff(out, sizeof out, args) != 0);
  CHECKF(strstr(out, "--vocab"), "%s", out);
  /* img2img with a negative size names the flag (it used to print a stale message) */
  {
    char png[600];
    snprintf(png, sizeof png, "%s/init.png", tmpdir);
    uint8_t px[16 * 16 * 3] = {0};
    cd_image im = {.w = 16, .h = 16, .c = 3, .px = px};
    CHECK_OK(cd_image_save_png(png, &im, NULL, 0));
    snprintf(args, sizeof args, "sample --model %s --prompt cat --init-image %s --width -64 --height 64 --out %s/y.png", m, png, tmpdir);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc != 0 && strstr(out, "--width"), "exit %d: %s", rc, out);
  }
  /* a model file that is not a checkpoint */
  char junk[512];
  snprintf(junk, sizeof junk, "%s/junk.ckpt", tmpdir);
  FILE *f = fopen(junk, "w");
  fputs("this is not a checkpoint", f);
  fclose(f);
  snprintf(args, sizeof args, "info %s", junk);
  CHECK(cdiff(out, sizeof out, args) != 0);
  CHECKF(strstr(out, "junk.ckpt"), "%s", out);
  /* with the vocabulary the single file samples */
  NEED_GOLDEN(v, "bpe_simple_vocab_16e6.txt.gz");
  snprintf(args, sizeof args, "sample --model %s --vocab %s --prompt cat --steps 2 --width 64 --height 64 --out %s/e.png", m, v, tmpdir);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
}

/* a diffusers folder whose UNet holds a key no SD UNet has: named when used */
TEST(unknown_unet_key_is_named) {
  char m[1024], src[1200], dir[600], cmd[4096];
  NEED_GOLDEN(m, "tiny-sd1");
  char abs[PATH_MAX];
  CHECK(realpath(m, abs) != NULL);
  snprintf(dir, sizeof dir, "%s/extra", tmpdir);
  snprintf(cmd, sizeof cmd, "mkdir -p %s/unet && for c in vae text_encoder tokenizer scheduler model_index.json; do ln -s %s/$c %s/$c; done && cp %s/unet/config.json %s/unet/",
           dir, abs, dir, abs, dir);
  CHECK(system(cmd) == 0);
  snprintf(src, sizeof src, "%s/unet/diffusion_pytorch_model.safetensors", abs);
  cd_tensor_file *f;
  CHECK_OK(cd_safetensors_open(src, &f));
  int n = cd_tf_count(f);
  cd_tensor_out *t = cd_calloc(n + 1, sizeof *t);
  for (int i = 0; i < n; i++) {
    const cd_tensor_info *x = cd_tf_at(f, i);
    t[i] = (cd_tensor_out){.name = x->name, .dtype = x->dtype, .ndim = x->ndim, .data = x->data};
    memcpy(t[i].shape, x->shape, sizeof t[i].shape);
  }
  float extra[4] = {1, 2, 3, 4};
  t[n] = (cd_tensor_out){.name = "down_blocks.0.frobnicator.weight", .dtype = CD_DT_F32, .ndim = 1, .shape = {4}, .data = extra};
  char dst[1200];
  snprintf(dst, sizeof dst, "%s/unet/diffusion_pytorch_model.safetensors", dir);
  int rc = cd_safetensors_write(dst, t, n + 1, NULL, 0);
  free(t);
  cd_tensor_file_close(f);
  CHECK_OK(rc);
  cd_sd_model *md;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(dir, &lo, &md));
  float lat[256];
  cd_gen_opts o = {.prompt = "cat", .cfg = 1, .width = 64, .height = 64, .n = 1, .quiet = 1};
  o.s.kind = CD_SAMPLER_DDIM;
  o.s.steps = 1;
  rc = cd_generate_latents(md, &o, lat);
  cd_sd_free(md);
  CHECK(rc == -1);
  CHECKF(strstr(cd_last_error(), "down_blocks.0.frobnicator.weight"), "%s", cd_last_error());
}

/* img2img: strength 0 returns the encoded image whatever the prompt, lower
 * strength stays closer to it, out-of-range strength is refused */
TEST(img2img_strength) {
  char m[1024];
  NEED_GOLDEN(m, "tiny-sd1");
  cd_sd_model *md;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(m, &lo, &md));
  float img[3 * 64 * 64];
  test_fill_uniform(img, 3 * 64 * 64, -1, 1, 77);
  float z0a[256], z0b[256], z3[256], z9[256];
  cd_gen_opts o = {.prompt = "a cat", .cfg = 5, .width = 64, .height = 64, .n = 1, .quiet = 1, .init_image = img};
  o.s.kind = CD_SAMPLER_DDIM;
  o.s.steps = 10;
  o.s.seed = 3;
  int rc = 0;
  o.strength = 0;
  rc |= cd_generate_latents(md, &o, z0a);
  o.prompt = "a dog on the moon";
  rc |= cd_generate_latents(md, &o, z0b);
  o.strength = 0.3f;
  rc |= cd_generate_latents(md, &o, z3);
  o.strength = 0.9f;
  rc |= cd_generate_latents(md, &o, z9);
  o.strength = 1.5f;
  int bad = cd_generate_latents(md, &o, z9 + 0) == -1 && strstr(cd_last_error(), "strength");
  cd_sd_free(md);
  CHECK(rc == 0);
  CHECK(!memcmp(z0a, z0b, sizeof z0a));
  double e3 = test_rel_err(z3, z0a, 256), e9 = test_rel_err(z9, z0a, 256);
  CHECKF(e3 > 0 && e3 < e9, "distance from the image: strength 0.3 %.3g, 0.9 %.3g", e3, e9);
  CHECK(bad);
}

/* every sampler and sigma schedule runs end to end; contradictions are usage errors */
TEST(samplers_and_schedulers) {
  char m[1024], out[8192], args[4096], png[512], v[256];
  HAVE("tiny-sd1", m);
  const char *runs[][2] = {{"heun", "discrete"}, {"dpm2", "karras"}, {"dpmpp_2s_a", "exponential"},
                           {"dpmpp_sde", "karras"}, {"lcm", NULL}, {"dpm++2s_a", "discrete"}, {"euler_a", "exponential"}};
  for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
    snprintf(png, sizeof png, "%s/s%zu.png", tmpdir, i);
    snprintf(args, sizeof args, "sample --model %s --prompt cat --sampler %s %s %s --steps 3 --width 32 --height 32 --out %s", m,
             runs[i][0], runs[i][1] ? "--scheduler" : "", runs[i][1] ? runs[i][1] : "", png);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc == 0, "'%s' exited %d: %s", args, rc, out);
    CHECK(cd_png_read_text(png, "scheduler", v, sizeof v) == 0 && !strcmp(v, runs[i][1] ? runs[i][1] : "discrete"));
  }
  snprintf(png, sizeof png, "%s/cs.png", tmpdir);
  snprintf(args, sizeof args, "sample --model %s --prompt cat --clip-skip 2 --steps 2 --width 32 --height 32 --out %s", m, png);
  int rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0, "'%s' exited %d: %s", args, rc, out);
  CHECK(cd_png_read_text(png, "clip_skip", v, sizeof v) == 0 && !strcmp(v, "2"));
  struct { const char *flags, *expect; } bad[] = {
      {"--clip-skip 0", "--clip-skip"},
      {"--clip-skip 3", "--clip-skip"}, /* tiny-sd1's text encoder has 2 layers */
      {"--sampler ddim --scheduler karras", "sigma sampler"},
      {"--sampler lcm --steps 60", "1..50"},
      {"--scheduler linear", "linear"},
      {"--karras --scheduler exponential", "--karras"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    snprintf(args, sizeof args, "sample --model %s --prompt cat --out %s/bad.png %s", m, tmpdir, bad[i].flags);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc == 2, "'%s' exited %d (usage error 2 expected): %s", args, rc, out);
    CHECKF(strstr(out, bad[i].expect), "'%s': message lacks '%s': %s", args, bad[i].expect, out);
  }
}

/* multiples of 8 that are not multiples of 64 (diffusers accepts them) */
TEST(odd_size_png) {
  char m[1024], out[8192], args[4096], png[512];
  HAVE("tiny-sd1", m);
  snprintf(png, sizeof png, "%s/odd.png", tmpdir);
  snprintf(args, sizeof args, "sample --model %s --prompt cat --steps 2 --width 72 --height 56 --out %s", m, png);
  int rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  cd_image im;
  CHECK_OK(cd_image_load(png, &im));
  int w = im.w, h = im.h;
  cd_image_free(&im);
  CHECKF(w == 72 && h == 56, "image %dx%d", w, h);
  snprintf(args, sizeof args, "sample --model %s --prompt cat --steps 2 --width 60 --height 56 --out %s", m, png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc != 0 && strstr(out, "multiples of 8"), "60 px wide: exit %d: %s", rc, out);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/cdiff_cli_XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  RUN(sample_writes_png_with_metadata);
  RUN(latents_round_trip_and_seed);
  RUN(tiled_decode_matches_when_tile_covers);
  RUN(info_and_tokenize);
  RUN(bad_input_is_reported);
  RUN(unknown_unet_key_is_named);
  RUN(img2img_strength);
  RUN(samplers_and_schedulers);
  RUN(odd_size_png);
  if (test_rmtree(tmpdir)) return 1;
  return test_summary();
}
