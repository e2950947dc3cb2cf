#!/usr/bin/env bash
# Install as users do: build the sdist and, from it, the wheel; install the wheel into a fresh
# virtual environment (no editable install, nothing of the checkout on the path) and use it from a
# folder outside the checkout: the bundled presets, a restore of the bundled sample image, and
# napari's discovery of the plugin through npe2. Needs no network beyond the package registry.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# A fresh environment is ~1 GB of small files: in memory (tmpfs) when there is room, it is
# written and removed in seconds instead of minutes.
tmp_root="${TMPDIR:-/tmp}"
if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 4000000 ]; then tmp_root=/dev/shm; fi
work="$(mktemp -d "$tmp_root/wheel-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

quietly() {  # run a step with its output in a log, shown only when the step fails
  "$@" >"$work/step.log" 2>&1 || { cat "$work/step.log" >&2; echo "wheel check: failed: $*" >&2; exit 1; }
}

echo "wheel check: building sdist and wheel"
# from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout
mkdir "$work/src"
tar -C "$repo" --exclude=.git --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
  -cf - . | tar -C "$work/src" -xf -
quietly python3 -m build -o "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/napari_emdiffuse-*.whl)"
echo "wheel check: built in ${SECONDS} s"

echo "wheel check: installing $(basename "$wheel") into a fresh virtual environment"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
# The CPU build of torch first (a plain resolve of torch>=2.5 would fetch a multi-GB CUDA build).
# --no-compile: byte-compiling torch's sources at install time costs a minute; imports compile what they use
quietly "$py" -m pip install --no-compile "torch==2.13.0"
quietly "$py" -m pip install --no-compile "$wheel"
echo "wheel check: installed at ${SECONDS} s"

cd "$work"  # outside the checkout
installed="$("$py" -c 'import napari_emdiffuse, pathlib; print(pathlib.Path(napari_emdiffuse.__file__).parent)')"
case "$installed" in
  "$work/venv/"*) ;;
  *) echo "wheel check: napari_emdiffuse imported from $installed, not from the venv" >&2; exit 1 ;;
esac

echo "wheel check: emdiffuse models"
"$work/venv/bin/emdiffuse" models | tee models.txt
for preset in demo-denoise superres-sstem isotropic-fibsem; do
  grep -q "^$preset " models.txt || { echo "wheel check: preset $preset not listed" >&2; exit 1; }
done

echo "wheel check: the README's first command (emdiffuse denoise on the bundled sample image, card defaults)"
sample="$("$py" -c 'from napari_emdiffuse.sample_data import SEM_NOISY; print(SEM_NOISY)')"
case "$sample" in "$installed/"*) ;; *) echo "wheel check: sample image $sample is not the installed one" >&2; exit 1 ;; esac
"$work/venv/bin/emdiffuse" denoise "$sample" -o restored.tif
for output in restored.tif restored_uncertainty.tif restored_aleatoric.tif restored_mask.tif; do
  test -s "$output" || { echo "wheel check: $output was not written" >&2; exit 1; }
done

echo "wheel check: napari discovers the plugin through npe2"
"$py" - "$installed" <<'EOF'
import sys
from pathlib import Path

from npe2 import PluginManager

pm = PluginManager.instance()
pm.discover()
manifest = pm.get_manifest("napari-emdiffuse")
source = Path(manifest._source_file).parent  # the napari.yaml that npe2 found through the entry point
assert source == Path(sys.argv[1]), f"npe2 found {source}, the wheel is installed in {sys.argv[1]}"
widgets = [w.display_name for w in manifest.contributions.widgets]
assert widgets == ["Restore", "Isotropic reconstruction", "Training"], widgets
samples = {s.key: s for s in manifest.contributions.sample_data}
assert sorted(samples) == ["fibsem", "sem_pair", "sstem"], sorted(samples)
for key, sample in samples.items():  # the sample data loads from the installed package (no Qt needed)
    layers = pm.get_command(sample.command).exec()
    assert layers and all(data.ndim >= 2 and data.size for data, *_ in layers), key
print(f"npe2: napari-emdiffuse {manifest.package_metadata.version}: widgets {widgets}, sample data {sorted(samples)}")
EOF
echo "wheel check: passed in ${SECONDS} s"
