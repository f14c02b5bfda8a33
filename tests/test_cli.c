/* test_cli.c - the cdiff tool end to end on the tiny golden models: sample
 * writes a PNG with its parameters, latents round-trip through
 * --save-latents/--init-latents, tiled decoding, info, tokenize, and bad
 * input gives a clear message and a non-zero exit. */
#include <limits.h>
#include <unistd.h>

#include "diffusion/pipeline.h"
#include "io/fsutil.h"
#include "core/utf8.h"
#include <sys/stat.h>
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

/* The tiled decode, rebuilt here from its definition: latent tiles of T x T
 * starting every T - T/4 (the last one moved back to end at the border), each
 * decoded alone, blended with weights that ramp linearly over the 8 * T/4
 * image pixels of every inner tile edge (pixel k of a ramp: (k + 0.5) / ramp,
 * x and y weights multiplied). Accumulated in double. */
static int tiled_reference(cd_sd_model *md, const float *z, int h, int w, int T, float *out) {
  int ov = T / 4, stride = T - ov, H = 8 * h, W = 8 * w, ramp = 8 * ov;
  double *acc = calloc((size_t)3 * H * W, sizeof(double)), *ws = calloc((size_t)H * W, sizeof(double));
  float *zt = malloc(sizeof(float) * 4 * T * T), *it = malloc(sizeof(float) * 3 * 64 * T * T);
  int starts_y[64], starts_x[64], ny = 0, nx = 0, rc = 0;
  for (int s = 0;; s += stride) { starts_y[ny++] = s + T > h ? h - T : s; if (s + T >= h) break; }
  for (int s = 0;; s += stride) { starts_x[nx++] = s + T > w ? w - T : s; if (s + T >= w) break; }
  for (int iy = 0; iy < ny && !rc; iy++)
    for (int ix = 0; ix < nx && !rc; ix++) {
      int ty = starts_y[iy], tx = starts_x[ix];
      for (int c = 0; c < 4; c++)
        for (int y = 0; y < T; y++)
          for (int x = 0; x < T; x++) zt[(c * T + y) * T + x] = z[(c * h + ty + y) * w + tx + x];
      if (cd_decode_latents(md, zt, 1, T, T, 0, it)) { rc = -1; break; }
      for (int y = 0; y < 8 * T; y++)
        for (int x = 0; x < 8 * T; x++) {
          double wy = 1, wx = 1;
          if (ty > 0 && y < ramp) wy = (y + 0.5) / ramp;
          if (ty + T < h && 8 * T - 1 - y < ramp) wy = fmin(wy, (8 * T - y - 0.5) / ramp);
          if (tx > 0 && x < ramp) wx = (x + 0.5) / ramp;
          if (tx + T < w && 8 * T - 1 - x < ramp) wx = fmin(wx, (8 * T - x - 0.5) / ramp);
          int Y = 8 * ty + y, X = 8 * tx + x;
          for (int c = 0; c < 3; c++) acc[((size_t)c * H + Y) * W + X] += wy * wx * it[((size_t)c * 8 * T + y) * 8 * T + x];
          ws[(size_t)Y * W + X] += wy * wx;
        }
    }
  for (size_t c = 0; !rc && c < 3; c++)
    for (size_t p = 0; p < (size_t)H * W; p++) out[c * H * W + p] = (float)(acc[c * H * W + p] / ws[p]);
  free(acc); free(ws); free(zt); free(it);
  return rc;
}

TEST(tiled_decode_matches_when_tile_covers) {
  char m[1024];
  NEED_GOLDEN(m, "tiny-sd1");
  cd_sd_model *md;
  cd_load_opts lo = {0};
  CHECK_OK(cd_sd_load(m, &lo, &md));
  const int h = 16, w = 24;
  size_t N = (size_t)3 * 64 * h * w;
  float *z = cd_malloc(4 * h * w * sizeof(float)), *a = cd_malloc(N * sizeof(float)), *b = cd_malloc(N * sizeof(float)),
        *r = cd_malloc(N * sizeof(float));
  cd_seed_noise(3, 0, z, 4 * h * w);
  /* a tile that covers the latent is the plain decode, bit for bit */
  int ok = !cd_decode_latents(md, z, 1, h, w, 0, a) && !cd_decode_latents(md, z, 1, h, w, 32, b);
  int same = ok && !memcmp(a, b, N * sizeof(float));
  /* tiles of 8: 3 rows x 4 columns, the last of each moved back to the border */
  ok = ok && !cd_decode_latents(md, z, 1, h, w, 8, b) && !tiled_reference(md, z, h, w, 8, r);
  double e = ok ? test_rel_err(b, r, N) : 1e9;
  free(z); free(a); free(b); free(r);
  cd_sd_free(md);
  CHECKF(ok && same, "decode failed or a covering tile differs: %s", cd_last_error());
  /* Both decode the same tiles through the same graph (identical floats); the
   * blend differs only in rounding: at most 4 weighted terms summed in float
   * and one division, <= 6u per pixel in the worst case (the weights are
   * positive, so no cancellation). Wrong placement or weights move pixels by
   * O(1) (the image values are O(1)). */
  printf("  tiled vs reference rel err %.3g\n", e);
  CHECKF(e <= 6 * TEST_U32 * 2, "tiled decode vs the tiled reference: rel err %.3g", e);
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
      {"sample --model %s --prompt cat --out %s/x.png --sampler foo", "foo"},
      {"sample --model %s --prompt cat --out %s/x.png --steps abc", "--steps"},
      {"sample --model %s --prompt cat --out %s/x.png --width 100 --height 64", "--width"},
      {"sample --model %s --prompt cat --out %s/x.png --bogus 1", "--bogus"},
      {"sample --model %s.missing --prompt cat --out %s/x.png", ".missing"},
      {"sample --model %s --prompt cat --out %s/x.png --delta /nonexistent", "/nonexistent"},
      {"frobnicate %s", "unknown command"},
      {"sample --model %s --prompt cat --out %s/x.png --init-image /nonexistent.png", "/nonexistent.png"},
      {"sample --model %s --prompt 'photo of a <new1> cat' --out %s/x.png", "<new1>"}, /* no delta defines it */
  };
  /* the output goes into this run's own folder: a fixed path such as
   * /tmp/x.png collides with another run on the machine (an existing --out
   * is refused, which would hide the error each case is about) */
  char xpng[512];
  snprintf(xpng, sizeof xpng, "%s/x.png", tmpdir);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(args, sizeof args, cases[i].args, m, tmpdir);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc != 0 && rc != -1, "'%s' exited %d", args, rc);
    CHECKF(strstr(out, cases[i].expect), "'%s': message lacks '%s': %s", args, cases[i].expect, out);
    CHECKF(!strstr(out, "AddressSanitizer") && !strstr(out, "Segmentation"), "%s", out);
    CHECKF(access(xpng, F_OK) != 0, "'%s' failed but left %s behind", args, xpng);
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
  snprintf(png, sizeof png, "%s/odd60.png", tmpdir); /* a new file: an existing one would need --overwrite */
  snprintf(args, sizeof args, "sample --model %s --prompt cat --steps 2 --width 60 --height 56 --out %s", m, png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc != 0 && strstr(out, "multiples of 8"), "60 px wide: exit %d: %s", rc, out);
}

