"""Semantic segmentation on hypercolumns: the colorizer's model with a class head (Larsson et al. 2016/2017).

Training samples ``samples_per_image`` labelled pixels per image (optionally class-balanced) and runs the
hypercolumn head only there (sparse hypercolumns, :mod:`cnnlab.hypercolumn`); validation, test and
``cnnlab-segment`` run the same head on every pixel of the working-size frame, in bands of at most
``eval_chunk_pixels`` pixels, and score the bilinearly upsampled logits against the full-resolution label
maps. Any backbone: random init, or any trunk by ``backbone=trunk backbone.path=<trunk.pt>`` in its colour space.
Logs ``{val,test}/miou`` (mean IoU over the classes, void ignored), ``pixel_acc``, ``iou_<class>``, ``loss`` and
``frames`` (how many frames the scores cover: a quick run's ``data.test_limit`` or a trainer limit shows there).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnlab.color import lab_to_rgb
from cnnlab.errors import UserError
from cnnlab.hypercolumn import HypercolumnModel, gather_pixels
from cnnlab.labelmaps import colour_labels, legend_image, sample_label_pixels, scores_from_confusion, upsampled_labels
from cnnlab.models.base import StagedModule, as_dict, make_backbone


def display_rgb(x: torch.Tensor, color_space: str) -> torch.Tensor:
    """Model input ``(B, C, H, W)`` in ``color_space`` -> RGB ``(B, 3, H, W)`` in [0, 1] to look at."""
    if color_space == "lab":
        return lab_to_rgb(x).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).clamp(0, 1) if x.shape[1] == 1 else x.clamp(0, 1)


class Segmenter(HypercolumnModel, StagedModule):
    """Hypercolumn semantic segmentation; batches are ``(input (B, C, h, w), masks (B, H, W) long, sizes (B, 2))``."""

    method = "segmentation"

    def __init__(
        self,
        backbone: dict,
        num_classes: int = 11,
        ignore_index: int = 11,
        taps: Sequence[str] | None = None,
        samples_per_image: int = 128,
        balanced_sampling: bool = False,
        hidden: int = 1024,
        dropout: float = 0.5,
        dense_training: bool = False,
        eval_chunk_pixels: int = 65536,
        trunk_lr_mult: float = 1.0,
        panel_every_n_epochs: int = 1,
        panel_images: int = 4,
        optimizer: dict | None = None, scheduler: dict | None = None, compile: bool = False,
    ):
        super().__init__(optimizer, scheduler, compile)
        if num_classes < 2:
            raise UserError(f"model.num_classes={num_classes}: segmentation needs at least two classes")
        self.save_arguments(taps=list(taps) if taps else None)
        self.backbone = make_backbone(as_dict(backbone))
        self.build_hypercolumn(taps, [num_classes], hidden, dropout)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.metrics = nn.ModuleDict({s: MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
                                      for s in ("val", "test")})
        # how many frames a score covers: two scores are of the same computation only if they cover the same frames
        self.frames = nn.ModuleDict({s: SumMetric() for s in ("val", "test")})
        self._panels: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- what it was trained on
    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    @property
    def color_space(self) -> str:
        dm = self._datamodule()
        return getattr(dm, "color_space", None) or self.data_info.get("color_space") or \
            ("rgb" if self.backbone.in_channels == 3 else "L")

    @property
    def class_names(self) -> list[str]:
        dm = self._datamodule()
        names = list(getattr(dm, "classes", None) or self.data_info.get("classes") or [])
        return names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    def trunk_color_space(self) -> str:
        return self.color_space

    def trainable_parameters(self):
        mult = float(self.hparams.get("trunk_lr_mult", 1.0))
        if mult == 1.0:
            return super().trainable_parameters()
        lr = float(self.optimizer_cfg.get("lr", 0.0))
        trunk = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in trunk}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": trunk, "lr": lr * mult}, {"params": rest}]

    # ----------------------------------------------------------------------------- network
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``(B, C, h, w)`` -> logits ``(B, num_classes, h, w)`` at every pixel (the head in bands)."""
        return self.banded_logits(x)

    def sparse_loss(self, x: torch.Tensor, masks: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy at ``pixels (B, K, 2)`` of input ``(B, C, h, w)`` with labels ``masks (B, h, w)`` (void ignored);
        ``samples_per_image`` sampled labelled pixels when None."""
        if pixels is None:
            pixels = sample_label_pixels(masks, self.hparams.samples_per_image, self.ignore_index,
                                         self.hparams.balanced_sampling)
        logits = self.sparse_logits(x, pixels)
        targets = gather_pixels(masks[:, None], pixels)[..., 0]
        return F.cross_entropy(logits.reshape(-1, self.num_classes).float(), targets.reshape(-1), ignore_index=self.ignore_index)

    def dense_loss(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at every pixel from the textbook dense hypercolumn (for comparison with sparse training)."""
        return F.cross_entropy(self.dense_logits(x).float(), masks, ignore_index=self.ignore_index)

    # ----------------------------------------------------------------------------- steps
    def _step(self, batch, stage: str):
        x, masks, sizes = batch
        if stage != "train":
            return self._evaluate(x, masks, sizes, stage)
        loss = self.dense_loss(x, masks) if self.hparams.dense_training else self.sparse_loss(x, masks)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def _evaluate(self, x: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor, stage: str) -> None:
        """Dense logits at the working size, upsampled to each frame's full size and scored there."""
        logits = self(x)
        loss = 0.0
        for i in range(len(x)):
            h, w = (int(s) for s in sizes[i])
            up = F.interpolate(logits[i:i + 1].float(), size=(h, w), mode="bilinear", align_corners=False)
            truth = masks[i:i + 1, :h, :w]
            loss = loss + F.cross_entropy(up, truth, ignore_index=self.ignore_index)
            self.metrics[stage].update(up.argmax(1), truth)
        self.frames[stage].update(len(x))
        self.log(f"{stage}/loss", loss / len(x), prog_bar=stage == "val", on_epoch=True, batch_size=len(x))
        if stage not in self._panels:  # the epoch's first batch
            n = self.hparams.panel_images
            truth = F.interpolate(masks[:n, None].float(), size=x.shape[-2:], mode="nearest")[:, 0].long()
            self._panels[stage] = torch.stack([display_rgb(x[:n], self.color_space),
                                               colour_labels(upsampled_labels(logits[:n], x.shape[-2:]), self.num_classes),
                                               colour_labels(truth, self.num_classes)], 1).flatten(0, 1).detach().cpu()

    def _eval_epoch_end(self, stage: str) -> None:
        scores = scores_from_confusion(self.metrics[stage].compute())
        self.metrics[stage].reset()
        frames = self.frames[stage].compute()
        self.frames[stage].reset()
        self.log(f"{stage}/miou", scores["miou"], prog_bar=True)
        self.log(f"{stage}/frames", frames)
        self.log(f"{stage}/pixel_acc", scores["pixel_acc"])
        for name, iou in zip(self.class_names, scores["iou"].tolist()):
            if iou == iou:  # a class neither present nor predicted has no IoU
                self.log(f"{stage}/iou_{name}", iou)
        panels = self._panels.pop(stage, None)
        every = max(1, self.hparams.panel_every_n_epochs)
        if panels is not None and not self.trainer.sanity_checking and (stage == "test" or self.current_epoch % every == 0):
            from cnnlab.tracking import log_image_grid

            # each row: image | prediction | truth, two frames per row; the palette's legend beside them
            log_image_grid(self.trainer, f"{stage}/panels", panels, nrow=6, caption="image | prediction | truth")
            log_image_grid(self.trainer, f"{stage}/legend", legend_image(self.class_names)[None], nrow=1,
                           caption="class colours (black: void)")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
