"""Which units of a (colorization) trunk respond to colour and which to object class.

One streamed pass over a labelled dataset collects, per unit of a tap:

- colour: the Lab colour of the image region under each feature-map cell (the cell's mean ``a, b``
  and chroma). From the unit's top-activating cells: *hue consistency* ``|mean(ab)| / mean(|ab|)``
  (1 = always the same hue, 0 = hues cancel) and *chroma ratio* (their mean chroma over the dataset's);
  over all cells: the Pearson correlation of activation with chroma.
- class: the class selectivity index ``(mu_max - mu_rest) / (mu_max + mu_rest)`` of the unit's mean
  activation per class (0 = no class preference, 1 = fires for one class only).

Memory is ``O(units * (top_cells + classes))`` whatever the dataset size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.color import rgb_to_lab
from cnnlab.errors import UserError
from cnnlab.io.progress import progress as show_progress
from cnnlab.taps import TappedNetwork


@dataclass
class UnitStats:
    """Per-unit arrays of length ``U`` (see the module docstring)."""

    hue_consistency: np.ndarray
    chroma_ratio: np.ndarray
    chroma_corr: np.ndarray
    mean_hue_deg: np.ndarray   # hue angle of the mean ab of top cells, degrees in [0, 360)
    top_ab: np.ndarray         # (U, 2) mean a, b of top cells
    class_selectivity: np.ndarray
    preferred_class: np.ndarray
    class_means: np.ndarray    # (U, K)

    def categories(self, colour_threshold: float = 0.5, class_threshold: float = 0.3) -> np.ndarray:
        """``'colour'``, ``'object'``, ``'both'`` or ``'neither'`` per unit."""
        colour = (self.hue_consistency >= colour_threshold) & (self.chroma_ratio >= 1.0)
        obj = self.class_selectivity >= class_threshold
        return np.where(colour & obj, "both", np.where(colour, "colour", np.where(obj, "object", "neither")))


def class_selectivity(class_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, K)`` non-negative mean activation per class -> selectivity index ``(U,)`` and preferred class ``(U,)``."""
    m = class_means.clamp_min(0)
    top, arg = m.max(dim=1)
    rest = (m.sum(1) - top) / max(m.shape[1] - 1, 1)
    return (top - rest) / (top + rest).clamp_min(1e-12), arg


