"""Tail latency of gRPC ServerLive against a running `serve`, with Python tritonclient.

    python crates/serve/benches/grpc_stalls.py GRPC_PORT CALLS

Counts calls over 20 ms: with Nagle's algorithm on the server's connections, a
small answer now and then waits for the client's delayed ACK (about 40 ms on
Linux). Used for BENCHMARKS.md's TCP_NODELAY entry.
"""
import sys, time
import tritonclient.grpc as g
cg = g.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
n=int(sys.argv[2]); cg.is_server_live(); xs=[]
for _ in range(n):
    a=time.perf_counter(); cg.is_server_live(); xs.append(time.perf_counter()-a)
slow=sum(v>0.02 for v in xs); tot=sum(xs); xs.sort()
print(f"{n} ServerLive: {slow} over 20 ms, median {xs[n//2]*1e3:.3f} ms, p99.9 {xs[int(n*.999)]*1e3:.2f} ms, max {xs[-1]*1e3:.1f} ms, mean {tot/n*1e3:.3f} ms")
