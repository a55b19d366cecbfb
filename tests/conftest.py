"""Shared fixtures.

Integration tests read the real CIFAR-10 archive from ``$CNNLAB_DATA/cifar10-jpg.tar.gz``
(``.ci/run`` sets CNNLAB_DATA to ../shared/data). Unset, they are skipped with the reason; set but
missing, they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.config import PROJECT_ROOT

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")


def pytest_collection_modifyitems(config, items):
    """Files that hold slow tests first, those with a longer own timeout (the longest tests) before them, the order
    within a file kept: with the suite split over workers a file at a time (scripts/test.sh), the long files start
    at once rather than last, which would leave one worker finishing them alone."""
    weight: dict = {}
    for item in items:
        timeout = item.get_closest_marker("timeout")
        own = timeout.args[0] if timeout and timeout.args else 0
        weight[item.path] = max(weight.get(item.path, -1), own if item.get_closest_marker("slow") else -1)
    items.sort(key=lambda item: -weight[item.path])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where datasets are cached during tests (the project's data/ dir: caches are reused across runs)."""
    path = Path(os.environ.get("CNNLAB_TEST_DATA_DIR", PROJECT_ROOT / "data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_archive(name: str) -> Path:
    """``$CNNLAB_DATA/<name>``, or a skip (CNNLAB_DATA unset) / failure (set but missing)."""
    root = os.environ.get("CNNLAB_DATA")
    if not root:
        pytest.skip(f"CNNLAB_DATA is not set: point it at the directory holding {name} to run integration tests")
    path = Path(root) / name
    if not path.is_file():
        pytest.fail(f"CNNLAB_DATA={root} but {path} does not exist")
    return path


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The real CIFAR-10 JPEG archive (see :func:`shared_archive`)."""
    return shared_archive("cifar10-jpg.tar.gz")


@pytest.fixture(scope="session")
def camvid_archive() -> Path:
    """The real CamVid JPEG archive (see :func:`shared_archive`)."""
    return shared_archive("camvid-jpg.tar.gz")


@pytest.fixture(scope="session")
def cifar_dm_kwargs(cifar_archive, data_dir) -> dict:
    """ImageDataModule kwargs for the real CIFAR-10 archive (decoded once into the cache)."""
    return {"name": "cifar10", "source": str(cifar_archive), "data_dir": str(data_dir), "progress": False}


def run_cli(module: str, *overrides: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None,
            check: bool = True, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <overrides>`` as a real process; on failure show its output."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", **(env or {})}
    for var in unset:
        full_env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or PROJECT_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(overrides)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def mounted_tmpfs(mnt: Path, size: str):
    """Yield ``mnt``, a fresh tmpfs of ``size`` (e.g. ``600k``), unmounted afterwards; a skip where mounting is not
    allowed. For the disk-full cases, with a real filesystem that fills up."""
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one torch thread is faster than two fighting over a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
