/* test_image.c - PNG/JPEG load and save, PNG text metadata, corrupt files,
 * resizing filters, float CHW conversion. */
#include <stdio.h> /* before jpeglib.h */
#include <unistd.h>

#include <jpeglib.h>

#include "io/fsutil.h"
#include "io/image.h"
#include "test.h"

static void make_pattern(cd_image *im, int w, int h, int c) {
  im->w = w;
  im->h = h;
  im->c = c;
  im->px = cd_malloc((size_t)w * h * c);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int ch = 0; ch < c; ch++) im->px[((size_t)y * w + x) * c + ch] = (uint8_t)(x * 7 + y * 13 + ch * 50);
}

static void write_bytes(const char *path, const void *p, size_t n) {
  FILE *fp = fopen(path, "wb");
  if (n) fwrite(p, 1, n, fp);
  fclose(fp);
}

TEST(png_roundtrip_with_text) {
  cd_image im, back;
  make_pattern(&im, 37, 23, 3);
  char longv[3000];
  memset(longv, 'x', sizeof longv - 1);
  longv[sizeof longv - 1] = 0;
  const char *kv[] = {"parameters", "a photo of a <new1> cat\nSteps: 20, Seed: 42",
                      "cdiff.model_sha256", "0123abcd",
                      "utf8", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac",
                      "long", longv};
  const char *path = test_tmpdir("a.png");
  int rc = cd_image_save_png(path, &im, kv, 4);
  if (rc) { cd_image_free(&im); FAILF("save: %s", cd_last_error()); }
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  rc = cd_image_load(path, &back);
  int same = rc == 0 && back.w == 37 && back.h == 23 && back.c == 3 && memcmp(back.px, im.px, 37 * 23 * 3) == 0;
  cd_image_free(&im);
  cd_image_free(&back);
  CHECKF(same, "reload: %s", rc ? cd_last_error() : "pixels differ");
  CHECK(!cd_file_exists(tmp));
  char v[4096];
  for (int i = 0; i < 4; i++) {
    CHECKF(cd_png_read_text(path, kv[2 * i], v, sizeof v) == 0, "%s: %s", kv[2 * i], cd_last_error());
    CHECKF(strcmp(v, kv[2 * i + 1]) == 0, "%s: got '%.200s'", kv[2 * i], v);
  }
  char *raw;
  size_t n;
  CHECK_OK(cd_read_file(path, &raw, &n));
  int chunks = memmem(raw, n, "tEXtparameters", 14) && memmem(raw, n, "iTXtutf8", 8) && !memmem(raw, n, "iTXtlong", 8);
  free(raw);
  CHECK(chunks); /* ASCII values as tEXt, UTF-8 ones as iTXt */
  CHECK(cd_png_read_text(path, "absent", v, sizeof v) == 1);
  CHECK(cd_png_read_text(path, "param", v, sizeof v) == 1); /* a prefix of a key is not the key */
  CHECK(cd_png_read_text(path, "long", v, 100) == -1 && strstr(cd_last_error(), "longer than"));
  /* bad keys are refused before anything is written */
  cd_image one;
  make_pattern(&one, 2, 2, 3);
  const char *badkv[] = {"", "x"};
  CHECK(cd_image_save_png(test_tmpdir("bad.png"), &one, badkv, 1) == -1);
  const char *badkv2[] = {"caf\xc3\xa9", "x"};
  CHECK(cd_image_save_png(test_tmpdir("bad.png"), &one, badkv2, 1) == -1);
  CHECK(!cd_file_exists(test_tmpdir("bad.png")));
  CHECK(cd_image_save_png("/nonexistent/dir/x.png", &one, NULL, 0) == -1);
  cd_image_free(&one);
}

