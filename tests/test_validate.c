/* test_validate.c - the validation pass that runs before any model is loaded
 * or any step runs (train and sample): unwritable outputs and corrupt images
 * are reported first, and the images of each folder are counted. */
#include <sys/stat.h>
#include <unistd.h>

#include "core/sysmem.h"
#include "custom/dataset.h"
#include "custom/delta.h"
#include "custom/train_mem.h"
#include "custom/trainer_run.h"
#include "diffusion/mem_estimate.h"
#include "io/fsutil.h"
#include "io/image.h"
#include "models/sd_model.h"
#include "test.h"

static int write_png(const char *dir, const char *name, int seed) {
  cd_image im = {.w = 64, .h = 64, .c = 3, .px = cd_malloc(64 * 64 * 3)};
  for (int i = 0; i < 64 * 64 * 3; i++) im.px[i] = (uint8_t)(i * 7 + seed * 31);
  char *p = cd_path_join(dir, name);
  int rc = cd_image_save_png(p, &im, NULL, 0);
  free(p);
  cd_image_free(&im);
  return rc;
}

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

static const char *bin(void) { return test_cdiff_bin(); }

/* Today's failure: a corrupt instance image was found only after the class
 * images were generated (hours at 512 px). Now the run stops before the model
 * is even loaded: the model path here does not exist, and no class image is
 * made. */
TEST(train_corrupt_instance_image_first) {
  const char *inst = test_tmpdir("inst"), *cls = test_tmpdir("cls"), *out = test_tmpdir("out");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 1));
  char *bad = cd_path_join(inst, "b.jpg");
  CHECK(write_text(bad, "\xff\xd8\xff\xe0 this is no JPEG") == 0);
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = "/nonexistent/model";
  o.images = inst;
  o.prompt = "photo of a <new1> cat";
  o.class_prompt = "cat";
  o.class_images = cls;
  o.num_class_images = 2;
  o.out = out;
  o.quiet = 1;
  int rc = cd_train_run(&o);
  int n = 0;
  int named = rc == -1 && strstr(cd_last_error(), bad) != NULL;
  free(bad);
  CHECKF(named, "rc %d: %s", rc, cd_last_error());
  CHECK(!cd_is_dir(cls) || (cd_count_images(cls, &n) == 0 && n == 0));
  /* a corrupt class image already in the class folder: found before the model too */
  CHECK_OK(cd_mkdir_p(cls));
  CHECK_OK(write_png(cls, "c0.png", 2));
  char *cbad = cd_path_join(cls, "c1.png");
  CHECK(write_text(cbad, "\x89PNG\r\n\x1a\n broken") == 0);
  char *ib = cd_path_join(inst, "b.jpg");
  unlink(ib);
  free(ib);
  rc = cd_train_run(&o);
  named = rc == -1 && strstr(cd_last_error(), cbad) != NULL;
  free(cbad);
  CHECKF(named, "rc %d: %s", rc, cd_last_error());
}

/* A caption that is not UTF-8 would make the delta's metadata unreadable to
 * Python's safetensors: named before the model is loaded. */
