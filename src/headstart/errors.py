"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""

import difflib
from collections.abc import Iterable


class HeadstartError(Exception):
    """A problem with the user's input (data, recipe, weights), explained in one line."""


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> str:
    """Format the nearest valid names for an error message ('' when nothing is close)."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; did you mean: {', '.join(matches)}?" if matches else ""
