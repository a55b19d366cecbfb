"""Load any cnnlab Lightning checkpoint back into its module, with clear errors for wrong files."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from cnnlab.errors import UserError


def load_module(path: str | Path, expect: type | None = None, map_location: str = "cpu"):
    """Rebuild the LightningModule saved in a cnnlab checkpoint (``checkpoints/*.ckpt``), in eval mode.

    ``expect`` (a class) turns "wrong kind of checkpoint" into a one-line :class:`UserError`.
    The module's ``data_info`` holds the colour space, image size and class names it was trained on.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass a .ckpt from a cnnlab-train run's checkpoints/ dir")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot read {path} as a checkpoint ({type(err).__name__}); pass a .ckpt from a cnnlab-train run") from err
    if not isinstance(ckpt, dict) or "cnnlab_class" not in ckpt:
        hint = " (a trunk file: load it with cnnlab.backbones.load_trunk)" if isinstance(ckpt, dict) and ckpt.get("format") == "cnnlab-trunk" else ""
        raise UserError(f"{path} is not a cnnlab Lightning checkpoint{hint}")
    module_name, _, cls_name = ckpt["cnnlab_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if expect is not None and not issubclass(cls, expect):
        raise UserError(f"{path} holds a {cls_name} checkpoint but a {expect.__name__} is needed: pass a checkpoint of that kind")
    module = cls.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    module.data_info = ckpt.get("cnnlab_data", {})
    return module.eval()
