"""Ultralytics' own RandomHSV and RandomPerspective on an image we give it, with the
random draws replaced by the values the Rust side drew, as the reference for
tests/ultralytics_reference.rs.

    hsv IN.png OUT.png R_H R_S R_V
    perspective IN.png OUT.png REQUEST.json   (prints the kept boxes as JSON)
"""

import json
import sys

import cv2
import numpy as np

from ultralytics.data.augment import RandomHSV, RandomPerspective
from ultralytics.utils.instance import Instances


def hsv(source: str, target: str, gains: list[float]) -> None:
    image = cv2.imread(source)  # BGR, as Ultralytics loads it
    # RandomHSV draws r = uniform(-1, 1, 3) * gains; with unit gains r is the draw.
    np.random.uniform = lambda *args, **kwargs: np.array(gains, dtype=np.float64)
    labels = RandomHSV(hgain=1.0, sgain=1.0, vgain=1.0).apply_image({"img": image})
    cv2.imwrite(target, labels["img"])


def perspective(source: str, target: str, request_path: str) -> None:
    with open(request_path) as request_file:
        request = json.load(request_file)
    image = cv2.imread(source)
    boxes = np.array(request["boxes"], dtype=np.float32).reshape(-1, 4)
    transform = RandomPerspective(perspective=request["perspective"], size=tuple(request["size"]))
    labels = {
        "img": image,
        "cls": np.arange(len(boxes), dtype=np.float32).reshape(-1, 1),
        "instances": Instances(boxes, bbox_format="xyxy", normalized=False),
    }
    params = {
        "M": np.array(request["matrix"], dtype=np.float64),
        "scale": request["scale"],
        "orig_shape": image.shape[:2],
        "size": tuple(request["size"]),
    }
    labels = transform.apply_image(labels, params)
    labels = transform.apply_instances(labels, params)
    cv2.imwrite(target, labels["img"])
    kept = labels["cls"].flatten().astype(int).tolist()
    print(json.dumps({"kept": kept, "boxes": labels["instances"].bboxes.tolist()}))


if __name__ == "__main__":
    command, source, target, *rest = sys.argv[1:]
    if command == "hsv":
        hsv(source, target, [float(value) for value in rest])
    else:
        perspective(source, target, rest[0])
