/* image.c - PNG/JPEG/WebP/BMP decoding (libpng, libjpeg, libwebp, bmp.c),
 * EXIF orientation, PNG encoding with text chunks, resizing, float CHW
 * conversion.
 *
 * libpng and libjpeg report errors by longjmp; every decoder keeps what it
 * must free in a context struct whose address the library holds, so cleanup
 * after the jump sees the current values. */
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which needs FILE */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>
#include <webp/decode.h>
#include <zlib.h>

#include "core/common.h"
#include "core/utf8.h"
#include "io/bmp.h"
#include "io/exif.h"
#include "io/fsutil.h"

#define IMG_MAX_DIM 32768
#define IMG_MAX_PIXELS ((int64_t)1 << 28)

void cd_image_free(cd_image *img) {
  if (!img) return;
  free(img->px);
  memset(img, 0, sizeof *img);
}

static int check_dims(const char *path, int64_t w, int64_t h) {
  if (w <= 0 || h <= 0 || w > IMG_MAX_DIM || h > IMG_MAX_DIM || w * h > IMG_MAX_PIXELS)
    return cd_set_error("image %s: unsupported size %lldx%lld", path, (long long)w, (long long)h);
  return 0;
}

/* ------------------------------------------------------------------ PNG */

typedef struct {
  const char *path;
  char msg[256];
  FILE *fp;
  uint8_t *px;
  png_bytep *rows;
} png_ctx;

static void png_err(png_structp png, png_const_charp msg) {
  png_ctx *c = png_get_error_ptr(png);
  snprintf(c->msg, sizeof c->msg, "%s", msg);
  png_longjmp(png, 1);
}
static void png_warn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

/* Walks the chunk list before libpng sees it: libpng allocates a chunk's
 * declared length before reading it, so a 60-byte file claiming a 2 GB text
 * chunk would cost 2 GB. Every chunk must fit in the file. */
static int png_chunks_fit(const char *path, FILE *fp) {
  if (fseek(fp, 0, SEEK_END)) return cd_set_error("image %s: cannot seek", path);
  long size = ftell(fp);
  long pos = 8;
  while (pos + 8 <= size) {
    uint8_t h[8];
    if (fseek(fp, pos, SEEK_SET) || fread(h, 1, 8, fp) != 8) break;
    uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (len > 0x7fffffffu || (long)len > size - pos - 12)
      return cd_set_error("image %s: corrupt PNG: chunk '%.4s' claims %u bytes beyond the end of the file", path,
                          (const char *)h + 4, len);
    if (!memcmp(h + 4, "IEND", 4)) break;
    pos += 12 + (long)len;
  }
  rewind(fp);
  return 0;
}

static int load_png(const char *path, FILE *fp, cd_image *out) {
  if (png_chunks_fit(path, fp)) return -1;
  png_ctx *c = cd_calloc(1, sizeof *c); /* on the heap: its fields are current after the longjmp */
  c->path = path;
  c->fp = fp;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_err, png_warn);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    if (png) png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    free(c->px);
    free(c->rows);
    cd_set_error("image %s: corrupt or unreadable PNG: %s", path, c->msg[0] ? c->msg : "libpng error");
    free(c);
    return -1;
  }
  png_set_user_limits(png, IMG_MAX_DIM, IMG_MAX_DIM);
  png_set_chunk_malloc_max(png, (png_alloc_size_t)16 << 20); /* a hostile chunk length must not allocate gigabytes */
  png_init_io(png, fp);
  png_read_info(png, info);
  png_uint_32 w, h;
  int depth, ctype, interlace;
  png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
  if (check_dims(path, w, h)) {
    png_destroy_read_struct(&png, &info, NULL);
    free(c);
    return -1;
  }
  /* normalise everything to 8-bit RGB */
  png_set_strip_16(png);
  png_set_packing(png);
  if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  if (ctype & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != (size_t)w * 3 || png_get_channels(png, info) != 3) {
    png_destroy_read_struct(&png, &info, NULL);
    free(c);
    return cd_set_error("image %s: PNG color format could not be converted to RGB", path);
  }
  c->px = cd_malloc((size_t)w * h * 3);
  c->rows = cd_malloc(h * sizeof *c->rows);
  for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->px + (size_t)y * w * 3;
  png_read_image(png, c->rows);
  png_read_end(png, info); /* checks the remaining chunks (CRCs, IEND); an eXIf after the data lands in info */
  int orient = 1;
  png_uint_32 nexif = 0;
  png_bytep exif = NULL;
  if (png_get_eXIf_1(png, info, &nexif, &exif) && exif) orient = cd_exif_orientation_tiff(exif, nexif);
  png_destroy_read_struct(&png, &info, NULL);
  out->w = (int)w;
  out->h = (int)h;
  out->c = 3;
  out->px = c->px;
  free(c->rows);
  free(c);
  cd_image_orient(out, orient);
  return 0;
}

