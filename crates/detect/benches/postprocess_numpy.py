"""The baseline of `cargo xtask bench detect`: YOLOv8 decode + NMS in vectorised numpy.

The same post-processing as cardet-detect (and Ultralytics' non_max_suppression):
best class per anchor, confidence > 0.25, class-aware NMS at IoU 0.45 through the
class offset trick, 300 detections at most, boxes mapped back through the letterbox
of 1280x720 into 640x640. The NMS is the usual numpy loop whose IoU step is
vectorised over the remaining boxes. Reads the tensor that
`postprocess_bench --dump PATH` wrote; prints the median milliseconds per call as
one JSON line.
"""

import json
import sys
import time

import numpy as np

N_CLASSES, N_ANCHORS = 80, 8400
CONF, IOU, MAX_DET, MAX_WH = 0.25, 0.45, 300, 7680.0
# TransformInfo for 1280x720 -> 640x640: 640x360 inside, 140 rows of padding on top.
SCALE_X, SCALE_Y, PAD_X, PAD_Y, SRC_W, SRC_H = 640 / 1280, 360 / 720, 0.0, 140.0, 1280, 720


def nms(boxes, scores, iou_threshold):
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(output):
    prediction = output[0]  # [84, 8400]
    class_scores = prediction[4:]
    best_class = class_scores.argmax(0)
    best_score = class_scores.max(0)
    mask = best_score > CONF
    cx, cy, w, h = prediction[0, mask], prediction[1, mask], prediction[2, mask], prediction[3, mask]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores, classes = best_score[mask], best_class[mask]
    offset = classes[:, None].astype(np.float32) * MAX_WH
    keep = nms(boxes + offset, scores, IOU)[:MAX_DET]
    kept = boxes[keep]
    kept[:, [0, 2]] = np.clip((kept[:, [0, 2]] - PAD_X) / SCALE_X, 0, SRC_W)
    kept[:, [1, 3]] = np.clip((kept[:, [1, 3]] - PAD_Y) / SCALE_Y, 0, SRC_H)
    return kept, scores[keep], classes[keep]


def main():
    path = sys.argv[1]
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    output = np.fromfile(path, dtype="<f4").reshape(1, 4 + N_CLASSES, N_ANCHORS)
    for _ in range(5):
        boxes, _, _ = postprocess(output)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        postprocess(output)
        times.append((time.perf_counter() - start) * 1e3)
    print(f"{len(boxes)} detections", file=sys.stderr)
    print(json.dumps({"value": float(np.median(times)), "unit": "ms", "higher_is_better": False}))


if __name__ == "__main__":
    main()
