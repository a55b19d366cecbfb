"""The classifier's fine-tune recipe: per-group learning rates, linear warm-up, and a head-only (LP-FT) phase."""

import math

import pytest
import pytorch_lightning as pl
import torch

from cnnlab.data import ImageDataModule
from cnnlab.errors import UserError
from cnnlab.models import Classifier

BACKBONE = {"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 4}
LR = 0.05


def _dm(data_dir):
    return ImageDataModule(name="synthetic", data_dir=str(data_dir), color_space="L", batch_size=16, eval_batch_size=100,
                           augment=[], synthetic={"n_train": 200, "n_test": 100, "num_classes": 10, "seed": 0}, progress=False)


def _fit(model, data_dir, steps, callback):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[callback],
                         accelerator="cpu")
    trainer.fit(model, datamodule=_dm(data_dir))


def _optimizer(momentum=0.9):
    return {"_target_": "torch.optim.SGD", "_partial_": True, "lr": LR, "momentum": momentum, "weight_decay": 5e-4}


class _RecordLR(pl.Callback):
    """The lr of every param group at the moment of each optimizer step, and after it."""

    def __init__(self):
        self.during, self.after = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.during.append({g.get("name", "all"): g["lr"] for g in optimizer.param_groups})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append({g.get("name", "all"): g["lr"] for g in trainer.optimizers[0].param_groups})


def test_defaults_keep_one_group_and_no_warmup(data_dir):
    model = Classifier(BACKBONE, optimizer=_optimizer())
    rec = _RecordLR()
    _fit(model, data_dir, 3, rec)
    assert rec.during == [{"all": LR}] * 3


@pytest.mark.parametrize("scheduler", [None, "cosine"])
def test_group_lrs_follow_the_multiplier_through_warmup(data_dir, scheduler):
    total, warm, mult = 8, 4, 0.1
    sched = None if scheduler is None else {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True,
                                            "T_max": total, "interval": "step"}
    model = Classifier(BACKBONE, optimizer=_optimizer(), scheduler=sched, trunk_lr_mult=mult, warmup_steps=warm)
    rec = _RecordLR()
    _fit(model, data_dir, total, rec)
    assert len(rec.during) == total
    for s, lrs in enumerate(rec.during):
        scheduled = LR if scheduler is None else LR * 0.5 * (1 + math.cos(math.pi * s / total))
        factor = min(1.0, (s + 1) / warm)
        assert lrs["head"] == pytest.approx(scheduled * factor, rel=1e-6), s
        assert lrs["trunk"] == pytest.approx(scheduled * factor * mult, rel=1e-6), s
    # outside the step the groups hold the scheduled lr: the scheduler never sees the warm-up factor
    for s, lrs in enumerate(rec.after):
        scheduled = LR if scheduler is None else LR * 0.5 * (1 + math.cos(math.pi * (s + 1) / total))
        assert lrs["head"] == pytest.approx(scheduled, rel=1e-6, abs=1e-12), s
        assert lrs["trunk"] == pytest.approx(scheduled * mult, rel=1e-6, abs=1e-12), s


class _Snapshots(pl.Callback):
    """The trunk's parameters, its BatchNorm buffers and the head after every optimizer step."""

    def __init__(self):
        self.trunk, self.buffers, self.head, self.bn_training = [], [], [], []

    @staticmethod
    def _copy(tensors):
        return [t.detach().clone() for t in tensors]

    def on_train_start(self, trainer, pl_module):
        self._record(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        bns = [m for m in pl_module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.bn_training.append(all(m.training for m in bns))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(pl_module)

    def _record(self, m):
        self.trunk.append(self._copy(m.backbone.parameters()))
        self.buffers.append(self._copy(b for n, b in m.backbone.named_buffers() if "running" in n))
        self.head.append(self._copy(m.head.parameters()))


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_head_only_phase_freezes_trunk_and_batchnorm_then_everything_trains(data_dir):
    head_only, total = 3, 6
    model = Classifier(BACKBONE, optimizer=_optimizer(), head_only_steps=head_only, trunk_lr_mult=0.5, warmup_steps=2)
    snap = _Snapshots()
    _fit(model, data_dir, total, snap)
    assert len(snap.trunk) == total + 1  # the start, then after each step
    for s in range(1, head_only + 1):
        assert _same(snap.trunk[s], snap.trunk[0]), f"trunk weights moved during head-only step {s}"
        assert _same(snap.buffers[s], snap.buffers[0]), f"BatchNorm running statistics moved during head-only step {s}"
        assert not _same(snap.head[s], snap.head[s - 1]), "the head trains from the first step"
    assert snap.bn_training == [False] * head_only + [True] * (total - head_only)
    for s in range(head_only + 1, total + 1):
        assert not _same(snap.trunk[s], snap.trunk[s - 1]), f"the trunk must train after the head-only phase (step {s})"
        assert not _same(snap.buffers[s], snap.buffers[s - 1])
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_negative_recipe_values_are_one_line_errors():
    with pytest.raises(UserError, match="must be >= 0"):
        Classifier(BACKBONE, warmup_steps=-1)
