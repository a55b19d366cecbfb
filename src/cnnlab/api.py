"""cnnlab's visualizations and analyses on any ``nn.Module``, from Python.

    import torch, torchvision
    from cnnlab import api

    model = torchvision.models.resnet18(num_classes=10)            # any nn.Module giving class scores
    net = api.network(model, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), image_size=32,
                      classes=["airplane", "automobile", ...], layers=["layer2", "layer3", "layer4"])
    api.visualize(net, "class_model", out_dir="viz", classes=["cat"], steps=100)   # -> viz/images/class_model.png
    images = torch.rand(64, 3, 32, 32)                              # (N, 3, H, W) RGB in [0, 1] (or uint8)
    api.analyze(net, images, labels, ["filters", "patches", "attribution"], out_dir="analysis")  # -> report.html

The model sees what ``network`` tells cnnlab it takes: RGB in [0, 1] is converted to ``color_space`` and
normalized with ``mean``/``std`` inside the forward path, so the functions below always pass RGB in [0, 1].
Every setting a function takes is that experiment's or analysis's entry in ``conf/viz/<name>.yaml`` /
``conf/analysis/<name>.yaml`` (the command-line defaults are the defaults here too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cnnlab.config import CONF_DIR
from cnnlab.errors import UserError
from cnnlab.subject import Subject


def network(model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            classes: Sequence[str] | None = None, image_size: int = 224, layers: Sequence[str] | None = None,
            color_space: str = "rgb", name: str | None = None) -> Subject:
    """Wrap ``model`` (RGB after ``color_space`` conversion and ``(x - mean) / std`` -> class scores) for cnnlab.

    ``layers``: the module names analyses default to, in order (``dict(model.named_modules())`` keys; every
    module stays reachable by name); ``None`` finds the main blocks by a dry run. ``classes`` name the outputs
    (``viz.classes=[cat]``, labelled figures); ``image_size`` is the side the visualizations optimize at.
    """
    if (mean is None) != (std is None):
        raise UserError("give both mean and std (the per-channel normalization the model expects), or neither")
    subject = Subject(model, color_space=color_space, mean=mean, std=std, classes=classes, image_size=image_size,
                      taps=layers, name=name or type(model).__name__, source=name or type(model).__name__)
    if layers is not None:
        subject.check_layers(layers)
    return subject


def _defaults(group: str, name: str) -> dict:
    """The settings of ``conf/<group>/<name>.yaml`` without Hydra's keys: the command line's defaults."""
    from omegaconf import OmegaConf

    path = Path(CONF_DIR) / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "all")
        raise UserError(f"unknown {group} {name!r}: choose from {options}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def visualize(net: Subject, experiment: str = "class_model", out_dir: str | Path = "visualize", device: str = "cpu",
              seed: int = 0, data_dir: str | Path | None = None, progress: bool = False, **settings) -> dict:
    """Run one ``cnnlab-visualize`` experiment (``conf/viz/<experiment>.yaml``: class_model, saliency, actmax,
    featviz, inversion, deepdream, style, adversarial, fooling) on ``net``; images go to ``<out_dir>/images/``.

    ``settings`` override the experiment's defaults; ``data_dir`` is where CIFAR-10 is found for the experiments
    that read its test images. Returns the experiment's metrics.
    """
    import pytorch_lightning as pl

    from cnnlab.cli import instantiate
    from cnnlab.visualize.experiments import Context

    pl.seed_everything(seed, verbose=False)
    target = {"_target_": _target("viz", experiment), "_partial_": True, **_defaults("viz", experiment), **settings}
    ctx = Context(network=net, out_dir=Path(out_dir), data_dir=str(data_dir or "data"), seed=seed, progress=progress,
                  device=device)
    return instantiate(target, _convert_="all")(ctx)


def _target(group: str, name: str) -> str:
    from omegaconf import OmegaConf

    _defaults(group, name)  # the unknown-name error
    return str(OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml")["_target_"])


class _Images:
    """In-memory images with the face of a data module that :class:`~cnnlab.analysis.context.AnalysisContext` reads."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], name: str):
        from types import SimpleNamespace

        from cnnlab.data.datamodule import TensorImageDataset

        self.splits = {"test": TensorImageDataset(images, labels)}
        self.classes = list(classes)
        self.hparams = SimpleNamespace(name=name)

    def setup(self, stage: str | None = None) -> None:
        pass


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB as uint8: float images are taken to be in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def analyze(net: Subject, images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
            analyses: Sequence[str] | dict[str, dict] = ("filters", "patches", "occlusion", "attribution"),
            out_dir: str | Path = "analysis", classes: Sequence[str] | None = None, batch_size: int = 256,
            device: str = "cpu", seed: int = 0, name: str = "images") -> dict:
    """Run ``cnnlab-analyze``'s analyses on ``net`` over ``images`` ((N, 3, H, W) RGB, uint8 or float in [0, 1]).

    ``analyses``: names (defaults from ``conf/analysis/<name>.yaml``) or ``{name: settings}`` overriding them;
    ``labels`` (default: all 0) and ``classes`` (default: the network's) name the images' true classes.
    Writes ``analysis_*.png``, ``report.html`` and ``analysis.json`` into ``out_dir``; returns ``{name: summary}``.
    """
    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.analysis.report import Report
    from cnnlab.analysis.runners import check_analyses, run_all

    chosen = dict(analyses) if isinstance(analyses, dict) else {a: {} for a in analyses}
    check_analyses(chosen)
    settings = {a: {**_defaults("analysis", a), **(chosen[a] or {})} for a in chosen}
    images = as_uint8(torch.as_tensor(images))
    labels = torch.zeros(len(images), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
    if len(labels) != len(images):
        raise UserError(f"{len(labels)} labels for {len(images)} images: give one label per image")
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    report = Report(f"cnnlab analyses: {net.name}", meta={"network": net.name, "data": f"{name} ({len(images)} images)",
                                                          "analyses": ", ".join(chosen)})
    ctx = AnalysisContext(net.to(device), _Images(images, labels, classes or net.classes, name), out_dir,
                          batch_size=batch_size, device=device, seed=seed, report=report)
    return run_all(ctx, settings)
