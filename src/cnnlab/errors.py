"""One-line user errors.

Anything a user can fix (a missing file, an unknown name, a wrong shape) raises :class:`UserError`
with a message that names the problem and the fix. Entry points print it as one line and exit 2
instead of dumping a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """A problem with the user's input or set-up; the message says how to fix it."""


def exit_on_user_error(fn: F) -> F:
    """Wrap an entry point so a :class:`UserError` becomes ``error: <message>`` and exit code 2.

    Set ``CNNLAB_TRACEBACK=1`` to see the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if os.environ.get("CNNLAB_TRACEBACK"):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
