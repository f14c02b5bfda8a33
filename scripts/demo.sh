#!/bin/sh
# The main job on a fresh machine: install, build, and generate an image.
# Until cdiff ships its own small model, the demo uses the tiny SD 1.x model of
# the golden reference data (../shared/golden/tiny-sd1, or $CDIFF_MODEL).
set -e
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
make -j"$(nproc)" build/cdiff >/dev/null
MODEL="${CDIFF_MODEL:-../shared/golden/tiny-sd1}"
if [ ! -e "$MODEL" ]; then
  echo "demo: no model at $MODEL: set CDIFF_MODEL to a diffusers folder or .safetensors/.ckpt checkpoint" >&2
  exit 1
fi
mkdir -p out
./build/cdiff info "$MODEL"
./build/cdiff sample --model "$MODEL" --prompt "photo of a cat" --sampler dpmpp_2m --steps 20 --cfg 6 \
  --width "${WIDTH:-64}" --height "${HEIGHT:-64}" --seed 7 --out out/demo.png
echo "demo: wrote out/demo.png"
