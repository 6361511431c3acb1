"""The fair Python baseline: the official tritonclient over HTTP with binary
tensors, Ultralytics-style letterbox, numpy decoding and per-class NMS (cv2),
boxes drawn and each image written, one request at a time like our client with
--concurrency 1. With --rect, each image is letterboxed to the smallest multiple
of 32 that holds it (Ultralytics' auto letterbox, what our client sends a model
that takes any size); without it, to the 640x640 square.

usage: tritonclient_client.py [--rect] HOST:PORT MODEL OUT_DIR IMAGE...
"""
import os
import sys

import cv2
import numpy as np
import tritonclient.http as httpclient


def letterbox(image, rect, size=640, stride=32):
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    new_w, new_h = round(w * scale), round(h * scale)
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    if rect:
        pad_x, pad_y = ((size - new_w) % stride) / 2, ((size - new_h) % stride) / 2
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(pad_y - 0.1), round(pad_y + 0.1)
    left, right = round(pad_x - 0.1), round(pad_x + 0.1)
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return padded, scale, (left, top)


def main():
    args = sys.argv[1:]
    rect = args[:1] == ["--rect"]
    if rect:
        args = args[1:]
    url, model, out_dir, paths = args[0], args[1], args[2], args[3:]
    client = httpclient.InferenceServerClient(url=url)
    for path in paths:
        image = cv2.imread(path)
        padded, scale, (pad_x, pad_y) = letterbox(image, rect)
        tensor = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[np.newaxis].astype(np.float32) / 255.0
        infer_input = httpclient.InferInput("images", list(tensor.shape), "FP32")
        infer_input.set_data_from_numpy(tensor, binary_data=True)
        output = httpclient.InferRequestedOutput("output0", binary_data=True)
        result = client.infer(model, inputs=[infer_input], outputs=[output])
        predictions = result.as_numpy("output0")[0].T  # [anchors, 4 + classes]
        class_scores = predictions[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(class_ids)), class_ids]
        keep = scores > 0.25
        boxes, scores, class_ids = predictions[keep, :4], scores[keep], class_ids[keep]
        xyxy = np.empty_like(boxes)
        xyxy[:, 0] = (boxes[:, 0] - boxes[:, 2] / 2 - pad_x) / scale
        xyxy[:, 1] = (boxes[:, 1] - boxes[:, 3] / 2 - pad_y) / scale
        xyxy[:, 2] = (boxes[:, 0] + boxes[:, 2] / 2 - pad_x) / scale
        xyxy[:, 3] = (boxes[:, 1] + boxes[:, 3] / 2 - pad_y) / scale
        rects = [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in xyxy]
        indices = cv2.dnn.NMSBoxesBatched(rects, scores.tolist(), class_ids.tolist(), 0.25, 0.45) if rects else []
        for i in np.array(indices).flatten()[:300]:
            x1, y1, x2, y2 = xyxy[i].astype(int)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
            cv2.putText(image, f"{class_ids[i]} {scores[i]:.2f}", (x1, y1 - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        cv2.imwrite(os.path.join(out_dir, os.path.basename(path)), image)


if __name__ == "__main__":
    main()
