#!/usr/bin/env python3
"""Sequential keep-alive HTTP/1.1 client for benches/cost/run.sh.

Usage: client.py HOST:PORT N [PATH]

Connects (retrying for up to 120 s while the server starts: under callgrind weir takes a few
seconds), then sends N requests `GET PATH HTTP/1.1` with `host: x`, one at a time, on that one
connection, and reads each response in full (Content-Length framing). Exits 1 on anything but
N responses `200` with nothing left over. Prints `ok N` and the seconds the requests took.
"""

import socket
import sys
import time


def connect(host, port):
    deadline = time.monotonic() + 120
    while True:
        try:
            return socket.create_connection((host, port), timeout=60)
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"client: nothing listens on {host}:{port} after 120 s")
            time.sleep(0.05)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[2])
    host, port = sys.argv[1].rsplit(":", 1)
    n = int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) == 4 else "/"
    request = f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    sock = connect(host, int(port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    started = time.monotonic()
    for i in range(n):
        sock.sendall(request)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].split(b"\r\n")
                length = None
                for line in head[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length is None:
                    sys.exit(f"client: response {i} has no content-length: {head!r}")
                total = end + 4 + length
                if len(buf) >= total:
                    if not head[0].startswith(b"HTTP/1.1 200 "):
                        sys.exit(f"client: response {i}: {head[0]!r}")
                    buf = buf[total:]
                    break
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit(f"client: connection closed at response {i}")
            buf += chunk
        if buf:
            sys.exit(f"client: bytes after response {i}: {buf!r}")
    took = time.monotonic() - started
    sock.close()
    print(f"ok {n} {took:.2f}")


if __name__ == "__main__":
    main()
