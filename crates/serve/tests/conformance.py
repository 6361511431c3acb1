"""Conformance of `serve` with the reference client, tritonclient (http and grpc).

Usage: conformance.py HTTP_URL GRPC_URL REPOSITORY

Every call of the protocol that `serve` implements, JSON and binary, batch 1 and 8,
against a direct ONNX Runtime run of the same model file: outputs must agree within
1e-5 (relative and absolute). Prints one line per check and a JSON summary last;
exits 1 on the first failure.
"""

import json
import os
import queue
import sys
import time

import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

HTTP_URL, GRPC_URL, REPOSITORY = sys.argv[1:4]
TOLERANCE = 1e-5
summary = {"checks": 0, "max_abs_diff": 0.0, "max_rel_diff": 0.0}
sessions = {}


def check(name, condition, detail=""):
    summary["checks"] += 1
    if not condition:
        print(f"FAIL {name} {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


def reference(model, inputs):
    if model not in sessions:
        path = os.path.join(REPOSITORY, model, "1", "model.onnx")
        sessions[model] = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sessions[model].run(None, inputs)


def compare(name, got, expected):
    got = np.asarray(got)
    check(f"{name}: shape {list(got.shape)}", got.shape == expected.shape, f"{got.shape} vs {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    scale = np.maximum(np.abs(expected.astype(np.float64)), 1.0)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / scale).max()) if diff.size else 0.0
    summary["max_abs_diff"] = max(summary["max_abs_diff"], max_abs)
    summary["max_rel_diff"] = max(summary["max_rel_diff"], max_rel)
    check(f"{name}: within {TOLERANCE} (abs {max_abs:.2e}, rel {max_rel:.2e})", max_rel <= TOLERANCE, "")


def image_batch(batch, size, seed):
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, size, size), dtype=np.float32)


def yolo_cases():
    # (model, size, batch, binary input, binary output)
    return [
        ("yolov8n", 640, 1, True, True),
        ("yolov8n", 640, 8, True, True),
        ("yolov8n", 640, 1, False, False),
        ("yolov8n_small", 160, 1, False, False),
        ("yolov8n_small", 160, 8, False, False),
        ("yolov8n_small", 160, 8, True, False),
        ("yolov8n_small", 160, 1, False, True),
    ]


def http_checks():
    client = httpclient.InferenceServerClient(HTTP_URL, network_timeout=300.0, connection_timeout=300.0)
    check("http server live", client.is_server_live())
    check("http server ready", client.is_server_ready())
    metadata = client.get_server_metadata()
    check("http server metadata", "binary_tensor_data" in metadata["extensions"], metadata)
    check("http model ready", client.is_model_ready("yolov8n"))
    check("http model version ready", client.is_model_ready("yolov8n", "1"))
    check("http unknown model not ready", not client.is_model_ready("nope"))
    metadata = client.get_model_metadata("yolov8n")
    check("http model metadata", metadata["inputs"][0]["shape"] == [-1, 3, 640, 640] and metadata["versions"] == ["1"], metadata)
    metadata = client.get_model_metadata("yolov8n", "1")
    check("http model version metadata", metadata["name"] == "yolov8n", metadata)
    config = client.get_model_config("yolov8n")
    check("http model config", config["max_batch_size"] == 8 and config["input"][0]["data_type"] == "TYPE_FP32", config)
    config = client.get_model_config("yolov8n", "1")
    check("http model version config", config["name"] == "yolov8n", config)

    for seed, (model, size, batch, binary_in, binary_out) in enumerate(yolo_cases()):
        images = image_batch(batch, size, seed)
        infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images, binary_data=binary_in)
        output = httpclient.InferRequestedOutput("output0", binary_data=binary_out)
        result = client.infer(model, [infer_input], outputs=[output], model_version="1" if seed % 2 else "")
        expected = reference(model, {"images": images})[0]
        compare(f"http infer {model} batch {batch} binary in/out {binary_in}/{binary_out}", result.as_numpy("output0"), expected)

    # tritonclient's compression: the request body gzip or deflate, the answer asked for by Accept-Encoding.
    images = image_batch(2, 160, 50)
    expected = reference("yolov8n_small", {"images": images})[0]
    for request_coding, answer_coding, binary in [("gzip", "deflate", True), ("deflate", "gzip", False), (None, "gzip", True)]:
        infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images, binary_data=binary)
        output = httpclient.InferRequestedOutput("output0", binary_data=binary)
        result = client.infer(
            "yolov8n_small",
            [infer_input],
            outputs=[output],
            request_compression_algorithm=request_coding,
            response_compression_algorithm=answer_coding,
        )
        compare(f"http infer compressed {request_coding}/{answer_coding} binary {binary}", result.as_numpy("output0"), expected)

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    infer_input = httpclient.InferInput("x", [3, 4], "FP32")
    infer_input.set_data_from_numpy(x, binary_data=True)
    result = client.infer("tiny", [infer_input], outputs=[httpclient.InferRequestedOutput("sum", binary_data=False)])
    check("http requested output subset", result.as_numpy("y") is None and result.as_numpy("sum") is not None)
    compare("http tiny sum", result.as_numpy("sum"), reference("tiny", {"x": x})[1])
    result = client.infer("tiny", [infer_input])
    compare("http tiny all outputs y", result.as_numpy("y"), reference("tiny", {"x": x})[0])

    stats = client.get_inference_statistics("yolov8n")
    check("http statistics", stats["model_stats"][0]["inference_count"] == 10 and stats["model_stats"][0]["execution_count"] == 3, stats)
    index = client.get_model_repository_index()
    names = sorted({entry["name"] for entry in index})
    check("http repository index", names == ["tiny", "yolov8n", "yolov8n_small"], index)
    client.unload_model("tiny")
    check("http unload", not client.is_model_ready("tiny"))
    client.load_model("tiny")
    check("http load", client.is_model_ready("tiny"))
    try:
        client.infer("nope", [infer_input])
        check("http unknown model is an error", False)
    except InferenceServerException as error:
        check("http unknown model is an error", "unknown model" in str(error), str(error))


