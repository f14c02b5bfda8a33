#!/bin/sh
# The control for the toys (docs/results.md, "The control"): can fine-tuning
# teach a new token a shape at all? The same token <new1>, the same recipe
# (prompt "photo of a <new1> toy", prior preservation with 32 class images of
# "toy", 6 instance images), two concepts:
#   bear    6 pretraining renders of a single orange bear toy: a kind the base
#           model draws on request, so the token only has to be bound to it
#   robot   the held-out robot toy (cdiff world --mode toy): a shape the base
#           model never drew
# Every row is scored by cdiff eval on eval/prompts_toy.txt (20 prompts x N),
# image-alignment being how often the judge sees the bear (--toy-kind bear)
# or the robot in "<new1> toy" generations.
#
#   sh scripts/control.sh
#   MODEL=DIR JUDGE=FILE   model (models/cdiff-world) and judge (models/world-judge.safetensors)
#   N=4                    images per prompt
#   CONCEPTS="bear robot"  ROWS="kv150 kv1000 kv2000 kv1000hi ca1000 token1000 full1000"
#   TWO=1                  also the two-concept rows: each toy with the held-out pattern
#                          (<new2>) trained bare or with per-image captions ("a green
#                          <new2> pattern"), joint (crossattn_kv) and merged (the toy's
#                          2000-step delta with each pattern delta), on
#                          eval/prompts_both.txt (both-*); the pattern alone
#                          (pattern_* rows of results.tsv)
#   OUT=out/control        output folder: results.md (the table), results.tsv, grids
# Rows: mode, learning rate, steps
#   kv150      crossattn_kv 1e-3 150 (scripts/eval.sh's setting)
#   kv1000     crossattn_kv 1e-3 1000
#   kv2000     crossattn_kv 1e-3 2000
#   kv1000hi   crossattn_kv 5e-3 1000
#   ca1000     crossattn    1e-3 1000
#   token1000  token        5e-3 1000
#   full1000   full         1e-4 1000
# About an hour on 2 cores (25 minutes with TWO=0).
set -e
cd "$(dirname "$0")/.."
NAME=control.sh
. scripts/common.sh
no_args "$@"
N="${N:-4}"
CONCEPTS="${CONCEPTS:-bear robot}"
ROWS="${ROWS:-kv150 kv1000 kv2000 kv1000hi ca1000 token1000 full1000}"
TWO="${TWO:-1}"
E="${OUT:-out/control}"
setup

