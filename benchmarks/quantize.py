"""int8 vs fp32 ONNX vs PyTorch eager on one run: validation accuracy and CPU images/s.

Exports RUN's best model as fp32 ONNX and as int8 ONNX (static, calibrated on the run's own
validation images), then for each runtime: accuracy on the run's validation split, and
throughput of the model alone on the already transformed validation images (batch 32, CPU,
best of --repeats passes, so decoding and resizing are not counted).

Usage: nice -n 10 python benchmarks/quantize.py RUN [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import headstart
from headstart.config.recipe import Recipe
from headstart.core.checkpoint import load_checkpoint
from headstart.data.layouts import list_images


def throughput(forward, batches: list[torch.Tensor], repeats: int) -> float:
    count = sum(len(b) for b in batches)
    best = float("inf")
    with torch.no_grad():
        forward(batches[0])  # warm-up: onnxruntime and torch allocate on the first call
        for _ in range(repeats):
            tic = time.perf_counter()
            for batch in batches:
                forward(batch)
            best = min(best, time.perf_counter() - tic)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.run)
    split = list_images(Recipe.from_dict(checkpoint.recipe).data)
    int8 = headstart.export(args.run, format="onnx", quantize="int8")
    fp32 = int8.with_name("model.onnx")
    runtimes = {
        "PyTorch eager (fp32)": headstart.load(args.run, device="cpu"),
        "ONNX fp32 (onnxruntime)": headstart.load(fp32),
        "ONNX int8 static (onnxruntime)": headstart.load(int8),
    }
    print(
        f"{len(split.val)} validation images, {torch.get_num_threads()} threads, size {fp32.stat().st_size:,} B fp32 / {int8.stat().st_size:,} B int8"
    )
    print("| runtime | val accuracy | img/s (batch 32) |\n|---|---|---|")
    for name, predictor in runtimes.items():
        evaluation = predictor.evaluate_samples(split.val)
        from PIL import Image

        tensors = [predictor.transform(Image.open(path).convert("RGB")) for path, _ in split.val]
        batches = [torch.stack(tensors[i : i + 32]) for i in range(0, len(tensors), 32)]
        speed = throughput(predictor.forward, batches, args.repeats)
        print(f"| {name} | {evaluation.accuracy:.4f} | {speed:.1f} |")


if __name__ == "__main__":
    main()
