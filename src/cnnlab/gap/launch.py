"""Where the gap's arms run: the launcher executes a :class:`~cnnlab.gap.runner.Plan`, arm by arm as their inputs appear.

- :class:`Local` runs them in this process, one after another (the default; what ``cnnlab-gap`` always did).
- :class:`Pool` runs them in worker processes on this machine (:class:`concurrent.futures.ProcessPoolExecutor`,
  spawned): one per visible GPU, each seeing only its own, or on a CPU the cores split between workers with
  ``threads`` torch threads each. A worker lives for the whole run, so it imports torch, loads the data and
  composes the arm configs once, not once per arm.
- :class:`Submitit` submits one job per arm through `submitit <https://github.com/facebookincubator/submitit>`_:
  SLURM (partition, time limit, GPUs per job; a preempted or timed-out job is requeued, the arm restarting
  from scratch), or submitit's ``local`` executor (one process per arm, to check the path without a cluster).

Every engine runs an arm through :func:`run_one`: the worker rebuilds the :class:`~cnnlab.gap.runner.Runner` from the gap run's
config (its paths resolved, so nothing depends on the parent's Hydra), takes the arm's lock
(``<run dir>/jobs/<arm>/.cnnlab.lock``, :func:`cnnlab.rundir.lock`: an arm dir is written by one process at a
time, also by a job left over from an earlier invocation), and skips the arm if it finished meanwhile. An arm is
marked done (``gap_arm.json``) only after its outputs are written, so an arm whose worker died is simply not
done, and the next invocation reruns it; nothing finished is run twice.

Tracking: every arm is a W&B run in the group ``gap_<run dir name>`` with ``job_type`` its kind (training arms
through their logger; in-process arms log their finished record), and the report joins the same group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import UserError

if TYPE_CHECKING:
    from cnnlab.gap.arms import Arm, Plan

log = logging.getLogger("cnnlab.gap")


class ArmRunner(Protocol):
    """What a launcher needs of the gap's :class:`~cnnlab.gap.runner.Runner` (named here so that this module never
    imports the runner, which imports it): the run's config and root, its arms by name, each arm's key, running an arm,
    and a factory that rebuilds it in a worker process."""

    cfg: DictConfig
    root: Path
    choices: dict
    by_name: dict

    def key(self, arm: Arm) -> str | None: ...

    def arm_config(self, arm: Arm): ...

    def run_arm(self, arm: Arm, key: str) -> None: ...

    @classmethod
    def for_worker(cls, cfg_yaml: str, root: str, choices: dict) -> ArmRunner: ...

#: how often a worker looks again at an arm lock held by another process, and the parent at its running jobs
POLL_S = 2.0


# ------------------------------------------------------------------------------------------------- one arm
def wandb_group(root: Path) -> str:
    """The W&B group of every arm (and the report) of the gap run in ``root``."""
    return f"gap_{Path(root).name}"


@contextlib.contextmanager
def _env(**values: str | None):
    """``os.environ`` with these values (None: unset) for the duration."""
    before = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tracking_env(runner: ArmRunner, arm: Arm) -> dict:
    """What an arm's W&B run reads from the environment (``wandb.init`` falls back to these variables): its
    group and kind, ``disabled`` when the gap's tracking is off (``report.wandb=false``), and no package list: every
    arm of a run has the same environment, which the gap's own run (the table and plot) records once, and listing
    it costs W&B ~0.2 s per run (a third of a smoke-sized arm)."""
    from cnnlab.tracking import resolve_wandb_mode

    on = bool(runner.cfg.report.get("wandb", True))
    return {"WANDB_RUN_GROUP": wandb_group(runner.root), "WANDB_JOB_TYPE": arm.kind,
            "WANDB_MODE": resolve_wandb_mode(str(runner.cfg.report.get("wandb_mode", "auto"))) if on else "disabled",
            "WANDB__SAVE_REQUIREMENTS": "false"}


#: written in an arm dir once its W&B record is finished (W&B's own files exist from the record's first moment)
RECORDED = ".wandb_recorded"


def _log_record(runner: ArmRunner, arm: Arm) -> None:
    """An arm that trains nothing (a random init, probes, the test of a chosen candidate) as a W&B run holding
    its finished record (``gap_arm.json``), so that every arm of the run appears in the group."""
    import json

    if os.environ.get("WANDB_MODE") == "disabled":
        return
    d = arm.dir(runner.root)
    try:
        record = json.loads((d / "gap_arm.json").read_text())
        import shutil

        import wandb

        # a record begun by a worker that died (a broken pool ends every worker) is incomplete: start it again
        shutil.rmtree(d / "wandb", ignore_errors=True)
        run = wandb.init(project="cnnlab", name=arm.name, dir=str(d), config=record, reinit="finish_previous",
                         group=os.environ["WANDB_RUN_GROUP"], job_type=arm.kind, mode=os.environ["WANDB_MODE"],
                         tags=["gap", str(runner.cfg.budget_name)])
        run.summary.update({k: v for k, v in _flat(record).items() if isinstance(v, (int, float))})
        run.finish()
        (d / RECORDED).touch()
    except Exception as err:  # noqa: BLE001 - tracking never fails an arm whose results are on disk
        log.warning("W&B record of arm %s failed: %s", arm.name, err)


def missing_record(runner: ArmRunner, arm: Arm) -> bool:
    """Whether a finished arm that trains nothing lacks the finished W&B run :func:`_log_record` gives it (its
    worker died after writing the result, before or while recording; tracking off counts as nothing missing)."""
    if tracking_env(runner, arm)["WANDB_MODE"] == "disabled" or runner.arm_config(arm) is not None:
        return False
    return not (arm.dir(runner.root) / RECORDED).is_file()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextlib.contextmanager
def arm_lock(root: Path, name: str, wait: bool = True):
    """Hold ``<root>/jobs/<name>/.cnnlab.lock`` (outside the arm dir, which a (re)starting arm empties)."""
    from cnnlab import rundir

    where = Path(root) / "jobs" / name
    told = False
    while True:
        try:
            rundir.lock(where)
            break
        except UserError as err:
            if not wait:
                raise
            if not told:
                log.warning("arm %s: %s; waiting", name, err)
                told = True
            time.sleep(POLL_S)
    try:
        yield where
    finally:
        rundir.release(where)


def run_one(runner: ArmRunner, arm: Arm) -> float | None:
    """Run ``arm`` unless it is done with its current key; returns its seconds (None: it was done).

    Raises :class:`UserError` when an input is missing."""
    from cnnlab.gap import arms as A

    with arm_lock(runner.root, arm.name):
        key = runner.key(arm)
        if key is None:
            raise UserError(f"arm {arm.name} needs the outputs of {arm.needs or [arm.trunk_arm]}, which did not appear")
        if A.is_done(arm, runner.root, key):  # finished meanwhile, or a remade input came back identical
            return None
        with _env(**tracking_env(runner, arm)):
            t0 = time.time()
            runner.run_arm(arm, key)
            seconds = round(time.time() - t0, 1)
            if runner.arm_config(arm) is None:
                _log_record(runner, arm)
    return seconds


# ------------------------------------------------------------------------------------------------- workers
def portable_config(cfg: DictConfig) -> str:
    """The gap config as YAML a worker can compose alone: ``paths`` resolved (``output_dir`` is Hydra's
    run dir, which a worker has no Hydra to resolve), everything else as written, so every arm config and key
    is built exactly as in the parent."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.paths = OmegaConf.create(OmegaConf.to_container(cfg.paths, resolve=True))
    return OmegaConf.to_yaml(out)


