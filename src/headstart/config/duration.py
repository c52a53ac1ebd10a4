"""Durations as people write them: `90s`, `10m`, `1h`, `1h30m`, `2d`, `1.5h`, or a bare number of seconds.

Used wherever a time limit is given (tune's --budget): one parser, one error message.

Example:
    >>> parse_duration("1h30m")
    5400.0
"""

from __future__ import annotations

import math
import re

from headstart.core.errors import HeadstartError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smhd])", re.IGNORECASE)
_WHOLE = re.compile(r"(?:\s*(?:\d+(?:\.\d+)?|\.\d+)\s*[smhd]\s*)+", re.IGNORECASE)


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """Seconds in `text` ('90s', '10m', '1h', '1h30m', '2d', or seconds as a number); above zero, or a one-line error.

    what: how the value is named in the error ('--budget').
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        spelled = str(text).strip()
        try:
            seconds = float(spelled)  # a bare number is seconds
        except ValueError:
            if not _WHOLE.fullmatch(spelled):
                raise HeadstartError(
                    f"{what} {str(text)!r}: write a time like 90s, 10m, 1h, 1h30m or 2d (s, m, h, d), or seconds"
                ) from None
            seconds = sum(float(number) * UNITS[unit.lower()] for number, unit in _PART.findall(spelled))
    if not math.isfinite(seconds) or seconds <= 0:
        raise HeadstartError(f"{what} {str(text)!r}: give a time above zero, like 90s, 10m or 1h")
    return seconds


def format_duration(seconds: float) -> str:
    """'1h 30m', '10m', '45s': a duration for a log line."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return " ".join(p for p in parts if p) or "0s"
