#!/usr/bin/env python3
"""Cost of the longest path the gateway accepts (4 KiB, ~2,000 segments), per request, on one
keep-alive connection: a guard against work that grows faster than the path.

    bench/long_path.py PORT [SEGMENTS]    # against a running portcullis with a /public/** route
"""
import socket
import sys
import time

port = int(sys.argv[1])
segments = int(sys.argv[2]) if len(sys.argv) > 2 else 2040
path = "/public" + "/a" * segments
request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
conn = socket.create_connection(("127.0.0.1", port))
n = 200
started = time.time()
for _ in range(n):
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    while len(rest) < (length[0] if length else 0):
        rest += conn.recv(65536)
status = head.split(b"\r\n")[0].decode()
print(f"{status}: {(time.time() - started) / n * 1000:.2f} ms per request, {segments} segments")
