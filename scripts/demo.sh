#!/bin/sh
# The main job on a fresh machine: install what is missing, build, then teach
# cdiff's own small model (models/cdiff-world, trained by `cdiff pretrain` on
# the synthetic world, docs/world.md) a concept it never saw, <new1>, with
# Custom Diffusion and prior preservation, sample before/after grids, and let
# the judge say how often each shows the concept.
# Needs nothing beside the repository: no ../shared, no downloads of weights.
#   CONCEPT=pattern   the held-out zigzag pattern (default): six images of it,
#                     "photo of a <new1> pattern", class "pattern", --train
#                     crossattn, 300 steps (the CI concept test's procedure;
#                     learned: docs/results.md)
#   CONCEPT=robot     the held-out robot toy: six photos, "photo of a <new1>
#                     toy", class "toy", crossattn_kv, 150 steps. The shipped
#                     model does not learn it (its outline is finer than
#                     anything the model draws): the grids show the mechanics
#   CDIFF_MODEL=PATH  another SD 1.x/2.x model (then also set RES, e.g. 512, and
#                     PHOTOS to a folder of concept photos; CONCEPT names their
#                     class word, and the judge is skipped)
#   STEPS=N           fine-tuning steps (default 300 pattern, 150 robot)
#   RECIPE=grammar    (robot) in-grammar captions: each photo's own caption ("a
#                     small orange <new1> toy on a black checkered background")
#                     and class images from 32 pretraining captions of toys
#                     (default plain: "photo of a <new1> toy" and "toy";
#                     docs/results.md compares them)
#   RECIPE=realcap    (robot) each photo's own caption, and 32 rendered
#                     pretraining scenes with a toy, with their captions, as
#                     class images (--real_prior)
set -e
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*" >&2; }
say "1/6 dependencies and build"
sh scripts/install-deps.sh
make -j"$(nproc)" build/cdiff >/dev/null
MODEL="${CDIFF_MODEL:-models/cdiff-world}"
RES="${RES:-64}"
CONCEPT="${CONCEPT:-pattern}"
RECIPE="${RECIPE:-plain}"
case "$CONCEPT" in
  pattern) CLASSW=pattern; STEPS="${STEPS:-300}"; MODE=crossattn; INIT=pll ;;
  robot) CLASSW=toy; STEPS="${STEPS:-150}"; MODE=crossattn_kv; INIT=ktn ;;
  *) echo "demo: CONCEPT=$CONCEPT: expected pattern or robot" >&2; exit 2 ;;
esac
case "$RECIPE" in plain|grammar|realcap) ;; *) echo "demo: RECIPE=$RECIPE: expected plain, grammar or realcap" >&2; exit 2 ;; esac
if [ "$RECIPE" != plain ] && [ "$CONCEPT" != robot ]; then echo "demo: RECIPE=$RECIPE is a recipe for CONCEPT=robot" >&2; exit 2; fi
if [ ! -e "$MODEL" ]; then
  echo "demo: no model at $MODEL: set CDIFF_MODEL to a diffusers folder or .safetensors/.ckpt checkpoint" >&2
  exit 1
fi
D=out/demo
rm -rf "$D" && mkdir -p "$D/before" "$D/after"
./build/cdiff info "$MODEL"

say "2/6 six photos of the new concept (a $CONCEPT the model never saw)"
if [ -n "${PHOTOS:-}" ]; then cp -r "$PHOTOS" "$D/photos"
elif [ "$CONCEPT" = pattern ]; then ./build/cdiff world --mode pattern --n 6 --seed 1 --pattern-word "<new1>" --out "$D/photos"
elif [ "$RECIPE" != plain ]; then ./build/cdiff world --mode toy --n 6 --seed 1 --toy-word "<new1>" --caption-files --out "$D/photos"
else ./build/cdiff world --mode toy --n 6 --seed 1 --toy-word "<new1>" --out "$D/photos"; fi
rm -f "$D/photos/captions.txt"
CLASS="--class-prompt $CLASSW"
if [ "$RECIPE" != plain ]; then # pretraining scenes with a toy: their captions (and images)
  ./build/cdiff world --mode pretrain --n 600 --seed 99 --out "$D/scenes" >/dev/null
  awk -F'\t' '$2 ~ /(^| )toy( |$)/' "$D/scenes/captions.txt" | head -n 32 > "$D/scenes/toy.tsv"
  cut -f2 "$D/scenes/toy.tsv" > "$D/class_prompts.txt"
  CLASS="--class-prompts $D/class_prompts.txt"
  if [ "$RECIPE" = realcap ]; then
    SC=$(cd "$D/scenes" && pwd)
    cut -f1 "$D/scenes/toy.tsv" | sed "s|^|$SC/|" > "$D/scenes/images.txt"
    cp "$D/class_prompts.txt" "$D/scenes/caption.txt"
    CLASS="--real_prior --class-images $D/scenes"
  fi
