"""Linear probes trained to convergence: full-batch L-BFGS logistic regression, L2 chosen on validation.

Single-label data (``y (N,)`` class indices) gets multinomial logistic regression scored by accuracy; multi-label
data (``y (N, C)`` targets of :mod:`cnnlab.multilabel`) one-vs-rest logistic regressions, one per class, fit
together (one weight matrix, one L2) and scored by mAP.

Kolesnikov et al. (2019) found SGD linear probes still improving after hundreds of epochs; on cached
features a full-batch second-order-ish method reaches the optimum of the convex problem in a few hundred
iterations, so the probe's score depends on the features and the chosen regularization, not on a schedule.

The features are standardized with the training split's mean and std only. The standardized copy is kept
in float32 while it fits in ``max_bytes`` and in float16 beyond (49k x 9,216 features are 1.8 GB in float32);
either way the matrix products run over row chunks converted to float32, and the gradient is written by
hand, so no autograd graph holds a second copy of the features.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from cnnlab.multilabel import masked_bce, mean_average_precision

# on train-standardized CIFAR features of 2k-9k dims the validation optimum sat at 0.1-1 (docs/benchmarks.md);
# below 1e-3 the fits only interpolate the training set
DEFAULT_WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
# rows per matrix product: a 512 x 9,216 float32 chunk stays in cache between the forward and the gradient product
_CHUNK = 512


def as_tensor(x) -> torch.Tensor:
    """A numpy array (a memory map included) or a tensor -> a CPU tensor, without a copy where possible."""
    if isinstance(x, torch.Tensor):
        return x
    x = np.ascontiguousarray(x)
    with warnings.catch_warnings():  # a read-only memory map: the probes only ever read it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


@dataclass
class Standardizer:
    """``(x - mean) / std`` with the statistics of the training features (``(D,)`` each, float32)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, chunk_size: int = _CHUNK) -> "Standardizer":
        """Mean and std of ``x (N, D)`` accumulated in float64 over row chunks; constant features get std 1."""
        n, d = x.shape
        s = torch.zeros(d, dtype=torch.float64)
        ss = torch.zeros(d, dtype=torch.float64)
        for i in range(0, n, chunk_size):
            c = x[i:i + chunk_size].double()
            s += c.sum(0)
            ss += (c * c).sum(0)
        mean = s / max(1, n)
        var = (ss / max(1, n) - mean * mean).clamp_min(0)
        std = var.sqrt()
        std = torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))  # dead units: left at 0
        return cls(mean.float(), std.float())

    def apply(self, x: torch.Tensor, dtype: torch.dtype = torch.float32, device="cpu", chunk_size: int = _CHUNK) -> torch.Tensor:
        """``(N, D)`` -> standardized ``(N, D)`` in ``dtype`` on ``device``, converted chunk by chunk."""
        mean, std = self.mean.to(device), self.std.to(device)
        out = torch.empty(x.shape, dtype=dtype, device=device)
        for i in range(0, len(x), chunk_size):
            out[i:i + chunk_size] = ((x[i:i + chunk_size].to(device).float() - mean) / std).to(dtype)
        return out


def chunked_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk_size: int = _CHUNK) -> torch.Tensor:
    """``x (N, D)`` (any float dtype) @ ``weight (D, C)`` + ``bias (C,)`` -> ``(N, C)`` float32."""
    return torch.cat([x[i:i + chunk_size].to(weight.dtype) @ weight + bias for i in range(0, len(x), chunk_size)]) if len(x) else \
        torch.empty(0, weight.shape[1], device=weight.device)


def _chunked_loss_and_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_decay: float, chunk_size: int,
                           per_chunk) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss + ``weight_decay / 2 * ||weight||^2`` and its gradients for a linear map, over ``x (N, D)`` in
    chunks (bounded memory); ``per_chunk(logits (n, C), start)`` gives the chunk's summed loss and dloss/dlogits."""
    n = len(x)
    gw = torch.zeros_like(weight)
    gb = torch.zeros_like(bias)
    total = 0.0
    for i in range(0, n, chunk_size):
        xc = x[i:i + chunk_size].to(weight.dtype)
        loss_sum, r = per_chunk(xc @ weight + bias, i)
        total += loss_sum
        gw.addmm_(xc.T, r)
        gb += r.sum(0)
    gw.div_(n).add_(weight, alpha=weight_decay)
    gb.div_(n)
    return total / n + 0.5 * weight_decay * float((weight * weight).sum(dtype=torch.float64)), gw, gb


