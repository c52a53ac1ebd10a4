"""The tasks by name, as a data set's listing (DataSplit.task) and a checkpoint name them."""

from __future__ import annotations

from headstart.tasks.multi_label import MULTI_LABEL, MultiLabel
from headstart.tasks.single_label import SINGLE_LABEL, SingleLabel

Task = SingleLabel | MultiLabel
TASKS: dict[str, Task] = {SINGLE_LABEL.name: SINGLE_LABEL, MULTI_LABEL.name: MULTI_LABEL}


def task_named(name: str | None) -> Task:
    """The task called `name`; None (a checkpoint from before tasks had names) is single-label."""
    return TASKS[name or SINGLE_LABEL.name]
