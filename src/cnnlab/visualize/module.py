"""``ImageOptimization``: a LightningModule whose only trainable parameter is the image.

The network is frozen in eval mode for good (``Subject.train`` is a no-op), the Trainer drives the
optimization over a dummy loader of N steps, and each step:

1. draws the robustness transforms' random parameters once (fixed inside the step, so L-BFGS's
   repeated closure calls evaluate one deterministic function),
2. runs ``optimizer.step(closure)`` (Adam, SGD, L-BFGS or ``NormalizedGD``),
3. applies step-wise regularizers (decay, blur, clipping) and projects the pixels into [0, 1],
4. logs the objective (progress bar every step; ``<tag>/objective`` to the loggers every step).

Forward hooks live from ``on_fit_start`` to ``teardown`` (which Lightning also runs on error), and
``run_optimization`` removes them in a ``finally`` as well.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnlab.errors import UserError
from cnnlab.hooks import INPUT, LayerCapture
from cnnlab.subject import Subject
from cnnlab.tracking import log_metrics
from cnnlab.visualize.objectives import Objective
from cnnlab.visualize.transforms import RandomTransforms


class NormalizedGD(torch.optim.Optimizer):
    """DeepDream's step: ``x <- x - lr * g / mean(|g|)`` (per parameter tensor); scale-free in the objective."""

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad / (p.grad.abs().mean() + group["eps"]), alpha=-group["lr"])
        return loss


OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "lbfgs": torch.optim.LBFGS, "normalized": NormalizedGD}


def make_optimizer(name: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}: choose one of {sorted(OPTIMIZERS)}")
    if name == "lbfgs":
        kwargs.setdefault("max_iter", 1)  # one L-BFGS iteration per Trainer step: steps mean the same for every optimizer
        kwargs.setdefault("history_size", 50)
    return OPTIMIZERS[name](params, lr=lr, **kwargs)


class Steps(Dataset):
    """A dummy dataset of N step indices: the Trainer's loop is the optimization loop."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class ImageOptimization(pl.LightningModule):
    """Optimize ``image()`` to minimize ``objective(acts)``; the network is never updated.

    ``image``: a parameterization module (``PixelImage``, ``FourierImage``); ``post_steps``: callables
    ``(image, step)`` run without grad after each optimizer step; ``loggers``: loggers that get
    ``<tag>/objective`` per step at ``step_offset + step`` (so several runs share one W&B history).
    """

    def __init__(self, network: Subject, image: nn.Module, objective: Objective, transforms: RandomTransforms | None = None,
                 optimizer: str = "adam", lr: float = 0.05, optimizer_kwargs: dict | None = None,
                 post_steps: Sequence[Callable] = (), tag: str = "image", loggers: Sequence = (), step_offset: int = 0,
                 seed: int = 0):
        super().__init__()
        self.automatic_optimization = False
        self.network = network.freeze()
        self.image = image
        self.objective = objective
        self.transforms = transforms
        self.optimizer_name, self.lr, self.optimizer_kwargs = optimizer, float(lr), dict(optimizer_kwargs or {})
        self.post_steps = list(post_steps)
        self.tag, self.ext_loggers, self.step_offset = tag, list(loggers), int(step_offset)
        self.history: list[float] = []
        self._generator = torch.Generator().manual_seed(int(seed))
        self.capture = LayerCapture(network, sorted(objective.layers - {INPUT}))

    # ----------------------------------------------------------------------------- frozen network
    def train(self, mode: bool = True):
        super().train(mode)
        self.network.eval()
        return self

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_name, self.image.parameters(), self.lr, **self.optimizer_kwargs)

    # ----------------------------------------------------------------------------- hooks
    def on_fit_start(self) -> None:
        self.capture.open()

    def on_fit_end(self) -> None:
        self.capture.close()

    def teardown(self, stage: str) -> None:
        self.capture.close()

    # ----------------------------------------------------------------------------- the step
    def loss(self) -> torch.Tensor:
        img = self.image()
        x = self.transforms(img) if self.transforms is not None else img
        acts = self.capture.run(x)
        acts[INPUT] = img
        return self.objective(acts)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        if self.transforms is not None and not self.transforms.identity:
            with torch.no_grad():
                b = self.image().shape[0]
            self.transforms.resample(b, self._generator)

        def closure():
            opt.zero_grad()
            loss = self.loss()
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure)
        step = len(self.history)
        with torch.no_grad():
            for fn in self.post_steps:
                fn(self.image, step)
            if hasattr(self.image, "project"):
                self.image.project()
        value = float(loss.detach())
        if value != value or value in (float("inf"), float("-inf")):
            raise FloatingPointError(f"non-finite objective at step {step}: lower viz.lr")
        self.history.append(value)
        self.log("objective", value, prog_bar=True, logger=False)
        log_metrics(self.ext_loggers, {f"{self.tag}/objective": value}, step=self.step_offset + step)

    @torch.no_grad()
    def result(self) -> torch.Tensor:
        """The current images ``(B, 3, H, W)`` in [0, 1], detached."""
        return self.image().detach().clamp(0, 1)


def make_trainer(steps: int, progress: bool = True, accelerator: str = "cpu", **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=int(steps), max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=progress, num_sanity_val_steps=0,
                      accelerator=accelerator, devices=1, **kwargs)


def run_optimization(module: ImageOptimization, steps: int, progress: bool = True, **trainer_kwargs) -> ImageOptimization:
    """Run ``steps`` optimization steps with a Lightning Trainer; hooks are removed whatever happens."""
    if int(steps) < 1:
        raise UserError(f"viz steps must be >= 1, got {steps}")
    trainer = make_trainer(steps, progress=progress, **trainer_kwargs)
    try:
        trainer.fit(module, train_dataloaders=DataLoader(Steps(steps), batch_size=None))
    finally:
        module.capture.close()
    if trainer.interrupted:
        raise UserError("image optimization was interrupted")
    return module