/* ---- the command-line language: help, version, exit codes, aliases, docs ---- */

static const char *const commands[] = {"sample", "train", "merge", "compress", "info", "tokenize"};
#define NCMD (int)(sizeof commands / sizeof commands[0])
/* every command, the synthetic world's too: their --help and docs are checked, but their flags are
 * not fed junk values (world --out @x or pretrain --out @x would do real work) */
static const char *const all_commands[] = {"sample", "train", "merge", "compress", "info", "tokenize",
                                           "pretrain", "world", "grid", "judge", "eval"};
#define NALL (int)(sizeof all_commands / sizeof all_commands[0])

/* stdout only (stderr discarded) */
static int cdiff_stdout(char *out, size_t cap, const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "CDIFF_QUIET=1 '%s' %s 2>/dev/null", test_cdiff_bin(), args);
  return test_run_cmd(cmd, out, cap);
}

#define NEED_CLI() do { if (access(test_cdiff_bin(), X_OK)) FAILF("%s was not built", test_cdiff_bin()); } while (0)

/* A set of flag spellings ("-m", "--model"). */
typedef struct {
  char v[128][40];
  int takes_value[128]; /* help_flags: the line has a metavar */
  int n;
} flagset;

static void fs_add(flagset *s, const char *f, size_t n) {
  if (n == 0 || n >= sizeof s->v[0] || s->n >= 128) return;
  for (int i = 0; i < s->n; i++)
    if (strlen(s->v[i]) == n && !strncmp(s->v[i], f, n)) return;
  memcpy(s->v[s->n], f, n);
  s->takes_value[s->n] = 0;
  s->v[s->n++][n] = 0;
}
static int fs_has(const flagset *s, const char *f) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->v[i], f)) return 1;
  return 0;
}

/* the spellings of `cdiff CMD --help`: lines "  -x, --xx METAVAR   help" (help may wrap to the next line) */
static int help_flags(const char *cmd, flagset *s, char *help, size_t cap) {
  char args[64];
  snprintf(args, sizeof args, "%s --help", cmd);
  if (cdiff_stdout(help, cap, args) != 0) return -1;
  for (const char *l = help; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l)) {
    if (strncmp(l, "  -", 3)) continue;
    const char *c = l + 2, *end = c;
    while (*end && *end != '\n' && strncmp(end, "  ", 2)) end++;
    int first = s->n, value = 0;
    for (const char *q = c; q < end; q++) value |= q[0] == ' ' && q[-1] != ',';
    while (c < end) { /* "-s, --seed N" */
      size_t k = strcspn(c, ", \n");
      if (c + k > end) k = end - c;
      if (c[0] == '-') fs_add(s, c, k);
      c += k;
      if (*c == ' ') break; /* the metavar follows */
      while (c < end && (*c == ',' || *c == ' ')) c++;
    }
    for (int k = first; k < s->n; k++) s->takes_value[k] = value;
  }
  return 0;
}

/* the flags in the first column of the tables of section `## title` of text */
static void doc_flags(const char *text, const char *title, flagset *s) {
  char h[96];
  snprintf(h, sizeof h, "\n## %s\n", title);
  const char *sec = strstr(text, h);
  if (!sec) return;
  sec += strlen(h);
  const char *stop = strstr(sec, "\n## ");
  if (!stop) stop = sec + strlen(sec);
  for (const char *l = sec; l && l < stop; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    if (strncmp(l, "| `-", 4)) continue;
    const char *cell_end = strstr(l + 1, " | ");
    for (const char *b = strchr(l, '`'); b && b < cell_end; b = strchr(b, '`')) {
      const char *e = strchr(b + 1, '`');
      if (!e || e > cell_end) break;
      size_t k = strcspn(b + 1, " `");
      if (b[1] == '-') fs_add(s, b + 1, k);
      b = e + 1;
    }
  }
}

TEST(help_and_version_on_stdout) {
  NEED_CLI();
  char out[16384], args[128];
  for (int i = 0; i < NALL; i++) {
    const char *forms[] = {"%s --help", "%s -h", "help %s", "%s --bogus-flag --help"};
    for (int f = 0; f < 3; f++) {
      snprintf(args, sizeof args, forms[f], all_commands[i]);
      int rc = cdiff_stdout(out, sizeof out, args);
      char want[64];
      snprintf(want, sizeof want, "usage: cdiff %s ", all_commands[i]);
      CHECKF(rc == 0 && !strncmp(out, want, strlen(want)), "cdiff %s: exit %d, stdout: %.200s", args, rc, out);
      CHECKF(strstr(out, "-h, --help") && strstr(out, "exit status"), "cdiff %s: %.300s", args, out);
    }
  }
  int rc = cdiff_stdout(out, sizeof out, "--help");
  CHECKF(rc == 0, "cdiff --help exited %d", rc);
  for (int i = 0; i < NALL; i++) CHECKF(strstr(out, all_commands[i]), "cdiff --help lacks %s: %s", all_commands[i], out);
  CHECK(cdiff_stdout(out, sizeof out, "help") == 0 && strstr(out, "usage: cdiff <command>"));
  /* no command at all is a usage error, on stderr */
  CHECK(cdiff_stdout(out, sizeof out, "") == 2 && out[0] == 0);
  rc = cdiff_stdout(out, sizeof out, "--version");
  CHECKF(rc == 0 && !strncmp(out, "cdiff ", 6), "exit %d: %s", rc, out);
  const char *c = strstr(out, "\ncommit ");
  CHECKF(c, "no commit line: %s", out);
  c += 8;
  size_t hex = strspn(c, "0123456789abcdef");
  CHECKF((hex >= 7 && c[hex] == '\n') || !strncmp(c, "unknown\n", 8), "commit line: %s", out);
  CHECKF(strstr(out, "\nbackend cpu") && strstr(out, "\nBLAS "), "%s", out);
}

