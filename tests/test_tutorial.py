"""docs/tutorial.md runs as written: every command of its fenced ``bash`` blocks, in order, at smoke size, and its
Python example; the commands are read from the page, so the page and this test cannot drift apart.

Smoke size = the page's own command with overrides appended (a later override wins): a few training steps on a few
images, two optimization steps, a few images per analysis. Everything is written under a temporary
``paths.log_dir`` (the reference models included), so the default commands find what the earlier steps built.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from cnnlab.config import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TUTORIAL = PROJECT_ROOT / "docs" / "tutorial.md"

#: per command, what makes it smoke-sized (appended; the viz and analysis keys only where that viz is chosen)
SMOKE = {
    "cnnlab-train": ["trainer.max_epochs=1", "data.train_limit=64", "data.test_limit=100",
                     "data.batch_size=32", "data.eval_batch_size=100", "++trainer.limit_val_batches=1", "backbone.width=4",
                     "logger=csv", "callbacks.progress_bar=null"],
    "cnnlab-gap": [],
    "cnnlab-visualize": ["progress=false", "threads=1", "logger=none"],
    "cnnlab-analyze": ["limit=20", "logger=none", "analyses.embedding.max_iter=250", "analyses.embedding.perplexity=5",
                       "analyses.faithfulness.images=2", "analyses.faithfulness.steps=4", "analyses.faithfulness.ig_steps=2",
                       "analyses.sanity.images=2", "analyses.sanity.draws=1", "analyses.sanity.max_layers=2",
                       "analyses.sanity.ig_steps=2", "analyses.attribution.ig_steps=2", "analyses.occlusion.stride=8"],
}
VIZ_SMOKE = {
    None: ["viz.steps=2"],  # the default, class_model
    "adversarial": ["viz.count=2", "viz.steps=2", "viz.md_steps=2", "viz.md_search=1", "viz.curve_count=10",
                    "viz.curve_steps=2", "viz.restarts=1", "viz.minimal_search=1"],
    "fooling": ["viz.steps=2"],
}


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the ```<language> blocks of a markdown page, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def tutorial_commands() -> list[list[str]]:
    return [shlex.split(line) for block in fenced(TUTORIAL.read_text(), "bash") for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _modules() -> dict[str, str]:
    """Console script -> module, from pyproject.toml (``cnnlab.train:main`` -> ``cnnlab.train``)."""
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def smoke(argv: list[str], log_dir: Path, data_dir: Path) -> list[str]:
    name, args = argv[0], [os.path.expandvars(a) for a in argv[1:]]
    if name == "cnnlab-colorize":  # argparse: the reference colorizer of this test's log dir
        return args + ["--ckpt", str(log_dir / "reference" / "colorize_cifar" / "checkpoints" / "best.ckpt"), "--no-progress"]
    extra = list(SMOKE[name])
    if "experiment=reference_colorizer" in args:
        extra += ["model.prior_max_images=500", "model.hidden=32"]
    if name == "cnnlab-visualize":
        viz = next((a.split("=", 1)[1] for a in args if a.startswith("viz=")), None)
        extra += VIZ_SMOKE[viz]
    return args + extra + [f"paths.log_dir={log_dir}", f"paths.data_dir={data_dir}"]


def test_the_page_has_the_walk_in_order():
    names = [argv[0] for argv in tutorial_commands()]
    assert names[0] == "cnnlab-train" and names.index("cnnlab-colorize") < names.index("cnnlab-gap") \
        < names.index("cnnlab-visualize") < names.index("cnnlab-analyze"), names
    assert set(names) <= set(_modules()), "every command is one of the project's console scripts"
    assert len(fenced(TUTORIAL.read_text(), "python")) == 1


@pytest.mark.timeout(1800)  # eleven processes: ~4 min on an idle 2-core CPU, 15+ when it is shared
def test_every_tutorial_command_runs_at_smoke_size(cifar_archive, data_dir, tmp_path):
    modules = _modules()
    env = {**os.environ, "CNNLAB_DATA": str(cifar_archive.parent), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log_dir = tmp_path / "outputs"
    for argv in tutorial_commands():
        args = smoke(argv, log_dir, data_dir)
        proc = subprocess.run([sys.executable, "-m", modules[argv[0]], *args], cwd=tmp_path, env=env, capture_output=True, check=False,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert (log_dir / "reference" / "supervised_cifar" / "checkpoints" / "best.ckpt").is_file()
    assert list((log_dir / "reference" / "colorize_cifar" / "images" / "val_panels").glob("step_*.png"))
    assert len(list((tmp_path / "colorized").glob("*_color.png"))) == len(list((cifar_archive.parent / "images").glob("*.jpg")))
    assert (log_dir / "gap" / "smoke_transfer" / "gap.png").is_file()
    pictures = {p.name for p in (log_dir / "visualize" / "runs").glob("*/images/*.png")}
    assert {"class_model.png", "adversarial.png", "fooling.png"} <= pictures, pictures
    assert list((log_dir / "analyze" / "runs").glob("*/report.html"))

    code = fenced(TUTORIAL.read_text(), "python")[0].replace("steps=20", "steps=2")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "mine" / "viz" / "images" / "class_model.png").is_file()
    assert (tmp_path / "mine" / "analysis" / "report.html").is_file()
