/* test_dataset.c - image folders, concepts JSON, the instance/class example
 * preprocessing of train_custom_diffusion.py, and the decoded-image cache. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "custom/dataset.h"
#include "test.h"

/* ---- helpers ---- */

static int write_text(const char *dir, const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

/* w x h RGB image with px[y][x][k] = fn(x, y, k) */
static void make_image(cd_image *im, int w, int h, int (*fn)(int, int, int)) {
  im->w = w, im->h = h, im->c = 3;
  im->px = cd_malloc((size_t)w * h * 3);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int k = 0; k < 3; k++) im->px[((size_t)y * w + x) * 3 + k] = (uint8_t)fn(x, y, k);
}
static int fn_pattern(int x, int y, int k) { return (x * 7 + y * 13 + k * 61) & 255; }
static int fn_const(int x, int y, int k) { return k == 0 ? 200 : k == 1 ? 100 : 50; }

static int save_png(const char *dir, const char *name, int w, int h) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  cd_image im;
  make_image(&im, w, h, fn_pattern);
  int rc = cd_image_save_png(p, &im, NULL, 0);
  cd_image_free(&im);
  return rc;
}

/* the script's value of pixel v: instances in float64, class images through torchvision in float32 */
static float pv(int v) { return (float)(v / 127.5 - 1.0); }
static float pvc(int v) {
  float t = (float)v / 255.0f;
  return (t - 0.5f) / 0.5f;
}
/* pixel (k, y, x) of a [3, res, res] buffer */
#define PIX(p, res, k, y, x) (p)[((size_t)(k) * (res) + (y)) * (res) + (x)]

/* ---- image folders ---- */

TEST(list_folder) {
  char dir[] = "/tmp/cdiff_ds_XXXXXX";
  CHECK(mkdtemp(dir));
  char sub[600];
  snprintf(sub, sizeof sub, "%s/d.png", dir);
  int ok = save_png(dir, "b.png", 8, 8) == 0 && save_png(dir, "a.PNG", 9, 7) == 0 &&
           save_png(dir, "c.jpeg", 8, 8) == 0 && save_png(dir, ".hidden.png", 8, 8) == 0 &&
           write_text(dir, "a.txt", "  \t a photo of <new1> cat\n\n") == 0 &&
           write_text(dir, "c.txt", " \n ") == 0 && write_text(dir, "notes.md", "not an image") == 0 &&
           write_text(dir, "e.txt", "orphan caption") == 0 && mkdir(sub, 0700) == 0;
  if (!ok) { test_rmtree(dir); FAILF("could not create the test folder %s", dir); }
  cd_item_list l = {0};
  int rc = cd_list_images(dir, &l);
  char want[3][600];
  snprintf(want[0], sizeof want[0], "%s/a.PNG", dir);
  snprintf(want[1], sizeof want[1], "%s/b.png", dir);
  snprintf(want[2], sizeof want[2], "%s/c.jpeg", dir);
  int good = rc == 0 && l.n == 3 && !strcmp(l.items[0].path, want[0]) && !strcmp(l.items[1].path, want[1]) &&
             !strcmp(l.items[2].path, want[2]) && l.items[0].caption &&
             !strcmp(l.items[0].caption, "a photo of <new1> cat") && !l.items[1].caption && !l.items[2].caption;
  char msg[256];
  snprintf(msg, sizeof msg, "rc %d n %d first %s cap %s", rc, l.n, l.n ? l.items[0].path : "-",
           l.n && l.items[0].caption ? l.items[0].caption : "(null)");
  /* the listed files decode (c.jpeg is a PNG: the loader goes by magic bytes) */
  cd_image im = {0};
  int lrc = good ? cd_load_example_image(l.items[0].path, &im) : -1;
  int dims_ok = lrc == 0 && im.w == 9 && im.h == 7 && im.c == 3 && im.px[3 * (9 * 2 + 4) + 1] == fn_pattern(4, 2, 1);
  cd_image_free(&im);
  cd_item_list_free(&l);
  CHECK(l.n == 0 && l.items == NULL);
  test_rmtree(dir);
  CHECKF(good, "%s", msg);
  CHECKF(dims_ok, "load: %s", lrc ? cd_last_error() : "wrong size or pixels");
}

