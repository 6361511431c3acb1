"""Reference losses and gradients from Ultralytics' own v8DetectionLoss, for loss_parity.rs.

Run by the test with the venv's Python in a temp dir, nothing downloaded:

  loss OUT_DIR   writes weights.safetensors (a randomised yolov8n, 3 classes) and
                 case{i}.safetensors: images, targets [k, 6], total (loss.sum() * batch as
                 the trainer back-propagates it), items (the three detached parts) and
                 grad (d total / d model.0.conv.weight)
"""

import json
import os
import sys

os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def model_with_loss():
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.6 - 0.3)
    model.args = get_cfg()  # box 7.5, cls 0.5, dfl 1.5
    return model, v8DetectionLoss(model)


def random_targets(generator, batch, per_image, tiny=False):
    """Rows (batch_idx, cls, cx, cy, w, h), normalised, sorted by image as the loader gives them."""
    rows = []
    for image, count in zip(range(batch), per_image):
        for _ in range(count):
            low, high = (0.01, 0.05) if tiny and len(rows) % 2 == 0 else (0.05, 0.6)
            w, h = (torch.rand(2, generator=generator) * (high - low) + low).tolist()
            cx = torch.rand(1, generator=generator).item() * (1 - w) + w / 2
            cy = torch.rand(1, generator=generator).item() * (1 - h) + h / 2
            cls = torch.randint(0, 3, (1,), generator=generator).item()
            rows.append([image, cls, cx, cy, w, h])
    return torch.tensor(rows, dtype=torch.float32).view(-1, 6)


CASES = [
    # (batch, height, width, boxes per image, tiny boxes)
    (4, 256, 256, [3, 0, 7, 1], False),  # one image without targets
    (2, 192, 320, [0, 0], False),  # no targets at all
    (3, 320, 224, [12, 5, 20], True),  # crowded, half the boxes under the 16 px floor
    (2, 256, 256, [1, 30], False),  # many overlapping boxes: anchors claimed twice
]


def loss(out_dir):
    model, criterion = model_with_loss()
    names = [model.names[i] for i in range(len(model.names))]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "weights.safetensors"), metadata={"names": json.dumps(names), "scale": "n", "nc": "3"})
    generator = torch.Generator().manual_seed(2)
    model.train()
    for index, (batch, h, w, per_image, tiny) in enumerate(CASES):
        images = torch.rand(batch, 3, h, w, generator=generator)
        targets = random_targets(generator, batch, per_image, tiny)
        model.zero_grad()
        # cardet-model runs channels-last on CPU: the reference does too, so the
        # gradient is summed in oneDNN's same order (NCHW differs by ~1e-3 relative).
        preds = model(images.contiguous(memory_format=torch.channels_last))
        loss_vec, items = criterion(
            preds, {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
        )
        total = loss_vec.sum()
        total.backward()
        grad = model.model[0].conv.weight.grad
        save_file(
            {
                "images": images.contiguous(),
                "targets": targets.contiguous(),
                "total": total.detach().reshape(1),
                "items": torch.stack(list(items.values())).contiguous(),
                "grad": grad.contiguous(),
            },
            os.path.join(out_dir, f"case{index}.safetensors"),
        )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"loss": loss}[command](*args)
