"""A real 2-process DDP run on the CPU (gloo)."""

import json

import torch

from cnnlab.models import Classifier, load_module
from tests.conftest import run_cli


def test_ddp_two_cpu_processes_train_log_once_and_checkpoint_once(tmp_path, data_dir):
    run_dir = tmp_path / "ddp"
    proc = run_cli(
        "cnnlab.train", "trainer=ddp_cpu", "data=synthetic", "data.synthetic.n_train=800", "data.synthetic.n_test=200",
        "data.batch_size=16", "backbone.width=8", "trainer.max_epochs=2", "callbacks.progress_bar=null", "callbacks.model_summary=null",
        f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", timeout=900,
    )
    assert proc.stdout.count("CONFIG") == 1, "the config tree is printed by rank 0 only"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, "one W&B run for the whole job"
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["config_tree.log", "train.log"], "no per-rank log files"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best_epoch") and names[1] == "last.ckpt", names
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.2
    module = load_module(run_dir / "checkpoints" / "last.ckpt", expect=Classifier)
    assert module(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 800 images - 80 held out for validation = 360 per rank, 16 per step (last partial batch dropped) -> 22 steps x 2 epochs
    assert ckpt["global_step"] == 44
