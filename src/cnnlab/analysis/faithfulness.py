"""Deletion and insertion curves (Petsiuk et al., RISE, 2018): does an attribution map rank the pixels the model uses?

Pixels move from a *start* image to an *end* image in the order of a map, most relevant first, and the
class probability is recorded after every step. Deletion goes from the image to a baseline fill (a
faithful map makes the probability fall fast: low area under the curve); insertion goes from a blurred
image to the image (a faithful map makes it rise fast: high area). A random order is the reference.

:class:`Explainer` turns every attribution method of the project (:mod:`cnnlab.analysis.attribution`
and :mod:`cnnlab.analysis.occlusion`) into one pixel map per image, so deletion, insertion and the
randomization check (:mod:`cnnlab.analysis.sanity`) score the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.analysis import attribution as attr_mod
from cnnlab.analysis import occlusion as occ
from cnnlab.errors import UserError

#: every attribution method the project has: Captum's five and occlusion sensitivity
METHODS = (*attr_mod.METHODS, "occlusion")
#: how a method's ``(B, C, H, W)`` attribution becomes one relevance per pixel when ``reduce="auto"``:
#: gradient-like maps rank by magnitude (their sign is not a direction of evidence), integrated
#: gradients sum signed contributions over channels (completeness: they add up to the logit change)
AUTO_REDUCE = {"saliency": "abs", "deconvnet": "abs", "guided_backprop": "abs", "integrated_gradients": "sum",
               "grad_cam": "sum", "occlusion": "sum"}


def check_methods(methods) -> list[str]:
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown attribution method(s) {unknown}: choose from {list(METHODS)}")
    if not methods:
        raise UserError(f"no attribution method given: choose from {list(METHODS)}")
    return methods


def check_ig_baseline(baseline) -> float | str:
    """An integrated-gradients baseline: an RGB value in [0, 1] (0 black, 0.5 gray) or ``"blur"`` (the blurred image)."""
    if baseline == "blur" or (isinstance(baseline, (int, float)) and not isinstance(baseline, bool) and 0 <= baseline <= 1):
        return baseline
    raise UserError(f"ig_baseline must be a value in [0, 1] (0 black, 0.5 gray) or 'blur', got {baseline!r}")


def reduce_channels(attr: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: ``"sum"`` signed channel sum, ``"abs"`` max magnitude over channels."""
    if how == "sum":
        return attr.sum(1)
    if how == "abs":
        return attr.abs().amax(1)
    raise UserError(f"reduce must be 'auto', 'sum' or 'abs', got {how!r}")


