"""Weighted cosine kNN: known answers on toy problems, chunking changes nothing."""

import numpy as np
import pytest
import torch

from cnnlab.probes.knn import knn_accuracy, knn_predict


def test_two_clusters_are_told_apart():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0]) + 0.1 * torch.randn(50, 3, generator=g)
    b = torch.tensor([0.0, 1.0, 0.0]) + 0.1 * torch.randn(50, 3, generator=g)
    bank, labels = torch.cat([a, b]), torch.tensor([0] * 50 + [1] * 50)
    queries = torch.tensor([[2.0, 0.1, 0.0], [0.1, 3.0, 0.0], [5.0, 0.0, 0.1]])  # cosine: the scale does not matter
    assert knn_predict(bank, labels, queries, 2, k=20).tolist() == [0, 1, 0]
    assert knn_accuracy(bank, labels, queries, torch.tensor([0, 1, 1]), 2, k=20) == pytest.approx(2 / 3)


def _brute_force(bank, labels, queries, num_classes, k, temperature):
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = q @ b.T
    out = []
    for row in sim:
        top = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, labels[top], np.exp(row[top] / temperature))
        out.append(int(np.argmax(votes)))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 5, 60])
def test_matches_brute_force_with_any_chunking(k):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=60)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    expected = _brute_force(bank, labels, queries, 4, k, 0.1)
    if k == 1:  # k = 1 is the nearest neighbour's label
        nearest = np.argmax((queries / np.linalg.norm(queries, axis=1, keepdims=True))
                            @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T, axis=1)
        assert (expected == labels[nearest]).all()
    for chunk, bank_chunk in ((1024, 16384), (7, 13), (1, 1)):
        got = knn_predict(bank, labels, queries, 4, k=k, temperature=0.1, chunk_size=chunk, bank_chunk_size=bank_chunk)
        assert got.tolist() == expected.tolist(), (chunk, bank_chunk)


def test_k_larger_than_the_bank_and_float16_inputs():
    bank = torch.eye(3).half()
    labels = torch.tensor([0, 1, 2])
    queries = torch.tensor([[1.0, 0.2, 0.0]]).half()
    assert knn_predict(bank, labels, queries, 3, k=200).tolist() == [0]
    with pytest.raises(ValueError, match="empty"):
        knn_predict(bank[:0], labels[:0], queries, 3)