/* every error is exit 2 with the offending flag's own --help line, on stderr */
TEST(usage_errors_print_the_flag_line) {
  NEED_CLI();
  struct { const char *args, *flag, *why; } cases[] = {
      {"sample -m M -p cat -o x.png --steps 0", "--steps", "--steps must be in 1..1000 (got 0)"},
      {"world --out x --mode pattern --pattern-colours green,pink", "--pattern-colours", "'pink' in 'green,pink' is not one of"},
      {"world --out x --pattern-colours green", "--pattern-colours", "needs --mode pattern or pattern-scenes (got pretrain)"},
      {"eval --model M --prompts P --out x --toy2-kind robot", "--toy2-kind", "--toy2-kind must be one of duck|bear|car (got 'robot')"},
      {"eval --model M --prompts P --out x --toy-kind duck", "--toy-kind", "--toy-kind must be one of robot|bear|car (got 'duck')"},
      {"eval --model M --prompts P --out x --pattern-kind wavy", "--pattern-kind", "--pattern-kind must be one of zigzag|striped|checkered|dotted (got 'wavy')"},
      {"eval --model M --prompts P", "--out", "--out is required"},
      {"eval --model M --prompts P --out x --n 0", "--n", "--n must be in 1..64 (got 0)"},
      {"eval --model M --prompts P --out x --steps 0", "--steps", "--steps must be in 1..1000 (got 0)"},
      {"world --n 3", "--out", "--out is required"},
      {"world --out x --n 0", "--n", "--n must be in 1..100000 (got 0)"},
      {"judge --train", "--out", "--out is required with --train"},
      {"judge --train --test", "--test", "--test and --train exclude each other"},
      {"judge --train --out x --lr 0", "--lr", "--lr must be > 0 (got 0)"},
      {"grid a.png", "--out", "--out is required"},
      {"pretrain --out x --unet-sprites 2", "--unet-sprites", "--unet-sprites must be in 0..1 (got 2)"},
      {"pretrain --out x --object-weight -1", "--object-weight", "--object-weight must be in 0..100"},
      {"pretrain --out x --lr 0", "--lr", "--lr must be > 0 (got 0)"},
      {"pretrain --vae-steps 5", "--out", "--out is required"},
      {"sample -m M -p cat -o x.png --steps=5x", "--steps", "expects an integer, got '5x'"},
      {"sample -m M -p cat -o x.png --steps ' 5'", "--steps", "expects an integer"},
      {"sample -m M -p cat -o x.png --n 0", "--n", "--n must be in 1..64 (got 0)"},
      {"sample -m M -p cat -o x.png -b 65", "--batch-count", "-b must be in 1..64 (got 65)"},
      {"sample -m M -p cat -o x.png --width 0", "--width", "--width must be >= 8 (got 0)"},
      {"sample -m M -p cat -o x.png -H -64", "--height", "-H must be >= 8"},
      {"sample -m M -p cat -o x.png --cfg nan", "--cfg", "expects a finite number, got 'nan'"},
      {"sample -m M -p cat -o x.png --cfg-scale=inf", "--cfg", "expects a finite number"},
      {"sample -m M -p cat -o x.png --cfg 1e", "--cfg", "expects a finite number, got '1e'"},
      {"sample -m M -p cat -o x.png --cfg -2", "--cfg", "--cfg must be >= 0"},
      {"sample -m M -p cat -o x.png --eta -0.5", "--eta", "--eta must be in 0..10"},
      {"sample -m M -p cat -o x.png --strength 1.5", "--strength", "--strength must be in 0..1"},
      {"sample -m M -p cat -o x.png --seed -2", "--seed", "non-negative integer (or -1: random)"},
      {"sample -m M -p cat -o x.png --seed 12abc", "--seed", "got '12abc'"},
      {"sample -m M -p cat -o x.png --tile 0", "--tile", "--tile must be >= 4"},
      {"sample -m M -p cat -o x.png --karras=1", "--karras", "takes no value"},
      {"sample -m M -p cat -o x.png --sampler foo", "--sampler", "foo"},
      {"sample -m M -p cat -o x.png --stpes 3", "--steps", "unknown flag --stpes; did you mean"},
      {"sample -m M -p cat", "--out", "--out is required"},
      {"sample -p cat -o x.png", "--model", "--model is required"},
      {"sample -m M -p cat -o x.png --steps", "--steps", "needs a value"},
      {"sample -m M -p cat -o x.png -t 0", "--threads", "-t must be in 1..4096 (got 0)"},
      {"train -m M --images I -p 'a <new1> cat' -o O --steps 0", "--steps", "--steps must be >= 1 (got 0)"},
      {"train -m M --images I -p 'a <new1> cat' -o O --lr -1e-5", "--lr", "--lr must be > 0"},
      {"train -m M --images I -p 'a <new1> cat' -o O --lr 0", "--lr", "--lr must be > 0"},
      {"train -m M --images I -p 'a <new1> cat' -o O --batch 0", "--batch", "--batch must be >= 1"},
      {"train -m M --images I -p 'a <new1> cat' -o O --num-class-images 0", "--num-class-images", ">= 1"},
      {"train -m M --images I -p 'a <new1> cat' -o O --prior-loss-weight 0", "--prior-loss-weight", "> 0"},
      {"train -m M --images I -p 'a <new1> cat' -o O --resolution 512px", "--resolution", "got '512px'"},
      {"train -m M --images I -p 'a <new1> cat'", "--out", "--out is required"},
      {"train -m M --images I -p 'a <new1> cat' -o O --no-prior --resolution 100", "--resolution", "--resolution must be a positive multiple"},
      {"train -m M --images I -p 'a <new1> cat' -o O", "--class-prompt", "--class-prompt is required with prior preservation"},
      {"train -m M --concepts c.json --images I -o O", "--concepts", "--concepts cannot be combined"},
      {"train -m M --images I -p 'a <new1> \xff' -o O --no-prior", "--prompt", "--prompt is not valid UTF-8 (byte 9: 0xff)"},
      {"train -m M --images I -p 'a <new1> cat' -o O --no-prior --with_prior_preservation", "--with_prior_preservation", "contradicts --no-prior"},
      {"train -m M --images I --instance_prompt 'a <new1> cat' --output_dir O --no-prior --max_train_steps 0", "--steps", "--max_train_steps must be >= 1 (got 0)"},
      {"merge -m M --delta d:cat -o O --reg-count 0", "--reg-count", ">= 1"},
      {"merge -m M --delta d:cat -o O --ridge -1", "--ridge", ">= 0"},
      {"merge -m M -o O", "--delta", "--delta is required"},
      {"merge -m M --delta nocategory -o O", "--delta", "expects DIR:category"},
      {"compress -m M --delta d -o O --ratio 0", "--ratio", "--ratio must be in >0..1"},
      {"compress -m M --delta d -o O --ratio=1.5", "--ratio", "--ratio must be in >0..1"},
      {"tokenize --vocab V --padded=yes cat", "--padded", "takes no value"},
      {"tokenize --vocab V --add-token", "--add-token", "needs a value"},
      {"info --prediction", "--prediction", "needs a value"},
      {"info M --prediction=x", "--prediction", "--prediction must be one of eps|v|epsilon|v_prediction (got 'x')"},
      {"sample -m M -p cat -o x.png --weights-dtype f64", "--weights-dtype", "must be one of f32|f16|bf16 (got 'f64')"},
      /* this test's build is never a CUDA one (CUDA=1 builds only test_cuda, which checks the no-GPU error) */
      {"sample -m M -p cat -o x.png --device cuda", "--device", "--device cuda: built without CUDA (make CUDA=1)"},
      {"train -m M --images I -p 'a <new1> cat' -o O --no-prior --device cuda", "--device", "built without CUDA (make CUDA=1)"},
      {"merge -m M --delta d:cat -o O --device cuda", "--device", "built without CUDA (make CUDA=1)"},
      {"sample -m M -p cat -o x.png --device tpu", "--device", "must be one of cpu|cuda (got 'tpu')"},
      {"train -m M --images I -p 'a <new1> cat' -o O --no-prior --freeze_model all", "--train", "--freeze_model must be one of"},
      {"train -m M --images I -p 'a <new1> cat' -o O --no-prior --lr_scheduler cosine_with_restarts", "--lr_scheduler", "cosine_with_restarts"},
  };
  char out[8192], args[1024], help[16384];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(args, sizeof args, "CDIFF_QUIET=1 '%s' %s 2>&1 >/dev/null", test_cdiff_bin(), cases[i].args); /* stderr only */
    int rc = test_run_cmd(args, out, sizeof out);
    CHECKF(rc == 2, "'cdiff %s' exited %d: %s", cases[i].args, rc, out);
    CHECKF(strstr(out, cases[i].why), "'cdiff %s': lacks '%s': %s", cases[i].args, cases[i].why, out);
    /* the flag's line, exactly as the command's --help prints it */
    char cmd[16];
    snprintf(cmd, sizeof cmd, "%.*s", (int)strcspn(cases[i].args, " "), cases[i].args);
    flagset fs = {0};
    CHECK(help_flags(cmd, &fs, help, sizeof help) == 0);
    /* the "  -x, --xx META" line whose flag column holds the flag */
    const char *l = NULL;
    size_t fl = strlen(cases[i].flag);
    for (const char *q = help; q && *q && !l; q = strchr(q, '\n') ? strchr(q, '\n') + 1 : NULL) {
      if (strncmp(q, "  -", 3)) continue;
      for (const char *t = q + 2; *t && *t != '\n' && strncmp(t, "  ", 2) && !l; t++)
        if ((t[-1] == ' ') && !strncmp(t, cases[i].flag, fl) && strchr(" ,\n", t[fl])) l = q;
    }
    CHECKF(l, "%s not in cdiff %s --help", cases[i].flag, cmd);
    while (l > help && l[-1] != '\n') l--;
    size_t n = strcspn(l, "\n");
    char line[512];
    snprintf(line, sizeof line, "%.*s", (int)n, l);
    CHECKF(strstr(out, line), "'cdiff %s': no help line '%s' in: %s", cases[i].args, line, out);
  }
  /* an unknown flag far from every flag gets the usage line instead */
  int rc = cdiff(out, sizeof out, "sample --frobnicate-widely 1 2>&1");
  CHECKF(rc == 2 && strstr(out, "unknown flag --frobnicate-widely") && strstr(out, "usage: cdiff sample"), "%d %s", rc, out);
  CHECKF(!strstr(out, "cdiff help"), "%s", out);
}

