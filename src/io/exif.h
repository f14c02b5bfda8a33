/* exif.h - the EXIF Orientation tag (0x0112) and applying it to pixels.
 *
 * Phone cameras store the sensor's pixels as shot and record how to turn them
 * upright in IFD0's Orientation tag; viewers (and PIL's
 * ImageOps.exif_transpose, which training scripts call) apply it. Values:
 *   1 upright   2 mirror left-right   3 rotate 180   4 mirror top-bottom
 *   5 transpose (mirror along the main diagonal)   6 rotate 90 clockwise
 *   7 transverse (mirror along the anti-diagonal)  8 rotate 90 counter-clockwise */
#ifndef CD_EXIF_H
#define CD_EXIF_H

#include <stddef.h>
#include <stdint.h>

#include "io/image.h"

/* Orientation from a TIFF structure ("II*\0" or "MM\0*", offset to IFD0, ...)
 * of n bytes, every offset bounds-checked. Returns 1..8, or 1 when the data
 * is malformed or has no valid Orientation (a broken tag must not make an
 * image unreadable: it is then used as stored). */
int cd_exif_orientation_tiff(const uint8_t *tiff, size_t n);
/* Same from a JPEG APP1 payload: "Exif\0\0" followed by the TIFF structure;
 * 1 when the payload is not EXIF. */
int cd_exif_orientation_app1(const uint8_t *payload, size_t n);
/* Turns img upright for orientation o (2..8 change it, 1 or out of range do
 * nothing); the width and height swap for 5..8. */
void cd_image_orient(cd_image *img, int o);

#endif
