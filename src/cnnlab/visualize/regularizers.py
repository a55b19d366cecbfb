"""Image priors: penalties added to the objective, and in-place updates applied after each step.

Penalties are pure functions of ``(B, C, H, W)`` images returning a scalar (mean over the batch).
Step-wise regularizers (Yosinski et al. 2015) act on a ``PixelImage`` after each optimizer step:
L2 decay, Gaussian blur every k steps, and setting pixels of small norm or small contribution to
gray (the image's zero).
"""

from __future__ import annotations

import math

import kornia
import torch

from cnnlab.errors import UserError

_TV_EPS = 1e-8


def l2_norm(x: torch.Tensor, center: float = 0.5) -> torch.Tensor:
    """Mean squared deviation from ``center`` per pixel, averaged over the batch: scalar."""
    return (x - center).pow(2).mean()


def alpha_norm(x: torch.Tensor, alpha: float = 6.0, center: float = 0.5) -> torch.Tensor:
    """Mean of ``|x - center|^alpha`` (Mahendran & Vedaldi: alpha = 6 keeps pixels in range)."""
    return (x - center).abs().pow(alpha).mean()


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mean over pixels of ``(dx^2 + dy^2)^(beta / 2)``, averaged over the batch; exactly 0 for a constant image.

    A tiny epsilon keeps the gradient finite for beta < 2 where the image is flat; it is subtracted
    back so a constant image scores 0.
    """
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    d2 = dx.pow(2) + dy.pow(2)
    eps = torch.full((), _TV_EPS, dtype=x.dtype, device=x.device)
    # the same float op on both sides: a flat image gives exactly (eps^(b/2) - eps^(b/2)) = 0
    return ((d2 + eps).pow(beta / 2.0) - eps.pow(beta / 2.0)).mean()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel 2*ceil(2 sigma)+1, reflect border)."""
    if sigma <= 0:
        return x
    k = 2 * math.ceil(2 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def _below_percentile(score: torch.Tensor, pct: float) -> torch.Tensor:
    """``(B, H, W)`` score -> mask of pixels below its per-image ``pct`` percentile."""
    flat = score.flatten(1)
    thr = torch.quantile(flat, pct / 100.0, dim=1, keepdim=True)
    return (flat < thr).view_as(score)


class StepRegularizer:
    """Yosinski-style regularization applied to the centred pixels after every optimizer step.

    ``decay``: x <- (1 - decay) x; ``blur_sigma`` every ``blur_every`` steps; ``norm_pct``: pixels whose
    colour-vector norm is below that percentile become gray; ``contrib_pct``: pixels whose
    contribution ``|sum_c x * grad|`` (first-order change of the objective if set to gray) is below it
    become gray.
    """

    def __init__(self, decay: float = 0.0, blur_sigma: float = 0.0, blur_every: int = 0, norm_pct: float = 0.0,
                 contrib_pct: float = 0.0):
        for name, pct in (("norm_pct", norm_pct), ("contrib_pct", contrib_pct)):
            if not 0 <= pct < 100:
                raise UserError(f"{name} must be a percentile in [0, 100), got {pct}")
        self.decay, self.blur_sigma, self.blur_every = decay, blur_sigma, blur_every
        self.norm_pct, self.contrib_pct = norm_pct, contrib_pct

    @torch.no_grad()
    def __call__(self, image, step: int) -> None:
        p = getattr(image, "pixels", None)
        if p is None:
            raise UserError("step regularizers (decay, blur, clipping) need image=pixel")
        if self.decay:
            p.mul_(1.0 - self.decay)
        if self.blur_sigma and self.blur_every and step % self.blur_every == 0:
            p.copy_(gaussian_blur(p, self.blur_sigma))
        if self.norm_pct:
            p.masked_fill_(_below_percentile(p.norm(dim=1), self.norm_pct).unsqueeze(1), 0.0)
        if self.contrib_pct and p.grad is not None:
            contrib = (p * -p.grad).sum(dim=1).abs()
            p.masked_fill_(_below_percentile(contrib, self.contrib_pct).unsqueeze(1), 0.0)

    def __repr__(self) -> str:
        return (f"StepRegularizer(decay={self.decay}, blur_sigma={self.blur_sigma}, blur_every={self.blur_every}, "
                f"norm_pct={self.norm_pct}, contrib_pct={self.contrib_pct})")


#: the four regularization settings of Yosinski et al. 2015 (Fig. 3), for images in [0, 1]
YOSINSKI_PRESETS = {
    "a": dict(decay=0.0, blur_sigma=0.5, blur_every=4, norm_pct=50.0, contrib_pct=0.0),
    "b": dict(decay=0.3, blur_sigma=0.0, blur_every=0, norm_pct=20.0, contrib_pct=0.0),
    "c": dict(decay=1e-4, blur_sigma=1.0, blur_every=4, norm_pct=0.0, contrib_pct=0.0),
    "d": dict(decay=0.0, blur_sigma=0.5, blur_every=4, norm_pct=0.0, contrib_pct=90.0),
}