/* runtime failures (a file that is not there) are exit 1 in every command */
TEST(runtime_failures_exit_1) {
  NEED_CLI();
  const char *cases[] = {
      "sample -m /nonexistent/model -p cat -W 64 -o %s/x.png",
      "train -m /nonexistent/model --images /nonexistent/img -p 'photo of a <new1> cat' --class-prompt cat -o %s/t",
      "merge -m /nonexistent/model --delta /nonexistent/d:cat --reg-prompts /nonexistent/reg.txt -o %s/m",
      "compress -m /nonexistent/model --delta /nonexistent/d -o %s/c",
      "info /nonexistent/model%s",
      "tokenize --vocab /nonexistent/vocab%s cat",
  };
  char out[8192], args[1024];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char a[900];
    snprintf(a, sizeof a, cases[i], strstr(cases[i], "%s/") ? tmpdir : "");
    snprintf(args, sizeof args, "%s 2>&1", a);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc == 1, "'cdiff %s' exited %d (want 1): %s", a, rc, out);
    CHECKF(strstr(out, "/nonexistent/"), "'cdiff %s' does not name the file: %s", a, out);
  }
}

/* every spelling in every --help is a flag of that command, in both --flag V and --flag=V forms */
TEST(every_spelling_is_parsed) {
  NEED_CLI();
  char help[16384], out[8192], args[256];
  int checked = 0;
  for (int i = 0; i < NCMD; i++) {
    flagset fs = {0};
    CHECKF(help_flags(commands[i], &fs, help, sizeof help) == 0, "cdiff %s --help failed", commands[i]);
    CHECKF(fs.n >= 4, "cdiff %s --help lists only %d spellings", commands[i], fs.n);
    for (int k = 0; k < fs.n; k++) {
      if (!strcmp(fs.v[k], "-h") || !strcmp(fs.v[k], "--help")) continue;
      /* a value no flag accepts as a number; string flags take it and the run stops at a missing required flag */
      for (int form = !fs.takes_value[k]; form < 2; form++) {
        /* sanitized (a run costs more there): one form per flag, alternating, so that both
         * parsing paths run; the optimised pass checks both forms of every flag */
        if (TEST_SANITIZED && fs.takes_value[k] && form == k % 2) continue;
        snprintf(args, sizeof args, form ? "%s %s=@x 2>&1" : "%s %s @x 2>&1", commands[i], fs.v[k]);
        int rc = cdiff(out, sizeof out, args);
        CHECKF(rc == 2 || rc == 1, "'cdiff %s' exited %d: %s", args, rc, out);
        CHECKF(!strstr(out, "unknown flag") && !strstr(out, "unexpected argument") && !strstr(out, "internal error"),
               "'cdiff %s': %s", args, out);
        checked++;
      }
    }
  }
  CHECKF(checked > (TEST_SANITIZED ? 60 : 100), "only %d spellings checked", checked);
}

