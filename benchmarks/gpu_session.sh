#!/usr/bin/env bash
# The GPU checks of one device call (benchmarks/results/gpu.md and scale_gpu.md say how it was called):
#   1. one uncapped fold of logreg with the Keras solver on 1,280,000 x 2048 features of 1,000 classes
#      (bench_scale.py's fold-keras variant, under JAX), into $OUT/scale_gpu.json;
#   2. the extraction table (bench_gpu.py) for JAX and PyTorch at the GPU default (mixed precision, XLA)
#      and plain float32 without XLA, into $OUT/gpu.md and gpu.json.
# Needs benchmarks/wheels and benchmarks/gpu-data from `bash benchmarks/gpu_wheelset.sh --data 4000`.
set -u
: "${OUT:?set OUT to the folder that comes back}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    benchmarks/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
{ nvidia-smi -L; nproc; uptime; } | tee "$OUT/device.txt"
KERAS_BACKEND=jax timeout "${SCALE_SECONDS:-200}" python3 benchmarks/bench_scale.py --child fold-keras \
    --rows 1280000 --fold-iters 200 >"$OUT/scale_gpu.json" 2>"$OUT/scale_gpu.log"
echo "scale: exit $?"; cat "$OUT/scale_gpu.json"; tail -3 "$OUT/scale_gpu.log"
python3 benchmarks/bench_gpu.py --out "$OUT" --backends jax,torch --settings mixed:on,float32:off \
    --cell-timeout 90 --budget "${GPU_SECONDS:-320}"
uptime | tee -a "$OUT/device.txt"