def worker_args(runner: ArmRunner) -> tuple:
    """What a worker rebuilds ``runner`` from: its class's worker factory (``Runner.for_worker``, pickled by
    reference) and the run's portable config, root and config choices."""
    return (type(runner).for_worker, portable_config(runner.cfg), str(runner.root), dict(runner.choices))


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """End this worker when the process that started it is gone (killed, or stopped without shutting the pool): an
    orphan would go on computing an arm nobody collects, beside the rerun's own workers."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)  # the arm in progress is left unfinished (no marker): the next invocation reruns it

    threading.Thread(target=watch, name="cnnlab-parent-watch", daemon=True).start()


def _pool_init(devices, threads: int | None) -> None:
    """A pool worker's start: its own GPU (before torch sees CUDA), its thread count, and an end with its parent."""
    _exit_with_parent()
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch loads OpenMP: set before the import
    set_threads(threads)


@contextlib.contextmanager
def _output_to(path: Path):
    """This process's stdout and stderr (file descriptors 1 and 2: loggers and libraries included) into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for i, s in enumerate(saved, start=1):
            os.dup2(s, i)
            os.close(s)
        os.close(fd)


def _pool_arm(make_runner: Callable, cfg_yaml: str, root: str, choices: dict, name: str) -> float | None:
    """One arm in a pool worker; its console output goes to ``jobs/<arm>/worker.log``."""
    with _output_to(Path(root) / "jobs" / name / "worker.log"):
        runner = make_runner(cfg_yaml, root, choices)
        return run_one(runner, runner.by_name[name])


class ArmJob:
    """One arm as a submitit job (a ``Checkpointable``: a preempted or timed-out job is requeued as it was, and
    the arm starts again in an emptied dir)."""

    def __init__(self, make_runner: Callable, cfg_yaml: str, root: str, choices: dict, name: str, threads: int | None):
        self.make_runner, self.cfg_yaml, self.root, self.choices = make_runner, cfg_yaml, root, choices
        self.name, self.threads = name, threads

    def __call__(self) -> float | None:
        set_threads(self.threads or cpu_count())  # on SLURM: the CPUs the job was given
        runner = self.make_runner(self.cfg_yaml, self.root, self.choices)
        return run_one(runner, runner.by_name[self.name])

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


# ------------------------------------------------------------------------------------------------- engines
def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: memory one CPU worker may need: a quick-budget worker peaked at 5.9 GB resident (2026-12-03, docs/benchmarks.md)
CPU_WORKER_BYTES = 8 * 2**30


def memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty without CUDA)."""
    import torch

    n = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:n] if listed else [str(i) for i in range(n)]


