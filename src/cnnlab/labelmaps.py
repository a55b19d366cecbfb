"""Label maps: pixel sampling for sparse training, scores from a confusion matrix, one fixed palette and its legend.

Shared by the segmenter (:mod:`cnnlab.models.segmenter`), the dense linear probe (:mod:`cnnlab.probes.dense`)
and ``cnnlab-segment``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: the colour of void (ignored) pixels
VOID_COLOUR = (0, 0, 0)


def sample_label_pixels(masks: torch.Tensor, k: int, ignore_index: int, balanced: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, K, 2)`` pixel indices ``(y, x)`` of ``masks (B, H, W)`` (long), drawn with replacement among labelled pixels.

    ``balanced``: every class present in an image is drawn equally often (each pixel weighted by one over its
    class's count in that image), as an option against rare classes. An image without labelled pixels is
    sampled uniformly (its pixels are void: the loss ignores them).
    """
    b, h, w = masks.shape
    flat = masks.reshape(b, -1)
    valid = flat != ignore_index
    weights = valid.float()
    if balanced:
        classes = torch.where(valid, flat, 0)
        counts = torch.zeros(b, int(classes.max()) + 1, device=masks.device).scatter_add_(1, classes, weights)
        weights = weights / counts.gather(1, classes).clamp_min(1)
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))
    idx = torch.multinomial(weights, k, replacement=True, generator=generator)
    return torch.stack([idx // w, idx % w], -1)


def upsampled_labels(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits ``(B, C, h, w)`` -> labels ``(B, H, W)`` of the bilinearly upsampled logits (the predictions scored)."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return logits.argmax(1)


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """A confusion matrix ``(C, C)`` (rows: truth, columns: prediction; void already left out) -> scores.

    ``iou (C,)``: per-class intersection over union, NaN for a class neither present nor predicted;
    ``miou``: their mean over the classes that are not NaN; ``pixel_acc``: the fraction of labelled pixels right.
    """
    cm = confusion.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return {"iou": iou.float(), "miou": iou.nanmean().float(),
            "pixel_acc": (tp.sum() / total).float() if total > 0 else torch.tensor(float("nan"))}


def palette(num_classes: int) -> torch.Tensor:
    """``(num_classes + 1, 3)`` uint8 colours: class i is PASCAL VOC's colour i + 1 (bit-interleaved, distinct for
    any number of classes); the last row is void (black). The same for every dataset and run."""
    colours = []
    for i in range(1, num_classes + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return torch.tensor(colours + [VOID_COLOUR], dtype=torch.uint8)


def colour_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels ``(..., H, W)`` (any value outside the classes is void) -> colours ``(..., 3, H, W)`` float in [0, 1]."""
    pal = palette(num_classes).to(labels.device).float() / 255.0
    idx = torch.where((labels >= 0) & (labels < num_classes), labels, torch.full_like(labels, num_classes))
    return pal[idx].movedim(-1, -3)


def colour_labels_uint8(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels ``(H, W)`` -> ``(H, W, 3)`` uint8 colours (void black)."""
    pal = palette(num_classes).numpy()
    return pal[np.where((labels >= 0) & (labels < num_classes), labels, num_classes)]


def legend_image(classes: Sequence[str], row_height: int = 16, width: int = 160) -> torch.Tensor:
    """The palette's legend, one swatch and name per class and one for void: ``(3, H, W)`` float in [0, 1]."""
    from PIL import Image, ImageDraw

    pal = palette(len(classes)).tolist()
    names = list(classes) + ["void"]
    im = Image.new("RGB", (width, row_height * len(names)), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, (name, colour) in enumerate(zip(names, pal)):
        y = i * row_height
        draw.rectangle([2, y + 2, row_height - 2, y + row_height - 2], fill=tuple(colour), outline=(128, 128, 128))
        draw.text((row_height + 4, y + 2), name, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0


def class_counts(masks, num_classes: int) -> torch.Tensor:
    """Labelled pixels per class ``(num_classes,)`` of label maps ``(..., H, W)`` (void and padding left out)."""
    m = torch.as_tensor(np.asarray(masks)).long().flatten()
    return torch.bincount(m[(m >= 0) & (m < num_classes)], minlength=num_classes)


def majority_class_scores(train_masks, eval_masks, num_classes: int) -> dict[str, torch.Tensor]:
    """Scores of the trivial baseline that predicts the most frequent training class at every pixel."""
    majority = int(class_counts(train_masks, num_classes).argmax())
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion[:, majority] = class_counts(eval_masks, num_classes)
    return {**scores_from_confusion(confusion), "class": torch.tensor(majority)}