/* ----------------------------------------------------------------- JPEG */

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
  int warnings;
} jpeg_err;

static void jpeg_error_exit(j_common_ptr ci) {
  jpeg_err *e = (jpeg_err *)ci->err;
  ci->err->format_message(ci, e->msg);
  longjmp(e->jb, 1);
}
/* level < 0: a warning, which libjpeg emits for corrupt or truncated data and
 * then carries on with grey fill. We treat any such warning as an error. */
static void jpeg_emit(j_common_ptr ci, int level) {
  jpeg_err *e = (jpeg_err *)ci->err;
  if (level < 0 && !e->warnings++) ci->err->format_message(ci, e->msg);
}

typedef struct {
  struct jpeg_decompress_struct ci;
  jpeg_err err;
  uint8_t *px;
} jpeg_ctx;

static int load_jpeg(const char *path, FILE *fp, cd_image *out) {
  jpeg_ctx *c = cd_calloc(1, sizeof *c); /* on the heap: survives the longjmp unambiguously */
  c->ci.err = jpeg_std_error(&c->err.pub);
  c->err.pub.error_exit = jpeg_error_exit;
  c->err.pub.emit_message = jpeg_emit;
  if (setjmp(c->err.jb)) {
    jpeg_destroy_decompress(&c->ci);
    free(c->px);
    cd_set_error("image %s: corrupt or unsupported JPEG: %s", path, c->err.msg);
    free(c);
    return -1;
  }
  jpeg_create_decompress(&c->ci);
  jpeg_stdio_src(&c->ci, fp);
  jpeg_save_markers(&c->ci, JPEG_APP0 + 1, 0xFFFF); /* APP1: EXIF (orientation) */
  jpeg_read_header(&c->ci, TRUE);
  /* gray and YCbCr are converted to RGB by libjpeg; CMYK and YCCK are read as
   * CMYK and converted below */
  const int cmyk = c->ci.jpeg_color_space == JCS_CMYK || c->ci.jpeg_color_space == JCS_YCCK;
  c->ci.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  if (check_dims(path, c->ci.image_width, c->ci.image_height)) {
    jpeg_destroy_decompress(&c->ci);
    free(c);
    return -1;
  }
  int orient = 1;
  for (jpeg_saved_marker_ptr mk = c->ci.marker_list; mk && orient == 1; mk = mk->next)
    if (mk->marker == JPEG_APP0 + 1) orient = cd_exif_orientation_app1(mk->data, mk->data_length);
  jpeg_start_decompress(&c->ci);
  const int nc = cmyk ? 4 : 3;
  if (c->ci.output_components != nc) {
    snprintf(c->err.msg, sizeof c->err.msg, "could not convert to RGB");
    longjmp(c->err.jb, 1);
  }
  int w = (int)c->ci.output_width, h = (int)c->ci.output_height;
  c->px = cd_malloc((size_t)w * h * nc);
  while (c->ci.output_scanline < c->ci.output_height) {
    JSAMPROW row = c->px + (size_t)c->ci.output_scanline * w * nc;
    jpeg_read_scanlines(&c->ci, &row, 1);
  }
  /* Photoshop writes Adobe-marked CMYK inverted (0 = full ink), as every
   * reader assumes; plain CMYK stores ink amounts. Without a colour profile,
   * RGB = 255 (1 - C)(1 - K) per channel (the usual naive conversion). */
  const int inverted = cmyk && c->ci.saw_Adobe_marker;
  for (size_t i = 0; cmyk && i < (size_t)w * h; i++) {
    const uint8_t *q = c->px + 4 * i;
    unsigned k = inverted ? q[3] : 255u - q[3];
    uint8_t rgb[3];
    for (int j = 0; j < 3; j++) rgb[j] = (uint8_t)(((inverted ? q[j] : 255u - q[j]) * k + 127) / 255);
    memcpy(c->px + 3 * i, rgb, 3); /* in place: 3i + 3 <= 4(i + 1), pixel i+1 is still unread-over */
  }
  jpeg_finish_decompress(&c->ci);
  jpeg_destroy_decompress(&c->ci);
  if (c->err.warnings) {
    cd_set_error("image %s: corrupt JPEG data: %s", path, c->err.msg);
    free(c->px);
    free(c);
    return -1;
  }
  out->w = w;
  out->h = h;
  out->c = 3;
  out->px = cmyk ? cd_realloc(c->px, (size_t)w * h * 3) : c->px;
  free(c);
  cd_image_orient(out, orient);
  return 0;
}

