"""Config plumbing shared by the entry points: where conf/ is, resolvers, printing, resume."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import UserError

log = logging.getLogger("cnnlab")

#: the repository root (conf/, data/, outputs/ live here); CNNLAB_ROOT overrides it
PROJECT_ROOT = Path(os.environ.get("CNNLAB_ROOT", Path(__file__).resolve().parents[2]))
CONF_DIR = str(PROJECT_ROOT / "conf")


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a distributed job (read from the launcher's env)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var) not in (None, "", "0"):
            return False
    return True


def _channels(color_space: str) -> int:
    from cnnlab.color import channels_of  # lazy: keeps config errors fast (no torch import)

    return channels_of(color_space)


def _sqlite_url(path: str) -> str:
    """``sqlite:///<path>``, creating the parent directory (Optuna opens the study before Hydra makes the sweep dir)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).resolve()}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cnnlab.sqlite"):
        OmegaConf.register_new_resolver("cnnlab.sqlite", _sqlite_url)
    if not OmegaConf.has_resolver("cnnlab.channels"):
        OmegaConf.register_new_resolver("cnnlab.channels", _channels)
    if not OmegaConf.has_resolver("cnnlab.root"):
        OmegaConf.register_new_resolver("cnnlab.root", lambda: str(PROJECT_ROOT))


register_resolvers()


def check_complete(cfg: DictConfig) -> None:
    """Fail now, not mid-run, on a missing mandatory value (``???``) or a broken interpolation."""
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None,
                      order: Sequence[str] = ("data", "backbone", "model", "callbacks", "logger", "trainer", "paths")) -> None:
    """Print the composed config as a rich tree (rank 0) and save it next to the run."""
    if not is_rank_zero():
        return
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as fh:
            rich.print(tree, file=fh)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_argv(argv: list[str]) -> list[str]:
    """Expand ``resume=<run dir>`` into the run's saved overrides plus ``hydra.run.dir=<run dir>``.

    Overrides given next to ``resume=`` win over the saved ones with the same key.
    """
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    # any checkpoint will do: cnnlab.rundir.resume_checkpoint falls back from a damaged or missing last.ckpt
    if not any((run_dir / "checkpoints").glob("*.ckpt")) or not saved.is_file():
        raise UserError(
            f"cannot resume {run_dir}: it needs .hydra/overrides.yaml and a checkpoint in checkpoints/; "
            "pass the run directory of an earlier cnnlab-train run"
        )
    extra = [a for a in argv if not a.startswith("resume=")]
    extra_keys = {_key(a) for a in extra}
    old = [o for o in yaml.safe_load(saved.read_text()) or [] if _key(o) not in extra_keys and _key(o) != "resume"]
    return old + extra + [f"resume={run_dir.resolve()}", f"hydra.run.dir={shlex.quote(str(run_dir.resolve()))}"]


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_task(fn):
    """Wrap a Hydra task function: a :class:`UserError` becomes one ``error:`` line and exit code 2.

    Inside a multirun the error is re-raised instead, so the sweeper records that job as failed
    and goes on with the next one.
    """

    @functools.wraps(fn)
    def wrapper(cfg):
        try:
            return fn(cfg)
        except UserError as err:
            log.error("error: %s", err)
            if in_multirun():
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