TEST(list_errors) {
  char dir[] = "/tmp/cdiff_ds_XXXXXX";
  CHECK(mkdtemp(dir));
  write_text(dir, "readme.txt", "no images here");
  cd_item_list l = {0};
  int rc = cd_list_images(dir, &l);
  int named = rc == -1 && strstr(cd_last_error(), dir) && strstr(cd_last_error(), "contains no") && l.n == 0;
  char missing[600];
  snprintf(missing, sizeof missing, "%s/nope", dir);
  int rc2 = cd_list_images(missing, &l);
  int named2 = rc2 == -1 && strstr(cd_last_error(), missing) != NULL;
  /* a corrupt .png lists fine but fails to load, naming the file */
  write_text(dir, "bad.png", "\x89PNG\r\n\x1a\n garbage garbage garbage");
  char bad[600];
  snprintf(bad, sizeof bad, "%s/bad.png", dir);
  int rc3 = cd_list_images(dir, &l);
  cd_image im = {0};
  int rc4 = cd_load_example_image(bad, &im);
  int named4 = rc4 == -1 && strstr(cd_last_error(), bad) != NULL && im.px == NULL;
  cd_item_list_free(&l);
  test_rmtree(dir);
  CHECKF(named, "empty folder: rc %d, %s", rc, cd_last_error());
  CHECK(named2);
  CHECK(rc3 == 0);
  CHECK(named4);
}

/* WebP and BMP are listed (today they were silently ignored), other files are
 * counted and named, and a verify pass decodes every used image up front. */
TEST(list_formats_and_skipped) {
  char dir[] = "/tmp/cdiff_ds_XXXXXX";
  CHECK(mkdtemp(dir));
  int ok = save_png(dir, "a.webp", 8, 8) == 0 && save_png(dir, "b.BMP", 8, 8) == 0 && save_png(dir, "c.png", 8, 8) == 0 &&
           write_text(dir, "d.gif", "GIF89a") == 0 && write_text(dir, "e.tiff", "II*") == 0 &&
           write_text(dir, "c.txt", "caption") == 0 && write_text(dir, ".DS_Store", "x") == 0;
  if (!ok) { test_rmtree(dir); FAILF("could not create the test folder %s", dir); }
  cd_item_list l = {0};
  int rc = cd_list_images(dir, &l);
  int good = rc == 0 && l.n == 3 && l.nskipped == 2 && l.skipped_names && strstr(l.skipped_names, "d.gif") &&
             strstr(l.skipped_names, "e.tiff") && !strstr(l.skipped_names, "c.txt") && !strstr(l.skipped_names, "DS_Store");
  char msg[300];
  snprintf(msg, sizeof msg, "rc %d n %d skipped %d (%s)", rc, l.n, l.nskipped, l.skipped_names ? l.skipped_names : "-");
  int vrc = good ? cd_item_list_verify(&l, l.n) : -1; /* PNG bytes under other names decode: magic bytes decide */
  write_text(dir, "b.BMP", "BM not really a bitmap");
  int vbad = cd_item_list_verify(&l, l.n);
  int named = vbad == -1 && strstr(cd_last_error(), "b.BMP") != NULL;
  int vfirst = cd_item_list_verify(&l, 1); /* only the used ones are decoded */
  cd_item_list_free(&l);
  test_rmtree(dir);
  CHECKF(good, "%s", msg);
  CHECKF(vrc == 0, "%s", cd_last_error());
  CHECKF(named, "corrupt BMP: %d %s", vbad, cd_last_error());
  CHECK(vfirst == 0);
}

