"""What compressed answers cost, against a running `serve` with YOLOv8n (640) loaded.

    python crates/serve/benches/compression_cost.py HTTP_PORT [ROUNDS]

1. zlib at level 1 (what `serve` uses) and level 6 (zlib's default) on YOLOv8n's
   answer to one image, binary and as JSON text: time to compress and what is left.
2. A Python `requests` client, which sends `Accept-Encoding: gzip, deflate` unless
   told otherwise, timing binary batch-1 requests with its default header and with
   `Accept-Encoding: identity`, interleaved, ROUNDS each (30 by default).
Used for BENCHMARKS.md's entry on compressed bodies.
"""
import json
import statistics
import sys
import time
import zlib

import numpy as np
import requests


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, (time.perf_counter() - started) * 1e3


def main():
    port = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    url = f"http://127.0.0.1:{port}/v2/models/yolov8n/infer"
    image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    header = json.dumps({
        "inputs": [{"name": "images", "shape": [1, 3, 640, 640], "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes}}],
        "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
    }).encode()
    binary = header + image.tobytes()
    binary_headers = {"Inference-Header-Content-Length": str(len(header))}
    as_json = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 640, 640], "datatype": "FP32",
                                      "data": image.flatten().tolist()}]}).encode()
    session = requests.Session()
    plain = {"Accept-Encoding": "identity"}
    answers = {
        "binary": session.post(url, data=binary, headers={**binary_headers, **plain}).content,
        "json": session.post(url, data=as_json, headers=plain).content,
    }
    for name, answer in answers.items():
        for level in (1, 6):
            packed, ms = timed(lambda: zlib.compress(answer, level))
            _, back_ms = timed(lambda: zlib.decompress(packed))
            print(f"{name} answer {len(answer)} bytes, zlib level {level}: {ms:.1f} ms, "
                  f"{len(packed) / len(answer):.1%} left, decompress {back_ms:.1f} ms")

    times = {"gzip, deflate": [], "identity": []}
    for _ in range(rounds):
        for accept, samples in times.items():
            response, ms = timed(lambda: session.post(
                url, data=binary, headers={**binary_headers, "Accept-Encoding": accept}))
            response.raise_for_status()
            samples.append(ms)
    for accept, samples in times.items():
        print(f"requests, binary batch 1, Accept-Encoding {accept!r}: "
              f"median {statistics.median(samples):.1f} ms over {rounds}")


if __name__ == "__main__":
    main()
