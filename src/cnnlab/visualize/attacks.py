"""Adversarial and fooling images as pure functions.

``model`` maps RGB images ``(B, 3, H, W)`` in [0, 1] to class scores ``(B, K)`` (a ``Network``, whose
forward path does any colour conversion and normalization). Every returned image is in [0, 1];
L-infinity attacks stay within ``eps`` of the original. Gradients are taken with respect to the
images only (``torch.autograd.grad``): the model's parameters never accumulate gradients.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cnnlab.errors import UserError

Model = Callable[[torch.Tensor], torch.Tensor]


def check_eps(eps: float, name: str = "eps") -> float:
    """``eps`` must be a perturbation size in pixel units of [0, 1] images (8/255, not 8)."""
    eps = float(eps)
    if not 0.0 < eps <= 1.0:
        raise UserError(f"{name}={eps:g} is outside the pixel range (0, 1]: give it in [0, 1] units, e.g. 8/255 = {8 / 255:.4f}")
    return eps


def _input_grad(model: Model, x: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Gradient of the loss to *ascend*: CE of the true class (untargeted) or minus CE of the target."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    (g,) = torch.autograd.grad(-loss if targeted else loss, x)
    return g


def fgsm(model: Model, images: torch.Tensor, labels: torch.Tensor, eps: float, targeted: bool = False) -> torch.Tensor:
    """Goodfellow et al.: ``x + eps * sign(grad)`` clipped to [0, 1].

    ``labels``: the true classes (untargeted: move away from them) or the targets (``targeted=True``).
    """
    eps = check_eps(eps)
    g = _input_grad(model, images, labels, targeted)
    return (images + eps * g.sign()).clamp(0.0, 1.0).detach()


def project_linf(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the eps-ball around ``images`` and the pixel range."""
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0)


def pgd(model: Model, images: torch.Tensor, labels: torch.Tensor, eps: float, step_size: float | None = None,
        steps: int = 10, random_start: bool = True, targeted: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Iterative FGSM / PGD in L-infinity (Madry et al.): sign steps projected back into the eps-ball.

    ``step_size`` defaults to ``eps / 4`` (2/255 at eps 8/255); ``random_start`` begins at a uniform point
    of the ball. One step with ``step_size=eps`` and no random start is FGSM.
    """
    eps = check_eps(eps)
    step_size = check_eps(step_size, "step_size") if step_size is not None else eps / 4
    images = images.detach()
    adv = images.clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device) * 2 - 1
        adv = project_linf(images + eps * noise, images, eps)
    for _ in range(int(steps)):
        g = _input_grad(model, adv, labels, targeted)
        adv = project_linf(adv + step_size * g.sign(), images, eps).detach()
    return adv


def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``(B,)`` how far from success: untargeted z_y - max_{j!=y} z_j; targeted max_{j!=t} z_j - z_t."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true if targeted else true - other


def minimal_distortion(model: Model, images: torch.Tensor, labels: torch.Tensor, targeted: bool = False, steps: int = 100,
                       lr: float = 0.01, c_init: float = 1.0, search_steps: int = 5, kappa: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest L2 perturbation that changes the decision (box-constrained, after Szegedy et al.).

    Minimizes ``||r||^2 + c * max(margin(x + r), -kappa)`` with Adam, ``x + r`` kept in [0, 1], and a
    per-image binary search on ``c`` (``search_steps`` rounds). Returns ``(adversarial images, success)``;
    images without a success are returned unchanged.
    """
    images = images.detach()
    b = images.shape[0]
    lo = torch.zeros(b, device=images.device)
    hi = torch.full((b,), float("inf"), device=images.device)
    c = torch.full((b,), float(c_init), device=images.device)
    best = images.clone()
    best_norm = torch.full((b,), float("inf"), device=images.device)
    for _ in range(int(search_steps)):
        r = torch.zeros_like(images, requires_grad=True)
        opt = torch.optim.Adam([r], lr=lr)
        for _ in range(int(steps)):
            adv = (images + r).clamp(0.0, 1.0)
            logits = model(adv)
            margin = _margin(logits, labels, targeted)
            dist = (adv - images).flatten(1).pow(2).sum(1)
            loss = (dist + c * margin.clamp_min(-kappa)).sum()
            opt.zero_grad()
            (g,) = torch.autograd.grad(loss, r)
            r.grad = g
            opt.step()
            with torch.no_grad():
                ok = margin < 0
                better = ok & (dist.sqrt() < best_norm)
                best[better] = adv.detach()[better]
                best_norm[better] = dist.sqrt()[better]
        with torch.no_grad():
            found = best_norm < float("inf")
            hi = torch.where(found, torch.minimum(hi, c), hi)
            lo = torch.where(found, lo, torch.maximum(lo, c))
            # success: try a smaller c (less weight on the misclassification, smaller r); failure: a larger one
            c = torch.where(hi < float("inf"), (lo + hi) / 2, c * 10)
    return best, best_norm < float("inf")


def fooling_images(model: Model, classes: torch.Tensor, size: int | tuple[int, int] = 32, steps: int = 200, lr: float = 0.05,
                   confidence: float = 0.99, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nguyen et al.: images optimized from uniform noise until ``model`` gives ``classes[b]`` >= ``confidence``.

    Pixels live in logit space (a sigmoid keeps them in [0, 1]); Adam on the cross-entropy. An image
    stops changing once it reaches the confidence. Returns ``(images, confidences, steps taken)``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    classes = torch.as_tensor(classes, device=device).long()
    b = classes.numel()
    x0 = torch.rand(b, 3, h, w, generator=generator).to(device).clamp(0.02, 0.98)
    z = torch.logit(x0).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    taken = torch.zeros(b, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for _ in range(int(steps)):
        x = torch.sigmoid(z)
        logits = model(x)
        conf = logits.softmax(1).gather(1, classes[:, None]).squeeze(1)
        done = done | (conf >= confidence).detach()
        if bool(done.all()):
            break
        loss = (F.cross_entropy(logits, classes, reduction="none") * (~done).float()).sum()
        opt.zero_grad()
        (g,) = torch.autograd.grad(loss, z)
        z.grad = g
        frozen = z.detach()[done].clone()
        opt.step()
        with torch.no_grad():  # Adam's momentum would keep moving finished images
            z[done] = frozen
        taken += (~done).long()
    with torch.no_grad():
        x = torch.sigmoid(z)
        conf = model(x).softmax(1).gather(1, classes[:, None]).squeeze(1)
    return x.detach(), conf, taken


@torch.no_grad()
def predict(model: Model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
