"""Colour targets: hue/chroma histogram bins and quantized Lab ab bins with soft encoding and
class rebalancing. Pure tensor functions; shapes are in the docstrings.

Two target families (chosen by ``model.targets``):

* ``hue_chroma`` (hypercolumn colorization): 32 uniform bins of HSV hue in [0, 1) and 32 uniform
  bins of chroma = max(RGB) - min(RGB) in [0, 1]; the hue loss is weighted by ground-truth chroma
  because hue is meaningless for gray pixels.
* ``lab_bins`` (colourful colorization): the in-gamut cells of a grid of step 10 over the ab plane,
  targets soft-encoded over the nearest bins with Gaussian weights, losses rebalanced by the
  smoothed empirical prior of the training data.
"""

from __future__ import annotations

import functools

import kornia.color as KC
import torch
import torch.nn.functional as F

#: images whose every pixel has |ab| <= this are "gray" and get zero weight (they carry no colour)
GRAY_AB_THRESHOLD = 5.0


# --------------------------------------------------------------------------------- hue / chroma
def uniform_bin(values: torch.Tensor, n_bins: int, circular: bool = False) -> torch.Tensor:
    """Values in [0, 1] ``(...)`` -> bin indices ``(...)`` long in ``[0, n_bins)`` of ``n_bins`` uniform bins.

    Circular (hue): 1.0 wraps to bin 0; otherwise 1.0 lands in the last bin.
    """
    if circular:
        values = values.remainder(1.0)
    return (values * n_bins).floor().long().clamp_(0, n_bins - 1)


def bin_centers(n_bins: int, device=None) -> torch.Tensor:
    """``(n_bins,)`` centres of uniform bins on [0, 1]."""
    return (torch.arange(n_bins, device=device, dtype=torch.float32) + 0.5) / n_bins


def hue_chroma_loss(hue_logits: torch.Tensor, chroma_logits: torch.Tensor, hue: torch.Tensor, chroma: torch.Tensor,
                    weight: torch.Tensor | None = None, hue_weight: float = 5.0) -> torch.Tensor:
    """Cross-entropy of the two histograms, the hue term scaled by ``hue_weight * chroma``.

    Logits ``(N, n_hue)`` / ``(N, n_chroma)``; targets ``hue``, ``chroma`` ``(N,)`` in [0, 1];
    ``weight`` ``(N,)`` per-pixel weights (0 for pixels of all-gray images). Returns a scalar:
    the weighted mean over pixels.
    """
    hue_bins = uniform_bin(hue, hue_logits.shape[1], circular=True)
    chroma_bins = uniform_bin(chroma, chroma_logits.shape[1])
    ce_c = F.cross_entropy(chroma_logits, chroma_bins, reduction="none")
    ce_h = F.cross_entropy(hue_logits, hue_bins, reduction="none")
    per_pixel = ce_c + hue_weight * chroma * ce_h
    if weight is None:
        return per_pixel.mean()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


def decode_chroma_median(probs: torch.Tensor) -> torch.Tensor:
    """Median of a chroma histogram ``(..., n_bins)`` over [0, 1] -> ``(...)``.

    The CDF is interpolated linearly inside the bin where it crosses 0.5 (a continuous median).
    """
    n = probs.shape[-1]
    cdf = probs.cumsum(-1)
    idx = (cdf < 0.5).sum(-1, keepdim=True).clamp_(max=n - 1)
    before = torch.where(idx > 0, cdf.gather(-1, (idx - 1).clamp_min(0)), torch.zeros_like(idx, dtype=cdf.dtype))
    mass = probs.gather(-1, idx).clamp_min(1e-8)
    frac = ((0.5 - before) / mass).clamp(0.0, 1.0)
    return ((idx.to(probs.dtype) + frac) / n).squeeze(-1)


