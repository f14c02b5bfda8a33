#!/bin/sh
# Measures, on the shipped world model, that Custom Diffusion learns the two
# held-out concepts and composes them: fine-tunes each concept (crossattn_kv,
# crossattn), both jointly, merges the two single-concept deltas, and scores
# generations of the fixed prompt sets in eval/ with the world judge
# (cdiff eval). Writes out/eval/ (deltas, grids, results.tsv) and
# out/eval/results.md (the table docs/results.md quotes).
#   STEPS=N   fine-tuning steps per concept (default 150; joint training 2N)
set -e
cd "$(dirname "$0")/.."
make -j"$(nproc)" build/cdiff >/dev/null
M=models/cdiff-world
STEPS="${STEPS:-150}"
E=out/eval
rm -rf "$E" && mkdir -p "$E"
C=./build/cdiff
$C world --mode toy --n 6 --seed 1 --out "$E/toy" >/dev/null && rm "$E/toy/captions.txt"
$C world --mode pattern --n 6 --seed 1 --out "$E/pattern" >/dev/null && rm "$E/pattern/captions.txt"
$C world --mode pretrain --n 200 --seed 99 --out "$E/reg" >/dev/null
cut -f2 "$E/reg/captions.txt" > "$E/reg_captions.txt"
COMMON="--model $M --resolution 64 --steps $STEPS --lr 2e-4 --no-scale-lr --num-class-images 32 --class-steps 20 --seed 1"
for how in crossattn_kv crossattn; do
  $C train $COMMON --train $how --images "$E/toy" --prompt "photo of a <new1> toy" --class-prompt toy \
    --class-images "$E/class_toy" --out "$E/toy_$how"
  $C train $COMMON --train $how --images "$E/pattern" --prompt "photo of a <new2> pattern" --class-prompt pattern \
    --modifier-token "<new2>" --initializer-token pll --class-images "$E/class_pattern" --out "$E/pattern_$how"
done
cat > "$E/concepts.json" <<EOF
[{"instance_prompt": "photo of a <new1> toy", "class_prompt": "toy", "instance_data_dir": "$E/toy", "class_data_dir": "$E/class_toy"},
 {"instance_prompt": "photo of a <new2> pattern", "class_prompt": "pattern", "instance_data_dir": "$E/pattern", "class_data_dir": "$E/class_pattern"}]
EOF
$C train --model $M --resolution 64 --steps $((2 * STEPS)) --lr 2e-4 --no-scale-lr --num-class-images 32 --class-steps 20 --seed 1 \
  --concepts "$E/concepts.json" --out "$E/joint"
$C merge --model $M --delta "$E/toy_crossattn_kv:toy" --delta "$E/pattern_crossattn_kv:pattern" \
  --reg-prompts "$E/reg_captions.txt" --out "$E/merged"

EV="$C eval --model $M --n 4 --out $E"
$EV --prompts eval/prompts_toy.txt --label toy_base
$EV --prompts eval/prompts_toy.txt --label toy_crossattn_kv --delta "$E/toy_crossattn_kv"
$EV --prompts eval/prompts_toy.txt --label toy_crossattn --delta "$E/toy_crossattn"
$EV --prompts eval/prompts_pattern.txt --label pattern_base
$EV --prompts eval/prompts_pattern.txt --label pattern_crossattn_kv --delta "$E/pattern_crossattn_kv"
$EV --prompts eval/prompts_pattern.txt --label pattern_crossattn --delta "$E/pattern_crossattn"
$EV --prompts eval/prompts_both.txt --label both_base
$EV --prompts eval/prompts_both.txt --label both_joint --delta "$E/joint"
$EV --prompts eval/prompts_both.txt --label both_merged --delta "$E/merged"
$EV --prompts eval/prompts_toy.txt --label toy_joint --delta "$E/joint"
$EV --prompts eval/prompts_toy.txt --label toy_merged --delta "$E/merged"
$EV --prompts eval/prompts_pattern.txt --label pattern_joint --delta "$E/joint"
$EV --prompts eval/prompts_pattern.txt --label pattern_merged --delta "$E/merged"
{
  echo "| run | image-alignment | text-alignment | concept images | attributes |"
  echo "| --- | --- | --- | --- | --- |"
  awk -F'\t' '{ printf "| %s | %.1f%% | %.1f%% | %d | %d |\n", $1, 100*$2, 100*$3, $4, $5 }' "$E/results.tsv"
} > "$E/results.md"
cat "$E/results.md"
echo "eval: grids in $E/*.png, table in $E/results.md"
