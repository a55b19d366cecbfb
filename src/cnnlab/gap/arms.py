"""The arms of a gap experiment: what each one is, how it runs, and when its results can be reused.

An arm is one unit of work with its own directory ``<gap run dir>/arms/<name>/``:

- ``random_seed<k>``: a seeded random init of the backbone, saved as a trunk (in-process, instant);
- ``supervised_seed<k>`` / ``colorization_seed<k>``: a pretraining, a real ``cnnlab-train`` subprocess
  writing ``trunk.pt`` and ``metrics.json`` (and its own checkpoints and offline W&B run);
- ``probe_<init>_seed<k>``: linear probes on every tap of that init's trunk (feature cache, in-process;
  or a ``cnnlab-train model=linear_probe`` subprocess);
- ``finetune_<init>_f<fraction>_seed<k>``: the whole network fine-tuned on a fraction of the labels
  (``cnnlab-train backbone=trunk data.label_fraction=...``), scored on the full test split.

Each finished arm writes ``gap_arm.json`` holding a key: a hash of its command and of the weights of
the trunk it starts from. An arm whose key matches and whose outputs exist is reused, so an
interrupted reproduction resumes where it stopped, and changing a setting redoes only what it touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import UserError

INITS = ("random", "colorization", "supervised")
MARKER = "gap_arm.json"


@dataclass
class Arm:
    name: str
    kind: str  # trunk | probe | finetune
    init: str
    seed: int
    fraction: float | None = None
    #: the arm whose trunk.pt this one starts from (itself for trunk arms)
    trunk_arm: str | None = None
    overrides: list[str] = field(default_factory=list)

    def dir(self, root: Path) -> Path:
        return Path(root) / "arms" / self.name

    @property
    def label(self) -> str:
        what = {"trunk": "pretrain" if self.init != "random" else "random init", "probe": "linear probes",
                "finetune": f"fine-tune {fraction_label(self.fraction)} labels"}[self.kind]
        return f"{what} · {self.init} · seed {self.seed}"


def fraction_label(f: float | None) -> str:
    return "" if f is None else f"{100 * f:g}%"


def trunk_arm_name(init: str, seed: int) -> str:
    return f"{init}_seed{seed}"


def fraction_tag(f: float) -> str:
    return f"f{f:g}"


def plan_arms(inits: list[str], seeds: list[int], fractions: list[float]) -> list[Arm]:
    """Every arm in run order: all trunks, then all probes (the headline table), then the fine-tunes.

    Seeds are interleaved within each stage, so a run stopped early still has every init for the first
    seeds of each stage, and its partial report (``run_arms=false``) compares like with like.
    """
    trunks = [Arm(trunk_arm_name(i, s), "trunk", i, s, trunk_arm=trunk_arm_name(i, s)) for s in seeds for i in inits]
    probes = [Arm(f"probe_{i}_seed{s}", "probe", i, s, trunk_arm=trunk_arm_name(i, s)) for s in seeds for i in inits]
    fts = [Arm(f"finetune_{i}_{fraction_tag(f)}_seed{s}", "finetune", i, s, f, trunk_arm_name(i, s))
           for f in fractions for s in seeds for i in inits]
    return trunks + probes + fts


# --------------------------------------------------------------------------------- override strings
_SAFE = re.compile(r"[A-Za-z0-9_./@:+\-]+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def format_value(v: Any) -> str:
    """A Python value as a Hydra command-line override value (strings quoted when they need it)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{format_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if _SAFE.fullmatch(s) and not _NUMBER.fullmatch(s) and s.lower() not in ("null", "true", "false", "none"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flatten_overrides(prefix: str, cfg: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """``{"a": 1, "b": {"c": 2}}`` -> ``["<prefix>.a=1", "<prefix>.b.c=2"]`` (keys in ``skip`` left out)."""
    out = []
    for k, v in cfg.items():
        if k in skip:
            continue
        if isinstance(v, dict) and v:
            out += flatten_overrides(f"{prefix}.{k}", v)
        else:
            out.append(f"{prefix}.{k}={format_value(v)}")
    return out


# --------------------------------------------------------------------------------- reuse
def arm_key(arm: Arm, command: list[str], trunk_fingerprint: str | None, extra: dict | None = None) -> str:
    """What an arm's result depends on: its command (minus where it runs) and its starting weights."""
    cmd = [c for c in command if not c.startswith("hydra.run.dir=")]
    blob = json.dumps({"kind": arm.kind, "command": cmd, "trunk": trunk_fingerprint, "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def outputs_of(arm: Arm) -> list[str]:
    return {"trunk": ["trunk.pt"], "probe": ["metrics.json"], "finetune": ["metrics.json"]}[arm.kind] + (
        ["metrics.json"] if arm.kind == "trunk" and arm.init != "random" else [])


def is_done(arm: Arm, root: Path, key: str | None) -> bool:
    """True when the arm finished with the same key (``key=None``: any key) and its outputs exist."""
    d = arm.dir(root)
    marker = d / MARKER
    if not marker.is_file() or not all((d / f).is_file() for f in outputs_of(arm)):
        return False
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return key is None or info.get("key") == key


def mark_done(arm: Arm, root: Path, key: str, seconds: float, extra: dict | None = None) -> None:
    d = arm.dir(root)
    (d / MARKER).write_text(json.dumps({"name": arm.name, "kind": arm.kind, "init": arm.init, "seed": arm.seed,
                                        "fraction": arm.fraction, "key": key, "seconds": round(seconds, 1),
                                        "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}, indent=2))


def fresh_dir(arm: Arm, root: Path) -> Path:
    """An empty directory for an arm about to (re)run: stale checkpoints or W&B ids must not leak in."""
    d = arm.dir(root)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


# --------------------------------------------------------------------------------- subprocess arms
def dedupe(overrides: list[str]) -> list[str]:
    """Keep the last override of each key (later, more specific settings win; Hydra rejects repeats)."""
    last = {o.split("=", 1)[0].lstrip("+~"): i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0].lstrip("+~")] == i]


def train_command(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cnnlab.train", *dedupe(overrides), f"hydra.run.dir={format_value(str(run_dir))}"]


def run_train(arm: Arm, command: list[str], run_dir: Path, threads: int | None = None) -> None:
    """Run one ``cnnlab-train`` arm as a subprocess; its console output goes to ``<arm dir>/arm.log``."""
    log_path = run_dir / "arm.log"
    env = {**os.environ, "WANDB_CONSOLE": "off", "WANDB_SILENT": "true"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_path, "w") as fh:
        fh.write(" ".join(command) + "\n\n")
        fh.flush()
        proc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        noise = ("Set the environment variable HYDRA_FULL_ERROR", "full_key:", "object_type=", "wandb:", "To append")
        useful = [ln for ln in lines[1:] if not ln.startswith(noise)]
        err = next((ln for ln in reversed(useful) if ln.startswith("error:")), useful[-1] if useful else "no output")
        raise UserError(f"arm {arm.name} failed (exit {proc.returncode}): {err[:300]} -- full log: {log_path}; rerun cnnlab-gap to resume")