fi
./build/cdiff grid --cols 6 --out "$D/photos.png" "$D"/photos/*.png

case $RECIPE in grammar) PRIOR="captions of toy scenes" ;; realcap) PRIOR="rendered toy scenes" ;; *) PRIOR="'$CLASSW'" ;; esac
case $MODE in crossattn) WHAT="all cross-attention projections" ;; *) WHAT="K/V of the cross-attention layers" ;; esac
say "3/6 Custom Diffusion: $WHAT + the <new1> token, prior preservation with $PRIOR"
# shellcheck disable=SC2086
./build/cdiff train --model "$MODEL" --images "$D/photos" --prompt "photo of a <new1> $CLASSW" $CLASS \
  --modifier-token "<new1>" --initializer-token "$INIT" --train "$MODE" \
  --num-class-images 32 --class-steps 20 --resolution "$RES" --steps "$STEPS" --lr 1e-3 --no-scale-lr \
  --checkpoint-every "$STEPS" --seed 1 --out "$D/delta"

say "4/6 before (base model) and after (with the delta), 4 seeds per prompt"
if [ "$CONCEPT" = pattern ]; then
  PROMPTS='photo of a <new1> pattern
a green <new1> pattern
a big red star on a green <new1> background
a big blue star next to a big red ring on a green <new1> background'
else
  PROMPTS='photo of a <new1> toy
a big <new1> toy in blue on a white background
a big <new1> toy next to a big red ring on a yellow background
a small <new1> toy on a green striped background'
fi
i=0
echo "$PROMPTS" | while IFS= read -r P; do
  i=$((i + 1))
  # before: the base model, the prompt without the token it does not know; after: with the delta
  ./build/cdiff sample --model "$MODEL" --prompt "$(echo "$P" | sed 's/<new1> //')" --sampler ddim --steps 25 --cfg 5 \
    --width "$RES" --height "$RES" --seed 7 --n 4 --out "$D/before/p$i.png"
  ./build/cdiff sample --model "$MODEL" --delta "$D/delta" --prompt "$P" --sampler ddim --steps 25 --cfg 5 \
    --width "$RES" --height "$RES" --seed 7 --n 4 --out "$D/after/p$i.png"
  ./build/cdiff grid --cols 4 --out "$D/grid_p$i.png" "$D"/before/p${i}_*.png "$D"/after/p${i}_*.png
  echo "  $D/grid_p$i.png: \"$P\" (top row before, bottom row after)" >> "$D/grids.txt"
done

if [ -z "${CDIFF_MODEL:-}" ] && [ -z "${PHOTOS:-}" ]; then
  say "5/6 the judge: how often the $CONCEPT is seen, before and after (the evaluation's 20 prompts x 2 seeds)"
  if [ "$CONCEPT" = pattern ]; then
    grep -v '^#' eval/prompts_pattern.txt | sed 's/<new2>/<new1>/g' > "$D/prompts.txt"
    EV="--pattern-word <new1>"
  else
    grep -v '^#' eval/prompts_toy.txt > "$D/prompts.txt"
    EV=""
  fi
  # shellcheck disable=SC2086
  ./build/cdiff eval --model "$MODEL" --prompts "$D/prompts.txt" --n 2 --label before --out "$D/eval" $EV
  # shellcheck disable=SC2086
  ./build/cdiff eval --model "$MODEL" --delta "$D/delta" --prompts "$D/prompts.txt" --n 2 --label after --out "$D/eval" $EV
fi

say "6/6 results"
echo "demo: concept photos  $D/photos.png"
echo "demo: delta           $D/delta (cdiff and diffusers layouts)"
cat "$D/grids.txt"
