"""A bounded soak of `headstart serve` on 127.0.0.1: many requests, pixel-heavy uploads, slow and vanishing clients.

Used by tests/test_serve.py (small counts, assertions) and benchmarks/serve_soak.py (the figures).
Every loop is bounded in count and time, and only loopback addresses are contacted.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image


def png(size=(20, 20), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def one_bit_png(side: int) -> bytes:
    """side x side pixels of mode '1' in a few kilobytes: cheap to send, 3 bytes a pixel once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 1).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(source: Path, log: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """`headstart serve SOURCE` on a free loopback port, its output into `log`; waits until it answers."""
    port = free_port()
    command = [sys.executable, "-m", "headstart.cli", "serve", str(source), "--port", str(port), "--device", "cpu"]
    process = subprocess.Popen([*command, *flags], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"headstart serve did not come up: {log.read_text()[-1000:]}")


def peak_rss_mb(process: subprocess.Popen) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def mixed_requests(url: str, count: int, clients: int, bad_every: int = 5, timed: bool = False):
    """`count` uploads from `clients` threads, one in `bad_every` damaged; status code -> how many.

    With `timed`, also the seconds each good (200) request took.
    """
    good, bad = png(), png((64, 64))[:80]

    def one(i: int) -> tuple[int, float]:
        body = bad if (i + 1) % bad_every == 0 else good
        tic = time.perf_counter()
        answer = httpx.post(f"{url}/predict", files={"file": (f"{i}.png", body, "image/png")}, timeout=60)
        return answer.status_code, time.perf_counter() - tic

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(count)))
    codes = [code for code, _ in results]
    counts = {code: codes.count(code) for code in sorted(set(codes))}
    return (counts, [seconds for code, seconds in results if code == 200]) if timed else counts


def heavy_uploads(url: str, count: int, side: int) -> list[int]:
    """`count` concurrent uploads of side x side 1-bit PNGs: few bytes, many decoded pixels."""
    body = one_bit_png(side)
    with ThreadPoolExecutor(count) as pool:
        return list(
            pool.map(
                lambda i: httpx.post(f"{url}/predict", content=body, timeout=300).status_code,
                range(count),
            )
        )


def slow_clients(url: str, count: int, wait: float) -> int:
    """Open `count` connections that trickle a request's headers; how many the server closed within `wait` s."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sockets.append(sock)
    deadline, closed = time.monotonic() + wait, set()
    while time.monotonic() < deadline and len(closed) < count:
        for index, sock in enumerate(sockets):
            if index in closed:
                continue
            try:
                sock.sendall(b"X")  # one more byte of a header that never ends
                sock.settimeout(0.01)
                if sock.recv(1) == b"":
                    closed.add(index)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                closed.add(index)
        time.sleep(0.5)
    for sock in sockets:
        sock.close()
    return len(closed)


def vanishing_uploads(url: str, count: int) -> None:
    """`count` clients that announce a large upload, send part of it and close the connection."""
    host, port = url.removeprefix("http://").split(":")
    for _ in range(count):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000000\r\n\r\n" + zlib.compress(os.urandom(1000))
            )
            time.sleep(0.05)


def seconds_to_stop_during_an_upload(process: subprocess.Popen, url: str) -> float:
    """SIGTERM while an upload is half sent: seconds until the server process has exited."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n" + b"\0" * 1000)
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            return float("inf")
        return time.monotonic() - started
