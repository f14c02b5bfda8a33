/* test_image.c - PNG/JPEG/WebP/BMP load and PNG save, PNG text metadata,
 * EXIF orientation, CMYK JPEGs, corrupt files, resizing filters, float CHW
 * conversion. Every fixture is written here (libjpeg, libwebp, by hand). */
#include <stdio.h> /* before jpeglib.h */
#include <unistd.h>

#include <jpeglib.h>
#include <webp/encode.h>
#include <zlib.h>

#include "io/bmp.h"
#include "io/exif.h"
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

/* A JPEG written here with libjpeg: gray (c 1), RGB (c 3) or CMYK (c 4,
 * stored as `cmyk_space`: JCS_CMYK or JCS_YCCK, with an Adobe marker when
 * `adobe`). app1/napp1: an APP1 segment payload to write, or NULL. */
static int write_jpeg_ex(const char *path, const cd_image *im, int quality, int cmyk_space, int adobe,
                         const uint8_t *app1, unsigned napp1) {
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
  ci.in_color_space = im->c == 1 ? JCS_GRAYSCALE : im->c == 4 ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&ci);
  if (im->c == 4) {
    jpeg_set_colorspace(&ci, (J_COLOR_SPACE)cmyk_space);
    ci.write_Adobe_marker = adobe ? TRUE : FALSE;
  }
  jpeg_set_quality(&ci, quality, TRUE);
  jpeg_start_compress(&ci, TRUE);
  if (app1) jpeg_write_marker(&ci, JPEG_APP0 + 1, app1, napp1);
  while (ci.next_scanline < ci.image_height) {
    JSAMPROW row = im->px + (size_t)ci.next_scanline * im->w * im->c;
    jpeg_write_scanlines(&ci, &row, 1);
  }
  jpeg_finish_compress(&ci);
  jpeg_destroy_compress(&ci);
  fclose(fp);
  return 0;
}

