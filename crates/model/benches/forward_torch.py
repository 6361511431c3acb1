"""Baseline for `cargo xtask bench model`: Ultralytics' yolov8n in PyTorch eager, CPU.

Usage: forward_torch.py --batch B [--size S] [--iters N] [--fuse]

Random weights (built from yolov8n.yaml, nothing downloaded), eval mode, no grad: the
same computation as `forward_bench tch`. `--fuse` first folds BatchNorm into the convs
as Ultralytics' predictor does. Last line: {"value": ms per batch, ...}, the median
after two warm-up passes.
"""

import argparse
import json
import os
import time

os.environ["YOLO_OFFLINE"] = "1"

import torch  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--size", type=int, default=640)
parser.add_argument("--iters", type=int, default=10)
parser.add_argument("--fuse", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
model = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
if args.fuse:
    model = model.fuse(verbose=False)
images = torch.rand(args.batch, 3, args.size, args.size)
timings = []
with torch.no_grad():
    for iteration in range(args.iters + 2):
        start = time.perf_counter()
        output = model(images)[0]
        float(output.sum())
        if iteration >= 2:
            timings.append((time.perf_counter() - start) * 1e3)
timings.sort()
print(json.dumps({"value": round(timings[len(timings) // 2], 3), "unit": "ms/batch", "higher_is_better": False}))
