"""The catalogue of user mistakes: each one exits 2 with exactly one ``error:`` line, before any work, and leaves
an existing run untouched (checksums of every file before and after). Real processes through the one entry
layer (``cnnlab.cli``); docs/reliability.md "User mistakes" lists what each case does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cnnlab.config import PROJECT_ROOT
from tests.conftest import run_cli

#: a small synthetic run (issue 12's ``B``)
B = ["data=synthetic", "backbone.width=8", "trainer.max_epochs=1", "logger=csv", "data.synthetic.n_train=300",
     "data.synthetic.n_test=100", "callbacks.progress_bar=null", "callbacks.model_summary=null"]


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def options(group: str) -> str:
    """The options of a config group as the error line names them."""
    return ", ".join(sorted(p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml")))


def error_lines(proc) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """A finished run, started in a broken W&B environment: an empty ``WANDB_SILENT`` and a bad API key with no
    server to check it. ``(run dir, process)``."""
    run_dir = tmp_path_factory.mktemp("reliability") / "finished"
    proc = run_cli("cnnlab.train", *B, "logger=wandb", "logger.wandb.mode=online", "logger.wandb.init_timeout=2",
                   f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", check=False, unset=("WANDB_MODE",),
                   env={"WANDB_SILENT": "", "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"})
    return run_dir, proc


def test_a_broken_wandb_environment_does_not_stop_training(finished):
    """Training runs to its end, offline; the wait for the server is the configured ``init_timeout`` (2 s here):
    W&B's own wait (90 s) never starts, since no online session is opened for a server that gives no answer."""
    from cnnlab.rundir import epochs_done

    run_dir, proc = finished
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ignoring the empty environment variable WANDB_SILENT" in proc.stdout + proc.stderr
    failure = [ln for ln in proc.stderr.splitlines() if "W&B failed to start" in ln]
    assert len(failure) == 1 and "continuing offline" in failure[0], proc.stderr[-3000:]
    assert "http://127.0.0.1:9 gave no answer within 2 s" in failure[0], failure[0]
    assert epochs_done(run_dir / "checkpoints" / "last.ckpt")[0] == 1, "training did not finish its epoch"
    assert (run_dir / "metrics.json").is_file() and list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


TRAIN_MISTAKES = {
    # value mistakes: caught by cnnlab.validation before the run dir is made (no torch import)
    "label_fraction_above_1": (["data.label_fraction=1.5"], "error: data.label_fraction=1.5 is not valid"),
    "label_fraction_0": (["data.label_fraction=0"], "error: data.label_fraction=0 is not valid"),
    "val_fraction_above_1": (["data.val_fraction=1.5"], "error: data.val_fraction=1.5 is not valid"),
    "max_epochs_not_int": (["trainer.max_epochs=abc"], "error: trainer.max_epochs=abc is not valid: trainer.max_epochs must be an integer"),
    "lr_not_number": (["model.optimizer.lr=abc"], "error: model.optimizer.lr=abc is not valid: model.optimizer.lr must be a number > 0"),
    "seed_not_int": (["seed=abc"], "error: seed=abc is not valid: seed must be an integer"),
    "batch_size_0": (["data.batch_size=0"], "error: data.batch_size=0 is not valid: data.batch_size must be an integer >= 1"),
    # a resolver's own UserError
    "color_space_unknown": (["data.color_space=xyz"], "error: unknown colour space 'xyz': choose one of"),
    # config-system mistakes, named with what can be chosen
    "group_option_unknown": (["backbone=nope"], f"error: backbone=nope is not an option: choose one of {options('backbone')} (conf/backbone/)"),
    "key_unknown": (["model.lrr=0.1"], "error: model.lrr is not a key of model: choose from backbone, compile, dropout"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_MISTAKES))
