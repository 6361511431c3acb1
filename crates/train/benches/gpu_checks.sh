#!/usr/bin/env bash
# The CUDA checks of `mwt` (issues 7 and 8) on a GPU machine that has PyTorch but
# no Rust toolchain: everything runs from binaries built elsewhere against the
# same torch version (see BENCHMARKS.md "train-gpu" for how they were built).
#
#   gpu_checks.sh BIN_DIR [WHEEL_DIR]
#
# BIN_DIR holds: mwt (built with --features cardet-c10d/cuda), train_step_bench
# (cardet-train's example), cuda_tests (cardet-train's `cuda` test binary),
# nccl_tests (cardet-c10d's `nccl` test binary, --features cuda) and synth
# (cardet-detect's example), and optionally nccl_allreduce (cardet-c10d's bench,
# --features cuda). WHEEL_DIR holds the ultralytics and ultralytics-thop
# wheels when the machine's Python lacks them. Each step's output goes to
# /tmp/gpu-checks; $OUT (default: that folder) gets summary.txt and logs.tar.gz of
# it all. The last lines printed are the summary. CHECKS (default
# "tests train step nccl") picks the sections to run; STEP_ROUNDS (default 3) the
# rounds of the train-step comparison.
set -uo pipefail
BIN="$(realpath "${1:?usage: gpu_checks.sh BIN_DIR [WHEEL_DIR]}")"
WHEELS="${2:-}"
RESULTS="${OUT:-/tmp/gpu-checks}"
OUT=/tmp/gpu-checks
mkdir -p "$OUT" "$RESULTS"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
# Runs a named step with its stdout in $OUT/NAME.log and stderr in $OUT/NAME.err,
# and records pass or fail.
step() {
  local name="$1"
  shift
  local started=$SECONDS
  if "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"; then
    note "PASS $name ($((SECONDS - started)) s)"
  else
    note "FAIL $name ($((SECONDS - started)) s): $(tail -n 4 "$OUT/$name.log" "$OUT/$name.err" | tr '\n' ' ' | cut -c1-600)"
  fi
}

nvidia-smi -L | tee -a "$SUMMARY"
TORCH_LIB="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' | tee -a "$SUMMARY"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The Python baseline runs under $CARDET_HOME/venv/bin/python, as on a dev machine.
export CARDET_HOME="${CARDET_HOME:-/tmp/cardet-home}"
SITE="$CARDET_HOME/site"
mkdir -p "$CARDET_HOME/venv/bin" "$SITE"
if [ -n "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl
fi
cat >"$CARDET_HOME/venv/bin/python" <<EOF
#!/bin/sh
PYTHONPATH="$SITE\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 "\$@"
EOF
chmod +x "$CARDET_HOME/venv/bin/python"

CHECKS="${CHECKS:-tests train step nccl}"
wants() { [[ " $CHECKS " == *" $1 "* ]]; }

step info "$BIN/mwt" info --json
cat "$OUT/info.log"
if wants tests; then
  step cuda_tests "$BIN/cuda_tests" --ignored --test-threads 1
  step nccl_tests "$BIN/nccl_tests" --ignored --test-threads 1
fi

DATA=/tmp/synth-320
RUNS=/tmp/gpu-runs
if wants train; then
step synth "$BIN/synth" --out "$DATA" --images 400 --seed 5 --size 320x320
for mode in fp32 amp; do
  extra=()
  [ "$mode" = amp ] && extra=(--amp)
  step "train_$mode" "$BIN/mwt" train --data "$DATA/data.yaml" --model n --imgsz 320 \
    --batch 16 --epochs 30 --workers 12 --device cuda --project "$RUNS" --name "$mode" \
    --no-mlflow --json "${extra[@]}"
  BEST="$RUNS/$mode/weights/best.safetensors"
  step "val_$mode" "$BIN/mwt" val --model "$BEST" --data "$DATA/data.yaml" --imgsz 320 \
    --device cuda --json
done
step predict_cuda "$BIN/mwt" predict --model "$RUNS/fp32/weights/best.safetensors" \
  --source "$DATA/images/val" --imgsz 320 --device cuda --batch 8 --no-draw \
  --out /tmp/gpu-predict --json
step predict_cpu "$BIN/mwt" predict --model "$RUNS/fp32/weights/best.safetensors" \
  --source "$DATA/images/val" --imgsz 320 --device cpu --batch 8 --no-draw \
  --out /tmp/cpu-predict --json
python3 - "$OUT/predict_cuda.log" "$OUT/predict_cpu.log" <<'EOF' | tee -a "$SUMMARY"
import json, sys
def load(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])
try:
    cuda, cpu = load(sys.argv[1]), load(sys.argv[2])
    print("predict cuda vs cpu: same JSON keys", sorted(cuda) == sorted(cpu),
          "| cuda", json.dumps(cuda)[:160])
except Exception as error:  # the logs above say why
    print("predict comparison failed:", error)
EOF
fi

# One training step, ours against Ultralytics eager, alternating (bench train --gpu).
if wants step; then
for round in $(seq "${STEP_ROUNDS:-3}"); do
  for side in ultralytics ours; do
    step "step_${side}_$round" "$BIN/train_step_bench" --side "$side" --steps 30 --device cuda
    tail -n 1 "$OUT/step_${side}_$round.log" | sed "s/^/$side round $round: /" | tee -a "$SUMMARY"
  done
done
# Where each side's step goes: a wait after each phase (separate runs, not timed above).
for side in ultralytics ours; do
  CARDET_STEP_BREAKDOWN=1 step "breakdown_$side" "$BIN/train_step_bench" --side "$side" \
    --steps 30 --device cuda
  grep breakdown "$OUT/breakdown_$side.err" | tee -a "$SUMMARY"
done
fi
if wants nccl && [ -x "$BIN/nccl_allreduce" ]; then
  step nccl_allreduce "$BIN/nccl_allreduce" --rounds 5
  tail -n 4 "$OUT/nccl_allreduce.log" | tee -a "$SUMMARY"
fi
for mode in fp32 amp; do
  if [ -f "$OUT/train_$mode.log" ]; then
    echo "train $mode: $(tail -c 500 "$OUT/train_$mode.log" | tr '\n' ' ')" | tee -a "$SUMMARY"
    echo "val $mode: $(tail -c 400 "$OUT/val_$mode.log" | tr '\n' ' ')" | tee -a "$SUMMARY"
  fi
done
for mode in fp32 amp; do cp "$RUNS/$mode/results.csv" "$OUT/results_$mode.csv" 2>/dev/null; done
tar czf /tmp/gpu-logs.tar.gz -C /tmp gpu-checks
if [ "$RESULTS" != "$OUT" ]; then
  cp "$SUMMARY" /tmp/gpu-logs.tar.gz "$RESULTS/"
fi
echo "=== summary"
cat "$SUMMARY"
