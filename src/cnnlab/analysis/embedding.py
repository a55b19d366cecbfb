"""Feature embeddings: t-SNE of (pooled) tap features, a class-coloured scatter, an image mosaic, nearest neighbours."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import UserError


def tsne_embed(features: torch.Tensor, perplexity: float = 30.0, pca_dims: int | None = 50, seed: int = 0,
               max_iter: int = 1000, n_jobs: int | None = None) -> np.ndarray:
    """``(N, D)`` features -> ``(N, 2)`` t-SNE coordinates (scikit-learn, Barnes-Hut).

    Features are standardized and reduced by PCA to ``pca_dims`` first: the usual practice, and it makes
    the neighbour search cheap for wide taps.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features.float().cpu().numpy()
    n = len(x)
    if n < 5:
        raise UserError(f"t-SNE needs at least 5 images, got {n}: use a larger split or raise the image limit")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if pca_dims and x.shape[1] > pca_dims:
        x = PCA(n_components=min(pca_dims, n), random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (n - 1) / 3)  # sklearn requires perplexity < n
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                max_iter=max_iter, n_jobs=n_jobs)
    return tsne.fit_transform(x.astype(np.float32))


def neighbour_purity(embedding: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Fraction of each point's ``k`` nearest embedded neighbours that share its label (1.0 = clusters kept apart)."""
    from sklearn.neighbors import NearestNeighbors

    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(embedding)
    _, idx = nn_.kneighbors(embedding)
    return float((labels[idx[:, 1:]] == labels[:, None]).mean())


def nearest_neighbours(features: torch.Tensor, queries: torch.Tensor, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest neighbours: ``features (N, D)``, ``queries (Q, D)`` -> ``(indices (Q, k), similarities (Q, k))``.

    A query that is itself in ``features`` finds itself first (similarity 1).
    """
    f = F.normalize(features.float(), dim=1)
    q = F.normalize(queries.float(), dim=1)
    sims = q @ f.T
    top = sims.topk(min(k, len(f)), dim=1)
    return top.indices, top.values


def scatter_figure(embedding: np.ndarray, labels: np.ndarray, classes: list[str], title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k in np.unique(labels):
        m = labels == k
        name = classes[k] if k < len(classes) else str(k)
        ax.scatter(embedding[m, 0], embedding[m, 1], s=3, color=cmap(int(k) % cmap.N), label=name, alpha=0.7, linewidths=0)
    ax.legend(markerscale=4, fontsize=7, loc="best", frameon=False)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def mosaic(embedding: np.ndarray, images: torch.Tensor, grid: int = 24, tile: int = 32) -> torch.Tensor:
    """Images placed at their embedded positions: a ``grid x grid`` lattice, one image per occupied cell.

    ``images``: ``(N, 3, H, W)`` uint8 or float in [0, 1]. Returns ``(3, grid * tile, grid * tile)`` in [0, 1]
    (white where no image landed). Each cell shows the image closest to the cell centre; the 1% most
    extreme coordinates on each axis are clipped to the border cells.
    """
    if len(images) != len(embedding):
        raise UserError(f"mosaic got {len(images)} images for {len(embedding)} embedded points")
    # robust range: a few t-SNE outliers must not squeeze everything else into a corner
    lo, hi = np.percentile(embedding, 1, axis=0), np.percentile(embedding, 99, axis=0)
    e = (np.clip(embedding, lo, hi) - lo) / np.maximum(hi - lo, 1e-12) * (grid - 1e-6)
    cell = np.floor(e).astype(int)
    dist = np.linalg.norm(e - (cell + 0.5), axis=1)
    canvas = torch.ones(3, grid * tile, grid * tile)
    best: dict[tuple[int, int], int] = {}
    for n in np.argsort(dist):
        key = (int(cell[n, 1]), int(cell[n, 0]))
        best.setdefault(key, int(n))
    for (r, c), n in best.items():
        img = images[n].float()
        img = img / 255 if images.dtype == torch.uint8 else img
        img = F.interpolate(img[None], size=(tile, tile), mode="bilinear", align_corners=False, antialias=True)[0]
        # rows grow downwards in the image but upwards in the scatter: flip so both read the same way
        canvas[:, (grid - 1 - r) * tile:(grid - r) * tile, c * tile:(c + 1) * tile] = img.clamp(0, 1)
    return canvas
