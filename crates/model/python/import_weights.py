"""Convert an Ultralytics YOLOv8 detection checkpoint (.pt) to cardet's safetensors.

Usage: python import_weights.py MODEL.pt OUT.safetensors [SCALE]

Runs in cardet's venv (torch, ultralytics, safetensors), offline. Writes the state
dict in float32 with its Ultralytics keys, and in the safetensors metadata the class
names (`names`, a JSON list), the scale (`scale`) and the class count (`nc`). Prints one
JSON line describing what it wrote. `cargo xtask import-weights` runs this file.
"""

import json
import os
import re
import sys

os.environ["YOLO_OFFLINE"] = "1"

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def fail(message):
    print(f"import-weights: {message}", file=sys.stderr)
    sys.exit(2)


def load(path):
    if not os.path.isfile(path):
        fail(f"no file {path}")
    try:
        from ultralytics.nn.tasks import torch_safe_load

        checkpoint, _ = torch_safe_load(path)
    except ImportError:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        fail(f"{path} is not an Ultralytics checkpoint (a dict with `model` or `ema`)")
    model = checkpoint.get("ema") or checkpoint.get("model")
    if model is None or not hasattr(model, "state_dict"):
        fail(f"{path} holds no model under `ema` or `model`")
    return model.float().cpu()


def unfuse(model):
    """Ultralytics' `fuse()` folds BatchNorm into Conv; cardet keeps them apart until
    export. An identity BatchNorm (var = 1 - eps) carrying the bias undoes it exactly."""
    from ultralytics.nn.modules.conv import Conv

    count = 0
    for module in model.modules():
        if isinstance(module, Conv) and not hasattr(module, "bn"):
            conv = module.conv
            bn = torch.nn.BatchNorm2d(conv.out_channels, eps=1e-3, momentum=0.03)
            with torch.no_grad():
                bn.running_var.fill_(1.0 - bn.eps)
                if conv.bias is not None:
                    bn.bias.copy_(conv.bias)
            conv.bias = None
            module.bn = bn
            count += 1
    return count


def scale_of(model, given):
    if given:
        return given
    yaml = getattr(model, "yaml", {}) or {}
    if yaml.get("scale"):
        return yaml["scale"]
    match = re.search(r"yolov8([nslmx])", str(yaml.get("yaml_file", "")))
    if match:
        return match.group(1)
    fail("the checkpoint does not say its scale: pass --scale n|s|m|l|x")


def main(path, out, given_scale=None):
    model = load(path)
    head = model.model[-1]
    if type(head).__name__ != "Detect":
        fail(f"{path} is a {type(head).__name__} model; cardet imports YOLOv8 detection (Detect)")
    unfused = unfuse(model)
    names = model.names
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    names = [str(n) for n in names]
    scale = scale_of(model, given_scale)
    if scale not in ("n", "s", "m", "l", "x"):
        fail(f"scale {scale!r} is none of n, s, m, l, x")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out, metadata={"names": json.dumps(names), "scale": scale, "nc": str(len(names))})
    print(json.dumps({"weights": out, "scale": scale, "nc": len(names), "tensors": len(state), "unfused_convs": unfused}))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        fail("usage: import_weights.py MODEL.pt OUT.safetensors [SCALE]")
    main(*sys.argv[1:])