class Launcher:
    """Runs the arms of a plan. ``slots`` arms at a time; ``submit`` starts one and returns a handle whose
    ``done()`` and ``result()`` (its seconds, None when it was already done) the parent polls."""

    slots = 1
    name = "local"

    def start(self, runner: ArmRunner) -> None:
        """Called once before the first arm (workers are started here)."""

    def submit(self, runner: ArmRunner, arm: Arm):
        raise NotImplementedError

    def stop(self) -> None:
        """Called once at the end, also after a failure."""

    def wait(self, handles: list, timeout: float) -> None:
        """Block until one of the running ``handles`` may be done, at most ``timeout`` seconds (a cluster's jobs
        are looked at again after it)."""
        time.sleep(timeout)

    def describe(self) -> str:
        return self.name


class _Finished:
    """The handle of an arm that ran in this process."""

    def __init__(self, seconds):
        self.seconds = seconds

    def done(self) -> bool:
        return True

    def result(self):
        return self.seconds


class Local(Launcher):
    """Every arm in this process, one after another, in plan order (``threads`` applies to this process)."""

    def submit(self, runner: ArmRunner, arm: Arm):
        return _Finished(run_one(runner, arm))


class Pool(Launcher):
    """``workers`` worker processes on this machine (null: one per visible GPU, else one per CPU core but at most one
    per 8 GiB of memory), each with ``threads`` torch threads (null: the cores split evenly between the workers)."""

    name = "pool"

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.workers, self.threads = workers, threads
        self._pool = None

    def plan_workers(self) -> tuple[int, list[str], int]:
        """``(workers, GPUs, threads per worker)`` on this machine."""
        gpus = visible_gpus()
        n = int(self.workers or len(gpus) or min(cpu_count(), max(1, (memory_bytes() or CPU_WORKER_BYTES) // CPU_WORKER_BYTES)))
        if n < 1:
            raise UserError(f"launcher.workers={self.workers}: give at least 1 (or null: one per GPU / core)")
        if gpus and n > len(gpus):
            raise UserError(f"launcher.workers={n} but {len(gpus)} GPU(s) visible: one worker per GPU, give at most {len(gpus)}")
        threads = int(self.threads or max(1, cpu_count() // n))
        return n, gpus[:n], threads

    def start(self, runner: ArmRunner) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n, gpus, threads = self.plan_workers()
        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited CUDA state or torch threads
        devices = None
        if gpus:
            devices = ctx.Queue()
            for g in gpus:
                devices.put(g)
        self.slots, self._gpus, self._threads = n, gpus, threads
        self._args = worker_args(runner)
        self._pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_pool_init, initargs=(devices, threads))

    def submit(self, runner: ArmRunner, arm: Arm):
        return self._pool.submit(_pool_arm, *self._args, arm.name)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def wait(self, handles: list, timeout: float) -> None:
        # the next arm starts the moment a worker is free: polling left a worker idle up to POLL_S per arm,
        # most of a smoke-sized arm's time (docs/benchmarks.md)
        from concurrent.futures import FIRST_COMPLETED, wait

        wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)

    def describe(self) -> str:
        where = f"GPU {', '.join(self._gpus)}" if self._gpus else "CPU"
        return f"pool of {self.slots} worker(s) on {where}, {self._threads} thread(s) each"


class Submitit(Launcher):
    """One submitit job per arm: ``cluster`` slurm (or ``local``: one process per arm on this machine, for
    checking the path), at most ``max_jobs`` queued or running at a time; logs in ``<run dir>/jobs/<arm>/``."""

    name = "submitit"

    def __init__(self, cluster: str = "slurm", max_jobs: int = 64, timeout_min: int = 240, partition: str | None = None,
                 gpus_per_job: int = 1, cpus_per_job: int = 8, mem_gb: int = 32, threads: int | None = None,
                 max_requeue: int = 3, setup: list | None = None, additional: dict | None = None):
        self.cluster, self.slots, self.threads = cluster, int(max_jobs), threads
        self.max_requeue, self.setup, self.additional = int(max_requeue), list(setup or []), dict(additional or {})
        self.params = {"timeout_min": int(timeout_min), "gpus_per_node": int(gpus_per_job), "cpus_per_task": int(cpus_per_job),
                       "mem_gb": int(mem_gb), "nodes": 1, "tasks_per_node": 1}
        self.partition = partition

    def start(self, runner: ArmRunner) -> None:
        self._args = worker_args(runner)

    def executor(self, folder: Path):
        import submitit

        ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster, slurm_max_num_timeout=self.max_requeue)
        params = dict(self.params)
        if self.cluster == "local":
            params["gpus_per_node"] = min(params["gpus_per_node"], len(visible_gpus()))
        ex.update_parameters(**params, slurm_partition=self.partition, slurm_setup=self.setup,
                             slurm_additional_parameters=self.additional)
        return ex

    def submit(self, runner: ArmRunner, arm: Arm):
        ex = self.executor(Path(runner.root) / "jobs" / arm.name)
        ex.update_parameters(name=f"gap-{arm.name}")
        return ex.submit(ArmJob(*self._args, arm.name, self.threads))

    def describe(self) -> str:
        return f"submitit {self.cluster}: one job per arm, at most {self.slots} at a time"


# ------------------------------------------------------------------------------------------------- the plan
def ready(arm: Arm, finished: set[str], known: set[str]) -> bool:
    """Its trunk (unless it is its own) and every arm it reads are finished (arms outside the plan count as there)."""
    inputs = ([] if arm.trunk_arm in (None, arm.name) else [arm.trunk_arm]) + list(arm.needs)
    return all(n in finished or n not in known for n in inputs)


def execute(runner: ArmRunner, plan: Plan, todo: list[Arm], launcher: Launcher,
            on_start: Callable[[Arm, list[str]], None] = lambda arm, running: None,
            on_done: Callable[[Arm, float | None], None] = lambda arm, seconds: None) -> None:
    """Run ``todo`` with ``launcher``: each arm as soon as its inputs are finished, in plan order, ``launcher.slots``
    at a time. After a failure nothing new starts; the running arms finish, then the first failure is raised
    (the finished arms are kept: rerunning the command resumes). A pool worker's death breaks the pool, which ends
    its other workers too: an arm they had not marked done runs again on the rerun, and a done arm whose W&B record
    was cut short is recorded again."""
    known = {a.name for a in plan.arms}
    finished = {n for n, s in plan.status.items() if s == "done"}
    waiting = list(todo)
    running: dict[str, tuple] = {}
    failures: list[tuple[Arm, BaseException]] = []
    for arm in plan.arms:  # a worker that died between an arm's result and its W&B record: record it now
        if arm.name in finished and missing_record(runner, arm):
            with _env(**tracking_env(runner, arm)):
                _log_record(runner, arm)
    if not todo:
        return
    launcher.start(runner)
    try:
        while waiting or running:
            while not failures and len(running) < launcher.slots:
                arm = next((a for a in waiting if ready(a, finished, known)), None)
                if arm is None:
                    break
                waiting.remove(arm)
                on_start(arm, [*running, arm.name])
                running[arm.name] = (arm, launcher.submit(runner, arm))
            if not running:
                break
            done = [n for n, (_, h) in running.items() if h.done()]
            if not done:
                launcher.wait([h for _, h in running.values()], POLL_S)
                continue
            for n in done:
                arm, handle = running.pop(n)
                try:
                    seconds = handle.result()
                except Exception as err:  # noqa: BLE001 - a worker's error or its death; reported below
                    if isinstance(launcher, Local):
                        raise
                    failures.append((arm, err))
                    continue
                finished.add(n)
                on_done(arm, seconds)
    finally:
        launcher.stop()
    if failures:
        arm, err = failures[0]
        more = f" (and {len(failures) - 1} more: {', '.join(a.name for a, _ in failures[1:])})" if len(failures) > 1 else ""
        what = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"arm {arm.name} failed{more}: {what} -- its log: {Path(runner.root) / 'jobs' / arm.name}; "
                        "the finished arms are kept, rerun the same command to resume")
    if waiting:
        raise UserError(f"arms {[a.name for a in waiting][:4]} wait for inputs that are not in the plan or did not appear")


def launcher_of(cfg: DictConfig) -> Launcher:
    """The configured launcher (``launcher=local|pool|slurm``); local when the config has none."""
    from cnnlab.cli import instantiate

    node = cfg.get("launcher")
    return instantiate(node) if node else Local()
