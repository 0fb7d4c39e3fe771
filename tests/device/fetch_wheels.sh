#!/usr/bin/env bash
# Here, before a device call for the whole-tile figures (tests/device/tile_bench.sh): download into .whl/
# the wheels those benchmarks need beyond the GPU machine's image (which has torch, numpy, typer, rich, …),
# for its Python 3.12, at the versions this checkout's .venv runs. About 46 MB; the call carries ".whl".
# The set was checked by running both benchmarks with only the image's packages and these on the path.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qsxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
names='affine|cachetools|click-plugins|cligj|odc-geo|pyproj|rasterio|shapely|pystac|pystac-core|pystac-ext-.*'
pins=$(.venv/bin/python -m pip freeze | grep -iE "^($names)==")
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl $pins
du -sh .whl
