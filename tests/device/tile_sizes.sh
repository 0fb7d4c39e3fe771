#!/usr/bin/env bash
# There, on the GPU machine, after tile_bench.sh: how the GPU path's time and memory grow with the area
# (bench_tile at a quarter and half of a tile's side, fp16 as on a whole tile), what the sink's finish costs
# without compression, and the scratch disk's own speed. Same preparation and carry as tile_bench.sh;
# a timeout of about 300 s:   bash tests/device/tile_sizes.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/out}"
mkdir -p "$out"
SECONDS=0
for size in 2745 5490; do
  timeout 90 python3 -m tests.bench_tile --size $size --device cuda --precision fp16 --tile-size 1024 --batch 4 \
    --work /tmp/bench-tile 2>&1 | tee "$out/bench_tile_$size.log" | tail -n 1
done
rm -rf /tmp/bench-tile
timeout 100 python3 -m tests.bench_sink --sizes 43920 --compress none 2>&1 | tee "$out/bench_sink_none.log" | tail -n 1
# the disk: 8 GiB written (flushed), then read back with the page cache dropped where that is allowed
timeout 60 dd if=/dev/zero of=/tmp/dd.bin bs=16M count=512 conv=fdatasync 2>&1 | tail -n 1
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
timeout 60 dd if=/tmp/dd.bin of=/dev/null bs=16M 2>&1 | tail -n 1
rm -f /tmp/dd.bin
echo "all steps: ${SECONDS} s"
