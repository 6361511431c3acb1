"""Reference fixtures from Ultralytics itself, for cardet-model's tests.

Run by the tests with the venv's Python, in a temp dir, never downloading anything:
models are built from Ultralytics' own yaml files and randomised here.

  keys OUT.json                       state-dict keys and shapes of yolov8{n,s,m,l,x}, 3 classes
  forward SCALE NC H W BATCH OUT_DIR  weights, inputs, eval output and train-mode raw outputs
  export H W OUT_DIR                  yolov8n (80 classes) weights and Ultralytics' ONNX export
  checkpoints OUT_DIR                 Ultralytics-style .pt files (trainer EMA in half, fused) and outputs
  check_onnx OURS THEIRS H W OUT.json CONFIG
                                      onnx.checker (full) on ours, both run in ORT at batch 1 and 4,
                                      CONFIG (config.pbtxt) parsed with tritonclient's ModelConfig
"""

import json
import os
import sys

os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def randomise(model, seed):
    """A fresh model has BN stats 0/1 and BN affine 1/0: make every parameter matter."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor, low, high):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.3, 0.3)
                uniform(module.running_mean, -0.3, 0.3)
                uniform(module.running_var, 0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model


def detection_model(scale, nc, seed=0):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    return randomise(DetectionModel(f"yolov8{scale}.yaml", nc=nc, verbose=False), seed + 1)


def save_weights(model, scale, path):
    names = [model.names[i] for i in range(len(model.names))]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"names": json.dumps(names), "scale": scale, "nc": str(len(names))})


def keys(out):
    result = {}
    for scale in "nsmlx":
        model = detection_model(scale, 3)
        result[scale] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    with open(out, "w") as f:
        json.dump(result, f)


def per_level(preds, feats):
    """Ultralytics 8.4's train output is a dict; rebuild the classic per-level maps."""
    boxes, scores = preds["boxes"], preds["scores"]
    out, start = [], 0
    for feat in feats:
        n, _, h, w = feat.shape
        stop = start + h * w
        level = torch.cat((boxes[:, :, start:stop], scores[:, :, start:stop]), 1)
        out.append(level.reshape(n, -1, h, w))
        start = stop
    return out


def forward(scale, nc, h, w, batch, out_dir):
    model = detection_model(scale, int(nc))
    save_weights(model, scale, os.path.join(out_dir, "weights.safetensors"))
    torch.manual_seed(5)
    images = torch.rand(int(batch), 3, int(h), int(w))
    save_file({"images": images}, os.path.join(out_dir, "inputs.safetensors"))
    # cardet-model runs channels-last on CPU; so does the reference here, so that both
    # sum in oneDNN's same order and the comparison is of the network. (Against NCHW
    # the outputs differ by up to 4 float32 ulps: 1.2e-4 on boxes of about 486 px.)
    images = images.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        predict = model(images)[0]
    model.train()
    with torch.no_grad():
        preds = model(images)
    train = per_level(preds, preds["feats"])
    expected = {"predict": predict.contiguous()}
    expected.update({f"train.{i}": t.contiguous() for i, t in enumerate(train)})
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))


def export(h, w, out_dir):
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    randomise(yolo.model, 1)
    save_weights(yolo.model, "n", os.path.join(out_dir, "weights.safetensors"))
    path = yolo.export(format="onnx", imgsz=[int(h), int(w)], dynamic=True, simplify=False, verbose=False)
    os.replace(path, os.path.join(out_dir, "ultralytics.onnx"))


def checkpoints(out_dir):
    """What users bring: a trainer checkpoint (EMA, half precision) and a fused model."""
    from copy import deepcopy

    model = detection_model("n", 3)
    model.names = {0: "car", 1: "bus", 2: "it's"}
    torch.manual_seed(9)
    images = torch.rand(1, 3, 256, 320)
    save_file({"images": images}, os.path.join(out_dir, "inputs.safetensors"))
    trainer = {"epoch": 3, "model": None, "ema": deepcopy(model).half(), "updates": 10, "optimizer": None}
    torch.save(trainer, os.path.join(out_dir, "trainer.pt"))
    fused = deepcopy(model).eval().fuse(verbose=False)
    torch.save({"model": deepcopy(fused).half(), "ema": None}, os.path.join(out_dir, "fused.pt"))
    expected = {}
    with torch.no_grad():
        expected["trainer"] = deepcopy(model).half().float().eval()(images)[0].contiguous()
        expected["fused"] = deepcopy(fused).half().float().eval()(images)[0].contiguous()
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))


def triton_config(path):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    with open(path) as f:
        config = text_format.Parse(f.read(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def check_onnx(ours, theirs, h, w, out, config):
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(ours)
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = [ort.InferenceSession(p, options, providers=["CPUExecutionProvider"]) for p in (ours, theirs)]
    rng = np.random.default_rng(3)
    report = {
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
        "inputs": [[i.name, i.shape] for i in sessions[0].get_inputs()],
        "outputs": [[o.name, o.shape] for o in sessions[0].get_outputs()],
        "metadata": sessions[0].get_modelmeta().custom_metadata_map,
        "their_metadata": sessions[1].get_modelmeta().custom_metadata_map,
        "triton_config": triton_config(config),
    }
    for batch in (1, 4):
        images = rng.random((batch, 3, int(h), int(w)), dtype=np.float32)
        a, b = (s.run(["output0"], {"images": images})[0] for s in sessions)
        report[f"shape_{batch}"] = [list(a.shape), list(b.shape)]
        report[f"max_abs_diff_{batch}"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
        report[f"max_abs_{batch}"] = float(np.abs(b).max())
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {
        "keys": keys,
        "forward": forward,
        "export": export,
        "checkpoints": checkpoints,
        "check_onnx": check_onnx,
    }[command](*args)
