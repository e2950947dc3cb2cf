#!/usr/bin/env bash
# Everything this project measures on one CUDA GPU, in one go, written under OUT (issue 18):
#
#   bash benchmarks/gpu_check.sh OUT [--dry-run] [--only STEP,STEP] [--train-minutes M]
#                                    [--budget SECONDS] [--bundle DIR]
#
# Steps, each in its own time limit, writing OUT/STEP.log and its own figures; a step that fails
# or runs out of time is recorded in OUT/summary.tsv and the others go on; a total time guard
# (--budget, default 450 s: under 8 minutes with start-up) skips what no longer fits.
#   env              the machine, torch, the GPU; which packages are missing (env.json, nvidia-smi.txt)
#   tests_device     the tests that take a device, on CUDA (EMDIFFUSE_TEST_DEVICE=cuda; junit xml)
#   forward          forward time of a 256x256 tile, demo and published-size networks: fp32, bf16,
#                    bf16 as a replayed CUDA graph; evaluations/s and % of the bf16 peak (forward.json)
#   forward_compile  the demo network with torch.compile, default and reduce-overhead (CUDA graphs) modes
#   megapixel        seconds per megapixel at the card's settings, 2048^2 and 4096^2, fp32 and bf16
#   recipe           the EMDiffuse recipe against the default on the demo pair's val rows, bf16 and
#                    fp32 defaults: ratio, PSNR, uncertainty ranking (recipe.json, recipe_fp32.json)
#   batch            the largest 256x256 tile batch that fits, demo and published networks; the
#                    engine's out-of-memory fallback under a memory limit (batch.json)
#   amp              a short training run of the published-size network, fp32 against AMP (amp.json)
#   tests_all        the whole suite with the device set to CUDA (tests that take one run on it)
#   train            with --train-minutes M: each bundled preset trained M minutes at the size the
#                    GPU affords (weights/train_*.py --gpu-budget), slimmed to fp16 (OUT/train/NAME)
# --dry-run does the same on the CPU with a tiny random model and tiny sizes in under 3 minutes
# (forward_compile and tests_all are skipped there: compiling takes minutes on a CPU, and the
# suite is CI's). --bundle DIR packs OUT into DIR/gpu_check.tgz.NN parts of at most 15 MiB (what
# the device tool brings back). GPU_CHECK_FAIL=STEP makes that step fail (to test the recording).
set -u

usage() { echo "usage: $0 OUT [--dry-run] [--only STEP,STEP] [--train-minutes M] [--budget SECONDS] [--bundle DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DRY=0; ONLY=""; TRAIN_MIN=0; BUDGET=""; BUNDLE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --only) ONLY=",$2,"; shift ;;
    --train-minutes) TRAIN_MIN=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --bundle) BUNDLE=$2; shift ;;
    *) usage ;;
  esac
  shift
done
if [ -z "$BUDGET" ]; then
  if [ $DRY = 1 ]; then BUDGET=170; else BUDGET=$(awk -v m="$TRAIN_MIN" 'BEGIN { print int(450 + 3 * 60 * m + 30) }'); fi
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$REPO:$REPO/weights:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
START=$(date +%s)
SUMMARY="$OUT/summary.tsv"
printf 'step\tstatus\tseconds\n' > "$SUMMARY"