/* sd.cpp spellings and --flag=value give the very same images as cdiff's own flags */
TEST(sd_aliases_give_the_same_images) {
  char m[1024], out[8192], args[4096], init[600];
  HAVE("tiny-sd1", m);
  snprintf(init, sizeof init, "%s/alias_init.png", tmpdir);
  uint8_t px[64 * 64 * 3];
  for (int i = 0; i < 64 * 64 * 3; i++) px[i] = (uint8_t)(i * 7 + (i / 192) * 3);
  cd_image im = {.w = 64, .h = 64, .c = 3, .px = px};
  CHECK_OK(cd_image_save_png(init, &im, NULL, 0));
  const char *forms[] = {
      "sample --model %s --prompt 'photo of a cat' --negative blurry --sampler euler_a --scheduler karras --steps 3 --cfg 5 --seed 11 "
      "--width 64 --height 64 --n 2 --init-image %s --strength 0.6 --out %s/alias_a.png",
      "sample -m %s -p 'photo of a cat' -n blurry --sampling-method euler_a --schedule karras --steps 3 --cfg-scale 5 -s 11 "
      "-W 64 -H 64 -b 2 -i %s --strength 0.6 -o %s/alias_b.png",
      "sample --model=%s --prompt='photo of a cat' --negative-prompt=blurry --sampling-method=euler_a --schedule=karras --steps=3 --cfg-scale=5 "
      "--seed=11 -W=64 --height=64 --batch-count=2 --init-img=%s --strength=0.6 --output=%s/alias_c.png",
  };
  for (int f = 0; f < 3; f++) {
    snprintf(args, sizeof args, forms[f], m, init, tmpdir);
    int rc = cdiff(out, sizeof out, args);
    CHECKF(rc == 0, "form %d exited %d: %s", f, rc, out);
  }
  for (int i = 0; i < 2; i++) {
    cd_image ref = {0};
    char p[600], v[256], w[256];
    snprintf(p, sizeof p, "%s/alias_a_%d.png", tmpdir, i);
    CHECK_OK(cd_image_load(p, &ref));
    CHECK(cd_png_read_text(p, "seed", w, sizeof w) == 0 && atoi(w) == 11 + i);
    for (const char *x = "bc"; *x; x++) {
      cd_image b = {0};
      snprintf(p, sizeof p, "%s/alias_%c_%d.png", tmpdir, *x, i);
      int ok = cd_image_load(p, &b) == 0 && b.w == ref.w && b.h == ref.h && !memcmp(b.px, ref.px, (size_t)b.w * b.h * 3);
      cd_image_free(&b);
      if (!ok) cd_image_free(&ref);
      CHECKF(ok, "%s differs from alias_a_%d.png", p, i);
      int same = cd_png_read_text(p, "negative_prompt", v, sizeof v) == 0 && !strcmp(v, "blurry") &&
                 cd_png_read_text(p, "seed", v, sizeof v) == 0 && !strcmp(v, w);
      if (!same) cd_image_free(&ref);
      CHECKF(same, "%s: metadata", p);
    }
    cd_image_free(&ref);
  }
  /* -s -1: a random seed, printed and recorded */
  snprintf(args, sizeof args, "sample -m %s -p cat --steps 2 -W 64 -s -1 -o %s/rnd.png 2>&1", m, tmpdir);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  const char *r = strstr(out, "random seed ");
  CHECKF(r, "no seed printed: %s", out);
  char png[600], v[64];
  snprintf(png, sizeof png, "%s/rnd.png", tmpdir);
  CHECK(cd_png_read_text(png, "seed", v, sizeof v) == 0);
  CHECKF(strtoull(r + 12, NULL, 10) == strtoull(v, NULL, 10), "printed %s, recorded %s", r + 12, v);
}

/* -t and -v take effect (verbose logging says how many threads) */
TEST(threads_and_verbose) {
  char v[1024], out[8192], args[2048];
  HAVE("bpe_simple_vocab_16e6.txt.gz", v);
  snprintf(args, sizeof args, "tokenize --vocab %s -t 1 -v cat 2>&1", v);
  CHECKF(cdiff(out, sizeof out, args) == 0 && strstr(out, "1 thread(s)") && strstr(out, "2368"), "%s", out);
  snprintf(args, sizeof args, "tokenize --vocab=%s --threads=1 --verbose -- cat 2>&1", v);
  CHECKF(cdiff(out, sizeof out, args) == 0 && strstr(out, "1 thread(s)") && strstr(out, "2368"), "%s", out);
  snprintf(args, sizeof args, "tokenize --vocab %s cat 2>&1", v);
  CHECKF(cdiff(out, sizeof out, args) == 0 && !strstr(out, "thread(s)"), "%s", out);
}

