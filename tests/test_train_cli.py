"""cnnlab-train as a user runs it: real processes, real Hydra, offline W&B."""

import json
import sqlite3

import pytest
import torch
import yaml

from tests.conftest import run_cli

TINY = ["data=synthetic", "data.synthetic.n_train=300", "data.synthetic.n_test=100", "backbone.width=4",
        "callbacks.progress_bar=null", "callbacks.model_summary=null"]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, data_dir):
    common = [*TINY, "debug=deterministic", "trainer.max_epochs=3", "test=false", f"paths.data_dir={data_dir}"]
    full = tmp_path / "full"
    run_cli("cnnlab.train", *common, f"hydra.run.dir={full}")

    part = tmp_path / "part"
    proc = run_cli("cnnlab.train", *common, f"hydra.run.dir={part}", "+callbacks.interrupt._target_=cnnlab.callbacks.InterruptAfter",
                   "+callbacks.interrupt.epochs=1", check=False)
    assert proc.returncode == 1
    assert f"cnnlab-train resume={part}" in proc.stderr
    assert not (part / "metrics.json").exists(), "no half result is written"
    wandb_id = (part / "wandb_id.txt").read_text()

    run_cli("cnnlab.train", f"resume={part}", "~callbacks.interrupt")
    a, b = _metrics(full), _metrics(part)
    for key in ("val/acc", "val/loss", "train/loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert (part / "wandb_id.txt").read_text() == wandb_id
    history = [json.loads((d / "val_history.json").read_text()) for d in (full, part)]
    assert [e["step"] for e in history[1]] == [e["step"] for e in history[0]] and len(history[0]) == 3, \
        "one entry per validation, the interrupted part's kept and none repeated"
    assert history[1][-1]["val/acc"] == pytest.approx(history[0][-1]["val/acc"], abs=1e-6) == pytest.approx(a["val/acc"], abs=1e-6)
    runs = sorted((part / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(wandb_id) for r in runs), "the resumed run continues the same W&B run id"


def test_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path, data_dir):
    run_dir = tmp_path / "nan0"
    proc = run_cli("cnnlab.train", *TINY, "trainer.max_epochs=2", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                   "logger=none", "+callbacks.poison._target_=tests.helpers.PoisonWeights", "+callbacks.poison.epoch=0", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no checkpoint was written yet" in errors[0], proc.stderr[-2000:]
    assert not list(run_dir.glob("checkpoints/*.ckpt"))


def test_last_checkpoint_is_the_last_epoch_when_the_best_is_earlier(tmp_path, data_dir):
    run_dir = tmp_path / "stale"
    # monitoring the epoch number downwards makes epoch 0 the best for good
    run_cli("cnnlab.train", *TINY, "trainer.max_epochs=3", "monitor=epoch", "monitor_mode=min", "test=false", "logger=none",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best_epoch000.ckpt", "last.ckpt"], names
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] > 0


def test_resume_of_a_non_run_dir_is_one_line(tmp_path):
    proc = run_cli("cnnlab.train", f"resume={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: cannot resume {tmp_path}: it needs .hydra/overrides.yaml and a checkpoint in "
                                                "checkpoints/; pass the run directory of an earlier cnnlab-train run"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    run_dir = tmp_path / "nan"
    proc = run_cli("cnnlab.train", *TINY, "trainer.max_epochs=3", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                   "logger=none", "+callbacks.poison._target_=tests.helpers.PoisonWeights", "+callbacks.poison.epoch=1", check=False)
    assert proc.returncode == 2
    assert "non-finite loss" in proc.stderr and "lower model.optimizer.lr" in proc.stderr
    assert f"the newest good checkpoint is kept: {run_dir / 'checkpoints'}" in proc.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    "overrides,message,config_only",
    [
        (["data=imagenet_nope"],
         "error: data=imagenet_nope is not an option: choose one of camvid, cifar10, imagefolder, stl10, synthetic, tinyimagenet, voc", True),
        # the data source is looked up by the data module, once the run dir exists
        (["data=imagefolder"], "error: data=imagefolder needs data.source=<ImageFolder directory", False),
        (["trainer.max_epochs=many"], "error: trainer.max_epochs=many is not valid: trainer.max_epochs must be an integer", True),
        (["data.label_fraction=0"], "error: data.label_fraction=0 is not valid: data.label_fraction must be a number in (0, 1]", True),
    ],
)
def test_config_mistakes_fail_before_any_work(tmp_path, overrides, message, config_only):
    """A user mistake, in the config system's terms or ours, is one `error:` line and exit 2; a mistake in the
    config alone is found before the run dir is made."""
    run_dir = tmp_path / "bad"
    proc = run_cli("cnnlab.train", *overrides, "logger=none", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert not (run_dir / "checkpoints").exists()
    assert not (config_only and run_dir.exists())


def test_multirun_with_ddp_is_refused(tmp_path):
    proc = run_cli("cnnlab.train", "-m", "trainer=ddp_cpu", "seed=0,1", "logger=none", "data=synthetic",
                   f"hydra.sweep.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "Hydra multirun cannot drive trainer.strategy=ddp" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*/checkpoints"))


def test_optuna_sweep_survives_failed_trials(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    # the project's Optuna preset, plus a parameter whose second choice makes a trial fail
    extra = tmp_path / "conf" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "optuna_failing.yaml").write_text(
        "# @package _global_\ndefaults:\n  - optuna\nhydra:\n  sweeper:\n    params:\n      model.dropout: choice(0.0, 2.0)\n"
    )
    run_cli(
        "cnnlab.train", "-m", "--config-dir", str(tmp_path / "conf"), "hparams_search=optuna_failing", *TINY, "trainer.max_epochs=1",
        "logger=none", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.n_startup_trials=10",
    )
    con = sqlite3.connect(sweep / "optuna.db")
    rows = con.execute(
        "select t.state, p.param_value from trials t join trial_params p on p.trial_id = t.trial_id where p.param_name = 'model.dropout'"
    ).fetchall()
    assert len(rows) == 4, "every trial ran"
    # choice() is stored as an index: 1 is dropout=2.0, which nn.Dropout rejects
    assert {state for state, idx in rows if idx == 1} == {"FAIL"} and {state for state, idx in rows if idx == 0} == {"COMPLETE"}
    assert {idx for _, idx in rows} == {0.0, 1.0}, "both kinds of trial were sampled"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.dropout"] == 0.0 and 0.0 < best["best_value"] <= 1.0


def test_wandb_failure_falls_back_to_offline(tmp_path, data_dir):
    run_dir = tmp_path / "wb"
    proc = run_cli("cnnlab.train", *TINY, "trainer.max_epochs=1", "logger.wandb.mode=online", f"paths.data_dir={data_dir}",
                   f"hydra.run.dir={run_dir}", unset=("WANDB_MODE", "WANDB_API_KEY"), env={"NETRC": str(tmp_path / "no-netrc")})
    assert "W&B failed to start" in proc.stderr and "continuing offline" in proc.stderr
    assert list((run_dir / "wandb").glob("offline-run-*")), "the run is logged offline instead"
    assert (run_dir / "metrics.json").is_file(), "training went on"


@pytest.mark.integration
@pytest.mark.slow
def test_supervised_training_on_real_cifar10_beats_chance(tmp_path, cifar_archive, data_dir):
    run_dir = tmp_path / "cifar"
    run_cli("cnnlab.train", "data=cifar10", f"data.source={cifar_archive}", "data.train_limit=5000", "data.eval_batch_size=1000",
            "backbone.width=16", "trainer.max_epochs=2", "callbacks.progress_bar=null", "callbacks.model_summary=null", "logger=csv",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.35, metrics  # chance is 0.10
    assert metrics["test/acc_top5"] > 0.8, metrics
