"""The gap's arms on other launchers (cnnlab.gap.launch): a pool of worker processes and submitit jobs give the same
arm keys and numbers as the in-process run, a worker killed mid-arm loses only that arm (the rerun redoes it and
nothing else), and every arm is a W&B run in the gap run's group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.config import PROJECT_ROOT
from tests.conftest import run_cli

# every arm kind on the smoke data, small (the classification task only): 2 trunks (random, trained), 2 probes,
# 1 candidate + 1 test arm each
PLAN = ("budget=smoke", "~tasks.seg", "inits=[random,colorization]", "label_subsets=[0]", "~finetune.variants.lpft", "finetune.lrs=[0.05]",
        "threads=1")
N_ARMS = 8
#: what an arm leaves that holds numbers
RESULTS = ("probe.json", "candidate.json", "choice.json", "metrics.json")


def _keys(run: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["key"] for p in (run / "arms").glob("*/gap_arm.json")}


def _outputs(run: Path, arms) -> dict:
    """The arms' result files (every number the report is computed from), without the seconds they took."""
    out = {}
    for a in arms:
        for f in RESULTS:
            if (run / "arms" / a / f).is_file():
                out[a, f] = json.loads((run / "arms" / a / f).read_text())
                out[a, f].pop("timing", None)
    return out


def _stamps(run: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run / "arms").glob("*/gap_arm.json")}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, data_dir) -> dict:
    """The plan run in-process, one arm after another (the reference): its arm keys and numbers, and the run dir
    every test of this module runs into. The same path each time: a fine-tune arm's key includes its trunk's
    absolute path (``model.backbone.path``), so only runs in one place can be compared key for key."""
    out = tmp_path_factory.mktemp("launch") / "gap"
    run_cli("cnnlab.gap", *PLAN, "launcher=local", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}")
    _check_wandb_group(out)
    ref = {"keys": _keys(out), "outputs": _outputs(out, _keys(out)), "out": out}
    shutil.rmtree(out)
    return ref


def _wandb_run_record(path: Path) -> dict:
    """The run record (group, job type, name) of an offline W&B run file, ``run-<id>.wandb``: a LevelDB-style log
    (a 7-byte W&B header, then 32 KiB blocks of records with a 7-byte header each) of ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        block_left = 32768 - pos % 32768
        if block_left < 7:  # a block's tail too short for a header is padding
            pos += block_left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunk)
            chunk = b""
            if rec.WhichOneof("record_type") == "run":
                return {"group": rec.run.run_group, "job_type": rec.run.job_type, "name": rec.run.display_name}
    raise AssertionError(f"no run record in {path}")


def _check_wandb_group(run: Path) -> None:
    """Every arm (and the report) is an offline W&B run in the group gap_<run dir name>, job_type its kind."""
    for marker in (run / "arms").glob("*/gap_arm.json"):
        kind = json.loads(marker.read_text())["kind"]
        files = list(marker.parent.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, f"arm {marker.parent.name} is one W&B run"
        rec = _wandb_run_record(files[0])
        assert rec["group"] == f"gap_{run.name}" and rec["job_type"] == kind, (marker.parent.name, rec)
    report = list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert report and _wandb_run_record(report[0])["group"] == f"gap_{run.name}", "the report joins the arms' group"


@pytest.mark.slow
def test_pool_equals_sequential_and_a_killed_worker_loses_only_its_arm(sequential, tmp_path, data_dir):
    """Two 1-thread workers; the colorization pretraining's worker is killed mid-arm. The command fails in one
    line, the rerun runs what is missing and nothing finished twice, and then every arm key and number equals
    the in-process run's; every arm is a W&B run in the gap run's group."""
    out = sequential["out"]
    shutil.rmtree(out, ignore_errors=True)
    args = [*PLAN, f"paths.data_dir={data_dir}", f"hydra.run.dir={out}", "launcher=pool", "launcher.workers=2"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.gap", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arm = out / "arms" / "colorization_seed0"
    lock = out / "jobs" / arm.name / ".cnnlab.lock"
    deadline = time.time() + 300
    while not ((arm / "arm.log").is_file() and lock.is_file() and lock.read_text().startswith("pid")):
        assert proc.poll() is None and time.time() < deadline, "the pretraining arm never started"
        time.sleep(0.05)
    os.kill(int(lock.read_text().split()[1]), signal.SIGKILL)
    assert not (arm / "gap_arm.json").exists(), "killed mid-arm"
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert "error: arm " in stderr and "colorization_seed0" in stderr and "rerun the same command to resume" in stderr
    first = _stamps(out)
    assert "colorization_seed0" not in first and len(first) < N_ARMS
    assert not (out / "gap_results.json").exists(), "no report from a run with an arm missing"

    again = run_cli("cnnlab.gap", *args)
    assert "pool of 2 worker(s) on CPU, 1 thread(s) each" in again.stdout
    after = _stamps(out)
    assert {k for k in first if after[k] != first[k]} == set(), "no arm finished before the kill ran again"
    assert f"arms: ran {N_ARMS - len(first)}, reused {len(first)}" in again.stdout
    assert _keys(out) == sequential["keys"] and len(sequential["keys"]) == N_ARMS
    assert _outputs(out, _keys(out)) == sequential["outputs"], "the same numbers: same seeds, one thread in every process"
    _check_wandb_group(out)
    shutil.rmtree(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" if Path(f"/proc/{pid}").exists() else True


@pytest.mark.slow
def test_pool_workers_end_when_the_gap_process_is_killed(tmp_path, data_dir):
    """SIGKILL the gap process while a worker runs an arm: the worker ends within seconds instead of computing on as
    an orphan beside the rerun's workers, and its unfinished arm has no marker (the rerun runs it again)."""
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # a pretraining far longer than the wait below: a worker that only stopped at the end of its arm would fail
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.gap", *PLAN, "pretrain.steps=20000", f"paths.data_dir={data_dir}",
                             f"hydra.run.dir={out}", "launcher=pool", "launcher.workers=2"], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / "jobs" / "colorization_seed0" / ".cnnlab.lock"
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text().startswith("pid")):
        assert proc.poll() is None and time.time() < deadline, "the pretraining arm never started"
        time.sleep(0.05)
    worker = int(lock.read_text().split()[1])
    assert worker != proc.pid and _alive(worker)
    proc.kill()
    proc.wait()
    try:
        deadline = time.time() + 30
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived the gap process"
        assert not (out / "arms" / "colorization_seed0" / "gap_arm.json").exists()
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.slow
def test_submitit_path_runs_the_plan_as_jobs(sequential, data_dir):
    """The SLURM launcher's path through submitit's local executor: one process per arm (so only the random init's
    arms: a trunk, its probe, a fine-tune candidate and its test), logs in jobs/<arm>/, the same keys and files."""
    out = sequential["out"]
    shutil.rmtree(out, ignore_errors=True)
    run_cli("cnnlab.gap", *PLAN, "inits=[random]", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}", "launcher=slurm",
            "launcher.cluster=local", "launcher.max_jobs=2", "launcher.timeout_min=20")
    keys = _keys(out)
    assert len(keys) == 4 and keys == {a: k for a, k in sequential["keys"].items() if a in keys}
    assert _outputs(out, keys) == {k: v for k, v in sequential["outputs"].items() if k[0] in keys}
    for arm in keys:
        assert list((out / "jobs" / arm).glob("*_log.out")), f"submitit's log of {arm} is in jobs/{arm}/"
    shutil.rmtree(out)


