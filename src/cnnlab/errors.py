"""One-line user errors.

Anything a user can fix (a missing file, an unknown name, a wrong shape) raises :class:`UserError`
with a message that names the problem and the fix. :func:`exit_with` ends the process with it as one ``error:``
line and exit code 2 instead of a traceback; the entry-point layer (:mod:`cnnlab.cli`) and the run-dir callback
(:mod:`cnnlab.rundir`) call it.
"""

from __future__ import annotations

import difflib
import errno
import os
import sys
import traceback
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or set-up; the message says how to fix it."""


def close_matches(name: str, choices, what: str, of: str = "") -> str:
    """``"unknown <what> 'x'[ of <of>]: did you mean a, b?"`` (or the first choices when nothing is close): one line."""
    choices = [str(c) for c in choices]
    near = difflib.get_close_matches(str(name), choices, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}?" if near else f"choose one of {', '.join(choices[:12])}{' ...' if len(choices) > 12 else ''}"
    return f"unknown {what} {name!r}{f' of {of}' if of else ''}: {hint}"


def user_error_of(exc: BaseException) -> UserError | None:
    """The :class:`UserError` that caused ``exc`` (``exc`` itself, or one in its ``__cause__``/``__context__`` chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_with(err: BaseException, cause: BaseException | None = None) -> None:
    """Print ``error: <err>`` (after the traceback of ``cause`` when ``CNNLAB_TRACEBACK`` is set) and exit 2.
    An open W&B run is closed first, so its closing lines come before the ``error:`` line, not after."""
    if os.environ.get("CNNLAB_TRACEBACK"):
        traceback.print_exception(cause or err)
    close_wandb()
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def close_wandb(quiet: bool = False) -> None:
    """Finish an open W&B run; ``quiet``: without W&B's closing lines (their ``wandb sync <dir>`` would name a run dir
    about to be removed)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        if quiet:
            wandb.run._settings.quiet = True  # no public switch once a run is started (W&B 0.31)
        wandb.finish(exit_code=2)
    except Exception:  # noqa: BLE001 - a tracker failing to close must not hide the user's error
        pass
    sys.stdout.flush()


#: OS errors that are the user's set-up rather than a bug, and how to fix each
_OS_FIXES = {
    errno.ENOSPC: "free some space, or write somewhere else",
    errno.EDQUOT: "free some space in your quota, or write somewhere else",
    errno.EFBIG: "raise the file-size limit (ulimit -f), or write somewhere else",
    errno.EROFS: "the filesystem is read-only: write somewhere else",
    errno.EACCES: "write somewhere you may write, or change the permissions",
    errno.EPERM: "write somewhere you may write, or change the permissions",
}


def os_error(err: OSError, path: str | Path | None = None) -> UserError | None:
    """A full disk or quota, the file-size limit, a read-only or forbidden target as one line naming the file
    (``path``, else the error's own file name); ``None`` for any other ``OSError``."""
    if err.errno not in _OS_FIXES:
        return None
    where = path or err.filename
    what = f"cannot write {where}" if where else "cannot write a file"
    return UserError(f"{what} ({err.strerror or os.strerror(err.errno)}): {_OS_FIXES[err.errno]}")
