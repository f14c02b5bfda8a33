#!/bin/sh
# Fine-tuning recipes on the world model, compared on the held-out robot toy
# (<new1>) and zigzag pattern (<new2>) (docs/results.md, "Recipes"). Each
# recipe changes what the captions say, nothing else (same 6 images, steps,
# learning rate, seeds):
#   plain     instance prompt "photo of a <newK> toy|pattern" for every image,
#             16 class images generated from "toy" / "pattern" (the demo's recipe)
#   icap      per-image instance captions in the world grammar ("a small orange
#             <new1> toy on a black checkered background": cdiff world
#             --caption-files), class images as plain
#   clist     instance prompt as plain, class images generated from 16 captions
#             of pretraining scenes of the class (cdiff train --class-prompts)
#   grammar   icap + clist
#   real      instance prompt as plain, class images = 16 rendered pretraining
#             scenes of the class with their captions (--real_prior)
#   realcap   icap + real
# Every row is scored by cdiff eval on the concept's 20 prompts
# (eval/prompts_{toy,pattern}.txt, image- and text-alignment) and on 10 class
# prompts without the token (eval/prompts_{toy,pattern}_class.txt: text-
# alignment there is what the fine-tuning kept of the class word's meaning).
#
#   sh scripts/recipes.sh
#   MODEL=DIR JUDGE=FILE   model (models/cdiff-world) and judge (models/world-judge.safetensors)
#   MODE=crossattn         training mode (default crossattn; also crossattn_kv, token, full)
#   STEPS=150 LR=1e-3      fine-tuning steps and learning rate
#   N=4                    images per prompt
#   SEEDS="1"              training seeds (one row per seed)
#   RECIPES="plain icap clist grammar real realcap"   CONCEPTS="toy pattern"
#   OUT=out/recipes        output folder: results.md (the table), results.tsv, grids
# About 40 s of one core per row on a quiet machine (a 64 px model).
set -e
cd "$(dirname "$0")/.."
NAME=recipes.sh
. scripts/common.sh
no_args "$@"
MODE="${MODE:-crossattn}"
STEPS="${STEPS:-150}"
LR="${LR:-1e-3}"
N="${N:-4}"
SEEDS="${SEEDS:-1}"
RECIPES="${RECIPES:-plain icap clist grammar real realcap}"
CONCEPTS="${CONCEPTS:-toy pattern}"
E="${OUT:-out/recipes}"
NCLS=16
setup
ABS=$(cd "$E" && pwd) # images.txt of --real_prior lists absolute paths

# the class's pretraining scenes: 600 renders of the pretraining distribution
run $C world --mode pretrain --n 600 --seed 99 --out "$E/reg" >/dev/null
for c in $CONCEPTS; do
  case $c in
    toy) tok="<new1>"; init=ktn; mode=toy; flag=--toy-word; pick='$2 ~ /(^| )toy( |$)/' ;;
    pattern) tok="<new2>"; init=pll; mode=pattern; flag=--pattern-word; pick='$2 ~ / pattern$/' ;;
    *) echo "recipes.sh: unknown concept $c (toy, pattern)" >&2; exit 2 ;;
  esac
  # instance images, with and without per-image captions beside them
  run $C world --mode $mode --n 6 --seed 1 $flag "$tok" --caption-files --out "$E/$c/icap" >/dev/null
  mkdir -p "$E/$c/plain" && cp "$E/$c"/icap/*.png "$E/$c/plain/"
  # class captions: the first 16 pretraining scenes of the class, as prompts and as real class images
  awk -F'\t' "$pick" "$E/reg/captions.txt" | head -n $NCLS > "$E/$c/sel.tsv"
  cut -f2 "$E/$c/sel.tsv" > "$E/$c/class_prompts.txt"
  mkdir -p "$E/$c/real"
  cut -f1 "$E/$c/sel.tsv" | sed "s|^|$ABS/reg/|" > "$E/$c/real/images.txt"
  cut -f2 "$E/$c/sel.tsv" > "$E/$c/real/caption.txt"
  grep -v '^#' "eval/prompts_$c.txt" > "$E/$c/prompts.txt"
  EV="$C eval --model $M --judge $J --n $N --out $E/$c"
  run $EV --prompts "$E/$c/prompts.txt" --label base >/dev/null
  run $EV --prompts "eval/prompts_${c}_class.txt" --label base_class >/dev/null
  for s in $SEEDS; do
    for r in $RECIPES; do
      img="$E/$c/plain"; cls="--class-prompt $c --class-images $E/$c/cls_plain_$s"
      case $r in
        plain) ;;
        icap) img="$E/$c/icap" ;;
        clist) cls="--class-prompts $E/$c/class_prompts.txt --class-images $E/$c/cls_list_$s" ;;
        grammar) img="$E/$c/icap"; cls="--class-prompts $E/$c/class_prompts.txt --class-images $E/$c/cls_list_$s" ;;
        real) cls="--real_prior --class-images $E/$c/real" ;;
        realcap) img="$E/$c/icap"; cls="--real_prior --class-images $E/$c/real" ;;
        *) echo "recipes.sh: unknown recipe $r" >&2; exit 2 ;;
      esac
      d="$E/$c/${r}_s$s"
      # shellcheck disable=SC2086
      run $C train --model "$M" --images "$img" --prompt "photo of a $tok $c" $cls --num-class-images $NCLS --class-steps 10 \
        --modifier-token "$tok" --initializer-token $init --resolution 64 --steps "$STEPS" --lr "$LR" --no-scale-lr \
        --checkpoint-every 0 --seed "$s" --train "$MODE" --out "$d" 2>"$d.log" || { cat "$d.log" >&2; exit 1; }
      run $EV --prompts "$E/$c/prompts.txt" --delta "$d" --label "${r}_s$s" >/dev/null
      run $EV --prompts "eval/prompts_${c}_class.txt" --delta "$d" --label "${r}_s${s}_class" >/dev/null
    done
  done
done

# the table: one row per concept and recipe (and seed)
{
  echo "| concept | recipe | seed | image-alignment | text-alignment | class prompts' text-alignment |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for c in $CONCEPTS; do
    awk -F'\t' -v c="$c" '
      { v[$1] = $2; t[$1] = $3; order[n++] = $1 }
      END { for (i = 0; i < n; i++) { k = order[i]; if (k ~ /_class$/) continue
              r = k; s = "-"; if (k != "base") { s = k; sub(/.*_s/, "", s); sub(/_s[0-9]+$/, "", r) }
              printf "| %s | %s | %s | %.1f%% | %.1f%% | %.1f%% |\n", c, r, s, 100 * v[k], 100 * t[k], 100 * t[k "_class"] } }' "$E/$c/results.tsv"
  done
} > "$E/results.md"
for c in $CONCEPTS; do sed "s/^/$c\t/" "$E/$c/results.tsv"; done > "$E/results.tsv"
cat "$E/results.md"
echo "recipes.sh: table in $E/results.md; grids in $E/<concept>/<row>.png" >&2
