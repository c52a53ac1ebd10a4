"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""

import difflib
from collections.abc import Iterable


class HeadstartError(Exception):
    """A problem with the user's input (data, recipe, weights), explained in one line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: still a KeyboardInterrupt, carrying the run folder so the message can name it."""

    def __init__(self, run_dir: object, resumable: bool):
        super().__init__(str(run_dir))
        self.run_dir, self.resumable = run_dir, resumable


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> str:
    """Format the nearest valid names for an error message ('' when nothing is close)."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; did you mean: {', '.join(matches)}?" if matches else ""
