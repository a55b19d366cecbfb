"""Nothing lost, ever: run dirs that belong to one run, atomic checkpoints and results, resumes that fall back
to an intact checkpoint, and faults that never look like success. Real cnnlab-train processes; every test
that refuses or leaves a run alone checks, by checksums, that nothing in it changed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab import rundir
from cnnlab.config import PROJECT_ROOT
from cnnlab.errors import UserError
from cnnlab.io.checkpoints import checkpoint_problem
from cnnlab.io.files import write_text
from tests.conftest import mounted_tmpfs, run_cli

#: the issue's command `B`, without the progress bar and model summary (noise in captured output)
B = ["data=synthetic", "backbone.width=8", "trainer.max_epochs=1", "logger=csv", "callbacks.progress_bar=null",
     "callbacks.model_summary=null"]


def checksums(folder: Path, skip_logs: bool = False) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``folder`` (``skip_logs``: without Hydra's record and logs,
    which a resume rewrites by design)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not (skip_logs and (rel.startswith(".hydra/") or p.suffix == ".log" or p.name == rundir.LOCK_NAME)):
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def two_runs_into_one_dir(tmp_path_factory, data_dir) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """The issue's case: two runs started together into one new dir (seeds 0 and 1)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    cmds = [[sys.executable, "-m", "cnnlab.train", *B, f"seed={seed}", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
            for seed in (0, 1)]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    procs = [subprocess.Popen(c, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    done = [subprocess.CompletedProcess(p.args, p.wait(timeout=600), *p.communicate()) for p in procs]
    return run_dir, done


@pytest.fixture(scope="module")
def finished_run(two_runs_into_one_dir) -> Path:
    run_dir, procs = two_runs_into_one_dir
    assert [p.returncode for p in procs].count(0) == 1, [p.stderr[-2000:] for p in procs]
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture(scope="module")
def terminated_run(tmp_path_factory, data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """A run sent a real SIGTERM (as a scheduler would) at the start of its second epoch."""
    run_dir = tmp_path_factory.mktemp("terminated") / "run"
    proc = run_cli("cnnlab.train", *B, "trainer.max_epochs=2", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                   "+callbacks.interrupt._target_=cnnlab.callbacks.InterruptAfter", "+callbacks.interrupt.epochs=1",
                   "+callbacks.interrupt.signal=TERM", check=False)
    return run_dir, proc


# ------------------------------------------------------------------ 1. a run never overwrites another run
def test_a_new_run_into_a_finished_run_dir_is_refused_and_changes_nothing(finished_run, data_dir):
    before = checksums(finished_run)
    proc = run_cli("cnnlab.train", *B, "seed=1", f"paths.data_dir={data_dir}", f"hydra.run.dir={finished_run}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc)
    assert f"resume={finished_run}" in line and "fresh directory" in line, line
    assert checksums(finished_run) == before, "the finished run (its .hydra/overrides.yaml included) is untouched"


def test_of_two_runs_started_together_into_one_dir_one_runs_and_one_refuses(two_runs_into_one_dir):
    run_dir, procs = two_runs_into_one_dir
    assert sorted(p.returncode for p in procs) == [0, 2], [p.stderr[-2000:] for p in procs]
    winner, loser = sorted(procs, key=lambda p: p.returncode)
    (line,) = error_lines(loser)
    assert "in use by another run" in line or "already holds a run" in line, line
    seed = int(next(a for a in winner.args if a.startswith("seed=")).split("=")[1])
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["seed"] == seed, "the record is the winner's"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best_epoch000.ckpt", "last.ckpt"], "no -v1 copies"


def test_an_evaluation_into_a_train_run_dir_is_refused(finished_run, data_dir):
    before = checksums(finished_run)
    proc = run_cli("cnnlab.evaluate", f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}", "data=synthetic",
                   f"paths.data_dir={data_dir}", f"hydra.run.dir={finished_run}", check=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "already holds a run" in line and "resume=" not in line, "cnnlab-eval has no resume: only a fresh dir is offered"
    assert checksums(finished_run) == before


def test_a_run_dir_in_use_is_refused(tmp_path, data_dir):
    run_dir = tmp_path / "busy"
    rundir.claim(run_dir)  # held by this (test) process, exactly as a running cnnlab-train holds its dir
    try:
        write_text(run_dir / "results.txt", "the first run's results\n")
        before = checksums(run_dir)
        proc = run_cli("cnnlab.train", *B, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", check=False)
        assert proc.returncode == 2
        (line,) = error_lines(proc)
        assert f"in use by another run (pid {os.getpid()} " in line and "fresh directory" in line, line
        assert checksums(run_dir) == before
    finally:
        rundir.release(run_dir)


def test_the_lock_is_released_by_the_owner_exiting(tmp_path):
    """A killed run leaves no stale lock: the kernel drops it with the process."""
    run_dir = tmp_path / "killed"
    code = f"from cnnlab import rundir; from pathlib import Path; rundir.lock(Path({str(run_dir)!r})); import os; os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ}, check=False)
    assert "pid" in (run_dir / rundir.LOCK_NAME).read_text()
    rundir.lock(run_dir)  # would raise UserError if the dead owner still held it
    rundir.release(run_dir)


def test_a_failed_start_leaves_the_dir_free_for_the_corrected_command(tmp_path):
    """A mistake reported before any work leaves only Hydra's record and logs: rerunning into the dir is fine."""
    run_dir = tmp_path / "retry"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "train.log").write_text("error: ...\n")
    assert rundir.results_in(run_dir) == []
    rundir.claim(run_dir)
    rundir.release(run_dir)



def test_a_run_stopped_by_a_mistake_removes_only_the_dir_it_made_and_only_if_it_holds_no_result(tmp_path):
    """rundir.discard_if_unused: a run dir this process made that holds only Hydra's record and logs goes, with the
    parents made for it while they are empty; a dir that existed before the run, or that holds a result, stays."""
    from omegaconf import OmegaConf

    def started(run_dir: Path) -> Path:
        rundir.ClaimRunDir().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}, "job": {"name": "analyze"}}}))
        (run_dir / ".hydra").mkdir()
        (run_dir / "analyze.log").write_text("error: ...\n")
        return run_dir

    failed, finished = started(tmp_path / "analyze" / "runs" / "a"), started(tmp_path / "analyze" / "runs" / "b")
    (finished / "report.html").write_text("<html></html>")
    assert rundir.discard_if_unused(failed) and not failed.exists()
    assert (tmp_path / "analyze" / "runs").is_dir(), "a parent holding another run is kept"
    assert not rundir.discard_if_unused(finished) and (finished / "report.html").is_file()
    given = tmp_path / "given"
    given.mkdir()
    assert not rundir.discard_if_unused(started(given)) and (given / "analyze.log").is_file(), "it existed before the run"
    alone = started(tmp_path / "fresh" / "deep" / "run")
    assert rundir.discard_if_unused(alone) and not (tmp_path / "fresh").exists()
    for run_dir in (finished, given):
        rundir.release(run_dir)

