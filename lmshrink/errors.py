"""The one exception type for user errors.

The CLI turns an :class:`LmshrinkError` into a single stderr line and exit code 2; anything else is a
bug and keeps its traceback.
"""


class LmshrinkError(Exception):
    """A problem with what the user asked for or handed us (bad input, missing file, impossible budget)."""


class DivergedError(LmshrinkError):
    """Training's loss became NaN/inf or exploded: a user error of the learning rate, which retraining's
    schedule answers by undoing the epoch and lowering the rate."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`LmshrinkError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LmshrinkError(message)
