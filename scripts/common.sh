# common.sh - the preamble of the experiment scripts (eval.sh, control.sh,
# recipes.sh, compose.sh), sourced after each has read its arguments and set
# NAME (its name, for messages) and E (its output folder, emptied here).
# Sets M (MODEL=, default models/cdiff-world), J (JUDGE=, default
# models/world-judge.safetensors) and C (the cdiff binary, built here), and
# defines run, which echoes a command to stderr before running it: the
# scripts' output holds the exact commands behind their tables.
M="${MODEL:-models/cdiff-world}"
J="${JUDGE:-models/world-judge.safetensors}"
C=./build/cdiff
for f in "$M" "$J"; do
  [ -e "$f" ] || { echo "$NAME: $f is missing (MODEL=, JUDGE=; the judge: cdiff judge --train, docs/world.md)" >&2; exit 1; }
done
make -j2 build/cdiff >/dev/null
rm -rf "$E" && mkdir -p "$E"
run() { echo "+ $*" >&2; "$@"; }
export CDIFF_QUIET=1

# bear_images DIR: the control concept of control.sh and compose.sh, the first 6
# single orange bear toys among 4,000 pretraining renders (a kind the base model
# draws), into DIR, each with its caption as DIR/NNNN.txt, the bear named
# "<new1> toy" ("a big <new1> toy on a blue checkered pattern"); the per-image
# captions serve only where a script keeps them
bear_images() {
  run $C world --mode pretrain --n 4000 --seed 7 --out "$1.renders" >/dev/null
  awk -F'\t' '$2 ~ /orange bear toy on/ && $2 !~ /next to/' "$1.renders/captions.txt" | head -n 6 > "$1.tsv"
  [ "$(wc -l < "$1.tsv")" -eq 6 ] || { echo "$NAME: fewer than 6 orange bears among the renders" >&2; exit 1; }
  mkdir -p "$1"
  while IFS="$(printf '\t')" read -r f cap rest; do
    cp "$1.renders/$f" "$1/" && echo "$cap" | sed 's/orange bear toy/<new1> toy/' > "$1/${f%.png}.txt"
  done < "$1.tsv"
  rm -rf "$1.renders"
}