# ------------------------------------------------------------------ 2. atomic writes, resume from an intact checkpoint
def test_atomic_dir_is_all_or_nothing(tmp_path):
    from cnnlab.io.files import atomic_dir

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "cache") as tmp:
            (tmp / "a.npy").write_bytes(b"1")
            raise RuntimeError("killed while writing")
    assert list(tmp_path.iterdir()) == [], "neither the result nor a temp dir exists"
    with atomic_dir(tmp_path / "cache") as tmp:
        (tmp / "a.npy").write_bytes(b"1")
    assert [p.name for p in tmp_path.iterdir()] == ["cache"] and (tmp_path / "cache" / "a.npy").read_bytes() == b"1"


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MB tmpfs (needs root and mount permission; skipped cleanly elsewhere)."""
    yield from mounted_tmpfs(tmp_path / "mnt", "1m")


def test_a_full_disk_leaves_every_checkpoint_intact_and_the_run_resumable(tiny_filesystem, data_dir):
    """The issue's case: with the run dir on a 1 MB filesystem the first checkpoint fits, the second does not."""
    run_dir = tiny_filesystem / "run"
    common = [*B, "trainer.max_epochs=2", f"paths.data_dir={data_dir}"]
    proc = run_cli("cnnlab.train", *common, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = error_lines(proc)
    assert "no space left" in line and f"resume={run_dir}" in line, line
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert ckpts and all(p.suffix == ".ckpt" for p in ckpts), f"no temp or partial file is left: {ckpts}"
    assert all(checkpoint_problem(p) is None for p in ckpts), "every checkpoint on disk is whole"
    assert not (run_dir / "metrics.json").exists()

    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_filesystem)], check=True)  # the user frees space
    proc = run_cli("cnnlab.train", f"resume={run_dir}")
    assert "resuming from best_epoch000.ckpt" in proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "val/acc", "test/acc"} <= set(metrics)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1


