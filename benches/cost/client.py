#!/usr/bin/env python3
"""Keep-alive HTTP/1.1 client for benches/cost/run.sh.

Usage: client.py HOST:PORT N [PATH] [CONNS]

Connects (retrying for up to 120 s while the server starts: under callgrind weir takes a few
seconds), then sends N requests `GET PATH HTTP/1.1` with `host: x` and reads each response in
full (Content-Length framing). With CONNS = 1 (the default) the requests go one at a time on one
connection; with more, over CONNS connections, each with one request in flight, so the server
sees many ready connections at once, as under load. Exits 1 on anything but N responses `200`
with nothing left over. Prints `ok N` and the seconds the requests took.
"""

import selectors
import socket
import sys
import time


def connect(host, port):
    deadline = time.monotonic() + 120
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"client: nothing listens on {host}:{port} after 120 s")
            time.sleep(0.05)


def response(buf, i):
    """The length of the whole response at the start of `buf`, or None while it is partial."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].split(b"\r\n")
    length = None
    for line in head[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        sys.exit(f"client: response {i} has no content-length: {head!r}")
    total = end + 4 + length
    if len(buf) < total:
        return None
    if not head[0].startswith(b"HTTP/1.1 200 "):
        sys.exit(f"client: response {i}: {head[0]!r}")
    return total


def sequential(sock, n, request):
    buf = b""
    for i in range(n):
        sock.sendall(request)
        while (total := response(buf, i)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit(f"client: connection closed at response {i}")
            buf += chunk
        buf = buf[total:]
        if buf:
            sys.exit(f"client: bytes after response {i}: {buf!r}")


def concurrent(socks, n, request):
    sel = selectors.DefaultSelector()
    unsent = n
    for sock in socks:
        sock.setblocking(False)
        sock.sendall(request)
        unsent -= 1
        sel.register(sock, selectors.EVENT_READ, [b""])
    done = 0
    while done < n:
        ready = sel.select(timeout=60)
        if not ready:
            sys.exit(f"client: no response for 60 s after {done} of {n}")
        for key, _ in ready:
            sock, state = key.fileobj, key.data
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit(f"client: connection closed after {done} responses")
            state[0] += chunk
            total = response(state[0], done)
            if total is None:
                continue
            state[0] = state[0][total:]
            if state[0]:
                sys.exit(f"client: bytes after response {done}: {state[0]!r}")
            done += 1
            if unsent:
                sock.sendall(request)
                unsent -= 1
    sel.close()


def main():
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__.strip().splitlines()[2])
    host, port = sys.argv[1].rsplit(":", 1)
    n = int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) >= 4 else "/"
    conns = int(sys.argv[4]) if len(sys.argv) == 5 else 1
    if n < 1 or conns < 1:
        sys.exit("client: N and CONNS must be positive")
    request = f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    socks = [connect(host, int(port)) for _ in range(min(conns, n))]
    started = time.monotonic()
    if len(socks) == 1:
        sequential(socks[0], n, request)
    else:
        concurrent(socks, n, request)
    took = time.monotonic() - started
    for sock in socks:
        sock.close()
    print(f"ok {n} {took:.2f}")


if __name__ == "__main__":
    main()
