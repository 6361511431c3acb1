"""The baseline of examples/train_step_bench.rs: one Ultralytics training step, eager.

  train_step.py OUT_DIR STEPS THREADS [DEVICE]

Builds a seeded yolov8n (3 classes), writes its weights and one batch (8 images at
320 px with targets) for the Rust side, then times STEPS steps of forward +
v8DetectionLoss + backward + SGD (momentum 0.937, Nesterov) after 2 warm-up steps
on DEVICE (cpu, the default, or cuda; CUDA steps end with a synchronize).
Prints one JSON line: median and mean step milliseconds, the peak RSS in MiB, and
`value`/`unit`/`higher_is_better` for `cargo xtask bench`.
"""

import json
import os
import resource
import statistics
import sys
import time

os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def main(out_dir, steps, threads, device="cpu"):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import v8DetectionLoss

    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.args = get_cfg()
    names = [model.names[i] for i in range(3)]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "weights.safetensors"), metadata={"names": json.dumps(names), "scale": "n", "nc": "3"})
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 320, 320, generator=generator)
    rows = []
    for image in range(8):
        for _ in range(6):
            w, h = (torch.rand(2, generator=generator) * 0.3 + 0.05).tolist()
            cx, cy = (torch.rand(2, generator=generator) * 0.5 + 0.25).tolist()
            rows.append([image, float(torch.randint(0, 3, (1,), generator=generator)), cx, cy, w, h])
    targets = torch.tensor(rows, dtype=torch.float32)
    save_file({"images": images, "targets": targets}, os.path.join(out_dir, "batch.safetensors"))
    model = model.to(device)
    images, targets = images.to(device), targets.to(device)
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
    criterion = v8DetectionLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    model.train()
    times = []
    # CARDET_STEP_BREAKDOWN=1: wait for the device after each phase and print the
    # median milliseconds of each on stderr (as the Rust side does).
    breakdown = bool(os.environ.get("CARDET_STEP_BREAKDOWN"))
    phases = {name: [] for name in ("zero_grad", "forward", "loss", "backward", "optimizer")}

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    for step in range(int(steps) + 2):
        started = time.perf_counter()
        marks = []

        def mark():
            if breakdown:
                sync()
                marks.append((time.perf_counter() - started) * 1000)

        optimizer.zero_grad()
        mark()
        head = model(images)
        mark()
        loss, _ = criterion(head, batch)
        mark()
        loss.sum().backward()
        mark()
        optimizer.step()
        sync()
        mark()
        if step >= 2:
            times.append((time.perf_counter() - started) * 1000)
            for index, name in enumerate(phases):
                if breakdown:
                    phases[name].append(marks[index] - (marks[index - 1] if index else 0.0))
    if breakdown:
        parts = ", ".join(f"{name} {statistics.median(values):.2f} ms" for name, values in phases.items())
        print(f"ultralytics breakdown: {parts}", file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(times) if times else float("nan")
    mean = statistics.mean(times) if times else float("nan")
    print(json.dumps({"median_ms": median, "mean_ms": mean, "peak_rss_mib": peak,
                      "value": median, "unit": "ms/step", "higher_is_better": False}))


if __name__ == "__main__":
    main(*sys.argv[1:])
