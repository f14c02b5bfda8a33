# common.sh - what the experiment scripts (eval.sh, control.sh, recipes.sh,
# compose.sh, recolour.sh, three.sh) share, sourced from the repository root
# once NAME (the script's file name in scripts/) is set. Defines functions only:
#   usage       the script's header comment (line 2 to the first line that is
#               not a comment): its --help, never out of step with the header
#   no_args "$@"  for the scripts that take no arguments: --help, or an error
#   setup       once E (the output folder, emptied here) is set: M (MODEL=,
#               default models/cdiff-world), J (JUDGE=, default
#               models/world-judge.safetensors), C (the cdiff binary, built here)
#   run         echoes a command to stderr, then runs it: the scripts' output
#               holds the exact commands behind their tables
#   train_run   cdiff train with the shared settings into $E (three.sh's class images)
#   train       one concept's crossattn_kv fine-tuning into $E (compose.sh, recolour.sh, three.sh)
#   train_joint joint training of several concepts into $E (compose.sh, three.sh)
#   bear_images, car_images  the control concepts' instance images (toy_images)
#   seed_table  a table of cdiff eval's rows with the mean over training seeds
usage() { awk 'NR > 1 { if (!/^#/) exit; print }' "scripts/$NAME"; }
no_args() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "$NAME: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
}
setup() {
  M="${MODEL:-models/cdiff-world}"
  J="${JUDGE:-models/world-judge.safetensors}"
  C=./build/cdiff
  for f in "$M" "$J"; do
    [ -e "$f" ] || { echo "$NAME: $f is missing (MODEL=, JUDGE=; the judge: cdiff judge --train, docs/world.md)" >&2; exit 1; }
  done
  make -j2 build/cdiff >/dev/null
  rm -rf "$E" && mkdir -p "$E"
  export CDIFF_QUIET=1
}
run() { echo "+ $*" >&2; "$@"; }
# train_run NAME [flags]: cdiff train on $M with the settings every script shares (32
# generated class images of 20 steps, 64 px, the lr not scaled, no checkpoints), into
# $E/NAME, its log in $E/NAME.log (printed when it fails)
train_run() {
  o=$1; shift
  run $C train --model "$M" --num-class-images 32 --class-steps 20 --resolution 64 --no-scale-lr \
    --checkpoint-every 0 --out "$E/$o" "$@" 2>"$E/$o.log" || { cat "$E/$o.log" >&2; exit 1; }
}
# train NAME IMAGES PROMPT CLASS TOKEN INIT STEPS SEED [LR]: one concept, crossattn_kv
# (lr 1e-3), images $E/IMAGES, class images in $E/class_CLASS, into $E/NAME
train() {
  train_run "$1" --images "$E/$2" --prompt "$3" --class-prompt "$4" --class-images "$E/class_$4" \
    --modifier-token "$5" --initializer-token "$6" --steps "$7" --lr "${9:-1e-3}" --seed "$8"
}
# train_joint NAME CONCEPTS STEPS SEED LR [flags]: joint training of the concepts listed in
# $E/CONCEPTS (crossattn_kv), into $E/NAME
train_joint() {
  o=$1; cf=$2; st=$3; sd=$4; lr=$5; shift 5
  train_run "$o" --concepts "$E/$cf" --steps "$st" --lr "$lr" --seed "$sd" "$@"
}

# seed_table ALL TOYS SKIP: the markdown table of $E/results.tsv (cdiff eval's rows): the
# concepts together (ALL), the toys (TOYS), the pattern, text-alignment; then the mean of each
# setting over its seeds (rows NAME-sK; rows matching the regex SKIP are left out of the means)
seed_table() {
  echo "| row | $1 | $2 | the pattern | text-alignment |"
  echo "| --- | --- | --- | --- | --- |"
  awk -F'\t' -v skip="$3" 'function f(v) { return v < 0 ? "-" : sprintf("%.1f%%", 100 * v) }
       { printf "| %s | %s | %s | %s | %s |\n", $1, f($2), f($8), f($10), f($3)
         r = $1; sub(/-s[0-9]+$/, "", r)
         if ($1 ~ /-s[0-9]+$/ && $1 !~ skip) { if (!(r in n)) order[k++] = r; n[r]++; a[r] += $2; t[r] += $8; p[r] += $10; x[r] += $3 } }
       END { for (i = 0; i < k; i++) { r = order[i]; if (n[r] > 1) printf "| %s, mean of %d seeds | %s | %s | %s | %s |\n", r, n[r],
               f(a[r] / n[r]), f(t[r] / n[r]), f(p[r] / n[r]), f(x[r] / n[r]) } }' "$E/results.tsv"
}
# toy_images DIR WORDS TOKEN PICK: 6 single WORDS toys ("orange bear": a kind and
# colour the base model draws) among 4,000 pretraining renders (seed 7) into DIR,
# each with its caption as DIR/NNNN.txt, the toy named "TOKEN toy" ("a big <new1>
# toy on a blue checkered pattern"); PICK first: the first 6, mixed: the first 3
# big and the first 3 small. The per-image captions serve only where a script
# keeps them.
toy_images() {
  run $C world --mode pretrain --n 4000 --seed 7 --out "$1.renders" >/dev/null
  if [ "$4" = mixed ]; then
    for z in big small; do
      awk -F'\t' -v w="$z $2 toy on" 'index($2, w) && $2 !~ /next to/' "$1.renders/captions.txt" | head -n 3
    done > "$1.tsv"
  else
    awk -F'\t' -v w="$2 toy on" 'index($2, w) && $2 !~ /next to/' "$1.renders/captions.txt" | head -n 6 > "$1.tsv"
  fi
  [ "$(wc -l < "$1.tsv")" -eq 6 ] || { echo "$NAME: fewer than 6 single $2 toys among the renders" >&2; exit 1; }
  mkdir -p "$1"
  while IFS="$(printf '\t')" read -r f cap rest; do
    cp "$1.renders/$f" "$1/" && echo "$cap" | sed "s/$2 toy/$3 toy/" > "$1/${f%.png}.txt"
  done < "$1.tsv"
  rm -rf "$1.renders"
}
# bear_images DIR: the control concept of control.sh and compose.sh, <new1>
bear_images() { toy_images "$1" "orange bear" "<new1>" first; }
# car_images DIR: the third concept of three.sh, <new3> (the first 6 red cars are all small)
car_images() { toy_images "$1" "red car" "<new3>" mixed; }