TEST(text_utf8) {
  static const char *const good[] = {"", "photo of a <new1> cat", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac", "\xf0\x9f\x90\x88 cat",
                                     "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf"};
  static const char *const bad[] = {"caf\xe9", "\xc3", "\xe6\x97", "\xc0\xaf" /* overlong '/' */, "\xed\xa0\x80" /* surrogate */,
                                    "\xf4\x90\x80\x80" /* > U+10FFFF */, "\xff", "ok \x80"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) CHECKF(cd_text_check_utf8("t", good[i]) == 0, "good %zu: %s", i, cd_last_error());
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECKF(cd_text_check_utf8("--prompt", bad[i]) == -1 && strstr(cd_last_error(), "--prompt is not valid UTF-8"), "bad %zu accepted", i);
  CHECK(cd_text_check_utf8("x", "ok \x80") == -1 && strstr(cd_last_error(), "byte 3"));
}

/* ---- concepts ---- */

TEST(concepts_json) {
  char dir[] = "/tmp/cdiff_ds_XXXXXX";
  CHECK(mkdtemp(dir));
  char p[600];
  snprintf(p, sizeof p, "%s/c.json", dir);
  write_text(dir, "c.json",
             "[{\"instance_prompt\": \"photo of a <new1> cat\", \"class_prompt\": \"cat\",\n"
             "  \"instance_data_dir\": \"data/cat\", \"class_data_dir\": \"real_reg/cat\"},\n"
             " {\"instance_prompt\": \"a <new2> chair\", \"class_prompt\": \"chair\",\n"
             "  \"instance_data_dir\": \"data/chair\", \"class_data_dir\": \"\", \"extra\": 1}]");
  cd_concept *c = NULL;
  int n = 0;
  int rc = cd_concepts_load(p, &c, &n);
  int good = rc == 0 && n == 2 && !strcmp(c[0].instance_prompt, "photo of a <new1> cat") &&
             !strcmp(c[0].class_prompt, "cat") && !strcmp(c[0].instance_data_dir, "data/cat") &&
             !strcmp(c[0].class_data_dir, "real_reg/cat") && !strcmp(c[1].instance_data_dir, "data/chair") &&
             c[1].class_data_dir == NULL;
  cd_concepts_free(c, n);

  write_text(dir, "c.json",
             "[{\"instance_prompt\": \"a\", \"instance_data_dir\": \"x\"},\n"
             " {\"instance_prompt\": \"b\", \"class_prompt\": \"c\"}]");
  int rc2 = cd_concepts_load(p, &c, &n);
  int named2 = rc2 == -1 && strstr(cd_last_error(), p) && strstr(cd_last_error(), "concept 1") &&
               strstr(cd_last_error(), "instance_data_dir") && c == NULL && n == 0;
  char e2[512];
  snprintf(e2, sizeof e2, "%s", cd_last_error());

  write_text(dir, "c.json", "{\"instance_prompt\": \"a\", \"instance_data_dir\": \"x\"}");
  int rc3 = cd_concepts_load(p, &c, &n);
  int named3 = rc3 == -1 && strstr(cd_last_error(), p) && strstr(cd_last_error(), "list");

  write_text(dir, "c.json", "[{\"instance_prompt\": 3, \"instance_data_dir\": \"x\"}]");
  int rc4 = cd_concepts_load(p, &c, &n);
  int named4 = rc4 == -1 && strstr(cd_last_error(), "concept 0") && strstr(cd_last_error(), "instance_prompt");

  write_text(dir, "c.json", "[{\"instance_prompt\": \"a\",");
  int rc5 = cd_concepts_load(p, &c, &n);
  write_text(dir, "c.json", "[]");
  int rc6 = cd_concepts_load(p, &c, &n);
  int rc7 = cd_concepts_load("/nonexistent/c.json", &c, &n);
  int named7 = rc7 == -1 && strstr(cd_last_error(), "/nonexistent/c.json") != NULL;
  test_rmtree(dir);
  CHECKF(good, "good file: rc %d n %d %s", rc, n, rc ? cd_last_error() : "");
  CHECKF(named2, "missing key: %s", e2);
  CHECK(named3);
  CHECK(named4);
  CHECK(rc5 == -1 && rc6 == -1 && named7);
}

