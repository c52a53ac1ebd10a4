"""The prediction server under concurrent clients: requests/s and p50/p99 latency, batching on and off.

Starts `headstart serve SOURCE` on 127.0.0.1 in a subprocess, once with batching (`--max-batch 16
--window-ms 5`) and once without (`--max-batch 1`), and at each concurrency level (1, 8, 32
clients, each sending one request after another) posts real images (the JPEG/PNG files of
--images, cycled) as multipart uploads until --requests answers or --seconds have passed.
Decoding happens on the server, so it is counted. Clients and server share this machine's cores.

Usage: nice -n 10 python benchmarks/serve.py SOURCE --images FOLDER [--requests 96] [--seconds 60]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/soak.py starts the server

from tests import soak  # noqa: E402


async def load(url: str, images: list[tuple[str, bytes]], clients: int, requests: int, seconds: float):
    """(answers, elapsed seconds, latencies) with `clients` concurrent senders."""
    latencies: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            name, data = images[sent % len(images)]
            sent += 1
            tic = time.perf_counter()
            answer = await http.post(f"{url}/predict", files={"file": (name, data)})
            answer.raise_for_status()
            latencies.append(time.perf_counter() - tic)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return len(latencies), time.perf_counter() - start, latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", help="run folder or exported model")
    parser.add_argument("--images", required=True, help="folder of images to send (searched recursively)")
    parser.add_argument("--requests", type=int, default=96, help="answers per concurrency level")
    parser.add_argument("--seconds", type=float, default=60, help="time limit per concurrency level")
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args()
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [(p.name, p.read_bytes()) for p in files[:64]]
    print(f"{len(images)} images ({sum(len(d) for _, d in images) / len(images) / 1024:.0f} KiB on average)")
    print("| batching | clients | answers | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for label, max_batch, window in (("on (16, 5 ms)", 16, 5.0), ("off", 1, 0.0)):
        log = Path(tempfile.mkdtemp()) / "serve.log"
        process, url = soak.start(Path(args.source), log, "--max-batch", str(max_batch), "--window-ms", str(window))
        try:
            asyncio.run(load(url, images, 2, 4, 30))  # warm-up
            for clients in map(int, args.clients.split(",")):
                count, elapsed, latencies = asyncio.run(load(url, images, clients, args.requests, args.seconds))
                print(
                    f"| {label} | {clients} | {count} | {count / elapsed:.1f} | "
                    f"{1000 * percentile(latencies, 50):.0f} | {1000 * percentile(latencies, 99):.0f} |",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