/* docs/cli.md lists exactly the flags of each command's --help; README's command table names only real flags */
TEST(docs_match_help) {
  NEED_CLI();
  char *doc = NULL, *readme = NULL, help[16384];
  size_t n;
  CHECKF(cd_read_file("docs/cli.md", &doc, &n) == 0, "%s", cd_last_error());
  if (cd_read_file("README.md", &readme, &n)) { free(doc); FAILF("%s", cd_last_error()); }
  flagset every = {0};
  doc_flags(doc, "Every command", &every);
  int bad = 0;
  char why[1024] = "";
  for (int i = 0; i < NALL && !bad; i++) {
    flagset h = {0}, d = every;
    char title[64];
    snprintf(title, sizeof title, "cdiff %s", all_commands[i]);
    doc_flags(doc, title, &d);
    if (help_flags(all_commands[i], &h, help, sizeof help)) { bad = 1; snprintf(why, sizeof why, "%s --help failed", all_commands[i]); }
    for (int k = 0; !bad && k < h.n; k++)
      if (!fs_has(&d, h.v[k])) { bad = 1; snprintf(why, sizeof why, "cdiff %s --help has %s, docs/cli.md '## %s' lacks it", all_commands[i], h.v[k], title); }
    for (int k = 0; !bad && k < d.n; k++)
      if (!fs_has(&h, d.v[k])) { bad = 1; snprintf(why, sizeof why, "docs/cli.md '## %s' has %s, cdiff %s --help lacks it", title, d.v[k], all_commands[i]); }
    /* README: the row "| `cdiff CMD ..." names only flags of CMD */
    char row[64];
    snprintf(row, sizeof row, "\n| `cdiff %s ", all_commands[i]);
    const char *r = strstr(readme, row);
    if (!bad && !r) { bad = 1; snprintf(why, sizeof why, "README.md has no command-table row for %s", all_commands[i]); }
    for (const char *p = r ? r + 1 : NULL; !bad && p && *p && *p != '\n'; p++) {
      if (p[0] != '-' || p[1] != '-' || !strchr(" `/(", p[-1])) continue;
      size_t k = 2 + strspn(p + 2, "abcdefghijklmnopqrstuvwxyz0123456789-");
      char f[40];
      snprintf(f, sizeof f, "%.*s", (int)CD_MIN(k, sizeof f - 1), p);
      if (!fs_has(&h, f)) { bad = 1; snprintf(why, sizeof why, "README.md's row for %s names %s, which cdiff %s --help lacks", all_commands[i], f, all_commands[i]); }
    }
  }
  free(doc);
  free(readme);
  CHECKF(!bad, "%s", why);
}

/* prompt weighting and a prompt of more than 75 tokens run end to end; a bad weight is named */
TEST(weighted_long_prompt) {
  char m[1024], out[8192], args[8192], png[512], prompt[2048] = "(photo:1.3) of a [cat] \\(literal\\)";
  HAVE("tiny-sd1", m);
  for (int k = 0; k < 90; k++) strcat(prompt, " cat");
  snprintf(png, sizeof png, "%s/w.png", tmpdir);
  snprintf(args, sizeof args, "sample --model %s --prompt '%s' --negative '(blurry:1.2)' --steps 2 --width 32 --height 32 --out %s", m, prompt, png);
  int rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  snprintf(args, sizeof args, "sample --model %s --prompt '(cat:1.2.3)' --steps 2 --width 32 --height 32 --out %s", m, png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 2 && strstr(out, "1.2.3") && strstr(out, "--prompt"), "bad weight: exit %d: %s", rc, out);
  /* sub-prompts joined by AND: run, and an empty one is a usage error naming --prompt */
  snprintf(args, sizeof args, "sample --model %s --prompt 'photo of a cat :0.7 AND (red:1.2) dog :0.3' --steps 2 --width 32 --height 32 --overwrite --out %s", m, png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0, "AND: exit %d: %s", rc, out);
  snprintf(args, sizeof args, "sample --model %s --prompt 'photo of a cat AND' --steps 2 --width 32 --height 32 --out %s", m, png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 2 && strstr(out, "sub-prompt 2 of 2") && strstr(out, "--prompt"), "empty sub-prompt: exit %d: %s", rc, out);
}

/* strict UTF-8: shortest forms only, no surrogates, nothing above U+10FFFF */
TEST(utf8_validation) {
  struct { const char *s; long bad; } cases[] = {
      {"plain ascii", -1}, {"caf\xc3\xa9 \xe7\x8c\xab \xf0\x9f\x90\xb1", -1}, {"caf\xe9", 3}, {"\xc0\x80", 0},
      {"ab\xe0\x80\xaf", 2}, {"\xed\xa0\x80", 0}, {"x\xf4\x90\x80\x80", 1}, {"\xe2\x82", 0}, {"ok\xf0\x9f\x90", 2},
      {"\xef\xbf\xbf\xf4\x8f\xbf\xbf", -1}, {"\x80", 0}, {"a\xf8\x88\x80\x80\x80", 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    long at = cd_utf8_invalid_at(cases[i].s, strlen(cases[i].s));
    CHECKF(at == cases[i].bad, "case %zu: invalid at %ld, expected %ld", i, at, cases[i].bad);
  }
  unsigned cp;
  CHECK(cd_utf8_decode((const unsigned char *)"\xf0\x9f\x90\xb1", 4, &cp) == 4 && cp == 0x1F431);
  CHECK(cd_utf8_decode((const unsigned char *)"\xc3\xa9", 2, &cp) == 2 && cp == 0xE9);
}

/* the A1111 "parameters" chunk, warnings for flags without effect, and metadata that records only what was used */
TEST(png_parameters_and_used_flags_only) {
  char m[1024], out[8192], args[4096], png[512], v[4096], hash[64], want[4096];
  HAVE("tiny-sd1", m);
  snprintf(png, sizeof png, "%s/params.png", tmpdir);
  snprintf(args, sizeof args, "sample -m %s -p 'photo of a cat, \"sitting\"' -n 'blurry, dark' --sampler euler --eta 0.3 --strength 0.5 "
           "--steps 3 --cfg 5 -s 7 -W 64 -H 64 -o %s", m, png);
  int rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  CHECKF(strstr(out, "warning: --eta has no effect") && strstr(out, "warning: --strength has no effect"), "%s", out);
  CHECK(cd_png_read_text(png, "model_hash", hash, sizeof hash) == 0);
  snprintf(want, sizeof want, "photo of a cat, \"sitting\"\nNegative prompt: blurry, dark\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 7, "
           "Size: 64x64, Model hash: %s, Model: tiny-sd1, Version: cdiff", hash);
  CHECK(cd_png_read_text(png, "parameters", v, sizeof v) == 0);
  CHECKF(!strcmp(v, want), "parameters:\n%s\nexpected:\n%s", v, want);
  CHECK(cd_png_read_text(png, "eta", v, sizeof v) == 1);
  CHECK(cd_png_read_text(png, "strength", v, sizeof v) == 1);
  CHECK(cd_png_read_text(png, "init_image", v, sizeof v) == 1);
  CHECK(cd_png_read_text(png, "prompt", v, sizeof v) == 0 && !strcmp(v, "photo of a cat, \"sitting\""));
  /* DDIM uses eta: recorded in both; no warning */
  snprintf(args, sizeof args, "sample -m %s -p 'caf\xc3\xa9 \xe7\x8c\xab' --sampler ddim --eta 0.5 --steps 2 --cfg 5 -s 3 -W 64 -o %s --overwrite", m, png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 0 && !strstr(out, "warning"), "exit %d: %s", rc, out);
  CHECK(cd_png_read_text(png, "eta", v, sizeof v) == 0 && !strcmp(v, "0.5"));
  CHECK(cd_png_read_text(png, "parameters", v, sizeof v) == 0);
  CHECKF(!strncmp(v, "caf\xc3\xa9 \xe7\x8c\xab\nSteps: 2, Sampler: DDIM, CFG scale: 5, Seed: 3, Size: 64x64, ", 60) && strstr(v, ", Eta: 0.5, "), "%s", v);
  /* invalid UTF-8 in a prompt: a usage error before the model loads */
  snprintf(args, sizeof args, "sample -m /nonexistent/model -p 'caf\xe9' -o %s", png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 2 && strstr(out, "--prompt value is not valid UTF-8 (byte 3: 0xe9)") && !strstr(out, "/nonexistent"), "exit %d: %s", rc, out);
  snprintf(args, sizeof args, "sample -m /nonexistent/model -p cat -n 'x\xc0\x80' -o %s", png);
  rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 2 && strstr(out, "--negative value is not valid UTF-8 (byte 1: 0xc0)"), "exit %d: %s", rc, out);
}