TEST(png_gray_and_alpha_become_rgb) {
  cd_image g, a, back;
  make_pattern(&g, 5, 4, 1);
  make_pattern(&a, 6, 3, 4);
  const char *pg = test_tmpdir("g.png"), *pa = test_tmpdir("rgba.png");
  int ok = cd_image_save_png(pg, &g, NULL, 0) == 0 && cd_image_save_png(pa, &a, NULL, 0) == 0;
  int good = ok && cd_image_load(pg, &back) == 0 && back.c == 3 && back.w == 5 && back.h == 4;
  for (int i = 0; good && i < 20; i++)
    good = back.px[3 * i] == g.px[i] && back.px[3 * i + 1] == g.px[i] && back.px[3 * i + 2] == g.px[i];
  cd_image_free(&back);
  good = good && cd_image_load(pa, &back) == 0 && back.c == 3 && back.w == 6;
  for (int i = 0; good && i < 18; i++)
    good = back.px[3 * i] == a.px[4 * i] && back.px[3 * i + 1] == a.px[4 * i + 1] && back.px[3 * i + 2] == a.px[4 * i + 2];
  cd_image_free(&back);
  cd_image_free(&g);
  cd_image_free(&a);
  CHECKF(good, "%s", cd_last_error());
}

TEST(corrupt_files_fail_cleanly) {
  cd_image im, out;
  make_pattern(&im, 64, 48, 3);
  const char *path = test_tmpdir("ok.png");
  int rc = cd_image_save_png(path, &im, (const char *const[]){"k", "v"}, 1);
  cd_image_free(&im);
  CHECK_OK(rc);
  char *raw;
  size_t n;
  CHECK_OK(cd_read_file(path, &raw, &n));
  const char *bad = test_tmpdir("bad.img");
  /* truncated at many lengths */
  for (size_t len = 0; len < n; len += 1 + len / 8) {
    write_bytes(bad, raw, len);
    out.px = (uint8_t *)1;
    rc = cd_image_load(bad, &out);
    if (rc == 0 || out.px != NULL || !strstr(cd_last_error(), bad)) {
      cd_image_free(&out);
      free(raw);
      FAILF("truncated at %zu: rc %d, %s", len, rc, cd_last_error());
    }
    /* the tEXt chunk follows the 33-byte signature + IHDR: before its end, reading it must fail */
    rc = cd_png_read_text(bad, "k", (char[16]){0}, 16);
    if (len < 33 + 12 + 3 && rc != -1) {
      free(raw);
      FAILF("png text of a file truncated at %zu: rc %d", len, rc);
    }
  }
  /* a flipped byte in the image data: CRC error */
  raw[n / 2] ^= 0x55;
  write_bytes(bad, raw, n);
  free(raw);
  CHECK(cd_image_load(bad, &out) == -1 && strstr(cd_last_error(), "PNG"));
  /* random bytes; random bytes behind a PNG signature; text; empty; missing */
  uint8_t junk[4096];
  cd_rng r;
  cd_rng_seed(&r, 9);
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)cd_rng_u64(&r);
  write_bytes(bad, junk, sizeof junk);
  CHECK(cd_image_load(bad, &out) == -1 && strstr(cd_last_error(), "unsupported image format"));
  memcpy(junk, "\x89PNG\r\n\x1a\n", 8);
  write_bytes(bad, junk, sizeof junk);
  CHECK(cd_image_load(bad, &out) == -1 && strstr(cd_last_error(), "corrupt"));
  memcpy(junk, "\xff\xd8\xff", 3);
  write_bytes(bad, junk, sizeof junk);
  CHECK(cd_image_load(bad, &out) == -1 && strstr(cd_last_error(), "JPEG"));
  const char *txt = "This is a text file, not an image.\n";
  write_bytes(bad, txt, strlen(txt));
  CHECK(cd_image_load(bad, &out) == -1 && strstr(cd_last_error(), "unsupported image format"));
  CHECK(cd_png_read_text(bad, "k", (char[16]){0}, 16) == -1);
  write_bytes(bad, "", 0);
  CHECK(cd_image_load(bad, &out) == -1);
  CHECK(cd_image_load("/nonexistent/x.png", &out) == -1 && strstr(cd_last_error(), "/nonexistent/x.png"));
}

