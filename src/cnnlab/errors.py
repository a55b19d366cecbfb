"""One-line user errors.

Anything a user can fix (a missing file, an unknown name, a wrong shape) raises :class:`UserError`
with a message that names the problem and the fix. The entry-point layer (:mod:`cnnlab.cli`) prints it
as one ``error:`` line and exits 2 instead of dumping a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or set-up; the message says how to fix it."""
