"""Experiment tracking: the W&B logger factory, metric and image logging (the one home for each).

W&B is the default logger. Without credentials it runs offline into the run dir (upload later with
``wandb sync <run dir>/wandb/offline-run-*``); a W&B failure never stops training: it falls back to
offline mode with a warning (after at most ``init_timeout`` seconds), and if even that fails the run goes
on without W&B. The run id lives in ``<run dir>/wandb_id.txt`` so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
import warnings
from pathlib import Path
from typing import Sequence

import torch
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import save_image

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_id.txt"


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> ``$WANDB_MODE`` if set, else online with credentials and offline without."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")


def run_id(save_dir: str | Path) -> str:
    """The W&B run id of this run dir: read from ``wandb_id.txt``, created on first use (rank 0)."""
    path = Path(save_dir) / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    new_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank_zero_only.rank == 0:
        from cnnlab.io.files import write_text

        write_text(path, new_id)
    return new_id


def _drop_empty_wandb_env() -> None:
    """An empty ``WANDB_*`` variable (``WANDB_SILENT=``) means unset to a user, but W&B rejects it."""
    for var in [v for v, value in os.environ.items() if v.startswith("WANDB_") and not value.strip()]:
        log.warning("ignoring the empty environment variable %s", var)
        del os.environ[var]


def default_group() -> str | None:
    """The W&B group of a run that names none: ``$WANDB_RUN_GROUP`` (a gap run's arms, :mod:`cnnlab.gap.launch`),
    else in a Hydra multirun ``<job name>_<sweep dir name>``, shared by its jobs. Read here at every run, since
    W&B reads its environment once per process."""
    from cnnlab.config import in_multirun

    if os.environ.get("WANDB_RUN_GROUP") or not in_multirun():
        return os.environ.get("WANDB_RUN_GROUP") or None
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return f"{hc.job.name}_{Path(str(hc.sweep.dir)).name}"


def make_wandb_logger(
    save_dir: str,
    project: str = "cnnlab",
    name: str | None = None,
    mode: str = "auto",
    log_model: bool | str = False,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    entity: str | None = None,
    job_type: str | None = None,
    init_timeout: float = 30.0,
) -> WandbLogger:
    """A W&B logger for ``save_dir``; ``init_timeout`` bounds the wait for the server (``$WANDB_INIT_TIMEOUT`` wins)."""
    import wandb

    group, job_type = group or default_group(), job_type or os.environ.get("WANDB_JOB_TYPE") or None
    factory_kwargs = dict(save_dir=save_dir, project=project, name=name, log_model=log_model, group=group,
                          tags=tags, entity=entity, job_type=job_type, init_timeout=init_timeout)
    _drop_empty_wandb_env()
    mode = resolve_wandb_mode(mode)
    if mode == "offline":
        log.info("W&B: offline run in %s (upload later with `wandb sync`)", save_dir)
    logger = WandbLogger(
        save_dir=save_dir, project=project, name=name, id=run_id(save_dir), offline=mode == "offline",
        mode=mode if mode == "disabled" else None, log_model=log_model, group=group or None,
        tags=list(tags or []), entity=entity, job_type=job_type,
        settings=wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT") or init_timeout)),
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes it; W&B only warns that it has no effect
    logger._cnnlab_factory_kwargs = factory_kwargs  # what the offline fallback rebuilds from
    return logger


def ensure_wandb_started(loggers: list[Logger]) -> list[Logger]:
    """Start each W&B run now (rank 0); if that fails, warn and swap in an offline run, or go on without it.

    An online run first asks the server for any answer within ``init_timeout``: one that accepts connections
    but never answers would otherwise hold the start (W&B's own query timeouts) and the exit (its shutdown
    waits for the requests of the failed run), about a minute in all; unanswered, no online run is started."""
    out = []
    for lg in loggers:
        if isinstance(lg, WandbLogger) and rank_zero_only.rank == 0:
            try:
                _server_answers_or_raise(lg)
                lg.experiment  # noqa: B018 - forces wandb.init
            except Exception as err:  # noqa: BLE001 - network and auth errors come in many types
                warnings.warn(f"W&B failed to start ({_first_line(err)}); continuing offline", stacklevel=2)
                import wandb

                if not isinstance(err, _NoAnswer):  # an online session was started: drop it before going offline
                    wandb.teardown()
                os.environ["WANDB_MODE"] = "offline"
                try:
                    lg = make_wandb_logger(**{**getattr(lg, "_cnnlab_factory_kwargs", {}), "mode": "offline"})
                    lg.experiment  # noqa: B018
                except Exception as err2:  # noqa: BLE001 - a broken W&B set-up must not stop the run
                    warnings.warn(f"W&B cannot run offline either ({_first_line(err2)}); continuing without W&B", stacklevel=2)
                    wandb.teardown()
                    continue
        out.append(lg)
    return out


class _NoAnswer(TimeoutError):
    """The W&B server gave no answer: no online session was started."""


def _server_answers_or_raise(lg: WandbLogger) -> None:
    """For an online W&B logger: raise :class:`_NoAnswer` unless its server answers (any HTTP status) within the
    logger's ``init_timeout``. Offline and disabled loggers, and a run already started, are left alone."""
    import urllib.error
    import urllib.request

    import wandb

    if lg._offline or lg._wandb_init.get("mode") == "disabled" or lg._experiment is not None \
            or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or getattr(lg, "_cnnlab_factory_kwargs", {}).get("init_timeout", 30))
    url = os.environ.get("WANDB_BASE_URL") or str(wandb.Settings().base_url)
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # an answer, even an error status: the server is there
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _NoAnswer(f"the server {url} gave no answer within {timeout:g} s ({reason})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def finish_wandb() -> None:
    """Close this process's W&B run (rank 0), so the next job of a sweep starts its own."""
    if rank_zero_only.rank != 0:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


#: (logger, error type) pairs already warned about, so a broken logger warns once, not at every step
_warned: set[tuple[int, str]] = set()


def log_metrics(loggers: Sequence[Logger], metrics: dict, step: int | None = None) -> None:
    """Send the numeric entries of ``metrics`` to every logger (outside a Trainer's ``self.log``).

    A tracking failure is a warning, once per logger and kind of error: it never stops the work being tracked.
    """
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if not numbers:
        return
    for lg in loggers:
        try:
            lg.log_metrics(numbers, step=step)
        except Exception as err:  # noqa: BLE001 - loggers fail in many ways
            if (id(lg), type(err).__name__) not in _warned:
                _warned.add((id(lg), type(err).__name__))
                log.warning("metric logging to %s failed: %s", type(lg).__name__, _first_line(err))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2, normalize: bool = False) -> Path:
    """Save ``(B, C, H, W)`` images in [0, 1] (C = 1 or 3) as one PNG grid."""
    from cnnlab.io.files import atomic_save

    grid = images.detach().float().cpu()
    return atomic_save(path, lambda tmp: save_image(grid, tmp, format="png", nrow=nrow, padding=padding, normalize=normalize))


