"""The floor under binary REST at batch 1: a bare socket round trip of the bytes
one YOLOv8n request and answer carry (4.9 MB up, 2.8 MB down), with no HTTP and
warm buffers. BENCHMARKS.md ("serve") compares `serve`'s time around inference
(serve_bench's time split) with it.

usage: python loopback_floor.py [--unix] [--rounds N] [--gap-ms 60 [--busy-gap]]
                                [--congestion cubic] [--server-congestion cubic]

--gap-ms makes the server wait before it answers, as inference would (the wait is not
counted): after a gap asleep the round trip starts from idle cores and colder caches.
--busy-gap spends the gap spinning instead, as ONNX Runtime keeps a core busy.
--congestion sets the client's TCP congestion control (the request's 4.9 MB go out
under it), --server-congestion the server's (the answer's 2.8 MB).
"""
import argparse
import os
import socket
import statistics
import tempfile
import threading
import time

# The binary request's tensor and answer, plus room for their JSON headers.
REQUEST_BYTES = 3 * 640 * 640 * 4 + 200
ANSWER_BYTES = 84 * 8400 * 4 + 200


def receive_exactly(sock, buffer):
    view, received = memoryview(buffer), 0
    while received < len(buffer):
        n = sock.recv_into(view[received:])
        if n == 0:
            raise EOFError
        received += n


def set_congestion(sock, name):
    if name:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())


def wait(gap_s, busy):
    if not busy:
        time.sleep(gap_s)
        return
    end = time.perf_counter() + gap_s
    while time.perf_counter() < end:
        pass


def answer_forever(listener, gap_s, busy, congestion):
    conn, _ = listener.accept()
    if conn.family == socket.AF_INET:
        set_congestion(conn, congestion)
    request, answer = bytearray(REQUEST_BYTES), bytes(ANSWER_BYTES)
    try:
        while True:
            receive_exactly(conn, request)
            wait(gap_s, busy)
            conn.sendall(answer)
    except EOFError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unix", action="store_true", help="a Unix socket instead of loopback TCP")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="server waits this long before answering")
    parser.add_argument("--busy-gap", action="store_true", help="spin through the gap instead of sleeping")
    parser.add_argument("--congestion", help="the client socket's TCP congestion control")
    parser.add_argument("--server-congestion", help="the server socket's TCP congestion control")
    args = parser.parse_args()
    if args.unix:
        path = os.path.join(tempfile.mkdtemp(), "floor.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        address, family = path, socket.AF_UNIX
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address, family = listener.getsockname(), socket.AF_INET
    listener.listen(1)
    gap_s = args.gap_ms / 1e3
    threading.Thread(
        target=answer_forever, args=(listener, gap_s, args.busy_gap, args.server_congestion), daemon=True
    ).start()
    client = socket.socket(family)
    if family == socket.AF_INET:
        set_congestion(client, args.congestion)
    client.connect(address)
    if family == socket.AF_INET:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request, answer = bytes(REQUEST_BYTES), bytearray(ANSWER_BYTES)
    for _ in range(20):  # warm the buffers and TCP's window
        client.sendall(request)
        receive_exactly(client, answer)
    rounds_ms = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        client.sendall(request)
        receive_exactly(client, answer)
        rounds_ms.append((time.perf_counter() - started - gap_s) * 1e3)
    transport = "unix socket" if args.unix else "loopback TCP"
    if args.congestion or args.server_congestion:
        transport += f" (congestion control: client {args.congestion or 'default'}, server {args.server_congestion or 'default'})"
    print(
        f"round trip, 4.9 MB up + 2.8 MB down over {transport}, {args.gap_ms:g} ms gap"
        f"{' (busy)' if args.busy_gap else ''}: "
        f"median {statistics.median(rounds_ms):.2f} ms, mean {statistics.mean(rounds_ms):.2f} ms"
    )


if __name__ == "__main__":
    main()
