"""The baseline for benches/nccl_allreduce.rs: the same all-reduce through
torch.distributed's NCCL backend, a group of one rank on cuda:0.

  torch_nccl_allreduce.py N_FLOATS WARMUP ITERATIONS PORT

Prints the median milliseconds of one all-reduce plus a device synchronize.
"""

import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def main():
    n_floats, warmup, iterations, port = (int(arg) for arg in sys.argv[1:5])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    device = torch.device("cuda:0")
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    tensor = torch.randn(n_floats, device=device)
    times_ms = []
    for iteration in range(warmup + iterations):
        started = time.perf_counter()
        dist.all_reduce(tensor)
        torch.cuda.synchronize()
        if iteration >= warmup:
            times_ms.append((time.perf_counter() - started) * 1000.0)
    print(statistics.median(times_ms))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
