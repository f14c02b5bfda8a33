#!/bin/sh
# The main job on a fresh machine: install, build, then teach the model a new
# concept with Custom Diffusion and sample it.
# Until cdiff ships its own small model, the demo uses the tiny SD 1.x model of
# the golden reference data (../shared/golden/tiny-sd1, or $CDIFF_MODEL); with a
# random-weight tiny model the pictures are noise, but every step is the real one.
set -e
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
make -j"$(nproc)" build/cdiff >/dev/null
MODEL="${CDIFF_MODEL:-../shared/golden/tiny-sd1}"
RES="${RES:-64}"
if [ ! -e "$MODEL" ]; then
  echo "demo: no model at $MODEL: set CDIFF_MODEL to a diffusers folder or .safetensors/.ckpt checkpoint" >&2
  exit 1
fi
D=out/demo
rm -rf "$D" && mkdir -p "$D/photos"
./build/cdiff info "$MODEL"
if [ -z "${CDIFF_MODEL:-}" ]; then
  echo "demo: NOTE: the default model ($MODEL) has random weights, so every picture below is noise;"
  echo "demo:       the steps are the real ones. Set CDIFF_MODEL to an SD 1.x/2.x checkpoint (and RES=512) for real pictures."
fi
# 1. four "photos" of the concept (stand-ins made by the model itself)
for i in 1 2 3 4; do
  CDIFF_QUIET=1 ./build/cdiff sample --model "$MODEL" --prompt "a red wooden toy, photo $i" --steps 10 \
    --width "$RES" --height "$RES" --seed "$i" --out "$D/photos/$i.png"
done
# 2. Custom Diffusion: K/V of the cross-attention layers + the <new1> token, with prior preservation
./build/cdiff train --model "$MODEL" --images "$D/photos" --prompt "photo of a <new1> toy" --class-prompt toy \
  --num-class-images 8 --class-steps 10 --resolution "$RES" --steps 40 --checkpoint-every 20 --out "$D/delta"
# 3. sample with the learned concept
./build/cdiff sample --model "$MODEL" --delta "$D/delta" --prompt "photo of a <new1> toy on a beach" \
  --sampler dpmpp_2m --steps 20 --cfg 6 --width "$RES" --height "$RES" --seed 7 --out "$D/new1_toy.png"
echo "demo: delta in $D/delta (cdiff and diffusers layouts), image $D/new1_toy.png"
[ -z "${CDIFF_MODEL:-}" ] && echo "demo: (noise: the default model is random; see the note above)"
exit 0
