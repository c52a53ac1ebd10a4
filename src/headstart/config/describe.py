"""Recipes as text: one line for a validation error, and a recipe as dotted keys (run labels, tracker parameters)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError


def describe_validation_error(err: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field."""
    problems = err.errors()
    first = problems[0]
    # Pydantic puts the adapter's kind tag into the location; users never wrote it, so drop it.
    location = ".".join(str(part) for part in first["loc"] if part not in ("noise", "resize", "conv"))
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"field '{location}': {message}{more}" if location else f"{message}{more}"


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """A recipe dict as dotted keys; stages keyed by their names ('finetune.bn'), lists of values as JSON text.

    Used to label runs by the fields in which their recipes differ, and as tracker parameters.
    """
    if isinstance(values, dict):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(values, list) and values and all(isinstance(v, dict) and "name" in v for v in values):
        flat = {}
        for item in values:
            flat.update(flatten({k: v for k, v in item.items() if k != "name"}, f"{prefix}{item['name']}."))
        return flat
    return {prefix[:-1]: json.dumps(values) if isinstance(values, (list, dict)) else values}