/* ----------------------------------------------------------------- WebP */

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* Orientation from the EXIF chunk of an extended WebP (RIFF chunks walked
 * with bounds checks; the payload is TIFF, some writers prefix "Exif\0\0"). */
static int webp_orientation(const uint8_t *d, size_t n) {
  for (size_t pos = 12; pos + 8 <= n;) {
    const size_t len = le32(d + pos + 4);
    if (len > n - pos - 8) break;
    if (!memcmp(d + pos, "EXIF", 4)) {
      const uint8_t *p = d + pos + 8;
      return len >= 6 && !memcmp(p, "Exif\0\0", 6) ? cd_exif_orientation_app1(p, len) : cd_exif_orientation_tiff(p, len);
    }
    pos += 8 + len + (len & 1);
  }
  return 1;
}

static int load_webp(const char *path, cd_image *out) {
  char *data;
  size_t n;
  if (cd_read_file(path, &data, &n)) return cd_prefix_error("image");
  const uint8_t *d = (const uint8_t *)data;
  int w = 0, h = 0, rc = -1;
  if (!WebPGetInfo(d, n, &w, &h)) {
    cd_set_error("image %s: corrupt or unsupported WebP", path);
  } else if (!check_dims(path, w, h)) {
    uint8_t *px = cd_malloc((size_t)w * h * 3);
    /* decodes into our buffer; animated WebP is refused by the simple decoder */
    if (!WebPDecodeRGBInto(d, n, px, (size_t)w * h * 3, w * 3)) {
      free(px);
      cd_set_error("image %s: corrupt or unsupported WebP (animated WebP is not supported)", path);
    } else {
      *out = (cd_image){.w = w, .h = h, .c = 3, .px = px};
      cd_image_orient(out, webp_orientation(d, n));
      rc = 0;
    }
  }
  free(data);
  return rc;
}

static int load_bmp(const char *path, cd_image *out) {
  char *data;
  size_t n;
  if (cd_read_file(path, &data, &n)) return cd_prefix_error("image");
  int rc = cd_bmp_decode(path, (const uint8_t *)data, n, IMG_MAX_DIM, IMG_MAX_PIXELS, out);
  free(data);
  return rc;
}

int cd_image_load(const char *path, cd_image *out) {
  memset(out, 0, sizeof *out);
  FILE *fp = fopen(path, "rb");
  if (!fp) return cd_set_error("image %s: cannot open: %s", path, strerror(errno));
  uint8_t m[12] = {0};
  size_t k = fread(m, 1, 12, fp);
  rewind(fp);
  int rc;
  if (k >= 8 && png_sig_cmp(m, 0, 8) == 0) rc = load_png(path, fp, out);
  else if (k >= 3 && m[0] == 0xFF && m[1] == 0xD8 && m[2] == 0xFF) rc = load_jpeg(path, fp, out);
  else if (k == 12 && !memcmp(m, "RIFF", 4) && !memcmp(m + 8, "WEBP", 4)) rc = load_webp(path, out);
  else if (k >= 2 && m[0] == 'B' && m[1] == 'M') rc = load_bmp(path, out);
  else rc = cd_set_error("image %s: unsupported image format (expected PNG, JPEG, WebP or BMP)", path);
  fclose(fp);
  return rc;
}

/* ------------------------------------------------------------- PNG save */

static int is_ascii(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s >= 0x80) return 0;
  return 1;
}

