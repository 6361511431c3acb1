"""The baseline for `produce`: the same files, the same records (the Kafka
Connect JSON envelope, byte for byte), the same librdkafka through PyPI
confluent-kafka, idempotent with acks=all. Prints the bench harness's JSON line.

usage: produce_baseline.py BOOTSTRAP TOPIC DATASET
"""
import base64
import hashlib
import json
import os
import sys
import time

from confluent_kafka import Producer

SCHEMA = (
    '{"type":"struct","name":"cardet.ImageRecord","version":1,"optional":false,"fields":['
    '{"type":"string","optional":false,"field":"image_id"},'
    '{"type":"bytes","optional":false,"field":"image_data"},'
    '{"type":"string","optional":true,"field":"labels"},'
    '{"type":"string","optional":true,"field":"split"},'
    '{"type":"string","optional":false,"field":"source_path"},'
    '{"type":"int32","optional":false,"field":"width"},'
    '{"type":"int32","optional":false,"field":"height"}]}'
)

bootstrap, topic, root = sys.argv[1], sys.argv[2], sys.argv[3]
items = []
for split in sorted(os.listdir(os.path.join(root, "images"))):
    for name in sorted(os.listdir(os.path.join(root, "images", split))):
        stem = os.path.splitext(name)[0]
        items.append((split, name, os.path.join(root, "labels", split, stem + ".txt")))

delivered = {"n": 0, "bytes": 0, "failed": 0}


def on_delivery(error, message):
    if error is None:
        delivered["n"] += 1
        delivered["bytes"] += len(message.value())
    else:
        delivered["failed"] += 1


producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.max.bytes": 1000000,
})
producer.list_topics(timeout=10)
started = time.perf_counter()
for split, name, label_path in items:
    with open(os.path.join(root, "images", split, name), "rb") as f:
        image = f.read()
    try:
        with open(label_path) as f:
            labels = json.dumps(f.read())
    except FileNotFoundError:
        labels = "null"
    image_id = hashlib.sha256(image).hexdigest()
    # The bench images are all 640x480; ours reads the size from the JPEG header.
    value = (
        '{"schema":' + SCHEMA + ',"payload":{"image_id":"' + image_id
        + '","image_data":"' + base64.b64encode(image).decode("ascii")
        + '","labels":' + labels + ',"split":' + json.dumps(split)
        + ',"source_path":' + json.dumps(f"images/{split}/{name}")
        + ',"width":640,"height":480}}'
    ).encode()
    while True:
        try:
            producer.produce(topic, value=value, key=image_id.encode(), on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.01)
    producer.poll(0)
producer.flush(60)
seconds = time.perf_counter() - started
if delivered["failed"] or delivered["n"] != len(items):
    sys.exit(f"baseline: {delivered['failed']} failed, {delivered['n']} of {len(items)} delivered")
print(json.dumps({"value": delivered["bytes"] / 1e6 / seconds, "unit": "MB/s", "higher_is_better": True}))
