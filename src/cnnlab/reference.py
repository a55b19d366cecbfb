"""The reference models: what the default commands inspect or use when no network is given, and how to build each.

A fresh clone has none of them; one documented command builds each, with the project's own recipe
(``conf/experiment/reference_*.yaml``), into ``<paths.log_dir>/reference/<name>/``:

    cnnlab-train experiment=reference_cifar       # the CIFAR-10 classifier cnnlab-visualize / cnnlab-analyze inspect
    cnnlab-train experiment=reference_colorizer   # the colorizer cnnlab-colorize uses

Each keeps the checkpoint its run chose on the validation split as ``checkpoints/best.ckpt``.
Light on purpose (no torch): the commands' checks run before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import UserError


@dataclass(frozen=True)
class Reference:
    what: str
    run: str  # the run dir under <paths.log_dir>/reference/
    command: str
    minutes: str  # how long the command took on the 2-core development CPU, idle to busy (docs/benchmarks.md)

    def path(self, log_dir: str | Path) -> Path:
        """The checkpoint the default commands read."""
        return Path(log_dir) / "reference" / self.run / "checkpoints" / "best.ckpt"


CLASSIFIER = Reference("the reference CIFAR-10 classifier", "supervised_cifar", "cnnlab-train experiment=reference_cifar", "~10")
COLORIZER = Reference("the reference colorizer", "colorize_cifar", "cnnlab-train experiment=reference_colorizer", "7-50")


def is_reference(path: str | Path | None, ref: Reference) -> bool:
    """Whether ``path`` is where ``ref``'s checkpoint lives (under any ``paths.log_dir``)."""
    if not path:
        return False
    parts = Path(str(path)).parts
    return parts[-4:] == ("reference", ref.run, "checkpoints", "best.ckpt")


def require_file(option: str, path: str | Path | None, ref: Reference, others: str) -> None:
    """Refuse a network file that does not exist, before any work: for ``ref``'s own path, say how to build it."""
    if is_reference(path, ref):
        require(path, ref, others)
    elif path and not Path(str(path)).expanduser().exists():
        raise UserError(f"{option}={path} does not exist: pass an existing file, or {others}")


def require(path: str | Path, ref: Reference, others: str) -> None:
    """Raise the one-line error for a missing reference checkpoint: the command that builds it, and ``others``
    (the options that name another network)."""
    if Path(str(path)).expanduser().is_file():
        return
    raise UserError(f"{ref.what} is not built yet ({path} does not exist): build it once with `{ref.command}` "
                    f"({ref.minutes} min on a 2-core CPU), or {others}")