def http_shared_memory_checks():
    """Triton's system shared-memory extension, driven by tritonclient's own helpers."""
    client = httpclient.InferenceServerClient(HTTP_URL, network_timeout=300.0, connection_timeout=300.0)
    check("http server metadata lists shared memory", "system_shared_memory" in client.get_server_metadata()["extensions"])
    images = image_batch(2, 640, 42)
    expected = reference("yolov8n", {"images": images})[0]
    key_in, key_out = f"/cardet_conformance_{os.getpid()}_in", f"/cardet_conformance_{os.getpid()}_out"
    # Room before each tensor, so offsets are exercised too.
    in_handle = shm.create_shared_memory_region("in", key_in, 64 + images.nbytes)
    out_handle = shm.create_shared_memory_region("out", key_out, 128 + expected.nbytes)
    try:
        shm.set_shared_memory_region(in_handle, [images], offset=64)
        client.unregister_system_shared_memory()
        client.register_system_shared_memory("in", key_in, 64 + images.nbytes)
        client.register_system_shared_memory("out", key_out, 128 + expected.nbytes)
        status = client.get_system_shared_memory_status()
        check("http shm status lists both regions", sorted(region["name"] for region in status) == ["in", "out"], status)
        status = client.get_system_shared_memory_status("in")
        check("http shm status of one region", status[0]["key"] == key_in and int(status[0]["byte_size"]) == 64 + images.nbytes, status)
        infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_shared_memory("in", images.nbytes, offset=64)
        output = httpclient.InferRequestedOutput("output0")
        output.set_shared_memory("out", expected.nbytes, offset=128)
        result = client.infer("yolov8n", [infer_input], outputs=[output])
        meta = result.get_output("output0")
        in_body = "data" in meta or "binary_data_size" in meta.get("parameters", {})
        check("http shm output has no data in the body", not in_body and meta["shape"] == list(expected.shape), meta)
        got = shm.get_contents_as_numpy(out_handle, np.float32, meta["shape"], offset=128)
        compare("http shm infer yolov8n batch 2, in and out", got, expected)
        # Shared-memory input, binary output in the body.
        result = client.infer("yolov8n", [infer_input], outputs=[httpclient.InferRequestedOutput("output0", binary_data=True)])
        compare("http shm input, binary output", result.as_numpy("output0"), expected)
        for name, region, size, fragment in [
            ("unknown region", "nope", images.nbytes, "not registered"),
            ("size against shape", "in", images.nbytes - 4, "does not match shape"),
            ("past the region", "in", images.nbytes, "past its"),
        ]:
            bad = httpclient.InferInput("images", list(images.shape), "FP32")
            bad.set_shared_memory(region, size, offset=128 if name == "past the region" else 64)
            try:
                client.infer("yolov8n", [bad])
                check(f"http shm {name} is an error", False)
            except InferenceServerException as error:
                check(f"http shm {name} is an error", fragment in str(error), str(error))
        client.unregister_system_shared_memory("in")
        check("http shm unregister one", [region["name"] for region in client.get_system_shared_memory_status()] == ["out"])
        client.unregister_system_shared_memory()
        check("http shm unregister all", client.get_system_shared_memory_status() == [])
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