/* ---- instance augmentation ---- */

TEST(instance_draw_stats) {
  const int res = 64, N = 40000;
  cd_rng r;
  cd_rng_seed(&r, 7);
  int small = 0, flips = 0, smin = 1 << 30, smax = 0, lmin = 1 << 30, lmax = 0;
  int pre[4] = {0}; /* far away, very small, zoomed in, close up */
  for (int i = 0; i < N; i++) {
    cd_instance_aug a;
    CHECK_OK(cd_instance_draw(res, 1, 1, &r, &a));
    flips += a.flip;
    int outer = res, inner = a.scale;
    if (a.scale > res) outer = a.scale, inner = res;
    CHECKF(a.top >= 0 && a.left >= 0 && a.top <= outer - inner && a.left <= outer - inner, "scale %d at (%d, %d)",
           a.scale, a.top, a.left);
    if (a.scale <= res) {
      small++;
      smin = CD_MIN(smin, a.scale), smax = CD_MAX(smax, a.scale);
    } else {
      lmin = CD_MIN(lmin, a.scale), lmax = CD_MAX(lmax, a.scale);
    }
    if (a.scale < 0.6 * res) {
      CHECKF(!strcmp(a.prefix, "a far away ") || !strcmp(a.prefix, "very small "), "scale %d prefix '%s'", a.scale,
             a.prefix);
      pre[!strcmp(a.prefix, "very small ")]++;
    } else if (a.scale > res) {
      CHECKF(!strcmp(a.prefix, "zoomed in ") || !strcmp(a.prefix, "close up "), "scale %d prefix '%s'", a.scale,
             a.prefix);
      pre[2 + !strcmp(a.prefix, "close up ")]++;
    } else {
      CHECKF(a.prefix[0] == 0, "scale %d prefix '%s'", a.scale, a.prefix);
    }
  }
  double fs = (double)small / N, ff = (double)flips / N;
  CHECKF(fabs(fs - 0.66) < 0.015, "fraction of small scales %.4f", fs);
  CHECKF(fabs(ff - 0.5) < 0.015, "flip fraction %.4f", ff);
  /* randint(64/3, 65) -> [21, 64]; randint(int(76.8), int(89.6)) -> [76, 88] */
  CHECKF(smin == 21 && smax == 64 && lmin == 76 && lmax == 88, "ranges [%d, %d] [%d, %d]", smin, smax, lmin, lmax);
  for (int k = 0; k < 4; k++) CHECKF(pre[k] > 1000, "prefix %d drawn %d times", k, pre[k]);
  CHECK(abs(pre[0] - pre[1]) < 0.1 * (pre[0] + pre[1]) && abs(pre[2] - pre[3]) < 0.1 * (pre[2] + pre[3]));

  /* no aug, no hflip: nothing random */
  cd_instance_aug a;
  CHECK_OK(cd_instance_draw(res, 0, 0, &r, &a));
  CHECK(a.scale == res && a.top == 0 && a.left == 0 && a.flip == 0 && a.prefix[0] == 0);
  CHECK(cd_instance_draw(60, 1, 0, &r, &a) == -1); /* not a multiple of 8 */
}

/* mask ones count and bounding box */
static int mask_box(const float *m, int n, int *r0, int *r1, int *c0, int *c1) {
  int cnt = 0;
  *r0 = *c0 = n, *r1 = *c1 = -1;
  for (int y = 0; y < n; y++)
    for (int x = 0; x < n; x++) {
      if (m[y * n + x] == 1.0f) {
        cnt++;
        *r0 = CD_MIN(*r0, y), *r1 = CD_MAX(*r1, y), *c0 = CD_MIN(*c0, x), *c1 = CD_MAX(*c1, x);
      } else if (m[y * n + x] != 0.0f) {
        return -1;
      }
    }
  return cnt;
}

