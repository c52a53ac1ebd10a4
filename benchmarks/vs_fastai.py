"""Time to accuracy: headstart's default recipe vs fastai's fine_tune vs a plain PyTorch + timm loop.

All three start from the packaged EfficientNet-Lite0 weights on timm's tf_efficientnet_lite0 and
are scored on the *same* validation images (headstart's split) after every epoch:

    headstart  `headstart.train(DATA)`: the default recipe (cached head until early stopping, then
               top:1 on cached features), each epoch's val accuracy as the run logs it
    fastai     vision_learner(dls, <timm model with packaged weights>).fine_tune(3, freeze_epochs=3)
               at 224 px with a random resized crop (scale 0.5-1) + flip, batch 32 (fastai's head,
               discriminative LR, one-cycle; BatchNorm trains in the frozen body)
    plain      a hand-written loop: NCHW fp32, decode JPEGs every epoch, AdamW 1e-3 on the new
               Linear head for 3 epochs, then AdamW 1e-4 on everything for 3 epochs

Each tool runs in its own process (none inherits another's threads or caches; headstart gets an
empty $HEADSTART_CACHE). Its clock starts when its training function is called, so it includes
listing, decoding, building the model and (headstart) computing cached features, and each point
is taken after that epoch's validation. The table gives each tool's final accuracy and total
seconds, and for headstart the first moment its val accuracy was higher than both peers' final
one, and how many times sooner that was than the faster peer finished.

Needs fastai, installed without touching torch:
    pip install --no-deps fastai && pip install fastcore fastdownload fastprogress fasttransform plum-dispatch pandas cloudpickle
Usage: python benchmarks/vs_fastai.py DATA [DATA ...] [--only headstart,fastai,plain]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 3
SIZE = 224
BATCH = 32


def split_lists(data: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    from headstart.config.recipe import DataConfig
    from headstart.data.layouts import list_images

    split = list_images(DataConfig(path=data))
    return [(str(p), y) for p, y in split.train], [(str(p), y) for p, y in split.val], split.classes


def packaged_lite0(num_classes: int | None = None):
    import timm

    from headstart.model.weights import load_backbone_weights

    model = timm.create_model("tf_efficientnet_lite0")
    load_backbone_weights(model, "tf_efficientnet_lite0", "package")
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model


def run_headstart(data: str, clock: list) -> dict:
    import os

    import headstart
    from headstart.training.stages import Trainer

    real = Trainer.record_epoch

    def timed(self, index, row, *args):
        clock.append((time.perf_counter() - START[0], row["val_acc"]))
        return real(self, index, row, *args)

    Trainer.record_epoch = timed
    with tempfile.TemporaryDirectory() as out:
        os.environ["HEADSTART_CACHE"] = str(Path(out) / "cache")
        result = headstart.train({"data": {"path": data}, "run": {"out_dir": out, "name": "bench"}}, quiet=True)
    return {"val_acc": result.final["val_acc"], "best_val_acc": result.best["val_acc"]}


def run_fastai(data: str, clock: list) -> dict:
    from fastai.vision.all import (
        Callback,
        CategoryBlock,
        DataBlock,
        Flip,
        FuncSplitter,
        ImageBlock,
        Normalize,
        RandomResizedCrop,
        accuracy,
        vision_learner,
    )

    train, val, classes = split_lists(data)
    label = dict(train + val)
    val_paths = {p for p, _ in val}
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=classes)),
        get_items=lambda _: [Path(p) for p, _ in train + val],
        splitter=FuncSplitter(lambda p: str(p) in val_paths),
        get_y=lambda p: classes[label[str(p)]],
        item_tfms=RandomResizedCrop(SIZE, min_scale=0.5),
        batch_tfms=[Flip(), Normalize.from_stats([0.5] * 3, [0.5] * 3)],
    )
    dls = block.dataloaders(data, bs=BATCH, num_workers=0, device="cpu")

    class Clock(Callback):
        order = 60  # after the Recorder has the epoch's metrics

        def after_epoch(self):
            clock.append((time.perf_counter() - START[0], float(self.recorder.log[-2])))

    learn = vision_learner(
        dls, lambda pretrained=True: packaged_lite0(), metrics=accuracy, pretrained=True, normalize=False, cbs=[Clock()]
    )
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(EPOCHS, freeze_epochs=EPOCHS)
    return {"val_acc": clock[-1][1]}


def run_plain(data: str, clock: list) -> dict:
    import torch
    from PIL import Image
    from torch import nn
    from torchvision import transforms

    train, val, classes = split_lists(data)
    normalize = transforms.Normalize([0.5] * 3, [0.5] * 3)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE, scale=(0.5, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(SIZE), transforms.ToTensor(), normalize])

    class Files(torch.utils.data.Dataset):
        def __init__(self, items, tf):
            self.items, self.tf = items, tf

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, y = self.items[i]
            return self.tf(Image.open(path).convert("RGB")), y

    torch.manual_seed(0)
    train_dl = torch.utils.data.DataLoader(Files(train, train_tf), batch_size=BATCH, shuffle=True, drop_last=True)
    val_dl = torch.utils.data.DataLoader(Files(val, val_tf), batch_size=BATCH)
    model = packaged_lite0(len(classes))
    criterion = nn.CrossEntropyLoss()

    def score():
        model.eval()
        right = total = 0
        with torch.no_grad():
            for x, y in val_dl:
                right += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        return right / total

    def epochs(params, lr):
        optimizer = torch.optim.AdamW(params, lr=lr)
        for _ in range(EPOCHS):
            model.train()
            for x, y in train_dl:
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                optimizer.step()
            clock.append((time.perf_counter() - START[0], score()))

    for p in model.parameters():
        p.requires_grad = False
    for p in model.get_classifier().parameters():
        p.requires_grad = True
    epochs(model.get_classifier().parameters(), 1e-3)
    for p in model.parameters():
        p.requires_grad = True
    epochs(model.parameters(), 1e-4)
    return {"val_acc": clock[-1][1]}


RUNNERS = {"headstart": run_headstart, "fastai": run_fastai, "plain": run_plain}


START = [0.0]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        clock: list = []
        START[0] = time.perf_counter()
        result = RUNNERS[sys.argv[2]](sys.argv[3], clock)
        print(json.dumps({**result, "seconds": time.perf_counter() - START[0], "clock": clock}))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="+")
    parser.add_argument("--only", default="headstart,fastai,plain")
    args = parser.parse_args()
    for data in args.data:
        results = {}
        for tool in args.only.split(","):
            done = subprocess.run([sys.executable, __file__, "--child", tool, data], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{Path(data).name} {tool} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            results[tool] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{Path(data).name} {tool}: {json.dumps(results[tool])}", flush=True)
        print_table(Path(data).name, results)


def print_table(name: str, results: dict) -> None:
    peers = {tool: r for tool, r in results.items() if tool != "headstart"}
    # "kept": the weights the tool hands over. headstart keeps its best epoch by val loss (best.pt),
    # the peers their last epoch.
    print(f"\n{name}\n| tool | last epoch val acc | best epoch val acc | kept weights val acc | total s | epochs |")
    print("|---|---|---|---|---|---|")
    for tool, r in results.items():
        best = max(acc for _, acc in r["clock"])
        kept = r.get("best_val_acc", r["clock"][-1][1])
        print(
            f"| {tool} | {r['clock'][-1][1]:.4f} | {best:.4f} | {kept:.4f} | {r['seconds']:.0f} | {len(r['clock'])} |"
        )
    if "headstart" in results and peers:
        target = max(r["clock"][-1][1] for r in peers.values())
        faster = min(r["seconds"] for r in peers.values())
        reached = next((t for t, acc in results["headstart"]["clock"] if acc > target), None)
        if reached is None:
            print(f"headstart never exceeded the peers' best final val acc {target:.4f}")
        else:
            print(
                f"headstart exceeded the peers' best final val acc {target:.4f} after {reached:.0f} s: "
                f"{faster / reached:.1f}x sooner than the faster peer finished ({faster:.0f} s)"
            )


if __name__ == "__main__":
    main()
