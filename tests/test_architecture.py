"""The layout's rules, checked: module and function sizes, no import cycles, no private names across modules."""

import ast
from pathlib import Path

import headstart

SOURCE = Path(headstart.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(SOURCE.glob("*.py"))}


def test_no_module_over_400_lines_and_no_function_over_60():
    too_long = [
        f"{path.name}: {n} lines"
        for path in sorted(SOURCE.glob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert not too_long, too_long


def imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(headstart module, names) for every import of a headstart module, at any depth (lazy ones count)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headstart"):
            if node.module == "headstart":
                found += [(alias.name, []) for alias in node.names]
            else:
                found.append((node.module.split(".")[1], [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("headstart.")]
    return found


def test_no_import_of_another_modules_private_name():
    private = [
        f"{name} imports {target}.{item}"
        for name, tree in modules().items()
        for target, items in imports(tree)
        for item in items
        if item.startswith("_") and target != name
    ]
    assert not private, private


def test_no_import_cycle():
    graph = {
        name: {t for t, _ in imports(tree) if t != name and (SOURCE / f"{t}.py").is_file()}
        for name, tree in modules().items()
    }
    graph.pop("__init__", None)
    for targets in graph.values():
        targets.discard("__init__")
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
