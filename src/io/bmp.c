/* bmp.c - BMP decoding (see bmp.h). The file is untrusted: every field is
 * checked before use and every pixel read is inside the buffer (the rows'
 * extent is checked once against the file size). */
#include "io/bmp.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p) { return le16(p) | le16(p + 2) << 16; }

/* one channel of a BI_BITFIELDS mask: shift and width */
typedef struct {
  uint32_t mask;
  int shift, bits;
} chan_t;

static chan_t make_chan(uint32_t mask) {
  chan_t c = {mask, 0, 0};
  if (!mask) return c;
  while (!(mask >> c.shift & 1)) c.shift++;
  while (c.shift + c.bits < 32 && (mask >> (c.shift + c.bits) & 1)) c.bits++;
  return c;
}

static uint8_t chan_value(const chan_t *c, uint32_t px) {
  if (!c->bits) return 0;
  uint64_t v = (px & c->mask) >> c->shift, max = ((uint64_t)1 << c->bits) - 1;
  return (uint8_t)((v * 255 + max / 2) / max);
}

int cd_bmp_decode(const char *path, const uint8_t *d, size_t n, int max_dim, int64_t max_pixels, cd_image *out) {
  memset(out, 0, sizeof *out);
  if (n < 14 + 12 || d[0] != 'B' || d[1] != 'M') return cd_set_error("image %s: corrupt BMP: truncated header", path);
  const uint32_t data_off = le32(d + 10), hsize = le32(d + 14);
  if (hsize != 12 && (hsize < 40 || hsize > 124)) return cd_set_error("image %s: unsupported BMP header size %u", path, hsize);
  if (n < 14 + (size_t)hsize) return cd_set_error("image %s: corrupt BMP: truncated header", path);
  const uint8_t *h = d + 14;
  int64_t w, ht;
  uint32_t bpp, comp = 0, nclr = 0;
  if (hsize == 12) {
    w = le16(h + 4);
    ht = (int16_t)le16(h + 6);
    bpp = le16(h + 10);
  } else {
    w = (int32_t)le32(h + 4);
    ht = (int32_t)le32(h + 8);
    bpp = le16(h + 14);
    comp = le32(h + 16);
    nclr = le32(h + 32);
  }
  const int top_down = ht < 0;
  if (top_down) ht = -ht;
  if (w <= 0 || ht <= 0 || w > max_dim || ht > max_dim || w * ht > max_pixels)
    return cd_set_error("image %s: unsupported size %lldx%lld", path, (long long)w, (long long)ht);
  if (comp == 1 || comp == 2) return cd_set_error("image %s: RLE-compressed BMP is not supported (save it as PNG)", path);
  if (comp == 4 || comp == 5) return cd_set_error("image %s: BMP with embedded JPEG/PNG is not supported", path);
  if (comp != 0 && comp != 3 && comp != 6) return cd_set_error("image %s: unsupported BMP compression %u", path, comp);
  if (bpp != 1 && bpp != 4 && bpp != 8 && bpp != 16 && bpp != 24 && bpp != 32)
    return cd_set_error("image %s: unsupported BMP bit depth %u", path, bpp);
  if (comp != 0 && bpp != 16 && bpp != 32) return cd_set_error("image %s: corrupt BMP: bit fields with %u bits per pixel", path, bpp);

  /* colour masks: in the header (V2+), or the 12 bytes after a 40-byte header */
  chan_t ch[3];
  if (bpp == 16 || bpp == 32) {
    uint32_t m[3];
    if (comp == 0) { /* BI_RGB defaults: 5-5-5 and 8-8-8 */
      m[0] = bpp == 16 ? 0x7C00 : 0xFF0000;
      m[1] = bpp == 16 ? 0x03E0 : 0x00FF00;
      m[2] = bpp == 16 ? 0x001F : 0x0000FF;
    } else {
      if (n < 14 + 40 + 12) return cd_set_error("image %s: corrupt BMP: truncated bit masks", path);
      for (int k = 0; k < 3; k++) m[k] = le32(h + 40 + 4 * k);
    }
    for (int k = 0; k < 3; k++) ch[k] = make_chan(m[k]);
  }
  /* palette: right after the header (and the masks of a 40-byte BI_BITFIELDS header) */
  uint8_t pal[256][3];
  memset(pal, 0, sizeof pal);
  if (bpp <= 8) {
    const size_t esz = hsize == 12 ? 3 : 4, maxc = (size_t)1 << bpp;
    size_t cnt = nclr ? nclr : maxc;
    if (cnt > maxc) cnt = maxc;
    const size_t at = 14 + (size_t)hsize;
    if (at + cnt * esz > n || at + cnt * esz > data_off) return cd_set_error("image %s: corrupt BMP: truncated palette", path);
    for (size_t i = 0; i < cnt; i++)
      for (int k = 0; k < 3; k++) pal[i][k] = d[at + i * esz + 2 - k]; /* stored B, G, R */
  }
  const size_t stride = (((size_t)w * bpp + 31) / 32) * 4;
  if (data_off > n || (n - data_off) / stride < (size_t)ht) return cd_set_error("image %s: corrupt BMP: pixel data truncated", path);
  uint8_t *px = cd_malloc((size_t)w * ht * 3);
  for (int64_t y = 0; y < ht; y++) {
    const uint8_t *row = d + data_off + (size_t)(top_down ? y : ht - 1 - y) * stride;
    uint8_t *o = px + (size_t)y * w * 3;
    for (int64_t x = 0; x < w; x++, o += 3) {
      if (bpp <= 8) {
        const size_t bit = (size_t)x * bpp;
        const unsigned idx = (row[bit / 8] >> (8 - bpp - bit % 8)) & ((1u << bpp) - 1);
        memcpy(o, pal[idx], 3);
      } else if (bpp == 24) {
        const uint8_t *q = row + 3 * x;
        o[0] = q[2], o[1] = q[1], o[2] = q[0];
      } else {
        const uint32_t v = bpp == 16 ? le16(row + 2 * x) : le32(row + 4 * x);
        for (int k = 0; k < 3; k++) o[k] = chan_value(&ch[k], v);
      }
    }
  }
  out->w = (int)w;
  out->h = (int)ht;
  out->c = 3;
  out->px = px;
  return 0;
}