def test_resume_falls_back_from_a_damaged_last_checkpoint(terminated_run, tmp_path):
    src, _ = terminated_run
    run_dir = tmp_path / "damaged"
    shutil.copytree(src, run_dir)  # a moved run dir resumes too: its checkpoints record the old absolute paths
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what Lightning's non-atomic writer left on a full disk
    assert checkpoint_problem(last) is not None
    proc = run_cli("cnnlab.train", f"resume={run_dir}", "~callbacks.interrupt")
    notes = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "newest intact checkpoint" in ln]
    assert len(notes) == 1 and "last.ckpt is not usable" in notes[0] and "best_epoch000.ckpt" in notes[0], notes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "val/acc", "test/acc"} <= set(metrics)
    assert checkpoint_problem(last) is None, "training went on and wrote a whole last.ckpt"


def test_no_intact_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="no intact checkpoint"):
        rundir.resume_checkpoint(tmp_path)


# ------------------------------------------------------------------ 3. resuming a finished run never shrinks its metrics
def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(finished_run, run_dir)
    before = checksums(run_dir, skip_logs=True)
    proc = run_cli("cnnlab.train", f"resume={run_dir}")
    assert "is already finished" in proc.stdout + proc.stderr
    assert checksums(run_dir, skip_logs=True) == before, "metrics.json, checkpoints and trunk.pt are unchanged"
    assert "train/loss" in json.loads((run_dir / "metrics.json").read_text())


def test_a_resume_with_nothing_left_to_train_keeps_the_training_metrics(terminated_run, tmp_path):
    """A run stopped after its last epoch (say, killed while testing) is resumed: it only tests, and its
    metrics.json still has the training and validation metrics, carried in the checkpoint."""
    src, _ = terminated_run
    run_dir = tmp_path / "tested"
    shutil.copytree(src, run_dir)
    run_cli("cnnlab.train", f"resume={run_dir}", "~callbacks.interrupt", "trainer.max_epochs=1")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "val/acc", "val/loss", "test/acc"} <= set(metrics), sorted(metrics)


# ------------------------------------------------------------------ 6. SIGTERM is not success
def test_sigterm_exits_143_and_keeps_the_resumable_checkpoint(terminated_run):
    run_dir, proc = terminated_run
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert f"cnnlab-train resume={run_dir}" in proc.stderr
    assert not (run_dir / "metrics.json").exists(), "no half result is written"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] > 0


# ------------------------------------------------------------------ 7. on_corrupt with a cache
def _folder_with_a_corrupt_image(root: Path) -> Path:
    from PIL import Image

    for cls, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 10), colour).save(root / "train" / cls / f"{i}.png")
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    return root


def test_a_cached_dataset_still_reports_and_fails_on_its_corrupt_images(tmp_path, caplog):
    from cnnlab.data.cache import build_imagefolder_cache

    src = _folder_with_a_corrupt_image(tmp_path / "ds")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        first = build_imagefolder_cache(src, cache, 8, on_corrupt="skip", progress=False)
        caplog.clear()
        again = build_imagefolder_cache(src, cache, 8, on_corrupt="skip", progress=False)
    assert again.path == first.path, "the cache is reused"
    assert any("skipped 1 corrupt image" in r.getMessage() for r in caplog.records), "the cached run warns too"
    with pytest.raises(UserError, match="corrupt image train/cat/bad.jpg.*on_corrupt=skip"):
        build_imagefolder_cache(src, cache, 8, on_corrupt="fail", progress=False)


def test_an_image_added_to_a_class_directory_builds_a_new_cache(tmp_path):
    from PIL import Image

    from cnnlab.data.cache import build_imagefolder_cache

    src = _folder_with_a_corrupt_image(tmp_path / "ds")
    first = build_imagefolder_cache(src, tmp_path / "cache", 8, progress=False)
    Image.new("RGB", (12, 10), (0, 200, 0)).save(src / "train" / "dog" / "new.png")
    second = build_imagefolder_cache(src, tmp_path / "cache", 8, progress=False)
    assert second.path != first.path and len(second.splits["train"].labels) == len(first.splits["train"].labels) + 1


