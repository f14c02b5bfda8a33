/* exif.c - EXIF Orientation parsing (TIFF IFD0) and the eight pixel
 * transforms (see exif.h). The TIFF data comes from untrusted files: every
 * read goes through rd16/rd32, which check the offset against the length. */
#include "io/exif.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

typedef struct {
  const uint8_t *p;
  size_t n;
  int big; /* "MM": big-endian */
} tiff_t;

static int rd16(const tiff_t *t, size_t off, unsigned *v) {
  if (off > t->n || t->n - off < 2) return -1;
  const uint8_t *q = t->p + off;
  *v = t->big ? (unsigned)(q[0] << 8 | q[1]) : (unsigned)(q[1] << 8 | q[0]);
  return 0;
}

static int rd32(const tiff_t *t, size_t off, uint32_t *v) {
  if (off > t->n || t->n - off < 4) return -1;
  const uint8_t *q = t->p + off;
  *v = t->big ? (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3]
              : (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
  return 0;
}

int cd_exif_orientation_tiff(const uint8_t *tiff, size_t n) {
  if (!tiff || n < 8) return 1;
  tiff_t t = {tiff, n, 0};
  if (!memcmp(tiff, "MM", 2)) t.big = 1;
  else if (memcmp(tiff, "II", 2)) return 1;
  unsigned magic, count;
  uint32_t ifd;
  if (rd16(&t, 2, &magic) || magic != 42 || rd32(&t, 4, &ifd) || rd16(&t, ifd, &count)) return 1;
  for (unsigned i = 0; i < count; i++) {
    size_t e = (size_t)ifd + 2 + 12 * (size_t)i; /* entry: tag, type, count, value/offset */
    unsigned tag, type, v;
    uint32_t cnt;
    if (rd16(&t, e, &tag) || rd16(&t, e + 2, &type) || rd32(&t, e + 4, &cnt)) return 1;
    if (tag != 0x0112) continue;
    /* SHORT (3), count 1: the value sits in the first two bytes of the field */
    if (type != 3 || cnt < 1 || rd16(&t, e + 8, &v)) return 1;
    return v >= 1 && v <= 8 ? (int)v : 1;
  }
  return 1;
}

int cd_exif_orientation_app1(const uint8_t *payload, size_t n) {
  if (!payload || n < 6 || memcmp(payload, "Exif\0\0", 6)) return 1;
  return cd_exif_orientation_tiff(payload + 6, n - 6);
}

void cd_image_orient(cd_image *img, int o) {
  if (!img || !img->px || o < 2 || o > 8) return;
  const int w = img->w, h = img->h, c = img->c;
  const int swap = o >= 5;
  const int ow = swap ? h : w, oh = swap ? w : h;
  uint8_t *dst = cd_malloc((size_t)w * h * c);
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      int sx, sy; /* the source pixel of output (x, y) */
      switch (o) {
      case 2: sx = w - 1 - x, sy = y; break;
      case 3: sx = w - 1 - x, sy = h - 1 - y; break;
      case 4: sx = x, sy = h - 1 - y; break;
      case 5: sx = y, sy = x; break;
      case 6: sx = y, sy = h - 1 - x; break;
      case 7: sx = w - 1 - y, sy = h - 1 - x; break;
      default: sx = w - 1 - y, sy = x; break; /* 8 */
      }
      memcpy(dst + ((size_t)y * ow + x) * c, img->px + ((size_t)sy * w + sx) * c, (size_t)c);
    }
  free(img->px);
  img->px = dst;
  img->w = ow;
  img->h = oh;
}