TEST(train_caption_not_utf8_first) {
  const char *inst = test_tmpdir("inst7");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 1));
  char *cap = cd_path_join(inst, "a.txt");
  CHECK(write_text(cap, "photo of a <new1> caf\xe9 cat") == 0);
  free(cap);
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = "/nonexistent/model";
  o.images = inst;
  o.prompt = "photo of a <new1> cat";
  o.prior = 0;
  o.out = test_tmpdir("out7");
  o.quiet = 1;
  int rc = cd_train_run(&o);
  CHECKF(rc == -1 && strstr(cd_last_error(), "a.txt") == NULL && strstr(cd_last_error(), "a.png") && strstr(cd_last_error(), "not valid UTF-8"),
         "rc %d: %s", rc, cd_last_error());
  o.prompt = "photo of a <new1> \xff";
  rc = cd_train_run(&o);
  CHECKF(rc == -1 && strstr(cd_last_error(), "--prompt is not valid UTF-8"), "rc %d: %s", rc, cd_last_error());
  /* the flags' prompts are checked once, with the options (the CLI's exit 2 comes from there) */
  const char **field[3] = {&o.prompt, &o.class_prompt, &o.validation_prompt};
  static const char *const flag[3] = {"--prompt", "--class-prompt", "--validation-prompt"};
  for (int i = 0; i < 3; i++) {
    o.prompt = "photo of a <new1> cat";
    o.class_prompt = o.validation_prompt = NULL;
    *field[i] = "caf\xe9";
    rc = cd_run_opts_check(&o);
    CHECKF(rc == -1 && !strncmp(cd_last_error(), flag[i], strlen(flag[i])) && strstr(cd_last_error(), "is not valid UTF-8 (byte 3: 0xe9)"),
           "%s: rc %d: %s", flag[i], rc, rc ? cd_last_error() : "");
  }  /* a --concepts file's prompts are checked by the run, before the model */
  char json[1200];
  snprintf(json, sizeof json, "[{\"instance_prompt\": \"photo of a <new1> caf\xe9\", \"instance_data_dir\": \"%s\"}]", inst);
  const char *cj = test_tmpdir("concepts7.json");
  CHECK(write_text(cj, json) == 0);
  cd_run_opts_default(&o);
  o.model = "/nonexistent/model";
  o.concepts = cj;
  o.prior = 0;
  o.out = test_tmpdir("out7c");
  o.quiet = 1;
  rc = cd_train_run(&o);
  CHECKF(rc == -1 && strstr(cd_last_error(), "concept 1: instance_prompt is not valid UTF-8 (byte 21: 0xe9)"), "rc %d: %s", rc, cd_last_error());
}

/* An --out that cannot be written is an error before the model is loaded. */
TEST(train_unwritable_out_first) {
  const char *inst = test_tmpdir("inst2"), *file = test_tmpdir("plainfile");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 1));
  CHECK(write_text(file, "x") == 0);
  char out[600];
  snprintf(out, sizeof out, "%s/sub", file); /* a folder inside a regular file: never writable, even for root */
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = "/nonexistent/model";
  o.images = inst;
  o.prompt = "photo of a <new1> cat";
  o.prior = 0;
  o.out = out;
  o.quiet = 1;
  int rc = cd_train_run(&o);
  CHECKF(rc == -1 && strstr(cd_last_error(), "--out") && strstr(cd_last_error(), file), "rc %d: %s", rc, cd_last_error());
  o.out = file; /* an existing file as the output folder */
  rc = cd_train_run(&o);
  CHECKF(rc == -1 && strstr(cd_last_error(), "--out") && strstr(cd_last_error(), "not a folder"), "rc %d: %s", rc, cd_last_error());
}

/* Today's failure: `sample --out` into an unwritable place failed only after
 * all the sampling. Now before the model is loaded (the model does not exist
 * here, so reaching the loader would report the model instead). */
TEST(sample_unwritable_out_first) {
  if (access(bin(), X_OK)) SKIP("%s not built", bin());
  const char *file = test_tmpdir("plainfile2");
  CHECK(write_text(file, "x") == 0);
  char args[2048], out[4096];
  struct { const char *fmt, *want; } cases[] = {
      {"--out '%s/x.png'", "--out"},
      {"--out '%s/newdir/'", "--out"},
      {"--save-latents '%s/l.safetensors'", "--save-latents"},
      {"--init-image '%s'", "--init-image"}};
  /* where an --out is needed besides the bad flag: this run's own folder (a
   * fixed /tmp/x.png would collide with other runs on the machine) */
  char xpng[1024];
  snprintf(xpng, sizeof xpng, "%s", test_tmpdir("x.png"));
  /* merge and compress: --out and --delta before the model */
  char merge_cmd[2048];
  snprintf(merge_cmd, sizeof merge_cmd, "%s merge --model /nonexistent/model --delta '%s':cat --out '%s/sub' 2>&1", bin(), test_tmpdir(""), file);
  int mst = test_run_cmd(merge_cmd, out, sizeof out);
  CHECKF(mst == 1 && strstr(out, "--out") && !strstr(out, "/nonexistent/model"), "merge: exit %d: %s", mst, out);
  snprintf(merge_cmd, sizeof merge_cmd, "%s compress --model /nonexistent/model --delta /nonexistent/delta --out '%s' 2>&1", bin(),
           test_tmpdir("cmp_out"));
  mst = test_run_cmd(merge_cmd, out, sizeof out);
  CHECKF(mst == 1 && strstr(out, "--delta /nonexistent/delta") && !strstr(out, "/nonexistent/model"), "compress: exit %d: %s", mst, out);
  /* a prompt that is not UTF-8 (it would go into the PNG's iTXt metadata) */
  snprintf(merge_cmd, sizeof merge_cmd, "%s sample --model /nonexistent/model --prompt ok --negative \"$(printf 'caf\\351')\" --out '%s' 2>&1", bin(), xpng);
  mst = test_run_cmd(merge_cmd, out, sizeof out);
  CHECKF(mst == 2 && strstr(out, "--negative value is not valid UTF-8 (byte 3: 0xe9)"), "exit %d: %s", mst, out);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char flags[2200];
    int k = snprintf(flags, sizeof flags, cases[i].fmt, file);
    if (i >= 2) snprintf(flags + k, sizeof flags - k, " --out '%s'", xpng);
    snprintf(args, sizeof args, "CDIFF_QUIET=1 %s sample --model /nonexistent/model --prompt x %s 2>&1", bin(), flags);
    int st = test_run_cmd(args, out, sizeof out);
    CHECKF(st == 1 && strstr(out, cases[i].want) && !strstr(out, "/nonexistent/model"), "%s: exit %d: %s", flags, st, out);
    CHECKF(access(xpng, F_OK) != 0, "%s: failed but left %s behind", flags, xpng);
  }
}