@pytest.mark.slow
def test_a_w_and_b_record_cut_short_is_written_again_and_its_arm_is_not_rerun(tmp_path, data_dir):
    """A worker ended (a broken pool ends them all) after its arm was marked done but while W&B was writing the arm's
    record: the file exists without its run record. The rerun reruns no arm, and writes that record again, once."""
    from cnnlab.gap.launch import RECORDED

    out = tmp_path / "gap"
    args = [*PLAN, "inits=[random]", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}", "launcher=local"]
    run_cli("cnnlab.gap", *args)
    # the package list once, in the gap's own run, also after arms ran in its process (W&B keeps a process's settings)
    assert len(list(out.glob("wandb/offline-run-*/files/requirements.txt"))) == 1
    assert not list(out.glob("arms/*/wandb/offline-run-*/files/requirements.txt")), "no arm repeats the package list"
    arm = out / "arms" / "random_seed0"
    [record] = arm.glob("wandb/offline-run-*/run-*.wandb")
    record.write_bytes(record.read_bytes()[:7])  # W&B's header only: what a worker ended mid-record leaves
    (arm / RECORDED).unlink()
    before = _stamps(out)

    again = run_cli("cnnlab.gap", *args)
    assert "arms: ran 0, reused 4" in again.stdout and _stamps(out) == before
    assert (arm / RECORDED).is_file()
    _check_wandb_group(out)  # exactly one W&B run per arm, each with its run record


