/* fuzz_image.c - libFuzzer harness for cd_image_load (PNG, JPEG and WebP
 * through libpng/libjpeg/libwebp, BMP and the EXIF orientation through our own
 * parsers): error or image, never a crash. */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "io/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0]) snprintf(path, sizeof path, "/tmp/cdiff_fuzz_img_%d", (int)getpid());
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(data, 1, size, f);
  fclose(f);
  cd_image im = {0};
  if (cd_image_load(path, &im) == 0) cd_image_free(&im);
  return 0;
}
