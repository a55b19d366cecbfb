"""Colorization quality: per-pixel ab-error AuC, PSNR, and the two trivial baselines.

AuC follows colourful colorization: the fraction of pixels whose ab error (L2 in the ab plane) is
within a threshold, integrated over thresholds 0..150 and normalized to [0, 1]. The baselines
predict, with the same lightness, ab = 0 (gray) and the training prior's mean ab.
"""

from __future__ import annotations

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

    def update(self, pred_ab: torch.Tensor, true_ab: torch.Tensor) -> None:
        err = ab_errors(pred_ab.float(), true_ab.float()).reshape(-1, 1)
        self.within += (err <= self.thresholds.to(err.device)).sum(0).double()
        self.total += err.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.within / self.total.clamp_min(1)).mean().float()


class ColorizationMetrics(torch.nn.Module):
    """AuC and PSNR of a prediction and of the two trivial baselines, for one stage.

    ``update(pred_rgb, true_rgb, baselines)`` with RGB ``(B, 3, H, W)`` in [0, 1] and
    ``baselines = {"gray": rgb, "prior": rgb}``; :meth:`compute` -> ``{"auc": ..., "psnr": ..., "auc_gray": ...}``.
    """

    names = ("", "_gray", "_prior")

    def __init__(self):
        super().__init__()
        self.auc = torch.nn.ModuleDict({f"auc{n}": AbAuC() for n in self.names})
        self.psnr = torch.nn.ModuleDict({f"psnr{n}": PeakSignalNoiseRatio(data_range=1.0) for n in self.names})

    def update(self, pred_rgb: torch.Tensor, true_rgb: torch.Tensor, baselines: dict[str, torch.Tensor]) -> None:
        true_ab = rgb_to_lab(true_rgb)[:, 1:]
        for suffix, rgb in (("", pred_rgb), ("_gray", baselines["gray"]), ("_prior", baselines["prior"])):
            self.auc[f"auc{suffix}"].update(rgb_to_lab(rgb)[:, 1:], true_ab)
            self.psnr[f"psnr{suffix}"].update(rgb.clamp(0, 1), true_rgb)

    def compute(self) -> dict[str, torch.Tensor]:
        return {**{k: m.compute() for k, m in self.auc.items()}, **{k: m.compute() for k, m in self.psnr.items()}}

    def reset(self) -> None:
        for m in [*self.auc.values(), *self.psnr.values()]:
            m.reset()
