"""Config plumbing shared by the entry points: where conf/ is, resolvers, printing, resume."""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import UserError

log = logging.getLogger("cnnlab")

_PACKAGE = Path(__file__).resolve().parent
#: the checkout this module runs from (src/cnnlab/ inside it), or None for an installed package
_CHECKOUT = _PACKAGE.parents[1] if (_PACKAGE.parents[1] / "conf").is_dir() and _PACKAGE.parent.name == "src" else None


def _project_root() -> Path:
    """Where data/ and outputs/ live by default: ``$CNNLAB_ROOT``, else the checkout, else the working directory."""
    if os.environ.get("CNNLAB_ROOT"):
        return Path(os.environ["CNNLAB_ROOT"]).expanduser()
    return _CHECKOUT if _CHECKOUT is not None else Path.cwd()


#: the project root (data/, outputs/ live here; see :func:`_project_root`)
PROJECT_ROOT = _project_root()


def _conf_dir() -> Path:
    """The Hydra configs: conf/ of ``$CNNLAB_ROOT`` or of the checkout, else the copy an installed package carries."""
    for root in (os.environ.get("CNNLAB_ROOT"), _CHECKOUT):
        if root and (Path(root).expanduser() / "conf").is_dir():
            return Path(root).expanduser() / "conf"
    return _PACKAGE / "conf"  # shipped as package data (setup.py)


CONF_DIR = str(_conf_dir())


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a distributed job (read from the launcher's env)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var) not in (None, "", "0"):
            return False
    return True


def _channels(color_space: str) -> int:
    from cnnlab.color import channels_of  # lazy: keeps config errors fast (no torch import)

    return channels_of(color_space)


def _data_file(relative: str, data_dir: str = "data") -> str:
    """``${cnnlab.data_file:images/x.jpg,${paths.data_dir}}``: the file in the data dir or ``$CNNLAB_DATA``."""
    from cnnlab.data.sources import data_file

    return str(data_file(relative, data_dir))


def _sqlite_url(path: str) -> str:
    """``sqlite:///<path>``, creating the parent directory (Optuna opens the study before Hydra makes the sweep dir)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).resolve()}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cnnlab.sqlite"):
        OmegaConf.register_new_resolver("cnnlab.sqlite", _sqlite_url)
    if not OmegaConf.has_resolver("cnnlab.channels"):
        OmegaConf.register_new_resolver("cnnlab.channels", _channels)
    if not OmegaConf.has_resolver("cnnlab.data_file"):
        OmegaConf.register_new_resolver("cnnlab.data_file", _data_file)
    if not OmegaConf.has_resolver("cnnlab.root"):
        OmegaConf.register_new_resolver("cnnlab.root", lambda: str(PROJECT_ROOT))


register_resolvers()


def check_complete(cfg: DictConfig) -> None:
    """Fail now, not mid-run, on a missing mandatory value (``???``) or a broken interpolation."""
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None,
                      order: Sequence[str] = ("data", "backbone", "model", "callbacks", "logger", "trainer", "paths")) -> None:
    """Print the composed config as a rich tree (rank 0) and save it next to the run.

    Lines are never cut: the saved file, and the console when it is not a terminal (a log), are as wide as the
    longest line (rich would crop at 80 columns, mid-path)."""
    if not is_rank_zero():
        return
    import rich
    import rich.syntax
    import rich.tree
    from rich.console import Console

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    width = 0
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        code_width = max((len(line) for line in text.splitlines()), default=0)
        width = max(width, code_width + 8)  # + the tree's two levels of guides
        branch.add(rich.syntax.Syntax(text, "yaml", code_width=code_width))
    console = rich.get_console()
    if not console.is_terminal:
        console = Console(width=max(width, 80))
    console.print(tree)
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as fh:
            Console(file=fh, width=max(width, 80)).print(tree)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


#: config groups whose state a resumed run takes from its checkpoint, not from the command line
_RESTORED_GROUPS = ("model", "backbone")


def hydra_quoted(value: str) -> str:
    """``value`` as one quoted Hydra override value (a path with spaces or non-ASCII characters, which the
    override grammar does not take bare). In the grammar a backslash escapes only a quote or another backslash
    before a quote, so only those are doubled."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), str(value))
    return f"'{escaped}'"


def _unquoted(value: str) -> str:
    """A value a shell passed on with its quotes (``resume="'/runs/josé'"``) without them."""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def quote_plain_values(argv: list[str]) -> list[str]:
    """Overrides whose plain value holds characters the override grammar rejects bare (non-ASCII letters, as in
    a path under ``josé/``) get that value quoted; anything with Hydra syntax (quotes, lists, sweeps,
    interpolations) is left as written."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if (eq and not arg.startswith("-") and not value.isascii()
                and not any(c in value for c in "'\"[]{}(),$")):
            arg = f"{key}={hydra_quoted(value)}"
        out.append(arg)
    return out


def resume_argv(argv: list[str]) -> list[str]:
    """Expand ``resume=<run dir>`` into the run's saved overrides plus ``hydra.run.dir=<run dir>``.

    Overrides given next to ``resume=`` win over the saved ones with the same key, and are listed on stderr.
    Those of the model (``model.*``, ``backbone.*``) are refused: the model, its optimizer and scheduler
    state come back from the checkpoint, so a new value would be ignored (an lr) or clash (a width).
    A run that stopped before its first checkpoint has nothing to resume: the message gives its own command.
    """
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(_unquoted(resume[-1].split("=", 1)[1])).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserError(f"cannot resume {run_dir}: it needs .hydra/overrides.yaml and a checkpoint in checkpoints/; "
                        "pass the run directory of an earlier cnnlab-train run")
    saved_overrides = yaml.safe_load(saved.read_text()) or []
    # any checkpoint will do: cnnlab.rundir.resume_checkpoint falls back from a damaged or missing last.ckpt
    if not any((run_dir / "checkpoints").glob("*.ckpt")):
        again = " ".join(shlex.quote(o) for o in saved_overrides if _key(o) not in ("resume", "hydra.run.dir"))
        raise UserError(f"cannot resume {run_dir}: it stopped before its first checkpoint, so there is nothing to "
                        f"continue; run it again from the start with `cnnlab-train {again} "
                        f"hydra.run.dir={shlex.quote(str(run_dir))}` (the dir is free for it)")
    extra = [a for a in argv if not a.startswith("resume=")]
    restored = [a for a in extra if _key(a).split(".")[0] in _RESTORED_GROUPS or _key(a) in _RESTORED_GROUPS]
    if restored:
        raise UserError(
            f"cannot change {' '.join(restored)} when resuming: the model, optimizer and scheduler are restored from "
            f"{run_dir}/checkpoints/last.ckpt, so the change would not take effect; drop it, or start a new run"
        )
    extra_keys = {_key(a) for a in extra}
    old = [o for o in saved_overrides if _key(o) not in extra_keys and _key(o) != "resume"]
    if extra:
        was = {_key(o): o for o in saved_overrides}
        changes = ", ".join(f"{a} (was {was[_key(a)]})" if _key(a) in was else a for a in extra)
        print(f"resuming {run_dir} with {changes}", file=sys.stderr)
    where = hydra_quoted(str(run_dir.resolve()))
    return old + extra + [f"resume={where}", f"hydra.run.dir={where}"]


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
