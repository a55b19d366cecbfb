"""The one ``torch.load`` for cnnlab's own files: trunk files and Lightning checkpoints.

:func:`read_cnnlab_file` reads a file once and says what it is; callers rebuild from the dict
(``load_trunk(path, data=...)``, ``module_from_checkpoint(data, path)``) without reading it again.
Every way the file can be wrong is one :class:`~cnnlab.errors.UserError` line.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable

import torch

from cnnlab.errors import UserError

TRUNK, CHECKPOINT = "trunk", "checkpoint"
#: what each kind is called in messages, and where a user finds one
_NAME = {TRUNK: "a cnnlab trunk file", CHECKPOINT: "a cnnlab Lightning checkpoint"}
_WHERE = {TRUNK: "<run dir>/trunk.pt", CHECKPOINT: "<run dir>/checkpoints/last.ckpt"}


def file_kind(data: Any) -> str | None:
    """``"trunk"``, ``"checkpoint"`` or None for anything else (a plain state_dict, a foreign checkpoint)."""
    if isinstance(data, dict):
        if data.get("format") == "cnnlab-trunk":
            return TRUNK
        if "cnnlab_class" in data:
            return CHECKPOINT
    return None


def read_cnnlab_file(path: str | Path, expect: str | Iterable[str] = (TRUNK, CHECKPOINT),
                     map_location: str | torch.device = "cpu") -> tuple[str, dict]:
    """Read ``path`` once; ``(kind, data)`` where ``kind`` is one of ``expect`` (``"trunk"``, ``"checkpoint"``).

    Trunk files hold tensors and plain values only and are read with ``weights_only=True``; Lightning
    checkpoints may pickle hyperparameter objects, so a ``.ckpt`` (or a file the safe reader refuses, when a
    checkpoint is acceptable) is read with the full unpickler.
    """
    expect = (expect,) if isinstance(expect, str) else tuple(expect)
    wanted = " or ".join(f"{_NAME[k]} ({_WHERE[k]})" for k in expect)
    path = Path(str(path)).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a directory: pass {wanted} inside it")
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass {wanted}")
    full = CHECKPOINT in expect and (TRUNK not in expect or path.suffix == ".ckpt")
    try:
        try:
            data = torch.load(path, map_location=map_location, weights_only=not full)
        except pickle.UnpicklingError:
            if full or CHECKPOINT not in expect:
                raise
            data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many types for files that are not its own
        raise UserError(f"cannot read {path} ({type(err).__name__}): it is not a torch file; pass {wanted}") from err
    kind = file_kind(data)
    if kind not in expect:
        if kind is None and len(expect) == 2:
            raise UserError(f"{path} is neither a cnnlab Lightning checkpoint nor a trunk file: pass {wanted}")
        what = {TRUNK: "a trunk file", CHECKPOINT: "a Lightning checkpoint"}.get(kind) or (
            "a plain Lightning checkpoint, not a cnnlab one" if isinstance(data, dict) and "pytorch-lightning_version" in data
            else "another kind of torch file")
        raise UserError(f"{path} is not {' or '.join(_NAME[k] for k in expect)} ({what}): pass {wanted}")
    return kind, data
