"""``cnnlab-visualize`` end to end on the real CIFAR-10 archive: a real checkpoint, real subprocesses, W&B offline."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def cifar_ckpt(cifar_dm_kwargs, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread beats two contended ones
    try:
        return _train_tiny(cifar_dm_kwargs, tmp_path_factory)
    finally:
        torch.set_num_threads(before)


def _train_tiny(cifar_dm_kwargs, tmp_path_factory):
    """A small classifier trained for a few steps on real CIFAR-10, saved as a cnnlab checkpoint."""
    from cnnlab.data import ImageDataModule
    from cnnlab.models import Classifier

    pl.seed_everything(0, verbose=False)
    dm = ImageDataModule(**cifar_dm_kwargs, batch_size=64, train_limit=640, augment=[])
    model = Classifier(backbone={"_target_": "cnnlab.backbones.VGGCifar", "width": 8}, num_classes=10,
                       optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01})
    trainer = pl.Trainer(max_steps=10, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("viz_ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_adversarial_run_writes_images_metrics_and_wandb(cifar_ckpt, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("cnnlab.visualize", "viz=adversarial", f"network.checkpoint={cifar_ckpt}", "viz.count=4", "viz.md_steps=5",
            "viz.md_search=1", "viz.curve_count=20", "viz.curve_steps=3", "viz.restarts=2", "viz.minimal_search=2",
            "progress=false", "threads=1", f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}", timeout=300)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["pgd_acc"] <= metrics["clean_acc"] + 1e-9
    assert metrics["max_linf_pgd"] <= 8 / 255 + 1e-6
    assert (run_dir / "images" / "adversarial.png").stat().st_size > 1000
    curve = [metrics[f"robust/pgd/eps{e}"] for e in (0, 1, 2, 4, 8, 16)]
    assert all(a >= b for a, b in zip(curve, curve[1:])) and metrics["curve_n"] == 20
    assert (run_dir / "images" / "robustness_curve.png").stat().st_size > 1000
    assert "| PGD-3, 2 restart(s) | 8 |" in (run_dir / "robustness.md").read_text()
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert list((run_dir / "wandb").glob("offline-run-*/files/media/images/viz/adversarial_*.png")), "grid not sent to W&B"
    assert list((run_dir / "wandb").glob("offline-run-*/files/media/images/viz/robustness_curve_*.png")), "curve not sent to W&B"


def test_bad_input_exits_2_with_one_line(cifar_ckpt, data_dir, tmp_path):
    proc = run_cli("cnnlab.visualize", "viz.classes=[zebra]", f"network.checkpoint={cifar_ckpt}", "logger=none", "progress=false", "threads=1",
                   f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={data_dir}", check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown class 'zebra'" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("visualize", overrides=list(overrides))


@pytest.mark.parametrize("override,message", [
    ("viz=adversarial viz.eps=8", "outside the pixel range"),
    ("viz=adversarial viz.curve_eps=[0.01,2]", "outside the pixel range"),
    ("viz=featviz viz.image=wavelet", "pixel, fourier or maco"),
    ("viz=inversion viz.layers=[conv9_1]", "unknown layer 'conv9_1'"),
    ("viz=style viz.style_image={notes}", "not a readable image"),
])
def test_bad_inputs_are_user_errors(cifar_ckpt, data_dir, tmp_path, override, message):
    from cnnlab.errors import UserError
    from cnnlab.visualize.cli import run

    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not an image")
    cfg = _compose(*override.format(notes=notes).split(), f"network.checkpoint={cifar_ckpt}", "logger=none", "progress=false",
                   f"paths.output_dir={tmp_path / 'run'}", f"paths.data_dir={data_dir}")
    with pytest.raises(UserError, match=message) as info:
        run(cfg)
    assert "\n" not in str(info.value)
