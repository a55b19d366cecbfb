"""The small base every cnnlab LightningModule stands on.

It builds the backbone from its config, the optimizer and scheduler from ``_partial_`` configs,
stops on a non-finite loss with a clear message, and says how to export its trunk.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.backbones import Backbone
from cnnlab.errors import UserError


def as_dict(cfg: Any) -> Any:
    """DictConfig -> plain dict (so hparams pickle into checkpoints without OmegaConf)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def plain(value: Any) -> Any:
    """A hyperparameter as plain Python: OmegaConf containers resolved, tuples as lists, paths as strings."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def make_backbone(cfg: dict | Backbone) -> Backbone:
    """Build a backbone from its ``_target_`` config (or pass a built one through)."""
    if isinstance(cfg, Backbone):
        return cfg
    backbone = hydra.utils.instantiate(cfg)
    if not isinstance(backbone, Backbone):
        raise UserError(f"backbone config builds a {type(backbone).__name__}, not a cnnlab Backbone: check backbone._target_")
    return backbone


def build_partial(cfg: dict, **kwargs: Any) -> Any:
    """Instantiate a ``_partial_`` config (or a plain one) with the runtime arguments added.

    The runtime arguments go to the built partial directly, not through OmegaConf (which would turn
    param-group dicts of tensors into DictConfigs the optimizer cannot read).
    """
    cfg = dict(cfg)
    cfg["_partial_"] = True
    return hydra.utils.instantiate(cfg)(**kwargs)


class CnnlabModule(pl.LightningModule):
    """Shared plumbing: optimizer/scheduler from config, non-finite loss guard, trunk export."""

    #: what trained the exported trunk (supervised, colorization, ...)
    method = "base"
    #: linear learning-rate warm-up over this many optimizer steps (0: none); see :meth:`optimizer_step`
    warmup_steps: int = 0

    def __init__(self, optimizer: dict | None = None, scheduler: dict | None = None, compile: bool = False):
        super().__init__()
        self.optimizer_cfg = as_dict(optimizer) or {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}
        self.scheduler_cfg = as_dict(scheduler)
        self.compile_model = compile
        #: colour space, image size and class names of the data it was trained on (set from checkpoints)
        self.data_info: dict = {}

    def save_arguments(self, **resolved: Any) -> None:
        """Save every constructor argument as a hyperparameter: the one way cnnlab modules do it.

        Call it from the ``__init__`` of the class being built. The names are the parameters of
        ``type(self).__init__``'s signature; the values are what the constructor holds for them when this
        runs, with ``resolved`` replacing some by the value the module settled on (a config merged with its
        defaults, the taps a trunk chose) and the optimizer/scheduler configs as this base resolved them.
        ``load_module`` rebuilds with ``cls(**hparams)``, so a name left out would silently reload at its
        default: deriving the names from the signature leaves none out.
        """
        caller = inspect.currentframe().f_back
        init = type(self).__init__
        if caller.f_code is not init.__code__:
            raise TypeError(f"save_arguments() must be called from {type(self).__qualname__}.__init__ itself")
        params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"]
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise TypeError(f"{type(self).__qualname__}.__init__ takes *args/**kwargs: name every argument to save it")
        resolved = {"optimizer": self.optimizer_cfg, "scheduler": self.scheduler_cfg, **resolved}
        values = caller.f_locals
        self.save_hyperparameters({p.name: plain(resolved[p.name] if p.name in resolved else values[p.name])
                                   for p in params})

    # ----------------------------------------------------------------------------- optimization
    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        optimizer = build_partial(self.optimizer_cfg, params=self.trainable_parameters())
        if not self.scheduler_cfg or not self.scheduler_cfg.get("_target_"):
            return optimizer
        cfg = dict(self.scheduler_cfg)
        interval = cfg.pop("interval", "epoch")
        if cfg.get("_target_", "").endswith("OneCycleLR"):
            cfg.setdefault("total_steps", int(self.trainer.estimated_stepping_batches))
        scheduler = build_partial(cfg, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def warmup_factor(self, step: int) -> float:
        """The learning-rate multiplier of optimizer step ``step`` (0-based): ``(step + 1) / warmup_steps``, then 1."""
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # warm-up scales every param group's scheduled lr for this one step and puts it back afterwards,
        # so it composes with any scheduler (epoch- or step-wise) without the scheduler seeing the scaled value
        factor = self.warmup_factor(self.global_step)
        if factor == 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        scheduled = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = g["lr"] * factor
        try:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:
            for g, lr in zip(optimizer.param_groups, scheduled):
                g["lr"] = lr

    def check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop the run on a NaN/inf loss; checkpoints already written are left as they were."""
        if not torch.isfinite(loss).all():
            raise UserError(
                f"non-finite loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}: "
                f"lower model.optimizer.lr or set trainer.gradient_clip_val; {self._checkpoint_note()}"
            )
        return loss

    def _checkpoint_note(self) -> str:
        """What is true of this run's checkpoints, for the NaN message (none exist before the first validation)."""
        from pathlib import Path

        try:
            dirs = {Path(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if cb.dirpath}
        except RuntimeError:  # not attached to a Trainer
            dirs = set()
        files = sorted((p for d in dirs if d.is_dir() for p in d.glob("*.ckpt")), key=lambda p: p.stat().st_mtime)
        return f"the newest good checkpoint is kept: {files[-1]}" if files else "no checkpoint was written yet"

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what load_module needs to rebuild this module and feed it correctly, without the config
        checkpoint["cnnlab_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "color_space"):
            # with the data module's own saved settings, what cnnlab-eval rebuilds the run's data from
            checkpoint["cnnlab_data"] = {"color_space": dm.color_space, "image_size": dm.hparams.image_size,
                                         "classes": list(dm.classes), "name": dm.hparams.name,
                                         "datamodule": f"{type(dm).__module__}.{type(dm).__qualname__}"}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_info = checkpoint.get("cnnlab_data", {})

    # ----------------------------------------------------------------------------- export
    def trunk(self) -> Backbone | None:
        """The backbone to export as ``trunk.pt`` (None: nothing to export)."""
        return getattr(self, "backbone", None)

    def trunk_color_space(self) -> str:
        return "rgb" if self.trunk().in_channels == 3 else "L"

    def maybe_compile(self, module: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(module) if self.compile_model else module


class StagedModule(CnnlabModule):
    """A module whose train, val and test steps are one ``_step(batch, stage)`` (stage: train | val | test)."""

    def _step(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")
