"""Load any cnnlab Lightning checkpoint back into its module, with clear errors for wrong files."""

from __future__ import annotations

import importlib
from pathlib import Path

from cnnlab.errors import UserError


def load_module(path: str | Path, expect: type | None = None, map_location: str = "cpu"):
    """Rebuild the LightningModule saved in a cnnlab checkpoint (``checkpoints/*.ckpt``), in eval mode.

    ``expect`` (a class) turns "wrong kind of checkpoint" into a one-line :class:`UserError`.
    The module's ``data_info`` holds the colour space, image size and class names it was trained on.
    """
    from cnnlab.io.checkpoints import CHECKPOINT, read_cnnlab_file

    _, data = read_cnnlab_file(path, expect=CHECKPOINT, map_location=map_location)
    return module_from_checkpoint(data, path, expect)


def module_from_checkpoint(data: dict, path: str | Path, expect: type | None = None):
    """The module of an already-read cnnlab checkpoint dict (``read_cnnlab_file``), in eval mode.

    cnnlab modules save their constructor arguments as hyperparameters, so the module is rebuilt from
    them and its state loaded strictly, as Lightning's ``load_from_checkpoint`` would, without a second read.
    """
    module_name, _, cls_name = data["cnnlab_class"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{path} holds a {data['cnnlab_class']} that this version of cnnlab does not have: "
                        "load it with the cnnlab version that wrote it") from err
    if expect is not None and not issubclass(cls, expect):
        raise UserError(f"{path} holds a {cls_name} checkpoint but a {expect.__name__} is needed: pass a checkpoint of that kind")
    module = cls(**dict(data.get("hyper_parameters") or {}))
    module.on_load_checkpoint(data)
    module.load_state_dict(data["state_dict"])
    module.data_info = data.get("cnnlab_data", {})
    return module.eval()
