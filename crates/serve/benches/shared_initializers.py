"""Whether handing several ONNX Runtime sessions of one model the same initializers
(`SessionOptions.add_initializer`) saves memory, as a split instance's three sessions
(2, 1 and 1 intra-op threads) would. BENCHMARKS.md ("serve", the split section).

usage: python shared_initializers.py MODEL.onnx own|shared

Run each mode in its own process, alternating. Both modes load the model's
initializers into memory first, so the two figures differ only by the sharing.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def resident_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main():
    path, mode = sys.argv[1], sys.argv[2]
    if mode not in ("own", "shared"):
        sys.exit(__doc__)
    start = resident_mib()
    model = onnx.load(path)
    # ONNX Runtime takes pre-allocated initializers of 128 bytes or more.
    initializers = [
        (init.name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(init))))
        for init in model.graph.initializer
        if numpy_helper.to_array(init).nbytes >= 128
    ]
    del model
    sessions = []
    for threads in (2, 1, 1):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if mode == "shared":
            for name, value in initializers:
                options.add_initializer(name, value)
        sessions.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))
    image = np.random.rand(1, 3, 640, 640).astype(np.float32)
    outputs = [session.run(None, {"images": image})[0] for session in sessions]
    worst = max(float(np.abs(output - outputs[0]).max()) for output in outputs)
    print(f"{mode}: three sessions and one run each: {resident_mib() - start:.1f} MiB above the start; largest difference between sessions {worst:.1e}")


if __name__ == "__main__":
    main()
