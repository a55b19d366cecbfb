"""Weighted cosine k-nearest-neighbour accuracy on frozen features (Wu et al. 2018), a tuning-free score.

Every query's k most similar training features (cosine similarity of L2-normalized vectors) vote for
their class with weight ``exp(sim / T)``. lightly uses k = 200, T = 0.1 (the defaults here), solo-learn
k = 20, T = 0.07. Queries and the bank are processed in chunks, so the similarity matrix is never
``(M, N)`` at once and a float16 or memory-mapped bank is converted a chunk at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlab.probes.linear import as_tensor


def _normalized(x: torch.Tensor, device) -> torch.Tensor:
    return F.normalize(x.to(device).float(), dim=1)


def knn_predict(bank, bank_labels, queries, num_classes: int, k: int = 200, temperature: float = 0.1,
                chunk_size: int = 1024, bank_chunk_size: int = 16384, device: str | torch.device = "cpu") -> torch.Tensor:
    """``bank (N, D)``, ``bank_labels (N,)``, ``queries (M, D)`` -> predicted classes ``(M,)`` long (CPU).

    ``k`` is capped at N. Ties between classes go to the lower class index.
    """
    bank, queries = as_tensor(bank), as_tensor(queries)
    labels = as_tensor(bank_labels).long().to(device)
    n = len(bank)
    if n == 0:
        raise ValueError("the kNN bank is empty")
    k = min(int(k), n)
    out = []
    for i in range(0, len(queries), chunk_size):
        q = _normalized(queries[i:i + chunk_size], device)
        best_sim = best_idx = None
        for j in range(0, n, bank_chunk_size):
            sim = q @ _normalized(bank[j:j + bank_chunk_size], device).T
            s, idx = sim.topk(min(k, sim.shape[1]), dim=1)
            idx += j
            if best_sim is not None:
                both = torch.cat([best_sim, s], 1)
                s, pick = both.topk(min(k, both.shape[1]), dim=1)
                idx = torch.cat([best_idx, idx], 1).gather(1, pick)
            best_sim, best_idx = s, idx
        votes = torch.zeros(len(q), num_classes, device=device)
        votes.scatter_add_(1, labels[best_idx], (best_sim / temperature).exp())
        out.append(votes.argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes: int, k: int = 200, temperature: float = 0.1,
                 chunk_size: int = 1024, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``queries`` against ``query_labels (M,)``."""
    pred = knn_predict(bank, bank_labels, queries, num_classes, k, temperature, chunk_size, device=device)
    y = as_tensor(query_labels).long().cpu()
    return float((pred == y).float().mean()) if len(y) else float("nan")
