"""cnnlab installed without a checkout: its configs travel as package data, data/ and outputs/ follow the working dir."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cnnlab.config import PROJECT_ROOT
from tests.conftest import run_cli


def _copy_of_the_checkout(source):
    """What a build reads, copied, so the build leaves nothing in the checkout."""
    for name in ("src", "conf"):
        shutil.copytree(PROJECT_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    return source


@pytest.mark.slow
def test_installed_package_finds_its_configs_outside_a_checkout(tmp_path):
    source = _copy_of_the_checkout(tmp_path / "source")
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
                    str(source)], check=True, capture_output=True, timeout=600)
    assert (target / "cnnlab" / "conf" / "train.yaml").is_file() and not (target / "cnnlab" / "conf" / "local").exists()
    env = {"PYTHONPATH": str(target)}
    out = run_cli("cnnlab.train", "--help", cwd=elsewhere, env=env, unset=("CNNLAB_ROOT",)).stdout
    assert "model: classifier, colorization, linear_probe" in out
    where = run_cli("cnnlab.train", "--cfg", "job", "--resolve", "--package", "paths", cwd=elsewhere, env=env,
                    unset=("CNNLAB_ROOT",)).stdout
    assert f"data_dir: {elsewhere}/data" in where and f"log_dir: {elsewhere}/outputs" in where
    probe = subprocess.run([sys.executable, "-c", "import cnnlab.config as c; from cnnlab.models.colorizer import lab_defaults; "
                            "print(c.CONF_DIR); print(sorted(lab_defaults()))"], cwd=elsewhere, env={"PATH": "/usr/bin:/bin", **env},
                           capture_output=True, text=True, check=True, timeout=300).stdout.splitlines()
    assert probe[0] == str(target / "cnnlab" / "conf") and "grid" in probe[1]


def test_an_editable_install_is_a_plain_path_entry_to_src(tmp_path):
    """``pip install -e .`` (scripts/setup.sh) gets a .pth naming src/: a second source folder in setup.py would make
    setuptools fall back to an import-hook finder and warn on every editable install."""
    import zipfile

    source = _copy_of_the_checkout(tmp_path / "source")
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_editable({str(tmp_path / 'wheel')!r})"],
                   cwd=source, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith("_finder.py")], names
    (pth,) = [n for n in names if n.endswith(".pth")]
    assert zipfile.ZipFile(wheel).read(pth).decode().split() == [str((source / "src").resolve())]


def test_importing_cnnlab_makes_idle_torch_threads_sleep_before_torch_loads():
    """OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads: the package sets it on import, before any of its
    commands imports torch, and leaves a value the environment gives alone."""
    import os

    code = "import os, sys, cnnlab; print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expect in ((None, "False PASSIVE"), ("ACTIVE", "False ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True, timeout=300)
        assert out.stdout.strip() == expect
