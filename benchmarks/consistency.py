"""Few labels (issue 23): FixMatch-style consistency at the `top:1` cut against labelled-only, before building it.

The default recipe fine-tunes the last backbone stage (`top:1`) on stored outputs of the frozen part
before it. This asks whether unlabelled images help there the way FixMatch (Sohn et al. 2020) uses
them: each unlabelled image's eval view gives a pseudo-label where the current model is at least
--tau confident, and the model learns that label on a RandAugment view of the same image, beside
the labelled images' own loss. Only the top stage and head adapt (the frozen prefix is what a CPU
run can afford), and the augmented views are computed once (--views per image) rather than drawn
fresh every epoch.

Every image of a set (splits pooled) passes the frozen prefix once per view; the outputs are kept
in --features and reused by every seed. Per seed, the images are dealt as benchmarks/few_labels.py
deals them (test 25 % per class, K labelled train and K labelled val per class, the rest
unlabelled). Both variants then train as the default recipe does: a head on the pooled eval-view
features (AdamW 2e-3, early stop on val loss, patience 5, at most 60 epochs), then `top:1` + head
(5e-4, 0.3x for the backbone, BatchNorm frozen) for --epochs epochs, keeping the epoch with the
best val loss (the head's weights if none beats them). The test accuracy of every epoch is printed
too, to tell "val never chose it" from "it did not help".

    python benchmarks/consistency.py --labels 10 --seeds 0,1,2 --out consistency.jsonl DATA [DATA ...]
    python benchmarks/consistency.py --table consistency.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_labels import pooled  # noqa: E402  # the same pooled images, in the same order, as few_labels.py


class Files(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from headstart.data.images import open_image

        with open_image(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def default_backbone():
    from headstart.config.recipe import Recipe
    from headstart.model.build import build_model, resolve_preprocessing

    recipe = Recipe()
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    return build_model(recipe.model, 2, preprocessing["image_size"]).backbone, preprocessing


def prefix_outputs(data: Path, views: int, store: Path) -> dict:
    """The frozen prefix's outputs (bf16) for every image: the eval view, then `views` RandAugment views."""
    from headstart.data.images import build_transforms

    target = store / f"{data.name}.pt"
    if target.is_file():
        return torch.load(target)
    torch.manual_seed(0)
    paths, labels = pooled(data)
    backbone, preprocessing = default_backbone()
    prefix = nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[:-1]).eval()
    prefix.to(memory_format=torch.channels_last)
    strong, plain = build_transforms(preprocessing, "randaugment")
    stacked = []
    for transform in [plain] + [strong] * views:
        outputs = []
        for batch in DataLoader(Files(paths, transform), batch_size=32, num_workers=1):
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                outputs.append(prefix(batch.to(memory_format=torch.channels_last)).to(torch.bfloat16).contiguous())
        stacked.append(torch.cat(outputs))
    found = {"views": torch.stack(stacked), "labels": labels}
    store.mkdir(parents=True, exist_ok=True)
    torch.save(found, target)
    return found