/* the UserComment of a JPEG's EXIF (UNICODE + UTF-16BE) as UTF-8, read independently of the writer */
static int jpeg_user_comment(const char *path, char *out, size_t cap) {
  char *data;
  size_t n;
  if (cd_read_file(path, &data, &n)) return -1;
  const uint8_t *p = (const uint8_t *)data;
  int rc = -1;
  for (size_t i = 2; i + 4 <= n && p[i] == 0xFF && rc; ) {
    size_t len = (size_t)p[i + 2] << 8 | p[i + 3];
    if (p[i + 1] == 0xE1 && len >= 8 && i + 2 + len <= n && !memcmp(p + i + 4, "Exif\0\0", 6)) {
      const uint8_t *t = p + i + 10, *end = p + i + 2 + len;
#define U16(q) ((unsigned)(q)[0] << 8 | (q)[1])
#define U32(q) ((size_t)U16(q) << 16 | U16((q) + 2))
      if (memcmp(t, "MM", 2)) break;
      for (size_t ifd = U32(t + 4), depth = 0; depth < 2 && t + ifd + 2 <= end; depth++) {
        unsigned ne = U16(t + ifd);
        size_t next = 0;
        for (unsigned e = 0; e < ne && t + ifd + 2 + 12 * (e + 1) <= end; e++) {
          const uint8_t *en = t + ifd + 2 + 12 * e;
          if (U16(en) == 0x8769) next = U32(en + 8);
          if (U16(en) == 0x9286 && t + U32(en + 8) + U32(en + 4) <= end && U32(en + 4) >= 8 && !memcmp(t + U32(en + 8), "UNICODE\0", 8)) {
            const uint8_t *s = t + U32(en + 8) + 8;
            size_t k = 0, nu = (U32(en + 4) - 8) / 2;
            for (size_t j = 0; j < nu && k + 5 < cap; j++) {
              unsigned c = U16(s + 2 * j);
              if (c >= 0xD800 && c < 0xDC00 && j + 1 < nu) {
                j++;
                c = 0x10000 + ((c - 0xD800) << 10) + (U16(s + 2 * j) - 0xDC00);
              }
              if (c < 0x80) out[k++] = (char)c;
              else if (c < 0x800) out[k++] = (char)(0xC0 | c >> 6), out[k++] = (char)(0x80 | (c & 63));
              else if (c < 0x10000) out[k++] = (char)(0xE0 | c >> 12), out[k++] = (char)(0x80 | (c >> 6 & 63)), out[k++] = (char)(0x80 | (c & 63));
              else out[k++] = (char)(0xF0 | c >> 18), out[k++] = (char)(0x80 | (c >> 12 & 63)), out[k++] = (char)(0x80 | (c >> 6 & 63)), out[k++] = (char)(0x80 | (c & 63));
            }
            out[k] = 0;
            rc = 0;
          }
        }
        if (!next || !rc) break;
        ifd = next;
      }
#undef U16
#undef U32
    }
    i += 2 + len;
  }
  free(data);
  return rc;
}

/* --out x.jpg writes a JPEG with the same parameters in its EXIF UserComment */
TEST(jpeg_output) {
  char m[1024], out[8192], args[4096], png[512], jpg[512], a[4096], b[4096];
  HAVE("tiny-sd1", m);
  snprintf(png, sizeof png, "%s/same.png", tmpdir);
  snprintf(jpg, sizeof jpg, "%s/same.jpg", tmpdir);
  const char *common = "-p 'a \xf0\x9f\x90\xb1 on a mat' -n 'blurry' --steps 2 --cfg 4 -s 5 -W 64 -H 64";
  snprintf(args, sizeof args, "sample -m %s %s -o %s", m, common, png);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  snprintf(args, sizeof args, "sample -m %s %s -o %s", m, common, jpg);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  cd_image im;
  CHECK_OK(cd_image_load(jpg, &im));
  int ok = im.w == 64 && im.h == 64;
  cd_image_free(&im);
  CHECK(ok);
  CHECK(cd_png_read_text(png, "parameters", a, sizeof a) == 0);
  CHECKF(jpeg_user_comment(jpg, b, sizeof b) == 0, "no EXIF UserComment in %s", jpg);
  CHECKF(!strcmp(a, b), "JPEG comment '%s' != PNG parameters '%s'", b, a);
}