def log_images(loggers: Sequence[Logger], key: str, images: Sequence[torch.Tensor | str | Path],
               caption: str | None = None, step: int | None = None) -> None:
    """Send images (``(3, H, W)`` tensors in [0, 1], or image files) to every image-capable logger (W&B,
    TensorBoard). A tracking failure is a warning: it never stops the work that made the images."""
    for lg in loggers:
        try:
            if isinstance(lg, WandbLogger):
                items = [str(im) if isinstance(im, Path) else im for im in images]
                lg.log_image(key=key, images=items, caption=[caption] * len(items) if caption else None, step=step)
            elif hasattr(getattr(lg, "experiment", None), "add_image"):
                for im in images:
                    if torch.is_tensor(im):
                        lg.experiment.add_image(key, im, global_step=step or 0)
        except Exception as err:  # noqa: BLE001 - loggers fail in many ways
            log.warning("image logging to %s failed for %s: %s", type(lg).__name__, key, _first_line(err))


@rank_zero_only
def log_image_grid(trainer, key: str, images: torch.Tensor, nrow: int = 8, caption: str | None = None,
                   normalize: bool = False, out_dir: str | Path | None = None) -> Path | None:
    """Save a labelled image grid as ``<run dir>/images/<key>/step_<N>.png`` and send it to every image-capable logger.

    The PNG is titled with ``key``, the epoch and the step; a ``caption`` of ``" | "``-separated names whose count
    divides ``nrow`` ("gray | prediction | truth") labels the columns, repeated across the row.
    """
    import matplotlib.pyplot as plt

    from cnnlab.figures import grid_figure
    from cnnlab.io.files import atomic_save

    root = Path(out_dir or trainer.default_root_dir)
    images = images.detach().float().cpu()
    if normalize:  # to [0, 1] over the whole batch, as make_grid(normalize=True)
        images = (images - images.min()) / (images.max() - images.min()).clamp_min(1e-12)
    names = caption.split(" | ") if caption else []
    cols = names * (nrow // len(names)) if names and nrow % len(names) == 0 else None
    fig = grid_figure(images, nrow, f"{key}, epoch {trainer.current_epoch}, step {trainer.global_step}", cols=cols,
                      caption=None if cols else caption)
    path = root / "images" / key.replace("/", "_") / f"step_{trainer.global_step:07d}.png"
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))
    plt.close(fig)
    log_images(trainer.loggers, key, [path], caption, step=trainer.global_step)
    return path
