#!/bin/sh
# Compositions on the world model (docs/results.md, "Compositions"): can two
# learned concepts be drawn together, and which one goes missing? Concepts:
#   <new1>  the orange bear of scripts/control.sh (6 pretraining renders of a
#           kind the base model draws; the held-out robot is not learned, so a
#           composition with it would measure nothing)
#   <new2>  the held-out zigzag pattern, from 6 images either
#             bare    cdiff world --mode pattern: the pattern filling the frame,
#                     instance prompt "photo of a <new2> pattern"
#             scenes  cdiff world --mode pattern-scenes --caption-files: the
#                     pattern behind pretraining objects, each image with its
#                     caption ("a small red star on a green <new2> background"),
#                     as the composition prompts ask for it
# Every row is scored by cdiff eval on eval/prompts_both.txt (20 prompts x N,
# --toy-kind bear); its "toy" and "pattern" columns are each concept's rate
# apart (results.tsv columns 8-11). Rows:
#   ceiling-striped, ceiling-dotted  the base model on the same prompts with
#                  known words ("bear toy", "striped"): what it composes of what
#                  it already knows
#   ceiling-orange-striped, ceiling-orange-dotted  the same with the bear's
#                  colour named where the prompt names none ("a big orange bear
#                  toy"), as the learned <new1> implies it
#   bear-dotted    the learned bear (bear_icap) with the known word "dotted" for
#                  <new2>: one learned concept in the composition prompts
#   merged-bare    cdiff merge: the bear (2000 steps, bare prompt) with the bare
#                  pattern (300 steps; control.sh's rows)
#   merged-scenes  cdiff merge: the bear (2000 steps, per-image captions) with the
#                  pattern scenes (1000 steps), the pattern's category "pattern"
#   merged-scenes-bg  the same deltas merged with the category "green background"
#                  (the words the composition prompts put around <new2>)
#   merged-scenes-pad  the same deltas merged with --pad-rows 4: the first 4
#                  padding rows after the end token constrained too (docs/merge.md)
#   pattern-merged-scenes, pattern-merged-scenes-pad  those two merged models on
#                  the pattern's own prompts (eval/prompts_pattern.txt): how much
#                  of the pattern each merge keeps
#   joint-bare     joint training of the bear and the bare pattern (4000 steps)
#   joint-scenes   joint training of the bear and the pattern scenes (4000 steps)
#   joint-scenes-b2  the same with --batch 2 (each step both concepts)
#   merged-slow-pad, joint-slow  the slow recipe: lr 3e-4 instead of 1e-3, the
#                  bear (with its captions) 9000 steps, the pattern scenes 3000;
#                  merged with --pad-rows 4, or jointly trained 18000 steps
#   joint-slow-proj  the joint-slow delta merged alone with a category per
#                  token (toy,pattern) and --pad-rows 4: the merge's closed-form
#                  projection applied to a jointly trained delta
#   bear-slow-dotted  the slow bear with the known word "dotted"
# and, for the first seed, each pattern alone on eval/prompts_pattern.txt.
# All crossattn_kv, lr 1e-3, 32 class images, one row per training seed.
#
#   sh scripts/compose.sh
#   MODEL=DIR JUDGE=FILE   model (models/cdiff-world) and judge (models/world-judge.safetensors)
#   N=4                    images per prompt
#   SEEDS="1 2 3"          training seeds
#   OUT=out/compose        output folder: results.md (the table), results.tsv, grids
# About 30 minutes a seed on 2 cores.
set -e
cd "$(dirname "$0")/.."
NAME=compose.sh
. scripts/common.sh
no_args "$@"
N="${N:-4}"
SEEDS="${SEEDS:-1 2 3}"
E="${OUT:-out/compose}"
setup

