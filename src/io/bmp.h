/* bmp.h - Windows BMP decoding (a small parser: Debian has no BMP library).
 *
 * Read: BITMAPCOREHEADER (12 bytes) and BITMAPINFOHEADER and its V2-V5
 * extensions (40-124 bytes); 1, 4 and 8 bits per pixel with a palette, 16 and
 * 32 bits with BI_RGB or BI_BITFIELDS masks, 24 bits; bottom-up and top-down
 * rows. RLE and embedded JPEG/PNG compressions are refused with a message.
 * Output is 8-bit RGB (alpha dropped). */
#ifndef CD_BMP_H
#define CD_BMP_H

#include <stddef.h>
#include <stdint.h>

#include "io/image.h"

/* data: the whole file (n bytes); path only names the file in errors.
 * max_dim/max_pixels: size limits. 0, or -1 with cd_set_error; *out zeroed. */
int cd_bmp_decode(const char *path, const uint8_t *data, size_t n, int max_dim, int64_t max_pixels, cd_image *out);

#endif
