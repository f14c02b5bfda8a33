/* fuzz_exif_bmp.c - libFuzzer harness for the two parsers written here
 * rather than taken from a library: the EXIF orientation (TIFF IFD0, raw and
 * as a JPEG APP1 payload) and BMP decoding, straight from memory (faster than
 * the file-based fuzz_image): an orientation or an error, never a crash. */
#include <stdint.h>
#include <stdlib.h>

#include "io/bmp.h"
#include "io/exif.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int o = cd_exif_orientation_tiff(data, size) + cd_exif_orientation_app1(data, size);
  if (o < 2 || o > 16) __builtin_trap(); /* each is 1..8 */
  cd_image im;
  if (cd_bmp_decode("fuzz.bmp", data, size, 4096, (int64_t)1 << 22, &im) == 0) {
    cd_image_orient(&im, 1 + (int)(size % 8)); /* and the transforms on whatever decoded */
    free(im.px); /* (cd_image_free lives in image.c, with the libraries) */
  }
  return 0;
}