def deal(labels: list[str], k: int, seed: int) -> dict[str, torch.Tensor]:
    """Indices per split, dealt exactly as few_labels.deal deals the files."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": [], "unlabelled": []}
    for name in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == name]
        members = [members[i] for i in rng.permutation(len(members))]
        n_test = max(1, round(0.25 * len(members)))
        rest = members[n_test:]
        out["test"] += members[:n_test]
        out["train"] += rest[:k]
        out["val"] += rest[k : 2 * k]
        out["unlabelled"] += rest[2 * k :]
    return {split: torch.tensor(indices) for split, indices in out.items()}


class Top(nn.Module):
    """The last backbone stage, conv_head and its BatchNorm, average pooling and a new linear head."""

    def __init__(self, backbone, classes: int):
        super().__init__()
        parts = (backbone.blocks[-1], backbone.conv_head, backbone.bn2)
        self.body = nn.Sequential(*(copy.deepcopy(part) for part in parts))
        self.fc = nn.Linear(backbone.num_features, classes)

    def embed(self, x):
        return self.body(x.float().contiguous(memory_format=torch.channels_last)).mean((2, 3))

    def forward(self, x):
        return self.fc(self.embed(x))


def batches(indices: torch.Tensor, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = indices[torch.randperm(len(indices), generator=generator)]
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.no_grad()
def logits_of(model: Top, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", torch.bfloat16):
        return torch.cat([model(features[indices[i : i + 256]]).float() for i in range(0, len(indices), 256)])


def train_head(model: Top, features: torch.Tensor, y: torch.Tensor, split: dict, generator) -> float:
    """The head on pooled eval-view features, early-stopped on val loss; returns that best val loss."""
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        pooled_all = torch.cat([model.embed(features[i : i + 256]).float() for i in range(0, len(y), 256)])
    optimizer = torch.optim.AdamW(model.fc.parameters(), lr=2e-3)
    best, kept, waited = float("inf"), None, 0
    for _ in range(60):
        for batch in batches(split["train"], 32, generator):
            loss = F.cross_entropy(model.fc(pooled_all[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = F.cross_entropy(model.fc(pooled_all[split["val"]]), y[split["val"]]).item()
        if val < best:
            best, kept, waited = val, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= 5:
                break
    model.load_state_dict(kept)
    return best


def run(found: dict, backbone, seed: int, k: int, variant: str, tau: float, epochs: int) -> dict:
    views, labels = found["views"], found["labels"]
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    split = deal(labels, k, seed)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Top(backbone, len(classes)).eval()  # eval mode throughout: BatchNorm frozen, as the default
    best = train_head(model, views[0], y, split, generator)
    kept = copy.deepcopy(model.state_dict())
    groups = [{"params": model.body.parameters(), "lr": 5e-4 * 0.3}, {"params": model.fc.parameters(), "lr": 5e-4}]
    optimizer = torch.optim.AdamW(groups)
    confident, trace = [], []
    for _ in range(epochs):
        if variant == "labelled":
            steps = [(batch, None) for batch in batches(split["train"], 32, generator)]
        else:  # an epoch is a pass over the unlabelled images, each step beside 32 labelled ones
            draw = lambda: split["train"][torch.randint(len(split["train"]), (32,), generator=generator)]  # noqa: E731
            steps = [(draw(), unlabelled) for unlabelled in batches(split["unlabelled"], 64, generator)]
        used = 0
        for batch, unlabelled in steps:
            with torch.autocast("cpu", torch.bfloat16):
                loss = F.cross_entropy(model(views[0][batch]).float(), y[batch])
                if unlabelled is not None:
                    with torch.no_grad():
                        confidence, pseudo = model(views[0][unlabelled]).float().softmax(1).max(1)
                    mask = (confidence >= tau).float()
                    used += int(mask.sum())
                    view = torch.randint(1, views.shape[0], (len(unlabelled),), generator=generator)
                    strong = model(views[view, unlabelled]).float()
                    loss = loss + (F.cross_entropy(strong, pseudo, reduction="none") * mask).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        confident.append(used)
        test_acc = (logits_of(model, views[0], split["test"]).argmax(1) == y[split["test"]]).float().mean().item()
        trace.append(round(test_acc, 3))
        val = F.cross_entropy(logits_of(model, views[0], split["val"]), y[split["val"]]).item()
        if val < best:
            best, kept = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(kept)
    test_acc = (logits_of(model, views[0], split["test"]).argmax(1) == y[split["test"]]).float().mean().item()
    return {"test_acc": test_acc, "test_acc_per_epoch": trace, "confident_per_epoch": confident}


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(
        "| data | seeds | labelled only | FixMatch, kept by val | gain | gain at the last epoch | best epoch's gain (test-picked) |"
    )
    print("|---|---|---|---|---|---|---|")
    for data in dict.fromkeys(r["data"] for r in rows):
        by = {(r["variant"], r["seed"]): r for r in rows if r["data"] == data}
        seeds = sorted({s for v, s in by if ("labelled", s) in by and ("fixmatch", s) in by})
        base = [by["labelled", s]["test_acc"] for s in seeds]
        ours = [by["fixmatch", s]["test_acc"] for s in seeds]

        def paired(pick) -> str:
            gains = [pick(by["fixmatch", s]) - pick(by["labelled", s]) for s in seeds]
            return f"{statistics.mean(gains):+.3f} ± {statistics.pstdev(gains):.3f}"

        print(
            f"| {data} | {len(seeds)} | {statistics.mean(base):.3f} ± {statistics.pstdev(base):.3f} | "
            f"{statistics.mean(ours):.3f} ± {statistics.pstdev(ours):.3f} | {paired(lambda r: r['test_acc'])} | "
            f"{paired(lambda r: r['test_acc_per_epoch'][-1])} | {paired(lambda r: max(r['test_acc_per_epoch']))} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--labels", type=int, default=10, help="labelled images per class, train and val each")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--views", type=int, default=2, help="RandAugment views per image, computed once")
    parser.add_argument("--tau", type=float, default=0.95, help="confidence a pseudo-label needs")
    parser.add_argument("--epochs", type=int, default=10, help="of the top:1 stage")
    parser.add_argument("--features", type=Path, default=Path("consistency-features"))
    parser.add_argument("--out", type=Path, default=Path("consistency.jsonl"))
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    backbone, _ = default_backbone()
    for data in args.data:
        found = prefix_outputs(data.resolve(), args.views, args.features)
        for seed in map(int, args.seeds.split(",")):
            for variant in ("labelled", "fixmatch"):
                started = time.perf_counter()
                result = run(found, backbone, seed, args.labels, variant, args.tau, args.epochs)
                row = {"data": data.name, "seed": seed, "variant": variant, "labels": args.labels, **result,
                       "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
                print(json.dumps(row), flush=True)
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
