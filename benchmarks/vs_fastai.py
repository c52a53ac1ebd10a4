"""Time to accuracy: headstart's default recipe vs fastai's fine_tune vs a plain PyTorch + timm loop.

All three start from the packaged EfficientNet-Lite0 weights on timm's tf_efficientnet_lite0,
train 3 epochs with the backbone frozen and then 3 fine-tuning epochs, at 224 px with a random
resized crop (scale 0.5-1) + flip, batch 32, and are scored on the *same* validation images
(headstart's split). Each runs in its own process so none inherits another's threads or caches.

    headstart  `headstart train DATA` defaults (head on frozen backbone, then top:3 stages)
    fastai     vision_learner(dls, <timm model with packaged weights>).fine_tune(3, freeze_epochs=3)
               (fastai's own head, discriminative LR, one-cycle; BatchNorm trains in the frozen body)
    plain      a hand-written loop: NCHW fp32, decode JPEGs every epoch, AdamW 1e-3 on the new
               Linear head for 3 epochs, then AdamW 1e-4 on everything for 3 epochs

Needs the bench extra: pip install -e ".[bench]".
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
    from headstart.data import list_images
    from headstart.recipe import DataConfig

    split = list_images(DataConfig(path=data))
    return [(str(p), y) for p, y in split.train], [(str(p), y) for p, y in split.val], split.classes


def packaged_lite0(num_classes: int | None = None):
    import timm

    from headstart.weights import load_backbone_weights

    model = timm.create_model("tf_efficientnet_lite0")
    load_backbone_weights(model, "tf_efficientnet_lite0", "package")
    if num_classes is not None:
        model.reset_classifier(num_classes)
    return model


def run_headstart(data: str) -> dict:
    import headstart

    with tempfile.TemporaryDirectory() as out:
        result = headstart.train({"data": {"path": data}, "run": {"out_dir": out, "name": "bench"}}, quiet=True)
    return {"val_acc": result.final["val_acc"], "best_val_acc": result.best["val_acc"]}


def run_fastai(data: str) -> dict:
    from fastai.vision.all import (
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
    learn = vision_learner(
        dls, lambda pretrained=True: packaged_lite0(), metrics=accuracy, pretrained=True, normalize=False
    )
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(EPOCHS, freeze_epochs=EPOCHS)
        _, acc = learn.validate()
    return {"val_acc": float(acc)}


def run_plain(data: str) -> dict:
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

    def epochs(params, lr):
        optimizer = torch.optim.AdamW(params, lr=lr)
        for _ in range(EPOCHS):
            model.train()
            for x, y in train_dl:
                optimizer.zero_grad()
                criterion(model(x), y).backward()
                optimizer.step()

    for p in model.parameters():
        p.requires_grad = False
    for p in model.get_classifier().parameters():
        p.requires_grad = True
    epochs(model.get_classifier().parameters(), 1e-3)
    for p in model.parameters():
        p.requires_grad = True
    epochs(model.parameters(), 1e-4)
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in val_dl:
            right += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return {"val_acc": right / total}


RUNNERS = {"headstart": run_headstart, "fastai": run_fastai, "plain": run_plain}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        tic = time.perf_counter()
        result = RUNNERS[sys.argv[2]](sys.argv[3])
        print(json.dumps({**result, "seconds": time.perf_counter() - tic}))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("data", nargs="+")
    parser.add_argument("--only", default="headstart,fastai,plain")
    args = parser.parse_args()
    print(f"{'data':<14}{'tool':<11}{'final val acc':>14}{'wall s':>9}")
    for data in args.data:
        for tool in args.only.split(","):
            done = subprocess.run([sys.executable, __file__, "--child", tool, data], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{Path(data).name:<14}{tool:<11} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{Path(data).name:<14}{tool:<11}{result['val_acc']:>14.4f}{result['seconds']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