@dataclass
class Explainer:
    """One attribution method as ``(model, x (B, C, H, W), target (B,)) -> (B, C', H, W)`` attribution.

    ``grad_cam_layer`` is the *qualified module name* inside the model (``model.get_submodule``), so the
    same explainer works on a randomized deep copy. Occlusion's attribution is the probability drop
    ``p(x) - p(x with the gray square over the pixel)``, one channel.
    """

    method: str
    grad_cam_layer: str | None = None
    ig_steps: int = 32
    ig_baseline: float | str = 0.0
    occlusion_patch: int = 8
    occlusion_stride: int = 4
    occlusion_fill: float | torch.Tensor = 0.5
    blur_sigma: float = 3.0

    def __post_init__(self) -> None:
        check_methods([self.method])
        check_ig_baseline(self.ig_baseline)

    def ig_start(self, x: torch.Tensor) -> float | torch.Tensor:
        """What integrated gradients integrate from: the value, or ``"blur"``: each image blurred (the insertion start)."""
        return blur(x, self.blur_sigma) if self.ig_baseline == "blur" else float(self.ig_baseline)

    def attribution(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.method == "occlusion":
            maps = occ.occlusion_map(model, x, target, patch=self.occlusion_patch, stride=self.occlusion_stride,
                                     fill=self.occlusion_fill)
            size = tuple(x.shape[2:])
            heat = torch.stack([occ.occlusion_heatmap(m, size, self.occlusion_patch, self.occlusion_stride) for m in maps])
            with torch.no_grad():
                p0 = model(x).softmax(1).gather(1, target.view(-1, 1)).cpu()
            return (p0.view(-1, 1, 1) - heat)[:, None].to(x.device)
        kw: dict = {"steps": self.ig_steps, "baseline": self.ig_start(x)} if self.method == "integrated_gradients" else {}
        if self.method == "grad_cam":
            if self.grad_cam_layer is None:
                raise UserError("grad_cam needs a layer: set grad_cam_tap to a tap of the backbone")
            kw = {"layer": model.get_submodule(self.grad_cam_layer)}
        return attr_mod.attribute(model, x, target, self.method, **kw)

    def pixel_map(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, reduce: str = "auto") -> torch.Tensor:
        """``(B, H, W)`` relevance per pixel (see :data:`AUTO_REDUCE`)."""
        how = AUTO_REDUCE[self.method] if reduce == "auto" else reduce
        return reduce_channels(self.attribution(model, x, target), how)


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The qualified name of ``module`` inside ``model`` (for :attr:`Explainer.grad_cam_layer`)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise UserError(f"{type(module).__name__} is not part of the model: pick a tap of its backbone")


# --------------------------------------------------------------------------------------------- curves
def pixel_ranks(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``scores (B, H, W)`` -> ``(B, H*W)`` rank of every pixel, 0 = most relevant; ties broken at random.

    Random tie-breaking matters for maps with flat regions (Grad-CAM's zeros): a fixed raster order
    would delete the top rows first and score the scan order, not the map.
    """
    flat = scores.flatten(1).float().cpu()
    shuffle = torch.rand(flat.shape, generator=generator).argsort(dim=1)
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks


@torch.no_grad()
def perturbation_curve(model: nn.Module, start: torch.Tensor, end: torch.Tensor, target: torch.Tensor,
                       ranks: torch.Tensor, steps: int = 32, chunk: int = 512) -> torch.Tensor:
    """Probability of ``target`` as pixels move from ``start`` to ``end`` in rank order: ``(B, steps + 1)``.

    ``start``/``end``: ``(B, C, H, W)`` model inputs (either may broadcast, e.g. a ``(1, C, 1, 1)`` fill);
    ``ranks``: ``(B, H*W)`` from :func:`pixel_ranks`. Column ``k`` has the first ``round(k * H*W / steps)``
    pixels (all channels) taken from ``end``; column 0 is ``start``, the last column ``end``. All
    ``B * (steps + 1)`` images go through the model ``chunk`` at a time.
    """
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    start, end = torch.broadcast_tensors(start, end)
    b, c, h, w = start.shape
    counts = torch.round(torch.arange(steps + 1) * (h * w) / steps).long()
    moved = (ranks.view(b, 1, h * w) < counts.view(1, -1, 1)).view(b, steps + 1, 1, h, w).to(start.device)
    batch = torch.where(moved, end[:, None], start[:, None]).reshape(b * (steps + 1), c, h, w)
    tgt = target.to(start.device).repeat_interleave(steps + 1)
    probs = torch.cat([model(batch[s:s + chunk]).softmax(1).gather(1, tgt[s:s + chunk, None]).squeeze(1).cpu()
                       for s in range(0, len(batch), chunk)])
    return probs.view(b, steps + 1)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """``(B, S + 1)`` curves over the moved fraction 0..1 -> ``(B,)`` trapezoidal area (in [0, 1] for probabilities)."""
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` (kernel 6 sigma + 1, reflected borders): the insertion start."""
    from torchvision.transforms.functional import gaussian_blur

    if sigma <= 0:
        raise UserError(f"blur_sigma must be positive, got {sigma}")
    k = 2 * int(round(3 * sigma)) + 1
    k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)  # reflect padding needs the half kernel inside the image
    return gaussian_blur(x, [k, k], [sigma, sigma])


@dataclass
class Curves:
    """Deletion and insertion curves ``(N, S + 1)`` of one ordering over N images."""

    deletion: torch.Tensor
    insertion: torch.Tensor

    def aucs(self) -> dict[str, torch.Tensor]:
        return {"deletion": curve_auc(self.deletion), "insertion": curve_auc(self.insertion)}


def deletion_insertion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, scores: torch.Tensor,
                       fill: torch.Tensor, blurred: torch.Tensor, steps: int = 32,
                       generator: torch.Generator | None = None, chunk: int = 512) -> Curves:
    """Both curves of one ordering: deletion ``x -> fill``, insertion ``blurred -> x`` (same ranks)."""
    ranks = pixel_ranks(scores, generator)
    return Curves(perturbation_curve(model, x, fill, target, ranks, steps, chunk),
                  perturbation_curve(model, blurred, x, target, ranks, steps, chunk))