# data: the bear with its captions beside (bear_icap) and without (bear); the
# pattern bare and in scenes; 200 pretraining captions for the merge
bear_images "$E/bear_icap"
mkdir -p "$E/bear" && cp "$E"/bear_icap/*.png "$E/bear/"
run $C world --mode pattern --n 6 --seed 1 --out "$E/pattern" >/dev/null
run $C world --mode pattern-scenes --n 6 --seed 1 --pattern-word "<new2>" --caption-files --out "$E/pscene" >/dev/null
rm -f "$E/pattern/captions.txt" "$E/pscene/captions.txt"
run $C world --mode pretrain --n 200 --seed 99 --out "$E/reg" >/dev/null
cut -f2 "$E/reg/captions.txt" > "$E/reg_captions.txt"
rm -rf "$E/reg"
grep -v '^#' eval/prompts_both.txt > "$E/prompts_both.txt"
grep -v '^#' eval/prompts_pattern.txt > "$E/prompts_pattern.txt"
EV="$C eval --model $M --judge $J --n $N --out $E --toy-kind bear"

# the ceiling: known words in the composition prompts, on the base model; plain
# "bear toy", and "orange bear toy" where the prompt names no colour (the
# learned <new1> is orange: without a colour the model draws no bear)
for p in striped dotted; do
  sed "s/<new1> toy/bear toy/; s/<new2>/$p/" "$E/prompts_both.txt" > "$E/prompts_ceiling_$p.txt"
  sed "s/ <new1> toy in \([a-z]*\)/ bear toy in \1/; s/ <new1> toy/ orange bear toy/; s/<new2>/$p/" "$E/prompts_both.txt" \
    > "$E/prompts_ceiling_orange-$p.txt"
  for q in "" orange-; do
    run $EV --prompts "$E/prompts_ceiling_$q$p.txt" --toy-word bear --pattern-word $p --pattern-kind $p --label "ceiling-$q$p" >/dev/null
  done
done
sed "s/<new2>/dotted/" "$E/prompts_both.txt" > "$E/prompts_known_dotted.txt"
run $EV --prompts "$E/prompts_both.txt" --label base >/dev/null

# the concept lists of joint training: the bear with each pattern image set
# (icap: the bear with its per-image captions and the pattern scenes)
for img in pattern pscene icap; do
  bear=bear; pat=$img
  [ "$img" = icap ] && { bear=bear_icap; pat=pscene; }
  cat > "$E/concepts-$img.json" <<EOF
[{"instance_prompt": "photo of a <new1> toy", "class_prompt": "toy", "instance_data_dir": "$E/$bear", "class_data_dir": "$E/class_toy"},
 {"instance_prompt": "photo of a <new2> pattern", "class_prompt": "pattern", "instance_data_dir": "$E/$pat", "class_data_dir": "$E/class_pattern"}]
EOF
done

merge() { # row toy pattern category [flags]: seed s's toy and pattern deltas merged into row-s
  o=$1; t=$2; p=$3; cat=$4; shift 4
  run $C merge --model "$M" --delta "$E/$t-s$s:toy" --delta "$E/$p-s$s:$cat" --reg-prompts "$E/reg_captions.txt" \
    --out "$E/$o-s$s" "$@" >/dev/null
}
for s in $SEEDS; do
  train "bear-s$s" bear "photo of a <new1> toy" toy "<new1>" ktn 2000 "$s"
  train "bear_icap-s$s" bear_icap "photo of a <new1> toy" toy "<new1>" ktn 2000 "$s"
  train "pattern-s$s" pattern "photo of a <new2> pattern" pattern "<new2>" pll 300 "$s"
  train "pscene-s$s" pscene "photo of a <new2> pattern" pattern "<new2>" pll 1000 "$s"
  # the slow recipe: lr 3e-4 and three times the steps (9000 the bear, 3000 the pattern)
  train "bear_slow-s$s" bear_icap "photo of a <new1> toy" toy "<new1>" ktn 9000 "$s" 3e-4
  train "pscene_slow-s$s" pscene "photo of a <new2> pattern" pattern "<new2>" pll 3000 "$s" 3e-4
  if [ "$s" = "$(echo $SEEDS | cut -d' ' -f1)" ]; then
    for p in pattern pscene; do
      run $EV --prompts "$E/prompts_pattern.txt" --delta "$E/$p-s$s" --label "alone-$p-s$s" >/dev/null
    done
  fi
  merge merged-bare bear pattern pattern
  merge merged-scenes bear_icap pscene pattern
  merge merged-scenes-bg bear_icap pscene "green background"
  merge merged-scenes-pad bear_icap pscene pattern --pad-rows 4
  merge merged-slow-pad bear_slow pscene_slow pattern --pad-rows 4
  # joint: images:row:batch:steps:lr (slow: the bear's 9000 and the pattern's 3000 steps of
  # lr 3e-4 become 9000 turns each, as the turns alternate)
  for p in pattern:bare:1:4000:1e-3 pscene:scenes:1:4000:1e-3 pscene:scenes-b2:2:4000:1e-3 icap:slow:1:18000:3e-4; do
    # shellcheck disable=SC2046
    set -- $(echo "$p" | tr : ' ')
    d="joint-$2-s$s"
    train_joint "$d" "concepts-$1.json" "$4" "$s" "$5" --batch "$3"
  done
  run $C merge --model "$M" --delta "$E/joint-slow-s$s:toy,pattern" --reg-prompts "$E/reg_captions.txt" --pad-rows 4 \
    --out "$E/joint-slow-proj-s$s" >/dev/null
  for r in merged-bare merged-scenes merged-scenes-bg merged-scenes-pad merged-slow-pad joint-bare joint-scenes joint-scenes-b2 joint-slow \
    joint-slow-proj; do
    run $EV --prompts "$E/prompts_both.txt" --delta "$E/$r-s$s" --label "$r-s$s" >/dev/null
  done
  for r in merged-scenes merged-scenes-pad; do
    run $EV --prompts "$E/prompts_pattern.txt" --delta "$E/$r-s$s" --label "pattern-$r-s$s" >/dev/null
  done
  # the learned bear with a pattern the model knows: the ceiling of a composition with one learned concept
  for b in bear_icap:bear-dotted bear_slow:bear-slow-dotted; do
    run $EV --prompts "$E/prompts_known_dotted.txt" --delta "$E/${b%%:*}-s$s" --pattern-word dotted --pattern-kind dotted \
      --label "${b#*:}-s$s" >/dev/null
  done
done

# the table: both concepts, each apart, text-alignment; rows of the same setting
# over seeds, then their mean
seed_table "both concepts" "the toy" "^alone" > "$E/results.md"
cat "$E/results.md"
echo "compose.sh: table in $E/results.md; grids in $E/<row>.png" >&2