/* cdiff info on a delta (full and low-rank) and on a PNG */
TEST(info_reads_deltas_and_pngs) {
  char m[1024], out[16384], args[4096], hash[64];
  HAVE("tiny-sd1", m);
  /* a one-step training run gives a real delta */
  char imgs[600], d1[600], d2[600], png[600];
  snprintf(imgs, sizeof imgs, "%s/info_imgs", tmpdir);
  snprintf(d1, sizeof d1, "%s/info_delta", tmpdir);
  snprintf(d2, sizeof d2, "%s/info_delta_lr", tmpdir);
  CHECK(mkdir(imgs, 0777) == 0 || access(imgs, F_OK) == 0);
  uint8_t px[64 * 64 * 3];
  for (int i = 0; i < 64 * 64 * 3; i++) px[i] = (uint8_t)(i * 13 + i / 190);
  cd_image im = {.w = 64, .h = 64, .c = 3, .px = px};
  snprintf(png, sizeof png, "%s/a.png", imgs);
  CHECK_OK(cd_image_save_png(png, &im, NULL, 0));
  snprintf(args, sizeof args, "train -m %s --images %s -p 'photo of a <new1> cat' --no-prior --resolution 64 --steps 1 --class-steps 5 "
           "--validation-prompt cat -o %s 2>&1", m, imgs, d1);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  /* flags without effect in this combination are named */
  CHECKF(strstr(out, "warning: --class-steps has no effect with --no-prior") &&
         strstr(out, "warning: --validation-prompt has no effect without --validate-every"), "%s", out);
  snprintf(args, sizeof args, "info %s 2>&1", m);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  const char *h = strstr(out, "\nhash:");
  CHECKF(h, "no hash in: %s", out);
  h += 6 + strspn(h + 6, " ");
  snprintf(hash, sizeof hash, "%.16s", h);
  snprintf(args, sizeof args, "info %s 2>&1", d1);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  char want[256];
  snprintf(want, sizeof want, "base hash    %s\n", hash);
  CHECKF(strstr(out, want), "want '%s' in: %s", want, out);
  CHECKF(strstr(out, "tokens       1: <new1> (from ktn)") && strstr(out, "family       SD 1.x") && strstr(out, "cdiff layout"), "%s", out);
  CHECKF(strstr(out, "layers       ") && !strstr(out, "low-rank"), "%s", out);
  /* with the base model: the hash check */
  snprintf(args, sizeof args, "info -m %s %s 2>&1", m, d1);
  CHECKF(cdiff(out, sizeof out, args) == 0 && strstr(out, ": matches"), "%s", out);
  char m2[1024];
  if (!test_golden_path(m2, sizeof m2, "small4-sd1")) {
    snprintf(args, sizeof args, "info -m %s %s 2>&1", m2, d1);
    CHECKF(cdiff(out, sizeof out, args) == 0 && strstr(out, "DIFFERS"), "%s", out);
  }
  /* the diffusers file alone is a delta too */
  snprintf(args, sizeof args, "info %s/pytorch_custom_diffusion_weights.safetensors 2>&1", d1);
  CHECKF(cdiff(out, sizeof out, args) == 0 && strstr(out, "diffusers layout"), "%s", out);
  /* low-rank: info reports the ranks compress chose */
  snprintf(args, sizeof args, "compress -m %s --delta %s --ratio 0.5 --keep-factors -o %s 2>&1", m, d1, d2);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  int rmin = 1 << 30, rmax = 0, nlow = 0;
  for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    char name[256], shape[64];
    int r;
    if (sscanf(l, "%255s %63s %d", name, shape, &r) == 3 && strstr(name, "attn2")) {
      rmin = CD_MIN(rmin, r);
      rmax = CD_MAX(rmax, r);
      nlow++;
    }
  }
  CHECKF(nlow > 0, "compress printed no ranks: %s", out);
  snprintf(args, sizeof args, "info %s 2>&1", d2);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  snprintf(want, sizeof want, "low-rank     %d weights as factors, rank %d..%d;", nlow, rmin, rmax);
  CHECKF(strstr(out, want), "want '%s' in: %s", want, out);
  /* a PNG: its text chunks, the A1111 parameters among them */
  snprintf(png, sizeof png, "%s/info.png", tmpdir);
  snprintf(args, sizeof args, "sample -m %s -p 'a cat' -n dark --steps 2 -s 9 -W 64 -o %s 2>&1", m, png);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  snprintf(args, sizeof args, "info %s 2>&1", png);
  CHECKF(cdiff(out, sizeof out, args) == 0, "%s", out);
  CHECKF(strstr(out, "PNG, 64x64") && strstr(out, "seed         9\n") && strstr(out, "parameters:\na cat\nNegative prompt: dark\nSteps: 2, "), "%s", out);
  /* a corrupt PNG is an error naming it, exit 1 */
  FILE *f = fopen(png, "r+b");
  CHECK(f != NULL);
  fseek(f, 40, SEEK_SET);
  fputc('X', f);
  fclose(f);
  snprintf(args, sizeof args, "info %s 2>&1", png);
  int rc = cdiff(out, sizeof out, args);
  CHECKF(rc == 1 && strstr(out, "info.png"), "exit %d: %s", rc, out);
}

/* cdiff judge --test: the shipped judge reads clean renders almost perfectly
 * (docs/world.md: 98.5% of kinds) and renders through the shipped autoencoder
 * less well, both lines printed; --train with --test and a missing judge are
 * errors that say so */
TEST(judge_test_mode) {
  NEED_CLI();
  char out[8192];
  int rc = cdiff(out, sizeof out, "judge --test --test-images 40 --judge models/world-judge.safetensors --vae models/cdiff-world");
  CHECKF(rc == 0, "exit %d: %s", rc, out);
  const char *a = strstr(out, "on 40 fresh images, kinds "), *b = strstr(out, "on 40 fresh images through the autoencoder, kinds ");
  CHECKF(a && b, "%s", out);
  double ka = atof(a + strlen("on 40 fresh images, kinds ")), kb = atof(b + strlen("on 40 fresh images through the autoencoder, kinds "));
  CHECKF(ka >= 85 && kb < ka + 1e-9, "kinds %.1f%% on renders, %.1f%% through the autoencoder", ka, kb);
  rc = cdiff(out, sizeof out, "judge --test --train --out x.safetensors");
  CHECKF(rc != 0 && strstr(out, "exclude"), "exit %d: %s", rc, out);
  rc = cdiff(out, sizeof out, "judge --test --judge /nonexistent/judge.safetensors");
  CHECKF(rc == 1 && strstr(out, "/nonexistent/"), "exit %d: %s", rc, out);
}

int main(void) {
  test_pin_threads(); /* bit-for-bit comparisons of two runs (test.h) */
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
  RUN(help_and_version_on_stdout);
  RUN(usage_errors_print_the_flag_line);
  RUN(runtime_failures_exit_1);
  RUN(every_spelling_is_parsed);
  RUN(sd_aliases_give_the_same_images);
  RUN(threads_and_verbose);
  RUN(docs_match_help);
  RUN(weighted_long_prompt);
  RUN(utf8_validation);
  RUN(png_parameters_and_used_flags_only);
  RUN(jpeg_output);
  RUN(info_reads_deltas_and_pngs);
  RUN(judge_test_mode);
  if (test_rmtree(tmpdir)) return 1;
  return test_summary();
}