TEST(instance_mask_geometry) {
  const int res = 64;
  float *pix = cd_malloc(sizeof(float) * 3 * res * res), mask[64];
  cd_image im;
  make_image(&im, 37, 23, fn_const); /* constant colour stays exact through the resize */
  /* golden README section 4: scale 40 at (8, 16) -> rows 2..4 x cols 3..5; scale 48 at (0, 8) -> rows 1..4 x cols 2..5 */
  const int cases[2][7] = {{40, 8, 16, 2, 4, 3, 5}, {48, 0, 8, 1, 4, 2, 5}};
  for (int t = 0; t < 2; t++) {
    cd_instance_aug a = {0, cases[t][0], cases[t][1], cases[t][2], ""};
    if (cd_instance_render(&im, res, &a, pix, mask)) { cd_image_free(&im); free(pix); FAILF("%s", cd_last_error()); }
    int r0, r1, c0, c1, cnt = mask_box(mask, 8, &r0, &r1, &c0, &c1);
    int want = (cases[t][4] - cases[t][3] + 1) * (cases[t][6] - cases[t][5] + 1);
    int geom = cnt == want && r0 == cases[t][3] && r1 == cases[t][4] && c0 == cases[t][5] && c1 == cases[t][6];
    int outside_zero = 1, inside_ok = 1;
    for (int k = 0; k < 3; k++)
      for (int y = 0; y < res; y++)
        for (int x = 0; x < res; x++) {
          int in = y >= a.top && y < a.top + a.scale && x >= a.left && x < a.left + a.scale;
          float v = PIX(pix, res, k, y, x);
          if (!in && v != 0.0f) outside_zero = 0;
          if (in && v != pv(fn_const(0, 0, k))) inside_ok = 0;
        }
    if (!(geom && outside_zero && inside_ok)) {
      cd_image_free(&im);
      free(pix);
      FAILF("case %d: %d ones rows %d..%d cols %d..%d, outside zero %d, inside %d", t, cnt, r0, r1, c0, c1,
            outside_zero, inside_ok);
    }
  }
  /* crop case: mask all ones, no zero pixels */
  cd_instance_aug a = {0, 80, 10, 5, ""};
  int rc = cd_instance_render(&im, res, &a, pix, mask);
  int ones = 1;
  for (int i = 0; i < 64; i++) ones &= mask[i] == 1.0f;
  /* scale == res (the no-aug case): the script's mask still has a zero border */
  cd_instance_aug b = {0, 64, 0, 0, ""};
  int rc2 = cd_instance_render(&im, res, &b, pix, mask);
  int r0, r1, c0, c1, cnt = mask_box(mask, 8, &r0, &r1, &c0, &c1);
  /* out of range placement is an error, not a crash */
  cd_instance_aug bad = {0, 40, 30, 0, ""};
  int rc3 = cd_instance_render(&im, res, &bad, pix, mask);
  cd_image_free(&im);
  free(pix);
  CHECK(rc == 0 && ones);
  CHECK(rc2 == 0 && cnt == 36 && r0 == 1 && r1 == 6 && c0 == 1 && c1 == 6);
  CHECK(rc3 == -1);
}

/* Our masks and zero pattern against the golden batch built by the script's rule. */
TEST(instance_mask_golden) {
  char path[1024];
  NEED_GOLDEN(path, "golden_tiny-sd1.safetensors");
  cd_tensor_file *f;
  CHECK_OK(cd_tensor_file_open(path, &f));
  int64_t nm, np;
  float *gm = test_read_f32(f, "cd.mask", &nm), *gp = test_read_f32(f, "cd.pixel_values", &np);
  cd_tensor_file_close(f);
  if (!gm || !gp || nm != 4 * 64 || np != 4 * 3 * 64 * 64) { free(gm); free(gp); FAILF("golden cd.mask/pixel_values"); }
  cd_image im;
  make_image(&im, 50, 50, fn_pattern);
  float *pix = cd_malloc(sizeof(float) * 3 * 64 * 64), mask[64];
  int bad = -1;
  const int cases[2][3] = {{40, 8, 16}, {48, 0, 8}};
  for (int t = 0; t < 2 && bad < 0; t++) {
    cd_instance_aug a = {0, cases[t][0], cases[t][1], cases[t][2], ""};
    if (cd_instance_render(&im, 64, &a, pix, mask)) bad = 100 + t;
    for (int i = 0; i < 64 && bad < 0; i++)
      if (mask[i] != gm[t * 64 + i]) bad = t;
    for (int i = 0; i < 3 * 64 * 64 && bad < 0; i++)
      if ((pix[i] == 0.0f) != (gp[(size_t)t * 3 * 64 * 64 + i] == 0.0f)) bad = 10 + t;
  }
  cd_image_free(&im);
  free(pix);
  free(gm);
  free(gp);
  CHECKF(bad < 0, "mismatch code %d", bad);
}

