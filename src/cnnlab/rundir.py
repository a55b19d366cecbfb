"""A run directory belongs to one run: claimed before anything is written, resumed only from an intact checkpoint.

- :class:`ClaimRunDir` is a Hydra callback (``conf/hydra/default.yaml``) that runs before Hydra writes
  ``.hydra/`` into the run dir. A directory that already holds results is refused unless this run
  resumes it; a directory that holds another command's results (a ``cnnlab-train`` run given to
  ``cnnlab-gap``) is refused even to a command that reuses its own; the directory is locked (``.cnnlab.lock``, holding the owner's pid) for the life of the
  process, so a second run started into it while the first is still going refuses too.
- :func:`discard_if_unused` removes a run dir this process created when the run stopped on a user mistake before
  producing anything (an unknown class or layer name, found once the network is loaded): such a run leaves no
  directory behind.
- :func:`resume_checkpoint` picks ``checkpoints/last.ckpt`` if it is intact, else the newest intact checkpoint.
- :func:`finished_message` tells a finished run (nothing left to train, ``metrics.json`` written) from an
  interrupted one, so that resuming a finished run leaves it alone.

Light on purpose (no torch at import): the callback runs before every Hydra command.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.config import is_rank_zero
from cnnlab.errors import UserError, exit_with, os_error

log = logging.getLogger("cnnlab")

LOCK_NAME = ".cnnlab.lock"
#: what a run dir may hold before the run has produced anything: Hydra's record, logs, trackers' bookkeeping.
#: A run that failed before any work leaves only these, so the same command can simply be rerun. The validation
#: history (cnnlab.callbacks.ValidationHistory) is a record too: a run can validate and then fail on its first
#: checkpoint (a full disk), and a fresh start in the same dir rewrites it from step 0.
BOOKKEEPING = {".hydra", LOCK_NAME, "config_tree.log", "wandb", "wandb_id.txt", "csv", "val_history.json"}

_held: dict[Path, int] = {}  # run dir -> the open, locked lock file of this process (released when it exits)
_made: dict[Path, Path] = {}  # run dir -> the outermost directory this process created for it (itself or a parent)


def results_in(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` that are a run's results rather than its bookkeeping (empty for a new dir).

    A folder with no file in it is not a result: a run that failed on its very first checkpoint (a full disk)
    leaves an empty ``checkpoints/``, and the same command must be able to start again there."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in BOOKKEEPING and p.suffix != ".log" and not _holds_no_file(p))


def _holds_no_file(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(p.is_file() for p in path.rglob("*"))


def command_of(run_dir: Path) -> str | None:
    """The Hydra job name (``train``, ``gap``, ``evaluate``, ...) of the command that made ``run_dir``, from
    its ``.hydra/hydra.yaml`` (None when there is none)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text()) or {}
        return str(saved["hydra"]["job"]["name"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def lock(run_dir: Path, check: Callable[[], None] | None = None) -> None:
    """Lock ``run_dir`` for this process, or raise :class:`UserError` naming the process that holds it.

    ``check`` runs once the lock is held and before this process writes its pid into the lock file; if it
    raises, the lock is dropped and the file left as it was.

    An advisory ``flock``: the kernel drops it when the owner exits, however it exits (SIGKILL included),
    so a lock is never stale. Filesystems without ``flock`` run unlocked, with a warning.
    """
    run_dir = run_dir.resolve()
    if run_dir in _held:  # this process holds it already (an entry point called twice in one process)
        if check is not None:
            check()
        return
    import fcntl

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot use {run_dir} as the run directory ({err.strerror or err}): "
                        "give hydra.run.dir a directory you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{run_dir} is in use by another run ({owner}): wait for it to end, "
                        "or start this one in a fresh directory (leave out hydra.run.dir, or give a new one)") from None
    except OSError as err:
        log.warning("cannot lock %s (%s): running without a lock", run_dir, err)
    if check is not None:
        try:
            check()
        except BaseException:
            os.close(fd)
            raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _held[run_dir] = fd


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the file drops the flock


def claim(run_dir: Path, resuming: bool = False, reuse: bool = False, resume_command: str | None = None,
          command: str | None = None) -> None:
    """Make ``run_dir`` this run's own: lock it, then refuse it if it holds another run's results.

    ``resuming``: this run continues the one in ``run_dir``. ``reuse``: the command resumes in place by
    design (``cnnlab-gap`` skips finished arms), so only the lock applies, as long as the results there are
    its own kind's. ``command``: this run's Hydra job name; a dir holding results of another command is refused
    whatever ``resuming``/``reuse`` say. It looks again once locked, so two runs started together cannot both
    find the directory empty; a refused directory is not touched.
    """
    allowed = resuming or reuse
    if not (run_dir / LOCK_NAME).exists():  # a dir that is refused gets no lock file either
        _refuse_if_taken(run_dir, allowed, resume_command, command)
    lock(run_dir, check=lambda: _refuse_if_taken(run_dir, allowed, resume_command, command))


def _refuse_if_taken(run_dir: Path, allowed: bool, resume_command: str | None, command: str | None = None) -> None:
    found = results_in(run_dir)
    if not found:
        return
    owner = command_of(run_dir)
    own_kind = not (command and owner) or owner == command
    if allowed and own_kind:
        return
    if allowed:  # resuming or reusing, but the results are another command's
        raise UserError(f"{run_dir} holds a run of cnnlab's {owner} command ({', '.join(found[:4])}): the {command} "
                        "command cannot use it, a run dir belongs to one kind of command; start this one in a fresh "
                        "directory (leave out hydra.run.dir, or give a new one); nothing was written")
    how = f"continue that run with `{resume_command}={run_dir}`, or " if resume_command and own_kind else ""
    raise UserError(f"{run_dir} already holds a run ({', '.join(found[:4])}): {how}start a new one in a fresh "
                    "directory (leave out hydra.run.dir, or give a new one); nothing was written")


def outermost_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` (itself or a parent) that does not exist yet; ``None`` if it exists."""
    path = Path(path).resolve()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def unused(run_dir: Path) -> bool:
    """Whether :func:`discard_if_unused` would remove ``run_dir``: made by this process, holding no result, and its
    work not begun. A run that got as far as its first checkpoint (``checkpoints/`` exists, even empty: a full disk)
    is kept, with the log that says what stopped it, for the same command to take up."""
    run_dir = Path(run_dir).resolve()
    return run_dir in _made and run_dir.is_dir() and not results_in(run_dir) and not (run_dir / "checkpoints").exists()


def discard_if_unused(run_dir: Path) -> bool:
    """Remove ``run_dir`` and the parents made for it, if this process created it and it holds nothing but
    :data:`BOOKKEEPING` (Hydra's record, logs, trackers' files); True when removed.

    Why removal rather than checking everything before Hydra makes the directory: the checks that need the loaded
    network (class and layer names, units, images of each visualization and analysis) live with the code that uses
    them, and running them twice, once in a second, early path, would duplicate every one. Removing what a run made
    when it produced nothing covers each of them with one rule, and cannot remove a result: a directory that existed
    before the run, or that holds anything besides bookkeeping, is kept. Parents are removed only while empty
    (``os.rmdir``), so another run's directory made beside it in the meantime stays.
    """
    run_dir = Path(run_dir).resolve()
    if not unused(run_dir):
        return False
    top = _made.pop(run_dir)
    release(run_dir)
    _detach_file_logs(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a tracker process still writing a log there may keep a file: left
    for parent in run_dir.parents:
        if not parent.is_relative_to(top):
            break
        try:
            parent.rmdir()
        except OSError:  # not empty: something else lives there now
            break
    return True


def _detach_file_logs(run_dir: Path) -> None:
    """Close and remove every logging file handler writing inside ``run_dir`` (Hydra's job log on the root logger):
    left attached, the next log record in this process would recreate its file, or fail on the removed dir."""
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    for lg in loggers:
        for handler in list(lg.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(run_dir):
                lg.removeHandler(handler)
                handler.close()


class ClaimRunDir(Callback):
    """Hydra callback: :func:`claim` the run dir before Hydra writes into it (single runs; rank 0 only).

    ``reuse=true`` for commands that resume in place by rerunning them. A refusal is one ``error:`` line
    and exit code 2, like every user mistake.
    """

    def __init__(self, reuse: bool = False):
        self.reuse = reuse

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if not is_rank_zero():  # DDP ranks re-launched into the run dir rank 0 already claimed
            return
        run_dir = Path(str(config.hydra.run.dir)).expanduser().absolute()
        resume = config.get("resume")
        resuming = bool(resume) and Path(str(resume)).expanduser().resolve() == run_dir.resolve()
        made = outermost_missing(run_dir)
        # only cnnlab-train's config has ``resume``: there an existing run can be continued
        _claim_or_exit(run_dir, resuming, self.reuse, "cnnlab-train resume" if "resume" in config else None,
                       str(config.hydra.job.name))
        if made is not None:
            _made[run_dir.resolve()] = made

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir)).expanduser().absolute()
        _made.pop(run_dir.resolve(), None)
        release(run_dir)


def _claim_or_exit(run_dir: Path, resuming: bool, reuse: bool, resume_command: str | None, command: str) -> None:
    # a Hydra callback runs outside the command's own error handling: a refused claim ends here, as one line
    try:
        claim(run_dir, resuming=resuming, reuse=reuse, resume_command=resume_command, command=command)
    except UserError as err:
        exit_with(err)
    except OSError as err:  # a full disk, a read-only or forbidden output root: one line too
        if (mistake := os_error(err)) is None:
            raise
        exit_with(mistake, err)


# ------------------------------------------------------------------------------------------- resume
def resume_checkpoint(run_dir: Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt`` if intact, else the newest intact checkpoint there, saying so.

    Raises :class:`UserError` when none is intact.
    """
    from cnnlab.io.checkpoints import checkpoint_problem

    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    why = checkpoint_problem(last) if last.exists() else "it is missing"
    if why is None:
        return last
    for candidate in others:
        if checkpoint_problem(candidate) is None:
            log.warning("%s is not usable (%s): resuming from %s, the newest intact checkpoint", last, why, candidate.name)
            return candidate
    raise UserError(f"cannot resume {run_dir}: no intact checkpoint in {folder} ({last.name}: {why}); "
                    "start the run again in a fresh directory")


def in_run_dir(ckpt_path: str, run_dir: Path) -> str:
    """``ckpt_path`` taken from this run dir's ``checkpoints/`` (``""`` if it is not there).

    A checkpoint records its best checkpoint's absolute path, so a run dir that was moved or copied
    would otherwise test the original's file, or fail when that is gone.
    """
    if not ckpt_path or Path(ckpt_path).resolve().is_relative_to(Path(run_dir).resolve()):
        return ckpt_path
    here = Path(run_dir) / "checkpoints" / Path(ckpt_path).name
    return str(here) if here.is_file() else ""


def epochs_done(ckpt_path: Path) -> tuple[int, int]:
    """(training epochs finished, global step) recorded in a Lightning checkpoint."""
    from cnnlab.io.checkpoints import CHECKPOINT, read_cnnlab_file

    _, ckpt = read_cnnlab_file(ckpt_path, expect=CHECKPOINT, mmap=True)
    # a checkpoint written at validation end has counted its epoch as processed, not yet as completed
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", ckpt.get("epoch", -1) + 1)), int(ckpt.get("global_step", 0))


def finished_message(run_dir: Path, ckpt_path: Path, max_epochs: int | None, max_steps: int | None) -> str | None:
    """A one-line notice if the run in ``run_dir`` is finished (``metrics.json`` written and the checkpoint
    already at Lightning's stopping point for ``max_epochs`` / ``max_steps``), else ``None``."""
    if not (Path(run_dir) / "metrics.json").is_file():
        return None
    max_steps = -1 if max_steps is None else max_steps
    if max_epochs is None:  # Lightning's default: 1000 epochs unless a step limit is set
        max_epochs = 1000 if max_steps == -1 else -1
    epochs, step = epochs_done(ckpt_path)
    if not ((0 <= max_steps <= step) or (0 <= max_epochs <= epochs)):
        return None
    return (f"run {run_dir} is already finished ({epochs} epoch(s), step {step}; metrics.json kept): nothing to do; "
            "to train it longer, pass a larger trainer.max_epochs with resume=")