int cd_image_save_png(const char *path, const cd_image *img, const char *const *text_kv, int n_pairs) {
  if (!img || !img->px || (img->c != 1 && img->c != 3 && img->c != 4) || check_dims(path, img->w, img->h))
    return cd_set_error("image %s: cannot save: invalid image (c must be 1, 3 or 4)", path);
  if (n_pairs < 0 || (n_pairs > 0 && !text_kv)) return cd_set_error("image %s: invalid text metadata", path);
  for (int i = 0; i < n_pairs; i++) {
    const char *k = text_kv[2 * i], *v = text_kv[2 * i + 1];
    size_t n = k ? strlen(k) : 0;
    int ok = n >= 1 && n <= 79 && v && k[0] != ' ' && k[n - 1] != ' ';
    for (size_t j = 0; ok && j < n; j++) ok = k[j] >= 32 && k[j] <= 126;
    if (!ok) return cd_set_error("image %s: invalid PNG text key '%s' (1-79 printable ASCII)", path, k ? k : "(null)");
    if (!is_ascii(v) && cd_utf8_invalid_at(v, strlen(v)) >= 0) /* iTXt is UTF-8 by definition */
      return cd_set_error("image %s: PNG text '%s' is not valid UTF-8", path, k);
  }
  char tmp[4096];
  FILE *fp = cd_atomic_open(path, tmp, sizeof tmp);
  if (!fp) return -1;
  png_ctx *c = cd_calloc(1, sizeof *c); /* on the heap: its fields are current after the longjmp */
  c->path = path;
  c->fp = fp;
  png_text *texts = cd_calloc(n_pairs + 1, sizeof *texts);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, png_err, png_warn);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    cd_atomic_abort(fp, tmp);
    cd_set_error("image %s: PNG write failed: %s", path, c->msg[0] ? c->msg : "libpng error");
    free(c->rows);
    free(c);
    free(texts);
    return -1;
  }
  png_init_io(png, fp);
  int ctype = img->c == 1 ? PNG_COLOR_TYPE_GRAY : img->c == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
  png_set_IHDR(png, info, (png_uint_32)img->w, (png_uint_32)img->h, 8, ctype, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (int i = 0; i < n_pairs; i++) {
    texts[i].key = (char *)text_kv[2 * i];
    texts[i].text = (char *)text_kv[2 * i + 1];
    texts[i].compression = is_ascii(text_kv[2 * i + 1]) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
  }
  if (n_pairs) png_set_text(png, info, texts, n_pairs);
  png_write_info(png, info);
  c->rows = cd_malloc((size_t)img->h * sizeof *c->rows);
  for (int y = 0; y < img->h; y++) c->rows[y] = img->px + (size_t)y * img->w * img->c;
  png_write_image(png, c->rows);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(c->rows);
  free(c);
  free(texts);
  return cd_atomic_commit(fp, tmp, path);
}

/* --------------------------------------------------------- PNG text read */

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* appends n bytes (Latin-1 if latin1, else UTF-8 as is) to out; -1 if it does not fit */
static int emit_text(const uint8_t *s, size_t n, int latin1, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t ch = s[i];
    if (latin1 && ch >= 0x80) {
      if (o + 2 >= cap) return -1;
      out[o++] = (char)(0xC0 | ch >> 6);
      out[o++] = (char)(0x80 | (ch & 0x3F));
    } else {
      if (o + 1 >= cap) return -1;
      out[o++] = (char)ch;
    }
  }
  if (cap == 0) return -1;
  out[o] = 0;
  return 0;
}

/* zlib-inflates src into a new buffer (at most 64 MB) */
static int inflate_all(const uint8_t *src, size_t n, uint8_t **dst, size_t *dn) {
  z_stream zs;
  memset(&zs, 0, sizeof zs);
  if (inflateInit(&zs) != Z_OK) return -1;
  size_t cap = 4096, len = 0;
  uint8_t *b = cd_malloc(cap);
  zs.next_in = (Bytef *)src;
  zs.avail_in = (uInt)n;
  int r = Z_OK;
  while (r == Z_OK) {
    if (len == cap) {
      if (cap >= (64u << 20)) break;
      b = cd_realloc(b, cap *= 2);
    }
    zs.next_out = b + len;
    zs.avail_out = (uInt)(cap - len);
    r = inflate(&zs, Z_NO_FLUSH);
    len = cap - zs.avail_out;
    if (r == Z_BUF_ERROR && zs.avail_out) break;
    if (r == Z_BUF_ERROR) r = Z_OK;
  }
  inflateEnd(&zs);
  if (r != Z_STREAM_END) {
    free(b);
    return -1;
  }
  *dst = b;
  *dn = len;
  return 0;
}

