"""cnnlab-train end to end on synthetic data."""

import json

import torch

from cnnlab.backbones import load_trunk
from tests.conftest import run_cli


def test_train_synthetic_writes_run_dir(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_cli("cnnlab.train", "data=synthetic", "backbone.width=8", "trainer.max_epochs=2", "callbacks.progress_bar=null",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5  # 10 classes: chance is 0.1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "config_tree.log").read_text().count("backbone") >= 1
    backbone, meta = load_trunk(run_dir / "trunk.pt")
    assert meta["method"] == "supervised" and meta["color_space"] == "rgb"
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    assert list((run_dir / "wandb").glob("offline-run-*")), "an offline W&B run should be written in the run dir"
    from cnnlab.models import Classifier, load_module

    module = load_module(run_dir / "checkpoints" / "last.ckpt", expect=Classifier)
    assert not module.training
    assert module.data_info["color_space"] == "rgb" and len(module.data_info["classes"]) == 10
    assert module(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_eval_entry_point_reproduces_test_accuracy(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run_cli("cnnlab.train", "data=synthetic", "data.synthetic.n_train=600", "data.synthetic.n_test=200", "backbone.width=8",
            "trainer.max_epochs=2", "callbacks.progress_bar=null", "logger=none", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    trained = json.loads((run_dir / "metrics.json").read_text())
    ckpt = next((run_dir / "checkpoints").glob("best_*.ckpt"))
    eval_dir = tmp_path / "eval"
    # no data arguments: the synthetic data (600 / 200 images) is rebuilt from the checkpoint's saved data settings
    run_cli("cnnlab.evaluate", f"ckpt_path={ckpt}", f"paths.data_dir={data_dir}", f"hydra.run.dir={eval_dir}")
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/acc"] == trained["test/acc"]
    proc = run_cli("cnnlab.evaluate", f"ckpt_path={run_dir / 'trunk.pt'}", f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert proc.returncode == 2 and "is not a cnnlab Lightning checkpoint (a trunk file" in proc.stderr


def test_debug_fast_dev_run_preset(tmp_path, data_dir):
    run_dir = tmp_path / "fdr"
    proc = run_cli("cnnlab.train", "debug=fast_dev_run", "data=synthetic", "backbone.width=4", "callbacks.progress_bar=null",
                   f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert "Running in `fast_dev_run` mode" in proc.stdout + proc.stderr
    assert not (run_dir / "wandb").exists(), "the debug preset logs nowhere"
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())