# Packages the GPU machine's image lacks travel as wheels in .whl/ (benchmarks/gpu_wheels.sh).
if [ $DRY = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

if [ $DRY = 1 ]; then
  DEVICE=cpu
  # one thread: on a busy CPU, torch's threads wait on each other and tiny networks run 10-100x slower
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
else
  DEVICE=cuda
fi

# step NAME MAX_SECONDS COMMAND...: run it within its limit and what is left of the budget.
step() {
  local name=$1 max=$2; shift 2
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then return 0; fi
  local now left limit t0 rc status
  now=$(date +%s); left=$((BUDGET - (now - START) - 5))
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped (total time)\t0\n' "$name" >> "$SUMMARY"; echo "== $name: skipped (total time)"; return 0
  fi
  limit=$(( max < left ? max : left ))
  echo "== $name (at most ${limit} s)"
  t0=$(date +%s)
  if [ "${GPU_CHECK_FAIL:-}" = "$name" ]; then
    echo "GPU_CHECK_FAIL=$name: failing on purpose" > "$OUT/$name.log"; rc=1
  else
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  fi
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$status" $(( $(date +%s) - t0 )) >> "$SUMMARY"
  echo "   $status; last lines:"; tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

skip() {
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$1,"* ]]; then return 0; fi
  printf '%s\tskipped (%s)\t0\n' "$1" "$2" >> "$SUMMARY"
}

if [ $DRY = 1 ]; then
  MODEL="$OUT/tiny-model"
  $PY benchmarks/gpu_parts.py tiny-model "$MODEL" > "$OUT/tiny-model.log" 2>&1 || echo "tiny model: failed (see tiny-model.log)"
  MODEL_ARG=(--model "$MODEL")
else
  MODEL_ARG=()
fi

step env 30 bash -c "$PY benchmarks/gpu_parts.py env '$OUT/env.json' && { nvidia-smi > '$OUT/nvidia-smi.txt' 2>&1 || true; }"
step tests_device 90 env EMDIFFUSE_TEST_DEVICE=$DEVICE $PY -m pytest -q -p no:cacheprovider \
  tests/test_device.py "tests/test_speed.py::test_one_sample_with_the_posterior_mean_evaluates_only_the_first_level" \
  --junitxml "$OUT/tests_device.xml"
if [ $DRY = 1 ]; then
  step forward 60 $PY benchmarks/forward_time.py --device cpu --batch 1 --repeats 1 --size 64 --only demo \
    "${MODEL_ARG[@]}" --graphs --json "$OUT/forward.json"
  skip forward_compile "dry run: compiling takes minutes on a CPU"
  step megapixel 60 $PY benchmarks/megapixel.py --device cpu --sizes 256 --repeats 1 --precision fp32 bf16 \
    "${MODEL_ARG[@]}" --json "$OUT/megapixel.json"
  step recipe 90 $PY benchmarks/recipe_vs_default.py --device cpu "${MODEL_ARG[@]}" --columns 0:64 --timed-steps 2 \
    --rounds 1 --json "$OUT/recipe.json"
  step batch 60 $PY benchmarks/gpu_parts.py batch "$OUT/batch.json" --dry-run "${MODEL_ARG[@]}"
  step amp 60 $PY benchmarks/gpu_parts.py amp "$OUT/amp.json" --dry-run
  skip tests_all "dry run: the suite is CI's"
else
  step forward 75 $PY benchmarks/forward_time.py --device cuda --batch 1 16 64 --repeats 10 --graphs --json "$OUT/forward.json"
  step forward_compile 100 $PY benchmarks/forward_time.py --device cuda --batch 16 --repeats 10 --compile --only demo \
    --json "$OUT/forward_compile.json"
  step megapixel 45 $PY benchmarks/megapixel.py --device cuda --sizes 2048 4096 --repeats 2 --precision bf16 fp32 \
    --json "$OUT/megapixel.json"
  step recipe 90 bash -c "$PY benchmarks/recipe_vs_default.py --device cuda --timed-steps 100 --rounds 3 \
    --json '$OUT/recipe.json' && $PY benchmarks/recipe_vs_default.py --device cuda --timed-steps 100 --rounds 3 \
    --precision fp32 --json '$OUT/recipe_fp32.json'"
  step batch 60 $PY benchmarks/gpu_parts.py batch "$OUT/batch.json"
  step amp 45 $PY benchmarks/gpu_parts.py amp "$OUT/amp.json"
  XDIST=()
  if $PY -c "import xdist" 2>/dev/null; then XDIST=(-n 8); fi
  step tests_all 150 env EMDIFFUSE_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    "${XDIST[@]}" --junitxml "$OUT/tests_all.xml" tests
fi

if awk -v m="$TRAIN_MIN" 'BEGIN { exit !(m > 0) }' || { [ $DRY = 1 ] && [ -z "$ONLY" ]; }; then
  minutes=$TRAIN_MIN
  if [ $DRY = 1 ] && ! awk -v m="$TRAIN_MIN" 'BEGIN { exit !(m > 0) }'; then minutes=0.1; fi
  limit=$(awk -v m="$minutes" 'BEGIN { print int(m * 60 * 1.5 + 60) }')
  presets="demo-denoise"
  [ $DRY = 0 ] && presets="demo-denoise superres-sstem isotropic-fibsem"
  for preset in $presets; do
    case $preset in
      demo-denoise) cmd=($PY weights/train_demo_denoise.py --gpu-budget "$minutes" --run "$OUT/train/$preset") ;;
      superres-sstem) cmd=($PY weights/train_superres.py train --gpu-budget "$minutes" --run "$OUT/train/$preset") ;;
      isotropic-fibsem) cmd=($PY weights/train_isotropic.py train --gpu-budget "$minutes" --run "$OUT/train/$preset") ;;
    esac
    step "train_$preset" "$limit" bash -c "$(printf '%q ' "${cmd[@]}") && $PY benchmarks/gpu_parts.py slim '$OUT/train/$preset'"
  done
fi

total=$(( $(date +%s) - START ))
echo "== done in ${total} s (budget ${BUDGET} s); summary:"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
printf 'total\t%s\t%s\n' "$( [ $total -le $BUDGET ] && echo 'within budget' || echo 'over budget')" "$total" >> "$SUMMARY"

if [ -n "$BUNDLE" ]; then
  mkdir -p "$BUNDLE"
  tar czf - -C "$(dirname "$OUT")" "$(basename "$OUT")" | split -b 15m -d - "$BUNDLE/gpu_check.tgz."
  ls -l "$BUNDLE"
fi
exit 0
