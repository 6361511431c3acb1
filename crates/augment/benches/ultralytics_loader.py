"""The baseline of examples/loader_bench.rs: Ultralytics' training dataloader
(YOLODataset with default.yaml's augmentation, build_dataloader's
InfiniteDataLoader) over the same data.yaml, counting images per second and the
CPU seconds it spent (its process and its workers, from dataset construction on).

    ultralytics_loader.py DATA_YAML IMGSZ BATCH WORKERS EPOCHS   (prints one JSON line)
"""

import json
import resource
import sys
import time

from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset


def main() -> None:
    data_yaml, imgsz, batch_size, workers, epochs = sys.argv[1:6]
    imgsz, batch_size, workers, epochs = int(imgsz), int(batch_size), int(workers), int(epochs)
    cfg = get_cfg(overrides={"data": data_yaml, "imgsz": imgsz, "batch": batch_size, "workers": workers})
    data = check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch_size, data, mode="train")
    loader = build_dataloader(dataset, batch_size, workers, shuffle=True, rank=-1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_at_start = usage.ru_utime + usage.ru_stime
    epoch_seconds = []
    n_images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        for batch in loader:
            n_images += batch["img"].shape[0]
        epoch_seconds.append(time.perf_counter() - epoch_start)
    total = time.perf_counter() - start
    # Joining the workers adds their CPU time to RUSAGE_CHILDREN.
    loader.close()
    cpu_seconds = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    print(
        json.dumps(
            {"images": n_images, "seconds": total, "epoch_seconds": epoch_seconds, "cpu_seconds": cpu_seconds - cpu_at_start}
        )
    )


if __name__ == "__main__":
    main()
