"""Ultralytics' own validation dataset (rect batches, letterbox) over a folder, as
the reference for tests/val_batches.rs: prints one JSON line per image and writes
each image's CHW RGB bytes to OUT/<index>.chw."""

import json
import sys
from pathlib import Path

from ultralytics.data.dataset import YOLODataset


def main() -> None:
    image_dir, imgsz, batch_size, n_classes, out = sys.argv[1:6]
    names = {class_id: f"class{class_id}" for class_id in range(int(n_classes))}
    dataset = YOLODataset(
        img_path=image_dir,
        imgsz=int(imgsz),
        augment=False,
        rect=True,
        batch_size=int(batch_size),
        stride=32,
        pad=0.5,
        data={"names": names, "nc": len(names), "channels": 3},
        task="detect",
    )
    for index in range(len(dataset)):
        sample = dataset[index]
        image = sample["img"].numpy()
        Path(out, f"{index}.chw").write_bytes(image.tobytes())
        print(
            json.dumps(
                {
                    "file": sample["im_file"],
                    "batch": int(dataset.batch[index]),
                    "shape": list(image.shape),
                    "cls": sample["cls"].flatten().tolist(),
                    "bboxes": sample["bboxes"].tolist(),
                }
            )
        )


if __name__ == "__main__":
    main()
