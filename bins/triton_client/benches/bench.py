"""End-to-end client benchmark against one `serve`: images/s for our
triton_client, the original project's client (original_client.py) and
tritonclient with the same pre/post in Python (tritonclient_client.py), all
sequential (one request in flight), interleaved over rounds, plus our client's
CPU time per image. Every client decodes, letterboxes (or resizes), infers,
decodes + NMS and draws every image (the "no drawing" rows skip the drawing). The
"shared memory" rows pass the tensors through /dev/shm regions (Triton's system
shared-memory extension) instead of the socket.

The model takes any input size (dims -1, as Ultralytics exports it with
dynamic=True), so our client and the tritonclient one letterbox each 1280x720 frame
to 640x384, as Ultralytics predicts; the original resizes to 640x640 as it always
did, and one row of ours does the same square (--no-rect) to show what the
rectangle is worth.

A second `serve` runs beside the first, configured for throughput (two model
instances of one ONNX Runtime thread each): our client with 4 requests in flight,
and the original client, run against it too. The original can have only one
request in flight, so each client's best serve is compared in the last line.

usage: bench.py --serve PATH --client PATH --onnx MODEL.onnx [--images 40] [--rounds 3]
"""
import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder, n):
    """1280x720 JPEGs: smooth gradients with boxes, like a street frame in size and entropy."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(n):
        y, x = np.mgrid[0:720, 0:1280]
        image = np.stack([(x / 5 + index) % 256, (y / 3) % 256, ((x + y) / 7) % 256], axis=-1).astype(np.uint8)
        for _ in range(12):
            x1, y1 = rng.integers(0, 1100), rng.integers(0, 600)
            color = [int(c) for c in rng.integers(0, 255, 3)]
            cv2.rectangle(image, (int(x1), int(y1)), (int(x1 + rng.integers(40, 180)), int(y1 + rng.integers(30, 120))), color, -1)
        image = cv2.GaussianBlur(image, (3, 3), 0)
        path = os.path.join(folder, f"frame_{index:04d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def timed(command):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def place_model(onnx, model, work, instances):
    """Puts the ONNX file into version 1 of `model` (a hard link where it can) and
    writes its config.pbtxt."""
    os.makedirs(os.path.join(model, "1"), exist_ok=True)
    target = os.path.join(model, "1", "model.onnx")
    if os.stat(onnx).st_dev == os.stat(work).st_dev:
        os.link(onnx, target)
    else:
        subprocess.run(["cp", onnx, target], check=True)
    write_config(model, instances)


def write_config(model, instances):
    with open(os.path.join(model, "config.pbtxt"), "w") as f:
        f.write('name: "yolov8n"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
                'input [ { name: "images" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] } ]\n'
                'output [ { name: "output0" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n'
                f'instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n')


def start_serve(binary, repository, extra):
    """Starts `serve` on free ports and waits until the model is ready."""
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen([binary, "--model-repository", repository,
                                "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                                "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                                "--allow-metrics", "false", "--allow-shared-memory", *extra],
                               stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/yolov8n/ready").status == 200:
                return process, http_port
        except Exception:
            time.sleep(0.1)
    process.terminate()
    sys.exit(f"serve ({repository}) did not become ready")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="client-bench-")
    model = os.path.join(work, "repo", "yolov8n")
    place_model(args.onnx, model, work, instances=1)
    throughput_model = os.path.join(work, "repo-throughput", "yolov8n")
    place_model(args.onnx, throughput_model, work, instances=2)
    images_dir = os.path.join(work, "images")
    os.makedirs(images_dir)
    paths = make_images(images_dir, args.images)
    serve, http_port = start_serve(args.serve, os.path.join(work, "repo"), [])
    throughput_serve, throughput_port = start_serve(args.serve, os.path.join(work, "repo-throughput"),
                                                    ["--intra-op-threads", "1"])
    url = f"http://127.0.0.1:{http_port}"
    throughput_url = f"http://127.0.0.1:{throughput_port}"
    out = os.path.join(work, "out")
    os.makedirs(out)
    python = sys.executable
    clients = {
        "ours (HTTP binary, concurrency 1)": [args.client, "--url", url, "--model", "yolov8n", "--concurrency", "1",
                                              "--no-progress", "--out", out, "--jsonl", os.devnull, *paths],
        "ours, square 640x640 (--no-rect, concurrency 1)": [
            args.client, "--url", url, "--model", "yolov8n", "--concurrency", "1", "--no-rect",
            "--no-progress", "--out", out, "--jsonl", os.devnull, *paths],
        "ours (HTTP binary, concurrency 4)": [args.client, "--url", url, "--model", "yolov8n", "--concurrency", "4",
                                              "--no-progress", "--out", out, "--jsonl", os.devnull, *paths],
        "ours, no drawing (concurrency 1)": [args.client, "--url", url, "--model", "yolov8n", "--concurrency", "1",
                                             "--no-progress", "--jsonl", os.devnull, *paths],
        "ours, shared memory (concurrency 1)": [args.client, "--url", url, "--model", "yolov8n", "--concurrency", "1",
                                                "--shared-memory", "--no-progress", "--out", out, "--jsonl", os.devnull, *paths],
        "ours, shared memory, no drawing (concurrency 1)": [args.client, "--url", url, "--model", "yolov8n",
                                                            "--concurrency", "1", "--shared-memory", "--no-progress",
                                                            "--jsonl", os.devnull, *paths],
        "tritonclient (binary) + Python pre/post": [python, os.path.join(HERE, "tritonclient_client.py"), "--rect",
                                                    f"127.0.0.1:{http_port}", "yolov8n", out, *paths],
        "original client (JSON list, numpy)": [python, os.path.join(HERE, "original_client.py"), url, "yolov8n", out, *paths],
        "ours (HTTP binary, concurrency 4), serve 2 instances x 1 thread": [
            args.client, "--url", throughput_url, "--model", "yolov8n", "--concurrency", "4",
            "--no-progress", "--out", out, "--jsonl", os.devnull, *paths],
        "original client, serve 2 instances x 1 thread": [
            python, os.path.join(HERE, "original_client.py"), throughput_url, "yolov8n", out, *paths],
    }
    try:
        # Warm-up: the first requests pay for ONNX Runtime's allocations.
        timed(clients["ours (HTTP binary, concurrency 1)"])
        timed(clients["ours (HTTP binary, concurrency 4), serve 2 instances x 1 thread"])
        walls = {name: [] for name in clients}
        cpus = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, command in clients.items():
                wall, cpu = timed(command)
                walls[name].append(wall)
                cpus[name].append(cpu)
        rates = {name: args.images / statistics.median(values) for name, values in walls.items()}
        ours = rates["ours (HTTP binary, concurrency 1)"]
        print(f"{args.images} images 1280x720 JPEG, {args.rounds} interleaved rounds, median wall time; "
              f"model yolov8n (random weights) at 640 (ours and tritonclient: 640x384, see above), "
              f"serve on the same machine\n")
        print("| client | images/s | ours (concurrency 1) is |")
        print("|---|---:|---:|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.2f} | {ours / rate:.2f}x |")
        original = "original client (JSON list, numpy)"
        best_ours = max(rates["ours (HTTP binary, concurrency 1)"], rates["ours (HTTP binary, concurrency 4)"],
                        rates["ours (HTTP binary, concurrency 4), serve 2 instances x 1 thread"])
        best_original = max(rates[original], rates["original client, serve 2 instances x 1 thread"])
        print(f"\neach client on its best serve (drawing, HTTP binary): ours {best_ours:.2f} images/s, "
              f"original {best_original:.2f} images/s: {best_ours / best_original:.2f}x")
        print("\nclient CPU time per image (user+sys of the client process, start-up included; serve not counted):")
        for name, values in cpus.items():
            print(f"- {name}: {statistics.median(values) / args.images * 1e3:.2f} ms")
    finally:
        for process in (serve, throughput_serve):
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