/* key != NULL: its value into out (cd_png_read_text). key == NULL: every text
 * chunk's keyword into out, each NUL-terminated, then an empty one; returns the count. */
static int png_text_read(const char *path, const char *key, char *out, size_t cap) {
  char *data;
  size_t n, o = 0;
  int count = 0;
  if (cap) out[0] = 0;
  if (!key && cap < 2) return cd_set_error("png text %s: no room for the keywords", path);
  if (cd_read_file(path, &data, &n)) return cd_prefix_error("png text");
  const uint8_t *p = (const uint8_t *)data;
  int rc = 1;
  if (n < 8 || png_sig_cmp(p, 0, 8) != 0) {
    rc = cd_set_error("png text %s: not a PNG file", path);
    goto done;
  }
  size_t klen = key ? strlen(key) : 0;
  for (size_t pos = 8;;) {
    if (n - pos < 12) {
      rc = cd_set_error("png text %s: truncated PNG (no IEND chunk)", path);
      goto done;
    }
    uint32_t len = be32(p + pos);
    const uint8_t *type = p + pos + 4, *d = p + pos + 8;
    if (len > n - pos - 12) {
      rc = cd_set_error("png text %s: truncated PNG chunk", path);
      goto done;
    }
    if ((uint32_t)crc32(0, type, len + 4) != be32(d + len)) {
      rc = cd_set_error("png text %s: CRC error in chunk %.4s", path, (const char *)type);
      goto done;
    }
    if (memcmp(type, "IEND", 4) == 0) break;
    int is_t = memcmp(type, "tEXt", 4) == 0, is_z = memcmp(type, "zTXt", 4) == 0, is_i = memcmp(type, "iTXt", 4) == 0;
    if ((is_t || is_z || is_i) && !key) {
      size_t kl = strnlen((const char *)d, len);
      if (kl == 0 || kl == len) {
        rc = cd_set_error("png text %s: malformed %.4s chunk (no keyword)", path, (const char *)type);
        goto done;
      }
      if (kl + 2 > cap - o) {
        rc = cd_set_error("png text %s: the keywords are longer than %zu bytes", path, cap);
        goto done;
      }
      memcpy(out + o, d, kl);
      o += kl;
      out[o++] = 0;
      out[o] = 0;
      count++;
    } else if ((is_t || is_z || is_i) && len > klen && memcmp(d, key, klen) == 0 && d[klen] == 0) {
      const uint8_t *v = d + klen + 1, *end = d + len;
      int compressed = is_z;
      if (is_z) v++; /* compression method byte */
      if (is_i) { /* flag, method, language\0, translated keyword\0 */
        if (end - v < 2) goto bad;
        compressed = v[0];
        v += 2;
        for (int k = 0; k < 2; k++) {
          const uint8_t *z = memchr(v, 0, (size_t)(end - v));
          if (!z) goto bad;
          v = z + 1;
        }
      }
      if (v > end) goto bad;
      uint8_t *dec = NULL;
      size_t dn = (size_t)(end - v);
      if (compressed && inflate_all(v, dn, &dec, &dn)) goto bad;
      int er = emit_text(dec ? dec : v, dn, !is_i, out, cap);
      free(dec);
      rc = er ? cd_set_error("png text %s: value of '%s' is longer than %zu bytes", path, key, cap ? cap - 1 : 0) : 0;
      goto done;
    bad:
      rc = cd_set_error("png text %s: malformed %.4s chunk for '%s'", path, (const char *)type, key);
      goto done;
    }
    pos += 12 + (size_t)len;
  }
done:
  free(data);
  return key || rc < 0 ? rc : count;
}

int cd_png_read_text(const char *path, const char *key, char *out, size_t cap) {
  if (!key) return cd_set_error("png text %s: no key given", path);
  return png_text_read(path, key, out, cap);
}

int cd_png_text_keys(const char *path, char *out, size_t cap) { return png_text_read(path, NULL, out, cap); }

/* --------------------------------------------------------------- resize */

/* Contributions of source samples to each of dst output samples along one axis:
 * first index start[o], weights wt[o*maxn .. o*maxn+cnt[o]). */
typedef struct { int *start, *cnt, maxn; float *wt; } contrib;

