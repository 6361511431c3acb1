"""The floor under binary REST at batch 1: a bare socket round trip of the bytes
one YOLOv8n request and answer carry (4.9 MB up, 2.8 MB down), with no HTTP and
warm buffers. BENCHMARKS.md ("serve") compares `serve`'s time around inference
(serve_bench's time split) with it.

usage: python loopback_floor.py [--unix] [--rounds N]
"""
import argparse
import os
import socket
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


def answer_forever(listener):
    conn, _ = listener.accept()
    request, answer = bytearray(REQUEST_BYTES), bytes(ANSWER_BYTES)
    try:
        while True:
            receive_exactly(conn, request)
            conn.sendall(answer)
    except EOFError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unix", action="store_true", help="a Unix socket instead of loopback TCP")
    parser.add_argument("--rounds", type=int, default=300)
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
    threading.Thread(target=answer_forever, args=(listener,), daemon=True).start()
    client = socket.socket(family)
    client.connect(address)
    if family == socket.AF_INET:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request, answer = bytes(REQUEST_BYTES), bytearray(ANSWER_BYTES)
    for _ in range(20):  # warm the buffers and TCP's window
        client.sendall(request)
        receive_exactly(client, answer)
    started = time.perf_counter()
    for _ in range(args.rounds):
        client.sendall(request)
        receive_exactly(client, answer)
    per_round_ms = (time.perf_counter() - started) / args.rounds * 1e3
    transport = "unix socket" if args.unix else "loopback TCP"
    print(f"round trip, 4.9 MB up + 2.8 MB down over {transport}: {per_round_ms:.2f} ms")


if __name__ == "__main__":
    main()