static int write_jpeg(const char *path, const cd_image *im, int quality) {
  return write_jpeg_ex(path, im, quality, JCS_CMYK, 0, NULL, 0);
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

/* ---- EXIF orientation ---- */

/* 32x16 RGB in four solid 16x8 blocks: top-left red, top-right green,
 * bottom-left blue, bottom-right white (solid blocks survive JPEG). */
static const uint8_t quad_rgb[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};
static void make_quads(cd_image *im) {
  im->w = 32, im->h = 16, im->c = 3;
  im->px = cd_malloc(32 * 16 * 3);
  for (int y = 0; y < 16; y++)
    for (int x = 0; x < 32; x++) memcpy(im->px + (y * 32 + x) * 3, quad_rgb[(y >= 8) * 2 + (x >= 16)], 3);
}

/* which source block (0 TL, 1 TR, 2 BL, 3 BR) each output corner shows, for
 * orientations 1..8, written out by hand from the EXIF definitions (6 =
 * rotate 90 degrees clockwise: the source's left column becomes the top row) */
static const int quad_expect[9][4] = {{0}, {0, 1, 2, 3}, {1, 0, 3, 2}, {3, 2, 1, 0}, {2, 3, 0, 1},
                                      {0, 2, 1, 3}, {2, 0, 3, 1}, {3, 1, 2, 0}, {1, 3, 0, 2}};

/* checks the four block centres of a loaded/oriented image; tol for JPEG */
static int quads_match(const cd_image *im, int o, int tol, char *why, size_t cap) {
  int ew = o >= 5 ? 16 : 32, eh = o >= 5 ? 32 : 16;
  if (im->w != ew || im->h != eh || im->c != 3) {
    snprintf(why, cap, "orientation %d: size %dx%d, expected %dx%d", o, im->w, im->h, ew, eh);
    return 0;
  }
  for (int q = 0; q < 4; q++) {
    int x = (q & 1) ? ew * 3 / 4 : ew / 4, y = (q & 2) ? eh * 3 / 4 : eh / 4;
    const uint8_t *p = im->px + ((size_t)y * im->w + x) * 3, *e = quad_rgb[quad_expect[o][q]];
    for (int k = 0; k < 3; k++)
      if (abs(p[k] - e[k]) > tol) {
        snprintf(why, cap, "orientation %d: corner %d is (%d,%d,%d), expected block %d", o, q, p[0], p[1], p[2], quad_expect[o][q]);
        return 0;
      }
  }
  return 1;
}

/* TIFF with IFD0 = {ImageWidth, Orientation = o}, little or big endian */
static size_t make_tiff(uint8_t *b, int o, int big) {
  memset(b, 0, 64);
#define P16(off, v) (big ? (b[off] = (uint8_t)((v) >> 8), b[(off) + 1] = (uint8_t)(v)) : (b[off] = (uint8_t)(v), b[(off) + 1] = (uint8_t)((v) >> 8)))
#define P32(off, v) (big ? (P16(off, (v) >> 16), P16((off) + 2, (v) & 0xffff)) : (P16(off, (v) & 0xffff), P16((off) + 2, (v) >> 16)))
  memcpy(b, big ? "MM" : "II", 2);
  P16(2, 42);
  P32(4, 8);
  P16(8, 2);                                         /* two entries */
  P16(10, 0x0100), P16(12, 4), P32(14, 1), P32(18, 32); /* ImageWidth LONG 32 */
  P16(22, 0x0112), P16(24, 3), P32(26, 1), P16(30, o); /* Orientation SHORT o */
  P32(34, 0);                                        /* no next IFD */
#undef P16
#undef P32
  return 38;
}

TEST(exif_orientation_parse) {
  uint8_t t[64], app1[80];
  for (int big = 0; big < 2; big++)
    for (int o = 1; o <= 8; o++) {
      size_t n = make_tiff(t, o, big);
      CHECKF(cd_exif_orientation_tiff(t, n) == o, "big %d o %d", big, o);
      memcpy(app1, "Exif\0\0", 6);
      memcpy(app1 + 6, t, n);
      CHECK(cd_exif_orientation_app1(app1, n + 6) == o);
      /* every truncation: a value or 1, never a read past n (ASan watches the exact-size copy) */
      for (size_t k = 0; k < n; k++) {
        uint8_t *cut = cd_malloc(k ? k : 1);
        memcpy(cut, t, k);
        int r = cd_exif_orientation_tiff(cut, k);
        free(cut);
        CHECKF(r == (k >= 32 ? o : 1), "truncated at %zu: %d", k, r);
      }
    }
  size_t n = make_tiff(t, 6, 0);
  t[30] = 9; /* out of range */
  CHECK(cd_exif_orientation_tiff(t, n) == 1);
  make_tiff(t, 6, 0);
  t[24] = 4; /* Orientation as LONG: malformed, ignored */
  CHECK(cd_exif_orientation_tiff(t, n) == 1);
  make_tiff(t, 6, 0);
  t[4] = 0xf0, t[5] = 0xff, t[6] = 0xff, t[7] = 0xff; /* IFD offset far past the end */
  CHECK(cd_exif_orientation_tiff(t, n) == 1);
  make_tiff(t, 6, 0);
  t[8] = 0xff, t[9] = 0xff; /* 65535 entries claimed: the real ones are still read */
  CHECK(cd_exif_orientation_tiff(t, n) == 6);
  t[22] = 0x13; /* and without an Orientation the walk stops at the end of the data */
  CHECK(cd_exif_orientation_tiff(t, n) == 1);
  CHECK(cd_exif_orientation_app1((const uint8_t *)"XMP\0\0\0II*\0", 10) == 1);
  CHECK(cd_exif_orientation_tiff(NULL, 0) == 1);
}

TEST(exif_orient_transforms) {
  char why[200];
  for (int o = 1; o <= 8; o++) {
    cd_image im;
    make_quads(&im);
    cd_image_orient(&im, o);
    int ok = quads_match(&im, o, 0, why, sizeof why);
    cd_image_free(&im);
    CHECKF(ok, "%s", why);
  }
  /* a non-square pattern: 6 then 8 is the identity, 2 twice too, 5 twice too */
  cd_image a, b;
  make_pattern(&a, 7, 3, 3);
  make_pattern(&b, 7, 3, 3);
  cd_image_orient(&b, 6);
  cd_image_orient(&b, 8);
  int same = b.w == 7 && b.h == 3 && !memcmp(a.px, b.px, 63);
  cd_image_orient(&b, 5);
  cd_image_orient(&b, 5);
  same &= b.w == 7 && !memcmp(a.px, b.px, 63);
  cd_image_orient(&b, 3);
  same &= b.px[0] == a.px[60] && b.px[1] == a.px[61];
  cd_image_free(&a);
  cd_image_free(&b);
  CHECK(same);
}

/* Today's failure: a phone photo tagged Orientation=6 loaded sideways. */
TEST(exif_jpeg_and_png_are_loaded_upright) {
  char why[200];
  cd_image im, out;
  make_quads(&im);
  uint8_t t[64], app1[80];
  for (int o = 1; o <= 8; o++) {
    size_t n = make_tiff(t, o, o & 1); /* both byte orders */
    memcpy(app1, "Exif\0\0", 6);
    memcpy(app1 + 6, t, n);
    const char *path = test_tmpdir("exif.jpg");
    CHECK(write_jpeg_ex(path, &im, 95, JCS_CMYK, 0, app1, (unsigned)n + 6) == 0);
    int rc = cd_image_load(path, &out);
    int ok = rc == 0 && quads_match(&out, o, 12, why, sizeof why);
    cd_image_free(&out);
    if (!ok) { cd_image_free(&im); FAILF("JPEG: %s", rc ? cd_last_error() : why); }
  }
  /* PNG eXIf chunk (raw TIFF), spliced in after IHDR */
  const char *png = test_tmpdir("exif.png");
  int rc = cd_image_save_png(png, &im, NULL, 0);
  cd_image_free(&im);
  CHECK_OK(rc);
  char *raw;
  size_t n;
  CHECK_OK(cd_read_file(png, &raw, &n));
  size_t tn = make_tiff(t, 6, 1);
  uint8_t chunk[12 + 64];
  chunk[0] = 0, chunk[1] = 0, chunk[2] = 0, chunk[3] = (uint8_t)tn;
  memcpy(chunk + 4, "eXIf", 4);
  memcpy(chunk + 8, t, tn);
  uLong crc = crc32(0, chunk + 4, (uInt)(tn + 4));
  for (int k = 0; k < 4; k++) chunk[8 + tn + k] = (uint8_t)(crc >> (24 - 8 * k));
  FILE *f = fopen(png, "wb");
  fwrite(raw, 1, 33, f); /* signature + IHDR */
  fwrite(chunk, 1, tn + 12, f);
  fwrite(raw + 33, 1, n - 33, f);
  fclose(f);
  free(raw);
  rc = cd_image_load(png, &out);
  int ok = rc == 0 && quads_match(&out, 6, 0, why, sizeof why);
  cd_image_free(&out);
  CHECKF(ok, "PNG eXIf: %s", rc ? cd_last_error() : why);
}

/* ---- CMYK JPEG ---- */

/* Today's failure: CMYK JPEGs were refused ("could not convert to RGB").
 * Plain CMYK stores ink, Adobe-marked CMYK and YCCK store inverted ink (as
 * Photoshop writes them); all three must give RGB = 255 (1-C)(1-K). */
TEST(cmyk_jpeg_load) {
  static const uint8_t ink[4][4] = {{0, 255, 255, 0}, {0, 0, 0, 128}, {200, 50, 0, 20}, {0, 0, 0, 0}};
  cd_image im = {32, 16, 4, cd_malloc(32 * 16 * 4)}, inv = {32, 16, 4, cd_malloc(32 * 16 * 4)};
  for (int y = 0; y < 16; y++)
    for (int x = 0; x < 32; x++)
      for (int k = 0; k < 4; k++) {
        uint8_t v = ink[(y >= 8) * 2 + (x >= 16)][k];
        im.px[(y * 32 + x) * 4 + k] = v;
        inv.px[(y * 32 + x) * 4 + k] = (uint8_t)(255 - v);
      }
  const struct { int space, adobe; const cd_image *src; const char *what; } cases[] = {
      {JCS_CMYK, 0, &im, "plain CMYK"}, {JCS_CMYK, 1, &inv, "Adobe inverted CMYK"}, {JCS_YCCK, 1, &inv, "Adobe YCCK"}};
  char why[300] = "";
  int ok = 1;
  for (int c = 0; c < 3 && ok; c++) {
    const char *path = test_tmpdir("cmyk.jpg");
    cd_image out;
    ok = write_jpeg_ex(path, cases[c].src, 95, cases[c].space, cases[c].adobe, NULL, 0) == 0;
    int rc = ok ? cd_image_load(path, &out) : -1;
    if (rc) { snprintf(why, sizeof why, "%s: %s", cases[c].what, cd_last_error()); ok = 0; break; }
    ok = out.w == 32 && out.h == 16 && out.c == 3;
    for (int q = 0; q < 4 && ok; q++) {
      int x = (q & 1) ? 24 : 8, y = (q & 2) ? 12 : 4;
      const uint8_t *p = out.px + (y * 32 + x) * 3;
      for (int k = 0; k < 3 && ok; k++) {
        int want = (int)lrint((255.0 - ink[q][k]) * (255.0 - ink[q][3]) / 255.0);
        if (abs(p[k] - want) > 6) { /* JPEG of solid blocks at quality 95 (YCCK adds a colour transform) */
          snprintf(why, sizeof why, "%s: block %d channel %d is %d, expected %d", cases[c].what, q, k, p[k], want);
          ok = 0;
        }
      }
    }
    cd_image_free(&out);
  }
  cd_image_free(&im);
  cd_image_free(&inv);
  CHECKF(ok, "%s", why);
}

/* ---- BMP ---- */

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v & 0xffff), put16(p + 2, v >> 16); }