def softmax_loss_and_grad(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_decay: float,
                          chunk_size: int = _CHUNK) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy + ``weight_decay / 2 * ||weight||^2`` (the bias is not decayed) and its gradients.

    ``x (N, D)``, ``y (N,)`` long, ``weight (D, C)``, ``bias (C,)``. Returns ``(loss, dW (D, C), db (C,))``.
    """
    def per_chunk(logits: torch.Tensor, i: int):
        logp = torch.log_softmax(logits, dim=1)
        yc = y[i:i + len(logits)]
        loss_sum = -float(logp.gather(1, yc[:, None]).sum(dtype=torch.float64))
        r = logp.exp_()
        r[torch.arange(len(yc), device=r.device), yc] -= 1.0  # softmax - one-hot
        return loss_sum, r

    return _chunked_loss_and_grad(x, weight, bias, weight_decay, chunk_size, per_chunk)


def sigmoid_loss_and_grad(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_decay: float,
                          chunk_size: int = _CHUNK) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The one-vs-rest logistic loss (:func:`cnnlab.multilabel.masked_bce`: summed over classes, averaged over images,
    ignored targets left out) + ``weight_decay / 2 * ||weight||^2`` and its gradients, as :func:`softmax_loss_and_grad`.

    ``x (N, D)``, ``y (N, C)`` long in {0, 1, -1}, ``weight (D, C)``, ``bias (C,)``. Returns ``(loss, dW (D, C), db (C,))``.
    """
    def per_chunk(logits: torch.Tensor, i: int):
        yc = y[i:i + len(logits)]
        r = (torch.sigmoid(logits) - yc.clamp_min(0).to(logits.dtype)) * (yc >= 0).to(logits.dtype)
        return float(masked_bce(logits, yc)) * len(yc), r

    return _chunked_loss_and_grad(x, weight, bias, weight_decay, chunk_size, per_chunk)