/* PIL's BILINEAR resize: a widened triangle when shrinking, plain bilinear when growing. */
TEST(instance_resize_pil) {
  const int res = 8;
  float pix[3 * 64], mask[1];
  static const int row4[4] = {0, 100, 200, 255}, row2[2] = {0, 200};
  cd_image im = {4, 4, 3, cd_malloc(48)};
  for (int y = 0; y < 4; y++)
    for (int x = 0; x < 4; x++)
      for (int k = 0; k < 3; k++) im.px[(y * 4 + x) * 3 + k] = (uint8_t)row4[x];
  /* 4 -> 2: weights (.75, .75, .25)/1.75 -> 71 and 209 (a box filter would give 50 and 228) */
  cd_instance_aug a = {0, 2, 0, 0, ""};
  int rc = cd_instance_render(&im, res, &a, pix, mask);
  int down = rc == 0 && PIX(pix, res, 1, 0, 0) == pv(71) && PIX(pix, res, 1, 1, 1) == pv(209) &&
             PIX(pix, res, 2, 0, 2) == 0.0f;
  cd_image_free(&im);
  /* 2 -> 4: [0, 50, 150, 200] */
  cd_image im2 = {2, 2, 3, cd_malloc(12)};
  for (int y = 0; y < 2; y++)
    for (int x = 0; x < 2; x++)
      for (int k = 0; k < 3; k++) im2.px[(y * 2 + x) * 3 + k] = (uint8_t)row2[x];
  cd_instance_aug b = {0, 4, 2, 3, ""};
  int rc2 = cd_instance_render(&im2, res, &b, pix, mask);
  int up = rc2 == 0;
  const int want[4] = {0, 50, 150, 200};
  for (int x = 0; x < 4; x++) up &= PIX(pix, res, 0, 3, 3 + x) == pv(want[x]);
  cd_image_free(&im2);
  CHECKF(down, "downscale: %g %g", PIX(pix, res, 1, 0, 0), PIX(pix, res, 1, 1, 1));
  CHECK(up);
}

TEST(instance_flip_and_crop) {
  const int res = 16, s = 24;
  cd_image im;
  make_image(&im, s, s, fn_pattern); /* already scale x scale: the resize is the identity */
  float p0[3 * 256], p1[3 * 256], m[4];
  cd_instance_aug a = {0, s, 5, 3, ""}, af = {1, s, 5, 3, ""};
  int rc = cd_instance_render(&im, res, &a, p0, m) | cd_instance_render(&im, res, &af, p1, m);
  int ok = rc == 0;
  for (int k = 0; k < 3; k++)
    for (int y = 0; y < res; y++)
      for (int x = 0; x < res; x++) {
        ok &= PIX(p0, res, k, y, x) == pv(fn_pattern(3 + x, 5 + y, k));
        ok &= PIX(p1, res, k, y, x) == pv(fn_pattern(s - 1 - (3 + x), 5 + y, k)); /* flip, then crop */
      }
  cd_image_free(&im);
  CHECK(ok);
  /* paste case: the pasted box is mirrored */
  make_image(&im, 8, 8, fn_pattern);
  cd_instance_aug b = {0, 8, 4, 2, ""}, bf = {1, 8, 4, 2, ""};
  rc = cd_instance_render(&im, res, &b, p0, m) | cd_instance_render(&im, res, &bf, p1, m);
  ok = rc == 0;
  for (int y = 0; y < 8; y++)
    for (int x = 0; x < 8; x++) {
      ok &= PIX(p0, res, 2, 4 + y, 2 + x) == pv(fn_pattern(x, y, 2));
      ok &= PIX(p1, res, 2, 4 + y, 2 + x) == pv(fn_pattern(7 - x, y, 2));
    }
  cd_image_free(&im);
  CHECK(ok);
}

