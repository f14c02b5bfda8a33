/* test_validate.c - the validation pass that runs before any model is loaded
 * or any step runs (train and sample): unwritable outputs and corrupt images
 * are reported first, and the images of each folder are counted. */
#include <sys/stat.h>
#include <unistd.h>

#include "custom/dataset.h"
#include "custom/trainer_run.h"
#include "io/fsutil.h"
#include "io/image.h"
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

static const char *bin(void) {
  static char b[300];
  snprintf(b, sizeof b, "./%s/cdiff", getenv("BUILD") && *getenv("BUILD") ? getenv("BUILD") : "build");
  return b;
}

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
      {"--out /tmp/x.png --save-latents '%s/l.safetensors'", "--save-latents"},
      {"--out /tmp/x.png --init-image '%s'", "--init-image"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char flags[1024];
    snprintf(flags, sizeof flags, cases[i].fmt, file);
    snprintf(args, sizeof args, "CDIFF_QUIET=1 %s sample --model /nonexistent/model --prompt x %s 2>&1", bin(), flags);
    int st = test_run_cmd(args, out, sizeof out);
    CHECKF(st == 1 && strstr(out, cases[i].want) && !strstr(out, "/nonexistent/model"), "%s: exit %d: %s", flags, st, out);
  }
}

int main(void) {
  RUN(train_corrupt_instance_image_first);
  RUN(train_unwritable_out_first);
  RUN(sample_unwritable_out_first);
  test_tmp_cleanup();
  return test_summary();
}
