"""cnnlab's checkpoints and trunk files: the one reader and the one writer.

- :func:`read_cnnlab_file` is the one ``torch.load`` of cnnlab files (trunk files and Lightning checkpoints):
  it reads a file once and says what it is; callers rebuild from the dict (``load_trunk(path, data=...)``,
  ``module_from_checkpoint(data, path)``) without reading it again. Every file is checked whole first
  (:func:`checkpoint_problem`: each zip member's CRC), so a damaged file is refused, never used; every way
  a file can be wrong is one :class:`~cnnlab.errors.UserError` line.
- :class:`AtomicCheckpointIO` is the trainer's writer: Lightning's own stages the file in the system temp dir
  and moves it across filesystems onto the target, so a full disk leaves a truncated ``last.ckpt``; this one
  writes through :func:`cnnlab.io.files.atomic_save` (temp file beside the target, fsync, rename), and checks
  a checkpoint it is asked to load (``ckpt_path=``) the same way the reader does.
"""

from __future__ import annotations

import errno
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cnnlab.errors import UserError
from cnnlab.io.files import atomic_save

TRUNK, CHECKPOINT = "trunk", "checkpoint"
#: what each kind is called in messages, and where a user finds one
_NAME = {TRUNK: "a cnnlab trunk file", CHECKPOINT: "a cnnlab Lightning checkpoint"}
_WHERE = {TRUNK: "<run dir>/trunk.pt", CHECKPOINT: "<run dir>/checkpoints/last.ckpt"}


# ------------------------------------------------------------------------------------------------ reading
def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not an intact torch file (``None`` if it is): it must open as a zip archive whose every
    member passes its CRC check (a truncated file has no zip directory; a flipped bit fails a CRC)."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                return f"member {bad} fails its checksum"
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return "not a torch checkpoint"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return str(err) or type(err).__name__
    return None


def _starts_as_zip(path: Path) -> bool:
    """Whether ``path`` begins like a zip archive (torch's format), intact or not (a truncated one has no directory)."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def file_kind(data: Any) -> str | None:
    """``"trunk"``, ``"checkpoint"`` or None for anything else (a plain state_dict, a foreign checkpoint)."""
    if isinstance(data, dict):
        if data.get("format") == "cnnlab-trunk":
            return TRUNK
        if "cnnlab_class" in data:
            return CHECKPOINT
    return None


def read_cnnlab_file(path: str | Path, expect: str | Iterable[str] = (TRUNK, CHECKPOINT),
                     map_location: str | torch.device = "cpu", mmap: bool = False) -> tuple[str, dict]:
    """Read ``path`` once; ``(kind, data)`` where ``kind`` is one of ``expect`` (``"trunk"``, ``"checkpoint"``).

    Trunk files hold tensors and plain values only and are read with ``weights_only=True``; Lightning
    checkpoints may pickle hyperparameter objects, so a ``.ckpt`` (or a file the safe reader refuses, when a
    checkpoint is acceptable) is read with the full unpickler. ``mmap``: tensors stay on disk until used.
    """
    expect = (expect,) if isinstance(expect, str) else tuple(expect)
    wanted = " or ".join(f"{_NAME[k]} ({_WHERE[k]})" for k in expect)
    path = Path(str(path)).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a directory: pass {wanted} inside it")
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass {wanted}")
    if _starts_as_zip(path):  # a torch file; anything else is not one at all, and torch.load says so below
        why = checkpoint_problem(path)
        if why is not None:
            raise UserError(f"{path} is damaged ({why}): it was not used; copy it again, or pass another {wanted}")
    full = CHECKPOINT in expect and (TRUNK not in expect or path.suffix == ".ckpt")
    try:
        try:
            data = torch.load(path, map_location=map_location, weights_only=not full, mmap=mmap)
        except pickle.UnpicklingError:
            if full or CHECKPOINT not in expect:
                raise
            data = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
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


# ------------------------------------------------------------------------------------------------ writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic and whose local loads are checked whole first;
    a full disk (or the file-size limit) is a one-line error that says how to go on."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: fsspec's own commit
        path = Path(path)
        try:
            atomic_save(path, lambda tmp: _torch_save(checkpoint, tmp))
        except (OSError, RuntimeError) as err:
            why = _no_room(err)
            if why is None:
                raise
            raise UserError(f"{why} writing {path}; {_how_to_go_on(path)}") from err

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if _is_local_file_protocol(path) and Path(path).is_file():
            why = checkpoint_problem(path)
            if why is not None:
                raise UserError(f"{path} is damaged ({why}): it was not used; pass an intact checkpoint")
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _how_to_go_on(path: Path) -> str:
    """After a failed checkpoint write: resume from the checkpoints already there, or, before the first one,
    rerun the same command (a run dir without a checkpoint is free for it)."""
    folder = path.parent
    run_dir = folder.parent if folder.name == "checkpoints" else folder
    if any(p != path for p in folder.glob("*.ckpt")):
        return f"the checkpoints already there are intact: free some space, then continue with `cnnlab-train resume={run_dir}`"
    return ("no checkpoint was written yet, so there is nothing to resume: free some space (or raise the limit), "
            f"then run the same command again (hydra.run.dir={run_dir} is free for it)")


def _torch_save(obj: Any, path: Path) -> None:
    # through a Python file object, so that a failed write keeps its OSError (as the RuntimeError's context)
    with open(path, "wb") as fh:
        torch.save(obj, fh)


#: the write failures that mean "no room" rather than a bug: a full disk or quota, the file-size limit
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file-size limit was reached (ulimit -f)"}


def _no_room(err: BaseException | None) -> str | None:
    """What ``err`` or what caused it says about room to write (torch reports it as a RuntimeError), or None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return _NO_ROOM[err.errno]
        err = err.__cause__ or err.__context__
    return None


def install(trainer):
    """Give ``trainer`` the atomic writer, unless the user configured a checkpoint IO of their own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer
