"""Training and inference throughput of one step: headstart's path vs a plain PyTorch + timm loop.

Same model (tf_efficientnet_lite0, packaged weights, fully trainable), same batch, same process.
    plain      NCHW fp32, nn.CrossEntropyLoss, AdamW: what a hand-written script does
    headstart  the hardware fast path headstart picks by default (channels_last + bf16 autocast on
               CPUs with AVX512-BF16/AMX), through headstart's own train_one_epoch

On a GPU (--device cuda) the same comparison: plain NCHW fp32 vs headstart's bf16 channels_last,
and with --compile the compiled bf16 path.

Usage: python benchmarks/step_throughput.py [--batch 32] [--size 224] [--steps 12] [--compile] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from headstart.config.recipe import ModelConfig, Stage
from headstart.core.hardware import pick_hardware
from headstart.model.build import build_model
from headstart.model.freeze import plan_freeze
from headstart.training.train import Schedule, build_optimizer, train_one_epoch


def build(size: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(weights="package"), num_classes=10, image_size=size)


def plain_train(model, batches, steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    device = next(model.parameters()).device
    for x, y in batches[:steps]:
        optimizer.zero_grad()
        criterion(model(x.to(device)), y.to(device)).backward()
        optimizer.step()


def headstart_train(model, batches, hw, steps):
    headstart_train_module(model, model, batches, hw, steps)


def headstart_train_module(model, runner, batches, hw, steps):
    """headstart's train_one_epoch over `runner` (the model itself, or its torch.compile'd view)."""
    stage = Stage(freeze="none", lr=1e-4, schedule="constant")
    plan = plan_freeze(model, "none", "frozen")
    plan.apply(model)
    optimizer = build_optimizer(model, stage)
    train_one_epoch(
        runner,
        batches[:steps],
        optimizer,
        Schedule(optimizer, stage, steps),
        nn.CrossEntropyLoss(),
        hw,
        lambda: plan.set_mode(model, True),
        0,
        "bench",
    )


@torch.no_grad()
def infer(model, batches, hw, steps):
    model.eval()
    for x, _ in batches[:steps]:
        with hw.autocast():
            model(hw.to_input(x))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU work is asynchronous: time what finished, not what was queued


def timed(fn, images: int) -> float:
    sync()
    tic = time.perf_counter()
    fn()
    sync()
    return images / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--compile", action="store_true", help="also time the torch.compile'd path (~100 s to compile on 2 cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    batches = [
        (torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,)))
        for _ in range(args.steps + 1)
    ]
    images = args.batch * args.steps
    fp32 = pick_hardware(args.device, "fp32", channels_last=False)
    fast = pick_hardware(args.device, "auto", channels_last=True)

    plain = build(args.size).to(fp32.device)
    plain_train(plain, batches, 1)  # warm-up
    plain_rate = timed(lambda: plain_train(plain, batches[1:], args.steps), images)
    plain_infer = (infer(plain, batches, fp32, 1), timed(lambda: infer(plain, batches[1:], fp32, args.steps), images))[
        1
    ]

    ours = build(args.size).to(fast.device, memory_format=torch.channels_last)
    headstart_train(ours, batches, fast, 1)
    ours_rate = timed(lambda: headstart_train(ours, batches[1:], fast, args.steps), images)
    ours_infer = (infer(ours, batches, fast, 1), timed(lambda: infer(ours, batches[1:], fast, args.steps), images))[1]

    if args.compile:
        # On a CPU, compiled fp32 channels_last: bf16 compiled kernels measured slower there. On a GPU, bf16.
        hw32 = pick_hardware(args.device, "fp32" if args.device == "cpu" else "auto", channels_last=True)
        compiled_model = build(args.size).to(hw32.device, memory_format=torch.channels_last)
        runner = torch.compile(compiled_model)
        tic = time.perf_counter()
        headstart_train_module(compiled_model, runner, batches, hw32, 1)
        sync()
        compile_seconds = time.perf_counter() - tic
        compiled_rate = timed(
            lambda: headstart_train_module(compiled_model, runner, batches[1:], hw32, args.steps), images
        )

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(
        f"tf_efficientnet_lite0 {args.size}px batch {args.batch}, {args.steps} steps, torch {torch.__version__}, {where}"
    )
    print(
        f"train img/s   plain NCHW fp32 {plain_rate:7.1f} | headstart {fast.describe()} {ours_rate:7.1f} | ratio {ours_rate / plain_rate:.2f}x"
    )
    if args.compile:
        print(
            f"train img/s   headstart compiled {hw32.describe()} {compiled_rate:7.1f} | ratio {compiled_rate / plain_rate:.2f}x "
            f"(first step incl. compiling: {compile_seconds:.0f}s)"
        )
    print(
        f"infer img/s   plain NCHW fp32 {plain_infer:7.1f} | headstart {fast.describe()} {ours_infer:7.1f} | ratio {ours_infer / plain_infer:.2f}x"
    )


if __name__ == "__main__":
    main()
