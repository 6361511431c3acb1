"""Baseline for `cargo xtask bench model`: Ultralytics' own ONNX export of yolov8n in
ONNX Runtime (Python), CPU, 2 intra-op threads.

Usage: forward_onnx.py --batch B [--size S] [--iters N]

Ultralytics exports with its defaults (static shapes at batch B, simplify off because
onnxslim is not installed); the export is cached under target/model-bench/. Last line:
{"value": ms per batch, ...}, the median after two warm-up passes.
"""

import argparse
import json
import os
import shutil
import time

os.environ["YOLO_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--size", type=int, default=640)
parser.add_argument("--iters", type=int, default=10)
args = parser.parse_args()

cache = os.path.join("target", "model-bench")
path = os.path.join(cache, f"ultralytics_yolov8n_b{args.batch}_{args.size}.onnx")
if not os.path.exists(path):
    import torch
    from ultralytics import YOLO

    os.makedirs(cache, exist_ok=True)
    torch.manual_seed(0)
    exported = YOLO("yolov8n.yaml").export(
        format="onnx", imgsz=args.size, batch=args.batch, simplify=False, verbose=False
    )
    shutil.move(exported, path)

options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
images = np.random.default_rng(0).random((args.batch, 3, args.size, args.size), dtype=np.float32)
timings = []
for iteration in range(args.iters + 2):
    start = time.perf_counter()
    output = session.run(["output0"], {"images": images})[0]
    float(output.sum())
    if iteration >= 2:
        timings.append((time.perf_counter() - start) * 1e3)
timings.sort()
print(json.dumps({"value": round(timings[len(timings) // 2], 3), "unit": "ms/batch", "higher_is_better": False}))
