"""The layout's rules, checked over every sub-package: sizes, no import cycles, no private names across modules,
and which package may import which."""

import ast
from pathlib import Path

import headstart

SOURCE = Path(headstart.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_ROOT_MODULES = 8

# Each package and the packages it may import (lazy imports inside functions count too).
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "data": {"core", "config"},
    "model": {"core", "config", "data"},
    "tasks": {"core", "config"},
    "training": {"core", "config", "data", "model", "tasks"},
    "deploy": {"core", "config", "data", "model", "tasks"},  # a served model never needs the trainer
    "inspection": {"core", "config", "data", "model", "tasks", "training"},
    "experiments": {"core", "config", "data", "model", "tasks", "training", "deploy"},
    "labeling": {"core", "config", "data", "model", "tasks", "training", "deploy"},
    "cli": {
        "core",
        "config",
        "data",
        "model",
        "tasks",
        "training",
        "deploy",
        "inspection",
        "experiments",
        "labeling",
        "",
    },
}


def modules() -> dict[str, ast.Module]:
    """Dotted name below headstart ('core.runs', '' for the root __init__) -> parsed module, for every file."""
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def package_of(name: str) -> str:
    return name.split(".")[0] if "." in name or name in ALLOWED else ""


def imports(tree: ast.Module, importer: str) -> list[tuple[str, list[str]]]:
    """(imported module below headstart, names) for every import of headstart code, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headstart"):
            module = node.module.removeprefix("headstart").removeprefix(".")
            for alias in node.names:  # `from headstart.core import runs` imports the module core.runs
                submodule = f"{module}.{alias.name}" if module else alias.name
                if (SOURCE / f"{submodule.replace('.', '/')}.py").is_file():
                    found.append((submodule, []))
                else:
                    found.append((module, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("headstart."), []) for a in node.names if a.name.startswith("headstart.")]
    return found


def test_the_package_root_holds_sub_packages_and_few_modules():
    root_modules = sorted(p.name for p in SOURCE.glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
    packages = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)
    assert len(modules()) > 60  # the walk reaches into the sub-packages


def test_no_module_over_400_lines_and_no_function_over_60():
    too_long = [
        f"{path.relative_to(SOURCE)}: {n} lines"
        for path in sorted(SOURCE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert not too_long, too_long


def test_each_package_imports_only_what_its_rule_allows():
    broken = sorted(
        f"{name} imports {target}"
        for name, tree in modules().items()
        if package_of(name) in ALLOWED
        for target, _ in imports(tree, name)
        if package_of(target) != package_of(name) and package_of(target) not in ALLOWED[package_of(name)]
    )
    assert not broken, broken


def test_nothing_imports_the_cli():
    users = sorted(
        name for name, tree in modules().items() if package_of(name) != "cli" and any(
            package_of(target) == "cli" for target, _ in imports(tree, name)
        )
    )  # fmt: skip
    assert not users, users


def test_the_rules_catch_a_planted_violation():
    planted = ast.parse("def f():\n    from headstart.training.train import train\n")
    assert [t for t, _ in imports(planted, "deploy.server")] == ["training.train"]
    assert package_of("training.train") not in ALLOWED["deploy"]


def test_no_import_of_another_modules_private_name():
    private = [
        f"{name} imports {target}.{item}"
        for name, tree in modules().items()
        for target, items in imports(tree, name)
        for item in items
        if item.startswith("_") and target != name
    ]
    assert not private, private


def test_no_import_cycle():
    known = modules()
    graph = {
        name: {t for t, _ in imports(tree, name) if t != name and t in known and t != "" and t not in ALLOWED}
        for name, tree in known.items()
        if name != "" and name not in ALLOWED  # package __init__ files only describe their package
    }
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_cross_entropy_softmax_and_argmax_live_in_the_single_label_task_alone():
    """The task seam: every other module asks the task object (tasks/single_label.py) instead."""
    names = {"cross_entropy", "CrossEntropyLoss", "softmax", "argmax", "log_softmax"}
    found = sorted(
        f"{name}: {node.attr}"
        for name, tree in modules().items()
        if name != "tasks.single_label"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in names
    )
    assert not found, found


def test_the_trainer_only_runs_stages():
    tree = modules()["training.stages"]
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= 150
