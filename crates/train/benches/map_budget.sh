#!/usr/bin/env bash
# mAP@0.5 on a synthetic validation split after a fixed wall-clock training budget:
# `mwt train` against `yolo train` (Ultralytics), same data, image size, batch,
# budget and defaults, both from scratch (no pretrained weights can be fetched here).
# Both best checkpoints are scored by the same evaluator, `mwt val` (Ultralytics'
# best.pt is converted by `cargo xtask import-weights` first), so only training differs.
#   ours | ultralytics    one side; prints the harness's JSON line last
# Settings (environment): CARDET_BENCH_TRAIN_MINUTES (default 12),
# CARDET_BENCH_TRAIN_IMAGES (500), CARDET_BENCH_TRAIN_IMGSZ (256),
# CARDET_BENCH_TRAIN_BATCH (16), CARDET_BENCH_TRAIN_THREADS (torch threads, default
# half the cores: `cargo xtask bench train` runs both sides at the same time, so load
# from anything else hits both alike).
set -euo pipefail
cd "$(dirname "$0")/../../.."
SIDE="${1:?usage: map_budget.sh ours|ultralytics}"
MINUTES="${CARDET_BENCH_TRAIN_MINUTES:-12}"
IMAGES="${CARDET_BENCH_TRAIN_IMAGES:-500}"
IMGSZ="${CARDET_BENCH_TRAIN_IMGSZ:-256}"
BATCH="${CARDET_BENCH_TRAIN_BATCH:-16}"
THREADS="${CARDET_BENCH_TRAIN_THREADS:-$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))}"
HOME_DIR="${CARDET_HOME:-$HOME/.cache/cardet}"
PYTHON="$HOME_DIR/venv/bin/python"
TARGET="${CARGO_TARGET_DIR:-target}"
WORK="$HOME_DIR/bench/train-map"
DATA="$WORK/data-$IMAGES-$IMGSZ"
RUN="$WORK/runs/$SIDE-$(date +%s)"
mkdir -p "$WORK/runs"

# Both sides start together: one builds and writes the dataset, the other waits.
exec 9>"$WORK/.lock"
flock 9
cargo build --quiet --release -p mwt >&2
MWT="$TARGET/release/mwt"
if [ ! -f "$DATA/.complete" ]; then
  rm -rf "$DATA"
  cargo xtask synth --out "$DATA" --images "$IMAGES" --seed 7 --size "${IMGSZ}x${IMGSZ}" >&2
  touch "$DATA/.complete"
fi
flock -u 9
HOURS=$(awk -v m="$MINUTES" 'BEGIN { printf "%.5f", m / 60 }')
export OMP_NUM_THREADS="$THREADS"

case "$SIDE" in
  ours)
    "$MWT" train --data "$DATA/data.yaml" --model n --imgsz "$IMGSZ" --batch "$BATCH" \
      --epochs 300 --time "$HOURS" --workers 2 --project "$RUN" --name train \
      --no-mlflow --json >"$RUN.json" 2>"$RUN.log"
    BEST=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["best"])' "$RUN.json")
    ;;
  ultralytics)
    mkdir -p "$RUN"
    # Offline, no plots (they would fetch a font), no AMP check (it would fetch weights).
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$RUN" "$PYTHON" - "$DATA/data.yaml" "$IMGSZ" "$BATCH" "$HOURS" "$RUN" \
      >"$RUN.log" 2>&1 <<'EOF'
import sys
from ultralytics import YOLO, settings

settings.update({"mlflow": False})  # else it writes ./mlflow.db into the clone

data, imgsz, batch, hours, run = sys.argv[1:6]
YOLO("yolov8n.yaml").train(
    data=data, imgsz=int(imgsz), batch=int(batch), epochs=300, time=float(hours),
    workers=2, device="cpu", project=run, name="train", exist_ok=True,
    pretrained=False, amp=False, plots=False, verbose=False,
)
EOF
    cargo xtask import-weights --pt "$RUN/train/weights/best.pt" \
      --out "$RUN/train/weights/best.safetensors" --scale n >&2
    BEST="$RUN/train/weights/best.safetensors"
    ;;
  *)
    echo "map_budget.sh: unknown side $SIDE (ours or ultralytics)" >&2
    exit 2
    ;;
esac

"$MWT" val --model "$BEST" --data "$DATA/data.yaml" --imgsz "$IMGSZ" --json >"$RUN.val.json"
"$PYTHON" - "$RUN.val.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
print(json.dumps({"value": report["evaluation"]["map50"], "unit": "mAP@0.5", "higher_is_better": True}))
EOF
