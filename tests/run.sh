#!/bin/sh
# Runs each test binary, echoes its lines, and ends with the line
# "N passed, N failed, N skipped". A binary that crashes or exits non-zero
# without a FAIL line counts as one failure. Each test finds the cdiff tool of
# its own build (<build>/tests/x -> <build>/cdiff); CDIFF_REQUIRE_GOLDEN=1
# turns a skip for missing reference data into a failure (CI sets it).
# CDIFF_TEST_JOBS=N runs up to N binaries at a time (default 1): each one's
# output is collected and printed whole, in the order the binaries were
# given, so the log reads the same as a serial run's. Binaries are started
# in that order too: list the long ones first for the shortest run.
# OpenBLAS picks its kernels and OpenMP its wait policy at load time (see cd_env_tune).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=SkylakeX; fi
jobs="${CDIFF_TEST_JOBS:-1}"
case "$jobs" in
  '' | *[!0-9]* | 0) echo "tests/run.sh: CDIFF_TEST_JOBS must be a positive integer, not '$jobs'" >&2; exit 2 ;;
esac
dir=$(mktemp -d "${TMPDIR:-/tmp}/cdiff_run_XXXXXX") || exit 2
runner=""
trap 'rm -rf "$dir"' EXIT
trap '[ -n "$runner" ] && kill "$runner" 2>/dev/null; exit 130' INT TERM

# the runner: binary number i writes its output to dir/i.out, then its exit
# status to dir/i.rc (renamed into place, so that i.rc appears complete)
i=0
for t in "$@"; do
  i=$((i + 1))
  printf '%s\000%s\000' "$i" "$t"
done | xargs -0 -n 2 -P "$jobs" sh -c '"$3" >"$1/$2.out" 2>&1; echo $? >"$1/$2.rc.tmp"; mv "$1/$2.rc.tmp" "$1/$2.rc"' tests/run.sh "$dir" &
runner=$!

pass=0; fail=0; skip=0; i=0
for t in "$@"; do
  i=$((i + 1))
  while [ ! -f "$dir/$i.rc" ]; do
    if ! kill -0 "$runner" 2>/dev/null && [ ! -f "$dir/$i.rc" ]; then break; fi
    sleep 0.2
  done
  if [ -f "$dir/$i.rc" ]; then rc=$(cat "$dir/$i.rc"); out=$(cat "$dir/$i.out"); else rc=127; out="the runner ended before it ran $t"; fi
  printf '%s\n' "$out" | grep -E '^(PASS|FAIL|SKIP)' || true
  p=$(printf '%s\n' "$out" | grep -c '^PASS'); f=$(printf '%s\n' "$out" | grep -c '^FAIL'); s=$(printf '%s\n' "$out" | grep -c '^SKIP')
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $t: exited with status $rc"; f=1
  fi
  # what else it printed, for the diagnosis (the FAIL lines are above already)
  if [ "$f" -gt 0 ]; then printf '%s\n' "$out" | grep -v -E '^(PASS|FAIL|SKIP)' | tail -30; fi
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
  rm -f "$dir/$i.out"
done
wait "$runner" 2>/dev/null
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