/* a JPEG written here with libjpeg, color or grayscale */
static int write_jpeg(const char *path, const cd_image *im, int quality) {
  struct jpeg_compress_struct ci;
  struct jpeg_error_mgr err;
  FILE *fp = fopen(path, "wb");
  if (!fp) return -1;
  ci.err = jpeg_std_error(&err);
  jpeg_create_compress(&ci);
  jpeg_stdio_dest(&ci, fp);
  ci.image_width = im->w;
  ci.image_height = im->h;
  ci.input_components = im->c;
  ci.in_color_space = im->c == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&ci);
  jpeg_set_quality(&ci, quality, TRUE);
  jpeg_start_compress(&ci, TRUE);
  while (ci.next_scanline < ci.image_height) {
    JSAMPROW row = im->px + (size_t)ci.next_scanline * im->w * im->c;
    jpeg_write_scanlines(&ci, &row, 1);
  }
  jpeg_finish_compress(&ci);
  jpeg_destroy_compress(&ci);
  fclose(fp);
  return 0;
}

TEST(jpeg_load) {
  for (int c = 1; c <= 3; c += 2) {
    cd_image im, out;
    im.w = 40;
    im.h = 24;
    im.c = c;
    im.px = cd_malloc(40 * 24 * c);
    for (int y = 0; y < 24; y++) /* smooth gradients survive JPEG well */
      for (int x = 0; x < 40; x++)
        for (int ch = 0; ch < c; ch++) im.px[(y * 40 + x) * c + ch] = (uint8_t)(40 + x * 3 + y * 2 + ch * 30);
    const char *path = test_tmpdir(c == 1 ? "g.jpg" : "c.jpg");
    CHECK(write_jpeg(path, &im, 95) == 0);
    int rc = cd_image_load(path, &out);
    double err = 0;
    int good = rc == 0 && out.w == 40 && out.h == 24 && out.c == 3;
    for (int i = 0; good && i < 40 * 24; i++)
      for (int ch = 0; ch < 3; ch++) err += fabs((double)out.px[i * 3 + ch] - im.px[i * c + (c == 1 ? 0 : ch)]);
    err /= 40 * 24 * 3;
    cd_image_free(&out);
    cd_image_free(&im);
    CHECKF(good, "c=%d: %s", c, rc ? cd_last_error() : "bad size");
    CHECKF(err < 3.0, "c=%d: mean abs error %.2f", c, err);
    /* a truncated JPEG is an error, not a grey-filled image */
    char *raw;
    size_t n;
    CHECK_OK(cd_read_file(path, &raw, &n));
    const char *cut = test_tmpdir("cut.jpg");
    write_bytes(cut, raw, n * 2 / 3);
    free(raw);
    rc = cd_image_load(cut, &out);
    cd_image_free(&out);
    CHECKF(rc == -1 && strstr(cd_last_error(), "JPEG"), "c=%d truncated: rc %d %s", c, rc, cd_last_error());
  }
}

TEST(resize_filters) {
  cd_image s = {0}, d;
  /* upsample 2 -> 4 along x: bilinear with half-pixel centres */
  uint8_t up[2] = {0, 255};
  s = (cd_image){2, 1, 1, up};
  CHECK_OK(cd_image_resize(&s, 4, 1, &d));
  int ok = d.px[0] == 0 && d.px[1] == 64 && d.px[2] == 191 && d.px[3] == 255;
  cd_image_free(&d);
  CHECK(ok);
  /* shrink 3 -> 2: area average with fractional coverage */
  uint8_t dn[3] = {0, 90, 180};
  s = (cd_image){3, 1, 1, dn};
  CHECK_OK(cd_image_resize(&s, 2, 1, &d));
  ok = d.px[0] == 30 && d.px[1] == 150;
  cd_image_free(&d);
  CHECK(ok);
  /* shrink 4x4 -> 2x2 RGB: exact 2x2 block means */
  cd_image p;
  make_pattern(&p, 4, 4, 3);
  CHECK_OK(cd_image_resize(&p, 2, 2, &d));
  ok = 1;
  for (int y = 0; y < 2; y++)
    for (int x = 0; x < 2; x++)
      for (int ch = 0; ch < 3; ch++) {
        double m = 0;
        for (int dy = 0; dy < 2; dy++)
          for (int dx = 0; dx < 2; dx++) m += p.px[((2 * y + dy) * 4 + 2 * x + dx) * 3 + ch];
        ok &= abs(d.px[(y * 2 + x) * 3 + ch] - (int)nearbyint(m / 4)) <= 0;
      }
  cd_image_free(&d);
  CHECK(ok);
  /* same size is an exact copy; a constant image stays constant at any size */
  CHECK_OK(cd_image_resize(&p, 4, 4, &d));
  ok = memcmp(d.px, p.px, 48) == 0;
  cd_image_free(&d);
  cd_image_free(&p);
  CHECK(ok);
  cd_image k = {13, 7, 3, cd_malloc(13 * 7 * 3)};
  memset(k.px, 77, 13 * 7 * 3);
  static const int sizes[][2] = {{5, 3}, {29, 17}, {13, 20}, {1, 1}, {40, 2}};
  for (int i = 0; i < 5; i++) {
    CHECK_OK(cd_image_resize(&k, sizes[i][0], sizes[i][1], &d));
    ok = d.w == sizes[i][0] && d.h == sizes[i][1] && d.c == 3;
    for (int j = 0; ok && j < d.w * d.h * 3; j++) ok = d.px[j] == 77;
    cd_image_free(&d);
    if (!ok) { cd_image_free(&k); FAILF("constant image changed at %dx%d", sizes[i][0], sizes[i][1]); }
  }
  CHECK(cd_image_resize(&k, 0, 5, &d) == -1);
  cd_image_free(&k);
}

