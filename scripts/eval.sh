#!/bin/sh
# The paper's comparison (Kumari et al. 2023, Table 1 / Fig. 7) on the world
# model, where the judge knows the truth of every picture (docs/results.md):
#   one concept at a time (<new1> robot toy, <new2> zigzag pattern, <new3> duck
#   toy): the base model; token only (Textual-Inversion-like); Custom Diffusion
#   crossattn_kv and crossattn; full UNet fine-tuning (DreamBooth-like);
#   two concepts (<new1> + <new2>): joint training, cdiff merge of the two
#   crossattn_kv deltas (as the paper, and with --pad-rows 4), sequential
#   training (<new2> from the <new1> delta);
#   three concepts: joint training, the merge of three deltas, and the merge
#   with a ridge (the lift tried); the pattern prompts on every multi-concept
#   model (how the one concept learned alone survives them); and the base
#   model's shapes (eval/prompts_kinds.txt: each pretraining kind named alone,
#   24 prompts, text-alignment = the kind drawn; eval/prompts_kinds_grammar.txt:
#   the same kinds named as the pretraining captions name them).
# Each row: 20 prompts (eval/prompts_*.txt) x N images with fixed seeds, read
# by the judge (cdiff eval): image-alignment and text-alignment, a grid PNG.
#
#   sh scripts/eval.sh [--quick]
#   --quick      N=1 image per prompt, 60 steps: the whole pipeline in minutes
#   MODEL=DIR    the model (default models/cdiff-world)
#   JUDGE=FILE   the judge (default models/world-judge.safetensors)
#   STEPS=K      fine-tuning steps of every concept (default: per concept, below;
#                joint training alternates the concepts step by step, so it runs
#                the concept count x the larger of the two below)
#   TOY_STEPS=K  steps of each toy (default 2000: scripts/control.sh, <new1> bound
#                to a bear: 31% of generations at 150 steps, 81% at 2000)
#   PATTERN_STEPS=K  steps of the pattern (default 1000 with PATTERN=scenes, 300
#                with PATTERN=bare: 2000 bare steps overfit it, text-alignment 35%)
#   PATTERN=P    the pattern's instance images: scenes (default; cdiff world --mode
#                pattern-scenes: the zigzag behind pretraining objects, each image
#                with its caption, "a small blue star on a green <new2> background",
#                the layout composition prompts ask for; scripts/compose.sh) or bare
#                (the zigzag filling the frame, as before the ninth session)
#   N=K          images per prompt (default 4)
#   OUT=DIR      output folder (default out/eval)
#   RECIPE=R     captions of the fine-tuning (scripts/recipes.sh compares them):
#                plain (default): one instance prompt "photo of a <newK> toy",
#                  class images generated from "toy" / "pattern";
#                grammar: per-image instance captions in the world grammar
#                  (cdiff world --caption-files) and class images generated
#                  from 32 pretraining captions of the class (--class-prompts);
#                real: plain instance prompt, class images = 32 rendered
#                  pretraining scenes of the class with their captions (--real_prior);
#                realcap: per-image instance captions (as grammar) + the class
#                  images of real
# Writes OUT/results.tsv, OUT/results.md (the table) and OUT/<row>.png, and
# prints an estimate of the remaining time after the first training and the
# first evaluation. Every command it runs is echoed, so the table's exact
# commands are in its output.
set -e
cd "$(dirname "$0")/.."
NAME=eval.sh
. scripts/common.sh
QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "eval.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
if [ $QUICK = 1 ]; then STEPS="${STEPS:-60}"; N="${N:-1}"; fi
PATTERN="${PATTERN:-scenes}"
case "$PATTERN" in scenes) PS=1000 ;; bare) PS=300 ;; *) echo "eval.sh: PATTERN=$PATTERN: expected scenes or bare" >&2; exit 2 ;; esac
TOY_STEPS="${STEPS:-${TOY_STEPS:-2000}}"
PATTERN_STEPS="${STEPS:-${PATTERN_STEPS:-$PS}}"
MAX_STEPS=$((TOY_STEPS > PATTERN_STEPS ? TOY_STEPS : PATTERN_STEPS))
N="${N:-4}"
E="${OUT:-out/eval}"
RECIPE="${RECIPE:-plain}"
case "$RECIPE" in plain|grammar|real|realcap) ;; *) echo "eval.sh: RECIPE=$RECIPE: expected plain, grammar, real or realcap" >&2; exit 2 ;; esac
setup
T0=$(date +%s)
now() { date +%s; }

# learning rates per mode: Custom Diffusion's (as make demo); the token row
# moves further (Textual Inversion uses ~5x); full fine-tuning moves every
# weight and needs a smaller rate (DreamBooth: ~1/100 of the CD rate on SD)
LR_KV=1e-3; LR_CA=1e-3; LR_TOKEN=5e-3; LR_FULL=1e-4
CLS="--num-class-images 32 --class-steps 20"
COMMON="--model $M --resolution 64 --no-scale-lr --seed 1 --checkpoint-every 0"

