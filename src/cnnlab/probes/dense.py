"""The dense linear probe: a frozen trunk's hypercolumns -> a linear classifier per pixel, scored as mIoU.

The segmentation counterpart of :func:`cnnlab.probes.cached.probe_trunk_cached`. Training pixels
(``pixels_per_image`` labelled ones per training frame, drawn with ``seed``) get their hypercolumn (every tap
bilinearly sampled at the pixel centre, concatenated) stored on disk (:class:`cnnlab.features.FeatureStore`);
the existing L-BFGS multinomial probe (:mod:`cnnlab.probes.linear`) is fitted once per weight decay; each
fit is scored by the mIoU of its dense prediction over the validation frames at full resolution, the best
weight decay is kept, and only then is the test split read, once.

Dense prediction needs no stored features: the probe is linear and the standardization per channel, so
``logits = sum_t upsample(W_t' * tap_t) + b'`` (a 1x1 convolution per tap at its own resolution, then bilinear
upsampling, which commutes with both), the same as the probe applied to every pixel's hypercolumn.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnlab.backbones import load_trunk
from cnnlab.errors import UserError
from cnnlab.features import FeatureStore, data_fingerprint, state_fingerprint
from cnnlab.hypercolumn import pixel_centers, sample_hypercolumns
from cnnlab.labelmaps import sample_label_pixels, scores_from_confusion
from cnnlab.probes.linear import DEFAULT_WEIGHT_DECAYS, ProbeFit, at_grid_edge, fit_linear_probe
from cnnlab.probes.trunks import check_trunk_matches, freeze

log = logging.getLogger(__name__)

#: the one feature entry of the store: all taps' channels at a pixel, concatenated
HYPERCOLUMN = "hypercolumn"


def _datamodule(data):
    """A built segmentation data module, or one built from its config."""
    if hasattr(data, "splits") and hasattr(data, "preprocess"):
        return data
    from cnnlab.cli import instantiate

    return instantiate(data)


@torch.no_grad()
def sampled_hypercolumns(backbone, datamodule, split: str, taps: Sequence[str], pixels_per_image: int, seed: int,
                         device="cpu"):
    """Yield ``({"hypercolumn": (B * K, D) float16}, labels (B * K,))`` per batch of ``split``: ``K`` labelled pixels
    per frame drawn with ``seed`` (a function of the seed and the frames alone), at the working size."""
    gen = torch.Generator().manual_seed(seed)
    for images, masks, _ in datamodule.loader(split):
        x, m = datamodule.preprocess(images.to(device), masks.to(device))
        if m.shape[-2:] != x.shape[-2:]:  # full-resolution maps (val/test): their labels at the working size
            m = F.interpolate(m[:, None].float(), size=x.shape[-2:], mode="nearest")[:, 0].long()
        pix = sample_label_pixels(m.cpu(), pixels_per_image, datamodule.ignore_index, generator=gen).to(device)
        feats = backbone.forward_taps(x, taps)
        cols = sample_hypercolumns([feats[t] for t in taps], pixel_centers(pix, *x.shape[-2:]))
        labels = m.flatten(1).gather(1, pix[..., 0] * x.shape[-1] + pix[..., 1])
        yield {HYPERCOLUMN: cols.flatten(0, 1).to("cpu", torch.float16)}, labels.flatten().cpu()


def dense_probe_logits(maps: Sequence[torch.Tensor], fit: ProbeFit, size: Sequence[int]) -> torch.Tensor:
    """Tap maps ``[(B, C_t, h_t, w_t)]`` (in the probe's feature order) -> logits ``(B, classes, H, W)`` of the probe
    at every pixel of an ``H x W`` image: per tap a 1x1 convolution at its own resolution, upsampled and summed."""
    dev = maps[0].device
    weight = (fit.weight / fit.standardizer.std[:, None]).to(dev)  # (D, C): standardization folded in
    bias = (fit.bias - (fit.standardizer.mean / fit.standardizer.std) @ fit.weight).to(dev)
    out, start = 0.0, 0
    for t in maps:
        w = weight[start:start + t.shape[1]].T[:, :, None, None]
        start += t.shape[1]
        out = out + F.interpolate(F.conv2d(t.float(), w), size=tuple(int(s) for s in size), mode="bilinear",
                                  align_corners=False)
    return out + bias[None, :, None, None]


@torch.no_grad()
def dense_probe_scores(backbone, datamodule, split: str, taps: Sequence[str], fit: ProbeFit, device="cpu") -> dict:
    """mIoU, pixel accuracy and per-class IoU of ``fit`` on every frame of ``split``, at each frame's full size."""
    confusion = MulticlassConfusionMatrix(datamodule.num_classes, ignore_index=datamodule.ignore_index).to(device)
    for images, masks, sizes in datamodule.loader(split):
        x, m = datamodule.preprocess(images.to(device), masks.to(device))
        feats = backbone.forward_taps(x, taps)
        for i in range(len(x)):
            h, w = (int(s) for s in sizes[i])
            logits = dense_probe_logits([feats[t][i:i + 1] for t in taps], fit, (h, w))
            confusion.update(logits.argmax(1), m[i:i + 1, :h, :w])
    scores = scores_from_confusion(confusion.compute().cpu())
    return {"miou": float(scores["miou"]), "pixel_acc": float(scores["pixel_acc"]),
            "iou": {c: float(v) for c, v in zip(datamodule.classes, scores["iou"].tolist())}}


def probe_trunk_dense(
    trunk_path: str | Path,
    data,
    taps: Sequence[str] | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    pixels_per_image: int = 128,
    seed: int = 0,
    evaluate_test: bool = True,
    cache_dir: str | Path | None = None,
    max_iter: int = 200,
    device: str | torch.device = "cpu",
) -> dict:
    """Dense linear probe of a trunk file on a segmentation data module (or its config): train fits, val chooses, test reports.

    Returns ``{"taps", "dim", "trunk_fingerprint", "pixels_per_image", "seed", "n_train_pixels", "n_val_pixels",
    "grid": {"<wd>": val mIoU}, "weight_decay", "at_grid_edge", "converged", "val_miou", "val_pixel_acc",
    "test_miou", "test_pixel_acc", "test_iou": {class: IoU}}``; the ``test_*`` entries are None unless
    ``evaluate_test``. Hypercolumns of the sampled train/val pixels are kept under ``cache_dir`` (a temp dir
    when None) keyed by the trunk's weights, taps, sampling and frames, so a rerun skips the trunk.
    """
    datamodule = _datamodule(data)
    backbone, meta = load_trunk(trunk_path)
    check_trunk_matches(meta, trunk_path, color_space=datamodule.color_space)
    backbone = freeze(backbone).to(device)
    taps = backbone.check_taps(list(taps) if taps else meta["taps"])
    datamodule.prepare_data()
    datamodule.setup()
    if evaluate_test and "test" not in datamodule.splits:
        raise UserError("the data has no test split: pass evaluate_test=False")
    fp = state_fingerprint(backbone)
    temp = tempfile.TemporaryDirectory(prefix="cnnlab-dense-") if cache_dir is None else None
    store = FeatureStore(temp.name if temp else cache_dir)

    def pixels(split: str, split_seed: int) -> dict:
        ds = datamodule.splits[split]
        key = (f"{fp}|{','.join(taps)}|{pixels_per_image}|{split_seed}|{datamodule.hparams.name}|{datamodule.color_space}|"
               f"{split}|{len(ds)}|{data_fingerprint(ds.images)}|{data_fingerprint(ds.masks)}")
        return store.get(f"dense_{split}", key, [HYPERCOLUMN],
                         lambda: sampled_hypercolumns(backbone, datamodule, split, taps, pixels_per_image, split_seed, device),
                         len(ds) * pixels_per_image)

    try:
        train, val = pixels("train", seed), pixels("val", seed + 1)
        fits, grid = {}, {}
        for wd in sorted({float(w) for w in weight_decays}, reverse=True):
            fits[wd] = fit_linear_probe(train[HYPERCOLUMN], train["labels"], val[HYPERCOLUMN], val["labels"],
                                        datamodule.num_classes, [wd], max_iter, device)
            grid[wd] = dense_probe_scores(backbone, datamodule, "val", taps, fits[wd], device)
            log.info("dense probe wd %g: val mIoU %.3f", wd, grid[wd]["miou"])
        best = max(sorted(grid, reverse=True), key=lambda w: grid[w]["miou"])  # ties: the larger weight decay
        # every choice is fixed: only now is the test split read
        test = dense_probe_scores(backbone, datamodule, "test", taps, fits[best], device) if evaluate_test else None
        sizes = {"dim": int(train[HYPERCOLUMN].shape[1]), "n_train_pixels": int(len(train["labels"])),
                 "n_val_pixels": int(len(val["labels"]))}
    finally:
        if temp is not None:
            temp.cleanup()
    return {"taps": taps, **sizes, "trunk_fingerprint": fp, "pixels_per_image": pixels_per_image, "seed": seed,
            "grid": {repr(wd): grid[wd]["miou"] for wd in sorted(grid)},
            "weight_decay": best, "at_grid_edge": at_grid_edge(best, list(grid)), "converged": fits[best].converged,
            "val_miou": grid[best]["miou"], "val_pixel_acc": grid[best]["pixel_acc"],
            "test_miou": test["miou"] if test else None, "test_pixel_acc": test["pixel_acc"] if test else None,
            "test_iou": test["iou"] if test else None}
