#!/usr/bin/env bash
# The GPU check (issue 14, item 5), sized for a lent GPU machine: under 10 minutes, every step
# time-boxed so that one hang costs its own box and the rest still report.
#   1. the golden tests (tests/model_parity.rs) on CATDOG_TEST_DEVICE=cuda, then wgpu;
#   2. `catdog bench --part inference|train-step --device cuda` at 224 px, batch 32 and 256,
#      beside PyTorch on the same GPU (bench/gpu_torch_bench.py);
#   3. where torchvision's resnet18-f37072fd.pth is in the torch hub cache and the kaggle-sample
#      photos are there: `catdog train --device cuda` on them, and its test accuracy.
#
# Binaries: carried ones in $CATDOG_GPU_BIN (default gpu-bin/: `catdog` and `tests`, built with
# `--release --features cuda,wgpu`; README, "GPU builds"), else built here, which needs the
# tracel-llvm bundle in place (the cuda feature links LLVM; the build downloads it otherwise).
# Golden files and photos: $CATDOG_SHARED, else ../shared, else ./shared.
# Everything printed is also written to $OUT/gpu-check.log (OUT defaults to gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

step() { echo; echo "== $* ($(date -u +%T))"; }

shared=${CATDOG_SHARED:-../shared}
[ -d "$shared" ] || shared=shared
if [ -d "$shared" ]; then
  export CATDOG_SHARED=$(realpath "$shared")
else
  echo "no golden files (../shared or ./shared): the golden tests will be skipped as ignored"
fi

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"

bin=${CATDOG_GPU_BIN:-gpu-bin}
if [ -x "$bin/catdog" ] && [ -x "$bin/tests" ]; then
  catdog=$bin/catdog tests=$bin/tests
  echo "carried binaries: $catdog, $tests"
else
  step "build (cuda, wgpu)"
  timeout 480 cargo build --release --features cuda,wgpu --bin catdog || { echo "build failed"; exit 1; }
  catdog=target/release/catdog
  tests=$(timeout 300 cargo test --release --features cuda,wgpu --no-run 2>&1 \
    | grep -o 'target/release/deps/tests-[0-9a-f]*' | head -1)
  [ -n "$tests" ] || { echo "test build failed"; exit 1; }
fi

golden="model_parity::pretrained_logits model_parity::one_adam model_parity::batch_norm_at_the_stems_size"
step "golden tests on cuda"
# shellcheck disable=SC2086
CATDOG_TEST_DEVICE=cuda timeout 150 "$tests" --include-ignored --nocapture --test-threads 1 $golden
echo "cuda golden tests: exit $?"
step "golden tests on wgpu"
# shellcheck disable=SC2086
CATDOG_TEST_DEVICE=wgpu timeout 90 "$tests" --include-ignored --nocapture --test-threads 1 $golden
echo "wgpu golden tests: exit $?"

for batch in 32 256; do
  for part in inference train-step; do
    step "catdog bench --part $part --device cuda, batch $batch"
    timeout 45 "$catdog" bench --part "$part" --device cuda --batch-size "$batch" --image-size 224 \
      | tee -a "$OUT/catdog-bench.jsonl"
  done
done
step "PyTorch on the same GPU"
timeout 90 "${PYTHON:-python3}" bench/gpu_torch_bench.py 224 32 256 | tee "$OUT/torch-bench.txt"

step "torchvision weights in the torch hub cache"
pth=${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/resnet18-f37072fd.pth
photos=${CATDOG_SHARED:-/nonexistent}/data/kaggle-sample
if [ -f "$pth" ] && [ -d "$photos" ]; then
  echo "found $pth: fine-tuning on $photos"
  timeout 150 "$catdog" train --data "$photos" --weights "$pth" --device cuda --out "$OUT/run"
  cat "$OUT/run/eval-test.json" 2>/dev/null || echo "no test evaluation written"
else
  echo "not measured: $pth or $photos is missing"
fi
step "done"
