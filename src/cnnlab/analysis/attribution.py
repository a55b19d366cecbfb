"""Input attributions through Captum: gradient saliency, deconvnet, guided backprop, integrated gradients, Grad-CAM.

Deconvnet and guided backprop replace the backward rule of every ``nn.ReLU`` with hooks, so the model
must use out-of-place ReLUs (:class:`~cnnlab.subject.Subject` switches them off). Simonyan's saliency map
is :func:`saliency_map`, used by ``cnnlab-visualize viz=saliency`` as well.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cnnlab.backbones import no_inplace_relu
from cnnlab.errors import UserError

METHODS = ("saliency", "deconvnet", "guided_backprop", "integrated_gradients", "grad_cam")


def _saliency(model, x, target, **_):
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=target, abs=False)


def _deconvnet(model, x, target, **_):
    from captum.attr import Deconvolution

    return Deconvolution(model).attribute(x, target=target)


def _guided(model, x, target, **_):
    from captum.attr import GuidedBackprop

    return GuidedBackprop(model).attribute(x, target=target)


def _integrated(model, x, target, baseline: float | torch.Tensor = 0.0, steps: int = 32, **_):
    """``baseline``: one value for every pixel, or an image broadcastable to ``x`` (e.g. its blurred copy)."""
    from captum.attr import IntegratedGradients

    base = baseline.detach().expand_as(x) if isinstance(baseline, torch.Tensor) else torch.full_like(x, baseline)
    return IntegratedGradients(model).attribute(x, baselines=base, target=target, n_steps=steps,
                                                internal_batch_size=max(len(x) * 8, 8))


def _grad_cam(model, x, target, layer: nn.Module | None = None, **_):
    from captum.attr import LayerAttribution, LayerGradCam

    if layer is None:
        raise UserError("grad_cam needs a layer: set analysis attribution.grad_cam_tap to a tap of the backbone")
    cam = LayerGradCam(model, layer).attribute(x, target=target)
    cam = torch.relu(cam)  # Grad-CAM keeps the positive evidence
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")


_FNS: dict[str, Callable] = {
    "saliency": _saliency, "deconvnet": _deconvnet, "guided_backprop": _guided,
    "integrated_gradients": _integrated, "grad_cam": _grad_cam,
}


def attribute(model: nn.Module, images: torch.Tensor, target: torch.Tensor | int, method: str, **kwargs) -> torch.Tensor:
    """``images (B, C, H, W)`` model input -> attribution of the ``target`` logit, same shape (Grad-CAM: ``(B, 1, H, W)``).

    ``kwargs``: ``baseline`` (a value or an image)/``steps`` for integrated gradients, ``layer`` (a module) for Grad-CAM.
    """
    if method not in _FNS:
        raise UserError(f"unknown attribution method {method!r}: choose from {list(METHODS)}")
    no_inplace_relu(model)
    model.eval()
    x = images.detach().clone().requires_grad_(True)
    target = torch.as_tensor(target, device=images.device).long().expand(len(images))
    return _FNS[method](model, x, target, **kwargs).detach()


def saliency_map(model: nn.Module, images: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    """Simonyan saliency ``(B, H, W)``: ``max_c |d score_target / d x|`` of the score before softmax (Captum's gradient)."""
    return attribute(model, images, target, "saliency").abs().amax(dim=1)


def to_heatmap(attr: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """``(B, C, H, W)`` attribution -> ``(B, H, W)`` in [0, 1] for display (abs max over channels, per-image scaling)."""
    a = attr.sum(1) if signed else attr.abs().amax(1)
    lo = a.flatten(1).min(1).values.view(-1, 1, 1) if signed else torch.zeros(len(a), 1, 1)
    hi = a.flatten(1).max(1).values.view(-1, 1, 1)
    return ((a - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def to_image(attr: torch.Tensor) -> torch.Tensor:
    """Guided-backprop style rendering: ``(B, C, H, W)`` -> centred at gray, scaled per image to [0, 1]."""
    scale = attr.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (0.5 + 0.5 * attr / scale).clamp(0, 1)
