#!/bin/sh
# Runs each test binary, echoes its lines, and ends with "N passed, N failed".
# A binary that crashes or exits non-zero without a FAIL line counts as one failure.
# OpenBLAS picks its kernels and OpenMP its wait policy at load time (see cd_env_tune).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=SkylakeX; fi
pass=0; fail=0; skip=0
for t in "$@"; do
  out=$("$t" 2>&1); rc=$?
  printf '%s\n' "$out" | grep -E '^(PASS|FAIL|SKIP)' || true
  p=$(printf '%s\n' "$out" | grep -c '^PASS'); f=$(printf '%s\n' "$out" | grep -c '^FAIL'); s=$(printf '%s\n' "$out" | grep -c '^SKIP')
  if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $t: exited with status $rc"; printf '%s\n' "$out" | tail -20; f=1
  fi
  if [ "$f" -gt 0 ]; then printf '%s\n' "$out" | grep -v -E '^(PASS|SKIP)' | tail -30; fi
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
done
echo "$pass passed, $fail failed ($skip skipped)"
[ $fail -eq 0 ]