@pytest.mark.slow
def test_multirun_jobs_share_a_wandb_group(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    run_cli("cnnlab.train", "-m", "data=synthetic", "data.synthetic.n_train=100", "data.synthetic.n_test=50", "backbone.width=4",
            "callbacks.progress_bar=null", "trainer.max_epochs=1", "seed=0,1", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}")
    runs = sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2, "one offline W&B run per job"
    assert {_wandb_run_record(r)["group"] for r in runs} == {"train_sweep"}


# ------------------------------------------------------------------------------------------------- fast
def test_the_pool_parent_wakes_when_an_arm_finishes_not_at_its_next_poll():
    """The parent starts the next arm when a worker's arm ends: it waits on the running arms' futures, not a timer
    (a 2-s poll was most of a smoke-sized arm's time)."""
    import threading
    from concurrent.futures import Future

    from cnnlab.gap import launch

    slow, fast = Future(), Future()
    threading.Timer(0.2, fast.set_result, [1.0]).start()
    t0 = time.monotonic()
    launch.Pool().wait([slow, fast], timeout=60)
    assert fast.done() and not slow.done() and time.monotonic() - t0 < 30, "woken by the finished arm, not the timeout"
    t0 = time.monotonic()
    launch.Pool().wait([slow], timeout=0.3)
    assert not slow.done() and time.monotonic() - t0 >= 0.25, "with none finished it waits out the timeout"


def test_pool_plans_one_worker_per_gpu_or_core(monkeypatch):
    """Planning only (no GPU on the test machines): every visible GPU gets one worker; on a CPU the cores are
    split between the workers, at most one worker per 8 GiB of memory."""
    from cnnlab.errors import UserError
    from cnnlab.gap import launch

    monkeypatch.setattr(launch, "cpu_count", lambda: 8)
    monkeypatch.setattr(launch, "visible_gpus", lambda: [])
    monkeypatch.setattr(launch, "memory_bytes", lambda: 64 * 2**30)
    assert launch.Pool().plan_workers() == (8, [], 1)
    monkeypatch.setattr(launch, "memory_bytes", lambda: 20 * 2**30)  # one CPU worker per 8 GiB: 2, with 4 threads each
    assert launch.Pool().plan_workers() == (2, [], 4)
    monkeypatch.setattr(launch, "memory_bytes", lambda: None)  # memory unknown: one worker with every core
    assert launch.Pool().plan_workers() == (1, [], 8)
    monkeypatch.setattr(launch, "memory_bytes", lambda: 64 * 2**30)
    assert launch.Pool(workers=2).plan_workers() == (2, [], 4)
    assert launch.Pool(workers=2, threads=1).plan_workers() == (2, [], 1)
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["2", "3", "5"])
    assert launch.Pool().plan_workers() == (3, ["2", "3", "5"], 2)
    with pytest.raises(UserError, match="one worker per GPU"):
        launch.Pool(workers=4).plan_workers()


def test_slurm_job_script_from_the_launcher_config(tmp_path, monkeypatch):
    """conf/launcher/slurm.yaml into submitit's own sbatch script (no cluster: submitit only looks for an
    ``srun`` on PATH before writing it); a preempted job is requeued with its arm (a Checkpointable)."""
    from cnnlab.gap.configs import compose_gap
    from cnnlab.gap.launch import ArmJob, Submitit, launcher_of
    from cnnlab.gap.runner import Runner

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg, _ = compose_gap(["budget=full", "launcher=slurm", "launcher.partition=gpu", "launcher.timeout_min=90",
                          "+launcher.additional.account=lab", f"paths.output_dir={tmp_path}"])
    launcher = launcher_of(cfg)
    assert isinstance(launcher, Submitit)
    ex = launcher.executor(tmp_path / "jobs" / "colorization_seed0")
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--account=lab", "--signal=USR2@",
                 f"--output={tmp_path / 'jobs' / 'colorization_seed0'}/%j_0_log.out"):
        assert line in script, line
    job = ArmJob(Runner.for_worker, "cfg", str(tmp_path), {}, "colorization_seed0", None)
    again = job.checkpoint()
    assert again.function is job and not again.args, "requeued as it was: the arm starts again"


def test_gpu_check_budget_with_the_pool_composes(tmp_path):
    from cnnlab.gap.configs import compose_gap
    from cnnlab.gap.launch import Pool, launcher_of

    cfg, _ = compose_gap(["budget=gpu_check", "launcher=pool", f"paths.output_dir={tmp_path}"])
    launcher = launcher_of(cfg)
    assert isinstance(launcher, Pool) and launcher.workers is None, "null: every visible GPU"


def test_an_arm_waits_for_its_trunk_and_the_arms_it_reads(tmp_path):
    from cnnlab.gap.configs import compose_gap
    from cnnlab.gap.launch import ready
    from cnnlab.gap.runner import Runner

    cfg, choices = compose_gap(["budget=smoke", "inits=[random]", "label_subsets=[0]", f"paths.output_dir={tmp_path}"])
    arms = Runner(cfg, tmp_path, choices).plan().arms
    known = {a.name for a in arms}
    trunk = next(a for a in arms if a.kind == "trunk")
    probe = next(a for a in arms if a.kind == "probe")
    test = next(a for a in arms if a.kind == "finetune_test")
    assert ready(trunk, set(), known)
    assert not ready(probe, set(), known) and ready(probe, {trunk.name}, known)
    cands = set(test.needs)
    assert len(cands) >= 2 and not ready(test, {trunk.name, *sorted(cands)[:1]}, known)
    assert ready(test, {trunk.name, *cands}, known)


def test_arm_lock_keeps_a_second_process_out(tmp_path):
    """The arm lock is the run-dir lock of jobs/<arm>/: another process cannot take it while it is held."""
    from cnnlab.gap.launch import arm_lock

    code = ("import sys; from pathlib import Path; from cnnlab.gap.launch import arm_lock\n"
            "try:\n    arm_lock(Path(sys.argv[1]), 'a', wait=False).__enter__()\nexcept Exception as e:\n    print(e); sys.exit(3)")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    with arm_lock(tmp_path, "a"):
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert held.returncode == 3 and "in use by another run" in held.stdout
    assert free.returncode == 0
