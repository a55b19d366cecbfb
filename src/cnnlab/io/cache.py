"""The one keyed file cache: load a value saved for this key, or compute it and save it atomically.

Features of a frozen trunk, the ab prior of a dataset and natural-image spectra are all costly to compute
and cheap to keep. Each lives in one ``.pt`` file holding ``{"key": key, "value": value}``; a file written
for another key is recomputed, and so is one that cannot be read (a truncated write from before writes were
atomic, a disk error, a foreign file), with a warning: a cache never stops a run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

import torch

from cnnlab.io.files import atomic_save

log = logging.getLogger("cnnlab")

T = TypeVar("T")


def keyed_cache(path: str | Path, key: str, compute: Callable[[], T]) -> T:
    """The value saved in ``path`` for ``key``, else ``compute()``, saved there atomically and returned.

    Values are what ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, lists and dicts of them.
    """
    path = Path(path)
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file; it is recomputed
            log.warning("unreadable cache file %s (%s): recomputing it", path, type(err).__name__)
        else:
            if isinstance(data, dict) and data.get("key") == key and "value" in data:
                return data["value"]
    value = compute()
    atomic_save(path, lambda tmp: torch.save({"key": key, "value": value}, tmp))
    return value