/* A modifier token past the 75-token limit would be truncated away and never
 * train: refused before class images are generated. A long prompt with the
 * token early only warns. */
TEST(train_token_past_the_limit) {
  char mp[1024];
  NEED_GOLDEN(mp, "tiny-sd1");
  const char *inst = test_tmpdir("inst5"), *cls = test_tmpdir("cls5"), *out = test_tmpdir("out5");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 1));
  char late[1200] = "photo of", early[1200] = "photo of a <new1> cat";
  for (int i = 0; i < 80; i++) strcat(late, " cat");
  strcat(late, " <new1>");
  for (int i = 0; i < 80; i++) strcat(early, " cat");
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = mp;
  o.images = inst;
  o.prompt = late;
  o.class_prompt = "cat";
  o.class_images = cls;
  o.num_class_images = 2;
  o.class_steps = 2;
  o.res = 64;
  o.steps = 1;
  o.out = out;
  o.quiet = 1;
  int rc = cd_train_run(&o), n = 0;
  CHECKF(rc == -1 && strstr(cd_last_error(), "--prompt") && strstr(cd_last_error(), "<new1> comes after the 75-token limit"), "rc %d: %s",
         rc, cd_last_error());
  CHECK(!cd_is_dir(cls) || (cd_count_images(cls, &n) == 0 && n == 0));
  o.prompt = early;
  o.prior = 0;
  rc = cd_train_run(&o);
  CHECKF(rc == 0, "%s", cd_last_error());
}

/* Every run says how many images of each folder it uses, and names the
 * files it skips (today a .gif or .webp in the folder was ignored silently). */
TEST(train_reports_images_used) {
  char mp[1024], cmd[3000], out[8192];
  NEED_GOLDEN(mp, "tiny-sd1");
  if (access(bin(), X_OK)) SKIP("%s not built", bin());
  const char *inst = test_tmpdir("inst6"), *cls = test_tmpdir("cls6");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(cd_mkdir_p(cls));
  CHECK_OK(write_png(inst, "a.png", 1));
  CHECK_OK(write_png(inst, "b.webp", 2)); /* PNG bytes: the loader goes by content */
  char *gif = cd_path_join(inst, "c.gif");
  CHECK(write_text(gif, "GIF89a") == 0);
  free(gif);
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "class_%05d.png", i);
    CHECK_OK(write_png(cls, name, 10 + i));
  }
  snprintf(cmd, sizeof cmd,
           "CDIFF_QUIET=1 %s train --model '%s' --images '%s' --prompt 'photo of a <new1> cat' --class-prompt cat --class-images '%s' "
           "--num-class-images 2 --resolution 64 --steps 1 --out '%s' 2>&1",
           bin(), mp, inst, cls, test_tmpdir("out6"));
  int st = test_run_cmd(cmd, out, sizeof out);
  char want1[700], want2[700];
  snprintf(want1, sizeof want1, "instance images of concept 1: %s: 2 of 2 images used; skipped 1 file that is not PNG, JPEG, WebP or BMP: c.gif", inst);
  snprintf(want2, sizeof want2, "class images of concept 1: %s: 2 of 3 images used", cls);
  CHECKF(st == 0 && strstr(out, want1) && strstr(out, want2), "exit %d: %s", st, out);
}

