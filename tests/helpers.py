"""Test-only callbacks, importable by real cnnlab-train processes as ``tests.helpers``."""

import pytorch_lightning as pl
import torch


class PoisonWeights(pl.Callback):
    """Fill the first parameter with NaN at the start of epoch ``epoch`` (a diverged run)."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