@torch.no_grad()
def unit_color_class_stats(
    backbone: TappedNetwork,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    tap: str,
    num_classes: int,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    top_cells: int = 500,
    device: str | torch.device = "cpu",
    progress: str | None = None,
    total: int | None = None,
) -> UnitStats:
    """Stream ``(uint8 RGB images, labels)`` batches through ``backbone`` and summarize every unit of ``tap``.

    ``preprocess`` gives the model input (e.g. lightness for a colorization trunk); colour statistics
    always come from the RGB images themselves.
    """
    backbone.check_taps([tap])
    backbone.eval().to(device)
    it = show_progress(batches, progress, total)
    acc: dict[str, torch.Tensor] = {}
    top_v = top_a = top_b = top_c = None
    n_cells = 0
    class_sum = class_cnt = None
    for images, labels in it:
        images = images.to(device)
        fmap = backbone.forward_taps(preprocess(images), [tap])[tap].float()  # (B, U, h, w)
        b, u, h, w = fmap.shape
        lab = rgb_to_lab(images.float() / 255)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], (h, w))                       # (B, 2, h, w)
        chroma = F.adaptive_avg_pool2d(lab[:, 1:].norm(dim=1, keepdim=True), (h, w))[:, 0]  # (B, h, w)
        act = fmap.permute(0, 2, 3, 1).reshape(-1, u).double().cpu()         # (cells, U)
        c = chroma.reshape(-1, 1).double().cpu()
        a_cells, b_cells = ab[:, 0].reshape(-1, 1).cpu(), ab[:, 1].reshape(-1, 1).cpu()
        if not acc:
            acc = {k: torch.zeros(u, dtype=torch.float64) for k in ("s_a", "s_aa", "s_ac")}
            acc.update(s_c=torch.zeros((), dtype=torch.float64), s_cc=torch.zeros((), dtype=torch.float64))
            class_sum = torch.zeros(u, num_classes, dtype=torch.float64)
            class_cnt = torch.zeros(num_classes, dtype=torch.float64)
            top_v = torch.full((0, u), -math.inf)
            top_a = top_b = top_c = torch.zeros((0, u))
        acc["s_a"] += act.sum(0)
        acc["s_aa"] += (act * act).sum(0)
        acc["s_ac"] += (act * c).sum(0)
        acc["s_c"] += c.sum()
        acc["s_cc"] += (c * c).sum()
        n_cells += len(act)
        # running top cells per unit, carrying their colour along
        v = torch.cat([top_v, act.float()])
        cand_a = torch.cat([top_a, a_cells.expand(-1, u)])
        cand_b = torch.cat([top_b, b_cells.expand(-1, u)])
        cand_c = torch.cat([top_c, c.float().expand(-1, u)])
        sel = v.topk(min(top_cells, len(v)), dim=0)
        top_v, top_a, top_b, top_c = sel.values, cand_a.gather(0, sel.indices), cand_b.gather(0, sel.indices), cand_c.gather(0, sel.indices)
        y = labels.long().cpu()
        if y.numel() and int(y.max()) >= num_classes:
            raise UserError(f"label {int(y.max())} is outside the {num_classes} classes given: check the data config")
        image_mean = fmap.mean(dim=(2, 3)).double().cpu()                    # (B, U)
        class_sum.index_add_(1, y, image_mean.T)
        class_cnt += torch.bincount(y, minlength=num_classes).double()
    if n_cells == 0:
        raise UserError("the dataset is empty: nothing to measure unit statistics on; check data.source and the split")
    n = float(n_cells)
    mean_a, mean_c = acc["s_a"] / n, acc["s_c"] / n
    cov = acc["s_ac"] / n - mean_a * mean_c
    var_a = (acc["s_aa"] / n - mean_a ** 2).clamp_min(0)
    var_c = (acc["s_cc"] / n - mean_c ** 2).clamp_min(0)
    corr = cov / (var_a * var_c).sqrt().clamp_min(1e-12)
    mean_ab = torch.stack([top_a.mean(0), top_b.mean(0)], dim=1)             # (U, 2)
    consistency = mean_ab.norm(dim=1) / top_c.mean(0).clamp_min(1e-6)
    ratio = top_c.mean(0) / max(float(mean_c), 1e-6)
    hue = torch.rad2deg(torch.atan2(mean_ab[:, 1], mean_ab[:, 0])) % 360
    class_means = class_sum / class_cnt.clamp_min(1)
    csi, pref = class_selectivity(class_means)
    return UnitStats(
        hue_consistency=consistency.clamp(0, 1).numpy(), chroma_ratio=ratio.numpy(), chroma_corr=corr.float().numpy(),
        mean_hue_deg=hue.numpy(), top_ab=mean_ab.numpy(), class_selectivity=csi.float().numpy(),
        preferred_class=pref.numpy(), class_means=class_means.float().numpy(),
    )


def unit_swatch_rgb(top_ab: np.ndarray, lightness: float = 65.0) -> np.ndarray:
    """``(U, 2)`` mean ``a, b`` -> ``(U, 3)`` RGB in [0, 1] at a fixed lightness (the unit's colour in plots)."""
    from cnnlab.color import lab_to_rgb

    ab = torch.as_tensor(top_ab, dtype=torch.float32)
    lab = torch.cat([torch.full((len(ab), 1), lightness), ab], dim=1).view(-1, 3, 1, 1)
    return lab_to_rgb(lab).view(-1, 3).numpy()
