"""Model-randomization sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

Cascading randomization: the layers with parameters are re-initialized one at a time from the top
(the logits) down, cumulatively, in a deep copy of the model; after every step (:func:`cascade_steps`: a conv or
linear layer with its normalization, as the paper counts layers, or every module) each method's maps are
recomputed and compared with the trained model's maps by Spearman rank correlation (of the signed
maps and of their absolute values) and SSIM. A map that stays similar while the weights that produce
the answer are destroyed does not explain the model.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from cnnlab.errors import UserError


def cascade_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Qualified names of the modules that own parameters, in the order the forward pass *runs* them, last first.

    Order is taken from one forward pass of ``example`` (``(1, C, H, W)``) rather than from registration
    order, which need not be execution order. Modules the forward pass never calls are left out.
    """
    names = {m: n for n, m in model.named_modules()}
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise UserError(f"the sanity check needs a model with parameters, but {type(model).__name__} has none: "
                        "pass a trained classifier checkpoint")
    called: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: called.append(mod) if mod not in called else None) for m in owners]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not called:
        raise UserError(f"no layer with parameters of {type(model).__name__} takes part in its forward pass: nothing to randomize")
    return [names[m] for m in reversed(called)]


#: the modules that normalize the output of the layer before them: randomized in one step with that layer
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
#: how :func:`cascade_steps` cuts the cascade into the depths where maps are compared
STEPS = ("layer", "module")


def cascade_steps(model: nn.Module, layers: list[str], step: str = "layer") -> list[list[str]]:
    """``layers`` (top first, :func:`cascade_layers`) cut into the cascade's steps, each a list of names, top first.

    ``layer``: a normalization module (BatchNorm, GroupNorm, LayerNorm) is randomized together with the layer whose
    output it normalizes (the next one in top-down order: ``[bn4_2, conv4_2]``), as Adebayo et al. count layers;
    ``module``: every module with parameters is a step of its own. Every module is randomized either way, with the
    same weights (:func:`cascading_randomization`): ``layer`` compares maps at a subset of the depths ``module`` does.
    """
    if step not in STEPS:
        raise UserError(f"sanity step must be one of {list(STEPS)}, got {step!r}")
    steps, current = [], []
    for name in layers:
        current.append(name)
        if step == "module" or not isinstance(model.get_submodule(name), NORMS):
            steps.append(current)
            current = []
    if current:  # normalization with no layer under it: a step of its own
        steps.append(current)
    return steps


def randomize_module(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters (its ``reset_parameters``, e.g. Kaiming for conv, 1/0 and fresh
    running statistics for BatchNorm), drawn from ``seed`` without touching the global RNG.

    A module without ``reset_parameters`` gets each parameter redrawn from a normal of the same mean and std.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.copy_(torch.randn_like(p) * p.std().nan_to_num(0.0).clamp_min(1e-3) + p.mean())


def cascading_randomization(model: nn.Module, layers: list[str], seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(layer name, model copy)`` with the first 1, 2, ... of ``layers`` randomized, cumulatively.

    ``layers``: qualified module names, top first (:func:`cascade_layers`). One deep copy is made and
    randomized further at every step (the yielded object is the same copy); ``model`` is never modified.
    """
    rand = copy.deepcopy(model).eval()
    for i, name in enumerate(layers):
        randomize_module(rand.get_submodule(name), seed + i)
        yield name, rand


# --------------------------------------------------------------------------------------------- similarity
def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman correlation of ``(N, ...)`` maps (average ranks for ties) -> ``(N,)``.

    A constant map keeps no ranking: its correlation is 0 (not NaN) so that means over images stay defined.
    """
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).double().cpu().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.norm(dim=1) * rb.norm(dim=1))
    r = (ra * rb).sum(1) / den.clamp_min(1e-12)
    return torch.where(den > 1e-9, r, torch.zeros_like(r)).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of ``(N, H, W)`` non-negative maps, each scaled to [0, 1] by its maximum -> ``(N,)``."""
    from skimage.metrics import structural_similarity

    def unit(m):
        m = m.double().cpu()
        return (m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)).numpy()

    ua, ub = unit(a), unit(b)
    win = min(7, *a.shape[-2:])
    win -= 1 - win % 2
    return torch.tensor([structural_similarity(x, y, data_range=1.0, win_size=win) for x, y in zip(ua, ub)],
                        dtype=torch.float32)


def map_similarity(signed0: torch.Tensor, abs0: torch.Tensor, signed: torch.Tensor, absolute: torch.Tensor) -> dict[str, torch.Tensor]:
    """``(N, H, W)`` original and randomized maps -> per-image ``spearman``, ``spearman_abs``, ``ssim`` (of the abs maps)."""
    return {"spearman": spearman(signed0, signed), "spearman_abs": spearman(abs0, absolute), "ssim": ssim(abs0, absolute)}