static void make_contrib(int src, int dst, contrib *c) {
  double s = (double)src / dst;
  c->maxn = s > 1 ? (int)ceil(s) + 2 : 2;
  c->start = cd_malloc(dst * sizeof(int));
  c->cnt = cd_malloc(dst * sizeof(int));
  c->wt = cd_calloc((size_t)dst * c->maxn, sizeof(float));
  for (int o = 0; o < dst; o++) {
    float *w = c->wt + (size_t)o * c->maxn;
    if (s > 1) { /* area: source pixel j covers [j, j+1), output o covers [o*s, (o+1)*s) */
      double a = o * s, b = (o + 1) * s;
      int j0 = (int)floor(a), j1 = CD_MIN((int)ceil(b), src);
      c->start[o] = j0;
      c->cnt[o] = j1 - j0;
      for (int j = j0; j < j1; j++) w[j - j0] = (float)((CD_MIN(j + 1.0, b) - CD_MAX((double)j, a)) / s);
    } else { /* bilinear, half-pixel centres, clamped at the edges */
      double x = (o + 0.5) * s - 0.5;
      if (x < 0) x = 0;
      if (x > src - 1) x = src - 1;
      int j0 = (int)floor(x);
      double f = x - j0;
      c->start[o] = j0;
      c->cnt[o] = j0 + 1 < src ? 2 : 1;
      w[0] = (float)(1 - f);
      if (c->cnt[o] == 2) w[1] = (float)f;
      else w[0] = 1;
    }
  }
}

static void free_contrib(contrib *c) {
  free(c->start);
  free(c->cnt);
  free(c->wt);
}

int cd_image_resize(const cd_image *src, int w, int h, cd_image *dst) {
  memset(dst, 0, sizeof *dst);
  if (!src || !src->px || src->c < 1 || src->w < 1 || src->h < 1)
    return cd_set_error("image resize: invalid source image");
  if (check_dims("(resize target)", w, h)) return -1;
  int C = src->c, sw = src->w, sh = src->h;
  contrib cx, cy;
  make_contrib(sw, w, &cx);
  make_contrib(sh, h, &cy);
  /* horizontal pass: [sh][w][C] floats */
  float *tmp = cd_malloc((size_t)sh * w * C * sizeof *tmp);
  for (int y = 0; y < sh; y++) {
    const uint8_t *row = src->px + (size_t)y * sw * C;
    for (int x = 0; x < w; x++) {
      const float *wt = cx.wt + (size_t)x * cx.maxn;
      for (int ch = 0; ch < C; ch++) {
        float acc = 0;
        for (int k = 0; k < cx.cnt[x]; k++) acc += wt[k] * row[(size_t)(cx.start[x] + k) * C + ch];
        tmp[((size_t)y * w + x) * C + ch] = acc;
      }
    }
  }
  /* vertical pass */
  dst->px = cd_malloc((size_t)h * w * C);
  dst->w = w;
  dst->h = h;
  dst->c = C;
  for (int y = 0; y < h; y++) {
    const float *wt = cy.wt + (size_t)y * cy.maxn;
    for (size_t i = 0; i < (size_t)w * C; i++) {
      float acc = 0;
      for (int k = 0; k < cy.cnt[y]; k++) acc += wt[k] * tmp[(size_t)(cy.start[y] + k) * w * C + i];
      float v = nearbyintf(acc);
      dst->px[(size_t)y * w * C + i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
  free(tmp);
  free_contrib(&cx);
  free_contrib(&cy);
  return 0;
}

/* ------------------------------------------------------ float conversion */

void cd_image_to_chw(const cd_image *img, float *dst) {
  size_t hw = (size_t)img->w * img->h;
  for (int ch = 0; ch < img->c; ch++)
    for (size_t i = 0; i < hw; i++) dst[ch * hw + i] = img->px[i * img->c + ch] / 127.5f - 1.0f;
}

void cd_chw_to_image(const float *src, int c, int h, int w, cd_image *dst) {
  size_t hw = (size_t)w * h;
  dst->w = w;
  dst->h = h;
  dst->c = c;
  dst->px = cd_malloc(hw * c);
  for (int ch = 0; ch < c; ch++)
    for (size_t i = 0; i < hw; i++) {
      float v = src[ch * hw + i] * 0.5f + 0.5f;
      v = v > 0 ? (v < 1 ? v : 1) : 0; /* NaN fails v > 0 and maps to 0 */
      dst->px[i * c + ch] = (uint8_t)nearbyintf(v * 255.0f);
    }
}
