"""Adversarial and fooling images as pure functions.

``model`` maps images ``(B, C, H, W)`` in [0, 1] to class scores ``(B, K)`` and does any normalization itself.
Usually it is a ``cnnlab.subject.Subject`` (RGB in, colour conversion in its forward path: the attack then perturbs
the RGB image). A cnnlab ``Classifier`` can also be attacked in its own input space, the data module's output
(``dm.preprocess``; one channel, Lab L / 100, for a ``data.color_space=L`` classifier), since cnnlab backbones
normalize their own input: the attack then perturbs what the network sees, and ``eps`` is in those units. Nothing
here depends on the channel count. Every returned image is in [0, 1]; L-infinity attacks stay within ``eps`` of
the original. Gradients are taken with respect to the
images only (``torch.autograd.grad``): the model's parameters never accumulate gradients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from cnnlab.errors import UserError
from cnnlab.stats import wilson_interval

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


def project_linf(adv: torch.Tensor, images: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Into the eps-ball around ``images`` and the pixel range (``eps``: a number or ``(B, 1, 1, 1)``)."""
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0)


def _per_image_eps(eps: float | torch.Tensor, images: torch.Tensor, name: str = "eps") -> torch.Tensor:
    """A number or ``(B,)`` -> ``(B, 1, 1, 1)`` on the images' device, every entry checked to lie in (0, 1]."""
    if not isinstance(eps, torch.Tensor):
        return torch.full((images.shape[0], 1, 1, 1), check_eps(eps, name), dtype=images.dtype, device=images.device)
    eps = eps.detach().to(images.device, images.dtype).flatten()
    if eps.numel() == 1:
        eps = eps.expand(images.shape[0])
    if eps.numel() != images.shape[0] or not bool(((eps > 0) & (eps <= 1)).all()):
        raise UserError(f"{name} must hold one value in (0, 1] per image, got {eps.numel()} values for {images.shape[0]} images")
    return eps.view(-1, 1, 1, 1)


def fooled(model: Model, adv: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """``(B,)`` bool: the attack succeeded (untargeted: not the true class; targeted: the target class)."""
    with torch.no_grad():
        pred = model(adv).argmax(1)
    return pred == labels if targeted else pred != labels


def _pgd_once(model: Model, images: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor, step_size: torch.Tensor,
              steps: int, random_start: bool, targeted: bool, generator: torch.Generator | None) -> torch.Tensor:
    adv = images.clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device) * 2 - 1
        adv = project_linf(images + eps * noise, images, eps)
    for _ in range(int(steps)):
        g = _input_grad(model, adv, labels, targeted)
        adv = project_linf(adv + step_size * g.sign(), images, eps).detach()
    return adv


def pgd(model: Model, images: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, step_size: float | None = None,
        steps: int = 10, random_start: bool = True, targeted: bool = False, generator: torch.Generator | None = None,
        restarts: int = 1) -> torch.Tensor:
    """Iterative FGSM / PGD in L-infinity (Madry et al.): sign steps projected back into the eps-ball.

    ``eps``: a number or one value per image ``(B,)``. ``step_size`` defaults to ``eps / 4`` (2/255 at
    eps 8/255); ``random_start`` begins at a uniform point of the ball. One step with ``step_size=eps``
    and no random start is FGSM. ``restarts``: independent random starts, each run only on the images
    no earlier start fooled; per image the first success is kept (the worst case over restarts), so the
    first start is exactly the one-start attack and more restarts are never weaker.
    """
    images = images.detach()
    eps_t = _per_image_eps(eps, images)
    step_t = eps_t / 4 if step_size is None else _per_image_eps(step_size, images, "step_size")
    if int(restarts) < 1:
        raise UserError(f"restarts must be >= 1, got {restarts}")
    if not random_start:
        restarts = 1  # every start would be the same point
    adv = _pgd_once(model, images, labels, eps_t, step_t, steps, random_start, targeted, generator)
    todo = ~fooled(model, adv, labels, targeted)
    for _ in range(int(restarts) - 1):
        if not bool(todo.any()):
            break
        i = todo.nonzero().flatten()
        again = _pgd_once(model, images[i], labels[i], eps_t[i], step_t[i], steps, True, targeted, generator)
        adv[i] = again
        todo[i] = ~fooled(model, again, labels[i], targeted)
    return adv


