"""``cnnlab-train``: train any configured LightningModule (``python -m cnnlab.train``).

    cnnlab-train                                  # supervised VGG on CIFAR-10
    cnnlab-train experiment=colorize_cifar        # an experiment preset
    cnnlab-train resume=outputs/train/runs/<dir>  # continue an interrupted run
    cnnlab-train -m hparams_search=optuna         # an Optuna sweep
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.cli import hydra_main, instantiate, instantiate_group
from cnnlab.config import check_complete, in_multirun, is_rank_zero, print_config_tree, resume_argv
from cnnlab.errors import UserError

# torch, Lightning and W&B are imported inside run(): a config mistake is reported in a second or two

log = logging.getLogger("cnnlab")


def _refuse_multirun_ddp(cfg: DictConfig) -> None:
    strategy = str(cfg.trainer.get("strategy", ""))
    if in_multirun() and strategy.startswith("ddp") and "spawn" not in strategy:
        raise UserError(
            f"Hydra multirun cannot drive trainer.strategy={strategy}: Lightning re-launches the script in each process, "
            "which would re-run the whole sweep; use trainer=ddp_spawn, or launch each run with an external launcher (hydra/launcher=slurm)"
        )


def _quiet_non_zero_rank() -> None:
    """DDP children must not write files: drop the per-process Hydra log file they were given."""
    if is_rank_zero():
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
            Path(h.baseFilename).unlink(missing_ok=True)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list):
    import pytorch_lightning as pl

    from cnnlab.callbacks import StepSeeder

    if cfg.get("deterministic"):
        callbacks.append(StepSeeder(cfg.get("seed") or 0))
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    from cnnlab.io import checkpoints

    return checkpoints.install(instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False))


def run(cfg: DictConfig) -> float | None:
    """Train (and test) one configured run; returns ``cfg.optimized_metric`` for sweepers."""
    _quiet_non_zero_rank()
    check_complete(cfg)
    _refuse_multirun_ddp(cfg)
    from cnnlab import rundir

    ckpt_path = None
    if cfg.get("resume"):
        ckpt_path = rundir.resume_checkpoint(Path(cfg.resume))
        finished = rundir.finished_message(Path(cfg.resume), ckpt_path, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps"))
        if finished:
            log.warning(finished)
            return _saved_metric(Path(cfg.resume), cfg)
        log.info("resuming from %s", ckpt_path)
        ckpt_path = str(ckpt_path)
    elif cfg.get("ckpt_path"):
        ckpt_path = cfg.ckpt_path
    import pytorch_lightning as pl

    from cnnlab.callbacks import MetricsInCheckpoint, scalar_metrics
    from pytorch_lightning.utilities import rank_zero_only

    from cnnlab.io.files import write_json
    from cnnlab.tracking import ensure_wandb_started, finish_wandb

    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:  # 0 is a valid seed
        pl.seed_everything(int(cfg.seed), workers=True)
    # the data first: a data fault (no test split, one class) stops the run before a logger or a run dir starts
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    if "num_classes" in cfg.model:
        from cnnlab.validation import check_classes

        check_classes(datamodule.classes, cfg.data)
    if cfg.get("test", False):
        datamodule.require("test")
    print_config_tree(cfg, save_to=out_dir / "config_tree.log")

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = ensure_wandb_started(instantiate_group(cfg.get("logger")))
    trainer = build_trainer(cfg, callbacks, loggers)
    model_cfg = cfg.model
    if "num_classes" in model_cfg and model_cfg.num_classes is None:
        model_cfg = model_cfg.copy()
        with open_dict(model_cfg):
            model_cfg.num_classes = datamodule.num_classes
    model = instantiate(model_cfg, _recursive_=False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        with _interruption_exits_non_zero(trainer, out_dir):
            # our own checkpoints hold config containers, which torch's weights-only loader refuses
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    train_metrics = {**MetricsInCheckpoint.restored_from(trainer), **scalar_metrics(trainer)}
    test_metrics = {}
    if cfg.get("test", False):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if cfg.get("train", True) else ""
        best = rundir.in_run_dir(best, out_dir)
        with _interruption_exits_non_zero(trainer, out_dir):
            trainer.test(model, datamodule=datamodule, ckpt_path=best or (None if cfg.get("train", True) else ckpt_path), weights_only=False)
        test_metrics = scalar_metrics(trainer)
    metrics = {**train_metrics, **test_metrics}
    rank_zero_only(write_json)(out_dir / "metrics.json", metrics)
    finish_wandb()

    value = metrics.get(cfg.get("optimized_metric") or "", None)
    if value is not None and not math.isfinite(value):
        if in_multirun():  # a sweeper must record a failed trial, never a NaN it could rank as the best
            raise UserError(f"the optimized metric {cfg.optimized_metric} is {value}: this trial failed "
                            "(lower model.optimizer.lr or narrow the search space)")
        log.warning("optimized metric %s is %s", cfg.optimized_metric, value)
    return value


#: the exit code after SIGTERM (the shell's 128 + signal number), so schedulers and scripts see an unfinished run
SIGTERM_EXIT = 128 + signal.SIGTERM


@contextlib.contextmanager
def _interruption_exits_non_zero(trainer, out_dir: Path):
    """Lightning stops gracefully on Ctrl-C (exit 1) and SIGTERM (exit 143, not its own 0); both say how to go on."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException:
        _resume_hint(out_dir)
        raise SystemExit(SIGTERM_EXIT) from None
    except SystemExit:
        if trainer.interrupted:
            _resume_hint(out_dir)
        raise
    if trainer.interrupted:
        _resume_hint(out_dir)
        raise SystemExit(1)


def _saved_metric(run_dir: Path, cfg: DictConfig) -> float | None:
    """``cfg.optimized_metric`` from a finished run's ``metrics.json`` (what sweepers get back)."""
    import json

    return json.loads((run_dir / "metrics.json").read_text()).get(cfg.get("optimized_metric") or "")


def _resume_hint(out_dir: Path) -> None:
    if not is_rank_zero():
        return
    if any((out_dir / "checkpoints").glob("*.ckpt")):
        print(f"interrupted: continue this run with `cnnlab-train resume={out_dir}`", file=sys.stderr)
    else:  # stopped before its first checkpoint: nothing to resume, and the dir is free for the same command
        print(f"interrupted before the first checkpoint: run the same command again (hydra.run.dir={out_dir} "
              "is free for it)", file=sys.stderr)


@hydra_main("train", argv=resume_argv)
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
