"""Multi-label classification (PASCAL VOC 2007's task): three-valued targets, the masked loss and mean average precision.

A target is ``(N, C)`` integers: 1 the image shows the class, 0 it does not, :data:`IGNORE` (-1) it shows the class
only in objects marked ``difficult``. The VOC 2007 devkit's classification ground truth marks those "difficult" (0 in
its ``<class>_<set>.txt``) and leaves them out of the AP; they are left out of the training loss here too, so an
image is never pushed towards "absent" for an object that is there. Shared by the data (:mod:`cnnlab.data.multilabel`),
the fine-tuned classifier (:class:`cnnlab.models.classifier.MultiLabelClassifier`) and the linear probe
(:mod:`cnnlab.probes.linear`).
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cnnlab.errors import UserError

#: the target value of a class present only as difficult objects: no loss, no score
IGNORE = -1


def multi_hot(objects: Iterable[tuple[str, bool]], classes: Sequence[str], where: str = "") -> torch.Tensor:
    """``(name, difficult)`` of an image's objects -> its ``(C,)`` long target: 1 if some object of the class is not
    difficult, :data:`IGNORE` if all of them are, 0 if there is none. An unknown name is refused (one line, ``where``)."""
    index = {c: i for i, c in enumerate(classes)}
    target = torch.zeros(len(classes), dtype=torch.long)
    for name, difficult in objects:
        if name not in index:
            raise UserError(f"{where or 'a label'} names the class {name!r}, which is not one of the {len(classes)} classes "
                            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): fix the label or add the class")
        i = index[name]
        if not difficult:
            target[i] = 1
        elif target[i] == 0:
            target[i] = IGNORE
    return target


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``logits (N, C)`` against ``targets (N, C)`` in {0, 1, IGNORE}, summed over the
    classes and averaged over the images (ignored entries add nothing): the one-vs-rest logistic loss."""
    known = (targets != IGNORE).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets.clamp_min(0).to(logits.dtype), reduction="none")
    return (loss * known).sum() / max(1, len(logits))


def average_precisions(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision ``(C,)`` of ``scores (N, C)`` (any monotone score: logits, probabilities) against
    ``targets (N, C)``; :data:`IGNORE` entries are left out; NaN for a class with no positive image (undefined).

    The area under the precision-recall curve (torchmetrics), as VOC 2010 on scores it; VOC 2007's own devkit
    interpolates at 11 recall points, which differs by about a point or less."""
    from torchmetrics.functional.classification import multilabel_average_precision

    scores, targets = scores.float().cpu(), targets.long().cpu()
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be (N, C)")
    with warnings.catch_warnings():  # a class without positives: torchmetrics warns and scores 0; it is NaN below
        warnings.filterwarnings("ignore", message="No positive samples")
        ap = multilabel_average_precision(scores, targets, num_labels=scores.shape[1], average="none", ignore_index=IGNORE)
    return torch.where((targets == 1).any(0), ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP: the mean of :func:`average_precisions` over the classes with a positive image (torchmetrics' macro average
    would count a class without one as AP 0, a label subset's accident rather than the network's); NaN if none has."""
    ap = average_precisions(scores, targets)
    ap = ap[~ap.isnan()]
    return float(ap.mean()) if len(ap) else float("nan")


def check_targets(targets: torch.Tensor, num_classes: int) -> None:
    """A multi-label model's batch targets must be ``(B, C)``: single-label data is a configuration mistake."""
    if targets.ndim != 2 or targets.shape[1] != num_classes:
        raise UserError(f"model=multilabel needs multi-label targets (B, {num_classes}), got {tuple(targets.shape)}: use a "
                        "multi-label data set (data=voc2007, or data.source=<folder of images/ + labels.txt>) or model=classifier")


class MeanAveragePrecision(Metric):
    """:func:`mean_average_precision` over every batch of an epoch (scores and targets kept, gathered across ranks)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().long())

    def compute(self) -> torch.Tensor:
        return torch.tensor(mean_average_precision(dim_zero_cat(self.scores), dim_zero_cat(self.targets)))
