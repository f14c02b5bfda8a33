#!/bin/sh
# Three learned concepts in one prompt (docs/results.md, "Three learned
# concepts"): how far composition degrades from two concepts to three, and
# what lifts it. Concepts, each learned with compose.sh's slow recipe
# (crossattn_kv, lr 3e-4, prior preservation with 32 generated class images):
#   <new1>  the orange bear of compose.sh (6 renders with their captions), 9000 steps
#   <new2>  the held-out zigzag as the background of pretraining objects
#           (cdiff world --mode pattern-scenes --caption-files), 3000 steps
#   <new3>  a red car toy (6 renders with their captions, 3 big and 3 small; a
#           kind the base model draws, as the bear), 9000 steps
# Every row is scored by cdiff eval on eval/prompts_three.txt (20 prompts x N:
# "a small <new1> toy next to a big <new3> toy on a green <new2> background";
# --toy-kind bear --toy2-kind car). Rows:
#   ceiling-striped, ceiling-dotted  the base model with known words ("orange
#                  bear toy", "red car toy", "striped"): what it composes of
#                  what it already knows
#   car-own        the car's delta on its own prompts (eval/prompts_duck.txt),
#                  first seed only: the third concept is learned
#   merged-pad     cdiff merge of the three deltas, --pad-rows 4 (as compose.sh)
#   merged-pad-ridge  the same with --ridge 0.01
#   merged, merged-ridge  the paper's merge (no padding rows), exact and ridge
#   joint          joint training of the three concepts, 27000 steps (9000
#                  turns each, as compose.sh's joint-slow gives two)
#   joint-proj     that delta merged alone, a category per token
#                  (toy,pattern,toy), --pad-rows 4: the merge's projection
#   joint-two, joint-two-proj  the same with the toys' prior preservation on
#                  two toys side by side: 32 class images generated from
#                  pretraining captions such as "a big green car toy next to a
#                  small green bear toy on a red checkered background" (the
#                  paper's class images show one object, and so do the toys')
#
#   sh scripts/three.sh
#   MODEL=DIR JUDGE=FILE   model (models/cdiff-world) and judge (models/world-judge.safetensors)
#   N=4                    images per prompt
#   SEEDS="1 2 3"          training seeds
#   OUT=out/three          output folder: results.md (the table), results.tsv, grids
# About an hour a seed on one core (the two joint runs are two thirds of it).
set -e
cd "$(dirname "$0")/.."
NAME=three.sh
. scripts/common.sh
no_args "$@"
N="${N:-4}"
SEEDS="${SEEDS:-1 2 3}"
E="${OUT:-out/three}"
setup

bear_images "$E/bear_icap"
car_images "$E/car_icap"
run $C world --mode pattern-scenes --n 6 --seed 1 --pattern-word "<new2>" --caption-files --out "$E/pscene" >/dev/null
rm -f "$E/pscene/captions.txt"
run $C world --mode pretrain --n 200 --seed 99 --out "$E/reg" >/dev/null
cut -f2 "$E/reg/captions.txt" > "$E/reg_captions.txt"
rm -rf "$E/reg"
grep -v '^#' eval/prompts_three.txt > "$E/prompts_three.txt"
run $C world --mode pretrain --n 4000 --seed 99 --out "$E/scenes" >/dev/null
cut -f2 "$E/scenes/captions.txt" | grep -E "toy next to .* toy( in [a-z]+)? on" | head -n 32 > "$E/two_toys.txt"
rm -rf "$E/scenes"
EV="$C eval --model $M --judge $J --n $N --out $E --toy-kind bear --toy2-kind car"

# the ceiling: the prompts with known words, the toys in their learned colours where
# the prompt names none (the world model draws no object whose colour is not named)
for p in striped dotted; do
  sed "s/ <new1> toy in \([a-z]*\)/ bear toy in \1/; s/ <new1> toy/ orange bear toy/;
       s/ <new3> toy in \([a-z]*\)/ car toy in \1/; s/ <new3> toy/ red car toy/; s/<new2>/$p/" \
    "$E/prompts_three.txt" > "$E/prompts_ceiling_$p.txt"
  run $EV --prompts "$E/prompts_ceiling_$p.txt" --toy-word bear --toy2-word car --pattern-word $p --pattern-kind $p \
    --label "ceiling-$p" >/dev/null