# data: 6 instance images per concept (fixed seed; with RECIPE=grammar|realcap each
# with its caption beside it), 200 pretraining captions for the merge (the
# first 200 of 600 renders: the class captions of RECIPE=grammar|real come from them)
CAPS=""; case $RECIPE in grammar|realcap) CAPS=--caption-files ;; esac
WORDS='--toy-word <new1> --pattern-word <new2> --toy2-word <new3>'
# shellcheck disable=SC2086
run $C world --mode toy --n 6 --seed 1 $WORDS $CAPS --out "$E/data/toy" >/dev/null
# shellcheck disable=SC2086
if [ "$PATTERN" = scenes ]; then
  run $C world --mode pattern-scenes --n 6 --seed 1 $WORDS --caption-files --out "$E/data/pattern" >/dev/null
else
  # shellcheck disable=SC2086
  run $C world --mode pattern --n 6 --seed 1 $WORDS $CAPS --out "$E/data/pattern" >/dev/null
fi
# shellcheck disable=SC2086
run $C world --mode toy2 --n 6 --seed 1 $WORDS $CAPS --out "$E/data/duck" >/dev/null
rm -f "$E"/data/*/captions.txt
run $C world --mode pretrain --n 600 --seed 99 --out "$E/data/reg" >/dev/null
head -n 200 "$E/data/reg/captions.txt" | cut -f2 > "$E/data/reg_captions.txt"
# class captions of the pretraining scenes: toys (either toy) and patterned scenes
for k in toy pattern; do
  case $k in toy) pick='$2 ~ /(^| )toy( |$)/' ;; pattern) pick='$2 ~ / pattern$/' ;; esac
  awk -F'\t' "$pick" "$E/data/reg/captions.txt" | head -n 32 > "$E/data/sel_$k.tsv"
  cut -f2 "$E/data/sel_$k.tsv" > "$E/data/class_prompts_$k.txt"
  mkdir -p "$E/data/real_$k"
  cut -f1 "$E/data/sel_$k.tsv" | sed "s|^|$(cd "$E/data/reg" && pwd)/|" > "$E/data/real_$k/images.txt"
  cut -f2 "$E/data/sel_$k.tsv" > "$E/data/real_$k/caption.txt"
done

# concept name -> prompt, class, token, initializer
prompt_of() { case $1 in toy) echo "photo of a <new1> toy" ;; pattern) echo "photo of a <new2> pattern" ;; duck) echo "photo of a <new3> toy" ;; esac; }
class_of() { case $1 in pattern) echo pattern ;; *) echo toy ;; esac; }
tok_of() { case $1 in toy) echo "<new1>" ;; pattern) echo "<new2>" ;; duck) echo "<new3>" ;; esac; }
init_of() { case $1 in toy) echo ktn ;; pattern) echo pll ;; duck) echo ucd ;; esac; }
cls_dir() { case $RECIPE in real|realcap) echo "$E/data/real_$1" ;; *) echo "$E/class_$1" ;; esac; }
cls_flags() { # class -> the class-image flags of RECIPE
  case $RECIPE in
    plain) echo "--class-prompt $1 --class-images $E/class_$1" ;;
    grammar) echo "--class-prompts $E/data/class_prompts_$1.txt --class-images $E/class_$1" ;;
    real|realcap) echo "--real_prior --class-images $E/data/real_$1" ;;
  esac
}
steps_of() { case $1 in pattern) echo "$PATTERN_STEPS" ;; *) echo "$TOY_STEPS" ;; esac; }
lr_of() { case $1 in crossattn_kv) echo $LR_KV ;; crossattn) echo $LR_CA ;; token) echo $LR_TOKEN ;; full) echo $LR_FULL ;; esac; }

train1() { # out concept mode [extra flags]
  o=$1; c=$2; how=$3; shift 3
  # shellcheck disable=SC2046
  run $C train $COMMON $CLS --steps "$(steps_of "$c")" --lr "$(lr_of "$how")" --train "$how" --images "$E/data/$c" \
    --prompt "$(prompt_of "$c")" $(cls_flags "$(class_of "$c")") --modifier-token "$(tok_of "$c")" \
    --initializer-token "$(init_of "$c")" --out "$E/$o" "$@"
}
EV="$C eval --model $M --judge $J --n $N --out $E"
ev() { # label prompts [deltas...]
  l=$1; p=$2; shift 2
  d=""
  for x in "$@"; do d="$d --delta $x"; done
  # shellcheck disable=SC2086
  run $EV --prompts "eval/prompts_$p.txt" --label "$l" $d
}

ROWS=32; TRAINS=18
t=$(now); train1 toy_crossattn_kv toy crossattn_kv; T_TRAIN=$(( $(now) - t ))
t=$(now); ev toy_base toy; T_EV=$(( $(now) - t ))
# the first training also generated the toy class images: the later ones are faster
echo "eval.sh: first training ${T_TRAIN}s (with class images), first evaluation ${T_EV}s; the rest takes about" \
  "$(( (T_TRAIN * (TRAINS - 1) / 2 + T_EV * (ROWS - 1)) / 60 )) more minutes on this machine" >&2

for c in toy pattern duck; do
  for how in token crossattn_kv crossattn full; do
    [ -e "$E/${c}_$how" ] || train1 "${c}_$how" $c $how
  done
done
for c in pattern duck; do ev "${c}_base" $c; done
# the base model's shapes: each pretraining kind named alone (text-alignment = kind drawn)
ev kinds_base kinds
ev kindsgrammar_base kinds_grammar
for c in toy pattern duck; do
  for how in token crossattn_kv crossattn full; do ev "${c}_$how" $c "$E/${c}_$how"; done
done

# two concepts: joint, merged, sequential
# (the class folders in variables: dash garbles command substitutions inside here-documents)
CT=$(cls_dir toy); CP=$(cls_dir pattern)
cat > "$E/concepts2.json" <<EOF
[{"instance_prompt": "photo of a <new1> toy", "class_prompt": "toy", "instance_data_dir": "$E/data/toy", "class_data_dir": "$CT"},
 {"instance_prompt": "photo of a <new2> pattern", "class_prompt": "pattern", "instance_data_dir": "$E/data/pattern", "class_data_dir": "$CP"}]
EOF
REAL=""; case $RECIPE in real|realcap) REAL=--real_prior ;; esac
# shellcheck disable=SC2086
run $C train $COMMON $CLS $REAL --steps $((2 * MAX_STEPS)) --lr $LR_KV --concepts "$E/concepts2.json" --out "$E/joint2"
mergekv() { # out concept... [-- merge flags]: the concepts' crossattn_kv deltas merged into OUT/out
  o=$1; shift
  d=""
  while [ $# -gt 0 ] && [ "$1" != -- ]; do d="$d --delta $E/${1}_crossattn_kv:$(class_of "$1")"; shift; done
  [ $# -gt 0 ] && shift
  # shellcheck disable=SC2086
  run $C merge --model "$M" $d --reg-prompts "$E/data/reg_captions.txt" --out "$E/$o" "$@"
}
mergekv merged2 toy pattern
# the merge with the first 4 padding rows constrained too (docs/merge.md, --pad-rows)
mergekv merged2_pad toy pattern -- --pad-rows 4
train1 sequential2 pattern crossattn_kv --delta "$E/toy_crossattn_kv"
ev both_base both
ev both_joint both "$E/joint2"
ev both_merged both "$E/merged2"
ev both_merged-pad both "$E/merged2_pad"
ev both_sequential both "$E/sequential2"

# three concepts
cat > "$E/concepts3.json" <<EOF
[{"instance_prompt": "photo of a <new1> toy", "class_prompt": "toy", "instance_data_dir": "$E/data/toy", "class_data_dir": "$CT"},
 {"instance_prompt": "photo of a <new2> pattern", "class_prompt": "pattern", "instance_data_dir": "$E/data/pattern", "class_data_dir": "$CP"},
 {"instance_prompt": "photo of a <new3> toy", "class_prompt": "toy", "instance_data_dir": "$E/data/duck", "class_data_dir": "$CT"}]
EOF
# shellcheck disable=SC2086
run $C train $COMMON $CLS $REAL --steps $((3 * MAX_STEPS)) --lr $LR_KV --concepts "$E/concepts3.json" --out "$E/joint3"
mergekv merged3 toy pattern duck
ev three_base three
ev three_joint three "$E/joint3"
ev three_merged three "$E/merged3"
# the lift tried for three concepts: the two toys share the class word "toy", so their
# constraint rows nearly coincide and the exact solve is ill-conditioned (rcond ~5e-6,
# toy + pattern ~2e-3): its weights blow up. A ridge regularises the solve.
mergekv merged3_ridge toy pattern duck -- --ridge 0.01
ev three_merged-ridge three "$E/merged3_ridge"
# how the concept that is learned alone (the pattern) survives in the multi-concept models
ev pattern_in-joint2 pattern "$E/joint2"
ev pattern_in-merged2 pattern "$E/merged2"
ev pattern_in-merged2-pad pattern "$E/merged2_pad"
ev pattern_in-joint3 pattern "$E/joint3"
ev pattern_in-merged3 pattern "$E/merged3"
ev pattern_in-merged3-ridge pattern "$E/merged3_ridge"

# the table: one row per (prompt set, method)
{
  echo "| prompts | method | image-alignment | text-alignment | concept images | attributes |"
  echo "| --- | --- | --- | --- | --- | --- |"
  awk -F'\t' '{ i = index($1, "_"); set = substr($1, 1, i - 1); how = substr($1, i + 1);
    printf "| %s | %s | %s | %.1f%% | %d | %d |\n", set, how, ($2 < 0 ? "n/a" : sprintf("%.1f%%", 100 * $2)), 100 * $3, $4, $5 }' "$E/results.tsv"
} > "$E/results.md"
cat "$E/results.md"
echo "eval.sh: $(( ($(now) - T0) / 60 )) minutes; grids in $E/*.png (one row of $N images per prompt), table in $E/results.md" >&2
