"""Callbacks: trunk export, metrics kept in checkpoints, per-step reseeding for exact resumes, validation history,
stage clocks, channels-last weights and a test interrupt."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from signal import SIGTERM

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only

from cnnlab.backbones import save_trunk
from cnnlab.io.files import write_json


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


class ExportTrunk(pl.Callback):
    """Write the module's backbone as ``<run dir>/trunk.pt`` (see :mod:`cnnlab.backbones.trunk`) after fit."""

    def __init__(self, filename: str = "trunk.pt", log_artifact: bool = True):
        self.filename, self.log_artifact = filename, log_artifact

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted or getattr(pl_module, "trunk", lambda: None)() is None:
            return
        dm = trainer.datamodule
        info = {"run_dir": str(trainer.default_root_dir), "epochs": trainer.current_epoch,
                "global_step": trainer.global_step, "metrics": scalar_metrics(trainer),
                "image_size": getattr(getattr(dm, "hparams", {}), "get", lambda *_: None)("image_size")}
        path = save_trunk(Path(trainer.default_root_dir) / self.filename, pl_module.trunk(),
                          pl_module.trunk_color_space(), pl_module.method, info)
        if self.log_artifact:
            for lg in trainer.loggers:
                if isinstance(lg, pl.loggers.WandbLogger):
                    import wandb

                    art = wandb.Artifact(f"trunk-{lg.experiment.id}", type="model", metadata={"method": pl_module.method})
                    art.add_file(str(path))
                    lg.experiment.log_artifact(art)


class MetricsInCheckpoint(pl.Callback):
    """Keep the latest scalar metrics in every checkpoint, so that a resumed run with nothing left to train
    (stopped after its last epoch, e.g. during testing) still reports its training and validation metrics."""

    KEY = "cnnlab_metrics"

    def __init__(self):
        self.restored: dict[str, float] = {}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.KEY] = scalar_metrics(trainer)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.restored = dict(checkpoint.get(self.KEY, {}))

    @staticmethod
    def restored_from(trainer: pl.Trainer) -> dict[str, float]:
        """The metrics the resumed checkpoint carried (empty for a fresh run)."""
        return next((dict(c.restored) for c in trainer.callbacks if isinstance(c, MetricsInCheckpoint)), {})


def step_seed(seed: int, step: int, rank: int = 0, modulus: int = 2**31) -> int:
    """The seed of one training step, a function of (seed, global step, rank) alone: a resumed run repeats it."""
    return (seed * 1_000_003 + step * 7919 + rank) % modulus


class StepSeeder(pl.Callback):
    """Reseed every RNG from (seed, global step, rank) before each training batch.

    Augmentation, dropout and random sampling then depend only on the step, so a run resumed from
    a checkpoint continues exactly as the uninterrupted run would have.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = step_seed(self.seed, trainer.global_step, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class ChannelsLast(pl.Callback):
    """Hold the module's 4-D weights in channels-last (NHWC) memory before any stage runs.

    Convolutions then run in NHWC whatever the input's layout (a conv follows its weight's format), which oneDNN on
    CPUs and cuDNN with mixed precision run faster; the values computed are the same up to summation order.
    Checkpoints and exported trunks load into default-layout modules unchanged (``load_state_dict`` copies).
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)


class InterruptAfter(pl.Callback):
    """Interrupt training at the start of epoch ``epochs``, for testing resume: as Ctrl-C would
    (``signal: INT``), or by sending this process a real ``SIGTERM`` (``signal: TERM``, as a scheduler would)."""

    def __init__(self, epochs: int = 1, signal: str = "INT"):
        self.epochs, self.signal = epochs, signal.upper()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch < self.epochs:
            return
        if self.signal == "TERM":
            os.kill(os.getpid(), SIGTERM)  # Lightning's handler notes it; the loop stops at the next batch
        else:
            raise KeyboardInterrupt


class ValidationHistory(pl.Callback):
    """Every validation's scalar ``val/`` metrics with its step, written to ``<run dir>/<filename>`` after each one as
    ``[{"step": s, "val/acc": a, ...}, ...]``: how a run's score moved, not only its best (the gap reports what a
    fine-tune's last validation added, a measure of how far from converged it stopped). A resumed run keeps the
    entries up to the step it resumes from."""

    def __init__(self, filename: str = "val_history.json"):
        self.filename = filename
        self.history: list[dict] = []

    def _path(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def on_train_start(self, trainer, pl_module) -> None:  # after a resume has restored the step
        path = self._path(trainer)
        kept = json.loads(path.read_text()) if path.is_file() else []
        # a checkpoint is written after the validation at its step: that one belongs to the run resumed from it
        self.history = [e for e in kept if e["step"] <= trainer.global_step]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:  # not a trainer.validate() call
            return
        entry = {k: v for k, v in scalar_metrics(trainer).items() if k.startswith("val/")}
        if entry:
            self.history.append({"step": trainer.global_step, **entry})
            rank_zero_only(write_json)(self._path(trainer), self.history)


class StageClock(pl.Callback):
    """Wall time spent inside training batches (forward, backward, optimizer step), validation and test loops,
    written to ``<run dir>/<filename>`` after fit and after test.

    What is left of a run's wall time (start-up, data set-up, loading batches, checkpoint writes, logging) is
    overhead; the gap reports the share of its time that is training compute from these files.
    """

    STAGES = ("train_batches", "validation", "test")

    def __init__(self, filename: str = "clock.json"):
        self.filename = filename
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self.batches = 0
        self._t0: dict[str, float] = {}

    def _start(self, stage: str) -> None:
        self._t0[stage] = time.perf_counter()

    def _stop(self, stage: str) -> None:
        if stage in self._t0:
            self.seconds[stage] += time.perf_counter() - self._t0.pop(stage)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start("train_batches")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop("train_batches")
        self.batches += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._start("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._stop("validation")

    def on_test_start(self, trainer, pl_module) -> None:
        self._start("test")

    def on_test_end(self, trainer, pl_module) -> None:
        self._stop("test")
        self._write(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer) -> None:
        from cnnlab.io.files import write_json

        write_json(Path(trainer.default_root_dir) / self.filename,
                   {**{k: round(v, 3) for k, v in self.seconds.items()}, "train_batch_count": self.batches})
