"""Colorization quality: per-pixel ab-error AuC, PSNR, and the two trivial baselines.

AuC follows colourful colorization: the fraction of pixels whose ab error (L2 in the ab plane) is
within a threshold, integrated over thresholds 0..150 and normalized to [0, 1]. The baselines
predict, with the same lightness, ab = 0 (gray) and the training prior's mean ab. The
class-rebalanced AuC (``auc_rebal``) weighs each pixel by the inverse prior probability of its
true colour's bin, so rare saturated colours count as much as common dull ones: plain AuC rewards
caution (gray scores high), the rebalanced one rewards getting colours right.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio

from cnnlab.color import rgb_to_lab

AUC_MAX, AUC_STEP = 150, 1


def ab_errors(pred_ab: torch.Tensor, true_ab: torch.Tensor) -> torch.Tensor:
    """ab ``(B, 2, H, W)`` each -> per-pixel L2 error ``(B, H, W)``."""
    return (pred_ab - true_ab).norm(dim=1)


def auc_thresholds(max_t: float = AUC_MAX, step: float = AUC_STEP, device=None) -> torch.Tensor:
    return torch.arange(0, max_t + step / 2, step, device=device, dtype=torch.float32)


def ab_error_auc(errors: torch.Tensor, max_t: float = AUC_MAX, step: float = AUC_STEP) -> torch.Tensor:
    """Per-pixel errors ``(...)`` -> scalar AuC in [0, 1] of the error CDF over thresholds ``0..max_t``."""
    t = auc_thresholds(max_t, step, errors.device)
    cdf = (errors.reshape(-1, 1) <= t).float().mean(0)
    return cdf.mean()


class AbAuC(Metric):
    """Accumulates, over batches, how many pixels fall within each threshold; AuC of the pooled CDF."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, max_t: float = AUC_MAX, step: float = AUC_STEP, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("thresholds", auc_thresholds(max_t, step), persistent=False)
        self.add_state("within", default=torch.zeros(len(self.thresholds), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_ab: torch.Tensor, true_ab: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """ab ``(B, 2, H, W)`` each; optional per-pixel ``weights (B, H, W)`` (None: every pixel counts 1)."""
        err = ab_errors(pred_ab.float(), true_ab.float()).reshape(-1, 1)
        hit = (err <= self.thresholds.to(err.device)).double()
        if weights is None:
            self.within += hit.sum(0)
            self.total += err.shape[0]
        else:
            w = weights.reshape(-1, 1).double()
            self.within += (hit * w).sum(0)
            self.total += w.sum()

    def compute(self) -> torch.Tensor:
        return (self.within / self.total.clamp_min(1)).mean().float()


class ColorizationMetrics(torch.nn.Module):
    """AuC and PSNR of a prediction and of the two trivial baselines, for one stage.

    ``update(pred_rgb, true_rgb, baselines, rebalance)`` with RGB ``(B, 3, H, W)`` in [0, 1],
    ``baselines = {"gray": rgb, "prior": rgb}`` and ``rebalance`` a function true ab ``(B, 2, H, W)`` -> pixel
    weights ``(B, H, W)`` (None: no rebalanced AuC); :meth:`compute` -> ``{"auc": ..., "auc_rebal": ..., "psnr": ...,
    "auc_gray": ..., "auc_rebal_gray": ...}``.
    """

    names = ("", "_gray", "_prior")

    def __init__(self):
        super().__init__()
        self.auc = torch.nn.ModuleDict({f"auc{n}": AbAuC() for n in self.names})
        self.auc_rebal = torch.nn.ModuleDict({f"auc_rebal{n}": AbAuC() for n in self.names})
        self.psnr = torch.nn.ModuleDict({f"psnr{n}": PeakSignalNoiseRatio(data_range=1.0) for n in self.names})

    def update(self, pred_rgb: torch.Tensor, true_rgb: torch.Tensor, baselines: dict[str, torch.Tensor],
               rebalance: Callable[[torch.Tensor], torch.Tensor] | None = None,
               true_ab: torch.Tensor | None = None) -> None:
        """``true_ab (B, 2, H, W)``: the truth's colour when the caller has it (else computed from ``true_rgb``).

        Predictions and baselines are measured as displayed: their ab is read back from their RGB, after
        the clip to the sRGB gamut that every shown image goes through.
        """
        if true_ab is None:
            true_ab = rgb_to_lab(true_rgb)[:, 1:]
        weights = rebalance(true_ab) if rebalance is not None else None
        for suffix, rgb in (("", pred_rgb), ("_gray", baselines["gray"]), ("_prior", baselines["prior"])):
            pred_ab = rgb_to_lab(rgb)[:, 1:]
            self.auc[f"auc{suffix}"].update(pred_ab, true_ab)
            if weights is not None:
                self.auc_rebal[f"auc_rebal{suffix}"].update(pred_ab, true_ab, weights)
            self.psnr[f"psnr{suffix}"].update(rgb.clamp(0, 1), true_rgb)

    def compute(self) -> dict[str, torch.Tensor]:
        rebal = {k: m.compute() for k, m in self.auc_rebal.items() if m.update_count > 0}
        return {**{k: m.compute() for k, m in self.auc.items()}, **rebal, **{k: m.compute() for k, m in self.psnr.items()}}

    def reset(self) -> None:
        for m in [*self.auc.values(), *self.auc_rebal.values(), *self.psnr.values()]:
            m.reset()
