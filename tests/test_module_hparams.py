"""Every cnnlab LightningModule reloads from its checkpoint with every argument it was built with.

``load_module`` rebuilds a module as ``cls(**hyper_parameters)``: an argument missing from the saved
hyperparameters would silently come back at its default. Each module is built with a non-default value
for every constructor argument, written by a real Trainer and read back with ``load_module``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytorch_lightning as pl
import torch

import cnnlab
from cnnlab.backbones import VGGCifar, save_trunk
from cnnlab.models import load_module
from cnnlab.models.base import CnnlabModule

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
STEP = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 3, "interval": "step"}


def _non_default_arguments(tmp_path) -> dict[str, dict]:
    """A non-default value for every argument of every module (keyed by class name)."""
    gray = {"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 8}
    trunk = save_trunk(tmp_path / "trunk.pt", VGGCifar(width=8), color_space="rgb", method="random")
    return {
        "Classifier": dict(backbone={"_target_": "cnnlab.backbones.VGGCifar", "width": 8}, num_classes=7, dropout=0.25,
                           label_smoothing=0.1, optimizer=ADAM, scheduler=STEP, compile=False, trunk_lr_mult=0.5,
                           warmup_steps=3, head_only_steps=2),
        "Colorizer": dict(backbone=gray, targets="lab_bins", input_space="gray", taps=["conv2_2", "conv3_2"],
                          samples_per_image=16, sample_margin=1, hidden=8, dropout=0.1, hue_bins=8, chroma_bins=6,
                          hue_weight=2.0, hue_confidence=False, lab={"temperature": 0.5}, prior_max_images=64,
                          prior_cache=False, dense_training=True, eval_stride=2, eval_chunk_pixels=512,
                          panel_every_n_epochs=3, panel_images=2, optimizer=ADAM, scheduler=STEP, compile=False),
        "LinearProbe": dict(trunk=str(trunk), taps=["conv3_2"], target_dims=64, num_classes=5, image_size=16,
                            expect_arch="vgg_cifar", optimizer=ADAM, scheduler=STEP, compile=False),
        "Segmenter": dict(backbone=gray, num_classes=5, ignore_index=255, taps=["conv2_2", "conv3_2"], samples_per_image=16,
                          balanced_sampling=True, hidden=8, dropout=0.1, dense_training=True, eval_chunk_pixels=512,
                          trunk_lr_mult=0.5, panel_every_n_epochs=3, panel_images=2, optimizer=ADAM, scheduler=STEP,
                          compile=False),
    }


def _module_classes() -> list[type]:
    """Every concrete CnnlabModule subclass in the package (so a new module cannot skip this test)."""
    for info in pkgutil.walk_packages(cnnlab.__path__, "cnnlab."):
        if info.name.rsplit(".", 1)[-1] in ("__main__",):
            continue
        importlib.import_module(info.name)
    found, todo = set(), [CnnlabModule]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("cnnlab.") and "__init__" in vars(sub):
                found.add(sub)
    return sorted(found, key=lambda c: c.__name__)


def test_every_module_reloads_with_every_argument(tmp_path):
    table = _non_default_arguments(tmp_path)
    classes = _module_classes()
    assert {c.__name__ for c in classes} == set(table), "give every LightningModule non-default arguments here"
    for cls in classes:
        arguments = table[cls.__name__]
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        assert {p.name for p in params} == set(arguments), f"{cls.__name__}: name every constructor argument"
        for p in params:  # non-default, so a reload at the default shows (compile: False is all a CPU test builds)
            if p.name != "compile":
                assert arguments[p.name] != p.default, f"{cls.__name__}.{p.name} is given its default"
        torch.manual_seed(0)
        module = cls(**arguments)
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")
        trainer.strategy.connect(module)
        path = tmp_path / f"{cls.__name__}.ckpt"
        trainer.save_checkpoint(path)
        loaded = load_module(path, expect=cls)
        assert type(loaded) is cls
        for name, given in arguments.items():
            saved = loaded.hparams[name]
            if name == "lab":  # merged with the package's Lab-bin defaults: every given key kept
                assert {k: saved[k] for k in given} == given
            else:
                assert saved == given, f"{cls.__name__}.{name} reloads as {saved!r}, built with {given!r}"
        state = module.state_dict()
        assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())
