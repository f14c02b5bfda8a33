/* image.h - 8-bit images: PNG/JPEG/WebP/BMP load, PNG save with text
 * metadata, resizing, and conversion to/from the float CHW tensors the models
 * use.
 *
 * Pixels are HWC, row-major, 8 bits per channel. Loading always yields RGB
 * (c = 3): gray is replicated, palettes expanded, 16-bit reduced to 8, and an
 * alpha channel is dropped (not composited), as PIL's convert("RGB") does.
 * CMYK JPEGs (also Adobe's inverted CMYK and YCCK) are converted with
 * RGB = 255 (1 - C)(1 - K). An EXIF Orientation (JPEG APP1, PNG eXIf, WebP
 * EXIF) is applied, so the pixels come out upright as PIL's
 * ImageOps.exif_transpose gives them (see exif.h). */
#ifndef CD_IMAGE_H
#define CD_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int w, h, c;
  uint8_t *px; /* h*w*c bytes, owned; free with cd_image_free */
} cd_image;

/* PNG (libpng), JPEG (libjpeg), WebP (libwebp, still images) or BMP (bmp.c),
 * chosen by magic bytes. Corrupt, truncated or unsupported files fail with a
 * message naming the file; *out is zeroed. */
int cd_image_load(const char *path, cd_image *out);
/* c = 1 (gray), 3 (RGB) or 4 (RGBA). text_kv: key,value,... (n_pairs pairs,
 * may be NULL); keys are 1-79 printable ASCII characters. A value that is
 * pure ASCII is written as tEXt, otherwise as uncompressed iTXt (UTF-8).
 * Atomic: PATH.tmp.<pid>, fsync, rename. */
int cd_image_save_png(const char *path, const cd_image *img, const char *const *text_kv, int n_pairs);
void cd_image_free(cd_image *img); /* frees px and zeroes img; NULL-safe */

/* Reads the text chunk `key` (tEXt, zTXt or iTXt) of a PNG into out as UTF-8
 * without decoding the image. Returns 0 if found, 1 if the PNG has no such
 * key, -1 on error (unreadable/corrupt file, value longer than cap-1). */
int cd_png_read_text(const char *path, const char *key, char *out, size_t cap);
/* The keywords of every text chunk, in file order: each NUL-terminated, then
 * an empty one ("prompt\0seed\0\0"). Returns how many, or -1 on error. */
int cd_png_text_keys(const char *path, char *out, size_t cap);
/* JPEG (quality 1..100) of a gray or RGB image; comment (UTF-8, or NULL) goes
 * into the EXIF UserComment as UNICODE (UTF-16BE), where A1111 keeps an
 * image's parameters. Atomic like cd_image_save_png. */
int cd_image_save_jpeg(const char *path, const cd_image *img, int quality, const char *comment);

/* Resize to w x h (dst allocated, same c). Separable filter, per axis:
 * area average (box, exact fractional coverage) along an axis that shrinks,
 * bilinear with half-pixel centres and edge clamping (= align_corners=False)
 * along an axis that grows; an unchanged axis is copied. */
int cd_image_resize(const cd_image *src, int w, int h, cd_image *dst);

/* dst[c][y][x] = px/127.5 - 1, in [-1, 1]; dst holds c*h*w floats. */
void cd_image_to_chw(const cd_image *img, float *dst);
/* Inverse, as diffusers' postprocessing: round(clamp(x/2 + 0.5, 0, 1) * 255)
 * (round half to even); NaN maps to 0. dst is allocated. */
void cd_chw_to_image(const float *src, int c, int h, int w, cd_image *dst);

#endif
