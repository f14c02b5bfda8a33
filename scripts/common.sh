# common.sh - what the experiment scripts (eval.sh, control.sh, recipes.sh,
# compose.sh) share, sourced from the repository root once NAME (the script's
# file name in scripts/) is set. Defines functions only:
#   usage       the script's header comment (line 2 to the first line that is
#               not a comment): its --help, never out of step with the header
#   no_args "$@"  for the scripts that take no arguments: --help, or an error
#   setup       once E (the output folder, emptied here) is set: M (MODEL=,
#               default models/cdiff-world), J (JUDGE=, default
#               models/world-judge.safetensors), C (the cdiff binary, built here)
#   run         echoes a command to stderr, then runs it: the scripts' output
#               holds the exact commands behind their tables
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