/* A BMP of img (RGB) written by hand: bpp 24, 32 (BI_BITFIELDS 8-8-8 at
 * shifted positions), 16 (BI_BITFIELDS 5-6-5; img must be representable),
 * 8 (palette = the image's colours), top_down or bottom-up. */
static uint8_t *make_bmp(const cd_image *img, int bpp, int top_down, size_t *n) {
  int w = img->w, h = img->h;
  uint8_t pal[256][3];
  int npal = 0;
  uint8_t *idx = cd_calloc((size_t)w * h, 1);
  if (bpp == 8)
    for (int i = 0; i < w * h; i++) {
      int j = 0;
      while (j < npal && memcmp(pal[j], img->px + 3 * i, 3)) j++;
      if (j == npal) memcpy(pal[npal++], img->px + 3 * i, 3);
      idx[i] = (uint8_t)j;
    }
  size_t stride = ((size_t)w * bpp + 31) / 32 * 4, hdr = 40 + (bpp == 16 || bpp == 32 ? 12 : 0) + (bpp == 8 ? 4 * 256 : 0);
  size_t off = 14 + hdr;
  *n = off + stride * h;
  uint8_t *b = cd_calloc(*n, 1);
  b[0] = 'B', b[1] = 'M';
  put32(b + 2, (uint32_t)*n);
  put32(b + 10, (uint32_t)off);
  put32(b + 14, 40);
  put32(b + 18, (uint32_t)w);
  put32(b + 22, (uint32_t)(top_down ? -h : h));
  put16(b + 26, 1);
  put16(b + 28, (uint32_t)bpp);
  put32(b + 30, bpp == 16 || bpp == 32 ? 3 : 0);
  if (bpp == 32) put32(b + 54, 0xff000000u), put32(b + 58, 0x00ff0000u), put32(b + 62, 0x0000ff00u);
  if (bpp == 16) put32(b + 54, 0xf800), put32(b + 58, 0x07e0), put32(b + 62, 0x001f);
  if (bpp == 8) {
    put32(b + 46, (uint32_t)npal);
    for (int j = 0; j < npal; j++) b[54 + 4 * j] = pal[j][2], b[55 + 4 * j] = pal[j][1], b[56 + 4 * j] = pal[j][0];
  }
  for (int y = 0; y < h; y++) {
    uint8_t *row = b + off + stride * (size_t)(top_down ? y : h - 1 - y);
    for (int x = 0; x < w; x++) {
      const uint8_t *p = img->px + ((size_t)y * w + x) * 3;
      if (bpp == 24) row[3 * x] = p[2], row[3 * x + 1] = p[1], row[3 * x + 2] = p[0];
      if (bpp == 32) put32(row + 4 * x, (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | 0x5a);
      if (bpp == 16) put16(row + 2 * x, (uint32_t)(p[0] >> 3) << 11 | (uint32_t)(p[1] >> 2) << 5 | (p[2] >> 3));
      if (bpp == 8) row[x] = idx[y * w + x];
    }
  }
  free(idx);
  return b;
}

TEST(bmp_load) {
  cd_image im, out;
  make_pattern(&im, 13, 5, 3); /* odd width: row padding */
  const int bpps[] = {24, 32, 16, 8};
  for (int t = 0; t < 8; t++) {
    int bpp = bpps[t / 2], td = t & 1;
    cd_image src;
    make_pattern(&src, 13, 5, 3);
    if (bpp == 16) /* representable in 5-6-5: low bits replicated as the decoder expands them */
      for (int i = 0; i < 13 * 5; i++) {
        uint8_t *p = src.px + 3 * i;
        p[0] = (uint8_t)lrint((p[0] >> 3) * 255.0 / 31), p[1] = (uint8_t)lrint((p[1] >> 2) * 255.0 / 63),
        p[2] = (uint8_t)lrint((p[2] >> 3) * 255.0 / 31);
      }
    if (bpp == 8) /* at most 256 colours */
      for (int i = 0; i < 13 * 5 * 3; i++) src.px[i] &= 0xc0;
    size_t n;
    uint8_t *b = make_bmp(&src, bpp, td, &n);
    const char *path = test_tmpdir("x.bmp");
    write_bytes(path, b, n);
    int rc = cd_image_load(path, &out);
    int same = rc == 0 && out.w == 13 && out.h == 5 && out.c == 3 && !memcmp(out.px, src.px, 13 * 5 * 3);
    cd_image_free(&out);
    /* every truncation fails cleanly, naming the file */
    for (size_t k = 0; same && k < n; k += 1 + k / 16) {
      same = cd_bmp_decode(path, b, k, 32768, 1 << 28, &out) == -1 && out.px == NULL && strstr(cd_last_error(), "x.bmp");
      if (!same) snprintf(test_msg, sizeof test_msg, "bpp %d: truncated at %zu decoded", bpp, k);
    }
    free(b);
    cd_image_free(&src);
    if (!same) { cd_image_free(&im); FAILF("bpp %d top_down %d: %s", bpp, td, rc ? cd_last_error() : "pixels differ"); }
  }
  /* RLE and absurd sizes are refused by name */
  size_t n;
  uint8_t *b = make_bmp(&im, 8, 0, &n);
  put32(b + 30, 1);
  CHECK(cd_bmp_decode("r.bmp", b, n, 32768, 1 << 28, &out) == -1 && strstr(cd_last_error(), "RLE"));
  put32(b + 30, 0);
  put32(b + 18, 0x7fffffff);
  CHECK(cd_bmp_decode("r.bmp", b, n, 32768, 1 << 28, &out) == -1 && strstr(cd_last_error(), "size"));
  free(b);
  cd_image_free(&im);
}

/* ---- WebP ---- */

TEST(webp_load) {
  cd_image im, out;
  make_pattern(&im, 19, 11, 3);
  uint8_t *enc = NULL;
  size_t n = WebPEncodeLosslessRGB(im.px, 19, 11, 19 * 3, &enc);
  CHECK(n > 0);
  const char *path = test_tmpdir("x.webp");
  write_bytes(path, enc, n);
  int rc = cd_image_load(path, &out);
  int same = rc == 0 && out.w == 19 && out.h == 11 && !memcmp(out.px, im.px, 19 * 11 * 3);
  cd_image_free(&out);
  if (!same) { WebPFree(enc); cd_image_free(&im); FAILF("lossless WebP: %s", rc ? cd_last_error() : "pixels differ"); }
  /* the extended format (VP8X) with an EXIF chunk holding Orientation 8 */
  uint8_t t[64];
  size_t tn = make_tiff(t, 8, 0), body = n - 12; /* the VP8L chunk of the simple file */
  size_t total = 12 + 18 + body + 8 + tn + (tn & 1);
  uint8_t *x = cd_calloc(total, 1);
  memcpy(x, "RIFF", 4), put32(x + 4, (uint32_t)(total - 8)), memcpy(x + 8, "WEBP", 4);
  memcpy(x + 12, "VP8X", 4), put32(x + 16, 10), x[20] = 0x08; /* EXIF flag */
  x[24] = 18, x[27] = 10; /* canvas width-1, height-1 (24-bit little endian) */
  memcpy(x + 30, enc + 12, body);
  memcpy(x + 30 + body, "EXIF", 4), put32(x + 34 + body, (uint32_t)tn), memcpy(x + 38 + body, t, tn);
  write_bytes(path, x, total);
  rc = cd_image_load(path, &out);
  /* orientation 8: output (x, y) = source (w-1-y, x) */
  same = rc == 0 && out.w == 11 && out.h == 19;
  for (int y = 0; same && y < 19; y++)
    for (int xx = 0; same && xx < 11; xx++) same = !memcmp(out.px + (y * 11 + xx) * 3, im.px + (xx * 19 + 18 - y) * 3, 3);
  cd_image_free(&out);
  /* truncated and corrupted files fail cleanly */
  for (size_t k = 0; same && k < n; k += 1 + k / 8) {
    write_bytes(path, enc, k);
    same = cd_image_load(path, &out) == -1 && out.px == NULL;
  }
  free(x);
  WebPFree(enc);
  cd_image_free(&im);
  CHECKF(same, "%s", rc ? cd_last_error() : "VP8X/EXIF or truncation failed");
}

int main(void) {
  RUN(png_roundtrip_with_text);
  RUN(png_huge_chunk_length_is_refused_cheaply);
  RUN(png_gray_and_alpha_become_rgb);
  RUN(corrupt_files_fail_cleanly);
  RUN(jpeg_load);
  RUN(exif_orientation_parse);
  RUN(exif_orient_transforms);
  RUN(exif_jpeg_and_png_are_loaded_upright);
  RUN(cmyk_jpeg_load);
  RUN(bmp_load);
  RUN(webp_load);
  RUN(resize_filters);
  RUN(chw_conversion);
  test_tmp_cleanup();
  return test_summary();
}