def grpc_shared_memory_checks():
    """The same extension over gRPC; REST and gRPC share one registry."""
    client = grpcclient.InferenceServerClient(GRPC_URL)
    metadata = client.get_server_metadata(as_json=True)
    check("grpc server metadata lists shared memory", "system_shared_memory" in metadata["extensions"], metadata)
    images = image_batch(1, 640, 43)
    expected = reference("yolov8n", {"images": images})[0]
    key_in, key_out = f"/cardet_conformance_{os.getpid()}_gin", f"/cardet_conformance_{os.getpid()}_gout"
    in_handle = shm.create_shared_memory_region("gin", key_in, images.nbytes)
    out_handle = shm.create_shared_memory_region("gout", key_out, 16 + expected.nbytes)
    try:
        shm.set_shared_memory_region(in_handle, [images])
        client.unregister_system_shared_memory()
        client.register_system_shared_memory("gin", key_in, images.nbytes)
        # Registered over REST, used over gRPC.
        httpclient.InferenceServerClient(HTTP_URL).register_system_shared_memory("gout", key_out, 16 + expected.nbytes)
        status = client.get_system_shared_memory_status(as_json=True)
        check("grpc shm status lists regions from both edges", sorted(status.get("regions", {})) == ["gin", "gout"], status)
        infer_input = grpcclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_shared_memory("gin", images.nbytes)
        output = grpcclient.InferRequestedOutput("output0")
        output.set_shared_memory("gout", expected.nbytes, offset=16)
        result = client.infer("yolov8n", [infer_input], outputs=[output])
        shape = list(result.get_output("output0").shape)
        got = shm.get_contents_as_numpy(out_handle, np.float32, shape, offset=16)
        compare("grpc shm infer yolov8n, in and out", got, expected)
        result = client.infer("yolov8n", [infer_input])
        compare("grpc shm input, raw output", result.as_numpy("output0"), expected)
        bad = grpcclient.InferInput("images", list(images.shape), "FP32")
        bad.set_shared_memory("nope", images.nbytes)
        try:
            client.infer("yolov8n", [bad])
            check("grpc shm unknown region is an error", False)
        except InferenceServerException as error:
            check("grpc shm unknown region is INVALID_ARGUMENT", "not registered" in str(error) and "INVALID_ARGUMENT" in str(error.status()), str(error))
        client.unregister_system_shared_memory()
        check("grpc shm unregister all", client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {})
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


def grpc_checks():
    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    client = grpcclient.InferenceServerClient(GRPC_URL, channel_args=options)
    check("grpc server live", client.is_server_live())
    check("grpc server ready", client.is_server_ready())
    metadata = client.get_server_metadata(as_json=True)
    check("grpc server metadata", "statistics" in metadata["extensions"], metadata)
    check("grpc model ready", client.is_model_ready("yolov8n"))
    check("grpc model version ready", client.is_model_ready("yolov8n", "1"))
    metadata = client.get_model_metadata("yolov8n", as_json=True)
    check("grpc model metadata", metadata["inputs"][0]["shape"] == ["-1", "3", "640", "640"], metadata)
    config = client.get_model_config("yolov8n", as_json=True)["config"]
    check("grpc model config", config["max_batch_size"] == 8 and config["input"][0]["data_type"] == "TYPE_FP32", config)
    check("grpc model config batching", "dynamic_batching" in config, config)

    for seed, (model, size, batch, _, _) in enumerate(yolo_cases()):
        images = image_batch(batch, size, 100 + seed)
        infer_input = grpcclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images)
        result = client.infer(model, [infer_input], model_version="1" if seed % 2 else "")
        compare(f"grpc infer {model} batch {batch}", result.as_numpy("output0"), reference(model, {"images": images})[0])

    images = image_batch(2, 160, 150)
    expected = reference("yolov8n_small", {"images": images})[0]
    for coding in ["gzip", "deflate"]:
        infer_input = grpcclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images)
        result = client.infer("yolov8n_small", [infer_input], compression_algorithm=coding)
        compare(f"grpc infer compressed {coding}", result.as_numpy("output0"), expected)

    # Typed contents (not raw), built by hand: tritonclient always sends raw.
    from tritonclient.grpc import service_pb2
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = service_pb2.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    request.outputs.add(name="y")
    response = client._client_stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 4)
    check("grpc typed contents, one requested output", len(response.outputs) == 1 and response.outputs[0].name == "y")
    compare("grpc typed contents", got, reference("tiny", {"x": x})[0])

    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    inputs = []
    for i in range(4):
        x = np.full((1, 4), i, dtype=np.float32)
        infer_input = grpcclient.InferInput("x", [1, 4], "FP32")
        infer_input.set_data_from_numpy(x)
        inputs.append(x)
        client.async_stream_infer("tiny", [infer_input], request_id=str(i))
    for _ in range(4):
        result, error = answers.get(timeout=60)
        check("grpc stream answer", error is None, error)
        i = int(result.get_response().id)
        compare(f"grpc stream infer {i}", result.as_numpy("y"), reference("tiny", {"x": inputs[i]})[0])
    client.stop_stream()

    stats = client.get_inference_statistics("tiny", as_json=True)
    check("grpc statistics", int(stats["model_stats"][0]["inference_count"]) >= 4, stats)
    index = client.get_model_repository_index(as_json=True)
    check("grpc repository index", len(index["models"]) == 3, index)
    client.unload_model("tiny")
    check("grpc unload", not client.is_model_ready("tiny"))
    client.load_model("tiny")
    check("grpc load", client.is_model_ready("tiny"))
    try:
        client.get_model_metadata("nope")
        check("grpc unknown model is an error", False)
    except InferenceServerException as error:
        check("grpc unknown model is NOT_FOUND", "NOT_FOUND" in str(error.status()), str(error.status()))


started = time.time()
http_checks()
http_shared_memory_checks()
grpc_checks()
grpc_shared_memory_checks()
summary["seconds"] = round(time.time() - started, 1)
print(json.dumps(summary))