done

for c in toy two; do
  cat > "$E/concepts-$c.json" <<EOF
[{"instance_prompt": "photo of a <new1> toy", "class_prompt": "toy", "instance_data_dir": "$E/bear_icap", "class_data_dir": "$E/class_$c"},
 {"instance_prompt": "photo of a <new2> pattern", "class_prompt": "pattern", "instance_data_dir": "$E/pscene", "class_data_dir": "$E/class_pattern"},
 {"instance_prompt": "photo of a <new3> toy", "class_prompt": "toy", "instance_data_dir": "$E/car_icap", "class_data_dir": "$E/class_$c"}]
EOF
done
# the two-toy class images, with their captions beside them: a one-step run only generates them
train_run class_two.run --images "$E/bear_icap" --prompt "photo of a <new1> toy" --class-prompts "$E/two_toys.txt" \
  --class-images "$E/class_two" --modifier-token "<new1>" --initializer-token ktn --steps 1 --seed 1

merge3() { # row [flags]: seed s's three deltas merged into row-s
  o=$1; shift
  run $C merge --model "$M" --delta "$E/bear-s$s:toy" --delta "$E/pattern-s$s:pattern" --delta "$E/car-s$s:toy" \
    --reg-prompts "$E/reg_captions.txt" --out "$E/$o-s$s" "$@" >/dev/null 2>"$E/$o-s$s.log" || { cat "$E/$o-s$s.log" >&2; exit 1; }
}
for s in $SEEDS; do
  train "bear-s$s" bear_icap "photo of a <new1> toy" toy "<new1>" ktn 9000 "$s" 3e-4
  train "pattern-s$s" pscene "photo of a <new2> pattern" pattern "<new2>" pll 3000 "$s" 3e-4
  train "car-s$s" car_icap "photo of a <new3> toy" toy "<new3>" ktn 9000 "$s" 3e-4
  if [ "$s" = "$(echo "$SEEDS" | awk '{ print $1 }')" ]; then
    run $EV --prompts eval/prompts_duck.txt --delta "$E/car-s$s" --label "car-own-s$s" >/dev/null
  fi
  merge3 merged-pad --pad-rows 4
  merge3 merged-pad-ridge --pad-rows 4 --ridge 0.01
  merge3 merged
  merge3 merged-ridge --ridge 0.01
  for c in toy:joint two:joint-two; do
    j="${c#*:}-s$s"
    train_joint "$j" "concepts-${c%%:*}.json" 27000 "$s" 3e-4
    run $C merge --model "$M" --delta "$E/$j:toy,pattern,toy" --reg-prompts "$E/reg_captions.txt" --pad-rows 4 \
      --out "$E/${c#*:}-proj-s$s" >/dev/null 2>"$E/$j.merge.log" || { cat "$E/$j.merge.log" >&2; exit 1; }
  done
  for r in merged-pad merged-pad-ridge merged merged-ridge joint joint-proj joint-two joint-two-proj; do
    run $EV --prompts "$E/prompts_three.txt" --delta "$E/$r-s$s" --label "$r-s$s" >/dev/null
  done
done

# the table: all three concepts, the toys (both slots) and the pattern apart, text-alignment;
# rows of the same setting over seeds, then their mean
seed_table "all three" "the toys" "^car-own" > "$E/results.md"
# from the per-image verdicts (OUT/LABEL.tsv): how often two objects are drawn at all, and how
# often they are the bear and the car
{
  echo
  echo "| row | two objects | the bear and the car |"
  echo "| --- | --- | --- |"
  cut -f1 "$E/results.tsv" | grep -v '^car-own' | while read -r r; do
    awk -F'\t' -v r="$r" '{ k = $5; sub(/ [|].*/, "", k); gsub(/ toy/, "", k)
                             two += split(k, w, " ") == 2; bc += k ~ /bear/ && k ~ /car/ }
         END { printf "| %s | %.1f%% | %.1f%% |\n", r, 100 * two / NR, 100 * bc / NR }' "$E/$r.tsv"
  done
} >> "$E/results.md"
cat "$E/results.md"
echo "three.sh: table in $E/results.md; grids in $E/<row>.png" >&2
