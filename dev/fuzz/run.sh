#!/bin/sh
# Fuzzes the checkpoint readers for $1 seconds (default 60) with libFuzzer,
# seeded with the golden safetensors files and a torch zip written by the tests.
set -e
cd "$(dirname "$0")/../.."
S=${1:-60}
OUT=/tmp/cdiff_fuzz; mkdir -p $OUT/corpus
SRC="src/io/safetensors.c src/io/ckpt.c src/io/tensor_file.c src/io/fsutil.c src/core/common.c"
clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc dev/fuzz/fuzz_tensor_file.c $SRC -lcjson -lz -lm -o $OUT/fuzz
for f in ../shared/golden/merge.safetensors ../shared/golden/golden_tiny-sd1.safetensors; do [ -f "$f" ] && cp "$f" $OUT/corpus/; done
# a torch zip seed, written by the library itself
make -s build/libcdiff.a
cat > $OUT/seed.c <<'EOC'
#include "io/tensor_file.h"
int main(int argc, char **argv) {
  float a[6] = {1, 2, 3, 4, 5, 6};
  unsigned short h[4] = {0x3c00, 0x4000, 0, 0};
  cd_tensor_out t[2] = {{.name = "state_dict.model.w", .dtype = CD_DT_F32, .ndim = 2, .shape = {2, 3}, .data = a},
                        {.name = "embed", .dtype = CD_DT_F16, .ndim = 1, .shape = {4}, .data = h}};
  return argc > 1 ? cd_ckpt_write(argv[1], t, 2) : 1;
}
EOC
gcc -std=c11 -D_GNU_SOURCE -Isrc $OUT/seed.c -Wl,--whole-archive build/libcdiff.a -Wl,--no-whole-archive -fopenmp \
  -llapacke -lopenblas -lcjson -lpng -ljpeg -lz -lm -o $OUT/seed && $OUT/seed $OUT/corpus/seed.ckpt
$OUT/fuzz -max_total_time="$S" -max_len=65536 -rss_limit_mb=4096 $OUT/corpus
# the image loader (PNG/JPEG/WebP through libpng/libjpeg/libwebp, BMP and EXIF by our own parsers)
clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc dev/fuzz/fuzz_image.c src/io/image.c src/io/exif.c src/io/bmp.c src/io/fsutil.c \
  src/core/common.c -lpng -ljpeg -lwebp -lz -lm -o $OUT/fuzz_image
mkdir -p $OUT/images
make -s build/cdiff && CDIFF_QUIET=1 ./build/cdiff sample --model ../shared/golden/tiny-sd1 --prompt seed --steps 1 \
  --width 64 --height 64 --out $OUT/images/seed.png 2>/dev/null || true
$OUT/fuzz_image -max_total_time="$S" -max_len=20000 -rss_limit_mb=1024 $OUT/images
# the EXIF and BMP parsers from memory (seeded with the BMP seed and a TIFF header)
clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc dev/fuzz/fuzz_exif_bmp.c src/io/exif.c src/io/bmp.c \
  src/core/common.c -lm -o $OUT/fuzz_exif_bmp
mkdir -p $OUT/exif && printf 'II*\000\010\000\000\000\001\000\022\001\003\000\001\000\000\000\006\000\000\000\000\000\000\000' > $OUT/exif/tiff
$OUT/fuzz_exif_bmp -max_total_time="$S" -max_len=4096 -rss_limit_mb=1024 $OUT/exif $OUT/images
