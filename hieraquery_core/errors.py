"""User-facing errors.

Every mistake a user can make (a wrong file, a bad size, an empty prompt) is reported as one
:class:`HieraQueryError` whose message names the problem and the fix, instead of a stack trace from
deep inside torch. ComfyUI shows the message in its error panel; the command line prints it.
"""

from __future__ import annotations


class HieraQueryError(ValueError):
    """A problem with the user's input, checkpoint or configuration, with the fix in its message."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`HieraQueryError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise HieraQueryError(message)
