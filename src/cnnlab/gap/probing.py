"""Probing one trunk for the gap: linear probes (weight decay chosen on val) and kNN per tap.

The gap calls :func:`probe_trunk` only; it returns the result dict of
``cnnlab.probes.cached.probe_trunk_cached`` (train fits, val chooses, test read once with the choice)::

    {"taps", "dims", "trunk_fingerprint", "n_train", "n_val", "n_test",
     "linear": {tap: {"grid": {"<wd>": val_acc}, "weight_decay", "val", "test", "converged", "iterations"}},
     "knn": {tap: {"k", "temperature", "val", "test"}}}

TRANSITIONAL: until the L-BFGS probe trainer (``cnnlab.probes.linear``) is in the tree, the same dict is
produced here from the SGD head trainer, one fit per weight decay, and a small weighted-kNN; this fallback
goes away once ``probe_trunk_cached`` takes ``weight_decays``.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from cnnlab.probes import cached


def _new_api() -> bool:
    return "weight_decays" in inspect.signature(cached.probe_trunk_cached).parameters


def probe_trunk(trunk_path: Path, datamodule, taps: Sequence[str] | None, target_dims: int, cache_dir: Path,
                weight_decays: Sequence[float], max_iter: int, knn_k: int, knn_temperature: float, device: str,
                expect_arch: str, expect_arch_kwargs: dict, progress: bool = False, evaluate_test: bool = True,
                sgd_epochs: int = 30, seed: int = 0) -> dict:
    """Probe every tap of ``trunk_path`` on ``datamodule``; see the module docstring for the result."""
    common = dict(taps=taps, target_dims=target_dims, cache_dir=cache_dir, expect_arch=expect_arch,
                  expect_arch_kwargs=expect_arch_kwargs, device=device, progress=progress)
    if _new_api():
        return cached.probe_trunk_cached(trunk_path, datamodule, weight_decays=tuple(weight_decays), max_iter=max_iter,
                                         knn_k=knn_k, knn_temperature=knn_temperature, evaluate_test=evaluate_test, **common)
    return _probe_with_sgd_heads(trunk_path, datamodule, weight_decays, knn_k, knn_temperature, evaluate_test, sgd_epochs, seed, **common)


# --------------------------------------------------------------------------------- transitional fallback
def _knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                  num_classes: int, k: int, temperature: float, chunk: int = 1024) -> float:
    """Weighted cosine kNN (Wu et al. 2018): ``(N, D)`` bank, ``(M, D)`` queries -> top-1 accuracy."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    correct = 0
    for i in range(0, len(queries), chunk):
        sim, idx = (F.normalize(queries[i:i + chunk].float(), dim=1) @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, bank_labels[idx].long(), (sim / temperature).exp())
        correct += int((votes.argmax(1) == query_labels[i:i + chunk]).sum())
    return correct / max(1, len(queries))


def _probe_with_sgd_heads(trunk_path, datamodule, weight_decays, knn_k, knn_temperature, evaluate_test, sgd_epochs, seed,
                          taps, target_dims, cache_dir, expect_arch, expect_arch_kwargs, device, progress) -> dict:
    from cnnlab.backbones import load_trunk
    from cnnlab.features import cached_features, extract_features, state_fingerprint
    from cnnlab.probes.trunks import check_trunk_matches, freeze

    backbone, meta = load_trunk(trunk_path)
    check_trunk_matches(meta, trunk_path, arch=expect_arch, arch_kwargs=expect_arch_kwargs, color_space=datamodule.color_space)
    backbone = freeze(backbone)
    taps = backbone.check_taps(list(taps) if taps else meta["taps"])
    datamodule.prepare_data()
    datamodule.setup()
    fp = state_fingerprint(backbone)
    h = datamodule.hparams
    feats = {}
    for split in ("train", "val", "test"):
        ds = datamodule.splits[split]
        content = hashlib.sha1(ds.images.numpy().tobytes() + ds.labels.numpy().tobytes()).hexdigest()[:12]
        key = f"{fp}|{','.join(taps)}|{target_dims}|{h.name}|{datamodule.color_space}|{split}|{len(ds)}|{content}"

        def compute(split=split):
            loader = datamodule.loader(split, batch_size=h.eval_batch_size or 256)
            return extract_features(backbone, loader, taps, lambda u: datamodule.preprocess(u, train=False), target_dims,
                                    device=device, progress=f"features {split}" if progress else None, total=len(loader))

        # one file per split content: the val/test features of a trunk are shared by its probes on every label subset
        name = f"features_{split}_{hashlib.sha1(key.encode()).hexdigest()[:10]}.pt"
        feats[split] = cached_features(Path(cache_dir) / name, key, compute)
    n_cls = datamodule.num_classes
    # one fit per weight decay, scored on val; the same seed makes a refit with the chosen decay the same head
    grid = {}
    for wd in weight_decays:
        grid[wd] = cached.train_probe_heads(feats["train"], feats["val"], taps, num_classes=n_cls, epochs=sgd_epochs,
                                            weight_decay=wd, seed=seed, device=device)["test"]
    chosen = {t: max(weight_decays, key=lambda wd: (grid[wd][t], wd)) for t in taps}  # ties: the larger decay
    test = {t: None for t in taps}
    if evaluate_test:
        for wd in sorted(set(chosen.values())):
            acc = cached.train_probe_heads(feats["train"], feats["test"], taps, num_classes=n_cls, epochs=sgd_epochs,
                                           weight_decay=wd, seed=seed, device=device)["test"]
            test.update({t: acc[t] for t in taps if chosen[t] == wd})
    tr, va, te = feats["train"], feats["val"], feats["test"]
    knn = {}
    for t in taps:
        knn[t] = {"k": knn_k, "temperature": knn_temperature,
                  "val": _knn_accuracy(tr[t], tr["labels"], va[t], va["labels"], n_cls, knn_k, knn_temperature),
                  "test": _knn_accuracy(tr[t], tr["labels"], te[t], te["labels"], n_cls, knn_k, knn_temperature) if evaluate_test else None}
    linear = {t: {"grid": {repr(float(wd)): grid[wd][t] for wd in weight_decays}, "weight_decay": float(chosen[t]),
                  "val": grid[chosen[t]][t], "test": test[t], "converged": None, "iterations": None} for t in taps}
    return {"taps": taps, "dims": {t: int(tr[t].shape[1]) for t in taps}, "trunk_fingerprint": fp, "n_train": len(tr["labels"]),
            "n_val": len(va["labels"]), "n_test": len(te["labels"]), "linear": linear, "knn": knn,
            "trainer": f"SGD heads, {sgd_epochs} epochs per weight decay (transitional)"}
