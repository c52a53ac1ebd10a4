"""The prediction server under a bounded soak: memory, latency, slow and vanishing clients, SIGTERM.

Starts `headstart serve SOURCE` on 127.0.0.1 and, in turn: REQUESTS uploads from CLIENTS threads
with one in five damaged (latency p50/p95 of the good ones), eight concurrent 10 KB PNGs of
9000 x 9000 1-bit pixels (81 Mpixels each: the decompression bomb that passes Pillow's limit),
20 clients that trickle their headers, 10 that vanish mid-upload, and SIGTERM during an upload.
Prints the server's peak resident memory after each phase. Loopback only; every loop is bounded.

Usage: python benchmarks/serve_soak.py RUN_OR_EXPORT [--requests 400] [--clients 16]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/soak.py holds the clients

from tests import soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp()) / "serve.log"
    process, url = soak.start(Path(args.source), log, "--timeout", "5")
    try:
        print(f"idle: peak RSS {soak.peak_rss_mb(process):.0f} MB")
        tic = time.perf_counter()
        codes, latencies = soak.mixed_requests(url, args.requests, args.clients, timed=True)
        good = sorted(latencies)
        print(
            f"{args.requests} requests at {args.clients} clients, 1 in 5 damaged: {codes} in "
            f"{time.perf_counter() - tic:.1f}s; good ones p50 {good[len(good) // 2]:.3f}s "
            f"p95 {good[int(len(good) * 0.95)]:.3f}s; peak RSS {soak.peak_rss_mb(process):.0f} MB"
        )
        tic = time.perf_counter()
        heavy = soak.heavy_uploads(url, count=8, side=9000)
        print(
            f"8 concurrent 81-Mpixel PNGs: {heavy} in {time.perf_counter() - tic:.1f}s; "
            f"peak RSS {soak.peak_rss_mb(process):.0f} MB"
        )
        print(f"slow clients closed within 10 s: {soak.slow_clients(url, count=20, wait=10)} of 20")
        soak.vanishing_uploads(url, count=10)
        print(f"after 10 vanished uploads: {soak.mixed_requests(url, 20, 4, bad_every=10**9)} (still serving)")
        print(f"SIGTERM during an upload: exited after {soak.seconds_to_stop_during_an_upload(process, url):.1f}s")
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    print(f"log: {len(text.splitlines())} lines, tracebacks: {text.count('Traceback')}")
    if "Traceback" in text:
        trace = text[text.index("Traceback") :]
        print(trace[:300], "...", trace[-1500:])


if __name__ == "__main__":
    main()