/* ---- memory ---- */

/* The estimate (planner at two small sizes, extended affinely in the area)
 * against the planner itself at larger, non-square sizes. Not a numerical
 * tolerance: the estimate is exact when every buffer is affine in the area,
 * and the remainder (sizes rounded at the down-sampling levels, constant
 * buffers changing the packing order) must stay small; 5% is what a refusal
 * decision needs. */
TEST(memory_estimate_matches_planner) {
  static const char *const models[] = {"tiny-sd1", "small4-sd1"};
  for (int k = 0; k < 2; k++) {
    char mp[1024];
    NEED_GOLDEN(mp, models[k]);
    cd_sd_model *m = NULL;
    cd_load_opts lo = {0};
    CHECK_OK(cd_sd_load(mp, &lo, &m));
    static const int sizes[][2] = {{384, 640}, {768, 512}};
    for (int i = 0; i < 2; i++) {
      const int W = sizes[i][0], H = sizes[i][1];
      cd_mem_plan p;
      double unet, dec, enc;
      int rc = cd_sample_mem_plan(m, 1, 2, W, H, 0, 1, &p) || cd_unet_arena_bytes(m, 2, H / 8, W / 8, &unet) ||
               cd_vae_arena_bytes(m, 1, H / 8, W / 8, &dec) || cd_vae_arena_bytes(m, 0, H / 8, W / 8, &enc);
      if (rc) { cd_sd_free(m); FAILF("%s: %s", models[k], cd_last_error()); }
      double eu = fabs(p.unet / unet - 1), ed = fabs(p.vae / dec - 1), ee = fabs(p.encoder / enc - 1);
      printf("  %s %dx%d: UNet %.2f MiB (planned %.2f), decoder %.2f (%.2f), encoder %.2f (%.2f)\n", models[k], W, H, p.unet / 1048576,
             unet / 1048576, p.vae / 1048576, dec / 1048576, p.encoder / 1048576, enc / 1048576);
      if (!(eu <= 0.05 && ed <= 0.05 && ee <= 0.05)) {
        cd_sd_free(m);
        FAILF("%s %dx%d: estimate off by UNet %.3f, decoder %.3f, encoder %.3f", models[k], W, H, eu, ed, ee);
      }
    }
    /* three images: the UNet and buffers scale with the batch */
    cd_mem_plan p3;
    double u3;
    if (cd_sample_mem_plan(m, 3, 2, 384, 640, 0, 0, &p3) || cd_unet_arena_bytes(m, 6, 640 / 8, 384 / 8, &u3)) {
      cd_sd_free(m);
      FAILF("%s: %s", models[k], cd_last_error());
    }
    printf("  %s 3 images 384x640: UNet %.2f MiB (planned %.2f)\n", models[k], p3.unet / 1048576, u3 / 1048576);
    if (!(fabs(p3.unet / u3 - 1) <= 0.05)) {
      cd_sd_free(m);
      FAILF("%s, 3 images: UNet estimate %.0f vs %.0f bytes", models[k], p3.unet, u3);
    }
    /* two images of a prompt with two sub-prompts (AND): uncond + 2 conds, the same UNet batch of 6 */
    if (cd_sample_mem_plan(m, 2, 3, 384, 640, 0, 0, &p3)) {
      cd_sd_free(m);
      FAILF("%s: %s", models[k], cd_last_error());
    }
    if (!(fabs(p3.unet / u3 - 1) <= 0.05)) {
      cd_sd_free(m);
      FAILF("%s, 2 images x 3 passes: UNet estimate %.0f vs %.0f bytes", models[k], p3.unet, u3);
    }
    /* training: the trainer at 256 px, batch 2, against its estimate from batch 1 at 64 and 128 px */
    cd_train_opts o;
    cd_train_opts_default(&o);
    o.res = 256;
    o.batch = 2;
    double est, exact, est_ck, exact_ck;
    int rc = cd_train_mem_estimate(m, &o, 1, &est) || cd_trainer_bytes(m, &o, 1, &exact);
    o.grad_ckpt = 1; /* activation checkpointing: the largest block's intermediates instead of all of them; */
    o.res = 512;     /* beyond the calibration sizes */
    rc = rc || cd_train_mem_estimate(m, &o, 1, &est_ck) || cd_trainer_bytes(m, &o, 1, &exact_ck);
    cd_sd_free(m);
    CHECKF(rc == 0, "%s", cd_last_error());
    printf("  %s training 256 px: %.2f MiB (planned %.2f); checkpointed at 512 px %.2f MiB (planned %.2f)\n", models[k], est / 1048576,
           exact / 1048576, est_ck / 1048576, exact_ck / 1048576);
    CHECKF(fabs(est / exact - 1) <= 0.05, "%s training: estimate %.0f vs %.0f bytes", models[k], est, exact);
    CHECKF(fabs(est_ck / exact_ck - 1) <= 0.05, "%s training, checkpointed: estimate %.0f vs %.0f bytes", models[k], est_ck, exact_ck);
  }
}

