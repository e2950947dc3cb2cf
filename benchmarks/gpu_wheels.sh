#!/usr/bin/env bash
# The package's requirements that the GPU machine's image lacks (its python3 is 3.12 with torch,
# numpy, scipy, scikit-image, tifffile, pyyaml, pandas, tqdm, but no registry to install from),
# downloaded here as Python 3.12 wheels into .whl/ (ignored by git through .git/info/exclude), at
# the versions installed here. benchmarks/gpu_check.sh installs them when .whl travels along
# (the device tool's carry=[".whl"]).
#
#   bash benchmarks/gpu_wheels.sh
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null || \
  echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
names="pooch platformdirs zarr numcodecs donfig google-crc32c dask partd locket pydantic pydantic-core annotated-types typing-inspection"
pins=()
for name in $names; do
  version=$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version:/ { print $2 }')
  pins+=("$name${version:+==$version}")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
du -sh .whl
