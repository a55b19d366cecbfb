"""``StepTimer``: the training-step clock shared by the benchmark scripts (``from steptimer import StepTimer``;
the scripts directory is on ``sys.path`` when a script runs)."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class StepTimer(pl.Callback):
    """Time the training steps after ``warmup`` steps (for benchmarks): ``seconds``, ``steps``, ``samples``.

    ``clock`` is ``time.process_time`` (this process's CPU time: robust on a shared machine) or
    ``time.perf_counter`` (wall time).
    """

    def __init__(self, warmup: int = 3, clock=time.process_time):
        self.warmup, self.clock = warmup, clock
        self.start = self.end = None
        self.steps = self.samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.steps += 1
            self.samples += len(batch[0])
            self.end = self.clock()

    @property
    def seconds(self) -> float:
        return (self.end - self.start) if self.start is not None else float("nan")
