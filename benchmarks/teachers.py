"""Few labels (issue 23): would a stronger teacher make better pseudo-labels? Measured on embeddings alone.

The built method (headstart.training.pseudo_labels) pseudo-labels with a logistic regression on the
frozen Lite0 embeddings. Here the same self-training (agreement with label spreading, three rounds,
val decides) is run with a teacher on Lite0, Lite1 and Lite2's embeddings side by side, and a Lite0
linear student learns from its pseudo-labels, hard or soft (distillation). Splits are the ones
benchmarks/few_labels.py deals (same seed, same K), so the labelled-only column is comparable in
kind to its runs; here every model is a linear probe, not a fine-tuned network. Needs the [lite] extra.

    python benchmarks/teachers.py --labels 10 --seeds 0,1,2,3,4 DATA [DATA ...]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from few_labels import deal, pooled  # noqa: E402  (benchmarks/ is not a package)

from headstart.training.pseudo_labels import fit_teacher, self_train  # noqa: E402

BACKBONES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


def embed(data: Path, paths: list[Path], backbone: str) -> np.ndarray:
    """Unit-length embeddings of every path (cached under $HEADSTART_CACHE like any run's)."""
    from headstart.core.hardware import pick_hardware
    from headstart.inspection.inspect_data import embedding_recipe
    from headstart.model.build import resolve_preprocessing
    from headstart.training.embeddings import Embedder

    recipe = embedding_recipe(data, backbone, None, None, 64, "cpu")
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    vectors, ok = Embedder(recipe, preprocessing, pick_hardware("cpu", "auto", True)).files(paths)
    if not ok.all():
        raise SystemExit(f"{int((~ok).sum())} unreadable images in {data}")
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def soft_student(vectors: np.ndarray, targets: np.ndarray, decay: float = 1e-4):
    """A linear softmax classifier fitted to probability targets (L-BFGS, L2 penalty): the distilled student."""
    x, t = torch.tensor(vectors), torch.tensor(targets, dtype=torch.float32)
    linear = torch.nn.Linear(x.shape[1], t.shape[1])
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = -(t * torch.log_softmax(linear(x), 1)).sum(1).mean() + decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return lambda z: linear(torch.tensor(z)).argmax(1).numpy()


def with_pseudo(xl, yl, xv, yv, xu, teacher_l, teacher_v, teacher_u):
    """(the Lite0 student fitted on labelled + kept pseudo-labels, or None where val turns them down; the teacher)."""
    kept, guess, _, teacher = self_train(teacher_l, yl, teacher_u)
    without = fit_teacher(teacher_l, yl)
    if (teacher.predict(teacher_v) == yv).mean() < (without.predict(teacher_v) == yv).mean():
        return None, teacher  # val turns them down, as in a run
    student = fit_teacher(np.vstack([xl, xu[kept]]), np.concatenate([yl, guess[kept]]))
    return student, teacher


def one_seed(data: Path, vectors: dict[str, np.ndarray], index: dict[Path, int], k: int, seed: int) -> dict:
    paths, labels = pooled(data)
    with tempfile.TemporaryDirectory() as tmp:
        labelled, unlabelled, _ = deal(paths, labels, k, seed, Path(tmp))
        rows = list(csv.reader(labelled.open()))[1:]
        hidden = [Path(row[0]) for row in list(csv.reader(unlabelled.open()))[1:]]
    names = sorted(set(labels))
    truth = {p: names.index(n) for p, n in zip(paths, labels, strict=True)}
    part = {s: np.array([index[Path(p)] for p, _, split in rows if split == s]) for s in ("train", "val", "test")}
    part["unl"] = np.array([index[p] for p in hidden])
    y = {s: np.array([truth[paths[i]] for i in rows_]) for s, rows_ in part.items()}
    x0 = vectors["lite0"]
    both = np.hstack([vectors[b[-5:]] for b in BACKBONES]) / np.sqrt(len(BACKBONES))
    acc = lambda predict, x: float((predict(x[part["test"]]) == y["test"]).mean())  # noqa: E731
    base = fit_teacher(x0[part["train"]], y["train"])
    scores = {"labelled only": acc(base.predict, x0)}
    for name, tx in (("Lite0 teacher", x0), ("Lite0+1+2 teacher", both)):
        student, teacher = with_pseudo(
            x0[part["train"]], y["train"], x0[part["val"]], y["val"], x0[part["unl"]],
            tx[part["train"]], tx[part["val"]], tx[part["unl"]],
        )  # fmt: skip
        scores[name] = acc((student or base).predict, x0)
        if tx is both:
            scores["that teacher itself"] = acc(teacher.predict, both)
            onehot = np.eye(len(names))[y["train"]]
            targets = np.vstack([onehot, teacher.predict_proba(both[part["unl"]])])
            student_soft = soft_student(np.vstack([x0[part["train"]], x0[part["unl"]]]), targets)
            scores["soft targets (distilled)"] = acc(student_soft if student else base.predict, x0)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # scikit-learn's convergence chatter
    for data in args.data:
        paths, _ = pooled(data)
        vectors = {b[-5:]: embed(data, paths, b) for b in BACKBONES}
        index = {p: i for i, p in enumerate(paths)}
        runs = [one_seed(data, vectors, index, args.labels, int(s)) for s in args.seeds.split(",")]
        base = np.array([r["labelled only"] for r in runs])
        print(f"{data.name} K={args.labels} labelled only {base.mean():.3f} ± {base.std():.3f}")
        for name in runs[0]:
            if name != "labelled only":
                v = np.array([r[name] for r in runs])
                print(f"  {name:<26} {v.mean():.3f}  paired gain {np.mean(v - base):+.3f} ± {np.std(v - base):.3f}")


if __name__ == "__main__":
    main()
