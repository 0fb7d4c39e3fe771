"""One retry policy for everything that talks to a network: bounded tries, exponential back-off."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")
RETRIES = 5
DELAY = 0.2  # seconds before the first retry; doubled before each next one


def retry(
    fn: Callable[[], T],
    transient: Callable[[BaseException], bool],
    retries: int = RETRIES,
    delay: float = DELAY,
) -> T:
    """``fn()``, called again after ``delay · 2**attempt`` seconds while it raises an error that
    ``transient`` accepts, at most ``retries`` more times. Other errors, and the last one, propagate."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:
            if attempt == retries or not transient(e):
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover
