"""The arms of a gap experiment: what each one is, in which order they run, and when a result can be reused.

An arm is one unit of work with its own directory ``<gap run dir>/arms/<name>/``:

- ``<init>_seed<s>`` (kind ``trunk``): a seeded random init (in-process, instant), or a pretraining
  (supervised / colorization) on the pretraining pool, a ``cnnlab-train`` run; no downstream task's data;
- ``probe_<task>_<init>_seed<s>[_sub<k>]``: the task's probes of that trunk, fit on label subset ``k`` of the
  task's training split (all of it when ``probe.label_fraction`` is 1): for classification linear probes (weight
  decay chosen on val) and kNN on every tap, for multi-label classification one-vs-rest linear probes on every tap
  (mAP; no kNN), for segmentation the dense linear probe (mIoU);
- ``finetune_<task>_<init>_f<f>_seed<s>_sub<k>_lr<lr>[_<variant>]`` (kind ``finetune``): one candidate of the
  fine-tune search, the whole network trained on the label subset ``k`` of fraction ``f`` of the task's training
  split at one learning rate and recipe variant (no suffix for ``plain``, so adding a variant to a finished run
  reuses its plain candidates), validated during training; its best-on-val checkpoint is kept; test is not read;
- ``finetune_<task>_<init>_f<f>_seed<s>_sub<k>`` (kind ``finetune_test``): the candidate (learning rate, variant
  and checkpoint) chosen on val, tested once.

Every ``cnnlab-train`` arm writes its composed config to ``config.yaml`` in its directory and runs from it;
each finished arm writes ``gap_arm.json`` holding its key (a hash of that config, of the fingerprints of the
trunks it starts from and of the arms it reads). An arm whose key matches and whose outputs exist is reused,
so an interrupted run resumes where it stopped, and changing a setting redoes only what it touches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.io.files import write_json

INITS = ("random", "colorization", "supervised", "supervised_rgb")
#: the task kinds a downstream task can be, each with the score its arms are chosen and reported by: (the name its
#: runs log, ``val/<name>`` and ``test/<name>``; the name the report gives it)
TASK_METRICS = {"classification": ("acc", "top-1"), "multilabel": ("map", "mAP"), "segmentation": ("miou", "mIoU")}
TASK_KINDS = tuple(TASK_METRICS)
#: config groups a task kind's fine-tunes need whatever the task's own groups (a multi-label task: its model)
KIND_GROUPS = {"multilabel": {"model": "multilabel"}}
MARKER = "gap_arm.json"
#: the fine-tune recipe variant with no overrides (its candidates' names carry no suffix)
PLAIN = "plain"
#: what each kind of arm leaves behind when it finished
OUTPUTS = {"trunk": ("trunk.pt",), "probe": ("probe.json",), "finetune": ("candidate.json",), "finetune_test": ("metrics.json",)}


@dataclass
class Arm:
    name: str
    kind: str  # trunk | probe | finetune | finetune_test
    init: str
    seed: int
    fraction: float | None = None
    subset: int | None = None
    lr: float | None = None
    #: the fine-tune recipe variant (a key of ``finetune.variants``)
    variant: str | None = None
    #: the arm whose trunk.pt this one starts from (itself for trunk arms)
    trunk_arm: str | None = None
    #: other arms whose outputs this one reads (a test arm: its candidates)
    needs: list[str] = field(default_factory=list)
    #: the downstream task (a key of ``tasks``) of a probe or fine-tune arm; None for trunks
    task: str | None = None

    def dir(self, root: Path) -> Path:
        return Path(root) / "arms" / self.name

    @property
    def label(self) -> str:
        if self.kind == "trunk":
            what = "random init" if self.init == "random" else "pretrain"
        elif self.kind == "probe":
            # the task kind decides the probes (kNN only where the labels are single, the dense probe on segmentation)
            what = "probes" + ("" if self.subset is None else f", label subset {self.subset}")
        else:
            what = f"fine-tune {fraction_label(self.fraction)} labels, subset {self.subset}"
            what += f", lr {self.lr:g}, {self.variant}" if self.kind == "finetune" else ", chosen on val, test"
        return f"{what} · {self.init} · seed {self.seed}" + ("" if self.task is None else f" · task {self.task}")

    @property
    def unit(self) -> tuple[int, int | None]:
        """The paired run this arm belongs to: (pretraining seed, label subset); intervals run over the seeds."""
        return self.seed, self.subset


def fraction_label(f: float | None) -> str:
    return "" if f is None else f"{100 * f:g}%"


def trunk_arm_name(init: str, seed: int) -> str:
    return f"{init}_seed{seed}"


def plan_arms(inits: list[str], seeds: list[int], tasks: dict[str, dict], subsets: list[int], lrs: list[float] | None = None,
              variants: list[str] = (PLAIN,)) -> list[Arm]:
    """Every arm in run order: all trunks, then every task's probes (the headline tables), then the fine-tunes.

    ``tasks[name]`` is ``{"fractions": [...], "probe_subsets": [None] or subsets, "lrs": [...]}`` (``lrs`` falls
    back to the argument). A task's fine-tune candidates of a run are the grid ``lrs`` x ``variants``, lr-major.
    Seeds are interleaved within each stage, so a run stopped early still has every init for the first
    paired runs of each stage, and its partial report (``run_arms=false``) compares like with like.
    """
    trunks = [Arm(trunk_arm_name(i, s), "trunk", i, s, trunk_arm=trunk_arm_name(i, s)) for s in seeds for i in inits]
    probes, fts = [], []
    for t, spec in tasks.items():
        probes += [Arm(f"probe_{t}_{i}_seed{s}" + ("" if k is None else f"_sub{k}"), "probe", i, s, subset=k,
                       trunk_arm=trunk_arm_name(i, s), task=t) for s in seeds for k in spec["probe_subsets"] for i in inits]
        for f in spec["fractions"]:
            for s in seeds:
                for k in subsets:
                    for i in inits:
                        base = f"finetune_{t}_{i}_f{f:g}_seed{s}_sub{k}"
                        cands = [Arm(f"{base}_lr{lr:g}" + ("" if v == PLAIN else f"_{v}"), "finetune", i, s, f, k, lr, v,
                                     trunk_arm_name(i, s), task=t) for lr in spec.get("lrs", lrs) for v in spec.get("variants", variants)]
                        fts += cands + [Arm(base, "finetune_test", i, s, f, k, None, None, trunk_arm_name(i, s), [c.name for c in cands], task=t)]
    return trunks + probes + fts


def arm_key(what: dict) -> str:
    """A short stable hash of everything an arm's result depends on."""
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_marker(arm: Arm, root: Path) -> dict | None:
    """The finished arm's ``gap_arm.json`` (None when missing, unreadable, or an output is missing)."""
    d = arm.dir(root)
    if not all((d / f).is_file() for f in (MARKER, *OUTPUTS[arm.kind])):
        return None
    try:
        return json.loads((d / MARKER).read_text())
    except json.JSONDecodeError:
        return None


def is_done(arm: Arm, root: Path, key: str | None) -> bool:
    """True when the arm finished with the same key (``key=None``: any key) and its outputs exist."""
    info = read_marker(arm, root)
    return info is not None and (key is None or info.get("key") == key)


def mark_done(arm: Arm, root: Path, key: str, seconds: float, extra: dict | None = None) -> None:
    write_json(arm.dir(root) / MARKER, {"name": arm.name, "kind": arm.kind, "task": arm.task, "init": arm.init, "seed": arm.seed,
                                        "fraction": arm.fraction, "subset": arm.subset, "lr": arm.lr, "variant": arm.variant, "key": key,
                                        "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        **(extra or {})})


def fresh_dir(arm: Arm, root: Path) -> Path:
    """An empty directory for an arm about to (re)run: stale checkpoints or W&B ids must not leak in."""
    d = arm.dir(root)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


@dataclass
class Plan:
    arms: list[Arm]
    status: dict[str, str]  # done | check (reused if its trunk comes back unchanged) | to run

    @property
    def todo(self) -> list[Arm]:
        return [a for a in self.arms if self.status[a.name] != "done"]