def probe_score(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``logits (N, C)`` for class indices ``y (N,)``; mAP for multi-label targets ``y (N, C)``."""
    if not len(y):
        return float("nan")
    if y.ndim == 2:
        return mean_average_precision(logits, y)
    return float((logits.argmax(1).cpu() == y.cpu()).float().mean())


def at_grid_edge(chosen: float, grid) -> bool:
    """True when ``chosen`` is the smallest or largest of a grid of two or more values: the optimum may lie outside it."""
    values = sorted({float(g) for g in grid})
    return len(values) > 1 and float(chosen) in (values[0], values[-1])


@dataclass
class ProbeFit:
    """The chosen probe: standardization, weights and how it was chosen.

    ``grid``: validation score (accuracy, or mAP for multi-label targets) per weight decay, ``val_acc`` the chosen
    one's; ``iterations`` / ``converged``: of the chosen fit (converged: L-BFGS stopped on its gradient or loss-change tolerance before ``max_iter``);
    ``fits``: per weight decay, iterations, convergence, final loss and gradient max-norm.
    """

    weight_decay: float
    val_acc: float
    grid: dict[float, float]
    iterations: int
    converged: bool
    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor = field(repr=False)
    standardizer: Standardizer = field(repr=False)
    fits: dict[float, dict] = field(default_factory=dict, repr=False)

    @property
    def at_grid_edge(self) -> bool:
        """True when the chosen weight decay is the smallest or largest tried (the grid may be too narrow)."""
        return at_grid_edge(self.weight_decay, list(self.grid))

    def logits(self, x) -> torch.Tensor:
        """Raw (unstandardized) features ``(N, D)`` -> ``(N, C)`` float32 logits (on the probe's device)."""
        x = as_tensor(x)
        dev = self.weight.device
        return torch.cat([self.standardizer.apply(x[i:i + _CHUNK], device=dev) @ self.weight + self.bias
                          for i in range(0, len(x), _CHUNK)]) if len(x) else torch.empty(0, self.weight.shape[1], device=dev)

    def predict(self, x) -> torch.Tensor:
        return self.logits(x).argmax(1).cpu()

    def accuracy(self, x, y) -> float:
        y = as_tensor(y).long().cpu()
        return float((self.predict(x) == y).float().mean()) if len(y) else float("nan")

    def score(self, x, y) -> float:
        """What the probe was chosen by, on other data: accuracy, or mAP for multi-label targets ``y (N, C)``."""
        return probe_score(self.logits(x).cpu(), as_tensor(y).long().cpu())


def _lbfgs(x, y, weight, bias, weight_decay, max_iter, tolerance_grad, tolerance_change, chunk_size=_CHUNK, history_size=20,
           loss_and_grad=softmax_loss_and_grad) -> dict:
    """Minimize ``loss_and_grad`` (:func:`softmax_loss_and_grad` or :func:`sigmoid_loss_and_grad`) in place over ``weight`` and ``bias`` with torch's L-BFGS.

    Stops when the gradient's max-norm is at most ``tolerance_grad``, the loss changes by less than
    ``tolerance_change`` between iterations, or after ``max_iter`` iterations (then not converged).
    """
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=max_iter * 2, history_size=history_size,
                            tolerance_grad=tolerance_grad, tolerance_change=tolerance_change, line_search_fn="strong_wolfe")
    last = {}

    def closure():
        with torch.no_grad():
            loss, gw, gb = loss_and_grad(x, y, weight, bias, weight_decay, chunk_size)
        weight.grad, bias.grad = gw, gb
        last["loss"] = loss
        last["grad"] = max(float(gw.abs().max()), float(gb.abs().max()))
        return torch.tensor(loss, dtype=torch.float64)

    opt.step(closure)
    state = opt.state[opt._params[0]]
    iters, evals = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    weight.grad = bias.grad = None
    return {"iterations": iters, "evaluations": evals, "converged": iters < max_iter and evals < max_iter * 2,
            "loss": last.get("loss", math.nan), "grad_max": last.get("grad", math.nan)}


def fit_linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    num_classes: int,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 200,
    device: str | torch.device = "cpu",
    rtol_grad: float = 1e-2,
    tolerance_change: float = 1e-6,
    max_bytes: int = 2**30,
) -> ProbeFit:
    """Multinomial logistic regression per weight decay on train-standardized features; the best *val* accuracy wins
    (multi-label targets: one-vs-rest logistic regressions and the best val mAP, :func:`sigmoid_loss_and_grad`).

    ``train_x (N, D)`` / ``val_x (M, D)``: float features (tensors or numpy arrays, memory maps included);
    ``train_y (N,)`` / ``val_y (M,)``: class indices, or ``(N, C)`` / ``(M, C)`` multi-label targets
    (:mod:`cnnlab.multilabel`). The loss is the mean cross-entropy plus
    ``wd / 2 * ||W||^2`` (bias not decayed). The fits run from the largest weight decay to the smallest,
    each warm-started from the previous solution, at most ``max_iter`` L-BFGS iterations each; a fit has
    converged when the gradient's max-norm fell to ``rtol_grad`` times its value at zero weights, or the
    loss changed by less than ``tolerance_change`` in an iteration.
    Ties in validation accuracy go to the larger weight decay. Deterministic given its inputs.
    """
    if not weight_decays:
        raise ValueError("weight_decays is empty: give at least one weight decay")
    device = torch.device(device)
    tx, vx = as_tensor(train_x), as_tensor(val_x)
    ty, vy = as_tensor(train_y).long().to(device), as_tensor(val_y).long().cpu()
    n, d = tx.shape
    loss_and_grad = sigmoid_loss_and_grad if ty.ndim == 2 else softmax_loss_and_grad
    std = Standardizer.fit(tx)
    dtype = torch.float32 if n * d * 4 <= max_bytes or device.type == "cuda" else torch.float16
    xs = std.apply(tx, dtype=dtype, device=device)
    xv = std.apply(vx, dtype=dtype, device=device)
    weight = torch.zeros(d, num_classes, device=device)
    bias = torch.zeros(num_classes, device=device)
    chunk = _CHUNK if device.type == "cpu" else 1 << 16
    _, g0w, g0b = loss_and_grad(xs, ty, weight, bias, 0.0, chunk)
    tolerance_grad = rtol_grad * max(float(g0w.abs().max()), float(g0b.abs().max()), 1e-12)
    fits: dict[float, dict] = {}
    params: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for wd in sorted({float(w) for w in weight_decays}, reverse=True):
        info = _lbfgs(xs, ty, weight, bias, wd, max_iter, tolerance_grad, tolerance_change, chunk, loss_and_grad=loss_and_grad)
        with torch.no_grad():
            info["val_acc"] = probe_score(chunked_logits(xv, weight, bias, chunk).cpu(), vy)
        fits[wd] = info
        params[wd] = (weight.detach().clone(), bias.detach().clone())
    grid = {wd: fits[wd]["val_acc"] for wd in sorted(fits)}
    best = max(sorted(grid, reverse=True), key=lambda w: grid[w])  # max keeps the first of equals: the larger wd
    w, b = params[best]
    return ProbeFit(weight_decay=best, val_acc=grid[best], grid=grid, iterations=fits[best]["iterations"],
                    converged=fits[best]["converged"], weight=w, bias=b,
                    standardizer=Standardizer(std.mean.to(device), std.std.to(device)), fits=fits)