# instance images: the robot as scripts/eval.sh renders it; the bear: the first
# 6 single orange bear toys among 4,000 pretraining renders (common.sh), trained
# on the bare instance prompt, so without their per-image captions
run $C world --mode toy --n 6 --seed 1 --out "$E/robot" >/dev/null
bear_images "$E/bear"
rm -f "$E"/bear/*.txt "$E/robot/captions.txt"
grep -v '^#' eval/prompts_toy.txt > "$E/prompts.txt"

for c in $CONCEPTS; do
  case $c in bear|robot) ;; *) echo "control.sh: unknown concept $c (bear, robot)" >&2; exit 2 ;; esac
  EV="$C eval --model $M --judge $J --n $N --out $E --toy-kind $c --prompts $E/prompts.txt"
  run $EV --label "${c}_base" >/dev/null
  for r in $ROWS; do
    case $r in
      kv150) how=crossattn_kv; lr=1e-3; steps=150 ;;
      kv1000) how=crossattn_kv; lr=1e-3; steps=1000 ;;
      kv2000) how=crossattn_kv; lr=1e-3; steps=2000 ;;
      kv1000hi) how=crossattn_kv; lr=5e-3; steps=1000 ;;
      ca1000) how=crossattn; lr=1e-3; steps=1000 ;;
      token1000) how=token; lr=5e-3; steps=1000 ;;
      full1000) how=full; lr=1e-4; steps=1000 ;;
      *) echo "control.sh: unknown row $r" >&2; exit 2 ;;
    esac
    d="$E/${c}_$r"
    run $C train --model "$M" --images "$E/$c" --prompt "photo of a <new1> toy" --class-prompt toy --class-images "$E/class_toy" \
      --num-class-images 32 --class-steps 20 --modifier-token "<new1>" --initializer-token ktn --resolution 64 \
      --steps $steps --lr $lr --no-scale-lr --train $how --checkpoint-every 0 --seed 1 --out "$d" 2>"$d.log" || { cat "$d.log" >&2; exit 1; }
    run $EV --delta "$d" --label "${c}_$r" >/dev/null
  done
done

# two concepts: each toy with the held-out pattern (<new2>), jointly trained
# (2 x 2000 steps) and merged (the kv2000 deltas), on eval/prompts_both.txt
if [ "$TWO" = 1 ]; then
  # the pattern's images, bare (instance prompt "photo of a <new2> pattern") and with
  # per-image captions in the grammar's slot for a pattern ("a green <new2> pattern")
  run $C world --mode pattern --n 6 --seed 1 --out "$E/pattern" >/dev/null
  run $C world --mode pattern --n 6 --seed 1 --pattern-word "<new2>" --caption-files --out "$E/pattern_icap" >/dev/null
  rm -f "$E/pattern/captions.txt" "$E/pattern_icap/captions.txt"
  trainp() { # name images steps
    run $C train --model "$M" --images "$E/$2" --prompt "photo of a <new2> pattern" --class-prompt pattern \
      --class-images "$E/class_pattern" --num-class-images 32 --class-steps 20 --modifier-token "<new2>" --initializer-token pll \
      --resolution 64 --steps "$3" --lr 1e-3 --no-scale-lr --checkpoint-every 0 --seed 1 --out "$E/pattern_$1" 2>"$E/pattern_$1.log" ||
      { cat "$E/pattern_$1.log" >&2; exit 1; }
  }
  # a pattern needs far fewer steps than a toy (2000 overfit it)
  trainp kv300 pattern 300; trainp kv2000 pattern 2000; trainp icap300 pattern_icap 300; trainp icap1000 pattern_icap 1000
  grep -v '^#' eval/prompts_pattern.txt > "$E/prompts_pattern.txt"
  for r in kv300 kv2000 icap300 icap1000; do
    run $C eval --model "$M" --judge "$J" --n "$N" --out "$E" --prompts "$E/prompts_pattern.txt" --delta "$E/pattern_$r" \
      --label "pattern_$r" >/dev/null
  done
  run $C world --mode pretrain --n 200 --seed 99 --out "$E/reg" >/dev/null
  cut -f2 "$E/reg/captions.txt" > "$E/reg_captions.txt"
  rm -rf "$E/reg"
  grep -v '^#' eval/prompts_both.txt > "$E/prompts_both.txt"
  for c in $CONCEPTS; do
    [ -e "$E/${c}_kv2000" ] || { echo "control.sh: the two-concept rows need the kv2000 row (ROWS)" >&2; exit 2; }
    EV2="$C eval --model $M --judge $J --n $N --out $E --toy-kind $c --prompts $E/prompts_both.txt"
    run $EV2 --label "${c}_both-base" >/dev/null
    # joint training: bare pattern captions 4000 steps, per-image ones 2000
    for p in pattern:4000 pattern_icap:2000; do
      d=${p%%:*}; s=${p#*:}
      cat > "$E/concepts_${c}_$d.json" <<EOF
[{"instance_prompt": "photo of a <new1> toy", "class_prompt": "toy", "instance_data_dir": "$E/$c", "class_data_dir": "$E/class_toy"},
 {"instance_prompt": "photo of a <new2> pattern", "class_prompt": "pattern", "instance_data_dir": "$E/$d", "class_data_dir": "$E/class_pattern"}]
EOF
      run $C train --model "$M" --concepts "$E/concepts_${c}_$d.json" --num-class-images 32 --class-steps 20 --resolution 64 \
        --steps "$s" --lr 1e-3 --no-scale-lr --checkpoint-every 0 --seed 1 --out "$E/${c}_joint-$d" 2>"$E/${c}_joint-$d.log" ||
        { cat "$E/${c}_joint-$d.log" >&2; exit 1; }
      run $EV2 --delta "$E/${c}_joint-$d" --label "${c}_both-joint-$d" >/dev/null
    done
    # cdiff merge of the toy's 2000-step delta with each pattern delta
    for r in kv300 kv2000 icap300 icap1000; do
      run $C merge --model "$M" --delta "$E/${c}_kv2000:toy" --delta "$E/pattern_$r:pattern" \
        --reg-prompts "$E/reg_captions.txt" --out "$E/${c}_merged-$r" >/dev/null
      run $EV2 --delta "$E/${c}_merged-$r" --label "${c}_both-merged-$r" >/dev/null
    done
  done
fi

# the table: one row per setting, the two concepts side by side
{
  echo "| setting | bear: image-alignment | bear: text-alignment | robot: image-alignment | robot: text-alignment |"
  echo "| --- | --- | --- | --- | --- |"
  awk -F'\t' '{ n = index($1, "_"); c = substr($1, 1, n - 1); r = substr($1, n + 1); if (c == "pattern") next
                if (!(r in seen)) { seen[r] = 1; order[k++] = r }
                ia[c, r] = sprintf("%.1f%%", 100 * $2); ta[c, r] = sprintf("%.1f%%", 100 * $3) }
       END { for (i = 0; i < k; i++) { r = order[i]
               printf "| %s | %s | %s | %s | %s |\n", r, ((("bear", r) in ia) ? ia["bear", r] : "-"), ((("bear", r) in ta) ? ta["bear", r] : "-"),
                      ((("robot", r) in ia) ? ia["robot", r] : "-"), ((("robot", r) in ta) ? ta["robot", r] : "-") } }' "$E/results.tsv"
  awk -F'\t' '$1 ~ /^pattern_/ { printf "\nthe pattern alone, %s: image-alignment %.1f%%, text-alignment %.1f%%\n", $1, 100 * $2, 100 * $3 }' "$E/results.tsv"
} > "$E/results.md"
cat "$E/results.md"