/* Today's failure: --width 100000 --height 100000 aborted (SIGABRT, out of
 * memory). Now a refusal with the estimate and the limit, exit 1, at once. */
TEST(sample_refuses_what_cannot_fit) {
  char mp[1024], cmd[3000], out[4096];
  NEED_GOLDEN(mp, "tiny-sd1");
  if (access(bin(), X_OK)) SKIP("%s not built", bin());
  const char *png = test_tmpdir("big.png");
  snprintf(cmd, sizeof cmd, "CDIFF_QUIET=1 %s sample --model '%s' --prompt x --width 100000 --height 100000 --out '%s' 2>&1", bin(), mp, png);
  int st = test_run_cmd(cmd, out, sizeof out);
  CHECKF(st == 1 && strstr(out, "needs about") && strstr(out, "TiB") && strstr(out, "physical memory"), "exit %d: %s", st, out);
  CHECK(!cd_file_exists(png));
  /* the address-space limit, when set, is the one named (not under ASan, whose
   * shadow memory needs terabytes of address space) */
#ifndef __SANITIZE_ADDRESS__
  snprintf(cmd, sizeof cmd, "ulimit -v 4000000; CDIFF_QUIET=1 %s sample --model '%s' --prompt x --width 100000 --height 100000 --out '%s' 2>&1",
           bin(), mp, png);
  st = test_run_cmd(cmd, out, sizeof out);
  CHECKF(st == 1 && strstr(out, "RLIMIT_AS"), "ulimit -v: exit %d: %s", st, out);
#endif
  /* CDIFF_MEM_LIMIT replaces the limit: 512 px on the tiny model needs > 64 MiB (its VAE decoder alone plans 96 MiB) */
  snprintf(cmd, sizeof cmd, "CDIFF_MEM_LIMIT=64M CDIFF_QUIET=1 %s sample --model '%s' --prompt x --width 512 --height 512 --steps 1 --out '%s' 2>&1",
           bin(), mp, png);
  st = test_run_cmd(cmd, out, sizeof out);
  CHECKF(st == 1 && strstr(out, "CDIFF_MEM_LIMIT = 64 MiB"), "exit %d: %s", st, out);
  snprintf(cmd, sizeof cmd, "CDIFF_MEM_LIMIT=lots CDIFF_QUIET=1 %s sample --model '%s' --prompt x --width 64 --height 64 --steps 1 --out '%s' 2>&1",
           bin(), mp, png);
  st = test_run_cmd(cmd, out, sizeof out);
  CHECKF(st == 1 && strstr(out, "CDIFF_MEM_LIMIT='lots'"), "exit %d: %s", st, out);
  /* and a size that fits runs */
  snprintf(cmd, sizeof cmd, "CDIFF_QUIET=1 %s sample --model '%s' --prompt x --width 64 --height 64 --steps 1 --out '%s' 2>&1", bin(), mp, png);
  st = test_run_cmd(cmd, out, sizeof out);
  CHECKF(st == 0 && cd_file_exists(png), "exit %d: %s", st, out);
}

/* Training: refused after the model is loaded and before any class image is
 * generated. */
