/* jpeg_save.c - JPEG encoding (libjpeg), with the text A1111 keeps in a JPEG:
 * EXIF UserComment, "UNICODE\0" + UTF-16BE (what piexif's UserComment.dump
 * with encoding="unicode" writes and A1111/ComfyUI read back). */
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which needs FILE and size_t */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "core/common.h"
#include "core/utf8.h"
#include "io/fsutil.h"
#include "io/image.h"

/* APP1 payload: "Exif\0\0", a big-endian TIFF header, IFD0 holding only the
 * Exif IFD pointer, and the Exif IFD holding only UserComment. */
static uint8_t *exif_user_comment(const char *text, size_t *len) {
  size_t n = strlen(text), u16 = 0;
  for (size_t i = 0; i < n;) {
    unsigned cp;
    i += cd_utf8_decode((const unsigned char *)text + i, n - i, &cp);
    u16 += cp > 0xFFFF ? 2 : 1;
  }
  const size_t data_off = 44, count = 8 + 2 * u16; /* offsets from the TIFF header */
  *len = 6 + data_off + count;
  uint8_t *b = cd_calloc(*len, 1), *t = b + 6;
  memcpy(b, "Exif\0\0", 6);
#define BE16(p, v) ((p)[0] = (uint8_t)((v) >> 8), (p)[1] = (uint8_t)(v))
#define BE32(p, v) (BE16(p, (v) >> 16), BE16((p) + 2, (v)&0xFFFF))
  memcpy(t, "MM", 2);
  BE16(t + 2, 42);
  BE32(t + 4, 8);               /* IFD0 at 8 */
  BE16(t + 8, 1);               /* one entry: */
  BE16(t + 10, 0x8769);         /* ExifIFDPointer */
  BE16(t + 12, 4);              /* LONG */
  BE32(t + 14, 1);
  BE32(t + 18, 26);             /* Exif IFD at 26 */
  BE32(t + 22, 0);              /* no IFD1 */
  BE16(t + 26, 1);              /* one entry: */
  BE16(t + 28, 0x9286);         /* UserComment */
  BE16(t + 30, 7);              /* UNDEFINED */
  BE32(t + 32, (uint32_t)count);
  BE32(t + 36, (uint32_t)data_off);
  BE32(t + 40, 0);
  uint8_t *d = t + data_off;
  memcpy(d, "UNICODE\0", 8);
  d += 8;
  for (size_t i = 0; i < n;) {
    unsigned cp;
    i += cd_utf8_decode((const unsigned char *)text + i, n - i, &cp);
    if (cp > 0xFFFF) {
      cp -= 0x10000;
      BE16(d, 0xD800 + (cp >> 10));
      BE16(d + 2, 0xDC00 + (cp & 0x3FF));
      d += 4;
    } else {
      BE16(d, cp);
      d += 2;
    }
  }
#undef BE16
#undef BE32
  return b;
}

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
} save_err;

static void save_error_exit(j_common_ptr ci) {
  save_err *e = (save_err *)ci->err;
  ci->err->format_message(ci, e->msg);
  longjmp(e->jb, 1);
}

typedef struct {
  struct jpeg_compress_struct ci;
  save_err err;
  unsigned char *mem;
  unsigned long size;
  uint8_t *exif;
} save_ctx;

int cd_image_save_jpeg(const char *path, const cd_image *img, int quality, const char *comment) {
  if (!img || !img->px || (img->c != 1 && img->c != 3) || img->w <= 0 || img->h <= 0)
    return cd_set_error("image %s: cannot save as JPEG: invalid image (c must be 1 or 3)", path);
  if (quality < 1 || quality > 100) return cd_set_error("image %s: JPEG quality %d not in 1..100", path, quality);
  if (comment && cd_utf8_invalid_at(comment, strlen(comment)) >= 0)
    return cd_set_error("image %s: the text to embed is not valid UTF-8", path);
  save_ctx *c = cd_calloc(1, sizeof *c); /* on the heap: survives the longjmp unambiguously */
  size_t exif_len = 0;
  if (comment) {
    c->exif = exif_user_comment(comment, &exif_len);
    if (exif_len > 65533) {
      free(c->exif);
      free(c);
      return cd_set_error("image %s: the parameters (%zu bytes of EXIF) do not fit a JPEG segment (65533); write a PNG",
                          path, exif_len);
    }
  }
  c->ci.err = jpeg_std_error(&c->err.pub);
  c->err.pub.error_exit = save_error_exit;
  if (setjmp(c->err.jb)) {
    jpeg_destroy_compress(&c->ci);
    cd_set_error("image %s: JPEG encoding failed: %s", path, c->err.msg);
    free(c->mem);
    free(c->exif);
    free(c);
    return -1;
  }
  jpeg_create_compress(&c->ci);
  jpeg_mem_dest(&c->ci, &c->mem, &c->size);
  c->ci.image_width = (JDIMENSION)img->w;
  c->ci.image_height = (JDIMENSION)img->h;
  c->ci.input_components = img->c;
  c->ci.in_color_space = img->c == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&c->ci);
  jpeg_set_quality(&c->ci, quality, TRUE);
  jpeg_start_compress(&c->ci, TRUE);
  if (c->exif) jpeg_write_marker(&c->ci, JPEG_APP0 + 1, c->exif, (unsigned)exif_len);
  while (c->ci.next_scanline < c->ci.image_height) {
    JSAMPROW row = img->px + (size_t)c->ci.next_scanline * img->w * img->c;
    jpeg_write_scanlines(&c->ci, &row, 1);
  }
  jpeg_finish_compress(&c->ci);
  jpeg_destroy_compress(&c->ci);
  int rc = cd_write_file_atomic(path, c->mem, c->size);
  free(c->mem);
  free(c->exif);
  free(c);
  return rc;
}
