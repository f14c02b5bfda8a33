#!/bin/sh
# dev/gpu/prepare.sh - run HERE (no GPU needed) before dev/gpu/check.sh goes to
# a GPU machine. Fills dev/gpu/carry/ (ignored by git; the device tool takes it
# with carry: ["dev/gpu/carry"]) with what that machine lacks:
#   sys.tar.xz   headers and shared libraries of cdiff's C dependencies
#                (OpenBLAS + LAPACKE, cJSON, libpng, libjpeg, libwebp, zlib),
#                copied from this Debian 12 machine: the device image has CUDA,
#                gcc and Python but not these (and cannot download them);
#   golden.tar.xz  the tiny golden models tiny-sd1 and tiny-sd2 with their
#                reference tensors (small4-sd1 would push the call past its
#                64 MiB limit), for test_cuda's golden tests.
# The random SD 1.5 checkpoint of the benches is generated there
# (gen_sd_random), never carried. Prints the sizes; everything must stay well
# under 64 MiB together with the repository (~10 MB).
set -eu
cd "$(dirname "$0")/../.."
GOLDEN=${CDIFF_GOLDEN:-../shared/golden}
C=dev/gpu/carry
rm -rf "$C"
mkdir -p "$C/sys/include" "$C/sys/lib"
A=/usr/lib/x86_64-linux-gnu

# headers: what cdiff's sources include, with the files they include in turn
for h in lapack.h lapacke.h lapacke_config.h lapacke_mangling.h lapacke_utils.h png.h pngconf.h pnglibconf.h \
         jpeglib.h jmorecfg.h jerror.h zlib.h zconf.h; do
  [ -e /usr/include/$h ] && cp -L /usr/include/$h "$C/sys/include/"
done
[ -e /usr/include/x86_64-linux-gnu/jconfig.h ] && cp -L /usr/include/x86_64-linux-gnu/jconfig.h "$C/sys/include/"
cp -L /usr/include/x86_64-linux-gnu/openblas-pthread/*.h "$C/sys/include/"
cp -rL /usr/include/cjson /usr/include/webp "$C/sys/include/"
[ -d /usr/include/libpng16 ] && cp -rL /usr/include/libpng16 "$C/sys/include/"

# libraries, under their sonames (check.sh adds the unversioned link names)
copy() { # copy SRC SONAME
  cp -L "$1" "$C/sys/lib/$2"
}
copy $A/openblas-pthread/libopenblas.so.0 libopenblas.so.0
copy $A/openblas-pthread/libblas.so.3 libblas.so.3
copy $A/openblas-pthread/liblapack.so.3 liblapack.so.3
copy $A/liblapacke.so.3 liblapacke.so.3
[ -e $A/libtmglib.so.3 ] && copy $A/libtmglib.so.3 libtmglib.so.3
copy $A/libgfortran.so.5 libgfortran.so.5
copy $A/libquadmath.so.0 libquadmath.so.0
copy $A/libcjson.so.1 libcjson.so.1
copy $A/libpng16.so.16 libpng16.so.16
copy $A/libjpeg.so.62 libjpeg.so.62
copy $A/libwebp.so.7 libwebp.so.7
[ -e $A/libsharpyuv.so.0 ] && copy $A/libsharpyuv.so.0 libsharpyuv.so.0
copy $A/libz.so.1 libz.so.1
tar -C "$C" -cJf "$C/sys.tar.xz" sys
rm -rf "$C/sys"

# the golden subset
if [ -d "$GOLDEN/tiny-sd1" ]; then
  tar -C "$GOLDEN" -cJf "$C/golden.tar.xz" README.md tiny-sd1 tiny-sd2 golden_tiny-sd1.safetensors golden_tiny-sd2.safetensors
else
  echo "prepare: no golden folder at $GOLDEN: the golden tests will skip on the GPU" >&2
fi
du -sh "$C"/*
echo "total to carry: $(du -sh "$C" | cut -f1) (+ the repository, $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1))"
