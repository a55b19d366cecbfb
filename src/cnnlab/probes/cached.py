"""Feature-cache probing: run the frozen trunk over each split once, then fit probes on the stored features.

For every tap: a linear probe (L-BFGS logistic regression to convergence, weight decay chosen on the
validation split; :mod:`cnnlab.probes.linear`) and weighted cosine kNN (:mod:`cnnlab.probes.knn`). Multi-label data
(``(N, C)`` targets, :mod:`cnnlab.multilabel`) gets the one-vs-rest probe scored by mAP and no kNN (its vote is a
single-label classifier).
The train split fits, the val split chooses, the test split is read once at the end with every choice
fixed: its features are extracted and its labels read only after all taps have been chosen.

Features live on disk (:class:`cnnlab.features.FeatureStore`, float16, one file per tap and split) and
are read memory-mapped one tap at a time, so memory holds one tap's train and val features at most.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from cnnlab.backbones import freeze, load_trunk
from cnnlab.errors import UserError
from cnnlab.features import FeatureStore, data_fingerprint, iter_features, state_fingerprint
from cnnlab.probes.knn import knn_accuracy
from cnnlab.probes.linear import DEFAULT_WEIGHT_DECAYS, fit_linear_probe
from cnnlab.probes.trunks import check_trunk_matches

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def probe_trunk_cached(
    trunk_path: str | Path,
    datamodule,
    taps: Sequence[str] | None = None,
    target_dims: int | None = 9216,
    cache_dir: str | Path | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 200,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    evaluate_test: bool = True,
    keep_cache: bool = True,
    expect_arch: str | None = None,
    expect_arch_kwargs: dict | None = None,
    **kwargs,
) -> dict:
    """Probe every tap of a trunk file on ``datamodule``'s splits: train fits, val chooses, test reports.

    Features are stored under ``cache_dir`` (a temp dir when None; removed at the end unless
    ``keep_cache``) keyed by the trunk's weights, the taps, the pooling and the split's images, so a
    rerun on the same trunk skips the trunk. ``evaluate_test=False`` never touches the test split
    (``"test"`` entries are None). Returns the dict described in the module docs of
    :mod:`cnnlab.probes` (``taps``, ``dims``, ``trunk_fingerprint``, ``n_*``, ``linear``, ``knn``).
    """
    if kwargs:
        raise TypeError(f"probe_trunk_cached got unexpected arguments {sorted(kwargs)}: the L-BFGS probe has no "
                        "epochs/lr/batch size/seed (it is deterministic); see weight_decays and max_iter")
    backbone, meta = load_trunk(trunk_path)
    check_trunk_matches(meta, trunk_path, arch=expect_arch, arch_kwargs=expect_arch_kwargs, color_space=datamodule.color_space)
    backbone = freeze(backbone)
    taps = backbone.check_taps(list(taps) if taps else meta["taps"])
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.splits["val"] is datamodule.splits.get("test"):
        raise UserError("the data has no validation split apart from the test split (data.val_fraction=0 or no train images "
                        "left): probe choices would be made on test; set data.val_fraction > 0")
    if evaluate_test and "test" not in datamodule.splits:
        raise UserError("the data has no test split: pass evaluate_test=False")
    fp = state_fingerprint(backbone)
    h = datamodule.hparams
    temp = None
    if cache_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="cnnlab-features-")
        cache_dir = temp.name
    store = FeatureStore(cache_dir)
    num_classes = datamodule.num_classes
    multilabel = datamodule.splits["train"].labels.ndim == 2
    # on a GPU, bigger query chunks move the (CPU, memory-mapped) bank to the device fewer times
    knn_chunk = 8192 if torch.device(device).type == "cuda" else 1024

    def features(split: str) -> dict:
        ds = datamodule.splits[split]
        key = f"{fp}|{','.join(taps)}|{target_dims}|{h.name}|{datamodule.color_space}|{split}|{len(ds)}|{data_fingerprint(ds.images)}"

        def compute():
            loader = datamodule.loader(split, batch_size=h.eval_batch_size or 256)
            return iter_features(backbone, loader, taps, lambda u: datamodule.preprocess(u, train=False), target_dims,
                                 device=device, progress=f"features {split}" if progress else None, total=len(loader))

        return store.get(f"features_{split}", key, taps, compute, len(ds))

    try:
        t0 = time.perf_counter()
        train, val = features("train"), features("val")
        timing = {"features_train_val_s": time.perf_counter() - t0, "fit_s": 0.0, "knn_s": 0.0}
        linear: dict[str, dict] = {}
        knn: dict[str, dict] = {}
        fits = {}
        for t in taps:
            t1 = time.perf_counter()
            fit = fit_linear_probe(train[t], train["labels"], val[t], val["labels"], num_classes, weight_decays, max_iter, device)
            t2 = time.perf_counter()
            fits[t] = fit
            linear[t] = {"grid": {repr(wd): acc for wd, acc in fit.grid.items()}, "weight_decay": fit.weight_decay,
                         "val": fit.val_acc, "test": None, "converged": fit.converged, "iterations": fit.iterations,
                         "at_grid_edge": fit.at_grid_edge,
                         "fits": {repr(wd): {k: v for k, v in f.items() if k != "val_acc"} for wd, f in fit.fits.items()}}
            if not multilabel:
                knn[t] = {"k": int(knn_k), "temperature": float(knn_temperature), "val": knn_accuracy(
                    train[t], train["labels"], val[t], val["labels"], num_classes, knn_k, knn_temperature, knn_chunk, device), "test": None}
            timing["fit_s"] += t2 - t1
            timing["knn_s"] += time.perf_counter() - t2
            log.info("probe %s: wd %g (val %.3f, %d iterations%s), kNN val %s", t, fit.weight_decay, fit.val_acc, fit.iterations,
                     "" if fit.converged else ", not converged", f"{knn[t]['val']:.3f}" if t in knn else "-")
        # every choice is fixed: only now is the test split read
        n_test = 0
        if evaluate_test:
            t0 = time.perf_counter()
            test = features("test")
            timing["features_test_s"] = time.perf_counter() - t0
            n_test = len(test["labels"])
            for t in taps:
                linear[t]["test"] = fits[t].score(test[t], test["labels"])
                if not multilabel:
                    knn[t]["test"] = knn_accuracy(train[t], train["labels"], test[t], test["labels"], num_classes, knn_k,
                                                  knn_temperature, knn_chunk, device)
        result = {"taps": taps, "dims": {t: int(train[t].shape[1]) for t in taps}, "trunk_fingerprint": fp,
                  "n_train": len(train["labels"]), "n_val": len(val["labels"]), "n_test": n_test,
                  "linear": linear, **({} if multilabel else {"knn": knn}), "timing": timing}
    finally:
        if temp is not None:
            temp.cleanup()
        elif not keep_cache:
            for split in SPLITS:
                store.remove(f"features_{split}")
    return result