TEST(instance_reproducible) {
  const int res = 32;
  cd_image im;
  make_image(&im, 45, 30, fn_pattern);
  float a[3 * 1024], b[3 * 1024], ma[16], mb[16];
  int differs = 0, rc = 0, same = 1;
  for (int seed = 1; seed <= 20; seed++) {
    cd_rng r1, r2, r3;
    cd_rng_seed(&r1, seed);
    cd_rng_seed(&r2, seed);
    cd_rng_seed(&r3, seed + 1000);
    const char *pa, *pb;
    rc |= cd_instance_example(&im, res, 1, 1, &r1, a, ma, &pa);
    rc |= cd_instance_example(&im, res, 1, 1, &r2, b, mb, &pb);
    same &= !memcmp(a, b, sizeof a) && !memcmp(ma, mb, sizeof ma) && pa == pb;
    rc |= cd_instance_example(&im, res, 1, 1, &r3, b, mb, &pb);
    differs += memcmp(a, b, sizeof a) != 0;
    for (int i = 0; i < 3 * 1024; i++) same &= a[i] >= -1.0f && a[i] <= 1.0f;
  }
  cd_image_free(&im);
  CHECK(rc == 0 && same);
  CHECK(differs >= 15);
}

/* ---- class examples ---- */

TEST(class_center_crop) {
  const int res = 8;
  float p[3 * 64], m[1];
  /* short side already res: Resize is the identity, the crop offset is round((long - res) / 2), half to even */
  const int longs[4] = {12, 13, 15, 8}, offs[4] = {2, 2, 4, 0};
  for (int t = 0; t < 8; t++) {
    int wide = t < 4, L = longs[t % 4];
    cd_image im;
    make_image(&im, wide ? L : 8, wide ? 8 : L, fn_pattern);
    int rc = cd_class_example(&im, res, 1, 0, NULL, p, m);
    int ok = rc == 0 && m[0] == 1.0f;
    for (int k = 0; k < 3; k++)
      for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++)
          ok &= PIX(p, res, k, y, x) == pvc(wide ? fn_pattern(x + offs[t % 4], y, k) : fn_pattern(x, y + offs[t % 4], k));
    cd_image_free(&im);
    CHECKF(ok, "case %d (long side %d, %s)", t, L, wide ? "wide" : "tall");
  }
  /* shorter side scaled to res, longer to int(res * long / short): 20x30 -> 8x12, center crop rows 2..9 */
  cd_image im;
  make_image(&im, 20, 30, fn_const);
  float q[3 * 256], mq[4];
  int rc = cd_class_example(&im, 16, 1, 0, NULL, q, mq);
  int ok = rc == 0 && mq[0] == 1.0f && mq[3] == 1.0f;
  for (int i = 0; i < 256; i++) ok &= q[i] == pvc(200) && q[512 + i] == pvc(50);
  cd_image_free(&im);
  CHECK(ok);
}

