"""Supervised image classification: the "supervised pretraining" arm and the network the
visualizations inspect."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.errors import UserError
from cnnlab.models.base import StagedModule, as_dict, make_backbone
from cnnlab.multilabel import MeanAveragePrecision, check_targets, masked_bce


class Classifier(StagedModule):
    """Backbone -> global average pool -> dropout -> linear; cross-entropy with optional label smoothing.

    Logs ``{train,val,test}/loss``, ``/acc`` (top-1) and ``/acc_top5`` when there are more than 5 classes.

    Fine-tuning a pretrained trunk (``backbone=trunk``) without distorting it (Kumar et al. 2022, LP-FT):
    ``trunk_lr_mult`` puts the backbone in its own param group at ``lr * trunk_lr_mult`` (the new head
    trains at ``lr``); ``warmup_steps`` ramps every group's lr linearly over the first optimizer steps;
    ``head_only_steps`` freezes the trunk (no gradients, BatchNorm in eval mode so its running statistics
    stay) for the first optimizer steps, after which everything trains. The defaults change nothing.
    """

    method = "supervised"
    #: one softmax over the classes (MultiLabelClassifier: one logistic output per class)
    multilabel = False

    def __init__(
        self,
        backbone: dict,
        num_classes: int = 10,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        compile: bool = False,
        trunk_lr_mult: float = 1.0,
        warmup_steps: int = 0,
        head_only_steps: int = 0,
    ):
        super().__init__(optimizer, scheduler, compile)
        if trunk_lr_mult < 0 or warmup_steps < 0 or head_only_steps < 0:
            raise UserError(f"model.trunk_lr_mult ({trunk_lr_mult}), model.warmup_steps ({warmup_steps}) and "
                            f"model.head_only_steps ({head_only_steps}) must be >= 0")
        self.save_arguments()
        self.trunk_lr_mult = float(trunk_lr_mult)
        self.warmup_steps = int(warmup_steps)
        self.head_only_steps = int(head_only_steps)
        self.backbone = make_backbone(as_dict(backbone))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_dim, num_classes))
        self.num_classes = num_classes
        self.metrics = self.build_metrics(num_classes)
        self._net = self.maybe_compile(nn.Sequential(self.backbone, self.head))

    @staticmethod
    def build_metrics(num_classes: int) -> nn.ModuleDict:
        """``{<stage>_<name>: metric}``, logged as ``<stage>/<name>``."""
        return nn.ModuleDict({
            f"{stage}_{k}": MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
            for stage in ("train", "val", "test")
            for k, top_k in (("acc", 1), ("acc_top5", 5)) if top_k < num_classes
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` input in the data's colour space -> logits ``(B, num_classes)``."""
        return self._net(x)

    # ----------------------------------------------------------------------------- fine-tune recipe
    def trainable_parameters(self):
        if self.trunk_lr_mult == 1.0:
            return super().trainable_parameters()
        lr = float(self.optimizer_cfg.get("lr", 0.0))
        trunk = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return [{"params": trunk, "lr": lr * self.trunk_lr_mult, "name": "trunk"}, {"params": head, "lr": lr, "name": "head"}]

    def trunk_frozen(self) -> bool:
        """True during the head-only phase: the first ``head_only_steps`` optimizer steps."""
        return self.global_step < self.head_only_steps

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if not self.head_only_steps:
            return
        frozen = self.trunk_frozen()
        # frozen parameters get no gradient, so the optimizer skips them (weight decay and momentum included)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.backbone.train(self.training and not frozen)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        if y.ndim != 1:
            raise UserError(f"model=classifier needs one class index per image, got targets {tuple(y.shape)}: multi-label "
                            "data takes model=multilabel")
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



class MultiLabelClassifier(Classifier):
    """:class:`Classifier` with one logistic output per class (several classes per image, PASCAL VOC's task): the
    one-vs-rest binary cross-entropy (:func:`cnnlab.multilabel.masked_bce`; difficult-only classes ignored), scored by
    mAP over the epoch. Logs ``{train,val,test}/loss`` and ``/map``; the fine-tune recipe options are the Classifier's
    (``label_smoothing`` must stay 0)."""

    multilabel = True

    @staticmethod
    def build_metrics(num_classes: int) -> nn.ModuleDict:
        return nn.ModuleDict({f"{stage}_map": MeanAveragePrecision() for stage in ("train", "val", "test")})

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        if self.hparams.label_smoothing:
            raise UserError(f"model.label_smoothing={self.hparams.label_smoothing}: the multi-label classifier has none; set it to 0")
        check_targets(y, self.num_classes)
        logits = self(x)
        loss = masked_bce(logits, y)
        if stage == "train":
            self.check_finite(loss)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=False, on_epoch=True, sync_dist=stage != "train")
        metric = self.metrics[f"{stage}_map"]
        metric.update(logits, y)
        self.log(f"{stage}/map", metric, prog_bar=True, on_step=False, on_epoch=True)
        return loss