def test_train_mistake_is_one_line_exit_2_and_touches_nothing(case, finished, tmp_path):
    """Aimed at the finished run's own dir, a config mistake changes none of its files."""
    overrides, message = TRAIN_MISTAKES[case]
    run_dir, _ = finished
    before = checksums(run_dir)
    proc = run_cli("cnnlab.train", *B, *overrides, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2, (case, proc.stderr[-3000:])
    assert len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith(message), (case, error_lines(proc))
    assert checksums(run_dir) == before


def test_mistakes_aimed_at_an_existing_run_leave_it_unchanged(finished, tmp_path):
    run_dir, _ = finished
    before = checksums(run_dir)
    cases = [
        ([*B, "seed=abc", f"hydra.run.dir={run_dir}"], "error: seed=abc is not valid"),
        ([f"resume={run_dir}", "model.optimizer.lr=0.5"], "error: cannot change model.optimizer.lr=0.5 when resuming"),
    ]
    for args, message in cases:
        proc = run_cli("cnnlab.train", *args, check=False)
        assert proc.returncode == 2 and len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith(message), error_lines(proc)
    assert checksums(run_dir) == before


def test_run_dir_that_is_a_file_or_unwritable(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    cases = [
        (a_file, f"error: hydra.run.dir={a_file} is a file"),
        (a_file / "run", f"error: cannot create the run directory {a_file / 'run'}: {a_file} is a file"),
        # /proc takes no new directories, even for root (chmod would not stop root)
        (Path("/proc/1/cnnlab-run"), "error: cannot write the run directory /proc/1/cnnlab-run"),
    ]
    for target, message in cases:
        proc = run_cli("cnnlab.train", *B, f"hydra.run.dir={target}", check=False)
        assert proc.returncode == 2 and len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith(message), error_lines(proc)
    assert a_file.read_text() == "keep me"


OTHER_MISTAKES = [
    ("cnnlab.evaluate", ["ckpt_path={dir}"], "error: ckpt_path={dir} is a directory: pass the checkpoint file in it"),
    ("cnnlab.evaluate", [], "error: ckpt_path is not set: pass ckpt_path=<value>"),
    ("cnnlab.evaluate", ["ckpt_path={dir}/last.ckpt", "data.label_fraction=1.5"], "error: data.label_fraction=1.5 is not valid"),
    ("cnnlab.analyze", ["ckpt={dir}/trunk.pt", "analysis=[nope]"],
     f"error: analysis=nope is not an option: choose one of {options('analysis')} (conf/analysis/)"),
    ("cnnlab.analyze", ["ckpt={dir}/trunk.pt", "data.label_fraction=1.5"], "error: data.label_fraction=1.5 is not valid"),
    ("cnnlab.visualize", ["seed=abc"], "error: seed=abc is not valid"),
    ("cnnlab.gap", ["budget=nope"], f"error: budget=nope is not an option: choose one of {options('budget')} (conf/budget/)"),
    ("cnnlab.gap", ["budget=smoke", "seeds=[0,abc]"], "error: seeds=[0, 'abc'] is not valid: seeds must be a list of integers >= 0"),
]


@pytest.mark.parametrize("module,args,message", OTHER_MISTAKES, ids=[f"{m}-{' '.join(a) or 'no-args'}" for m, a, _ in OTHER_MISTAKES])
def test_other_commands_mistakes_are_one_line_before_the_run_dir(module, args, message, tmp_path):
    run_dir = tmp_path / "run"
    args = [a.format(dir=tmp_path) for a in args]
    proc = run_cli(module, *args, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(error_lines(proc)) == 1 and error_lines(proc)[0].startswith(message.format(dir=tmp_path)), error_lines(proc)
    assert not run_dir.exists()


def test_a_multirun_with_an_unknown_option_is_one_line_before_the_sweep_dir(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("cnnlab.train", "-m", *B, "seed=0,1", "backbone=nope", f"hydra.sweep.dir={sweep_dir}", check=False)
    assert proc.returncode == 2
    assert error_lines(proc) == [f"error: backbone=nope is not an option: choose one of {options('backbone')} (conf/backbone/)"]
    assert not sweep_dir.exists()


@pytest.mark.parametrize("traceback", ["", "1"])
def test_a_user_error_raised_while_the_data_module_is_built_is_one_line(traceback, tmp_path):
    """Inside the Hydra job, through Hydra's InstantiationException; ``CNNLAB_TRACEBACK=1`` adds the traceback."""
    run_dir = tmp_path / "run"
    proc = run_cli("cnnlab.train", *B, "data.augment=[nope]", f"hydra.run.dir={run_dir}", env={"CNNLAB_TRACEBACK": traceback}, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_lines(proc) == ["error: unknown augmentation(s) ['nope']: choose from ['crop', 'flip', 'jitter', 'resized_crop'] (data.augment)"]
    assert ("Traceback (most recent call last)" in proc.stderr) == bool(traceback)
    assert not (run_dir / "checkpoints").exists()


def test_cnnlab_traceback_shows_the_traceback_before_hydra_too(tmp_path):
    proc = run_cli("cnnlab.train", *B, "data.label_fraction=1.5", f"hydra.run.dir={tmp_path / 'run'}", env={"CNNLAB_TRACEBACK": "1"}, check=False)
    assert proc.returncode == 2 and len(error_lines(proc)) == 1
    assert "Traceback (most recent call last)" in proc.stderr and "cnnlab.errors.UserError" in proc.stderr


def test_colorize_mistake_goes_through_the_same_layer(tmp_path):
    proc = run_cli("cnnlab.colorize", str(tmp_path / "missing.jpg"), "--ckpt", "x.ckpt", check=False, env={"CNNLAB_TRACEBACK": "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert error_lines(proc) == [f"error: {tmp_path / 'missing.jpg'} does not exist: pass an image file or a folder of images"]


def test_value_rules_read_types_and_bounds_as_stated():
    from omegaconf import OmegaConf

    from cnnlab.errors import UserError
    from cnnlab.validation import FRACTION, POSITIVE_INT, Rule, check_values

    assert POSITIVE_INT.accepts(1) and not any(POSITIVE_INT.accepts(v) for v in (0, 1.0, True, "1", None))
    assert FRACTION.accepts(1) and FRACTION.accepts(0.5) and not FRACTION.accepts(0) and not FRACTION.accepts(1.01)
    assert Rule(int, nullable=True).accepts(None) and FRACTION.describe() == "a number in (0, 1]"
    cfg = OmegaConf.create({"seed": "${x}", "x": 3, "data": {"batch_size": 8}})
    check_values(cfg)  # interpolations are read resolved; keys the config lacks are skipped
    cfg.data.batch_size = 0
    with pytest.raises(UserError, match=r"^data.batch_size=0 is not valid: data.batch_size must be an integer >= 1$"):
        check_values(cfg)


def test_a_mistake_found_inside_the_job_is_one_console_line_and_a_log_record(tmp_path):
    """Found once the run dir exists (the data module's own check): one `error:` line on the console, the same
    record in the run's log file, exit 2."""
    proc = run_cli("cnnlab.train", "data=imagefolder", "logger=none", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    console = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error" in ln.lower()]
    assert console == ["error: data=imagefolder needs data.source=<ImageFolder directory or .tar.gz/.zip archive>"], console
    assert "[ERROR] - error: data=imagefolder needs data.source" in (tmp_path / "train.log").read_text()