TEST(class_random_crop_flip) {
  const int res = 8;
  cd_image im;
  make_image(&im, 8, 8 + 5, fn_pattern); /* tall: random top in [0, 5] */
  float p[3 * 64], m[1];
  cd_rng r;
  cd_rng_seed(&r, 3);
  int seen[6][2] = {{0}};
  for (int i = 0; i < 400; i++) {
    if (cd_class_example(&im, res, 0, 1, &r, p, m)) { cd_image_free(&im); FAILF("%s", cd_last_error()); }
    int found = 0;
    for (int top = 0; top <= 5 && !found; top++)
      for (int fl = 0; fl < 2 && !found; fl++) {
        int eq = 1;
        for (int k = 0; k < 3 && eq; k++)
          for (int y = 0; y < 8 && eq; y++)
            for (int x = 0; x < 8 && eq; x++) eq = PIX(p, res, k, y, x) == pvc(fn_pattern(fl ? 7 - x : x, top + y, k));
        if (eq) seen[top][fl]++, found = 1;
      }
    if (!found) { cd_image_free(&im); FAILF("draw %d is no flipped/unflipped crop of the image", i); }
  }
  cd_image_free(&im);
  for (int t = 0; t <= 5; t++) CHECKF(seen[t][0] > 10 && seen[t][1] > 10, "top %d: %d / %d", t, seen[t][0], seen[t][1]);
}

/* ---- cache ---- */

TEST(image_cache) {
  char dir[] = "/tmp/cdiff_ds_XXXXXX";
  CHECK(mkdtemp(dir));
  if (save_png(dir, "a.png", 10, 6) || save_png(dir, "b.png", 7, 9) || save_png(dir, "c.png", 5, 5)) {
    test_rmtree(dir);
    FAILF("could not write test images");
  }
  cd_item_list l = {0}, other = {0};
  int ok = cd_list_images(dir, &l) == 0 && cd_list_images(dir, &other) == 0 && l.n == 3;
  cd_image_cache big, tiny;
  cd_image_cache_init(&big, 0);
  cd_image_cache_init(&tiny, 200); /* holds a.png (180 bytes) only */
  const cd_image *x, *y;
  for (int pass = 0; pass < 2 && ok; pass++)
    for (int i = 0; i < 3 && ok; i++) {
      ok &= cd_image_cache_get(&big, &l, i, &x) == 0 && cd_image_cache_get(&tiny, &l, i, &y) == 0;
      ok &= x->w == y->w && x->h == y->h && !memcmp(x->px, y->px, (size_t)x->w * x->h * 3);
      ok &= x->px[4] == fn_pattern(1, 0, 1);
    }
  size_t big_bytes = big.bytes, tiny_bytes = tiny.bytes;
  const cd_image *x2 = NULL;
  ok &= cd_image_cache_get(&big, &l, 1, &x) == 0 && cd_image_cache_get(&big, &l, 1, &x2) == 0 && x == x2;
  int e1 = cd_image_cache_get(&big, &l, 3, &x);
  int e2 = cd_image_cache_get(&big, &other, 0, &x);
  /* a file that became unreadable after listing: error naming it */
  cd_image_cache c3;
  cd_image_cache_init(&c3, 0);
  remove(other.items[2].path);
  int e3 = cd_image_cache_get(&c3, &other, 2, &x);
  int named3 = e3 == -1 && strstr(cd_last_error(), other.items[2].path) != NULL;
  cd_image_cache_free(&c3);
  cd_image_cache_free(&big);
  cd_image_cache_free(&tiny);
  cd_item_list_free(&l);
  cd_item_list_free(&other);
  test_rmtree(dir);
  CHECK(ok);
  CHECKF(big_bytes == (10 * 6 + 7 * 9 + 5 * 5) * 3 && tiny_bytes == 180, "cached %zu / %zu bytes", big_bytes, tiny_bytes);
  CHECK(e1 == -1 && e2 == -1 && named3);
}

int main(void) {
  RUN(list_folder);
  RUN(list_errors);
  RUN(list_formats_and_skipped);
  RUN(text_utf8);
  RUN(concepts_json);
  RUN(instance_draw_stats);
  RUN(instance_mask_geometry);
  RUN(instance_mask_golden);
  RUN(instance_resize_pil);
  RUN(instance_flip_and_crop);
  RUN(instance_reproducible);
  RUN(class_center_crop);
  RUN(class_random_crop_flip);
  RUN(image_cache);
  return test_summary();
}
