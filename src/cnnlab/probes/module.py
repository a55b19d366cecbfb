"""``LinearProbe``: linear classifiers on every tap of a frozen trunk, trained at once.

The trunk is loaded from a ``trunk.pt``, frozen, and kept in eval mode for the whole run: Lightning
calls ``model.train()`` at the start of every epoch, so :meth:`LinearProbe.train` puts the trunk back
into eval mode each time. A probe that lets BatchNorm update its statistics (or gradients reach the
trunk) silently fine-tunes the trunk and inflates the result.

    cnnlab-train model=linear_probe model.trunk=<run dir>/trunk.pt data.color_space=L
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from torch import nn

from cnnlab.backbones import freeze, load_trunk
from cnnlab.errors import UserError
from cnnlab.features import pool_features
from cnnlab.models.base import StagedModule
from cnnlab.probes.heads import ProbeHeads, probe_dims
from cnnlab.probes.trunks import check_trunk_matches

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
STAGES = ("train", "val", "test")


class LinearProbe(StagedModule):
    """Frozen trunk -> each tap avg-pooled to ~``target_dims`` -> BatchNorm(affine=False) -> Linear.

    Logs ``{stage}/loss`` (summed over heads), ``{stage}/acc/<tap>`` (top-1 per tap) and
    ``{stage}/acc`` (the best tap's top-1, what checkpoints monitor).
    """

    method = "linear_probe"

    def __init__(
        self,
        trunk: str,
        taps: Sequence[str] | None = None,
        target_dims: int | None = 9216,
        num_classes: int = 10,
        image_size: int = 32,
        expect_arch: str | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        compile: bool = False,
    ):
        super().__init__(optimizer or DEFAULT_OPTIMIZER, scheduler, compile)
        backbone, meta = load_trunk(trunk)
        check_trunk_matches(meta, trunk, arch=expect_arch)
        self.trunk_path, self.trunk_meta = str(trunk), meta
        self.backbone = freeze(backbone)
        self.taps = backbone.check_taps(list(taps) if taps else meta["taps"])
        self.target_dims = target_dims
        self.save_arguments(taps=self.taps)
        self.heads = ProbeHeads(probe_dims(self.backbone, self.taps, image_size, target_dims), num_classes)
        # keyed "<stage>/<tap>" with the slash swapped: ModuleDict keys may not be "train" or contain dots
        self.metrics = nn.ModuleDict({
            f"{s}__{t}": MulticlassAccuracy(num_classes, average="micro") for s in STAGES for t in self.taps
        })

    # ----------------------------------------------------------------------------- frozen trunk
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # whatever Lightning asks for, the trunk keeps its running statistics
        return self

    def trunk(self):
        return None  # the trunk is an input of this run, not something it trained: nothing to export

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "color_space"):
            check_trunk_matches(self.trunk_meta, self.trunk_path, color_space=dm.color_space)
        if dm is not None and hasattr(dm, "num_classes") and dm.num_classes != self.hparams.num_classes:
            raise UserError(f"the probe has {self.hparams.num_classes} classes but the data has {dm.num_classes}: set model.num_classes=null")

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C_in, H, W)`` -> ``{tap: (B, D_tap)}`` pooled frozen features."""
        fmaps = self.backbone.forward_taps(x, self.taps)
        return {t: pool_features(fmaps[t], self.target_dims) for t in self.taps}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C_in, H, W)`` -> ``{tap: (B, num_classes)}`` logits."""
        return self.heads(self.features(x))

    # ----------------------------------------------------------------------------- steps
    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = torch.stack([F.cross_entropy(v, y) for v in logits.values()]).sum()
        if stage == "train":
            self.check_finite(loss)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test")
        for t, v in logits.items():
            self.metrics[f"{stage}__{t}"].update(v, y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        accs = {t: self.metrics[f"{stage}__{t}"].compute() for t in self.taps}
        for t, a in accs.items():
            self.log(f"{stage}/acc/{t}", a)
            self.metrics[f"{stage}__{t}"].reset()
        best = max(accs, key=lambda t: float(accs[t]))
        self.log(f"{stage}/acc", accs[best], prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
