#!/usr/bin/env bash
# The GPU check of the packed main job, from the repository root of a machine with a CUDA GPU:
#   bash dev/gpu_check.sh
# It needs .device/tiktoken (GPT-2's two BPE files, named as in README.md's no-GPU path) and .device/alpaca
# (`python prepare_alpaca.py --out_dir .device/alpaca`), so that it runs offline.
# 1. FlexAttention against the boolean-mask reference, and the packing tests, on the GPU;
# 2. bench/bench.py --only h: the main job, compiled and eager, 100 steps each. If step 1 failed, the
#    benchmark runs with the boolean mask (model.py edited for the run, restored at exit).
# Everything it prints is also written under $OUT.
set -uo pipefail
export TIKTOKEN_CACHE_DIR=$PWD/.device/tiktoken PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_packing.py -k "not compiled_run" 2>&1 \
  | tee "$OUT/pytest.txt" | tail -5
if ! grep -q " passed" "$OUT/pytest.txt" || grep -q "failed" "$OUT/pytest.txt"; then
  echo "FlexAttention check failed: benchmarking with the boolean mask instead" | tee -a "$OUT/pytest.txt"
  cp model.py "$OUT/model.py.orig" && trap 'cp "$OUT/model.py.orig" model.py' EXIT
  sed -i 's/    if positions.is_cuda and torch.compiler.is_compiling() and not dropout:/    if False:/' model.py
fi
timeout 420 python bench/bench.py --only h --steps 100 --data_dir .device/alpaca --json "$OUT/bench_h.json" 2>&1 \
  | tee "$OUT/bench_h.txt" | tail -25
