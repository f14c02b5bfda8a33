#!/bin/bash
# dev/gpu/check.sh - the one script a session with a GPU lent runs on the
# device machine (docs/cuda.md, dev/README.md). In one call, about 6 minutes:
#   1. build: make CUDA=1 (16 cores), against the C libraries carried in
#      dev/gpu/carry/sys.tar.xz (dev/gpu/prepare.sh made it);
#   2. parity: build-cuda/tests/test_cuda, every op forward and backward on
#      the GPU against the CPU backend, the optimizer ops, the fp32/tf32/bf16
#      GEMM modes, then the golden models (tiny-sd1, tiny-sd2) on the GPU;
#   3. bench: a random SD 1.5 checkpoint (gen_sd_random, made there), one CFG
#      UNet evaluation at 512 px (batch 2) in bf16 and fp32 math, and a Custom
#      Diffusion training step at batch 8 (4 instance + 4 class) and 1+1;
#   3b. the world model's pretraining on the GPU: its first VAE steps against
#      the shipped log, and UNet steps per second;
#   4. a short table last (the reply's output_tail shows the end).
# Logs go to $OUT (they come back with the reply; seven files, the tool returns at most 8). Each stage has its own
# timeout, so a hang in one still leaves the table.
#
# Here (no GPU needed), once:     sh dev/gpu/prepare.sh
# Then the device tool's run:     command "bash dev/gpu/check.sh", carry ["dev/gpu/carry"], timeout_s 540
# Stages can be skipped: CHECK_SKIP="bench" (or "parity", "pretrain", "train") in the command.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cdiff-check-out}
mkdir -p "$OUT"
LOG=$OUT/check.log
T0=$(date +%s)
: > "$LOG"
say() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
skip() { case " ${CHECK_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }
# every stage's timeout is cut to what is left of CHECK_BUDGET (default 500 s,
# inside the call's 540), so the table is always printed
DEADLINE=$((T0 + ${CHECK_BUDGET:-500}))
tmo() { local l=$((DEADLINE - $(date +%s) - 10)); [ "$l" -lt "$1" ] && echo $((l > 0 ? l : 1)) || echo "$1"; }
late() { [ $((DEADLINE - $(date +%s))) -lt "$1" ]; }
declare -a ROWS
row() { ROWS+=("$1"); }

say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "nvcc: $(nvcc --version 2>/dev/null | tail -1) | gcc: $(gcc --version | head -1) | cores: $(nproc)"
# ---- 1. CUDA and the C dependencies carried from the build machine ----
. dev/gpu/sys_env.sh
say "$SYS_NOTE"

# ---- 2. build ----
say "build: make CUDA=1"
if timeout "$(tmo 240)" make -j"$(nproc)" CUDA=1 CUDA_HOME="$CUDA_HOME" build-cuda/cdiff build-cuda/tests/test_cuda build-cuda/tools/gen_sd_random \
    build-cuda/bench/bench_unet build-cuda/bench/bench_train > "$OUT/build.log" 2>&1; then
  row "build              ok ($(($(date +%s) - T0)) s)"
else
  tail -30 "$OUT/build.log"
  row "build              FAILED (see build.log)"
  printf '%s\n' "${ROWS[@]}"
  exit 1
fi

# ---- 3. parity and goldens ----
if ! skip parity; then
  GOLD=/tmp/cdiff-golden
  if [ -f dev/gpu/carry/golden.tar.xz ]; then
    rm -rf $GOLD && mkdir -p $GOLD && tar -C $GOLD -xJf dev/gpu/carry/golden.tar.xz
    export CDIFF_GOLDEN=$GOLD
  fi
  say "test_cuda (CDIFF_CUDA_SYNC=1: every kernel checked as it runs)"
  CDIFF_CUDA_SYNC=1 CDIFF_TEST_VERBOSE=1 timeout "$(tmo 180)" build-cuda/tests/test_cuda > "$OUT/test_cuda.log" 2>&1
  rc=$?
  grep -E '^(PASS|FAIL|SKIP)|^cuda:' "$OUT/test_cuda.log" | tee -a "$LOG"
  np=$(grep -c '^PASS' "$OUT/test_cuda.log"); nf=$(grep -c '^FAIL' "$OUT/test_cuda.log"); ns=$(grep -c '^SKIP' "$OUT/test_cuda.log")
  row "test_cuda          $np passed, $nf failed, $ns skipped (exit $rc)"
  # the same ops once more without the per-kernel synchronisation: a race shows as a difference here
  late 300 || timeout "$(tmo 60)" build-cuda/tests/test_cuda > "$OUT/test_cuda_async.log" 2>&1
  row "test_cuda, async   $(grep -c '^PASS' "$OUT/test_cuda_async.log") passed, $(grep -c '^FAIL' "$OUT/test_cuda_async.log") failed"
fi

# ---- 3b. the world model's pretraining on the GPU (issue 10's next model needs it) ----
# the documented first command's first 3 VAE steps against the shipped log (tests/test_pretrain.c's
# 1e-3 relative bound), then 200 UNet steps of 32 continuing the shipped model: steps per second
if ! skip pretrain && ! late 90; then
  say "pretrain --device cuda: 3 VAE steps vs the shipped log, 200 UNet steps timed"
  rm -rf /tmp/wm-a /tmp/wm-b
  timeout "$(tmo 60)" build-cuda/cdiff pretrain --device cuda --out /tmp/wm-a --seed 1 --vae-steps 3000 --stop-after 3 \
    > "$OUT/pretrain.log" 2>&1
  cmp=$(awk -F'"loss": ' 'FNR == 1 { f++ } f == 1 && FNR <= 3 { split($2, a, ","); want[FNR] = a[1] }
        f == 2 && FNR <= 3 { split($2, a, ","); d = a[1] - want[FNR]; if (d < 0) d = -d; r = d / (want[FNR] < 0 ? -want[FNR] : want[FNR]);
        if (r > m) m = r } END { printf "max rel diff %.2e (%s)", m, m <= 1e-3 ? "ok" : "DIFFERS" }' \
        models/cdiff-world/pretrain_log.jsonl /tmp/wm-a/pretrain_log.jsonl 2>/dev/null)
  row "pretrain VAE 1-3   ${cmp:-FAILED: $(tail -1 "$OUT/pretrain.log")}"
  t=$(date +%s.%N)
  if timeout "$(tmo 90)" build-cuda/cdiff pretrain --device cuda --out /tmp/wm-b --init models/cdiff-world --unet-steps 200 \
      --checkpoint-every 0 --seed 9 >> "$OUT/pretrain.log" 2>&1; then
    row "pretrain UNet b=32 $(echo "$t $(date +%s.%N)" | awk '{ printf "%.1f steps/s (200 steps, with load and write; CPU 1 thread: 1.74)", 200 / ($2 - $1) }')"
  else
    row "pretrain UNet b=32 FAILED: $(tail -1 "$OUT/pretrain.log")"
  fi
fi

# ---- 4. benches on a random SD 1.5 ----
if ! skip bench; then
  say "gen_sd_random: random SD 1.5 (fp16) in /tmp/sd15-random"
  if [ ! -d /tmp/sd15-random ]; then
    timeout "$(tmo 120)" build-cuda/tools/gen_sd_random --out /tmp/sd15-random >> "$OUT/bench.log" 2>&1 || { tail -5 "$OUT/bench.log"; row "gen_sd_random      FAILED"; }
  fi
  for math in bf16 fp32; do
    late 40 && { row "unet CFG 512 $math  not run: out of time"; continue; }
    say "bench_unet, CDIFF_CUDA_MATH=$math"
    CDIFF_CUDA_MATH=$math timeout "$(tmo 90)" build-cuda/bench/bench_unet /tmp/sd15-random --device cuda --reps 10 > /tmp/cdiff-b.log 2>&1
    cat /tmp/cdiff-b.log >> "$OUT/bench.log"
    l=$(grep '^BENCH' /tmp/cdiff-b.log)
    row "unet CFG 512 $math  ${l:-FAILED: $(tail -1 /tmp/cdiff-b.log)}"
  done
  if ! skip train; then
    for b in 4 1; do
      late 60 && { row "train step b=$((2 * b))     not run: out of time"; continue; }
      say "bench_train --batch $b (with prior: $((2 * b)) examples), bf16"
      CDIFF_CUDA_MATH=bf16 timeout "$(tmo 120)" build-cuda/bench/bench_train /tmp/sd15-random --device cuda --batch $b --steps 3 \
        --limit-gib 130 > /tmp/cdiff-b.log 2>&1
      cat /tmp/cdiff-b.log >> "$OUT/bench.log"
      l=$(grep '^BENCH' /tmp/cdiff-b.log)
      row "train step b=$((2 * b))     ${l:-FAILED: $(tail -1 /tmp/cdiff-b.log)}"
    done
  fi
  # where the time goes, per op kind (CDIFF_PROFILE times every kernel with events)
  late 40 || CDIFF_PROFILE=1 CDIFF_CUDA_MATH=bf16 timeout "$(tmo 60)" build-cuda/bench/bench_unet /tmp/sd15-random --device cuda --reps 2 \
    > "$OUT/profile.log" 2>&1
fi

echo
echo "==== cdiff CUDA check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(git rev-parse --short HEAD 2>/dev/null) ===="
printf '%s\n' "${ROWS[@]}"
grep -E '^FAIL' "$OUT/test_cuda.log" 2>/dev/null | head -8
echo "total $(($(date +%s) - T0)) s; logs in \$OUT (at most 8 files come back): check.log build.log test_cuda.log test_cuda_async.log pretrain.log bench.log profile.log"
