"""Sweep and cluster configs compose into what their tools expect (no cluster here to run them on)."""

import subprocess
import sys

import yaml

from cnnlab.config import PROJECT_ROOT


def _hydra_cfg(*overrides: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cnnlab.train", *overrides, "--cfg", "hydra"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["hydra"]


def test_slurm_launcher_config_composes():
    launcher = _hydra_cfg("hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.partition=gpu")["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["tasks_per_node"] == "${hydra.launcher.gpus_per_node}"  # one task per GPU


def test_optuna_preset_composes_with_sqlite_storage(tmp_path):
    sweeper = _hydra_cfg("hparams_search=optuna", f"hydra.sweep.dir={tmp_path}")["sweeper"]
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["max_failure_rate"] == 1.0
    assert "optuna.db" in sweeper["storage"]


def test_wandb_sweep_file_drives_the_hydra_entry_point():
    spec = yaml.safe_load((PROJECT_ROOT / "scripts" / "wandb_sweep.yaml").read_text())
    assert (PROJECT_ROOT / spec["program"]).is_file()
    assert spec["command"][-1] == "${args_no_hyphens}"
    # every swept key must be a valid override of the composed training config
    proc = subprocess.run([sys.executable, "-m", "cnnlab.train", *[f"{k}=1" for k in spec["parameters"]], "--cfg", "job"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