def hue_mean_resultant(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hue histogram ``(..., n_bins)`` -> (circular mean hue ``(...)`` in [0, 1), mean resultant length ``(...)`` in [0, 1]).

    The resultant length is |E[exp(2 pi i hue)]|: 1 for a certain hue, 0 for a uniform histogram.
    """
    angles = 2 * torch.pi * bin_centers(probs.shape[-1], probs.device)
    x = (probs * angles.cos()).sum(-1)
    y = (probs * angles.sin()).sum(-1)
    return (torch.atan2(y, x) / (2 * torch.pi)).remainder(1.0), torch.hypot(x, y).clamp(max=1.0)


def decode_hue_circular_mean(probs: torch.Tensor) -> torch.Tensor:
    """Circular (complex) mean of a hue histogram ``(..., n_bins)`` -> hue ``(...)`` in [0, 1)."""
    return hue_mean_resultant(probs)[0]


def hue_chroma_to_rgb(hue: torch.Tensor, chroma: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """Rebuild RGB from hue ``(B, H, W)``, chroma ``(B, H, W)`` and intensity = mean(RGB) ``(B, 1, H, W)``.

    The hexcone colour of that hue and chroma (min channel 0) is shifted so its mean matches the
    intensity, then clipped to [0, 1]. Returns ``(B, 3, H, W)``.
    """
    h6 = hue.remainder(1.0) * 6.0
    # distance of each channel's hue from the hue in sextants: R at 0, G at 2, B at 4
    offsets = torch.tensor([0.0, 2.0, 4.0], device=hue.device).view(1, 3, 1, 1)
    d = (h6.unsqueeze(1) - offsets).remainder(6.0)
    d = torch.minimum(d, 6.0 - d)
    base = (2.0 - d).clamp(0.0, 1.0) * chroma.unsqueeze(1)  # in [0, chroma], max channel = chroma
    return (base - base.mean(1, keepdim=True) + gray).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------- Lab ab bins
def _srgb_samples(n: int) -> torch.Tensor:
    """RGB colours ``(3, M)``: an ``n x n`` lattice on each of the six faces of the sRGB cube and an
    ``n/8``-step lattice inside it. The ab footprint of the gamut is reached at the cube's surface, so
    dense faces find every boundary cell (a coarse ``n^3`` lattice misses a few)."""
    v = torch.linspace(0.0, 1.0, n, dtype=torch.float32)
    u, w = (t.reshape(-1) for t in torch.meshgrid(v, v, indexing="ij"))
    faces = []
    for channel in range(3):
        for value in (0.0, 1.0):
            face = torch.empty(3, u.numel(), dtype=torch.float32)
            face[channel] = value
            others = [c for c in range(3) if c != channel]
            face[others[0]], face[others[1]] = u, w
            faces.append(face)
    inner = torch.linspace(0.0, 1.0, max(2, n // 8), dtype=torch.float32)
    cube = torch.stack(torch.meshgrid(inner, inner, inner, indexing="ij")).reshape(3, -1)
    return torch.cat([*faces, cube], 1)


@functools.lru_cache(maxsize=4)
def _ab_bins_cpu(grid: int, samples: int) -> torch.Tensor:
    ab = KC.rgb_to_lab(_srgb_samples(samples).reshape(1, 3, -1, 1))[0, 1:, :, 0] / grid
    span = int(torch.ceil(ab.abs().max()).item()) + 1
    reached = torch.zeros(2 * span + 1, 2 * span + 1, dtype=torch.bool)
    # a grid point is in gamut when an sRGB colour lies within one grid step of it (in a and in b):
    # every colour then has in-gamut bins on all sides for the soft encoding
    for fa in (torch.floor, torch.ceil):
        for fb in (torch.floor, torch.ceil):
            reached[fa(ab[0]).long() + span, fb(ab[1]).long() + span] = True
    cells = reached.nonzero() - span  # row-major: sorted by a, then b
    return cells.float() * grid


def ab_bin_centers(grid: int = 10, samples: int = 256, device=None) -> torch.Tensor:
    """``(Q, 2)`` ab centres of the in-gamut cells of a ``grid``-step lattice (Q = 309 for grid 10).

    A lattice point is kept when some sRGB colour lies within one step of it in a and in b, found
    from ``samples^2`` colours on each face of the sRGB cube (once per process). Colourful
    colorization's published set has 313 bins; its exact derivation is not given, and no rule
    tried here (nearest cell, cells within a radius, cells reached by a dense sRGB cube) yields
    313, so the bins are the ones this rule gives on the exact sRGB gamut (docs/results.md).
    """
    return _ab_bins_cpu(int(grid), int(samples)).to(device)


def nearest_bin(ab: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """ab ``(N, 2)`` -> index ``(N,)`` of the nearest centre in ``centers (Q, 2)``."""
    return torch.cdist(ab, centers).argmin(-1)


def inverse_prior_weights(ab: torch.Tensor, prior: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """True ab ``(B, 2, H, W)`` -> ``(B, H, W)``: 1 / prior ``(Q,)`` of each pixel's nearest bin (rebalanced AuC)."""
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    return (1.0 / prior[nearest_bin(flat, centers)].clamp_min(1e-6)).reshape(ab.shape[0], *ab.shape[-2:])


def soft_encode(ab: torch.Tensor, centers: torch.Tensor, neighbours: int = 10, sigma: float = 5.0) -> torch.Tensor:
    """ab ``(N, 2)`` -> soft targets ``(N, Q)``: Gaussian weights on the ``neighbours`` nearest bins, summing to 1."""
    d2 = torch.cdist(ab, centers).square()
    k = min(neighbours, centers.shape[0])
    near_d2, near_idx = d2.topk(k, dim=-1, largest=False)
    # subtract the smallest distance before exp: same normalized weights, no underflow far outside the gamut
    w = torch.exp(-(near_d2 - near_d2[:, :1]) / (2 * sigma**2))
    w = w / w.sum(-1, keepdim=True)
    return torch.zeros_like(d2).scatter_(-1, near_idx, w)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multinomial cross-entropy of logits ``(N, Q)`` against soft targets ``(N, Q)``, weighted mean over ``(N,)``."""
    per_pixel = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    if weight is None:
        return per_pixel.mean()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-8)


def smooth_prior(counts: torch.Tensor, centers: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Bin counts ``(Q,)`` -> prior ``(Q,)`` (sums to 1) smoothed with a Gaussian of ``sigma`` in ab units."""
    p = counts.double() / counts.sum().clamp_min(1)
    kernel = torch.exp(-torch.cdist(centers.double(), centers.double()).square() / (2 * sigma**2))
    kernel = kernel / kernel.sum(0, keepdim=True)  # each bin spreads exactly its own mass
    smoothed = kernel @ p
    return (smoothed / smoothed.sum()).float()


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Prior ``(Q,)`` -> class weights ``(Q,)`` proportional to ``((1 - lam) p + lam / Q)^-1``, with E_p[w] = 1."""
    q = prior.shape[0]
    w = 1.0 / ((1.0 - lam) * prior + lam / q)
    return w / (prior * w).sum()


def image_has_colour(ab: torch.Tensor, threshold: float = GRAY_AB_THRESHOLD) -> torch.Tensor:
    """ab ``(B, 2, H, W)`` -> ``(B,)`` bool: some pixel has |ab| above ``threshold``."""
    return ab.abs().flatten(1).amax(1) > threshold


def pixel_weights(ab: torch.Tensor, centers: torch.Tensor, class_weights: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Rebalancing weight per pixel: ab ``(N, 2)``, ``colour`` ``(N,)`` bool (False: all-gray image) -> ``(N,)``.

    Each pixel takes the weight of its most likely (nearest) bin; pixels of all-gray images get 0.
    """
    return class_weights[nearest_bin(ab, centers)] * colour.to(class_weights.dtype)


def accumulate_ab_counts(lab: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lab images ``(B, 3, H, W)`` -> (bin counts ``(Q,)`` double, sum of ab ``(2,)`` double, pixel count)."""
    ab = lab[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
    counts = torch.bincount(nearest_bin(ab, centers), minlength=centers.shape[0]).double()
    return counts, ab.double().sum(0), ab.shape[0]
