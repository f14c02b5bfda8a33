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