TEST(train_refuses_what_cannot_fit) {
  char mp[1024];
  NEED_GOLDEN(mp, "tiny-sd1");
  const char *inst = test_tmpdir("inst3"), *cls = test_tmpdir("cls3"), *out = test_tmpdir("out3");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 1));
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = mp;
  o.images = inst;
  o.prompt = "photo of a <new1> cat";
  o.class_prompt = "cat";
  o.class_images = cls;
  o.num_class_images = 2;
  o.class_steps = 2;
  o.res = 64;
  o.steps = 1;
  o.out = out;
  o.quiet = 1;
  setenv("CDIFF_MEM_LIMIT", "1M", 1);
  int rc = cd_train_run(&o);
  unsetenv("CDIFF_MEM_LIMIT");
  int n = 0;
  CHECKF(rc == -1 && strstr(cd_last_error(), "needs about") && strstr(cd_last_error(), "--resolution 64"), "rc %d: %s", rc, cd_last_error());
  CHECK(!cd_is_dir(cls) || (cd_count_images(cls, &n) == 0 && n == 0));
}

/* ---- base-model hash ---- */

/* sample and compress warn when a delta was trained on another model (as
 * merge already did); no warning for the model it was trained on. */
TEST(delta_base_hash_warnings) {
  char mp[1024], cmd[3000], out[8192];
  NEED_GOLDEN(mp, "tiny-sd1");
  if (access(bin(), X_OK)) SKIP("%s not built", bin());
  const char *inst = test_tmpdir("inst4"), *d1 = test_tmpdir("delta"), *d2 = test_tmpdir("delta_other"), *png = test_tmpdir("s.png");
  CHECK_OK(cd_mkdir_p(inst));
  CHECK_OK(write_png(inst, "a.png", 1));
  cd_run_opts o;
  cd_run_opts_default(&o);
  o.model = mp;
  o.images = inst;
  o.prompt = "photo of a <new1> cat";
  o.prior = 0;
  o.res = 64;
  o.steps = 1;
  o.out = d1;
  o.quiet = 1;
  CHECK_OK(cd_train_run(&o));
  /* the same delta, recorded as trained on another model */
  cd_delta *d;
  CHECK_OK(cd_delta_load(d1, NULL, &d));
  char real[17];
  snprintf(real, sizeof real, "%s", d->base_hash);
  snprintf(d->base_hash, sizeof d->base_hash, "0123456789abcdef");
  int rc = cd_delta_save(d2, d);
  cd_delta_free(d);
  CHECK_OK(rc);
  CHECK(real[0] && strcmp(real, "0123456789abcdef"));
  const char *dirs[2] = {d1, d2};
  for (int k = 0; k < 2; k++) {
    snprintf(cmd, sizeof cmd, "CDIFF_QUIET=1 %s sample --model '%s' --delta '%s' --prompt 'a <new1> cat' --width 64 --height 64 --steps 1 --out '%s' --overwrite 2>&1",
             bin(), mp, dirs[k], png); /* the same image twice: --overwrite */
    int st = test_run_cmd(cmd, out, sizeof out);
    int warned = strstr(out, "0123456789abcdef") && strstr(out, "trained on a model with hash");
    CHECKF(st == 0 && warned == k, "sample with %s: exit %d, warned %d: %s", k ? "another model's delta" : "its own delta", st, warned, out);
    snprintf(cmd, sizeof cmd, "%s compress --model '%s' --delta '%s' --ratio 0.5 --out '%s/c%d' 2>&1", bin(), mp, dirs[k], test_tmpdir("cmp"), k);
    st = test_run_cmd(cmd, out, sizeof out);
    warned = strstr(out, "0123456789abcdef") && strstr(out, "trained on a model with hash");
    CHECKF(st == 0 && warned == k, "compress with %s: exit %d, warned %d: %s", k ? "another model's delta" : "its own delta", st, warned, out);
  }
}

int main(void) {
  RUN(train_corrupt_instance_image_first);
  RUN(train_unwritable_out_first);
  RUN(train_caption_not_utf8_first);
  RUN(sample_unwritable_out_first);
  RUN(train_token_past_the_limit);
  RUN(train_reports_images_used);
  RUN(memory_estimate_matches_planner);
  RUN(sample_refuses_what_cannot_fit);
  RUN(train_refuses_what_cannot_fit);
  RUN(delta_base_hash_warnings);
  test_tmp_cleanup();
  return test_summary();
}
