"""Writes a YOLO dataset of N synthetic JPEGs (smooth gradients plus noise, so
they compress like photos) with label files, for the streaming benchmarks.

usage: make_dataset.py OUT N WIDTH HEIGHT
"""
import os
import sys

import cv2
import numpy as np

out, n, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
for split in ("train", "val"):
    os.makedirs(os.path.join(out, "images", split), exist_ok=True)
    os.makedirs(os.path.join(out, "labels", split), exist_ok=True)
ys, xs = np.mgrid[0:height, 0:width]
for i in range(n):
    split = "val" if i % 5 == 4 else "train"
    base = np.stack([(xs * (i % 7 + 1)) % 256, (ys * (i % 5 + 1)) % 256, (xs + ys + i) % 256], axis=-1)
    noise = rng.integers(0, 24, size=base.shape)
    image = ((base + noise) % 256).astype(np.uint8)
    name = f"bench_{i:06d}"
    cv2.imwrite(os.path.join(out, "images", split, name + ".jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    with open(os.path.join(out, "labels", split, name + ".txt"), "w") as f:
        for b in range(i % 4):
            f.write(f"{b % 3} {0.2 + 0.15 * b:.6f} {0.5:.6f} {0.1:.6f} {0.2:.6f}\n")
open(os.path.join(out, ".complete"), "w").close()