def robustness_curve(model: Model, images: torch.Tensor, labels: torch.Tensor, eps: Sequence[float], attacks: Sequence[str] = ("fgsm", "pgd"),
                     steps: int = 10, restarts: int = 1, batch_size: int = 100, generator: torch.Generator | None = None,
                     cumulative: bool = True, progress: bool = False) -> dict[str, torch.Tensor]:
    """Which points stay correct under each attack at each eps (L-infinity, untargeted).

    Returns ``attack -> (N, 1 + len(eps))`` bool, column 0 the clean decision. ``pgd`` uses ``steps`` steps
    of ``eps / 4`` from a random start with ``restarts`` starts; ``fgsm`` one step of ``eps``. With
    ``cumulative`` a point fooled at some eps counts as fooled at every larger one (that adversarial lies
    in the larger ball too), so each curve is the worst case over the smaller balls and never increases.
    """
    eps = sorted(check_eps(e) for e in eps)
    unknown = sorted(set(attacks) - {"fgsm", "pgd"})
    if unknown:
        raise UserError(f"unknown attack(s) {unknown}: choose from fgsm, pgd")
    chunks = list(range(0, len(images), int(batch_size)))
    if progress:
        from cnnlab.io.progress import progress as show_progress

        chunks = show_progress(chunks, f"attacks at {len(eps)} eps")
    parts: dict[str, list[torch.Tensor]] = {a: [] for a in attacks}
    for start in chunks:
        x, y = images[start:start + int(batch_size)], labels[start:start + int(batch_size)]
        clean = ~fooled(model, x, y)
        for a in attacks:
            cols = [clean]
            for e in eps:
                adv = fgsm(model, x, y, e) if a == "fgsm" else pgd(model, x, y, e, None, steps, generator=generator, restarts=restarts)
                cols.append(clean & ~fooled(model, adv, y))
            parts[a].append(torch.stack(cols, 1))
    out = {a: torch.cat(p) for a, p in parts.items()}
    if cumulative:
        out = {a: c.cummin(1).values if c.numel() else c for a, c in out.items()}
    return out


def minimal_linf(model: Model, images: torch.Tensor, labels: torch.Tensor, eps_max: float = 16 / 255, search_steps: int = 6,
                 steps: int = 10, restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B,)`` the smallest L-infinity radius at which PGD fools each image, by bisection over eps per image.

    0 for an image already misclassified, ``inf`` when PGD at ``eps_max`` does not fool it; otherwise a
    radius (within ``eps_max / 2**search_steps`` of the smallest one PGD finds) at which an adversarial
    example was found. Every probe is a PGD of ``steps`` steps of ``eps / 4`` with ``restarts`` starts.
    """
    eps_max = check_eps(eps_max, "eps_max")
    images = images.detach()
    b = images.shape[0]
    wrong = fooled(model, images, labels)
    hi = torch.full((b,), float("inf"), device=images.device)
    hi[wrong] = 0.0
    todo = (~wrong).nonzero().flatten()
    if len(todo):
        ok = fooled(model, pgd(model, images[todo], labels[todo], eps_max, None, steps, generator=generator, restarts=restarts), labels[todo])
        todo = todo[ok]
        hi[todo] = eps_max
    lo = torch.zeros(b, device=images.device)
    for _ in range(int(search_steps)):
        if not len(todo):
            break
        mid = (lo[todo] + hi[todo]) / 2
        ok = fooled(model, pgd(model, images[todo], labels[todo], mid, None, steps, generator=generator, restarts=restarts), labels[todo])
        hi[todo[ok]] = mid[ok]
        lo[todo[~ok]] = mid[~ok]
    return hi


def curve_summary(curves: dict[str, torch.Tensor], eps: Sequence[float]) -> list[dict]:
    """One row per (attack, eps): robust accuracy, its 95% Wilson interval and n (eps 0 = clean)."""
    eps = [0.0, *sorted(float(e) for e in eps)]
    rows = []
    for attack, correct in curves.items():
        n = correct.shape[0]
        for j, e in enumerate(eps):
            k = int(correct[:, j].sum())
            lo, hi = wilson_interval(k, n)
            rows.append({"attack": attack, "eps": e, "eps_255": round(e * 255, 3), "accuracy": k / n if n else float("nan"),
                         "ci_low": lo, "ci_high": hi, "n": n})
    return rows


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
