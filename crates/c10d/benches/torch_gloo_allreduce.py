"""The baseline for benches/allreduce.rs: the same all-reduces through
torch.distributed's gloo backend. Started by cardet's launcher, so the
torchrun variables (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK) are set;
rank 0 writes one line per case, `case median_ms`, to $CARDET_C10D_BENCH_OUT.
"""

import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def measure(case, warmup, iterations):
    times_ms = []
    for iteration in range(warmup + iterations):
        dist.barrier()
        started = time.perf_counter()
        case()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if iteration >= warmup:
            times_ms.append(elapsed_ms)
    return statistics.median(times_ms)


def main():
    n_floats = int(sys.argv[1])
    warmup = int(sys.argv[2])
    iterations = int(sys.argv[3])
    dist.init_process_group("gloo")
    world_size = dist.get_world_size()
    torch.manual_seed(dist.get_rank())
    tensor = torch.randn(n_floats)

    def all_reduce_sum():
        dist.all_reduce(tensor)

    def all_reduce_average():
        dist.all_reduce(tensor)
        tensor.div_(world_size)

    # What DDP's fp16_compress_hook does to a bucket.
    def all_reduce_average_fp16():
        compressed = tensor.div(world_size).to(torch.float16)
        dist.all_reduce(compressed)
        tensor.copy_(compressed)

    results = [
        ("sum", measure(all_reduce_sum, warmup, iterations)),
        ("average", measure(all_reduce_average, warmup, iterations)),
        ("average_fp16", measure(all_reduce_average_fp16, warmup, iterations)),
    ]
    if dist.get_rank() == 0:
        with open(os.environ["CARDET_C10D_BENCH_OUT"], "w") as out:
            for case, median_ms in results:
                out.write(f"{case} {median_ms}\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