TEST(chw_conversion) {
  cd_image im, back;
  make_pattern(&im, 9, 5, 3);
  float *x = cd_malloc(3 * 9 * 5 * sizeof *x);
  cd_image_to_chw(&im, x);
  int ok = x[0] == im.px[0] / 127.5f - 1 && x[9 * 5] == im.px[1] / 127.5f - 1 && x[1] == im.px[3] / 127.5f - 1;
  for (int i = 0; i < 135; i++) ok &= x[i] >= -1 && x[i] <= 1;
  cd_chw_to_image(x, 3, 5, 9, &back);
  ok &= back.w == 9 && back.h == 5 && back.c == 3 && memcmp(back.px, im.px, 135) == 0;
  cd_image_free(&back);
  cd_image_free(&im);
  free(x);
  CHECK(ok);
  float v[6] = {-5, 5, NAN, 0, -1, 1};
  cd_chw_to_image(v, 1, 1, 6, &back);
  ok = back.px[0] == 0 && back.px[1] == 255 && back.px[2] == 0 && back.px[3] == 128 && back.px[4] == 0 &&
       back.px[5] == 255;
  cd_image_free(&back);
  CHECK(ok);
}

/* found by dev/fuzz: a 56-byte PNG whose tEXt chunk claims 2 GB made libpng
 * allocate (and touch) 2 GB before failing; now refused before libpng runs */
TEST(png_huge_chunk_length_is_refused_cheaply) {
  static const unsigned char bad[] = {
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
      0x40, 0x00, 0x00, 0x00, 0x40, 0x08, 0x02, 0x00, 0x00, 0x00, 0x25, 0x0b, 0xe6, 0x89, 0x7e, 0x00, 0x00, 0x0a, 0x74,
      0x45, 0x58, 0x74, 0x61, 0x74, 0x4a, 0xf3, 0x70, 0x2e, 0xc6, 0x83, 0x34, 0x3a, 0x08, 0x74, 0x79, 0x45, 0xc6};
  const char *p = test_tmpdir("huge_chunk.png");
  FILE *f = fopen(p, "wb");
  CHECK(f && fwrite(bad, 1, sizeof bad, f) == sizeof bad);
  fclose(f);
  size_t rss0 = cd_peak_rss_bytes();
  cd_image im;
  CHECK(cd_image_load(p, &im) == -1);
  CHECKF(strstr(cd_last_error(), "huge_chunk.png") && strstr(cd_last_error(), "tEXt"), "%s", cd_last_error());
  CHECKF(cd_peak_rss_bytes() < rss0 + ((size_t)256 << 20), "peak RSS grew by %zu MiB", (cd_peak_rss_bytes() - rss0) >> 20);
}

int main(void) {
  RUN(png_roundtrip_with_text);
  RUN(png_huge_chunk_length_is_refused_cheaply);
  RUN(png_gray_and_alpha_become_rgb);
  RUN(corrupt_files_fail_cleanly);
  RUN(jpeg_load);
  RUN(resize_filters);
  RUN(chw_conversion);
  test_tmp_cleanup();
  return test_summary();
}
