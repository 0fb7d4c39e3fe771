#!/usr/bin/env bash
# There, on the GPU machine, in one call: the whole-tile figures of README "Benchmarks" (a whole tile on
# one node, and what a GPU waits for after its last tile), then the GPU checks. Prepare here with
# `bash tests/device/fetch_wheels.sh`; run with carry [".whl"] and a timeout of about 540 s:
#   bash tests/device/tile_bench.sh
# Each step has its own time limit, so that a slow one still leaves the others their turn. Logs go to $OUT
# (or /tmp/out); each benchmark's last line is its JSON row.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/out}"
mkdir -p "$out"
{ nproc; free -g | head -2; df -h /tmp | tail -1; python3 --version
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } 2>&1 | tee "$out/node.log"
SECONDS=0
timeout 240 python3 -m tests.bench_tile --size 10980 --device cuda --precision fp16 --tile-size 1024 --batch 4 \
  --work /tmp/bench-tile 2>&1 | tee "$out/bench_tile.log" | tail -n 4
echo "bench_tile step: ${SECONDS} s (synthetic input included)"
rm -rf /tmp/bench-tile/out
timeout 90 python3 tests/device/gpu_check.py 2>&1 | tee "$out/gpu_check.log" | grep -E "^(PASS|FAIL)"
timeout 120 python3 -m tests.bench_sink --sizes 43920 2>&1 | tee "$out/bench_sink.log" | tail -n 2
timeout 120 python3 -m tests.bench_tile --size 10980 --device cuda --precision fp32 --tile-size 1024 --batch 4 \
  --work /tmp/bench-tile 2>&1 | tee "$out/bench_tile_fp32.log" | tail -n 2
echo "all steps: ${SECONDS} s"
