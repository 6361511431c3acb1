"""The original project's client, as it was written (api/triton_client.py), looped
over images for the benchmark: cv2 resize to 640x640 with no letterbox, the whole
tensor as a JSON list, numpy post-processing, cv2.dnn.NMSBoxes, boxes drawn into
drawed.jpg. Only the loop and the URL/model arguments are new.

usage: original_client.py URL MODEL OUT_DIR IMAGE...
"""
import json
import sys

import cv2
import numpy as np
import requests


def main():
    url, model, out_dir, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    for path in paths:
        image = cv2.imread(path)
        original_h, original_w = image.shape[:2]
        img = cv2.resize(image, (640, 640))
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = img.astype(np.float32) / 255.0
        img = np.transpose(img, (2, 0, 1))[np.newaxis, ...]
        payload = {
            "inputs": [
                {"name": "images", "shape": [1, 3, 640, 640], "datatype": "FP32", "data": img.tolist()}
            ]
        }
        response = requests.post(f"{url}/v2/models/{model}/infer", data=json.dumps(payload))
        response.raise_for_status()
        output = response.json()["outputs"][0]
        predictions = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
        predictions = np.transpose(predictions[0], (1, 0))  # [anchors, 4 + classes]
        scores = predictions[:, 4:].max(axis=1)
        keep = scores > 0.25
        boxes, scores = predictions[keep, :4], scores[keep]
        class_ids = predictions[keep, 4:].argmax(axis=1)
        x_scale, y_scale = original_w / 640, original_h / 640
        rects = []
        for cx, cy, w, h in boxes:
            rects.append([int((cx - w / 2) * x_scale), int((cy - h / 2) * y_scale), int(w * x_scale), int(h * y_scale)])
        indices = cv2.dnn.NMSBoxes(rects, scores.tolist(), 0.25, 0.45)
        for i in np.array(indices).flatten():
            x, y, w, h = rects[i]
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
            cv2.putText(image, f"{class_ids[i]}:{scores[i]:.2f}", (x, y - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        cv2.imwrite(f"{out_dir}/drawed.jpg", image)


if __name__ == "__main__":
    main()
