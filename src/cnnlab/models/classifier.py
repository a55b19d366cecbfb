"""Supervised image classification: the "supervised pretraining" arm and the network the
visualizations inspect."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.models.base import StagedModule, as_dict, make_backbone


class Classifier(StagedModule):
    """Backbone -> global average pool -> dropout -> linear; cross-entropy with optional label smoothing.

    Logs ``{train,val,test}/loss``, ``/acc`` (top-1) and ``/acc_top5`` when there are more than 5 classes.
    """

    method = "supervised"

    def __init__(
        self,
        backbone: dict,
        num_classes: int = 10,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        compile: bool = False,
    ):
        super().__init__(optimizer, scheduler, compile)
        self.save_hyperparameters({"backbone": as_dict(backbone), "num_classes": num_classes, "dropout": dropout,
                                   "label_smoothing": label_smoothing, "optimizer": self.optimizer_cfg,
                                   "scheduler": self.scheduler_cfg, "compile": compile})
        self.backbone = make_backbone(as_dict(backbone))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_dim, num_classes))
        self.num_classes = num_classes
        self.metrics = nn.ModuleDict({
            f"{stage}_{k}": MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
            for stage in ("train", "val", "test")
            for k, top_k in (("acc", 1), ("acc_top5", 5)) if top_k < num_classes
        })
        self._net = self.maybe_compile(nn.Sequential(self.backbone, self.head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` input in the data's colour space -> logits ``(B, num_classes)``."""
        return self._net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        if stage == "train":
            self.check_finite(loss)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=False, on_epoch=True, sync_dist=stage != "train")
        for name, metric in self.metrics.items():
            if name.startswith(stage + "_"):
                metric(logits, y)
                self.log(f"{stage}/{name[len(stage) + 1:]}", metric, prog_bar=name.endswith("_acc"), on_step=False, on_epoch=True)
        return loss

