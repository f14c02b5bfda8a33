#!/bin/sh
# Does a learned pattern change colour on request? (docs/results.md, "A
# pattern in three colours".) The held-out zigzag <new2> is learned from 6
# pattern scenes (cdiff world --mode pattern-scenes --caption-files: the
# pattern behind pretraining objects, each image with its caption) either
#   green   in its own green only (as scripts/compose.sh and eval.sh)
#   three   the same scenes in green, blue and red (--pattern-colours), two each
# with compose.sh's slow recipe (crossattn_kv, lr 3e-4, 3000 steps, prior
# preservation with 32 generated "pattern" images), and each delta is scored
# by cdiff eval on
#   pattern          eval/prompts_pattern.txt (green, as the instance images)
#   recolour_seen    eval/prompts_pattern_recolour_seen.txt (blue / red)
#   recolour_unseen  eval/prompts_pattern_recolour_unseen.txt (yellow / purple:
#                    in no instance image)
# The table's "in colour" column reads OUT/LABEL.tsv (the judge's verdict per
# image): the zigzag drawn in the colour the prompt asks for, among the images
# of prompts that name one.
#
#   sh scripts/recolour.sh
#   MODEL=DIR JUDGE=FILE   model (models/cdiff-world) and judge (models/world-judge.safetensors)
#   N=4                    images per prompt
#   SEEDS="1 2 3"          training seeds
#   OUT=out/recolour       output folder: results.md (the table), results.tsv, grids
# About 6 minutes a seed on 2 cores.
set -e
cd "$(dirname "$0")/.."
NAME=recolour.sh
. scripts/common.sh
no_args "$@"
N="${N:-4}"
SEEDS="${SEEDS:-1 2 3}"
E="${OUT:-out/recolour}"
setup

# the flags both renders share, split on purpose ($P unquoted)
P="--mode pattern-scenes --n 6 --seed 1 --pattern-word <new2> --caption-files"
# shellcheck disable=SC2086
run $C world $P --out "$E/green" >/dev/null
# shellcheck disable=SC2086
run $C world $P --pattern-colours green,blue,red --out "$E/three" >/dev/null
rm -f "$E/green/captions.txt" "$E/three/captions.txt"
for s in $SEEDS; do
  for d in green three; do
    train "$d-s$s" "$d" "photo of a <new2> pattern" pattern "<new2>" pll 3000 "$s" 3e-4
    for p in pattern pattern_recolour_seen pattern_recolour_unseen; do
      run $C eval --model "$M" --judge "$J" --n "$N" --prompts "eval/prompts_$p.txt" --delta "$E/$d-s$s" \
        --label "$d-${p#pattern_}-s$s" --out "$E" >/dev/null
    done
  done
done

# the table: per row (training images, prompts, seed) the zigzag seen, the zigzag in the
# colour asked (from the per-image verdicts), text-alignment
{
  echo "| row | zigzag | zigzag in the colour asked | text-alignment |"
  echo "| --- | --- | --- | --- |"
  for f in "$E"/*-s*.tsv; do
    r=$(basename "$f" .tsv)
    awk -F'\t' -v r="$r" -v tsv="$E/results.tsv" '
      { n++; split($5, v, "\\| background "); split(v[2], b, " ")
        z += b[2] == "zigzag"
        w = $4; sub(/ <new2>.*/, "", w); sub(/.* /, "", w)
        if (w ~ /^(red|orange|yellow|green|blue|purple|white|black)$/) { nc++; c += b[2] == "zigzag" && b[1] == w } }
      END { while ((getline l < tsv) > 0) { split(l, t, "\t"); if (t[1] == r) ta = t[3] }
            printf "| %s | %.1f%% | %.1f%% | %.1f%% |\n", r, 100 * z / n, 100 * c / nc, 100 * ta }' "$f"
  done
} > "$E/results.md"
cat "$E/results.md"
echo "recolour.sh: table in $E/results.md; grids in $E/<row>.png" >&2
