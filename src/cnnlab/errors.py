"""One-line user errors.

Anything a user can fix (a missing file, an unknown name, a wrong shape) raises :class:`UserError`
with a message that names the problem and the fix. The entry-point layer (:mod:`cnnlab.cli`) prints it
as one ``error:`` line and exits 2 instead of dumping a traceback.
"""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem with the user's input or set-up; the message says how to fix it."""


def close_matches(name: str, choices, what: str, of: str = "") -> str:
    """``"unknown <what> 'x'[ of <of>]: did you mean a, b?"`` (or the first choices when nothing is close): one line."""
    choices = [str(c) for c in choices]
    near = difflib.get_close_matches(str(name), choices, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}?" if near else f"choose one of {', '.join(choices[:12])}{' ...' if len(choices) > 12 else ''}"
    return f"unknown {what} {name!r}{f' of {of}' if of else ''}: {hint}"
