"""ChannelsLast: weights held in NHWC change the layout, not the function, and checkpoints stay portable."""

import copy

import pytorch_lightning as pl
import torch

from cnnlab.callbacks import ChannelsLast
from cnnlab.data import ImageDataModule
from cnnlab.models import Classifier

BACKBONE = {"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 4}
OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}


def _model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(backbone=BACKBONE, num_classes=10, optimizer=OPTIMIZER, scheduler=None)


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def test_channels_last_keeps_the_function_of_the_network():
    model = _model().eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        after = nhwc(x)
    weights = _conv_weights(nhwc)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert any(not w.is_contiguous() for w in weights), "no weight changed layout (one input channel: the first conv's cannot)"
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_a_bf16_channels_last_fit_trains_and_its_weights_load_into_a_default_module(data_dir):
    dm = ImageDataModule(name="synthetic", data_dir=str(data_dir), color_space="L", batch_size=16, eval_batch_size=100,
                         augment=[], synthetic={"n_train": 200, "n_test": 100, "num_classes": 10, "seed": 0}, progress=False)
    model = _model()
    start = copy.deepcopy(model.state_dict())
    trainer = pl.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[ChannelsLast()], accelerator="cpu", precision="bf16-mixed")
    trainer.fit(model, datamodule=dm)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(model))
    trained = model.state_dict()
    assert all(t.dtype == start[k].dtype for k, t in trained.items()), "mixed precision keeps float32 master weights"
    assert any(not torch.equal(t, start[k]) for k, t in trained.items() if t.is_floating_point()), "the fit changed no weight"
    fresh = _model()
    fresh.load_state_dict(trained)  # a default-layout module takes the NHWC weights unchanged
    assert all(w.is_contiguous() for w in _conv_weights(fresh))
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)
