"""Tail latency of gRPC ServerLive against a running `serve`, with Python tritonclient.

    python crates/serve/benches/grpc_stalls.py GRPC_PORT CALLS

Counts calls over 20 ms: with Nagle's algorithm on the server's connections, a
small answer now and then waits for the client's delayed ACK (about 40 ms on
Linux). Used for BENCHMARKS.md's TCP_NODELAY entry.
"""
import sys
import time

import tritonclient.grpc as grpcclient

STALL_SECONDS = 0.020


def main():
    port, calls = sys.argv[1], int(sys.argv[2])
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    client.is_server_live()  # connect before timing
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.is_server_live()
        times.append(time.perf_counter() - started)
    stalls = sum(t > STALL_SECONDS for t in times)
    mean = sum(times) / calls
    times.sort()
    print(
        f"{calls} ServerLive: {stalls} over 20 ms, median {times[calls // 2] * 1e3:.3f} ms, "
        f"p99.9 {times[int(calls * 0.999)] * 1e3:.2f} ms, max {times[-1] * 1e3:.1f} ms, "
        f"mean {mean * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
