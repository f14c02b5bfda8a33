#!/bin/sh
# Runs each test binary, echoes its lines, and ends with the line
# "N passed, N failed, N skipped". A binary that crashes or exits non-zero
# without a FAIL line counts as one failure. Each test finds the cdiff tool of
# its own build (<build>/tests/x -> <build>/cdiff); CDIFF_REQUIRE_GOLDEN=1
# turns a skip for missing reference data into a failure (CI sets it).
# OpenBLAS picks its kernels and OpenMP its wait policy at load time (see cd_env_tune).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=SkylakeX; fi
pass=0; fail=0; skip=0
for t in "$@"; do
  out=$("$t" 2>&1); rc=$?
  printf '%s\n' "$out" | grep -E '^(PASS|FAIL|SKIP)' || true
  p=$(printf '%s\n' "$out" | grep -c '^PASS'); f=$(printf '%s\n' "$out" | grep -c '^FAIL'); s=$(printf '%s\n' "$out" | grep -c '^SKIP')
  if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $t: exited with status $rc"; f=1
  fi
  # what else it printed, for the diagnosis (the FAIL lines are above already)
  if [ "$f" -gt 0 ]; then printf '%s\n' "$out" | grep -v -E '^(PASS|FAIL|SKIP)' | tail -30; fi
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
done
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
