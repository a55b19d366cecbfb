"""Lightning checkpoints written atomically: a full disk or a crash mid-write leaves the previous file intact.

Lightning's own writer stages the file in the system temp dir and moves it across filesystems onto
the target, so a full disk leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes through
:func:`cnnlab.io.files.atomic_save` instead (temp file beside the target, fsync, rename).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cnnlab.errors import UserError
from cnnlab.io.files import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic; a full disk is a one-line error."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: fsspec's own commit
        path = Path(path)
        try:
            atomic_save(path, lambda tmp: _torch_save(checkpoint, tmp))
        except (OSError, RuntimeError) as err:
            if not _disk_full(err):
                raise
            run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            raise UserError(f"no space left on the device writing {path}; the checkpoints already there "
                            f"are intact: free some space, then continue with `cnnlab-train resume={run_dir}`") from err


def _torch_save(obj: Any, path: Path) -> None:
    # through a Python file object, so that a failed write keeps its OSError (as the RuntimeError's context)
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def _disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` or what caused it is a full disk or quota (torch reports it as a RuntimeError)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def install(trainer: pl.Trainer) -> pl.Trainer:
    """Give ``trainer`` the atomic writer, unless the user configured a checkpoint IO of their own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer
